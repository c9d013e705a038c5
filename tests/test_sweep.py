"""Sweeps (issue 11): what a sweep spec means (pure), and `%pipeline sweep` in one real kernel: a grid
and a seeded random search, the order by the metric, a failing combination, Ctrl-C in the middle (the
process table after), and a re-run that reuses what finished; `kfmagic sweep` from the saved file."""

import json
import re
import subprocess
import sys
import time

import nbformat
import psutil
import pytest
from conftest import Kernel, make_notebook
from test_compile import load_ir

from kfmagic import sweep
from kfmagic.errors import CellSyntaxError, KfmagicError
from kfmagic.registry import Pipeline
from kfmagic.syntax import parse_cell

ANSI = re.compile(r"\x1b\[[0-9;]*m")
CELLS = [
    "%%params\nC = 1.0\nkernel = 'rbf'\ndepth = 3\nbins = [1, 2]\nseed = 0",
    "%%step load\nwith open('load_runs.txt', 'a') as runs:\n    runs.write('ran\\n')\ndata = list(range(10))",
    "%%step train\nimport os, time\nif kernel == 'poly':\n    raise ValueError('poly diverged')\n"
    "if os.path.exists('hold') and C >= 10:\n    open('held', 'w').close()\n    time.sleep(60)\n"
    "score = sum(data) * C + (1 if kernel == 'rbf' else 0) + depth / 100",
    "%%step evaluate --metrics accuracy\naccuracy = score / 100",
]


def pipeline_of(*cells):
    pipeline = Pipeline(name="tune")
    for number, text in enumerate(cells):
        pipeline.add(parse_cell(text), label=f"cell {number}")
    return pipeline


PLAN = pipeline_of(*CELLS).plan()


# -- the spec, pure ----------------------------------------------------------------------------------


def test_values_are_typed_like_the_defaults_and_lists_split_only_at_top_level_commas():
    specs = sweep.parse_specs({"C": "0.1,1,10", "kernel": "rbf,linear", "bins": "[1,2],[3, 4]", "depth": [2, 3, 3]}, PLAN)
    assert specs == [
        sweep.Choice("C", (0.1, 1.0, 10.0)), sweep.Choice("kernel", ("rbf", "linear")),
        sweep.Choice("bins", ([1, 2], [3, 4])), sweep.Choice("depth", (2, 3)),  # a repeated value once
    ]
    assert [type(value) for value in specs[0].values] == [float, float, float]  # '1' is the float 1.0


def test_ranges_are_ints_or_floats_on_a_linear_or_log_scale():
    depth, rate = sweep.parse_specs({"depth": "2..8", "C": "1e-4..1e-1:log"}, PLAN)
    assert (depth.low, depth.high, depth.log) == (2, 8, False) and (rate.low, rate.high, rate.log) == (1e-4, 0.1, True)
    combos = sweep.combinations([depth, rate], random_count=40, seed=7)
    assert all(isinstance(c["depth"], int) and 2 <= c["depth"] <= 8 for c in combos)
    assert all(isinstance(c["C"], float) and 1e-4 <= c["C"] <= 0.1 for c in combos)
    assert sum(c["C"] < 1e-2 for c in combos) > 10  # a log scale: the lower decades are drawn too
    assert {c["depth"] for c in combos} == set(range(2, 9))


def test_a_grid_is_every_combination_in_order_and_a_seeded_random_search_repeats():
    specs = sweep.parse_specs({"C": "0.1,1", "kernel": "rbf,linear,poly"}, PLAN)
    grid = sweep.combinations(specs)
    assert grid == [{"C": c, "kernel": k} for c in (0.1, 1.0) for k in ("rbf", "linear", "poly")]
    drawn = sweep.combinations(specs, random_count=4, seed=3)
    assert drawn == sweep.combinations(specs, random_count=4, seed=3) and len(drawn) == 4
    assert len({tuple(c.items()) for c in drawn}) == 4 and all(c in grid for c in drawn)  # distinct
    assert any(sweep.combinations(specs, random_count=4, seed=s) != drawn for s in range(4, 10))
    assert len(sweep.combinations(specs, random_count=50, seed=1)) == 6  # a small space runs out, no repeats
    planned = sweep.plan_sweep(PLAN, {"C": "0.1,1", "kernel": "rbf,linear,poly"}, random_count=50, seed=1)
    assert planned.describe(PLAN, True).endswith("; --random 50: the values hold only 6 distinct combinations")


