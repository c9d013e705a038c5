"""A run computes what the notebook computes: each case runs its cells top to bottom in a real
kernel, then as a pipeline (`%pipeline run`, every step its own process), and the values (and
what the steps print) must be the same. One kernel runs every case, `%reset` between them."""

import json
import re
import subprocess

import nbformat
import pytest
from conftest import cell_text, execute, make_notebook

# (id, cells, names whose values must agree)
CASES = [
    ("function-reads-global-when-called",
     ["%%step s1\nx = 5", "%%step s2\ndef show():\n    print('x is', x)\n    return x", "%%step s3\nx = 6",
      "%%step s4\nshown = show()"],
     ["shown"]),
    ("function-reads-global-changed-in-place",
     ["%%step s1\nx = [5]", "%%step s2\ndef show():\n    return list(x)", "%%step s3\nx.append(6)", "%%step s4\nshown = show()"],
     ["shown"]),
    ("function-passed-to-map",
     ["%%step s1\nk = 2", "%%step s2\ndef scale(v):\n    return v * k", "%%step s3\nk = 3",
      "%%step s4\nout = list(map(scale, [1, 2]))"],
     ["out"]),
    ("function-passed-to-dataframe-apply",
     ["%%prelude\nimport pandas as pd", "%%step s1\nframe = pd.Series([1, 2])\nfactor = 10",
      "%%step s2\ndef times(v):\n    return v * factor", "%%step s3\nfactor = 100",
      "%%step s4\nout = frame.apply(times).tolist()"],
     ["out"]),
    ("lambda-stored-in-a-dict",
     ["%%step s1\nx = 1", "%%step s2\nops = {'get': lambda: x}", "%%step s3\nx = 2", "%%step s4\nout = ops['get']()"],
     ["out"]),
    ("method-reads-global-when-called",
     ["%%step s1\nrate = 2", "%%step s2\nclass Model:\n    def get(self):\n        return rate\nmodel = Model()",
      "%%step s3\nrate = 3", "%%step s4\nout = model.get()"],
     ["out"]),
    ("function-changes-a-global",
     ["%%step s1\nitems = []", "%%step s2\ndef add(v):\n    items.append(v)", "%%step s3\nadd(1)\nadd(2)",
      "%%step s4\nout = list(items)"],
     ["out"]),
    ("function-rebinds-a-global",
     ["%%step s1\ncount = 0", "%%step s2\ndef bump():\n    global count\n    count += 1", "%%step s3\nbump()",
      "%%step s4\nout = count * 10"],
     ["out"]),
    ("function-of-the-prelude-assigns-a-global-the-caller-reads",
     ["%%prelude\ndef setup():\n    global mode\n    mode = 'fast'", "%%step a\nsetup()\nout = mode * 2"],
     ["out"]),
    ("function-of-an-earlier-step-assigns-a-global-the-caller-reads",
     ["%%step define\ndef setup(v):\n    global mode\n    mode = v", "%%step a\nsetup('slow')\nout = [mode]"],
     ["out"]),
    ("user-code-pickles-an-object-of-an-earlier-steps-class",
     ["%%step a\nclass Foo:\n    def __init__(self):\n        self.v = 7\nobj = Foo()",
      "%%step b\nimport pickle\ncopy = pickle.loads(pickle.dumps(obj))\nout = (type(copy).__name__, copy.v)"],
     ["out"]),
    ("user-code-pickles-an-object-a-factory-made",
     ["%%step a\nclass Foo:\n    pass\ndef make():\n    return Foo()\nobj = make()",
      "%%step b\nimport pickle\nout = type(pickle.loads(pickle.dumps(obj))).__name__"],
     ["out"]),
    ("joblib-dumps-a-pipeline-with-a-custom-transformer",
     ["%%prelude\nimport numpy as np\nfrom sklearn.base import BaseEstimator, TransformerMixin",
      "%%step fit\nfrom sklearn.pipeline import make_pipeline\nfrom sklearn.linear_model import LinearRegression\n"
      "class Doubler(BaseEstimator, TransformerMixin):\n    def fit(self, X, y=None):\n        return self\n"
      "    def transform(self, X):\n        return X * 2\n"
      "X = np.arange(6.0).reshape(3, 2)\nmodel = make_pipeline(Doubler(), LinearRegression()).fit(X, [1.0, 2.0, 3.0])",
      "%%step save\nimport joblib\njoblib.dump(model, 'model.joblib')\nout = joblib.load('model.joblib').predict(X).round(6).tolist()"],
     ["out"]),
    ("star-import-in-the-prelude-chains-nothing",
     ["%%prelude\nfrom helpers import *", "%%step a\nnp.random.seed(0)\nfirst = float(np.random.rand())",
      "%%step b\nz = np.zeros(2).tolist()\ndoubled = double(3)"],
     ["first", "z", "doubled"]),
    ("a-parameter-reported-as-a-metric",
     ["%%params\nrate = 3", "%%step a --metrics rate score\nscore = rate * 0.5"],
     ["score"]),
    ("a-pandas-query-reads-an-at-name-of-an-earlier-step",
     ["%%prelude\nimport pandas as pd", "%%step s1\nlimit = 4", "%%step s2\nframe = pd.DataFrame({'x': [1, 5, 9]})\n"
      "out = frame.query('x > @limit')['x'].tolist()"],
     ["out"]),
    ("pd-eval-reads-frames-of-an-earlier-step-by-name",  # PythonDataScienceHandbook 03.12, a step per cell
     ["%%prelude\nimport pandas as pd", "%%step frames\ndf1, df2 = (pd.DataFrame({'x': [1, 2]}) * k for k in (1, 10))",
      "%%step total\nout = pd.eval('df1 + df2 * 2')['x'].tolist()"],
     ["out"]),
    ("timeit-reads-what-an-earlier-step-made",  # PythonDataScienceHandbook 03.12: `%timeit df1 + df2`, a step per cell
     ["%%step a\nxs = [3, 1, 2]", "%%step b\n%timeit -n1 -r1 sorted(xs)\nout = 1",
      "%%step c\n%%timeit -n1 -r1 ys = list(xs)\nys.sort()"],
     ["out"]),
    ("steps-drawing-in-turn-from-a-generator-of-ones-own",  # PythonDataScienceHandbook 03.12: rng drawn in each section
     ["%%prelude\nimport numpy as np\nimport pandas as pd\nfrom sklearn.model_selection import train_test_split",
      "%%step make\nrng = np.random.default_rng(42)\nx = rng.random(3)",
      "%%step frames\ndf1, df2 = (pd.DataFrame(rng.random((2, 2))) for i in range(2))",
      "%%step more\ny = rng.integers(0, 1000, 4)\nstate = np.random.RandomState(0)",
      "%%step split\nparts = train_test_split(list(range(6)), random_state=state)",
      "%%step again\nparts2 = train_test_split(list(range(6)), random_state=state)\nz = rng.normal(size=2)",
      "%%step report\nout = [v.round(9).tolist() for v in (x, df1.values, df2.values, y, z)] + [parts, parts2]"],
     ["out"]),
    ("steps-drawing-in-turn-from-a-generator-the-prelude-made",
     ["%%prelude\nimport numpy as np\nrng = np.random.default_rng(7)", "%%step a\nx = rng.random(2)",
      "%%step b\ny = rng.normal(size=2)", "%%step c\nout = [x.round(9).tolist(), y.round(9).tolist(), rng.random(1).round(9).tolist()]"],
     ["out"]),
    ("steps-that-seed-the-global-random-generators-before-they-draw",
     ["%%prelude\nimport random\nimport numpy as np\nnp.random.seed(0)\nrandom.seed(0)",
      "%%step a\nfirst = (float(np.random.rand()), random.random())",
      "%%step b\nnp.random.seed(0)\nrandom.seed(0)\nsecond = (float(np.random.rand()), random.random())"],
     ["first", "second"]),
]
# Cases whose pipeline cannot give the notebook's values: the run says so, naming the step.
WARNED = [
    ("a-step-draws-after-another-from-the-preludes-seed",
     ["%%prelude\nimport numpy as np\nnp.random.seed(0)", "%%step a\nfirst = np.random.permutation(5).tolist()",
      "%%step b\nsecond = np.random.permutation(5).tolist()"],
     ["first", "second"]),
]

