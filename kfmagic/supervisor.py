"""The per-run supervisor: starts a run's step processes and makes sure nothing they start outlives them.

`python -m kfmagic.supervisor FD`: FD is one end of a SOCK_SEQPACKET socket pair; the run loop
(backends/launcher.py) holds the other. Messages are JSON objects, one per packet:

  in:  {"op": "warm", "cwd", "prelude"}  run the prelude here once, from the file `prelude` names
       (its parts and the params it starts from; answer: {"op": "warm",
       "fallback": why steps must start afresh, or null})
       {"op": "start", "name", "argv", "cwd", "env", "spec", "isolate"} + the step's stdout and stderr
       (passed fds): a fork of the warmed process running `spec`, else (isolate, or no warm start)
       `argv` executed afresh, with `env` added to the supervisor's own environment
       {"op": "stop", "grace": seconds}   every step: SIGTERM together, SIGKILL after `grace`
       {"op": "kill"}                     every step and what it started: SIGKILL now
  out: {"op": "started", "name", "pid"}, {"op": "exited", "name", "returncode"} (negative: the
       signal), {"op": "failed", "name", "error"}, {"op": "stopped"} before it exits.

Warm start: a step's process costs its own work, not the prelude's imports again. The supervisor
runs the prelude once (in a `__main__` namespace, as a step would) and each step is a fork of it:
it starts from the state the prelude left, and nothing a step does reaches another. The fork is
made ahead (a spare, waiting for its step's message while the step before it runs), so that a
chain of steps does not wait for a fork of the whole prelude process at each step. What the
prelude printed (caught at fds 1 and 2, so that the streams it handed out stay the real ones) is
written first in each step's output. What the prelude made stays referenced here, so no step
finalizes it for the others (a temporary folder), and its exit handlers run once, when the
supervisor exits; a step runs its own. Where forking is not safe (the prelude started threads,
initialised a GPU runtime, or failed, or its file could not be read), it says why once, and steps
start afresh, each running the prelude itself.

Why a process of its own: a step is finished when its process exits, whatever it left behind (a
server it started, a child that holds its output open); the supervisor then stops what is left of
the step. On Linux it is a child subreaper, so orphans of a step become its children instead of
init's, and it finds every step's descendants by reading /proc (their parents, their session,
and the STEP_ENV mark each step's environment passes down): a double fork or a new session does
not escape. Each step runs in a session of its own and dies with the supervisor
(PR_SET_PDEATHSIG), and the supervisor stops every step when the run loop goes away (its socket
closes, or SIGTERM/SIGHUP), so no step outlives its run however the run ends. Elsewhere it falls
back to process groups. Stdlib only; single-threaded, so forking is safe.
"""

import contextlib
import ctypes
import gc
import json
import os
import selectors
import signal
import socket
import sys
import tempfile
import threading
import time
import types
import typing

MAX_MESSAGE = 1 << 20
STEP_ENV = "KFMAGIC_STEP_ID"  # in every step's environment: "<supervisor pid>:<step>", inherited by what it starts
_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36
_TRACK_SECONDS = 0.2  # how often a running step's descendants are looked up
_LEFTOVER_GRACE = 1.0  # what a finished step left behind gets this long after SIGTERM
_WATCHED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
# What a fresh Python process starts with, for the signals the supervisor handles or Python sets.
_FRESH_HANDLERS = {
    signal.SIGCHLD: signal.SIG_DFL, signal.SIGTERM: signal.SIG_DFL, signal.SIGHUP: signal.SIG_DFL,
    signal.SIGINT: signal.default_int_handler, signal.SIGPIPE: signal.SIG_IGN,
}
# Modules whose runtime does not survive a fork once imported (threads and GPU contexts of their own).
_UNFORKABLE = {"tensorflow": "TensorFlow", "jax": "JAX", "cupy": "CuPy", "pycuda": "PyCUDA"}


class _Spare(typing.NamedTuple):
    """A fork of the warmed process waiting to become the next warm step: its session, signal
    handlers and death with the supervisor are set; its step's message and output come through `channel`."""

    pid: int
    channel: socket.socket  # the supervisor's end
    done: int  # the read end of the pipe through which its step says it is done


class _Warm(typing.NamedTuple):
    """What a warm step starts from: the state the prelude left here."""

    runtime: types.ModuleType
    namespace: dict  # the prelude's __main__, each step's own once forked
    made: dict  # its names' values as the prelude left them, held here whatever a step rebinds or
    # clears (a step releasing the prelude's temporary folder would remove it for every step)
    printed: dict  # {fd: bytes}: what the prelude printed, each step's output too
    random_states: dict  # runtime.fork_states
    files: list  # the files the prelude opened, flushed when a step ends


