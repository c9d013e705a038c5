"""Warm start: steps are forks of a process that ran the %%prelude once. Each starts from the state
the prelude left, nothing a step does reaches another, and what works in a fresh process works in a
fork (numpy/BLAS, scikit-learn with n_jobs, matplotlib, `%`/`!` lines); where forking is not safe,
steps start afresh and the run says why, once."""

import io
import os
import subprocess
import sys

import psutil
import pytest

from kfmagic.display import TextProgress
from kfmagic.errors import RunFailed
from kfmagic.registry import Pipeline
from kfmagic.syntax import parse_cell


@pytest.fixture
def run(tmp_path, monkeypatch):
    """run(*cells, isolate=False) -> (Run, what the progress printed, what went to stderr)."""
    monkeypatch.chdir(tmp_path)

    def run_pipeline(*cells, **kwargs):
        kwargs.setdefault("cache", False)  # warm and fresh runs of one pipeline: each must really run
        pipeline = Pipeline(name="warm")
        for number, text in enumerate(cells):
            pipeline.add(parse_cell(text), label=f"cell {number}")
        out = io.StringIO()
        try:
            result = pipeline.run(progress=TextProgress(out), **kwargs)
        except RunFailed as failure:
            result = failure.run
        return result, out.getvalue()

    return run_pipeline


HEAVY = [
    "%%prelude\nimport numpy as np\nfrom sklearn.ensemble import RandomForestClassifier\nimport matplotlib\n"
    "matplotlib.use('Agg')\nimport matplotlib.pyplot as plt",
    "%%step data\nrng = np.random.default_rng(0)\nX = rng.normal(size=(200, 4))\ny = (X[:, 0] + X[:, 1] > 0).astype(int)",
    "%%step blas\nproduct = float((X.T @ X).trace())",
    "%%step forest\nmodel = RandomForestClassifier(n_estimators=20, n_jobs=2, random_state=0).fit(X, y)\n"
    "score = float(model.score(X, y))",
    "%%step figure\nfig, ax = plt.subplots()\nax.plot(X[:, 0])\nfig.savefig('plot.png')\nimport os\n"
    "size = os.path.getsize('plot.png') > 1000",
    "%%step shell\n!echo from-the-shell\nlisting = !echo a b\n%time total = int(y.sum())",
]


def test_forked_steps_compute_what_fresh_processes_compute(run):
    warm, printed = run(*HEAVY)
    fresh, _ = run(*HEAVY, isolate=True)
    names = ("product", "score", "size", "listing", "total")
    assert warm.state == fresh.state == "SUCCEEDED", (warm.failure_message(), fresh.failure_message())
    assert {n: warm.load(n) for n in names} == {n: fresh.load(n) for n in names}
    assert warm.load("listing") == ["a b"] and warm.load("size") is True
    assert "[shell] from-the-shell" in printed


PRELUDE_ONCE = "%%prelude\nimport os, time\nprelude_pid = os.getpid()\nstarted = time.time()\nprint('prelude says hi')"


def test_the_prelude_runs_once_and_each_step_starts_from_its_state(run):
    cells = [
        PRELUDE_ONCE + "\nimport json\nbox = [0]",
        "%%step a\nbox.append(1)\njson.marker = 'a'\npid_a, started_a = os.getpid(), started",
        "%%step b\nseen = (list(box), hasattr(json, 'marker'))\npid_b, started_b = os.getpid(), started",
    ]
    warm, printed = run(*cells)
    assert warm.load("seen") == ([0], False)  # what a did reached no other step
    assert warm.load("started_a") == warm.load("started_b")  # one prelude, run once
    assert warm.load("pid_a") != warm.load("pid_b")
    assert printed.count("prelude says hi") == 2  # what the prelude printed is each step's output
    fresh, _ = run(*cells, isolate=True)
    assert fresh.load("seen") == ([0], False) and fresh.load("started_a") != fresh.load("started_b")