def test_shared_steps_are_those_no_swept_parameter_reaches():
    assert sweep.per_combination(PLAN, ["C"]) == ["train", "evaluate"]
    assert sweep.outline(PLAN, ["train", "evaluate"], 12) == "1 step shared (load), 2 steps x 12 combinations (train, evaluate)"
    with_prelude = pipeline_of("%%prelude\nimport random\nrandom.seed(seed)", *CELLS).plan()
    assert sweep.per_combination(with_prelude, ["seed"]) == ["load", "train", "evaluate"]  # the prelude runs in every step
    assert sweep.swept([{"C": 1.0, "depth": 3}, {"C": 2.0, "depth": 3}]) == ["C"]  # one value is fixed, not swept


def test_the_metric_is_the_only_one_or_the_one_named_and_never_a_shared_steps():
    assert sweep.choose_metric(PLAN) == ("evaluate", "accuracy")
    two = pipeline_of(*CELLS[:3], "%%step evaluate --metrics accuracy loss\naccuracy = score / 100\nloss = 1 - accuracy").plan()
    with pytest.raises(CellSyntaxError, match=r"reports 2 metrics \(evaluate.accuracy, evaluate.loss\); say which"):
        sweep.choose_metric(two)
    assert sweep.choose_metric(two, "evaluate.loss") == ("evaluate", "loss")
    shared = pipeline_of(*CELLS[:1], "%%step load --metrics n\nn = 10\ndata = list(range(n))", *CELLS[2:]).plan()
    with pytest.raises(CellSyntaxError, match="step 'load' reads no swept parameter, so it runs once"):
        sweep.choose_metric(shared, "load.n", ["train", "evaluate"])


# -- in a real kernel -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """One kernel for the module's tests, in its own folder (its runs, cache and HOME)."""
    cwd = tmp_path_factory.mktemp("sweeps")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HOME", str(cwd))
        env.setenv("IPYTHONDIR", str(cwd / ".ipython"))
        live = Kernel(cwd)
    live.cwd = cwd
    for cell in ["%load_ext kfmagic\n%pipeline init tune", *CELLS]:
        status, shown = live.run(cell)
        assert status == "ok", shown
    yield live
    live.shutdown()


def run(kernel, code):
    status, shown = kernel.run(code)
    return status, ANSI.sub("", shown)


def load_runs(folder, in_kernel=1):
    """How many times step `load` ran as a pipeline step (the kernel ran its cell once, registering it)."""
    return (folder / "load_runs.txt").read_text().count("ran") - in_kernel


def states(kernel, variable="s"):
    """{combination number: {step: state word}} of the sweep in `variable`."""
    _, shown = run(kernel, f"from kfmagic.display import _step_state\nprint({{i + 1: {{n: _step_state(st) for n, st in r.steps.items()}} for i, r in enumerate({variable}.runs)}})")
    return eval(shown)


def test_a_grid_runs_shared_steps_once_and_orders_by_the_metric(kernel):
    status, shown = run(kernel, "s = %pipeline sweep --param C=0.1,1,10 --param kernel=rbf,linear")
    assert status == "ok", shown
    assert "sweep of tune: 1 step shared (load), 2 steps x 6 combinations (train, evaluate); by evaluate.accuracy, highest first" in shown
    _, table = run(kernel, "print(repr(s))")
    rows = [line.split() for line in table.splitlines() if re.match(r"c\d+  ", line)]
    assert [row[:4] for row in rows] == [
        ["c5", "10", "rbf", "4.51"], ["c6", "10", "linear", "4.5"], ["c3", "1", "rbf", "0.4603"],
        ["c4", "1", "linear", "0.4503"], ["c1", "0.1", "rbf", "0.0553"], ["c2", "0.1", "linear", "0.0453"],
    ]
    assert load_runs(kernel.cwd) == 1  # once, for six combinations
    found = states(kernel)
    assert found[1] == {"load": "done", "train": "done", "evaluate": "done"}
    assert all(found[i]["load"] == "cached" and found[i]["train"] == "done" for i in range(2, 7))
    _, shown = run(kernel, "print(s.best.metrics, s.best_params, s.best.load('score'), s.runs[0].load('data')[:3])")
    assert shown.strip() == "{'evaluate': {'accuracy': 4.5103}} {'C': 10.0, 'kernel': 'rbf'} 451.03 [0, 1, 2]"
    _, shown = run(kernel, "print(s._repr_html_().count('<tr'), 'data:image/png;base64,' in s._repr_html_())")
    assert shown.split() == ["7", "True"]  # a header and six rows, and the plot


def test_minimize_reverses_the_order_and_a_rerun_runs_nothing_again(kernel):
    status, shown = run(kernel, "m = %pipeline sweep --param C=0.1,1,10 --param kernel=rbf,linear --minimize")
    assert status == "ok" and "lowest first" in shown, shown
    _, shown = run(kernel, "print([r['C'] for r in m.rows()], m.best_params)")
    assert shown.strip() == "[0.1, 0.1, 1.0, 1.0, 10.0, 10.0] {'C': 0.1, 'kernel': 'linear'}"
    assert set().union(*(set(steps.values()) for steps in states(kernel, "m").values())) == {"cached"}
    assert load_runs(kernel.cwd) == 1


