"""No hang, no orphan: every process a run starts (and everything those start) is gone when the
run ends, however it ends. Each test starts real processes and asserts with the process table."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
from conftest import make_notebook

from kfmagic.display import TextProgress
from kfmagic.errors import PlanError, RunFailed
from kfmagic.registry import Pipeline
from kfmagic.syntax import parse_cell

# A step that records its pid and starts a child that would outlive it by a minute.
WITH_CHILD = (
    "%%step {name}\nimport os, subprocess\nchild = subprocess.Popen(['sleep', '60'])\n"
    "open({pids!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
)


def pipeline_of(*cells):
    pipeline = Pipeline(name="procs")
    for number, text in enumerate(cells):
        pipeline.add(parse_cell(text), label=f"cell {number}")
    return pipeline


def run(pipeline, **kwargs):
    try:
        return pipeline.run(progress=TextProgress(io.StringIO()), **kwargs)
    except RunFailed as failure:
        return failure.run


def pids_in(path, timeout=30):
    """The pids a step wrote to `path` (waiting for them); never an empty list, which proves nothing."""
    deadline = time.time() + timeout
    while not (os.path.exists(path) and open(path).read().strip()) and time.time() < deadline:
        time.sleep(0.05)
    pids = [int(pid) for pid in open(path).read().split()]
    assert pids, f"nothing written to {path}"
    return pids


def alive(pids):
    """The pids among `pids` that are still running (a zombie has ended)."""
    found = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                found.append(pid)
        except psutil.NoSuchProcess:
            continue
    return found


def kfmagic_processes():
    """This test's kfmagic supervisors and step runtimes: their HOME is this test's own
    (conftest.isolated_home), which kernels, supervisors and steps inherit."""
    mine = []
    for process in psutil.process_iter(["cmdline", "pid"]):
        line = " ".join(process.info["cmdline"] or [])
        if "kfmagic.supervisor" in line or "kfmagic.runtime" in line:
            try:
                if process.environ().get("HOME") == os.environ["HOME"]:
                    mine.append(process)
            except psutil.Error:
                continue
    return mine


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_step_is_finished_when_its_process_exits_and_what_it_started_is_stopped(here):
    started = time.time()
    result = run(pipeline_of(WITH_CHILD.format(name="a", pids=str(here / "a")) + "x = 1", "%%step b\ny = x + 1"))
    assert result.state == "SUCCEEDED" and result.load("y") == 2
    assert time.time() - started < 15  # not the child's 60 s
    assert alive(pids_in(here / "a")) == []


def test_a_killed_step_takes_what_it_started_with_it(here):
    cell = WITH_CHILD.format(name="doomed", pids=str(here / "p")) + "import signal\nos.kill(os.getpid(), signal.SIGKILL)"
    started = time.time()
    result = run(pipeline_of(cell, "%%step later\nz = 1\nprint(child)"))
    assert (result.state, result.steps["doomed"].state, result.steps["later"].state) == ("FAILED", "FAILED", "SKIPPED")
    assert "killed by SIGKILL" in result.steps["doomed"].error and time.time() - started < 15
    assert alive(pids_in(here / "p")) == []


def test_a_double_forked_daemon_in_a_session_of_its_own_is_stopped_too(here):
    daemon = here / "daemon"
    (here / "start.sh").write_text(f"sleep 60 &\necho $! > {daemon}.tmp\nmv {daemon}.tmp {daemon}\n")
    cell = (
        "%%step spawn\nimport os, subprocess, time\n"
        f"subprocess.run('setsid sh {here / 'start.sh'} &', shell=True)\n"
        f"while not os.path.exists({str(daemon)!r}):\n    time.sleep(0.05)\n"
        f"os.kill(int(open({str(daemon)!r}).read()), 0)  # the daemon runs, in a session of its own"
    )
    result = run(pipeline_of(cell))
    assert result.state == "SUCCEEDED"
    assert result.steps["spawn"].duration < 2.5  # not kept waiting for the output it holds open
    assert alive(pids_in(daemon)) == []


def _interrupt_when(paths, times=1, gap=0.5):
    """Ctrl-C (SIGINT to this process, as the kernel gets it) once every file in `paths` exists."""

    def send():
        while not all(os.path.exists(path) and open(path).read().strip() for path in paths):
            time.sleep(0.05)
        for _ in range(times):
            time.sleep(gap)
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=send, daemon=True).start()


STUBBORN = "%%step {name}\nimport signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + WITH_CHILD.split("\n", 1)[1] + "time.sleep(60)"


def test_ctrl_c_stops_steps_that_ignore_sigterm_together_and_a_second_one_at_once(here):
    names = ("a", "b", "c")
    pipeline = pipeline_of(*(STUBBORN.format(name=n, pids=str(here / n)) for n in names))
    _interrupt_when([here / n for n in names])
    started = time.time()
    with pytest.raises(RunFailed, match="interrupted: its step processes were stopped"):
        pipeline.run(progress=TextProgress(io.StringIO()), workers=3)
    took = time.time() - started
    assert pipeline.last_run is None or pipeline.last_run.state == "CANCELED"
    assert 3 <= took < 9  # one 3 s grace for all three, not one after another
    assert alive([pid for n in names for pid in pids_in(here / n)]) == []
    for n in names:
        os.remove(here / n)
    _interrupt_when([here / n for n in names], times=2)
    started = time.time()
    with pytest.raises(RunFailed) as caught:
        pipeline.run(progress=TextProgress(io.StringIO()), workers=3)
    assert caught.value.run.state == "CANCELED" and time.time() - started < 5  # the second Ctrl-C: no grace
    assert {step.state for step in caught.value.run.steps.values()} == {"CANCELED"}
    assert alive([pid for n in names for pid in pids_in(here / n)]) == []


def test_ctrl_c_in_a_real_kernel_at_any_moment_leaves_no_process(kernel, tmp_path):
    """Interrupts at random moments of a run, from before the first step to its end."""
    kernel.run("%load_ext kfmagic")
    kernel.run(f"%%step a\nimport os, time\nif os.path.exists({str(tmp_path / 'go')!r}):\n    time.sleep(5)\nx = 1")
    kernel.run("%%step b\ny = x + 1")
    (tmp_path / "go").touch()
    for delay in (0.0, 0.05, 0.15, 0.3, 0.6, 1.2):
        msg_id = kernel.send("run = %pipeline run")
        time.sleep(delay)
        kernel.manager.interrupt_kernel()
        status, shown = kernel.collect(msg_id)
        assert "Traceback" not in re.sub(r"\x1b\[[0-9;]*m", "", shown) or "KeyboardInterrupt" in shown, shown
        _, state = kernel.run("print(getattr(__import__('kfmagic').pipeline().last_run, 'state', None))")
        assert state.strip() in ("CANCELED", "None", "SUCCEEDED"), state
        deadline = time.time() + 10
        while kfmagic_processes() and time.time() < deadline:
            time.sleep(0.1)
        assert kfmagic_processes() == [], (delay, shown)
    status, _ = kernel.run("print(1 + 1)")
    assert status == "ok"  # the kernel lives on


def test_steps_die_with_their_kernel(kernel, tmp_path):
    kernel.run("%load_ext kfmagic")
    kernel.run(f"%%step slow\nimport os, time\nif os.path.exists({str(tmp_path / 'go')!r}):\n"
               f"    open({str(tmp_path / 'pid')!r}, 'w').write(str(os.getpid()))\n    time.sleep(60)")
    (tmp_path / "go").touch()
    kernel.send("%pipeline run")
    step = pids_in(tmp_path / "pid")
    os.kill(kernel.manager.provisioner.process.pid, signal.SIGKILL)
    deadline = time.time() + 10
    while (alive(step) or kfmagic_processes()) and time.time() < deadline:
        time.sleep(0.1)
    assert alive(step) == []
    assert [process.cmdline() for process in kfmagic_processes()] == []


def test_a_supervisor_killed_from_outside_ends_its_steps_and_fails_the_run(here):
    pipeline = pipeline_of(STUBBORN.format(name="a", pids=str(here / "a")))

    def kill_supervisor():  # the step's parent (the process forked ahead for a next step is its sibling)
        step, _ = pids_in(here / "a")
        psutil.Process(psutil.Process(step).ppid()).kill()

    threading.Thread(target=kill_supervisor, daemon=True).start()
    started = time.time()
    result = run(pipeline)
    assert result.state == "FAILED" and "supervisor process ended unexpectedly" in result.steps["a"].error
    left = [(psutil.Process(pid).cmdline(), os.getpgid(pid)) for pid in alive(pids_in(here / "a"))]
    assert time.time() - started < 15 and left == [], (pids_in(here / "a"), left)


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_to_the_cli_stops_every_step_and_what_they_started(tmp_path, sig, status):
    import nbformat

    path = tmp_path / "nb.ipynb"
    nbformat.write(make_notebook(["%load_ext kfmagic", STUBBORN.format(name="slow", pids=str(tmp_path / "p"))]), path)
    cli = subprocess.Popen([sys.executable, "-m", "kfmagic.cli", "run", str(path)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    pids = pids_in(tmp_path / "p")
    cli.send_signal(sig)
    _, err = cli.communicate(timeout=30)
    assert cli.returncode == status and "every step process was stopped" in err and "kernel" not in err
    assert alive(pids) == []


def test_ctrl_c_while_following_a_cluster_run_leaves_it_there_and_cancel_stops_it(kernel, kfp_server, tmp_path):
    go = str(tmp_path / "go")
    kernel.run("%load_ext kfmagic\n%pipeline init slow-one")
    kernel.run(f"%%step sleepy --no-install\nimport os, time\nif os.path.exists({go!r}):\n    time.sleep(120)")
    kernel.run(f"%pipeline config --host {kfp_server.url}")
    (tmp_path / "go").touch()
    msg_id = kernel.send("run = %pipeline run --wait")
    deadline = time.time() + 60
    while not any(task.get("state") == "RUNNING" for run_id in list(kfp_server.runs)
                  for task in kfp_server.get_run(run_id).get("run_details", {}).get("task_details", [])) \
            and time.time() < deadline:
        time.sleep(0.2)
    kernel.manager.interrupt_kernel()
    status, shown = kernel.collect(msg_id)
    run_id = re.search(r"Stopped following run (\S+);", shown).group(1)
    assert status == "error" and "it goes on on Kubeflow" in shown and f"%pipeline cancel {run_id}" in shown
    assert kfp_server.get_run(run_id)["state"] == "RUNNING"
    _, shown = kernel.run("print(__import__('kfmagic').pipeline().last_run.id)")
    assert shown.strip() == run_id
    status, shown = kernel.run("%pipeline cancel")
    assert status == "ok"
    assert kfp_server.wait_for_run(run_id, timeout=30)["state"] == "CANCELED"


def test_the_cli_cancels_a_cluster_run_by_id(kfp_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipeline = pipeline_of("%%step sleepy --no-install\nimport time\ntime.sleep(120)")
    pipeline.configure(host=kfp_server.url)
    submitted = pipeline.run()
    cancel = subprocess.run(["kfmagic", "cancel", submitted.id, "--host", kfp_server.url],
                            capture_output=True, text=True, timeout=60)
    assert cancel.returncode == 0, cancel.stderr
    assert kfp_server.wait_for_run(submitted.id, timeout=30)["state"] == "CANCELED"
    missing = subprocess.run(["kfmagic", "cancel", "no-such-run", "--host", kfp_server.url],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no-such-run" in missing.stderr and "Traceback" not in missing.stderr


def open_fds():
    return set(os.listdir("/proc/self/fd"))


def test_a_supervisor_killed_between_steps_fails_the_run_with_one_message_and_leaves_nothing_open(here, monkeypatch, capsys):
    from kfmagic.backends import launcher

    start = launcher.Launcher.start

    def killed_first(self, name, *args, **kwargs):  # the supervisor dies (SIGKILL from outside) once a has ended
        if name == "b":
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        return start(self, name, *args, **kwargs)

    monkeypatch.setattr(launcher.Launcher, "start", killed_first)
    before = open_fds()
    result = run(pipeline_of("%%step a\nx = 1", "%%step b\ny = x + 1", "%%step c\nz = y + 1"))
    states = {name: step.state for name, step in result.steps.items()}
    assert (result.state, states) == ("FAILED", {"a": "SUCCEEDED", "b": "FAILED", "c": "SKIPPED"})
    assert "supervisor process ended unexpectedly" in result.steps["b"].error
    assert "Traceback" not in capsys.readouterr().err
    assert open_fds() <= before and kfmagic_processes() == []


def supervisors_here():
    """The supervisor processes this test process has started."""
    return [child for child in psutil.Process().children() if "kfmagic.supervisor" in " ".join(child.cmdline())]


def test_a_supervisor_started_ahead_of_its_run_is_the_runs_or_else_stopped(here):
    from kfmagic.backends.launcher import supervisor_ahead

    with supervisor_ahead():
        [ahead] = supervisors_here()
        result = run(pipeline_of("%%prelude\nimport os", "%%step a --metrics parent\nparent = os.getppid()"))
    assert result.state == "SUCCEEDED" and result.metrics["a"]["parent"] == ahead.pid  # its steps' parent
    with supervisor_ahead():  # the command never got to run it (a refused plan, a run sent to a cluster)
        [ahead] = supervisors_here()
        with pytest.raises(PlanError):
            run(pipeline_of("%%step a\ny = undefined_name"))
    assert not psutil.pid_exists(ahead.pid) and kfmagic_processes() == []


def test_a_supervisor_started_ahead_of_a_run_sent_to_the_cluster_goes_when_the_run_is_submitted(kfp_server, here):
    from kfmagic.backends.launcher import supervisor_ahead

    pipeline = pipeline_of("%%step a --no-install\nx = 1")
    pipeline.configure(host=kfp_server.url)
    with supervisor_ahead():
        [ahead] = supervisors_here()
        pipeline.run()
        assert not psutil.pid_exists(ahead.pid)  # not idle beside a run it has no part in


def test_ctrl_c_while_the_prelude_runs_stops_it_at_once(here):
    pids = here / "pids"
    prelude = ("%%prelude\nimport os, subprocess, time\nchild = subprocess.Popen(['sleep', '60'])\n"
               f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\ntime.sleep(30)")
    pipeline = pipeline_of(prelude, "%%step a\nx = 1")
    _interrupt_when([pids], gap=0.2)
    started = time.time()
    with pytest.raises(RunFailed, match="interrupted") as caught:
        pipeline.run(progress=TextProgress(io.StringIO()), cache=False)
    assert caught.value.run.state == "CANCELED" and time.time() - started < 4  # not a grace it cannot use
    assert alive(pids_in(pids)) == [] and kfmagic_processes() == []


@pytest.fixture
def supervisor_here():
    """(a Supervisor in this process, the run loop's end of its channel)."""
    import selectors
    import socket

    from kfmagic.supervisor import Supervisor

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs, selectors.DefaultSelector() as selector:
        yield Supervisor(theirs, selector, []), ours


def said(channel):
    return json.loads(channel.recv(1 << 20))


def test_a_step_the_supervisor_cannot_fork_fails_at_once_and_leaves_nothing_open(supervisor_here, monkeypatch):
    supervisor, channel = supervisor_here
    supervisor.warm = object()  # as once a prelude was warmed: a step would say through a pipe when it is done
    before = open_fds()
    (out, out_end), (err, err_end) = os.pipe(), os.pipe()

    def no_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    for fd in (out, err):
        os.set_blocking(fd, False)  # still held open: BlockingIOError, not a hang
    supervisor.start({"name": "a", "argv": [], "cwd": ".", "env": {}, "spec": "spec.json", "isolate": False}, [out_end, err_end])
    assert said(channel) == {"op": "failed", "name": "a", "error": "[Errno 11] Resource temporarily unavailable"}
    assert os.read(out, 1) == os.read(err, 1) == b""  # its output has ended: the run does not wait for it
    os.close(out)
    os.close(err)
    assert open_fds() == before and supervisor.steps == {}


@pytest.mark.parametrize("missing", ["cwd", "prelude"])
def test_a_prelude_the_supervisor_cannot_set_up_is_why_steps_start_afresh(supervisor_here, tmp_path, monkeypatch, missing):
    supervisor, channel = supervisor_here
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prelude.json").write_text(json.dumps({"prelude": [], "params": {}}))
    message = {"op": "warm", "cwd": str(tmp_path), "prelude": str(tmp_path / "prelude.json"), missing: str(tmp_path / "gone")}
    supervisor.warm_up(message)
    assert said(channel) == {
        "op": "warm",
        "fallback": f"the run's supervisor could not set up the prelude ([Errno 2] No such file or directory: '{tmp_path / 'gone'}')",
    }
    assert supervisor.warm is None