def test_a_step_option_isolates_one_step(run):
    warm, _ = run(PRELUDE_ONCE, "%%step a\nt_a = started", "%%step b --isolate\nt_b = started", "%%step c\nt_c = started")
    assert warm.load("t_a") == warm.load("t_c") != warm.load("t_b")


@pytest.mark.parametrize("prelude, why", [
    ("import threading, time\nthreading.Thread(target=time.sleep, args=(30,), daemon=True, name='poller').start()",
     "the prelude started threads (poller)"),
    ("raise RuntimeError('no database here')", "the prelude failed here (RuntimeError)"),
])
def test_where_forking_is_not_safe_steps_start_afresh_and_the_run_says_why_once(run, capsys, prelude, why):
    result, _ = run(f"%%prelude\n{prelude}", "%%step a\nx = 1", "%%step b\ny = 2")
    err = capsys.readouterr().err
    assert err.count(f"note: each step starts in a fresh process: {why}") == 1
    if "failed" in why:  # every step shows the prelude's own error, as without a warm start
        assert result.state == "FAILED" and all("no database here" in s.error for s in result.steps.values())
    else:
        assert result.state == "SUCCEEDED" and (result.load("x"), result.load("y")) == (1, 2)


def test_signal_handlers_the_prelude_sets_hold_in_forked_steps(run):
    result, _ = run(
        "%%prelude\nimport signal\nsignal.signal(signal.SIGUSR1, lambda *_: print('usr1 handled'))",
        "%%step a\nimport os, signal\nos.kill(os.getpid(), signal.SIGUSR1)\nhandler = callable(signal.getsignal(signal.SIGUSR1))",
    )
    assert result.state == "SUCCEEDED" and result.load("handler") is True


def test_what_a_step_opened_and_did_not_close_is_flushed_when_it_ends(run, tmp_path):
    result, _ = run("%%step a\nlog = open('log.txt', 'w')\nlog.write('kept')\nx = 1")
    assert result.state == "SUCCEEDED" and (tmp_path / "log.txt").read_text() == "kept"


def test_a_large_prelude_is_warmed_too(run, capsys):
    big = "table = " + repr("x" * 400_000)  # larger than one message between the run and its supervisor
    warm, _ = run(f"{PRELUDE_ONCE}\n{big}", "%%step a\nt_a = (started, len(table))", "%%step b\nt_b = (started, len(table))")
    assert warm.load("t_a") == warm.load("t_b") and warm.load("t_a")[1] == 400_000
    assert "fresh process" not in capsys.readouterr().err


def test_forked_steps_start_the_global_random_generators_as_fresh_processes_do(run):
    # As in a fresh process: what the prelude seeded stays seeded (Python reseeds the random module in
    # every fork), and what it did not seed is seeded anew in each step (a fork shares numpy's).
    seeded = "%%prelude\nimport random\nimport numpy as np\nrandom.seed(0)\nnp.random.seed(0)"
    unseeded = "%%prelude\nimport random\nimport numpy as np"
    draw = ["%%step a\nx = (random.random(), float(np.random.rand()))", "%%step b\ny = (random.random(), float(np.random.rand()))"]
    for isolate in (False, True):
        same, _ = run(seeded, *draw, isolate=isolate)
        assert same.load("x") == same.load("y") == (0.8444218515250481, 0.5488135039273248)
        other, _ = run(unseeded, *draw, isolate=isolate)
        assert all(a != b for a, b in zip(other.load("x"), other.load("y"))), (isolate, other.load("x"), other.load("y"))


