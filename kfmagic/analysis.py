"""What a cell's code reads, binds and changes, from its source text alone.

The planner wires steps together by variable: a step depends on whoever last wrote a name it
reads. So `analyze` answers, for plain Python source: which names does this code need from
outside (reads), which does it (re)bind at module level (assigns), which module-level objects may
it change in place (mutates), and which modules it imports. It is a static approximation that
follows textual order: a name assigned earlier in the text, even in a branch, counts as bound.
Stdlib only, so it can run anywhere.
"""

import ast
import re
import warnings
from dataclasses import dataclass, field


class AnalysisError(ValueError):
    """Code that cannot be analysed: carries a user-facing message and a 1-based line number."""

    def __init__(self, message: str, lineno: int | None = None):
        super().__init__(message)
        self.message = message
        self.lineno = lineno

    def __str__(self):
        return self.message


@dataclass(frozen=True)
class CodeInfo:
    # free names the code may read before binding them itself; the body of a function (or class,
    # or lambda stored in a variable) counts where the code calls or refers to it, as it runs then
    reads: tuple[str, ...]
    assigns: tuple[str, ...]  # names (re)bound at module level, including via `global`
    mutates: tuple[str, ...]  # module-level names whose object may be changed in place
    imports: tuple[str, ...]  # top-level module names imported anywhere (absolute imports)
    star_imports: tuple[str, ...]  # modules of module-level `from m import *`
    # Module-level functions that change an argument in place: (name, positional params, changed params)
    mutating_functions: tuple = ()
    # Module-level functions, classes (their methods), and names assigned lambdas or values holding
    # this code's functions, with the module-level names their bodies read when called: (name, names)
    function_reads: tuple = ()
    # ... and the module-level names their bodies change when called: (name, ((var, "assign"|"mutate"), ...))
    function_changes: tuple = ()
    # Module-level classes the code defines
    classes: tuple = ()
    # Module-level assignments whose value refers to names this code does not bind (a function or
    # class defined elsewhere, maybe): (target, names stored in the value, names called in it)
    carries: tuple = ()
    # Arguments of module-level `%run` lines: code that may bind any name, as a star import
    runs: tuple = ()
    # The reads made by the code's own statements, not inside a def or lambda (which run when called)
    statement_reads: tuple = ()
    # Module-level names bound by import statements (`np` of `import numpy as np`, `SVC`)
    imported: tuple = ()
    # What each of them names: (`np`, "numpy"), (`rnd`, "numpy.random"), (`seed`, "numpy.random.seed")
    import_paths: tuple = ()
    # Calls of a `seed` reached through module-level names (`np.random.seed(0)`, `seed(1)`): (owner,
    # dotted callee, call text); owner is "" for the code's own statements, else the function (or
    # class, ...) whose body makes the call when called
    seed_calls: tuple = ()
    # Module-level names this code binds to a random generator of its own (`rng = np.random.default_rng(0)`)
    generators: tuple = ()
    # Module-level names its statements hand to a call, as the receiver of a method or an argument
    # (`rng.random(3)`, `split(X, random_state=rs)`): a generator used so has drawn, so changed
    called_with: tuple = ()


def analyze(source: str, functions: tuple = ()) -> CodeInfo:
    """Analyse one cell; IPython `%`/`!` lines must already be rewritten to get_ipython() calls.

    `functions`: `mutating_functions` of code that ran before (the prelude, earlier cells), so
    that `clean(df)` counts as changing `df` when `clean` changes its argument in place.
    """
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    try:
        with warnings.catch_warnings():  # e.g. `x is 1`: the kernel warns when it runs the cell
            warnings.simplefilter("ignore")
            tree = compile(source, "<cell>", "exec", flags | ast.PyCF_ONLY_AST)
            # Parsing alone accepts some code the compiler rejects (`return` outside a function,
            # `import *` in a def, `nonlocal` at module level); the cell would fail when run.
            compile(tree, "<cell>", "exec", flags)
        walker = _Walker(functions)
        walker.visit(tree)
    except SyntaxError as error:
        prefix = f"line {error.lineno}: " if error.lineno else ""
        raise AnalysisError(prefix + str(error.msg), error.lineno) from error
    except ValueError as error:  # null bytes in the source (Python < 3.12)
        raise AnalysisError(str(error)) from error
    except (RecursionError, MemoryError):  # parsing and the walk recurse per nesting level (a sum of 500 terms)
        message = "the code is nested too deeply to analyse; split the longest expression"
        raise AnalysisError(message) from None
    return CodeInfo(
        reads=tuple(walker.reads),
        assigns=tuple(walker.assigns),
        mutates=tuple(name for name in walker.mutates if name not in walker.imported),
        imports=tuple(walker.imports),
        star_imports=tuple(walker.star_imports),
        mutating_functions=tuple(
            (name, fn.positional, tuple(sorted(fn.changed))) for name, fn in walker.functions.items() if fn.changed
        ),
        function_reads=tuple((name, tuple(names)) for name, names in walker.function_reads.items()),
        function_changes=tuple((name, tuple(changes.items())) for name, changes in walker.function_changes.items()),
        classes=tuple(walker.classes),
        carries=tuple((target, stored, called) for target, (stored, called) in walker.carries.items()),
        runs=tuple(walker.runs),
        statement_reads=tuple(walker.statement_reads),
        imported=tuple(walker.imported),
        import_paths=tuple(walker.import_paths.items()),
        seed_calls=tuple(walker.seed_calls),
        generators=tuple(name for name in walker.generators if name in walker.assigns),
        called_with=tuple(walker.called_with),
    )


