"""`%pipeline run --runner kfp-local`: the compiled IR run by kfp.local gives what a local run gives."""

import glob
import json
import os

import pytest

from test_compile import load_ir

from kfmagic.display import TextProgress
from kfmagic.errors import RunFailed
from kfmagic.registry import Pipeline
from kfmagic.syntax import parse_cell

NOTEBOOK = [
    "%load_ext kfmagic\n%pipeline init twins",
    "%%prelude\nimport pandas as pd",
    "%%params\nn = 4\nfactor = 1.5\nbins = [1, 2]",
    "%%step make\nframe = pd.DataFrame({'x': range(n)})\nprint('rows', len(frame))\nframe.head(2)",
    "%%step stats --metrics mean_x total\nmean_x = float(frame.x.mean() * factor)\ntotal = float(frame.x.sum())",
    "%%step shown\nclass Rich:\n    def _repr_html_(self):\n        return '<b>rich!</b>'\ndisplay(Rich())\nlabel = f'{n} rows {bins}'\n"
    "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3])",
]
SUMMARY = (
    "import json\n"
    "def summary(run):\n"
    "    return {'runner': run.runner, 'state': run.state, 'metrics': run.metrics,\n"
    "            'steps': {s.name: s.state for s in run.steps.values()},\n"
    "            'timed': all(s.duration is not None and s.duration >= 0 for s in run.steps.values()),\n"
    "            'frame': run.load('frame').x.tolist(), 'label': run.load('label'), 'run_dir': run.run_dir}\n"
    "print(json.dumps([summary(local), summary(kfp_local)]))"
)


def test_kfp_local_and_local_runs_of_one_notebook_agree(run_cells):
    out = run_cells([
        *NOTEBOOK,
        "local = %pipeline run --runner local --param n=6",
        "kfp_local = %pipeline run --runner kfp-local --param n=6",
        SUMMARY,
    ])
    local, kfp_local = json.loads(out[-1].strip().splitlines()[-1])
    assert (local["runner"], kfp_local["runner"]) == ("local", "kfp-local")
    assert kfp_local["metrics"] == local["metrics"] == {"stats": {"mean_x": 3.75, "total": 15.0}}
    for key in ("state", "steps", "frame", "label", "timed"):
        assert kfp_local[key] == local[key], key
    assert local["state"] == "SUCCEEDED" and local["frame"] == [0, 1, 2, 3, 4, 5] and local["label"] == "6 rows [1, 2]"
    assert "[make] rows 6" in out[-2]  # the step's output streams into the cell, attributed to the step
    # what each cell displayed is an HTML artifact of its task (the KFP UI shows it)
    outputs = glob.glob(os.path.join(kfp_local["run_dir"], "kfp", "*", "*", "kfmagic_output"))
    shown = {path.split(os.sep)[-2]: open(path).read() for path in outputs}
    assert set(shown) == {"make", "stats", "shown"}
    assert "rows 6" in shown["make"] and "<table" in shown["make"]  # print, then the DataFrame's last value
    assert "<b>rich!</b>" in shown["shown"] and "<img src='data:image/png;base64," in shown["shown"]  # the figure
    # the loaded values come from the artifacts kfp.local wrote, not from a local run's files
    load_ir(os.path.join(kfp_local["run_dir"], "pipeline.yaml"))  # what ran is a valid PipelineSpec


def test_a_value_a_step_changes_reaches_later_steps_as_top_to_bottom_gives_it(run_cells):
    out = run_cells([
        "%load_ext kfmagic\n%pipeline init grows",
        "%%params\nextra = 2",
        "%%step make\nitems = [1]",
        "%%step grow\nitems.append(extra)",
        "%%step use\ntotal = sum(items)\ncount = len(items)",
        "import json\nprint(json.dumps({'items': items, 'total': total, 'count': count}))",  # the kernel's values
        "local = %pipeline run --runner local",
        "kfp_local = %pipeline run --runner kfp-local",
        "print(json.dumps([{'runner': r.runner, 'items': r.load('items'), 'total': r.load('total'),\n"
        "                   'count': r.load('count'), 'made': r.load('items', step='make')} for r in (local, kfp_local)]))",
    ])
    kernel = json.loads(out[5].strip().splitlines()[-1])
    assert kernel == {"items": [1, 2], "total": 3, "count": 2}  # top to bottom, with the default
    local, kfp_local = json.loads(out[-1].strip().splitlines()[-1])
    for run in (local, kfp_local):
        assert {key: run[key] for key in kernel} == kernel, run
        assert run["made"] == [1]  # the producer's own value is not changed by the step that changed its copy
    assert (local["runner"], kfp_local["runner"]) == ("local", "kfp-local")