PRINTING = [
    "%%prelude\nimport logging, sys\nlogging.basicConfig(level=logging.INFO, format='log: %(message)s')\n"
    "ERR = sys.stderr\nprint('prelude out')\nprint('prelude err', file=sys.stderr)",
    "%%step a\nprint('a out')\nlogging.getLogger('a').info('a one')\nprint('a err', file=sys.stderr)\n"
    "logging.getLogger('a').info('a two')\nprint('a via ERR', file=ERR)\nx = 1",
    "%%step b\nlogging.getLogger('b').info('b one')\ny = 2",
]
STDERR_OF_A = ["prelude err", "log: a one", "a err", "log: a two", "a via ERR"]


@pytest.mark.parametrize("isolate", [False, True])
def test_streams_the_prelude_handed_out_write_to_each_steps_output_in_order(run, capsys, isolate):
    # logging.basicConfig() and `ERR = sys.stderr` keep the stream they were given: in a fork it must
    # be the step's own output, not something the prelude's output was caught in.
    result, printed = run(*PRINTING, isolate=isolate)
    a, b = result.logs("a").splitlines(), result.logs("b").splitlines()
    assert [line for line in a if line in STDERR_OF_A] == STDERR_OF_A
    assert a.count("prelude out") == a.count("a out") == 1 and len(a) == 7, a
    assert sorted(b) == ["log: b one", "prelude err", "prelude out"]
    err = capsys.readouterr().err  # what a step writes to stderr, the run shows on stderr
    assert "[a] log: a two" in err and "[b] log: b one" in err and err.count("prelude err") == 2
    assert printed.count("prelude out") == 2


def test_what_the_prelude_made_lasts_for_every_step_and_its_exit_handlers_run_once(run, tmp_path):
    cells = [
        "%%prelude\nimport atexit, os, tempfile\ntmp = tempfile.TemporaryDirectory()\n"
        "atexit.register(lambda: open('exits.txt', 'a').write('prelude\\n'))",
        "%%step a --outputs where kept\nwhere = tmp.name\nopen(os.path.join(tmp.name, 'a'), 'w').write('a')\n"
        "atexit.register(lambda: open('exits.txt', 'a').write('a\\n'))\n"
        "tempfile.kept = tempfile.TemporaryDirectory()  # the step's own, removed at exit\nkept = tempfile.kept.name\nx = 1",
        "%%step b\nopen(os.path.join(tmp.name, 'b'), 'w').write('b')\ny = x + 1",
    ]
    for isolate, prelude_exits in ((False, 1), (True, 2)):  # warm: the prelude ran once, in the supervisor
        result, _ = run(*cells, isolate=isolate)
        assert result.state == "SUCCEEDED", result.failure_message()
        exits = (tmp_path / "exits.txt").read_text().splitlines()
        assert sorted(exits) == ["a"] + ["prelude"] * prelude_exits, (isolate, exits)
        assert not os.path.exists(result.load("where")) and not os.path.exists(result.load("kept"))
        os.remove(tmp_path / "exits.txt")


def test_a_step_leaves_as_a_process_exits_cycles_exit_handlers_and_the_preludes_files_included(run, tmp_path):
    cells = [
        "%%prelude\njournal = open('journal.txt', 'w')",
        "%%step a\nimport atexit\nclass Holder:\n    pass\nh = Holder()\nh.me = h\nh.f = open('cycle.txt', 'w')\n"
        "h.f.write('in a cycle')\nout = open('exit.txt', 'w')\natexit.register(lambda: out.write('at exit'))\n"
        "journal.write('journal')\nx = 1",
    ]
    expected = {"cycle.txt": "in a cycle", "exit.txt": "at exit", "journal.txt": "journal"}
    subprocess.run([sys.executable, "-c", "\n".join(cell.split("\n", 1)[1] for cell in cells)], cwd=tmp_path, check=True)
    assert {name: (tmp_path / name).read_text() for name in expected} == expected  # what plain python does
    for isolate in (False, True):
        for name in expected:
            os.remove(tmp_path / name)
        result, _ = run(*cells, isolate=isolate)
        assert result.state == "SUCCEEDED", result.failure_message()
        assert {name: (tmp_path / name).read_text() for name in expected} == expected, isolate