@dataclass
class _Scope:
    kind: str  # "module" | "class" | "function" (def, lambda) | "comprehension"
    # module and class bodies run top to bottom: the names bound so far. Functions and
    # comprehensions: every local name, known up front as Python's compiler knows it.
    local: set[str] = field(default_factory=set)
    declared_global: set[str] = field(default_factory=set)
    assigned_globals: set[str] = field(default_factory=set)  # `global` names bound so far in text
    # name -> names whose objects it may share (`data = [a, b]`, `for d in data`): changing
    # `d` in place changes `a` and `b`.
    aliases: dict[str, set[str]] = field(default_factory=dict)
    params: tuple[str, ...] = ()  # a function's parameters
    # the module-level names whose bodies this is (or is nested in): a function, the class of a
    # method, the variables a lambda is assigned to; their reads and changes happen when called
    owners: tuple[str, ...] = ()
    rebound: set[str] = field(default_factory=set)  # ... bound to another object by now
    changed_params: set[str] = field(default_factory=set)  # ... that its body changes in place


@dataclass
class _Function:
    positional: tuple  # parameter names a positional argument binds, in order
    changed: set  # parameter names the body changes in place (filled once the body is walked)


# Cell magics that run their body as code of the notebook's namespace: `%%time` binds what its body binds.
_NAMESPACE_CELL_MAGICS = frozenset({"time", "capture", "prun"})
# Line magics that run the rest of their line there: `%time model = fit(X)` binds model.
_NAMESPACE_LINE_MAGICS = frozenset({"time", "prun"})
# Options of %prun that take a value (`-s cumulative`); its others (-r, -q) take none.
_PRUN_VALUE_OPTIONS = frozenset("DlsT")
# `%timeit` / `%%timeit` run their code against the notebook's namespace as a function's body: it
# reads (and may change) the namespace's objects, and what it assigns stays its own.
_TIMEIT_VALUE_OPTIONS = frozenset("nrp")


# What makes a random generator of one's own: numpy's default_rng, Generator and RandomState, the
# random module's Random (by the last part of the callee's name: `np.random.default_rng(0)`, `Random(1)`).
_GENERATOR_FACTORIES = frozenset({"default_rng", "Generator", "RandomState", "Random"})


def _makes_generator(value: ast.expr) -> bool:
    """Whether `value` is a call making a random generator (`np.random.default_rng(42)`)."""
    if not isinstance(value, ast.Call):
        return False
    func = value.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    return name in _GENERATOR_FACTORIES


def _magic_call(node: ast.Call, method: str, arity: int):
    """The literal arguments of `get_ipython().<method>(...)` (IPython's rewrite of a magic), else None."""
    func = node.func
    if not (isinstance(func, ast.Attribute) and func.attr == method and isinstance(func.value, ast.Call)):
        return None
    if getattr(func.value.func, "id", None) != "get_ipython" or len(node.args) != arity or node.keywords:
        return None
    if not all(isinstance(arg, ast.Constant) and isinstance(arg.value, str) for arg in node.args):
        return None
    return tuple(arg.value for arg in node.args)


def _line_magic(node: ast.Call):
    """(magic, line) for `get_ipython().run_line_magic(...)`, else None."""
    return _magic_call(node, "run_line_magic", 2)


def _magic_code(line: str, value_options=_PRUN_VALUE_OPTIONS) -> str:
    """The code of a `%prun` (or `%timeit`) line, after its options (`-s cumulative -q`, `-n1 -r 3`),
    as IPython's getopt reads them."""
    rest = line.lstrip()
    while rest.startswith("-"):
        token, _, rest = rest.partition(" ")
        rest = rest.lstrip()
        if token == "--":
            break
        flags = token[1:]
        for index, flag in enumerate(flags):
            if flag in value_options:
                if index == len(flags) - 1:  # `-s cumulative`: the value is the next word
                    _, _, rest = rest.partition(" ")
                    rest = rest.lstrip()
                break  # `-scumulative`: the value is the rest of the word
    return rest


