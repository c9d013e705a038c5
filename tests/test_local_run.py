"""Local runs through the SDK (no kernel): processes, marshalling, failures and their messages."""

import io
import os
import threading

import pytest

from kfmagic.display import TextProgress
from kfmagic.errors import KfmagicError, RunFailed
from kfmagic.registry import Pipeline
from kfmagic.syntax import parse_cell


@pytest.fixture
def run(tmp_path, monkeypatch):
    """run(*cell sources, **run kwargs) -> (Run, everything the progress printed)."""
    monkeypatch.chdir(tmp_path)

    def run_pipeline(*sources, **kwargs):
        pipeline = Pipeline(name="test")
        for number, source in enumerate(sources, 1):
            pipeline.add(parse_cell(source), label=f"cell {number}")
        out = io.StringIO()
        try:
            result = pipeline.run(progress=TextProgress(out), **kwargs)
        except RunFailed as failure:
            failure.run.printed, failure.run.message = out.getvalue(), str(failure)
            return failure.run
        result.printed, result.message = out.getvalue(), ""
        return result

    return run_pipeline


def test_values_flow_between_processes_and_load_back(run):
    result = run(
        "%%prelude\nimport os",
        "%%step a\nimport numpy as np\narr = np.arange(5)\npid_a = os.getpid()",
        "%%step b --metrics total\ntotal = int(arr.sum())\nsame_process = os.getpid() == pid_a",
    )
    assert result.state == "SUCCEEDED" and result.metrics == {"b": {"total": 10.0}}
    assert result.load("same_process") is False and result.load("arr").tolist() == [0, 1, 2, 3, 4]
    assert result.load("pid_a") != os.getpid()  # never in this process
    assert result.steps["b"].saved["total"]["type"] == "int"


def test_steps_run_in_the_working_directory(run, tmp_path):
    (tmp_path / "data.txt").write_text("hello")
    result = run("%%step read\ntext = open('data.txt').read()")
    assert result.load("text") == "hello"
    assert os.path.isdir(tmp_path / ".kfmagic" / "runs" / result.id)


def _overlap(result, a, b):
    first, second = result.steps[a], result.steps[b]
    return first.started < second.finished and second.started < first.finished


def test_independent_steps_overlap_and_workers_limit_them(run):
    cells = ("%%step a\nimport time\ntime.sleep(0.8)\nx = 1", "%%step b\nimport time\ntime.sleep(0.8)\ny = 2")
    assert _overlap(run(*cells, workers=2), "a", "b")
    assert not _overlap(run(*cells, workers=1), "a", "b")


def test_output_streams_prefixed_by_step(run, capsys):
    result = run("%%step talk\nimport sys\nprint('to out')\nprint('to err', file=sys.stderr)")
    assert "[talk] to out" in result.printed and "[talk] done" in result.printed
    assert "to err" not in result.printed
    assert capsys.readouterr().err.splitlines() == ["[talk] to err"]  # the step's stderr, on stderr


def run_within(run, seconds, *sources, **kwargs):
    """run(*sources) in a thread: a run that never ends fails the test after `seconds`, not the suite."""
    ended = {}

    def target():
        try:
            ended["run"] = run(*sources, **kwargs)
        except BaseException as error:  # noqa: BLE001 (raised again in the test's thread)
            ended["error"] = error

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"the run had not ended after {seconds}s")
    if "error" in ended:
        raise ended["error"]
    return ended["run"]


def _states(result):
    return {name: step.state for name, step in result.steps.items()}


def _never_started(result, name):
    step = result.steps[name]
    return step.started is None and not os.path.exists(os.path.join(result.run_dir, name, "result.json"))


def test_a_failure_skips_the_whole_chain_below_it_and_the_run_ends(run):
    result = run_within(
        run, 30,
        "%%step a\nraise RuntimeError('a broke')",
        "%%step b --after a\nx = 1",
        "%%step c\ny = x + 1",
        "%%step d --after c\nz = 3",
        "%%step e\nw = y * z",
    )
    assert result.state == "FAILED" and result.finished is not None
    assert _states(result) == {"a": "FAILED", "b": "SKIPPED", "c": "SKIPPED", "d": "SKIPPED", "e": "SKIPPED"}
    assert all(_never_started(result, name) for name in "bcde")
    assert "Step 'a' failed: RuntimeError: a broke" in result.message and "Not run: b, c, d, e." in result.message


