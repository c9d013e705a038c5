"""The per-run supervisor: starts a run's step processes and makes sure nothing they start outlives them.

`python -m kfmagic.supervisor FD`: FD is one end of a SOCK_SEQPACKET socket pair; the run loop
(backends/launcher.py) holds the other. Messages are JSON objects, one per packet:

  in:  {"op": "start", "name", "argv", "cwd", "env"} + the step's stdout and stderr (passed fds)
       {"op": "stop", "grace": seconds}   every step: SIGTERM together, SIGKILL after `grace`
       {"op": "kill"}                     every step and what it started: SIGKILL now
  out: {"op": "started", "name", "pid"}, {"op": "exited", "name", "returncode"} (negative: the
       signal), {"op": "failed", "name", "error"}, {"op": "stopped"} before it exits.

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

import ctypes
import json
import os
import selectors
import signal
import socket
import sys
import time

MAX_MESSAGE = 1 << 20
STEP_ENV = "KFMAGIC_STEP_ID"  # in every step's environment: "<supervisor pid>:<step>", inherited by what it starts
_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36
_TRACK_SECONDS = 0.2  # how often a running step's descendants are looked up
_LEFTOVER_GRACE = 1.0  # what a finished step left behind gets this long after SIGTERM


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
    def __init__(self, channel):
        self.channel, self.pid = channel, os.getpid()
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

    def start(self, message, fds):
        stdout, stderr = fds
        message["env"] = dict(message["env"], **{STEP_ENV: self._mark(message["name"])})
        try:
            pid = os.fork()
        except OSError as error:
            self.send(op="failed", name=message["name"], error=str(error))
            return
        if pid == 0:
            self._become_step(message, stdout, stderr)
        os.close(stdout)
        os.close(stderr)
        self.steps[pid] = message["name"]
        self.owned[message["name"]] = set()
        self.send(op="started", name=message["name"], pid=pid)

    def _become_step(self, message, stdout, stderr):
        """In the forked child: a session of its own, dies with the supervisor, then exec the step."""
        try:
            os.setsid()
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != self.pid:  # the supervisor died before the line above: so does the step
                os._exit(127)
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGCHLD, signal.SIGPIPE):
                signal.signal(sig, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            null = os.open(os.devnull, os.O_RDONLY)
            for source, target in ((null, 0), (stdout, 1), (stderr, 2)):
                os.dup2(source, target)
            os.closerange(3, 65536)
            os.chdir(message["cwd"])
            os.execve(message["argv"][0], message["argv"], message["env"])
        except BaseException as error:  # noqa: B036 - nothing may escape a forked child
            os.write(2, f"kfmagic could not start step {message['name']!r}: {error}\n".encode())
        os._exit(127)

    # -- watching -----------------------------------------------------------------------------

    def track(self):
        """Remember what every running step has started (so it can be found once orphaned)."""
        processes = _processes()
        for pid, name in self.steps.items():
            found = _descendants(pid, processes) | {p for p, (_, session, _) in processes.items() if session == pid}
            self.owned[name].update((p, processes[p][2]) for p in found if p in processes)
        return processes

    def reap(self):
        """Collect exited children; a step's exit is reported once its leftovers are told to stop."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            name = self.steps.pop(pid, None)
            if name is not None:
                self._end(pid, name)
                self.send(op="exited", name=name, returncode=os.waitstatus_to_exitcode(status))

    def _mark(self, name):
        return f"{self.pid}:{name}"

    def _end(self, pid, name):
        """What the step left behind: SIGTERM now, SIGKILL after a short grace."""
        processes = self.track()
        left = {(p, processes[p][2]) for p, (_, session, _) in processes.items() if session == pid}
        adopted = _descendants(self.pid, processes) - set(self.steps)  # orphans, and what they started
        left |= {(p, processes[p][2]) for p in adopted if _marked(p, self._mark(name))}
        left |= {(p, start) for p, start in self.owned.pop(name, ()) if processes.get(p, (0, 0, None))[2] == start}
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
        """SIGKILL to every step and every process below the supervisor, until none is left."""
        for _ in range(50):
            processes = self.track()
            everything = {(p, processes[p][2]) for p in _descendants(self.pid, processes)}
            everything |= {process for owned in self.owned.values() for process in owned}
            everything |= set(self.leftovers)
            for pid in list(self.steps):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
            self._signal(everything, signal.SIGKILL)
            time.sleep(0.01)
            self.reap()
            if not self.steps and not _descendants(self.pid, _processes()):
                return

    def done(self):
        return self.stopping is not None and (not self.steps or time.monotonic() >= self.stopping)


def serve(channel):
    """The supervisor's loop: messages, exits and signals, until a stop has finished."""
    subreaper = _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)  # the run loop's process died: stop, as on EOF
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: None)  # the wakeup fd tells which
    supervisor = Supervisor(channel)
    selector = selectors.DefaultSelector()
    selector.register(channel, selectors.EVENT_READ, "channel")
    selector.register(wake_read, selectors.EVENT_READ, "signal")
    while not supervisor.done():
        watching = supervisor.steps or supervisor.leftovers
        for key, _ in selector.select(_TRACK_SECONDS if watching else 1.0):
            if key.data == "signal":
                received = os.read(wake_read, 512)
                if set(received) & {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}:
                    supervisor.stop(grace=3.0)
                continue
            message, fds = supervisor.receive()
            if message is None:  # the run loop has gone: stop everything it started
                selector.unregister(channel)
                supervisor.stop(grace=3.0)
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
        if watching:
            supervisor.track()
    supervisor.kill_all()
    supervisor.send(op="stopped", subreaper=subreaper)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    serve(socket.socket(fileno=int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
