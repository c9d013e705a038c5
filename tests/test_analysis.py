"""Table-driven tests for kfmagic.analysis: each row pins one rule of name resolution."""

import dataclasses

import pytest

from kfmagic.analysis import AnalysisError, CodeInfo, analyze
from kfmagic.syntax import to_python

# (id, source, reads, assigns, mutates) -- compared as sets.
CASES = [
    # --- straight-line order ---
    ("read", "y = x + 1", {"x"}, {"y"}, set()),
    ("bound-before-read", "x = 1\ny = x", set(), {"x", "y"}, set()),
    ("self-assign", "x = x + 1", {"x"}, {"x"}, set()),
    ("augassign-is-rebinding", "x += 1", {"x"}, {"x"}, set()),
    ("augassign-after-bind", "x = 0\nx += 1", set(), {"x"}, set()),
    ("augassign-attr", "x.a += 1", {"x"}, set(), {"x"}),
    ("augassign-subscript", "x[0] += 1", {"x"}, set(), {"x"}),
    ("unpacking", "a, (b, *c) = d", {"d"}, {"a", "b", "c"}, set()),
    ("chained-assign", "a = b = c", {"c"}, {"a", "b"}, set()),
    ("value-before-target", "x = [x]", {"x"}, {"x"}, set()),
    ("builtins-kept", "print(len(xs))", {"print", "len", "xs"}, set(), set()),
    ("pandas-query-at-names", "out = df.query('x > @limit') + pd.eval(expr='@a + 1')", {"df", "limit", "pd", "a"}, {"out"}, set()),
    ("pd-eval-reads-every-name", "out = pd.eval('-df1 * df2 / sqrt(df3.A)') + frame.eval('A + B')",
     {"pd", "df1", "df2", "df3", "frame"}, {"out"}, set()),
    ("pd-eval-of-pandas-imported-here", "import pandas as p\nout = p.eval('x + 1', target=t)", {"x", "t"}, {"p", "out"}, set()),
    ("eval-of-another-module-reads-no-names", "import numexpr as pd\nout = pd.eval('x + 1')", set(), {"pd", "out"}, set()),
    ("numexpr-evaluate-reads-every-name", "import numexpr\nm = numexpr.evaluate('(x > 0.5) & where(y < 0.5, 1, 0)')",
     {"x", "y"}, {"numexpr", "m"}, set()),
    ("evaluator-given-its-names-reads-none", "m = ne.evaluate('a * b', local_dict={'a': 1, 'b': b})", {"ne", "b"}, {"m"}, set()),
    ("query-at-name-of-a-parameter", "def f(limit):\n    return df.query('x > @limit')\nf(1)", {"df"}, {"f"}, set()),
    ("dunders-dropped", "if __name__ == '__main__':\n    main(__file__)", {"main"}, set(), set()),
    # --- branches and loops: textual order ---
    ("if-branch-binds", "if c:\n    x = 1\nprint(x)", {"c", "print"}, {"x"}, set()),
    ("for-accumulate", "for i in r:\n    total = total + i", {"r", "total"}, {"i", "total"}, set()),
    ("for-accumulate-init", "total = 0\nfor i in r:\n    total = total + i", {"r"}, {"total", "i"}, set()),
    ("for-iter-before-target", "for t in t:\n    pass", {"t"}, {"t"}, set()),
    ("for-else", "for x in xs:\n    break\nelse:\n    x = None\nprint(x)", {"xs", "print"}, {"x"}, set()),
    ("while-test-first", "while n < 10:\n    n = 1", {"n"}, {"n"}, set()),
    ("with-expr-first", "with f() as f:\n    pass", {"f"}, {"f"}, set()),
    ("with-items-in-order", "with a as b, b as c:\n    pass", {"a"}, {"b", "c"}, set()),
    (
        "try-except-as",
        "try:\n    v = load()\nexcept OSError as e:\n    v = None\nprint(v, e)",
        {"load", "OSError", "print"},
        {"v", "e"},
        set(),
    ),
    (
        "try-import-fallback",
        "try:\n    import ujson as json\nexcept ImportError:\n    import json",
        {"ImportError"},
        {"json"},
        set(),
    ),
    ("walrus-module", "if (n := len(xs)) > 3:\n    print(n)", {"len", "xs", "print"}, {"n"}, set()),
    # --- functions and lambdas ---
    ("def-not-called-reads-nothing", "def f():\n    return x\nx = 1", set(), {"f", "x"}, set()),
    ("def-called-before-global-bound", "def f():\n    return x\nf()\nx = 1", {"x"}, {"f", "x"}, set()),
    ("def-called-after-global-bound", "def f():\n    return x\nx = 1\nf()", set(), {"f", "x"}, set()),
    ("def-passed-on-reads-then", "def f(r):\n    return r * k\nout = list(map(f, rows))", {"list", "map", "rows", "k"}, {"f", "out"}, set()),
    ("def-calls-later-def", "def f():\n    return g()\ndef g():\n    return w\nf()", {"w"}, {"f", "g"}, set()),
    ("def-reads-earlier-global", "x = 1\ndef f():\n    return x", set(), {"x", "f"}, set()),
    (
        "def-params-local",
        "def f(a, /, b, *args, k=1, **kw):\n    c = a + b + k\n    return c, args, kw",
        set(),
        {"f"},
        set(),
    ),
    ("def-comp-var-not-local", "def f():\n    [i for i in r]\n    return i\nf()", {"r", "i"}, {"f"}, set()),
    ("def-local-before-bind", "def f():\n    print(y)\n    y = 1\nf()", {"print"}, {"f"}, set()),
    ("def-default", "def f(a=b):\n    pass", {"b"}, {"f"}, set()),
    ("def-kwonly-default", "def f(*, k=kd):\n    pass", {"kd"}, {"f"}, set()),
    ("def-default-not-self", "def f(a=f):\n    pass", {"f"}, {"f"}, set()),
    ("decorator", "@dec(opt)\ndef f():\n    pass", {"dec", "opt"}, {"f"}, set()),
    ("decorator-method-call", "@app.route('/')\ndef index():\n    pass", {"app"}, {"index"}, set()),  # value used
    ("param-annotations", "def f(a: T = 1) -> U:\n    pass", {"T", "U"}, {"f"}, set()),
    ("local-annotation-unevaluated", "def f():\n    x: Local = 1\n    return x", set(), {"f"}, set()),
    ("recursion", "def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)", set(), {"fact"}, set()),
    ("lambda-not-called", "f = lambda: y\ny = 1", set(), {"f", "y"}, set()),
    ("lambda-called-before-bind", "f = lambda: y\nf()\ny = 1", {"y"}, {"f", "y"}, set()),
    ("lambda-in-dict-called", "ops = {'f': lambda: y}\nops['f']()", {"y"}, {"ops"}, set()),
    ("lambda-passed-runs-now", "out = frame.apply(lambda r: r * k)", {"frame", "k"}, {"out"}, set()),
    ("lambda-earlier-global", "y = 1\nf = lambda: y", set(), {"y", "f"}, set()),
    ("lambda-param", "f = lambda y: y * z\nf(1)", {"z"}, {"f"}, set()),
    ("lambda-default", "f = lambda a=b: a", {"b"}, {"f"}, set()),
    ("lambda-recursive", "f = lambda n: f(n - 1) if n else 0", set(), {"f"}, set()),
    ("walrus-in-def-local", "def f():\n    if (n := g()) > 1:\n        return n\nf()", {"g"}, {"f"}, set()),
    ("walrus-in-comp-in-def", "def f():\n    return [n := i for i in r], n\nf()", {"r"}, {"f"}, set()),
    ("global-assign-not-called", "def f():\n    global g\n    g = 1", set(), {"f"}, set()),
    ("global-assign", "def f():\n    global g\n    g = 1\nf()", set(), {"f", "g"}, set()),
    ("global-augassign", "def f():\n    global n\n    n += 1\nf()", {"n"}, {"f", "n"}, set()),
    ("global-read-only", "def f():\n    global g\n    return g\nf()", {"g"}, {"f"}, set()),
    ("global-then-read-in-def", "def f():\n    global g\n    g = 1\n    return g\nf()", set(), {"f", "g"}, set()),
    (
        "nonlocal",
        "def outer():\n    v = 1\n    def inner():\n        nonlocal v\n        v += 1\n    return inner",
        set(),
        {"outer"},
        set(),
    ),
    (
        "closure-vs-global",
        "def outer():\n    v = 1\n    def inner():\n        return v + w\n    return inner\nouter()()",
        {"w"},
        {"outer"},
        set(),
    ),
    ("def-mutates-global-not-called", "def f():\n    cache.clear()", set(), {"f"}, set()),
    ("def-mutates-global", "def f():\n    cache.clear()\nf()", {"cache"}, {"f"}, {"cache"}),
    ("def-mutates-bound-global", "cache = {}\ndef f():\n    cache['k'] = 1\nf()", set(), {"cache", "f"}, {"cache"}),
    ("method-mutates-global", "class C:\n    def add(self):\n        items.append(1)\nc = C()", {"items"}, {"C", "c"}, {"items"}),
    ("def-mutates-local", "def f():\n    items = []\n    items.append(1)", set(), {"f"}, set()),
    ("def-import-local", "def f():\n    import json\n    return json.dumps(1)", set(), {"f"}, set()),
    ("async-def", "async def f():\n    async with lock:\n        await g()\nf()", {"lock", "g"}, {"f"}, set()),
    # --- classes ---
    ("class-body-order", "class C:\n    a = 1\n    b = a + 1", set(), {"C"}, set()),
    ("class-body-not-enclosing", "class C:\n    a = 1\n    def m(self):\n        return a\nC().m()", {"a"}, {"C"}, set()),
    ("class-bases", "class C(Base, metaclass=Meta):\n    pass", {"Base", "Meta"}, {"C"}, set()),
    ("method-names-own-class", "class C:\n    def m(self):\n        return C()", set(), {"C"}, set()),
    (
        "nested-class",
        "class A:\n    class B:\n        def m(self):\n            return A, B\nx = A.B().m()",
        {"B"},
        {"A", "x"},
        set(),
    ),
    ("class-comp-element", "class C:\n    a = 1\n    b = [a for _ in range(3)]", {"range", "a"}, {"C"}, set()),
    ("class-comp-first-iter", "class C:\n    a = [1]\n    b = [y for y in a]", set(), {"C"}, set()),
    ("class-global", "class C:\n    global g\n    g = 1", set(), {"C", "g"}, set()),
    # --- comprehensions ---
    ("comp-var-local", "[x for x in xs]", {"xs"}, set(), set()),
    ("comp-first-iter-outside", "[x for x in x]", {"x"}, set(), set()),
    ("comp-nested", "[y for x in xs for y in x if y]", {"xs"}, set(), set()),
    ("dictcomp", "d = {k: v for k, v in zip(ks, vs)}", {"zip", "ks", "vs"}, {"d"}, set()),
    ("genexp", "gen = (x * k for x in xs)", {"xs", "k"}, {"gen"}, set()),
    ("comp-walrus-leaks", "[last := x for x in xs]\nprint(last)", {"xs", "print"}, {"last"}, set()),
    ("comp-mutates-global", "[out.append(x) for x in xs]", {"out", "xs"}, set(), {"out"}),
    ("comp-mutates-local", "[x.append(1) for x in xs]", {"xs"}, set(), set()),
    # --- imports ---
    ("import-dotted", "import a.b.c\na.b.c.run()", set(), {"a"}, set()),
    ("import-as", "import a.b as c", set(), {"c"}, set()),
    ("from-import", "from m import x as y, z", set(), {"y", "z"}, set()),
    ("imported-not-mutated", "import numpy as np\narr = np.zeros(3)", set(), {"np", "arr"}, set()),
    ("not-imported-here", "np.zeros(3)", {"np"}, set(), {"np"}),
    # --- del ---
    ("del-name", "del x", set(), {"x"}, set()),
    ("del-then-read", "del x\nprint(x)", {"print"}, {"x"}, set()),
    ("del-item-attr", "del x[0], y.a", {"x", "y"}, set(), {"x", "y"}),
    ("del-item-bound", "x = {}\ndel x['k']", set(), {"x"}, {"x"}),
    # --- f-strings and match ---
    ("fstring", "s = f'{a!r:>{width}} {b.c}'", {"a", "width", "b"}, {"s"}, set()),
    (
        "match-captures",
        "match p:\n"
        "    case Point(x=px) if px > lim:\n        pass\n"
        "    case [a, *rest]:\n        pass\n"
        "    case {'k': v, **kw}:\n        pass\n"
        "    case Color.RED as w:\n        pass",
        {"p", "Point", "lim", "Color"},
        {"px", "a", "rest", "v", "kw", "w"},
        set(),
    ),
    (
        "match-guard-and-class",
        "match cmd:\n    case [verb, obj] if verb == obj:\n        pass\n    case str() | bytes():\n        pass\n"
        "    case _:\n        pass",
        {"cmd", "str", "bytes"},
        {"verb", "obj"},
        set(),
    ),
    # --- annotations ---
    ("annassign", "x: int = 1", {"int"}, {"x"}, set()),
    ("annotation-only", "x: int", {"int"}, set(), set()),
    ("annassign-attr", "self_.x: int = 1", {"self_", "int"}, set(), {"self_"}),
    # --- mutations ---
    ("attr-store", "x.a = 1", {"x"}, set(), {"x"}),
    ("subscript-store", "x[i] = v", {"x", "i", "v"}, set(), {"x"}),
    ("deep-store", "x.a.b[2] = 3", {"x"}, set(), {"x"}),
    ("mutation-after-bind", "x = [1]\nx.append(2)", set(), {"x"}, {"x"}),
    # --- a method call changes its receiver when called for its effect: the value is discarded or
    # it passes inplace=True; a call whose value is used only reads it ---
    ("method-inplace", "df.fillna(0, inplace=True)", {"df"}, set(), {"df"}),
    ("method-drop-inplace", "df.drop(columns=['a'], inplace=True)", {"df"}, set(), {"df"}),
    ("method-append", "lst.append(x)", {"lst", "x"}, set(), {"lst"}),
    ("method-value-assigned", "m = X.mean()", {"X"}, {"m"}, set()),
    ("method-value-argument", "print('mean', X_train.mean())", {"print", "X_train"}, set(), set()),
    ("method-value-compared", "ok = x.count(1) > 2", {"x"}, {"ok"}, set()),
    ("method-value-returned", "def f(df):\n    return df.mean()\nf(train)", {"train"}, {"f"}, set()),
    ("method-chain-value-used", "y = x.m().n()", {"x"}, {"y"}, set()),
    ("method-value-in-loop-alias", "for ds in [train, test]:\n    print(ds.mean())", {"train", "test", "print"}, {"ds"}, set()),
    ("method-inplace-value-used", "out = df.drop(columns=['a'], inplace=True)", {"df"}, {"out"}, {"df"}),
    ("method-inplace-maybe", "out = df.drop(columns=['a'], inplace=flag)", {"df", "flag"}, {"out"}, {"df"}),
    ("method-inplace-false", "out = df.drop(columns=['a'], inplace=False)", {"df"}, {"out"}, set()),
    ("method-column-inplace-value-used", "v = df['c'].fillna(0, inplace=True)", {"df"}, {"v"}, {"df"}),
    ("method-setdefault-append", "groups.setdefault(k, []).append(v)", {"groups", "k", "v"}, set(), {"groups"}),
    ("await-method-statement", "await conn.send(msg)", {"conn", "msg"}, set(), {"conn"}),
    ("await-method-value-used", "reply = await conn.recv()", {"conn"}, {"reply"}, set()),
    ("comp-value-used", "sizes = [out.count(x) for x in xs]", {"out", "xs"}, {"sizes"}, set()),
    ("method-fit", "model.fit(X)", {"model", "X"}, set(), {"model"}),
    ("method-chain", "x.a.b()", {"x"}, set(), {"x"}),
    ("method-on-item", "x[0].update()", {"x"}, set(), {"x"}),
    ("method-on-column", "df['c'].fillna(0, inplace=True)", {"df"}, set(), {"df"}),
    ("method-after-call", "x.a().b()", {"x"}, set(), {"x"}),
    ("store-after-method", "x.get()[0] = 1", {"x"}, set(), {"x"}),
    ("plain-call", "f(x)", {"f", "x"}, set(), set()),
    ("method-on-call-result", "f(x).append(1)", {"f", "x"}, set(), set()),
    ("method-on-literal", "s = '-'.join(parts)", {"parts"}, {"s"}, set()),
    # --- in-place changes through another name (aliases) and through functions ---
    ("alias-name", "d = df\nd['x'] = 1", {"df"}, {"d"}, {"d", "df"}),
    (
        "alias-loop-over-list",  # Kale's titanic example: the loop changes both frames
        "data = [train, test]\nfor ds in data:\n    ds['r'] = ds['a'] / ds['b']",
        {"train", "test"},
        {"data", "ds"},
        {"data", "ds", "train", "test"},
    ),
    ("alias-loop-literal", "for d in (a, b):\n    d.fillna(0, inplace=True)", {"a", "b"}, {"d"}, {"a", "b", "d"}),
    ("alias-loop-items", "for k, d in dfs.items():\n    d['k'] = k", {"dfs"}, {"k", "d"}, {"dfs", "d"}),
    ("alias-loop-zip", "for x, y in zip(xs, ys):\n    x.append(y)", {"zip", "xs", "ys"}, {"x", "y"}, {"x", "xs", "ys"}),
    ("alias-rebound-fresh", "d = df\nd = load()\nd['x'] = 1", {"df", "load"}, {"d"}, {"d"}),
    ("alias-copy-is-fresh", "d = df.copy()\nd['x'] = 1", {"df"}, {"d"}, {"d"}),  # .copy()'s value is used
    ("alias-swap", "a, b = b, a\na.append(1)", {"a", "b"}, {"a", "b"}, {"a", "b"}),
    ("no-alias-read-only", "d = df\nprint(d)", {"df", "print"}, {"d"}, set()),
    ("function-changes-arg", "def clean(df):\n    df.dropna(inplace=True)\nclean(train)", {"train"}, {"clean"}, {"train"}),
    ("function-changes-kwarg", "def f(a, b):\n    b['k'] = a\nf(1, b=cfg)", {"cfg"}, {"f"}, {"cfg"}),
    ("function-reads-arg", "def f(df):\n    return df.shape\nf(train)", {"train"}, {"f"}, set()),
    ("function-changes-via-loop", "def f(dfs):\n    for d in dfs:\n        d['x'] = 1\nf([a, b])", {"a", "b"}, {"f"}, {"a", "b"}),
    ("function-calls-changer", "def f(d):\n    d['x'] = 1\ndef g(d):\n    f(d)\ng(t)", {"t"}, {"f", "g"}, {"t"}),
    ("function-rebinds-arg", "def f(df):\n    df = prep(df)\n    df['x'] = 1\nf(t)", {"prep", "t"}, {"f"}, set()),
    # --- IPython rewrites and top-level await ---
    ("line-magic-time", "get_ipython().run_line_magic('time', 'x = 1')", {"get_ipython"}, {"x"}, set()),
    ("line-magic-time-value", "x = get_ipython().run_line_magic('time', 'f(y)')", {"get_ipython", "f", "y"}, {"x"}, set()),
    (
        "line-magic-time-value-method",  # `model = %time SVC().fit(X, y)`
        "model = get_ipython().run_line_magic('time', 'SVC().fit(X, y)')",
        {"get_ipython", "SVC", "X", "y"},
        {"model"},
        set(),
    ),
    ("line-magic-time-value-used", "m = get_ipython().run_line_magic('time', 'X.mean()')", {"get_ipython", "X"}, {"m"}, set()),
    ("line-magic-time-statement", "get_ipython().run_line_magic('time', 'model.fit(X)')", {"get_ipython", "model", "X"}, set(), {"model"}),
    ("line-magic-prun", "get_ipython().run_line_magic('prun', 'z = g(w)')", {"get_ipython", "g", "w"}, {"z"}, set()),
    (
        "line-magic-prun-options",
        "get_ipython().run_line_magic('prun', '-s cumulative -rq -l10 -T out.txt z = g(w)')",
        {"get_ipython", "g", "w"},
        {"z"},
        set(),
    ),
    ("line-magic-timeit-own-namespace", "get_ipython().run_line_magic('timeit', 'y = f(x)')", {"get_ipython", "f", "x"}, set(), set()),
    ("line-magic-timeit-reads-and-changes", "get_ipython().run_line_magic('timeit', '-n1 -r 3 df1 + df2; items.sort()')",
     {"get_ipython", "df1", "df2", "items"}, set(), {"items"}),
    ("line-magic-unreadable", "get_ipython().run_line_magic('time', 'y = (')", {"get_ipython"}, set(), set()),
    ("shell-capture", "z = get_ipython().getoutput('ls')", {"get_ipython"}, {"z"}, set()),
    ("cell-magic-time", "get_ipython().run_cell_magic('time', '', 'm = fit(X)\\nm.score(X)\\n')", {"get_ipython", "fit", "X"}, {"m"}, {"m"}),
    (
        "cell-magic-capture",
        "get_ipython().run_cell_magic('capture', 'out --no-stderr', '!pip install x\\nimport x\\ny = x.f(w)\\n')",
        {"get_ipython", "w"},
        {"out", "x", "y"},
        set(),
    ),
    ("cell-magic-timeit-own-namespace", "get_ipython().run_cell_magic('timeit', '-n 2 m = g(w)', 'y = f(m)\\nm.fit(y)\\n')",
     {"get_ipython", "f", "g", "w"}, set(), set()),
    ("cell-magic-unreadable-body", "get_ipython().run_cell_magic('time', '', 'y = (\\n')", {"get_ipython"}, set(), set()),
    ("top-level-await", "result = await fetch(url)", {"fetch", "url"}, {"result"}, set()),
    (
        "top-level-async-for",
        "async for item in stream():\n    seen.add(item)",
        {"stream", "seen"},
        {"item"},
        {"seen"},
    ),
]