def test_a_file_the_prelude_opened_holds_what_plain_python_writes_to_it_step_after_step(run, tmp_path):
    # What the prelude wrote and had not flushed is written once, not again by every step.
    cells = [
        "%%prelude\njournal = open('journal.txt', 'w')\njournal.write('header, ')",
        "%%step a\njournal.write('a, ')\nx = 1",
        "%%step b\njournal.write('b')\ny = x + 1",
    ]
    subprocess.run([sys.executable, "-c", "\n".join(cell.split("\n", 1)[1] for cell in cells)], cwd=tmp_path, check=True)
    assert (tmp_path / "journal.txt").read_text() == "header, a, b"
    result, _ = run(*cells)
    assert result.state == "SUCCEEDED" and (tmp_path / "journal.txt").read_text() == "header, a, b"


def test_what_a_steps_threads_were_still_doing_when_it_ended_is_done_as_in_plain_python(run, tmp_path):
    cell = (
        "%%step a\nimport threading, time\nfrom concurrent.futures import ThreadPoolExecutor\n"
        "ThreadPoolExecutor(2).submit(lambda: (time.sleep(0.3), open('pool.txt', 'w').write('pool')))\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), open('thread.txt', 'w').write('thread'))).start()\nx = 1"
    )
    subprocess.run([sys.executable, "-c", cell.split("\n", 1)[1]], cwd=tmp_path, check=True)
    expected = {"pool.txt": "pool", "thread.txt": "thread"}
    for isolate in (None, False, True):  # None: plain python
        if isolate is not None:
            result, _ = run(cell, isolate=isolate)
            assert result.state == "SUCCEEDED", result.failure_message()
        assert {name: (tmp_path / name).read_text() for name in expected} == expected, isolate
        for name in expected:
            os.remove(tmp_path / name)


# A prelude that lets a step find the process forked ahead for the step after it: the supervisor's
# other child (besides the step itself), waiting for its step.
FINDS_THE_SPARE = (
    "%%prelude\nimport os, time\nimport psutil\nstarted = time.time()\n"
    "def the_spare():\n"
    "    deadline = time.time() + 10\n"
    "    while time.time() < deadline:\n"
    "        others = [p for p in psutil.Process(os.getppid()).children() if p.pid != os.getpid()]\n"
    "        if others:\n"
    "            return others[0]\n"
    "        time.sleep(0.01)\n"
    "    raise AssertionError('no process was forked ahead for the next step')"
)


def test_the_next_steps_process_is_forked_while_a_step_runs_and_none_is_left_after_the_run(run):
    result, _ = run(
        FINDS_THE_SPARE,
        "%%step a --outputs waiting\nwaiting = the_spare().pid\ntime.sleep(0.5)\na_ended = time.time()",
        "%%step b\nb_pid, after = os.getpid(), a_ended\nlast_spare = the_spare().pid",
    )
    assert result.state == "SUCCEEDED", result.failure_message()
    assert result.load("b_pid") == result.load("waiting")  # b ran in the process a saw waiting: b's start waited for no fork
    assert not psutil.pid_exists(result.load("last_spare"))  # the one made for a step that never came


def test_a_process_forked_ahead_that_died_waiting_is_replaced_and_the_next_step_still_starts_warm(run):
    result, _ = run(
        FINDS_THE_SPARE,
        "%%step a\nspare = the_spare()\nspare.kill()\nwhile psutil.pid_exists(spare.pid):\n    time.sleep(0.01)\n"
        "killed, t_a = spare.pid, started",
        "%%step b\nb_pid, t_b = os.getpid(), started\nafter = (killed, t_a)",
    )
    assert result.state == "SUCCEEDED", result.failure_message()
    assert result.load("b_pid") != result.load("killed") and result.load("t_b") == result.load("t_a")  # a fork all the same