def _prctl(option, value):
    """Linux's prctl, or False where there is none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _processes():
    """{pid: (parent pid, session id, start time)} of every process, from /proc ({} without it)."""
    found = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as file:
                stat = file.read()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (command)"
        found[int(name)] = (int(fields[1]), int(fields[3]), int(fields[19]))
    return found


def _marked(pid, mark):
    """Whether process `pid` carries `mark` (or, ending in ":", a mark starting so) in its environment:
    what a step started, however far."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            entries = file.read().split(b"\0")
    except OSError:
        return False
    wanted = f"{STEP_ENV}={mark}".encode()
    return any(entry.startswith(wanted) if wanted.endswith(b":") else entry == wanted for entry in entries)


def started_by(supervisor_pid):
    """Every live process that a step of the supervisor `supervisor_pid` started (its mark)."""
    return [pid for pid in _processes() if _marked(pid, f"{supervisor_pid}:")]


def _fork_unsafe():
    """Why a step cannot be a fork of this process now the prelude has run, or None."""
    threads = [thread.name for thread in threading.enumerate() if thread is not threading.main_thread()]
    if threads:
        return f"the prelude started threads ({', '.join(threads[:3])}), which a fork would not have"
    torch = sys.modules.get("torch")
    if torch is not None and getattr(getattr(torch, "cuda", None), "is_initialized", lambda: False)():
        return "the prelude initialised CUDA (torch), which cannot be forked"
    for module, what in _UNFORKABLE.items():
        if module in sys.modules:
            return f"the prelude imported {what}, whose runtime cannot be forked"
    return None


@contextlib.contextmanager
def _printed():
    """What is written to fds 1 and 2 meanwhile, kept aside: {1: bytes, 2: bytes} once done.
    At the descriptors, not by swapping sys.stdout/sys.stderr: what keeps hold of those (a logging
    handler, `OUT = sys.stdout`) keeps the real streams, which in a step's fork are its own output."""
    printed, saved = {}, {}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        _flush_std()
        try:
            for fd, file in ((1, out), (2, err)):
                saved[fd] = os.dup(fd)
                os.dup2(file.fileno(), fd)
            yield printed
        finally:
            _flush_std()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
        for fd, file in ((1, out), (2, err)):
            file.seek(0)
            printed[fd] = file.read()


def _flush_std():
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def _run_prelude(runtime, prelude):
    """(why steps cannot be forks of this process or None, what a warm step starts from)."""
    try:
        with _printed() as printed:
            namespace = runtime.new_namespace()
            before = runtime.random_states()
            runtime.run_prelude(namespace, prelude["params"], prelude["prelude"])
            states = runtime.fork_states(before, runtime.random_states(), prelude.get("seeded", ()))
        why = _fork_unsafe()
    except BaseException as error:  # noqa: B036 - every step shows it, each running the prelude itself
        return f"the prelude failed here ({type(error).__name__})", None
    files = runtime.open_files()
    runtime.flush(files)  # each step would write again what a file of the prelude still held
    return why, _Warm(runtime, namespace, dict(namespace), printed, states, files)


def _runtime():
    """kfmagic's runtime, and what every step that saves a value needs: imported once, here, when the
    supervisor starts (while its run loop still plans), not in every step."""
    from kfmagic import runtime, serde  # noqa: F401

    with contextlib.suppress(ImportError):
        import cloudpickle  # noqa: F401
    return runtime


def _say_done(done, code):
    """A warm step's last act: its output ends (nothing more is written to it), and it says so."""
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            os.close(fd)
    os.write(done, bytes([code]))


