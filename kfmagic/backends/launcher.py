"""How a run starts its processes and stops them: through one supervisor process per run.

The run loop asks `Launcher.start` for a step; the supervisor (kfmagic/supervisor.py) forks it in
a session of its own and reports when it has exited, after stopping whatever the step left
behind. Everything the run loop learns arrives on one queue: the steps' output lines, their ends
of output, their exits. `supervised` owns the lifecycle every backend shares: the live display,
Ctrl-C at any moment (every process stopped, the run CANCELED, nothing left running), and the
supervisor gone at the end whatever happened.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from .. import supervisor

STOP_GRACE = 3.0  # seconds a stopped step gets between SIGTERM and SIGKILL


def step_env():
    """The step process finds kfmagic even when the kernel imported it from a source checkout."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), package_parent) if p)
    return env


def pump_lines(name, stream_name, pipe, events):
    """Each line `pipe` gives, then its end, onto `events`."""
    for raw in iter(pipe.readline, b""):
        events.put(("line", name, stream_name, raw.decode("utf-8", "replace").rstrip("\n")))
    pipe.close()
    events.put(("eof", name, stream_name, None))


_AHEAD = []  # a supervisor started by `supervisor_ahead`, for the first Launcher


def _spawn_supervisor():
    """A supervisor process, and the run loop's end of the channel to it."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with theirs:
        process = subprocess.Popen(
            [sys.executable, "-m", "kfmagic.supervisor", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], env=step_env(), stdin=subprocess.DEVNULL, start_new_session=True,
        )
    return process, ours


@contextlib.contextmanager
def supervisor_ahead():
    """For a command about to run a pipeline: its supervisor starts now, its own start-up (Python,
    kfmagic's runtime: ~50 ms) overlapping the command's (IPython's cell reader, the notebook, the
    plan). The run's Launcher takes it; if none does (the run was refused, or goes to a cluster), it
    is stopped then, having started nothing."""
    _AHEAD.append(_spawn_supervisor())
    try:
        yield
    finally:
        release_ahead()


def release_ahead():
    """A supervisor started ahead that no run will take (it has started nothing): gone now."""
    while _AHEAD:
        process, channel = _AHEAD.pop()
        channel.close()
        process.kill()
        process.wait()


class Launcher:
    """The run's supervisor process (started when the first process is), and the run loop's side
    of talking to it."""

    def __init__(self, events):
        self.events = events
        self.process = self.channel = None
        self.stopped = threading.Event()  # the supervisor has gone (`clean`: after stopping everything)
        self.clean = False
        self.warming = False  # the supervisor runs the prelude, and reads nothing until it has

    def _supervisor(self):
        if self.process is None:
            self.process, self.channel = _AHEAD.pop() if _AHEAD else _spawn_supervisor()
            threading.Thread(target=self._listen, daemon=True).start()
        return self.channel

    def warm(self, prelude, cwd):
        """Have the supervisor run the prelude once (`prelude`: a file holding its parts and the
        params it starts from), so that steps start as forks of it; the answer arrives as a
        ("warm", None, None, why not) event."""
        self._supervisor()
        self.warming = True
        self._send({"op": "warm", "prelude": prelude, "cwd": cwd})

    def start(self, name, argv, cwd, env=None, spec=None, isolate=False):
        """Start process `name`: a warm fork running `spec` (unless `isolate`, or no prelude was
        warmed), else `argv` executed afresh, with `env` added to the supervisor's environment
        (step_env()); a warm fork has the supervisor's own. Its output lines, ends of output and exit
        arrive as events; if the supervisor cannot be asked (it has died), a ("failed", ...) event."""
        pipes = []
        try:
            for _ in ("stdout", "stderr"):
                pipes.append(os.pipe())
            message = {"op": "start", "name": name, "argv": argv, "cwd": cwd, "env": env or {}, "spec": spec, "isolate": isolate}
            socket.send_fds(self._supervisor(), [json.dumps(message).encode()], [writer for _, writer in pipes])
        except BaseException as error:  # Ctrl-C included: nothing of it is left open
            for pipe in pipes:
                for fd in pipe:
                    os.close(fd)
            if not isinstance(error, OSError):
                raise
            self.events.put(("failed", name, None, f"the run's supervisor could not start it ({error})"))
            return
        for _, writer in pipes:
            os.close(writer)
        for stream_name, (reader, _) in zip(("stdout", "stderr"), pipes):
            pipe = os.fdopen(reader, "rb")
            threading.Thread(target=pump_lines, args=(name, stream_name, pipe, self.events), daemon=True).start()

    def _listen(self):
        """Supervisor messages -> events: ("started"|"exited"|"failed", name, None, detail)."""
        while True:
            try:
                data = self.channel.recv(supervisor.MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                self.stopped.set()
                return
            message = json.loads(data)
            if message["op"] == "stopped":
                self.clean = True
                self.stopped.set()
                return
            if message["op"] == "warm":
                self.warming = False
                self.events.put(("warm", None, None, message["fallback"]))
                continue
            detail = message.get("returncode", message.get("pid", message.get("error")))
            self.events.put((message["op"], message["name"], None, detail))

    def stop(self, grace=STOP_GRACE):
        """Stop every process of the run: SIGTERM together, SIGKILL after `grace`; a Ctrl-C meanwhile
        means "now", and never leaves a process behind. While the prelude is being warmed, now: the
        supervisor would not read the request before the prelude ends, and no step has started."""
        if self.process is None:
            return
        if self.warming:
            self._kill()
        hurry = threading.Event()
        with _interrupts_set(hurry):
            self._send({"op": "stop", "grace": grace})
            deadline = time.monotonic() + grace + 5
            while not self.stopped.wait(0.05) and time.monotonic() < deadline:
                if hurry.is_set():
                    self._send({"op": "kill"})
                    hurry.clear()
        self.close()

    def close(self):
        """The supervisor is gone: asked to go, else killed; its steps die with it, and if it did not
        stop them itself (killed from outside), what they started is stopped here, and gone on return."""
        if self.process is None:
            return
        if self.process.poll() is None and not self.stopped.wait(2):
            self._kill()
        self.process.wait()
        self.channel.close()
        if not self.clean:  # found by the mark the supervisor put in their environment, until none is
            deadline = time.monotonic() + 2  # left (a SIGKILL ends a process a moment after it is sent)
            while (left := supervisor.started_by(self.process.pid)) and time.monotonic() < deadline:
                for pid in left:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.01)

    def _kill(self):
        """SIGKILL to the supervisor and what the prelude it runs started (its process group, of which
        it is the leader; steps are in sessions of their own, and die with it)."""
        with contextlib.suppress(OSError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def _send(self, message):
        try:
            self.channel.send(json.dumps(message).encode())
        except OSError:
            pass  # the supervisor has gone already


@contextlib.contextmanager
def _interrupts_set(flag):
    """While stopping, Ctrl-C (SIGINT) sets `flag` instead of raising into the middle of the stop."""
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: flag.set())
    except ValueError:  # not the main thread: nothing to take over
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def supervised(record, progress, events, stopped_message):
    """A Launcher for the run `record`, inside its lifecycle: progress shown, and on Ctrl-C (or any
    error) every process stopped; a Ctrl-C ends the run CANCELED with `stopped_message` (RunFailed)."""
    from .base import interrupted  # here: `supervisor_ahead` imports this module before anything heavy

    with supervising(events, lambda: interrupted(record, progress, stopped_message)) as launcher:
        progress.start(record)
        yield launcher


@contextlib.contextmanager
def supervising(events, on_interrupt):
    """A Launcher (of one run, or of every run of a sweep) inside its lifecycle: on Ctrl-C (or any
    error) every process stopped; a Ctrl-C then raises what `on_interrupt()` returns."""
    launcher = None
    try:
        launcher = Launcher(events)
        yield launcher
    except KeyboardInterrupt:
        if launcher is not None:
            launcher.stop()
            launcher = None
        raise on_interrupt() from None
    finally:
        if launcher is not None:
            launcher.stop(grace=0)  # what finished steps left behind; everything, on an error