def _cell_magic(node: ast.Call):
    """(magic, line, body) for `get_ipython().run_cell_magic(...)`, else None."""
    return _magic_call(node, "run_cell_magic", 3)


def _magic_body(body: str) -> list[ast.stmt]:
    """The statements of a cell magic's body; its own `%`/`!` lines count as `pass`. [] if unreadable."""
    lines = [
        line[: len(line) - len(line.lstrip())] + "pass" if line.lstrip()[:1] in ("%", "!") else line
        for line in body.splitlines()
    ]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse("\n".join(lines)).body
    except (SyntaxError, ValueError, RecursionError):
        return []


# Methods that evaluate an expression given as text, where `@name` reads a variable of the caller
# (pandas' DataFrame.query and .eval, pd.eval): `frame.query('x > @limit')` reads limit.
_EXPRESSION_METHODS = frozenset({"query", "eval"})
_EXPRESSION_NAME = re.compile(r"@([A-Za-z_]\w*)")
# Module functions that look every name of their expression up in the caller (`pd.eval('df1 + df2')`,
# `numexpr.evaluate('x > 0.5')`), but the math functions they know, unless given the names to use:
# function name -> (module, the names that module goes by when imported elsewhere, as the prelude does).
_TEXT_EVALUATORS = {"eval": ("pandas", ("pd", "pandas")), "evaluate": ("numexpr", ("ne", "numexpr"))}
_EVALUATOR_NAMESPACES = frozenset({"local_dict", "global_dict", "resolvers"})
_EVALUATOR_FUNCTIONS = frozenset({
    "sin", "cos", "tan", "arcsin", "arccos", "arctan", "arctan2", "sinh", "cosh", "tanh", "arcsinh",
    "arccosh", "arctanh", "abs", "log", "log10", "log1p", "exp", "expm1", "sqrt", "floor", "ceil",
    "where", "real", "imag", "complex", "conj", "contains", "sum", "prod", "round", "fmod",
})


def _eval_variables(text: str) -> list[str]:
    """The names `pd.eval(text)` looks up in its caller (none if the text is not an expression)."""
    try:
        tree = ast.parse(text.strip())
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    return [node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
            and node.id not in _EVALUATOR_FUNCTIONS]

# Calls whose result holds (or iterates over) the very objects passed in.
_SHARING_CALLS = frozenset({"zip", "enumerate", "reversed", "list", "tuple", "iter", "sorted"})


def _function_scope(body: list[ast.AST], params: set[str]) -> _Scope:
    """A def/lambda scope: the names its body binds (not nested scopes') plus its parameters.

    `nonlocal` names stay in it: they are locals of an enclosing function, which resolves the same.
    """
    scan = _Bindings()
    for node in body:
        scan.visit(node)
    return _Scope("function", (scan.names | set(params)) - scan.globals, scan.globals, params=tuple(params))


class _Bindings(ast.NodeVisitor):
    """Collect what a body binds and declares, stopping at nested scopes (except their names
    and comprehension walruses, which bind here)."""

    def __init__(self):
        self.names, self.globals = set(), set()
        self._in_comprehension = 0

    def visit_Name(self, node):
        if not isinstance(node.ctx, ast.Load) and not self._in_comprehension:
            self.names.add(node.id)

    def visit_NamedExpr(self, node):
        self.names.add(node.target.id)
        self.visit(node.value)

    def _comprehension(self, node):
        self._in_comprehension += 1
        self.generic_visit(node)
        self._in_comprehension -= 1

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comprehension

    def visit_FunctionDef(self, node):
        self.names.add(node.name)

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef

    def visit_Lambda(self, node):
        pass

    def visit_Import(self, node):
        self.names.update(_import_binding(alias) for alias in node.names)

    def visit_ImportFrom(self, node):
        self.names.update(alias.asname or alias.name for alias in node.names)

    def visit_Global(self, node):
        self.globals.update(node.names)

    def visit_ExceptHandler(self, node):
        if node.name:
            self.names.add(node.name)
        self.generic_visit(node)

    visit_MatchAs = visit_MatchStar = visit_ExceptHandler  # all keep their capture in .name

    def visit_MatchMapping(self, node):
        if node.rest:
            self.names.add(node.rest)
        self.generic_visit(node)