@pytest.mark.parametrize("source, reads, assigns, mutates", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_names(source, reads, assigns, mutates):
    info = analyze(source)
    assert (set(info.reads), set(info.assigns), set(info.mutates)) == (reads, assigns, mutates)


ORDER_CASES = [
    ("y = b + a\nprint(c)", "reads", ("b", "a", "print", "c")),
    ("import os\nz, y = 1, 2\ndef f():\n    pass\nclass K:\n    pass", "assigns", ("os", "z", "y", "f", "K")),
    ("b.x = 1\na.y()\nb.z()", "mutates", ("b", "a")),
    ("x = x + x\nx.y = x", "reads", ("x",)),
]


@pytest.mark.parametrize("source, field, expected", ORDER_CASES)
def test_order_of_first_occurrence(source, field, expected):
    assert getattr(analyze(source), field) == expected


@pytest.mark.parametrize(
    "source, imports",
    [
        ("import a.b.c", ("a",)),
        ("import b.c\nfrom a import x\nimport b\nfrom .rel import y\ndef f():\n    import c", ("b", "a", "c")),
        ("from . import sibling\nfrom ..pkg import thing", ()),
        ("try:\n    import ujson as json\nexcept ImportError:\n    import json", ("ujson", "json")),
        ("x = 1", ()),
    ],
)
def test_imports(source, imports):
    assert analyze(source).imports == imports


@pytest.mark.parametrize(
    "source, star",
    [
        ("from a import *\nfrom b.c import *", ("a", "b.c")),
        ("from .m import *", (".m",)),
        ("from a import x", ()),
    ],
)
def test_star_imports(source, star):
    info = analyze(source)
    assert info.star_imports == star


def test_function_reads_and_statement_reads():
    info = analyze("import os\nn = len(data)\ndef f(k=K):\n    return g(data) + os.sep\ndef g(v):\n    return v * w")
    assert info.statement_reads == ("len", "data", "K")
    assert info.function_reads == (("f", ("g", "data", "os")), ("g", ("w",)))


def test_what_functions_classes_and_stored_lambdas_read_and_change_when_called():
    info = analyze(
        "class M:\n    def fit(self):\n        log.append(rate)\n        global fitted\n        fitted = True\n"
        "ops = {'f': lambda: scale}\nm = M()\nhandler = show\nmodel = Model(k)"
    )
    assert dict(info.function_reads) == {"M": ("log", "rate"), "ops": ("scale",), "m": ("M",)}
    assert dict(info.function_changes) == {"M": (("log", "mutate"), ("fitted", "assign"))}
    assert info.classes == ("M",)
    assert info.carries == (("handler", ("show",), ()), ("model", ("k",), ("Model",)))
    # `m = M()` ran the class's code here: its reads and changes are the cell's
    assert (set(info.reads), set(info.assigns), set(info.mutates)) == (
        {"log", "rate", "show", "Model", "k"}, {"M", "ops", "m", "fitted", "handler", "model"}, {"log"}
    )


def test_run_magic_is_opaque_code():
    info = analyze("get_ipython().run_line_magic('run', 'helpers.py')\nx = f(1)")
    assert info.runs == ("helpers.py",) and info.reads == ("get_ipython", "f")


def test_star_import_still_counts_as_import():
    assert analyze("from os.path import *").imports == ("os",)


@pytest.mark.parametrize(
    "source, lineno",
    [
        ("x = (1,", 1),
        ("a = 1\nb = = 2", 2),
        ("a = 1\n  b = 2", 2),
        ("def f():\n    from m import *", 2),
        ("x = 1\nreturn x", 2),
        ("nonlocal x", 1),
    ],
)
def test_syntax_error(source, lineno):
    with pytest.raises(AnalysisError) as caught:
        analyze(source)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.lineno == lineno
    assert error.message.startswith(f"line {lineno}: ") and len(error.message) > len(f"line {lineno}: ")
    assert str(error) == error.message


@pytest.mark.parametrize("terms", [1000, 100_000])  # too deep for the walk; for the parser too
def test_too_deep_is_an_analysis_error(terms):
    with pytest.raises(AnalysisError, match="nested too deeply"):
        analyze("x = " + " + ".join(["a"] * terms))


def test_null_byte_is_an_analysis_error_without_line():
    with pytest.raises(AnalysisError) as caught:
        analyze("x = 1\0")
    assert caught.value.lineno is None and "null bytes" in str(caught.value)


@pytest.mark.parametrize(
    "cell, reads, assigns",
    [
        ("%time model = fit(X)\n", {"get_ipython", "fit", "X"}, {"model"}),
        ("model = %time SVC().fit(X, y)\n", {"get_ipython", "SVC", "X", "y"}, {"model"}),
        ("%prun -s cumulative z = g(w)\n", {"get_ipython", "g", "w"}, {"z"}),
        ("%timeit y = f(x)\n", {"get_ipython", "f", "x"}, set()),
    ],
)
def test_time_and_prun_line_magics_run_their_line_here(cell, reads, assigns):
    info = analyze(to_python(cell))
    assert (set(info.reads), set(info.assigns)) == (reads, assigns)


def test_imported_names_are_the_module_level_import_bindings():
    source = "import numpy as np\nfrom sklearn.svm import SVC\nimport a.b\nx = np.ones(2)\n"
    source += "def f():\n    import json\n    global g\n    import g\nclass C:\n    import os"
    assert analyze(source).imported == ("np", "SVC", "a", "g")


def test_import_paths_and_the_seed_calls_they_reach():
    source = (
        "import numpy as np\nimport numpy.random as rnd\nimport os.path\nfrom random import seed\n"
        "np.random.seed(0)\nseed(1)\nrng.seed(2)\ndef reset(seed):\n    rnd.seed(3)\n    seed(4)\n"
    )
    info = analyze(source)
    assert info.import_paths == (("np", "numpy"), ("rnd", "numpy.random"), ("os", "os"), ("seed", "random.seed"))
    assert info.seed_calls == (  # a parameter named seed is no module's
        ("", "np.random.seed", "np.random.seed(0)"), ("", "seed", "seed(1)"), ("", "rng.seed", "rng.seed(2)"),
        ("reset", "rnd.seed", "rnd.seed(3)"),
    )
    assert analyze(source + "reset(5)").seed_calls[-1] == ("", "rnd.seed", "rnd.seed(3)")  # called: the code's own
    assert analyze("import numpy as np\nnp = None").import_paths == ()


def test_code_info_is_frozen_tuples():
    info = analyze("import os\nx = y\nx.append(1)\nfrom m import *")
    expected = CodeInfo(
        ("y",), ("os", "x"), ("x", "y"), ("os", "m"), ("m",), statement_reads=("y",), imported=("os",),
        carries=(("x", ("y",), ()),), import_paths=(("os", "os"),), called_with=("x",),
    )
    assert info == expected  # x is y
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.reads = ()


def test_an_analysis_error_keeps_its_message_when_pickled():
    import pickle

    with pytest.raises(AnalysisError) as caught:
        analyze("x = (1,")
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (copy.message, str(copy)) == (caught.value.message, str(caught.value))
    assert caught.value.args == (caught.value.message,)  # as any exception holds its message


# (id, source, field, expected): one rule each, read from the CodeInfo field that shows it (as sets).
RULES = [
    # random generators of one's own, and what reaches a call (a generator drawn from, or passed on)
    ("generator-made", "rng = np.random.default_rng(0)\nrs = RandomState(1)\nr = random.Random(2)", "generators", {"rng", "rs", "r"}),
    ("generator-rebound-to-a-value", "rng = default_rng(0)\nrng = rng.random(3)", "generators", set()),
    ("generator-in-a-function-is-local", "def f():\n    rng = default_rng(0)\n    return rng", "generators", set()),
    ("called-with-receiver-and-arguments", "a = rng.random(3)\nb = split(X, *parts, random_state=rs)\nc = m.p.q(y)",
     "called_with", {"rng", "X", "parts", "rs", "y"}),
    ("called-with-not-in-function-bodies", "def f():\n    return rng.random()", "called_with", set()),
    # calls that look like IPython's rewrite of a magic but are not one
    ("magic-wrong-arity", "get_ipython().run_line_magic('time')", "reads", {"get_ipython"}),
    ("magic-of-another-object", "other().run_line_magic('time', 'x = f()')", "assigns", set()),
    ("magic-of-an-attribute-call", "a.shell().run_line_magic('time', 'x = 1')", "assigns", set()),
    ("magic-line-not-literal", "get_ipython().run_line_magic('time', line)", "reads", {"get_ipython", "line"}),
    # %prun's options as IPython's getopt reads them, with any spacing; `--` ends them
    ("prun-two-spaces", to_python("%prun -q  z = g(w)\n"), "assigns", {"z"}),
    ("prun-spaces-first", to_python("%prun    -q z = g(w)\n"), "assigns", {"z"}),
    ("prun-value-two-spaces", to_python("%prun -s cumulative  z = g(w)\n"), "assigns", {"z"}),
    ("prun-double-dash", to_python("%prun -- -offset\n"), "reads", {"get_ipython", "offset"}),
    ("time-is-not-prun", to_python("%time -f(x)\n"), "reads", {"get_ipython", "f", "x"}),
    # %%time / %%capture bodies run here, their own % lines (indented too) are skipped
    ("time-body-magic-lines", to_python("%%time\nfor i in r:\n    %time f(i)\n%env A=1\nx = h()\n"), "assigns", {"i", "x"}),
    ("capture-without-a-name", to_python("%%capture\nx = 1\n"), "assigns", {"x"}),
    ("time-line-binds-nothing", "get_ipython().run_cell_magic('time', 'note', 'x = 1\\n')", "assigns", {"x"}),
    # what a statement reads now, and what runs later
    ("lambda-body-is-no-statement-read", "out = sorted(xs, key=lambda v: v * w)", "statement_reads", {"sorted", "xs"}),
    ("lambda-body-read-when-passed", "out = sorted(xs, key=lambda v: v * w)", "reads", {"sorted", "xs", "w"}),
    ("local-annotation-not-evaluated", "def f():\n    y: Thing = 1\n    return y\nf()", "reads", set()),
    ("comprehension-vars-not-function-locals", "def f():\n    ys = [v for v in xs]\n    total = len(ys)\n    return total\nout = f()",
     "reads", {"xs", "len"}),
    ("nested-comprehension-vars-do-not-leak", "def f():\n    out = [[a for a in r] for r in rows]\n    return r\nval = f()",
     "reads", {"rows", "r"}),
    ("only-dunders-dropped", "y = __private + trailing__", "reads", {"__private", "trailing__"}),
    ("function-dunders-dropped", "def f():\n    return __name__, __secret\nf()", "reads", {"__secret"}),
    ("mutual-recursion-ends", "def f():\n    return g()\ndef g():\n    return f() + w\nf()", "reads", {"w"}),
    ("every-function-called-is-followed", "def f():\n    return g() + x\ndef g():\n    return w\nf()", "reads", {"x", "w"}),
    ("a-function-binding-a-global-binds-it", "def f():\n    global g\n    g = 1\nf()\nprint(g)", "reads", {"print"}),
    ("a-rebound-function-name-is-not-the-function", "def f():\n    return x\nf = len\nf()", "reads", {"len"}),
    ("class-body-does-not-enclose-methods",
     "def outer():\n    rate = 2\n    class K:\n        def m(self):\n            return rate\n    return K().m()\nv = outer()",
     "reads", set()),
    ("class-body-comprehension-lambda", "class K:\n    vals = [lambda: w for i in r]", "reads", {"r", "w"}),
    ("methods-after-a-nested-class-belong-to-the-class",
     "class K:\n    class Inner:\n        pass\n    def m(self):\n        return w\nk = K()", "function_reads",
     {("K", ("w",)), ("k", ("K",))}),
    ("two-classes", "class A:\n    pass\nclass B:\n    def m(self):\n        return w", "function_reads", {("B", ("w",))}),
    # other names for the same object
    ("an-element-shares-its-container", "row = table[0]\nrow.append(1)", "mutates", {"row", "table"}),
    ("a-conditional-value-shares-both", "d = a if c else b\nd.append(1)", "mutates", {"d", "a", "b"}),
    ("values-of-a-dict-share-it", "for df in frames.values():\n    df['x'] = 1", "mutates", {"df", "frames"}),
    ("a-param-rebound-to-its-element-is-still-the-argument", "def f(df):\n    df = df[0]\n    df['y'] = 1\nf(frame)",
     "mutates", {"frame"}),
    ("unpacked-pairs-share-one-each", "left, right = [a_list, b_list]\nleft.append(1)", "mutates", {"left", "a_list"}),
    ("starred-unpacking-shares-all", "first, *rest = [a, b, c]\nfirst.append(1)", "mutates", {"first", "a", "b", "c"}),
    ("awaited-calls-in-a-discarded-comprehension", "[await queue.put(x) for x in xs]", "mutates", {"queue"}),
    # what an assignment's value holds, to be run later
    ("a-lambda-after-a-call-belongs-to-the-target", "ops = [f(1), lambda: scale]", "function_reads", {("ops", ("scale",))}),
    ("stored-after-a-lambda", "ops = {'g': show, 'f': lambda: x}", "carries", {("ops", ("show",), ())}),
    ("stored-beside-a-call", "pair = [other, Model(k)]", "carries", {("pair", ("k", "other"), ("Model",))}),
    ("stored-beside-a-list", "pair = [a, [b]]", "carries", {("pair", ("b", "a"), ())}),
    ("function-locals-carry-nothing", "def f():\n    h = show\n    return h\nf()", "carries", set()),
    # star imports and functions that change their arguments
    ("relative-star-import", "from . import *", "star_imports", {"."}),
    ("a-decorated-function-may-do-anything", "@cache\ndef fill(d):\n    d['x'] = 1", "mutating_functions", set()),
    ("a-nested-function-is-no-cells-function", "def outer():\n    def inner(d):\n        d.append(1)\n    return inner",
     "mutating_functions", set()),
    ("a-decorated-redefinition-replaces-it", "def fill(d):\n    d.append(1)\n@wrap\ndef fill(d):\n    return d",
     "mutating_functions", set()),
    ("a-nested-decorated-namesake-does-not",
     "def fill(d):\n    d.append(1)\ndef outer():\n    @wrap\n    def fill(x):\n        return x\n    return fill",
     "mutating_functions", {("fill", ("d",), ("d",))}),
]


@pytest.mark.parametrize("source, field, expected", [case[1:] for case in RULES], ids=[case[0] for case in RULES])
def test_rules(source, field, expected):
    assert set(getattr(analyze(source), field)) == expected


CLEAN = (("clean", ("df",), ("df",)),)  # from an earlier cell: `def clean(df): df[...] = ...`


@pytest.mark.parametrize("source, mutates", [
    ("clean(frame)", {"frame"}),
    ("clean(frames.train)", {"frames"}),
    ("clean(df=frames.train)", {"frames"}),
    ("clean(df=[a, b])", {"a", "b"}),
    ("clean(*rows, df=frame)", {"frame"}),
    ("def apply(clean, df):\n    clean(df)\napply(print, frame)", set()),  # a parameter named clean is not it
])
def test_calling_a_function_of_an_earlier_cell_changes_what_it_changes(source, mutates):
    assert set(analyze(source, CLEAN).mutates) == mutates


def test_arguments_after_a_starred_one_are_still_read():
    assert analyze("clean(*rows, df=frame)", CLEAN).reads == ("clean", "rows", "frame")


def test_errors_without_a_line_and_code_too_deep_say_so_in_full():
    with pytest.raises(AnalysisError) as caught:
        analyze("x = 1\0")
    assert str(caught.value) == "source code string cannot contain null bytes"
    with pytest.raises(AnalysisError) as caught:
        analyze("x = " + " + ".join(["a"] * 1000))
    assert str(caught.value) == "the code is nested too deeply to analyse; split the longest expression"


@pytest.mark.parametrize("source", [
    "def f():\n    try:\n        pass\n    except E as err:\n        pass\n    return err\nf()",
    "def f():\n    from m import x\n    return x\nf()",
    "def f(p):\n    match p:\n        case {'a': 1, **rest}:\n            return rest\nf(v)",
])
def test_names_a_function_binds_by_except_import_and_match_are_its_own(source):
    assert set(analyze(source).reads) <= {"E", "v"}  # err, x and rest are not read from outside