def test_a_seeded_random_search_draws_the_same_combinations_again(kernel):
    line = "%pipeline sweep --param C=0.01..100:log --param depth=2..9 --random 3 --seed 11 --workers 2"
    status, shown = run(kernel, f"r1 = {line}")
    assert status == "ok" and "random search, seed 11 (--seed 11 draws them again)" in shown, shown
    run(kernel, f"r2 = {line}")
    _, shown = run(kernel, "print(r1.combinations == r2.combinations, len(r1.combinations), r1.seed)")
    assert shown.split() == ["True", "3", "11"]
    assert all(steps["train"] == "cached" for steps in states(kernel, "r2").values())
    _, shown = run(kernel, "r3 = %pipeline sweep --param C=0.01..100:log --random 2\nprint(r3.seed is not None)")
    assert "random search, seed " in shown and shown.strip().endswith("True")  # a seed is chosen, and said


def test_a_failing_combination_stops_no_other_and_shows_as_failed(kernel):
    status, shown = run(kernel, "f = %pipeline sweep --param kernel=rbf,poly,linear --param C=2")
    assert status == "ok", shown
    assert "c2 (kernel=poly): failed: step 'train' failed" in shown
    _, shown = run(kernel, "print([(r['kernel'], r['state']) for r in f.rows()], f.runs[1].steps['train'].error.splitlines()[-1])")
    assert shown.strip() == "[('rbf', 'SUCCEEDED'), ('linear', 'SUCCEEDED'), ('poly', 'FAILED')] ValueError: poly diverged"
    _, shown = run(kernel, "print(repr(f).splitlines()[0])")
    assert "3 combinations, 2 done, 1 failed" in shown


def kfmagic_processes(home):
    """kfmagic supervisors and step processes started from the module's kernel (its HOME)."""
    mine = []
    for process in psutil.process_iter(["cmdline"]):
        line = " ".join(process.info["cmdline"] or [])
        if "kfmagic.supervisor" in line or "kfmagic.runtime" in line:
            try:
                if process.environ().get("HOME") == home:
                    mine.append(process)
            except psutil.Error:
                continue
    return mine


def test_ctrl_c_keeps_finished_combinations_and_the_same_sweep_then_reuses_them(kernel):
    (kernel.cwd / "hold").touch()
    line = "%pipeline sweep --param C=0.5,3,30 --param kernel=linear --param depth=7 --workers 2"
    msg_id = kernel.send(f"c = {line}")
    deadline = time.time() + 60
    while not (kernel.cwd / "held").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    kernel.manager.interrupt_kernel()
    status, shown = kernel.collect(msg_id)
    shown = ANSI.sub("", shown)
    assert status == "error" and "SweepInterrupted: Sweep interrupted: 2 of 3 combinations had finished" in shown, shown
    assert "Their runs are kept (c1, c2)" in shown and "The sweep so far is kfmagic.pipeline().last_sweep." in shown
    assert "Traceback" not in shown
    deadline = time.time() + 10
    while kfmagic_processes(str(kernel.cwd)) and time.time() < deadline:
        time.sleep(0.1)
    assert kfmagic_processes(str(kernel.cwd)) == []
    _, shown = run(kernel, "last = __import__('kfmagic').pipeline().last_sweep\nprint(last.state, last.finished(), [r.state for r in last.runs])")
    assert shown.strip() == "CANCELED [0, 1] ['SUCCEEDED', 'SUCCEEDED', 'CANCELED']"
    (kernel.cwd / "hold").unlink()
    status, shown = run(kernel, f"c = {line}")
    assert status == "ok", shown
    found = states(kernel, "c")
    assert found[1] == found[2] == {"load": "cached", "train": "cached", "evaluate": "cached"}
    assert found[3] == {"load": "cached", "train": "done", "evaluate": "done"}  # only what had not finished ran
    assert load_runs(kernel.cwd) == 1