def _descendants(root, processes):
    children = {}
    for pid, (parent, _, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


class Supervisor:
    def __init__(self, channel, selector, own_fds):
        self.channel, self.selector, self.pid = channel, selector, os.getpid()
        self.own_fds = own_fds  # the supervisor's own (wakeup pipe, selector): not a step's
        self.warm = None  # a _Warm once warmed
        self.spare = None  # a _Spare once warmed, unless just used
        self.prelude_handlers = {}  # signal -> the handler the prelude set
        self.steps = {}  # pid -> name of a step still running
        self.owned = {}  # name -> {(pid, start time)}: everything a step started, as last seen
        self.leftovers = {}  # (pid, start time) -> when to SIGKILL it
        self.stopping = None  # when every step is SIGKILLed, once a stop has begun

    # -- messages -----------------------------------------------------------------------------

    def send(self, **message):
        try:
            self.channel.send(json.dumps(message).encode())
        except OSError:
            pass  # the run loop is gone; stopping continues regardless

    def receive(self):
        """One message and the fds passed with it, or (None, []) when the run loop has gone."""
        try:
            data, fds, _, _ = socket.recv_fds(self.channel, MAX_MESSAGE, 4)
        except OSError:
            return None, []
        return (json.loads(data) if data else None), fds

    # -- starting -----------------------------------------------------------------------------

    def warm_up(self, message):
        """Run the prelude here, once, as each step would; steps are then forks of this process.
        Whatever stops it (the folder, the prelude's file, the prelude itself) is why steps start afresh."""
        ours = {sig: signal.getsignal(sig) for sig in _FRESH_HANDLERS}
        runtime = _runtime()
        try:
            os.chdir(message["cwd"])
            if not sys.flags.safe_path:  # the run's folder first, as `python -m` started there has it
                sys.path[0] = os.getcwd()  # (this process may have started elsewhere, ahead of its run)
            with open(message["prelude"]) as file:
                prelude = json.load(file)
        except (OSError, ValueError) as error:
            why = f"the run's supervisor could not set up the prelude ({error})"
        else:
            why, warm = _run_prelude(runtime, prelude)
        self.prelude_handlers = {sig: handler for sig in ours if (handler := signal.getsignal(sig)) is not ours[sig]}
        for sig, handler in ours.items():
            signal.signal(sig, handler)
        if why is None:
            gc.freeze()  # what the prelude made is never collected in a step: its pages stay shared
            self.warm = warm
        self.send(op="warm", fallback=why)
        if why is None:
            self._make_spare()

    def start(self, message, fds):
        """Step `message["name"]`, its stdout and stderr `fds`: the spare fork of the warmed prelude
        (and another made for the next step while this one runs), else a fork executing it afresh."""
        name = message["name"]
        warm = self.warm is not None and not message.get("isolate")
        try:
            pid = self._hand_to_spare(message, fds) if warm else self._fork_afresh(message, fds)
        except OSError as error:  # nothing of the step is left open: its output ends at once
            self.send(op="failed", name=name, error=str(error))
            return
        finally:
            for fd in fds:
                os.close(fd)  # the step's process has them
        self.steps[pid] = name
        self.owned[name] = set()
        self.send(op="started", name=name, pid=pid)
        if warm:
            self._make_spare()

    def _make_spare(self):
        """A spare for the next warm step, unless one is waiting; if it cannot be forked now, that
        step forks it (and fails, saying why, if it still cannot)."""
        if self.spare is None:
            with contextlib.suppress(OSError):
                self.spare = self._fork_spare()

    def _drop_spare(self):
        """Forget the spare (it has died, or is about to be killed): its pid."""
        spare, self.spare = self.spare, None
        spare.channel.close()
        os.close(spare.done)
        return spare.pid

    def _hand_to_spare(self, message, fds):
        """The spare (forked now if none is waiting) becomes the step: its pid."""
        spare, self.spare = self.spare or self._fork_spare(), None
        with spare.channel:
            try:
                socket.send_fds(spare.channel, [json.dumps(message).encode()], fds)
            except OSError:
                os.close(spare.done)
                raise
        self.selector.register(spare.done, selectors.EVENT_READ, ("done", spare.pid))
        return spare.pid

    def _fork_spare(self):
        """A fork of this warmed process that waits (`_wait_as_spare`) for the step it will be."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        done_read, done_write = os.pipe()
        _flush_std()
        try:
            pid = os.fork()
        except OSError:
            for fd in (done_read, done_write):
                os.close(fd)
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            ours.close()
            os.close(done_read)
            self._wait_as_spare(theirs, done_write)
        theirs.close()
        os.close(done_write)
        return _Spare(pid, ours, done_read)

    def _fork_afresh(self, message, fds):
        """A child executing the step's command line, in the supervisor's environment and the message's."""
        env = dict(os.environ, **message["env"], **{STEP_ENV: self._mark(message["name"])})
        _flush_std()
        pid = os.fork()
        if pid == 0:
            self._become_step(message, env, *fds)
        return pid

    def _into_session(self, handlers):
        """In a forked child: a session of its own, death with the supervisor, the step's signal
        handlers, none of the supervisor's descriptors."""
        os.setsid()
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != self.pid:  # the supervisor died before the line above: so does the step
            os._exit(127)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(-1)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        for fd in (self.channel.fileno(), *self.own_fds):
            with contextlib.suppress(OSError):
                os.close(fd)

    @staticmethod
    def _take_output(stdout, stderr):
        """In the step's process: its stdout and stderr at fds 1 and 2, nothing to read at fd 0."""
        null = os.open(os.devnull, os.O_RDONLY)
        for source, target in ((null, 0), (stdout, 1), (stderr, 2)):
            os.dup2(source, target)
        for fd in (null, stdout, stderr):
            os.close(fd)

    def _become_step(self, message, env, stdout, stderr):
        """In the forked child: exec the step afresh."""
        try:
            self._into_session(dict.fromkeys(_FRESH_HANDLERS, signal.SIG_DFL))
            self._take_output(stdout, stderr)
            os.closerange(3, 65536)
            os.chdir(message["cwd"])
            os.execve(message["argv"][0], message["argv"], env)
        except BaseException as error:  # noqa: B036 - nothing may escape a forked child
            os.write(2, f"kfmagic could not start step {message['name']!r}: {error}\n".encode())
        os._exit(127)

    def _wait_as_spare(self, channel, done):
        """In the forked child: wait for the step to become (no step: the run has ended)."""
        try:
            self._into_session({**_FRESH_HANDLERS, **self.prelude_handlers})
            data, fds, _, _ = socket.recv_fds(channel, MAX_MESSAGE, 2)
            channel.close()
            message = json.loads(data) if data else None
        except BaseException:  # noqa: B036 - nothing may escape a forked child
            message = None
        if message is None:
            os._exit(0)
        os.environ[STEP_ENV] = self._mark(message["name"])
        self._become_warm_step(message, *fds, done)

    def _become_warm_step(self, message, stdout, stderr, done):
        """In the spare: the step, from the state the prelude left (what it printed first)."""
        warm = self.warm
        try:
            self._take_output(stdout, stderr)
            runtime = warm.runtime
            runtime.forget_exit_handlers()  # the prelude's: the supervisor runs them, once
            runtime.start_random_states(warm.random_states)
            os.chdir(message["cwd"])
            sys.argv = [runtime.__file__, message["spec"]]  # as `python -m kfmagic.runtime SPEC` has it
            for fd, text in warm.printed.items():
                _write_all(fd, text)
            with open(message["spec"]) as file:
                spec = json.load(file)
            code = runtime.run_step(spec, namespace=warm.namespace, warm=True)
        except BaseException as error:  # noqa: B036 - nothing may escape a forked child
            os.write(2, f"kfmagic could not start step {message['name']!r}: {error}\n".encode())
            os._exit(127)
        runtime.leave(code, warm.namespace, done=lambda: _say_done(done, code), files=warm.files)

    # -- watching -----------------------------------------------------------------------------

    def track(self):
        """Remember what every running step has started (so it can be found once orphaned)."""
        processes = _processes()
        for pid, name in self.steps.items():
            found = _descendants(pid, processes) | {p for p, (_, session, _) in processes.items() if session == pid}
            self.owned[name].update((p, processes[p][2]) for p in found if p in processes)
        return processes

    def reap(self):
        """Collect exited children (how many); a step's exit is reported, then what it left behind is
        told to stop (before the next message is read: the run loop meanwhile readies the steps that follow)."""
        collected = 0
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return collected
            if pid == 0:
                return collected
            collected += 1
            if self.spare is not None and pid == self.spare.pid:  # died waiting: the next step forks another
                self._drop_spare()
            name = self.steps.pop(pid, None)
            if name is not None:
                self.send(op="exited", name=name, returncode=os.waitstatus_to_exitcode(status))
                self._end(pid, name)

    def step_done(self, pid, fd):
        """A warm step said it is done, its process only ending now: the step has ended (its
        teardown, which nothing of the step runs in, is not waited for). Without word, reap tells."""
        code = os.read(fd, 1)
        self.selector.unregister(fd)
        os.close(fd)
        name = self.steps.get(pid) if code else None
        if name is not None:
            del self.steps[pid]
            self.send(op="exited", name=name, returncode=code[0])
            self._end(pid, name)

    def _mark(self, name):
        return f"{self.pid}:{name}"

    def _end(self, pid, name):
        """What the step left behind: SIGTERM now, SIGKILL after a short grace."""
        processes = _processes()
        left = {(p, processes[p][2]) for p, (_, session, _) in processes.items() if session == pid}
        adopted = _descendants(self.pid, processes) - set(self.steps)  # orphans, and what they started
        left |= {(p, processes[p][2]) for p in adopted if _marked(p, self._mark(name))}
        left |= {(p, start) for p, start in self.owned.pop(name, ()) if processes.get(p, (0, 0, None))[2] == start}
        left = {(p, start) for p, start in left if p != pid}  # a warm step still ending itself
        if left:
            self._signal(left, signal.SIGTERM)
        deadline = time.monotonic() + _LEFTOVER_GRACE
        self.leftovers.update((process, deadline) for process in left)

    def kill_overdue(self):
        now = time.monotonic()
        overdue = {process for process, deadline in self.leftovers.items() if deadline <= now}
        self._signal(overdue, signal.SIGKILL)
        for process in overdue:
            del self.leftovers[process]

    def _signal(self, processes, sig):
        if not processes:
            return  # no need to read /proc (every turn of the loop asks, with nothing overdue)
        alive = _processes()
        for pid, start in processes:
            if pid != self.pid and alive.get(pid, (0, 0, None))[2] == start:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass

    # -- stopping -----------------------------------------------------------------------------

    def stop(self, grace):
        """Every step (and what it started) gets SIGTERM at once; SIGKILL after `grace`."""
        if self.stopping is None:
            self.track()
            for pid in list(self.steps):
                try:
                    os.killpg(pid, signal.SIGTERM)
                except OSError:
                    pass
            self._signal({process for owned in self.owned.values() for process in owned}, signal.SIGTERM)
        deadline = time.monotonic() + grace
        self.stopping = deadline if self.stopping is None else min(self.stopping, deadline)

    def kill_all(self):
        """SIGKILL to every step and every process below the supervisor, until none is left (the spare
        first, collected at once: it runs nothing)."""
        if self.spare is not None:
            pid = self._drop_spare()
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for _ in range(50):
            processes = self.track()
            everything = {(p, processes[p][2]) for p in _descendants(self.pid, processes)}
            everything |= {process for owned in self.owned.values() for process in owned}
            everything |= set(self.leftovers)
            if not self.steps and not any(processes.get(p, (0, 0, None))[2] == start for p, start in everything):
                return
            for pid in list(self.steps):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
            self._signal(everything, signal.SIGKILL)
            for _ in range(10):  # until one is collected (a step ending by itself: in a few ms), then look again
                time.sleep(0.001)
                if self.reap():
                    break

    def stopped(self):
        return self.stopping is not None and (not self.steps or time.monotonic() >= self.stopping)


def serve(channel):
    """The supervisor's loop: messages, exits and signals, until a stop has finished."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)  # the run loop's process died: stop, as on EOF
    _runtime()
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    for sig in _WATCHED:
        signal.signal(sig, lambda *_: None)  # the wakeup fd tells which
    selector = selectors.DefaultSelector()
    supervisor = Supervisor(channel, selector, [wake_read, wake_write, selector.fileno()])
    selector.register(channel, selectors.EVENT_READ, "channel")
    selector.register(wake_read, selectors.EVENT_READ, "signal")
    tracked_at = 0.0
    while not supervisor.stopped():
        watching = supervisor.steps or supervisor.leftovers
        for key, _ in selector.select(_TRACK_SECONDS if watching else 1.0):
            if isinstance(key.data, tuple):
                supervisor.step_done(key.data[1], key.fd)
                continue
            if key.data == "signal":
                received = os.read(wake_read, 512)
                if set(received) & {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}:
                    supervisor.stop(grace=3.0)
                continue
            message, fds = supervisor.receive()
            if message is None:  # the run loop has gone: stop everything it started
                selector.unregister(channel)
                supervisor.stop(grace=3.0)
            elif message["op"] == "warm":
                supervisor.warm_up(message)
            elif message["op"] == "start" and supervisor.stopping is None:
                supervisor.start(message, fds)
            elif message["op"] == "stop":
                supervisor.stop(message.get("grace", 3.0))
            elif message["op"] == "kill":
                supervisor.stop(0)
            else:
                for fd in fds:
                    os.close(fd)
        supervisor.reap()
        supervisor.kill_overdue()
        if watching and time.monotonic() - tracked_at >= _TRACK_SECONDS:  # not at every message: /proc costs ~1 ms
            supervisor.track()
            tracked_at = time.monotonic()
    supervisor.kill_all()
    supervisor.send(op="stopped")
    return supervisor


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    supervisor = serve(socket.socket(fileno=int(argv[0])))
    if supervisor.warm is not None:  # leave as a step does: the prelude's exit handlers run and its files
        # are flushed, without the teardown of what it imported (~40 ms that the run would wait for)
        supervisor.warm.runtime.leave(0, {}, files=supervisor.warm.files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