def test_a_failure_in_a_diamond_skips_only_what_depends_on_it(run):
    result = run_within(
        run, 30,
        "%%step top\nbase = 2",
        "%%step left\nleft_value = base / 0",
        "%%step right\nright_value = base * 3",
        "%%step join\ntotal = left_value + right_value",
        "%%step tail\nfinal = total * 2",
        "%%step aside --after right\nnote = right_value - 1",
        workers=2,
    )
    assert result.state == "FAILED"
    assert _states(result) == {
        "top": "SUCCEEDED", "left": "FAILED", "right": "SUCCEEDED", "join": "SKIPPED", "tail": "SKIPPED",
        "aside": "SUCCEEDED",
    }
    assert _never_started(result, "join") and _never_started(result, "tail")
    assert "Not run: join, tail." in result.message and result.load("note") == 5


def test_failure_shows_user_lines_stops_descendants_and_keeps_finished_outputs(run):
    result = run(
        "%%step a\nx = 1",
        "%%step bad\ny = x + 1\n\nz = y / 0",
        "%%step after_bad\nprint(z)",
        "%%step branch\nw = x * 10",
    )
    assert result.state == "FAILED"
    assert [result.steps[n].state for n in ("a", "bad", "after_bad", "branch")] == [
        "SUCCEEDED", "FAILED", "SKIPPED", "SUCCEEDED"
    ]
    error = result.steps["bad"].error
    assert 'File "step bad, cell 2", line 4, in <module>' in error and "z = y / 0" in error
    assert "ZeroDivisionError: division by zero" in error and "runtime.py" not in error
    assert "Step 'bad' failed: ZeroDivisionError: division by zero" in result.message
    assert "Not run: after_bad." in result.message
    assert result.load("w") == 10 and result.load("x") == 1


def test_unpicklable_value_names_variable_type_and_step(run):
    result = run("%%step make\nnumbers = (n for n in range(3))", "%%step use\nprint(list(numbers))")
    error = result.steps["make"].error
    assert "Step 'make' cannot pass on 'numbers' (of type generator): it is a generator" in error
    assert "a list of what it yields" in error
    assert (result.steps["make"].state, result.steps["use"].state) == ("FAILED", "SKIPPED")


def test_last_step_keeps_what_it_can_and_says_why_not_the_rest(run):
    result = run("%%step last\ncount = 3\nnumbers = (n for n in range(3))")
    assert result.state == "SUCCEEDED" and result.load("count") == 3
    with pytest.raises(KfmagicError, match=r"step 'last' has the value, but did not save it: it could not be kept: it is a generator"):
        result.load("numbers")


@pytest.mark.parametrize("make, message", [
    ("log = open('notes.txt', 'a')", "cannot pass on 'log' (of type _io.TextIOWrapper): it is an open file"),
    ("log = {'handle': open('notes.txt', 'a')}", "cannot pass on 'log' (of type dict): it holds an open file (_io.TextIOWrapper)"),
    ("log = __import__('threading').Lock()", "cannot pass on 'log' (of type _thread.lock): it is a lock"),
])
def test_a_live_resource_is_not_passed_on_and_the_users_file_is_untouched(run, tmp_path, make, message):
    (tmp_path / "notes.txt").write_text("precious")
    result = run(f"%%step make\n{make}", "%%step use\nprint(log)")
    assert message in result.steps["make"].error
    assert result.state == "FAILED" and result.steps["use"].state == "SKIPPED"
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_output_assigned_only_on_a_path_not_taken(run):
    result = run("%%step a\nif False:\n    maybe = 1", "%%step b\nprint(maybe)")
    assert "Step 'a' did not assign 'maybe', but step(s) b read it" in result.steps["a"].error


def test_metric_must_be_a_number(run):
    result = run("%%step a --metrics score\nscore = 'high'")
    assert "metric 'score' must be a number, got a str ('high')" in result.steps["a"].error


@pytest.mark.parametrize("signal_name, said", [
    ("SIGKILL", "Step 'doomed' was killed by SIGKILL (the system may have run out of memory)."),
    ("SIGTERM", "Step 'doomed' was killed by SIGTERM."),
])
def test_killed_step_process(run, signal_name, said):
    result = run(
        f"%%step doomed\nimport os, signal\nvalue = 1\nos.kill(os.getpid(), signal.{signal_name})",
        "%%step after\nprint(value)",
    )
    assert result.steps["doomed"].error == said
    assert _states(result) == {"doomed": "FAILED", "after": "SKIPPED"} and result.state == "FAILED"
    assert f"Step 'doomed' failed: {said}" in result.message