def test_the_command_line_sweeps_the_saved_notebook(tmp_path):
    path = tmp_path / "tune.ipynb"
    nbformat.write(make_notebook(["%load_ext kfmagic\n%pipeline init tune", *CELLS]), path)
    done = subprocess.run(
        [sys.executable, "-m", "kfmagic.cli", "sweep", str(path), "--param", "C=1,2", "--param", "kernel=rbf"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "1 step shared (load), 2 steps x 2 combinations (train, evaluate)" in done.stdout
    assert re.search(r"^c2\s+2\s+0\.9103\s+done\s+tune-\S+-c2$", done.stdout, re.M), done.stdout
    assert load_runs(tmp_path, in_kernel=0) == 1


def test_the_compiled_sweep_is_one_parallel_for_that_kfp_local_runs_as_the_local_sweep_does(kernel):
    status, shown = run(kernel, "k = %pipeline sweep --param C=0.1,1,10 --param kernel=rbf,poly --runner kfp-local --workers 3")
    assert status == "ok", shown
    _, shown = run(kernel, "print([(r['C'], r['kernel'], r['evaluate.accuracy'], r['state']) for r in k.rows()])")
    assert eval(shown) == [
        (10.0, "rbf", 4.5103, "SUCCEEDED"), (1.0, "rbf", 0.4603, "SUCCEEDED"), (0.1, "rbf", 0.0553, "SUCCEEDED"),
        (0.1, "poly", None, "FAILED"), (1.0, "poly", None, "FAILED"), (10.0, "poly", None, "FAILED"),
    ]  # what the local sweep computes, and a failing combination stops no other here either
    _, shown = run(kernel, "print(k.best.load('score'), k.runs[0].run_dir == k.runs[5].run_dir, 'poly diverged' in k.runs[1].logs('train'))")
    assert shown.split() == ["451.03", "True", "True"]
    assert load_runs(kernel.cwd) == 2  # kfp.local ran the shared step once for six combinations
    run_dir = next(kernel.cwd.glob(".kfmagic/runs/tune-*/pipeline.yaml")).parent
    spec = load_ir(run_dir / "pipeline.yaml")[0]
    loop = spec["root"]["dag"]["tasks"]["for-loop-2"]
    assert loop["iteratorPolicy"] == {"parallelismLimit": 3}
    items = [json.loads(item) for item in json.loads(loop["parameterIterator"]["items"]["raw"])]
    assert items[4] == {"folder": "c5", "params": {"C": 10.0, "kernel": "rbf"}}
    assert set(spec["root"]["dag"]["tasks"]) == {"kfmagic-runtime", "load", "for-loop-2"}  # shared steps once, before it
    assert set(spec["components"]["comp-for-loop-2"]["dag"]["tasks"]) == {"train", "evaluate"}
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"depth", "bins", "seed"}  # swept ones come from the loop


def test_a_sweep_on_kubeflow_is_one_submitted_run_whose_combinations_come_back_from_the_store(kfp_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipeline = pipeline_of(  # the stand-in's pods are processes here: nothing to install
        CELLS[0], "%%step load --no-install\ndata = list(range(10))",
        CELLS[2].replace("%%step train", "%%step train --no-install"),
        CELLS[3].replace("%%step evaluate", "%%step evaluate --no-install"),
    )
    pipeline.configure(host=kfp_server.url)
    with pytest.raises(KfmagicError, match="A sweep on Kubeflow reads each combination's metrics from the run store"):
        pipeline.sweep({"C": "1,10"})
    assert kfp_server.runs == {}  # refused before anything was submitted
    pipeline.configure(host=kfp_server.url, store=f"file://{tmp_path}/store")
    found = pipeline.sweep({"C": "1,10", "kernel": "rbf,poly"}, workers=2)
    assert len(kfp_server.runs) == 1  # one run for the four combinations
    assert [(row["C"], row["kernel"], row["evaluate.accuracy"], row["state"]) for row in found.rows()] == [
        (10.0, "rbf", 4.5103, "SUCCEEDED"), (1.0, "rbf", 0.4603, "SUCCEEDED"), (1.0, "poly", None, "FAILED"), (10.0, "poly", None, "FAILED"),
    ]
    assert found.best.load("score") == 451.03 and found.best.load("data") == list(range(10))
    assert "poly diverged" in found.runs[1].logs("train") and found.runs[1].steps["evaluate"].state == "SKIPPED"


def test_a_swept_parameter_the_prelude_reads_reaches_every_step_each_in_its_own_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipeline = pipeline_of(
        "%%prelude\nimport os\nbase = seed * 10", "%%params\nseed = 0",
        "%%step first\nmade = (base, os.getpid())", "%%step second --metrics total\ntotal = made[0] + seed",
    )
    found = pipeline.sweep({"seed": "1,2"}, progress=None)
    assert found.shared == () and [row["second.total"] for row in found.rows()] == [22, 11]  # not one warm prelude's value


def test_a_swept_parameter_every_step_reads_but_the_prelude_does_not_keeps_the_warm_start(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipeline = pipeline_of(
        "%%prelude\nimport os\nprelude_pid = os.getpid()", "%%params\nC = 1",
        "%%step fit --metrics score\nscore = C * 10\nforked = prelude_pid != os.getpid()",
    )
    found = pipeline.sweep({"C": "1,2"}, progress=None)
    assert sorted(row["fit.score"] for row in found.rows()) == [10, 20]
    assert [run.load("forked") for run in found.runs] == [True, True]  # the prelude ran once, in the supervisor