def test_a_failing_step_fails_both_runs_alike(run_cells):
    out = run_cells([
        "%load_ext kfmagic",
        "%%step first\nx = 1",
        "%%step boom\nvalue = x + 41\nraise ValueError(f'bad value {value}')",
        "%%step after --after boom\ny = 2",
        "%pipeline run --runner local",
        "%pipeline run --runner kfp-local",
        "import kfmagic\nrun = kfmagic.pipeline().last_run\n"
        "print(run.runner, run.state, {s.name: s.state for s in run.steps.values()})\n"
        "print(run.steps['boom'].error)",
    ], allow_errors=True)
    for said in out[4:6]:
        assert "Step 'boom' failed: ValueError: bad value 42" in said and "Not run: after." in said
        assert '[boom]   File "step boom, In [3]", line 3' in said  # the user's traceback, streamed
        assert "kfmagic/backends" not in said and "kfmagic/registry" not in said  # none from kfmagic itself
    assert "kfp-local FAILED {'first': 'SUCCEEDED', 'boom': 'FAILED', 'after': 'SKIPPED'}" in out[6]
    assert "raise ValueError(f'bad value {value}')" in out[6]  # the user's traceback, with their line


def test_steps_run_by_kfp_local_need_no_kfmagic(tmp_path, monkeypatch):
    """Every step's process finds a kfmagic that refuses to import: the embedded runtime must do."""
    poison = tmp_path / "poison" / "kfmagic"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("raise ImportError('a step imported kfmagic')\n")
    monkeypatch.chdir(tmp_path)
    env = f"--env PYTHONPATH={poison.parent}"
    pipeline = Pipeline().init("no-kfmagic")
    for number, text in enumerate([
        f"%%step make {env}\nimport sys\nitems = [1, 2]\nfound = [p for p in sys.path if 'poison' in p]",
        f"%%step use {env} --metrics count\ncount = len(items) + len(found)",
    ]):
        pipeline.add(parse_cell(text), label=f"cell {number}")
    run = pipeline.run(runner="kfp-local", progress=TextProgress())
    assert run.metrics == {"use": {"count": 3.0}}  # the poisoned path was on sys.path in the step
    assert run.load("items") == [1, 2]


def test_interrupted_kfp_local_run_is_canceled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipeline = Pipeline().init("slow")
    pipeline.add(parse_cell("%%step wait\nimport time\ntime.sleep(60)"), label="cell 1")

    class InterruptOnceRunning(TextProgress):
        def update(self, run):
            super().update(run)
            if run.steps["wait"].state == "RUNNING":
                raise KeyboardInterrupt

    with pytest.raises(RunFailed, match="interrupted"):
        pipeline.run(runner="kfp-local", progress=InterruptOnceRunning())
    assert pipeline.last_run.state == "CANCELED" and pipeline.last_run.steps["wait"].state == "CANCELED"


def test_the_demo_notebook_gives_the_same_results_under_kfp_local(tmp_path):
    import nbformat
    from conftest import REPO, cell_text, execute

    nb = nbformat.read(os.path.join(REPO, "notebooks", "demo_wine.ipynb"), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "kl = %pipeline run --runner kfp-local\n"
        "import json\n"
        "print(json.dumps({'same_metrics': kl.metrics == run.metrics, 'metrics': kl.metrics, 'state': kl.state,\n"
        "                  'score': kl.load('best_model').score(X_test, y_test), 'local_score': best.score(X_test, y_test)}))"
    ))
    nb.cells.append(nbformat.v4.new_code_cell("%pipeline compile"))
    execute(nb, tmp_path)
    result = json.loads(cell_text(nb.cells[-2]).strip().splitlines()[-1])
    assert result["state"] == "SUCCEEDED" and result["same_metrics"], result
    assert set(result["metrics"]) == {"train_svm", "train_forest", "train_logreg", "compare"}
    assert result["score"] == result["local_score"]
    assert "wrote wine-classifiers.yaml" in cell_text(nb.cells[-1])
    spec = load_ir(tmp_path / "wine-classifiers.yaml")[0]
    assert set(spec["root"]["dag"]["tasks"]) == {
        "kfmagic-runtime", "load", "prepare", "train-svm", "train-forest", "train-logreg", "compare",
    }


def test_a_step_named_like_its_pipeline_runs_under_kfp_local(tmp_path, monkeypatch):
    # PythonDataScienceHandbook 05.13 marked as pipeline `kde` with a step `kde`: kfp loaded the step as the pipeline
    monkeypatch.chdir(tmp_path)
    pipeline = Pipeline().init("kde")
    for number, text in enumerate(["%%params\nbandwidth = 2", "%%step kde\nwidth = bandwidth * 2",
                                   "%%step report --metrics score\nscore = width + 0.5"]):
        pipeline.add(parse_cell(text), label=f"cell {number}")
    local = pipeline.run(runner="local", params={"bandwidth": 3}, progress=TextProgress())
    run = pipeline.run(runner="kfp-local", params={"bandwidth": 3}, progress=TextProgress())
    assert run.metrics == local.metrics == {"report": {"score": 6.5}}


def test_kfp_local_stopping_before_any_step_says_why(tmp_path, monkeypatch):
    broken = tmp_path / "broken" / "kfp"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('kfp is broken in this environment')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(broken.parent))  # kfp.local's process cannot import kfp
    pipeline = Pipeline().init("nowhere")
    pipeline.add(parse_cell("%%step make\nx = 1"), label="cell 1")
    with pytest.raises(RunFailed) as failed:
        pipeline.run(runner="kfp-local", progress=TextProgress())
    assert "kfp.local stopped (exit status 1) before any step failed: ImportError: kfp is broken in this environment" in str(failed.value)
    assert pipeline.last_run.steps["make"].state == "SKIPPED"