def test_a_step_process_that_exits_without_a_result(run):
    result = run(
        "%%step quits\nimport os, sys\nvalue = 1\nprint('leaving early', file=sys.stderr, flush=True)\nos._exit(3)",
        "%%step after\nprint(value)",
    )
    error = result.steps["quits"].error
    assert error.splitlines() == ["Step 'quits' exited with code 3 before reporting a result.", "leaving early"]
    assert _states(result) == {"quits": "FAILED", "after": "SKIPPED"} and result.state == "FAILED"
    assert "Step 'quits' failed: leaving early" in result.message  # the last line it said


def test_magic_and_shell_lines_run_inside_the_step(run):
    result = run("%%step shell\n!echo from-shell\nlisting = !echo a b\n%env KFMAGIC_TEST=1\nimport os\nenv = os.environ['KFMAGIC_TEST']")
    assert "[shell] from-shell" in result.printed
    assert result.load("listing") == ["a b"] and result.load("env") == "1"


def test_load_from_a_named_step_and_unknown_step(run):
    result = run("%%step a\nx = 1", "%%step b\nx = x + 1", "%%step c --after b\nprint('end')")
    assert result.load("x", step="a") == 1
    with pytest.raises(KfmagicError, match=r"step 'b' has the value, but did not save it: .*add `--outputs x` to step 'b'"):
        result.load("x")
    kept = run("%%step a\nx = 1", "%%step b --outputs x\nx = x + 1", "%%step c --after b\nprint('end')")
    assert kept.load("x") == 2
    with pytest.raises(KfmagicError, match=r"no step 'nope' in this run. Steps: a, b, c"):
        result.load("x", step="nope")


def test_bad_workers_and_params(run):
    with pytest.raises(KfmagicError, match="--workers 0"):
        run("%%step a\nx = 1", workers=0)
    with pytest.raises(KfmagicError, match="no such parameter"):
        run("%%params\nrate = 1", "%%step a\nx = rate", params={"rte": "2"})
    result = run("%%params\nrate = 1", "%%step a\nx = rate * 2", params={"rate": "21"})
    assert result.load("x") == 42


def test_the_prelude_reads_the_runs_parameter_values(run):
    cells = ("%%params\nSEED = 1", "%%prelude\nseed_copy = SEED", "%%step draw\ngot = seed_copy")
    assert run(*cells, params={"SEED": "7"}).load("got") == 7  # the override, before the prelude runs
    assert run(*cells).load("got") == 1


def test_a_run_prints_the_plan_warnings_first(run, capsys):
    result = run("%%step left\nside = 'l'", "%%step right\nside = 'r'", "%%step merge --after left\nchosen = side")
    assert result.load("chosen") == "r"
    assert "warning: Steps 'left' and 'right' both change 'side'" in capsys.readouterr().err


def test_prelude_classes_and_functions_stay_the_same_in_every_step(run):
    result = run(
        "%%prelude\nimport enum\nfrom dataclasses import dataclass\n@dataclass\nclass Config:\n    rate: float = 0.1\n"
        "class Colour(enum.Enum):\n    RED = 1\ndef helper(v):\n    return v * 2",
        "%%step a\ncfg = Config(0.5)\ncolour = Colour.RED\nf = helper",
        "%%step b\nsame = (isinstance(cfg, Config), colour is Colour.RED, cfg == Config(0.5), f is helper)",
    )
    assert result.load("same") == (True, True, True, True)


def test_an_error_in_a_magic_line_fails_the_step(run):
    result = run("%%step a\n%time x = 1 / 0\ny = 2")
    assert result.state == "FAILED" and "ZeroDivisionError" in result.steps["a"].error
    assert "\x1b[" not in result.steps["a"].error


def test_an_error_of_the_run_loop_itself_ends_the_run_failed_not_running(run, tmp_path, monkeypatch):
    from kfmagic.backends import base, local

    def broken(self):
        if self.running:  # a step has started
            raise RuntimeError("the run loop broke")

    monkeypatch.setattr(local._Scheduler, "finish_drained", broken)
    with pytest.raises(RuntimeError, match="the run loop broke"):
        run("%%step a\nimport time\ntime.sleep(5)\nx = 1", "%%step b\ny = x + 1")
    (run_dir,) = (tmp_path / ".kfmagic" / "runs").iterdir()
    info = base.read_info(run_dir)
    assert info["state"] == "FAILED" and info["finished"] and not base.is_running(run_dir)
    assert info["times"]["a"][1] and info["times"]["b"] == [None, None]
    read_back = base.open_run_dir(str(run_dir))
    assert read_back.state == "FAILED" and {name: step.state for name, step in read_back.steps.items()} == {"a": "FAILED", "b": "SKIPPED"}