HELPERS = "import numpy as np\n\n\ndef double(v):\n    return v * 2\n"


def _compare_cell(names):
    return (
        "import json as _json, kfmagic as _kfmagic\n"
        f"_names = {names!r}\n"
        "_top = {n: repr(globals()[n]) for n in _names}\n"
        "_run = _kfmagic.pipeline().run()\n"
        "print('RESULT' + _json.dumps({'top': _top, 'pipe': {n: repr(_run.load(n)) for n in _names},"
        " 'metrics': _run.metrics, 'inputs': {s.name: s.inputs for s in _kfmagic.pipeline().plan().steps}}))"
    )


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Each case's cells then its comparison, in one kernel: {case id: (result, cell outputs)}."""
    folder = tmp_path_factory.mktemp("fidelity")
    (folder / "helpers.py").write_text(HELPERS)
    sources, spans = ["%load_ext kfmagic"], {}
    for case, cells, names in CASES + WARNED:
        start = len(sources)
        sources += ["%reset -f", "%pipeline reset", *cells, _compare_cell(names)]
        spans[case] = (start, len(sources))
    nb = execute(make_notebook(sources), folder, allow_errors=True)
    found = {}
    for case, (start, end) in spans.items():
        shown = [cell_text(cell) for cell in nb.cells[start:end]]
        match = re.search(r"RESULT(\{.*\})", shown[-1])
        found[case] = (json.loads(match.group(1)) if match else None, shown)
    return found