def _import_binding(alias: ast.alias) -> str:
    """`import a.b.c` binds `a`; `import a.b as c` binds `c`."""
    return alias.asname or alias.name.partition(".")[0]


def _root(node: ast.AST) -> str | None:
    """The name a receiver chain starts at: `x` for `x.a[0].b` and for `x.a().b` (a method may
    return part of its object: `groups.setdefault(k, []).append(v)`); None for `f(x).b`."""
    while True:
        if isinstance(node, (ast.Attribute, ast.Subscript)):
            node = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            node = node.func.value
        else:
            return node.id if isinstance(node, ast.Name) else None


def _passes_inplace(node: ast.Call) -> bool:
    """`inplace=True`, or an `inplace=` that may be true (`inplace=flag`)."""
    return any(
        keyword.arg == "inplace" and not (isinstance(keyword.value, ast.Constant) and not keyword.value.value)
        for keyword in node.keywords
    )


class _Walker(ast.NodeVisitor):
    """Walk the code in execution order, resolving each name against the scopes around it.

    Function and lambda bodies run later, when called, so they are walked once the statement
    defining them has finished (for methods: once the outermost class statement has): a
    recursive function or a method naming its own class does not read that name from outside,
    while a name bound only by later statements still counts as read.
    """

    def __init__(self, functions=()):
        self.scopes = [_Scope("module")]
        self.pending = []  # (enclosing scopes, function scope, body) waiting to be walked
        self.reads, self.assigns, self.mutates, self.imports = {}, {}, {}, {}  # ordered sets
        self.star_imports, self.imported = [], {}  # imported: names bound by module-level imports (ordered)
        self.discarded = set()  # calls whose value is thrown away: the whole of an expression statement
        self.known = {name: _Function(tuple(positional), set(changed)) for name, positional, changed in functions}
        self.functions = {}  # module-level functions defined here: name -> _Function
        self.function_reads = {}  # owner (see _Scope.owners) -> module-level names its body reads
        self.function_changes = {}  # owner -> {module-level name its body changes: "assign" | "mutate"}
        self.classes = {}  # module-level classes defined here (ordered set)
        self.carries = {}  # target -> (stored names, called names) of its value, bound elsewhere
        self.assigning = ()  # the targets of the module-level assignment whose value is being walked
        self.class_names = []  # the module-level class whose body is being walked (its methods' owner)
        self.runs = []  # `%run` arguments
        self.statement_reads = {}  # reads outside any function body
        self.import_paths = {}  # module-level name bound by an import -> the dotted path it names
        self.seed_calls = []  # (owner, dotted callee, call text)
        self.generators, self.called_with = {}, {}  # ordered sets, see CodeInfo

    def visit(self, node):
        super().visit(node)
        if isinstance(node, ast.stmt) and self.scopes[-1].kind != "class":
            while self.pending:
                enclosing, scope, body = self.pending.pop(0)
                outer, self.scopes = self.scopes, [*enclosing, scope]
                for child in body:
                    self.visit(child)
                self.scopes = outer

    # --- resolving names -------------------------------------------------------------------

    def _lookup(self, name: str) -> bool | None:
        """None when `name` is local to an enclosing function or comprehension; otherwise it is
        a module-level name, and the result says whether this code has bound it already."""
        if self._scope_of(name) is not self.scopes[0]:
            return None
        return name in self.scopes[0].local or any(name in s.assigned_globals for s in self.scopes)

    def _owners(self) -> tuple:
        return next((scope.owners for scope in reversed(self.scopes) if scope.owners), ())

    def _load(self, name: str):
        bound = self._lookup(name)
        if bound is None:
            return
        owners = self._owners()
        if owners:  # read when the owner is called, not now (unless the body bound it: `global g; g = 1`)
            if any(name in scope.assigned_globals for scope in self.scopes[1:]):
                return
            for owner in owners:
                if name != owner:
                    self.function_reads.setdefault(owner, {}).setdefault(name)
            return
        if bound is False and not (name.startswith("__") and name.endswith("__")):
            self.reads.setdefault(name)
            if all(scope.kind != "function" for scope in self.scopes):
                self.statement_reads.setdefault(name)
        self._run_owner(name)

    def _run_owner(self, name: str):
        """The code refers to a function (class, ...) defined here: what its body reads and changes
        happens now, and so does what the functions it refers to read and change."""
        todo, seen = [name], set()
        while todo:
            owner = todo.pop()
            if owner in seen or (owner not in self.function_reads and owner not in self.function_changes):
                continue
            seen.add(owner)
            for _, dotted, text in [call for call in self.seed_calls if call[0] == owner]:
                if ("", dotted, text) not in self.seed_calls:  # `def reset(): np.random.seed(0)` then `reset()`
                    self.seed_calls.append(("", dotted, text))
            for read in self.function_reads.get(owner, ()):
                todo.append(read)
                if read not in self.scopes[0].local and not (read.startswith("__") and read.endswith("__")):
                    self.reads.setdefault(read)
            for changed, how in self.function_changes.get(owner, {}).items():
                if how == "assign":
                    self.scopes[0].local.add(changed)
                    self.assigns.setdefault(changed)
                else:
                    self.mutates.setdefault(changed)

    def _visit_apart(self, statements):
        """Code that runs now in a namespace of its own over the module's (`%timeit`): what it reads
        and changes counts, what it binds stays there."""
        scan = _Bindings()
        for statement in statements:
            scan.visit(statement)
        self.scopes = [*self.scopes, _Scope("comprehension", scan.names - scan.globals)]
        for statement in statements:
            self.visit(statement)
        self.scopes = self.scopes[:-1]

    def _bind(self, name: str, scope: _Scope | None = None) -> bool:
        """Bind `name` in `scope` (default: the innermost); True if that binds a module name."""
        scope = scope or self.scopes[-1]
        if scope.kind == "module":
            scope.local.add(name)
            for records in (self.function_reads, self.function_changes, self.carries, self.import_paths):
                records.pop(name, None)  # rebound: no longer the function (or module) it was
        elif name in scope.declared_global:
            scope.assigned_globals.add(name)
            owners = self._owners()
            for owner in owners:
                self.function_changes.setdefault(owner, {})[name] = "assign"
            if owners:
                return True
        else:
            if scope.kind == "class":
                scope.local.add(name)
            return False
        self.assigns.setdefault(name)
        return True

    def _scope_of(self, name: str) -> _Scope:
        """The scope `name` resolves to here (the module scope for globals)."""
        innermost = len(self.scopes) - 1
        for depth in range(innermost, 0, -1):
            scope = self.scopes[depth]
            if scope.kind == "class" and depth != innermost:
                continue  # class bodies do not enclose the functions defined in them
            if name in scope.declared_global:
                break
            if name in scope.local:
                return scope
        return self.scopes[0]

    def _mutate(self, node: ast.AST, *names: str):
        """The object `node` starts at may change in place: so may every object it may share."""
        todo, seen = [_root(node), *names], set()
        while todo:
            name = todo.pop()
            if name is None or name in seen:
                continue
            seen.add(name)
            scope = self._scope_of(name)
            if scope is self.scopes[0]:
                owners = self._owners()
                for owner in owners:  # changed when the owner is called
                    self.function_changes.setdefault(owner, {}).setdefault(name, "mutate")
                if not owners:
                    self.mutates.setdefault(name)
            elif name in scope.params and name not in scope.rebound:
                scope.changed_params.add(name)
            todo.extend(scope.aliases.get(name, ()))

    def _sources(self, node: ast.AST) -> set[str]:
        """Names whose objects the value of `node` may be, or hold (`[a, b]`, `x[0]`, `zip(a, b)`)."""
        if isinstance(node, ast.Name):
            return {node.id}
        if isinstance(node, (ast.Starred, ast.Subscript)):
            return self._sources(node.value)
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return set().union(*map(self._sources, node.elts))
        if isinstance(node, ast.Dict):
            return set().union(*map(self._sources, node.values))
        if isinstance(node, ast.IfExp):
            return self._sources(node.body) | self._sources(node.orelse)
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in _SHARING_CALLS:
                return set().union(*map(self._sources, node.args))
            if isinstance(func, ast.Attribute) and func.attr in ("items", "values") and not node.args:
                return self._sources(func.value)
        return set()

    def _alias(self, target: ast.AST, sources: set[str]):
        """After `target = value` (or `for target in value`): target's names share `sources`."""
        for node in ast.walk(target):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                scope = self._scope_of(node.id)
                if node.id in scope.params and node.id not in sources:
                    scope.rebound.add(node.id)  # `df = df.copy()`: no longer the caller's object
                if sources - {node.id}:
                    scope.aliases[node.id] = sources - {node.id}
                else:
                    scope.aliases.pop(node.id, None)

    # --- names and in-place changes --------------------------------------------------------

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load):
            self._load(node.id)
        else:  # Store, or Del: `del x` unbinds, which downstream sees as a rebinding
            self._bind(node.id)

    def visit_Attribute(self, node):
        if not isinstance(node.ctx, ast.Load):  # x.a = ..., x[k] += ..., del x[k]
            self._mutate(node)
        self.generic_visit(node)

    visit_Subscript = visit_Attribute

    def visit_Expr(self, node):
        """A call that is the whole statement: its value is thrown away, so it is made for what it
        does (`model.fit(X)`, `items.append(x)`); so is a discarded comprehension's element."""
        value = node.value.value if isinstance(node.value, ast.Await) else node.value
        if isinstance(value, (ast.ListComp, ast.SetComp)):  # `[out.append(x) for x in xs]`
            value = value.elt.value if isinstance(value.elt, ast.Await) else value.elt
        if isinstance(value, ast.Call):
            self.discarded.add(value)
        self.generic_visit(node)

    def visit_Call(self, node):
        assigning, self.assigning = self.assigning, ()  # a lambda passed to a call may run now
        self._call(node)
        self.assigning = assigning

    def _call(self, node):
        line_magic = _line_magic(node)
        if line_magic and self.scopes[-1].kind == "module":
            magic, line = line_magic
            if magic == "run":  # `%run script.py` (or a notebook): its names are unknown here
                self.runs.append(line)
            elif magic in _NAMESPACE_LINE_MAGICS:  # `%time model = fit(X)`: the line runs here
                statements = _magic_body(_magic_code(line) if magic == "prun" else line)
                if node not in self.discarded and len(statements) == 1 and isinstance(statements[0], ast.Expr):
                    self.visit(statements[0].value)  # `m = %time X.mean()`: its value is used
                else:
                    for statement in statements:
                        self.visit(statement)
            elif magic == "timeit":  # `%timeit df1 + df2` reads df1 and df2
                self._visit_apart(_magic_body(_magic_code(line, _TIMEIT_VALUE_OPTIONS)))
        magic = _cell_magic(node)
        if magic and magic[0] in _NAMESPACE_CELL_MAGICS and self.scopes[-1].kind == "module":
            for statement in _magic_body(magic[2]):  # `%%time` / `%%capture` cells: the body runs here
                self.visit(statement)
            target = magic[1].split()[0] if magic[0] == "capture" and magic[1].split() else ""
            if target.isidentifier():  # `%%capture out` binds out
                self._bind(target)
        if magic and magic[0] == "timeit" and self.scopes[-1].kind == "module":  # setup line, then body
            self._visit_apart(_magic_body(_magic_code(magic[1], _TIMEIT_VALUE_OPTIONS)) + _magic_body(magic[2]))
        self._seed_call(node)
        self._called_with(node)
        if isinstance(node.func, ast.Attribute) and (node in self.discarded or _passes_inplace(node)):
            # A method called for its effect may change its receiver (`model.fit(X)`, `lst.append(x)`,
            # `df['c'].fillna(0, inplace=True)`); one whose value is used (`m = X.mean()`) only reads it.
            self._mutate(node.func)
        elif isinstance(node.func, ast.Name) and self._scope_of(node.func.id) is self.scopes[0]:
            function = self.functions.get(node.func.id) or self.known.get(node.func.id)
            if function is not None and function.changed:  # `clean(df)` where clean changes its argument
                for param, arg in zip(function.positional, node.args):
                    if isinstance(arg, ast.Starred):
                        break
                    if param in function.changed:
                        self._mutate(arg, *self._sources(arg))
                for keyword in node.keywords:
                    if keyword.arg in function.changed:
                        self._mutate(keyword.value, *self._sources(keyword.value))
        self.generic_visit(node)
        self._expression_names(node)

    def _expression_names(self, node):
        """`frame.query('x > @limit')`: the `@` names of an expression given as text are read; all
        the names of a `pd.eval('df1 + df2')` (or `numexpr.evaluate`) expression are."""
        if isinstance(node.func, ast.Attribute) and node.func.attr in (*_EXPRESSION_METHODS, *_TEXT_EVALUATORS):
            top_level = self._names_evaluator(node.func) and not any(
                keyword.arg in _EVALUATOR_NAMESPACES for keyword in node.keywords)
            texts = [*node.args[:1], *(keyword.value for keyword in node.keywords if keyword.arg in ("expr", "ex"))]
            for text in texts:
                if isinstance(text, ast.Constant) and isinstance(text.value, str):
                    for name in _EXPRESSION_NAME.findall(text.value) + (_eval_variables(text.value) if top_level else []):
                        self._load(name)

    def _names_evaluator(self, func):
        """Whether `func` is `pd.eval` or `numexpr.evaluate`: called through a name this code imports
        the module as, else (imported in another cell, the prelude) a name the module goes by."""
        if func.attr not in _TEXT_EVALUATORS or not isinstance(func.value, ast.Name):
            return False
        module, usual_names = _TEXT_EVALUATORS[func.attr]
        path = self.import_paths.get(func.value.id)
        return path == module if path is not None else func.value.id in usual_names

    def _called_with(self, node):
        """Record the module-level names the code's own statements hand to this call (see CodeInfo)."""
        if any(scope.kind == "function" for scope in self.scopes):
            return
        handed = [node.func.value] if isinstance(node.func, ast.Attribute) else []
        handed += [*node.args, *(keyword.value for keyword in node.keywords)]
        for value in handed:
            value = value.value if isinstance(value, ast.Starred) else value
            if isinstance(value, ast.Name) and self._scope_of(value.id) is self.scopes[0]:
                self.called_with.setdefault(value.id)

    def _seed_call(self, node):
        """Record `np.random.seed(0)`, `random.seed(1)`, `seed(2)`: calls of a `seed` reached through
        a module-level name, which may seed a global random generator (plan.py tells which)."""
        parts, func = [], node.func
        while isinstance(func, ast.Attribute):
            parts.insert(0, func.attr)
            func = func.value
        if not isinstance(func, ast.Name) or (parts or [func.id])[-1] != "seed":
            return
        if self._scope_of(func.id) is self.scopes[0]:
            owners = self._owners() or ("",)
            text = ast.unparse(node)
            self.seed_calls += [(owner, ".".join([func.id, *parts]), text) for owner in owners]

    # --- statements whose parts run in a different order than ast lists them ----------------

    def visit_Assign(self, node):
        module_level = len(self.scopes) == 1
        targets = tuple(target.id for target in node.targets if isinstance(target, ast.Name)) if module_level else ()
        for target in targets:  # `rng = np.random.default_rng(0)` binds a generator; any other value does not
            self.generators.pop(target, None)
            if _makes_generator(node.value):
                self.generators.setdefault(target)
        self.assigning = targets  # lambdas in the value belong to the targets: they run when called
        self.visit(node.value)
        self.assigning = ()
        for target in node.targets:
            self.visit(target)
        for target in targets:
            self._carry(target, node.value)
        values = node.value.elts if isinstance(node.value, (ast.Tuple, ast.List)) else None
        for target in node.targets:
            pairs = isinstance(target, (ast.Tuple, ast.List)) and values is not None and len(target.elts) == len(values)
            if pairs and not any(isinstance(item, ast.Starred) for item in [*target.elts, *values]):
                for item, value in zip(target.elts, values):  # `a, b = b, a`
                    self._alias(item, self._sources(value))
            else:
                self._alias(target, self._sources(node.value))

    def _carry(self, target: str, value: ast.expr):
        """`target = value` holds the functions it stores (`ops = {'f': show}`) and the instances of
        the classes it calls (`model = Model()`): calling them later reads what their bodies read."""
        stored, called = {}, {}
        local = {n.id for c in ast.walk(value) if isinstance(c, ast.comprehension)
                 for n in ast.walk(c.target) if isinstance(n, ast.Name)}
        todo = [value]
        while todo:
            node = todo.pop()
            if isinstance(node, ast.Lambda):
                continue  # its body is the target's already
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                called.setdefault(node.func.id)
                todo += [*node.args, *node.keywords]
                continue
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in local:
                stored.setdefault(node.id)
            todo += list(ast.iter_child_nodes(node))
        defined_here = {*self.function_reads, *self.function_changes}
        for name in [*(n for n in stored if n in defined_here), *(n for n in called if n in self.classes)]:
            if name != target:
                self.function_reads.setdefault(target, {}).setdefault(name)
        elsewhere = [n for n in stored if n not in self.scopes[0].local], [n for n in called if n not in self.scopes[0].local]
        if any(elsewhere):
            self.carries[target] = tuple(map(tuple, elsewhere))

    def visit_AugAssign(self, node):
        if isinstance(node.target, ast.Name):  # a rebinding that reads the old value first
            self._load(node.target.id)
            self.visit(node.value)
            self._bind(node.target.id)
        else:
            self.visit(node.target)
            self.visit(node.value)

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self.visit(node.value)
            self.visit(node.target)
        if self.scopes[-1].kind != "function":  # local variable annotations are never evaluated
            self.visit(node.annotation)

    def visit_For(self, node):
        self.visit(node.iter)
        self.visit(node.target)
        self._alias(node.target, self._sources(node.iter))
        for child in node.body + node.orelse:
            self.visit(child)

    visit_AsyncFor = visit_For

    def visit_NamedExpr(self, node):
        self.visit(node.value)
        scope = next(s for s in reversed(self.scopes) if s.kind != "comprehension")
        self._bind(node.target.id, scope)

    def visit_ExceptHandler(self, node):
        # `as e` rebinds e, and Python deletes it after the handler: either way upstream's e
        # is gone, so e is an assign.
        if node.type is not None:
            self.visit(node.type)
        if node.name:
            self._bind(node.name)
        for child in node.body:
            self.visit(child)

    def visit_Import(self, node):
        for alias in node.names:
            self.imports.setdefault(alias.name.partition(".")[0])
            if self._bind(_import_binding(alias)):
                self.imported.setdefault(_import_binding(alias))
                self.import_paths[_import_binding(alias)] = alias.name if alias.asname else alias.name.partition(".")[0]

    def visit_ImportFrom(self, node):
        if node.level == 0:
            self.imports.setdefault(node.module.partition(".")[0])
        for alias in node.names:
            if alias.name == "*":  # the compiler allows it only at module level
                self.star_imports.append("." * node.level + (node.module or ""))
            elif self._bind(alias.asname or alias.name):
                self.imported.setdefault(alias.asname or alias.name)
                if node.level == 0:
                    self.import_paths[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    # --- match patterns: captures bind, value and class patterns read ------------------------

    def visit_MatchAs(self, node):
        if node.pattern is not None:
            self.visit(node.pattern)
        if node.name:
            self._bind(node.name)

    def visit_MatchStar(self, node):
        if node.name:
            self._bind(node.name)

    def visit_MatchMapping(self, node):
        self.generic_visit(node)
        if node.rest:
            self._bind(node.rest)

    # --- nested scopes -----------------------------------------------------------------------

    def visit_FunctionDef(self, node):
        for decorator in node.decorator_list:
            self.visit(decorator)
        module_level = self.scopes[-1].kind == "module"
        owners = (node.name,) if module_level else self._method_owner()
        scope = self._function(node.args, node.body, node.returns, owners)
        if self._bind(node.name) and not node.decorator_list:
            positional = tuple(arg.arg for arg in [*node.args.posonlyargs, *node.args.args])
            self.functions[node.name] = _Function(positional, scope.changed_params)
        elif self._scope_of(node.name) is self.scopes[0]:
            self.functions.pop(node.name, None)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node):
        in_function = any(scope.kind == "function" for scope in self.scopes)
        self._function(node.args, [node.body], None, () if in_function else self.assigning or self._method_owner())

    def _method_owner(self):
        """A def or lambda directly in a module-level class's body belongs to that class."""
        return (self.class_names[-1],) if self.class_names and self.scopes[-1].kind == "class" else ()

    def _function(self, args: ast.arguments, body: list[ast.AST], returns: ast.expr | None, owners=()):
        """Defaults and annotations are evaluated now, in this scope; the body is deferred."""
        params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
        params += [arg for arg in (args.vararg, args.kwarg) if arg is not None]
        evaluated = [*args.defaults, *args.kw_defaults, *(arg.annotation for arg in params), returns]
        for expr in evaluated:
            if expr is not None:
                self.visit(expr)
        scope = _function_scope(body, [arg.arg for arg in params])
        scope.owners = owners
        self.pending.append((self.scopes, scope, body))
        return scope

    def visit_ClassDef(self, node):
        for expr in [*node.decorator_list, *node.bases, *node.keywords]:
            self.visit(expr)
        declared = _function_scope(node.body, set()).declared_global
        module_level = len(self.scopes) == 1
        self.class_names += [node.name] if module_level else []
        self.scopes = [*self.scopes, _Scope("class", set(), declared)]
        for child in node.body:
            self.visit(child)
        self.scopes = self.scopes[:-1]
        self.class_names = self.class_names[:-1] if module_level else self.class_names
        self._bind(node.name)
        if module_level:
            self.classes.setdefault(node.name)

    def _comprehension(self, node, results: list[ast.expr]):
        """The first iterable is evaluated outside; loop variables stay inside (Python 3)."""
        generators = node.generators
        self.visit(generators[0].iter)
        targets = [n for g in generators for n in ast.walk(g.target) if isinstance(n, ast.Name)]
        local = {n.id for n in targets if isinstance(n.ctx, ast.Store)}
        self.scopes = [*self.scopes, _Scope("comprehension", local)]
        for index, generator in enumerate(generators):
            if index:
                self.visit(generator.iter)
            self.visit(generator.target)
            for condition in generator.ifs:
                self.visit(condition)
        for result in results:
            self.visit(result)
        self.scopes = self.scopes[:-1]

    def visit_ListComp(self, node):
        self._comprehension(node, [node.elt])

    visit_SetComp = visit_GeneratorExp = visit_ListComp

    def visit_DictComp(self, node):
        self._comprehension(node, [node.key, node.value])