@pytest.mark.parametrize("case", [case for case, _, _ in CASES])
def test_the_pipeline_computes_what_the_notebook_computes(outcomes, case):
    result, shown = outcomes[case]
    assert result is not None, "\n".join(shown)
    assert result["pipe"] == result["top"]


def test_a_function_prints_the_global_it_reads_when_called(outcomes):
    result, shown = outcomes["function-reads-global-when-called"]
    assert "x is 6" in shown[5]  # the kernel, top to bottom
    assert "[s4] x is 6" in shown[-1] and "x is 5" not in shown[-1]  # the pipeline's step


def test_a_star_import_of_the_prelude_gives_no_edge_between_steps(outcomes):
    result, _ = outcomes["star-import-in-the-prelude-chains-nothing"]
    assert result["inputs"] == {"a": {}, "b": {}}


def test_a_parameter_is_a_metric_of_the_step_that_reports_it(outcomes):
    result, _ = outcomes["a-parameter-reported-as-a-metric"]
    assert result["metrics"] == {"a": {"rate": 3.0, "score": 1.5}}


def test_a_step_drawing_after_another_from_a_seeded_generator_is_named_by_the_run(outcomes):
    result, shown = outcomes["a-step-draws-after-another-from-the-preludes-seed"]
    assert result["top"]["first"] == result["pipe"]["first"]  # the first to draw gets the notebook's numbers
    assert result["top"]["second"] != result["pipe"]["second"]  # what the warning says
    assert "warning: Step 'b' (after 'a') drew random numbers from numpy's global random generator" in shown[-1]
    _, seeded_in_each = outcomes["steps-that-seed-the-global-random-generators-before-they-draw"]
    assert "drew random numbers" not in seeded_in_each[-1]


def _kfmagic(*args, cwd):
    return subprocess.run(["kfmagic", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_repeated_identical_cells_of_a_file_are_each_a_part_of_the_step(tmp_path):
    cells = ["%load_ext kfmagic", "%%step a\nx = [0]", "%%step b\nx.append(1)", "%%step b\nx.append(1)",
             "%%step c\nprint('x is', x)"]
    top = cell_text(execute(make_notebook(cells), tmp_path).cells[-1])
    nbformat.write(make_notebook(cells), tmp_path / "repeat.ipynb")
    run = _kfmagic("run", "repeat.ipynb", cwd=tmp_path)
    assert top.strip() == "x is [0, 1, 1]" and "[c] x is [0, 1, 1]" in run.stdout, run.stderr
    old = make_notebook(cells)  # nbformat 4.4: no cell ids, so cells are known by position only
    old.nbformat_minor = 4
    for cell in old.cells:
        del cell["id"]
    nbformat.write(old, tmp_path / "old.ipynb", version=nbformat.NO_CONVERT)
    assert "[c] x is [0, 1, 1]" in _kfmagic("run", "old.ipynb", "--no-cache", cwd=tmp_path).stdout


def test_without_cell_ids_a_cell_of_identical_text_replaces_the_first_and_says_so(run_cells):
    out = run_cells(["%load_ext kfmagic", "%%step a\nx = [0]", "%%step b\nx.append(1)", "%%step b\nx.append(1)",
                     "print(len(__import__('kfmagic').pipeline().cells))"])
    assert "note: In [4] has the same text as In [3] (step 'b') and is registered in its place" in out[3]
    assert out[4].strip() == "2"


def test_a_step_cell_rerun_with_a_syntax_error_makes_check_and_run_refuse(kernel):
    kernel.run("%load_ext kfmagic")
    kernel.run("%%step a\nx = 1", cell_id="cell-a")
    kernel.run("%%step bad\ny = x + 1", cell_id="cell-bad")
    status, shown = kernel.run("%%step bad\ny = (x +", cell_id="cell-bad")
    assert status == "error" and "SyntaxError" in shown
    for command in ("%pipeline check", "%pipeline run"):
        status, shown = kernel.run(command)
        assert status == "error" and "Step 'bad' (In [4]): line 2: '(' was never closed" in shown, shown
    _, shown = kernel.run("print([c.spec.source for c in __import__('kfmagic').pipeline().cells])")
    assert "'%%step bad\\ny = (x +'" in shown and "y = x + 1" not in shown


def test_without_cell_ids_a_broken_step_cell_is_registered_and_named(run_cells):
    out = run_cells(["%load_ext kfmagic", "%%step a\nx = 1", "%%step bad\ny = (x +", "%pipeline check"],
                    allow_errors=True)
    assert "SyntaxError" in out[2] and "Step 'bad' (In [3]): line 2: '(' was never closed" in out[3]


def test_a_step_reading_a_file_an_earlier_step_writes_reads_what_that_step_wrote(tmp_path):
    # handson-ml2 tools_pandas: my_df.to_csv("my_df.csv") in a cell, pd.read_csv("my_df.csv") in later ones
    cells = ["%load_ext kfmagic", "%%params\nscale = 1", "%%prelude\nimport time\nimport pandas as pd",
             "%%step write\ntime.sleep(0.5)  # some work first\npd.DataFrame({'x': [scale, 2 * scale]}).to_csv('my_df.csv')",
             "%%step read\nprint('read', pd.read_csv('my_df.csv', index_col=0)['x'].tolist())"]
    top = cell_text(execute(make_notebook(cells), tmp_path).cells[-1])
    nbformat.write(make_notebook(cells), tmp_path / "files.ipynb")
    (tmp_path / "my_df.csv").unlink()
    first = _kfmagic("run", "files.ipynb", cwd=tmp_path)
    assert top.strip() == "read [1, 2]" and "[read] read [1, 2]" in first.stdout, first.stdout + first.stderr
    again = _kfmagic("run", "files.ipynb", "--param", "scale=3", cwd=tmp_path)  # the writer runs anew: so does the reader
    assert "[read] read [3, 6]" in again.stdout, again.stdout + again.stderr
    (tmp_path / "my_df.csv").unlink()  # what the writer wrote is gone: reusing its outputs would not make it
    third = _kfmagic("run", "files.ipynb", "--param", "scale=3", cwd=tmp_path)
    assert "[write] done" in third.stdout and "[read] read [3, 6]" in third.stdout, third.stdout + third.stderr
