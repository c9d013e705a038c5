"""The embedded default: every step in a fresh Python process on this machine, independent steps
in parallel, values passed as files under `.kfmagic/runs/<run-id>/` in the working directory, and
each step's output (stdout and stderr, as the lines arrive) kept in `<run-id>/<step>/log.txt`.

Processes are started through the run's supervisor (launcher.py): a step is finished when its
process exits, and what it left behind is stopped then.
"""

import os
import queue
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from .. import cache, runtime, workspace
from ..component import LOG_FILE
from ..errors import KfmagicError
from .base import read_result, start_run, warn_of_random_draws
from .launcher import step_env, supervised

_NOT_RUN = ("FAILED", "SKIPPED", "CANCELED")
PRELUDE_FILE = "prelude.json"  # what the supervisor runs once, in the run's folder
# Without --workers, every ready step starts (most wait on I/O or each other more than on a core),
# up to this many at once, and none while the machine is short of memory.
DEFAULT_WORKERS = 16
_LOW_MEMORY = 0.05  # of the machine's memory still available
# Once a step's process has exited, its output is read to the end; what it left behind is being
# stopped meanwhile, so an output still open after this long belongs to something that escaped.
_DRAIN_SECONDS = 3.0


def write_specs(plan, params, run_dir):
    """One runtime spec per step: what it runs, where its inputs are, what it must save."""
    prelude = [vars(part) for part in plan.prelude]
    paths = {}
    for step in plan.steps:
        out_dir = workspace.private_dir(os.path.join(run_dir, step.name), f"the folder of step {step.name!r}")
        spec = {
            "step": step.name,
            "prelude": prelude,
            "parts": [vars(part) for part in step.parts],
            "params": {name: params[name] for name in step.params},
            "inputs": {
                var: runtime.output_path(os.path.join(run_dir, producer), var)
                for var, producer in step.inputs.items()
            },
            "producers": dict(step.inputs),
            "outputs": list(step.outputs),
            "keep": list(step.keep),
            "metrics": list(step.metrics),
            "needed_by": step.needed_by,
            "out_dir": out_dir,
        }
        paths[step.name] = os.path.join(out_dir, "spec.json")
        workspace.write_private_json(paths[step.name], spec, f"the spec of step {step.name!r}")
    return paths


def _read_result(step_run, returncode, out_dir, stderr_tail):
    """Fill a finished StepRun from the result file its runtime wrote (or from how it died)."""
    step_run.finished = time.time()
    if returncode < 0:
        sig = signal.Signals(-returncode).name
        hint = " (the system may have run out of memory)" if sig == "SIGKILL" else ""
        step_run.state, step_run.error = "FAILED", f"Step {step_run.name!r} was killed by {sig}{hint}."
        return
    result = read_result(out_dir)
    if result is None:
        tail = "\n".join(stderr_tail)
        step_run.state = "FAILED"
        step_run.error = f"Step {step_run.name!r} exited with code {returncode} before reporting a result.\n{tail}"
        return
    step_run.apply_result(result, out_dir)


def _memory_available():
    """The share of the machine's memory still available (1.0 where the system does not say)."""
    try:
        with open("/proc/meminfo") as file:
            info = dict(line.split(":", 1) for line in file)
        return int(info["MemAvailable"].split()[0]) / int(info["MemTotal"].split()[0])
    except (OSError, KeyError, ValueError):
        return 1.0


@dataclass
class _Process:
    """A started step, as the run loop follows it."""

    open_streams: set = field(default_factory=lambda: {"stdout", "stderr"})
    stderr_tail: deque = field(default_factory=lambda: deque(maxlen=10))  # its last lines, for a crash message
    returncode: int | None = None
    exited_at: float | None = None

    def drained(self):
        return self.returncode is not None and (not self.open_streams or time.monotonic() - self.exited_at > _DRAIN_SECONDS)


class _Scheduler:
    """Starts each step once its upstream steps have succeeded (or reuses what an earlier run made
    for it), skips it if one has not, and ends it once its process has exited and its output has
    been read."""

    def __init__(self, plan, record, launcher, events, workers, progress, workdir, settings, reused):
        self.plan, self.record, self.launcher, self.events = plan, record, launcher, events
        self.progress, self.workdir, self.settings, self.reused = progress, workdir, settings, reused
        self.workers, self.limited = workers or DEFAULT_WORKERS, workers is not None
        self.pending, self.running, self.keys, self.warmed = list(plan.steps), {}, {}, False
        self.logs = {}  # step -> its open log file
        if not settings.cache:  # every step will run: the prelude can start now, while the run is set up
            self._warm_up()
        self.specs = write_specs(plan, record.params, record.run_dir)

    def run(self):
        try:
            while self.pending or self.running:
                self._start_ready()
                if self.running:
                    self._handle(self._next_event())
                for name in [name for name, process in self.running.items() if process.drained()]:
                    self._finish(name, self.running.pop(name))
                if self.running and self.launcher.stopped.is_set():
                    self._lost()
        finally:
            for name in list(self.logs):
                self._close_log(name)

    def _start_ready(self):
        steps = self.record.steps
        for step in list(self.pending):
            upstream = [steps[name].state for name in step.upstream]
            if any(state in _NOT_RUN for state in upstream):
                steps[step.name].state = "SKIPPED"
                self.pending.remove(step)
                self.progress.update(self.record)
            elif all(state == "SUCCEEDED" for state in upstream) and self._room():
                self.pending.remove(step)
                if not self._reuse(step):
                    self._launch(step)
                self.progress.update(self.record)

    def _reuse(self, step):
        """Whether the step's outputs come from an earlier run (--from, or the cache): it is then done."""
        out_dir = os.path.dirname(self.specs[step.name])
        entry = self.reused.get(step.name)
        fresh = self.settings.start_from is not None and entry is None  # --from runs it again, whatever the cache has
        if entry is None and step.options.get("cache") is not False:
            inputs = {var: self._digest(producer, var) for var, producer in step.inputs.items()}
            self.keys[step.name] = key = cache.step_key(self.plan, step, self.record.params, inputs, self.workdir)
            entry = cache.lookup(self.workdir, key) if self.settings.cache and not fresh else None
        result = cache.reuse(entry, out_dir) if entry else None
        if result is not None:
            done = self.record.steps[step.name]
            done.started = time.time()
            done.apply_result(result, out_dir)
        return result is not None

    def _digest(self, producer, var):
        """What value `var` from `producer` is (recorded when it was saved, else read now)."""
        saved = self.record.steps[producer].saved[var]
        if "digest" not in saved:
            saved["digest"] = runtime.file_digest(saved["path"])
        return saved["digest"]

    def _warm_up(self):
        """Have the supervisor run the prelude once (unless every step is isolated)."""
        if not self.warmed and not self.settings.isolate:
            every_step = set.intersection(*(set(s.params) for s in self.plan.steps))  # the prelude's, at least
            params = {name: self.record.params[name] for name in every_step}
            prelude = os.path.join(self.record.run_dir, PRELUDE_FILE)  # by file: messages stay small
            warm = {"prelude": [vars(part) for part in self.plan.prelude], "params": params, "seeded": list(self.plan.seeded)}
            workspace.write_private_json(prelude, warm, "the prelude")
            self.launcher.warm(prelude, self.workdir)
            self.warmed = True

    def _launch(self, step):
        self._warm_up()
        self.running[step.name] = _Process()
        self.record.steps[step.name].state, self.record.steps[step.name].started = "RUNNING", time.time()
        self._open_log(step.name)
        argv = [sys.executable, "-m", "kfmagic.runtime", self.specs[step.name]]
        isolate = self.settings.isolate or bool(step.options.get("isolate"))
        self.launcher.start(step.name, argv, self.workdir, spec=self.specs[step.name], isolate=isolate)

    def _open_log(self, name):
        """The step's log file, 0600, written line by line as the output arrives (`%pipeline logs`)."""
        path = os.path.join(os.path.dirname(self.specs[name]), LOG_FILE)
        with workspace.writing(f"the log of step {name!r}", path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, workspace.PRIVATE_FILE_MODE)
        self.logs[name] = os.fdopen(fd, "w", encoding="utf-8", buffering=1)

    def _log(self, name, line):
        log = self.logs.get(name)
        if log is not None:
            try:
                log.write(line + "\n")
            except OSError:  # a full disk: the run goes on (and says so where it matters); the log stops here
                self._close_log(name)

    def _close_log(self, name):
        log = self.logs.pop(name, None)
        try:
            if log is not None:
                log.close()
        except OSError:
            pass

    def _finish(self, name, process):
        self._close_log(name)
        out_dir = os.path.dirname(self.specs[name])
        done = self.record.steps[name]
        _read_result(done, process.returncode, out_dir, process.stderr_tail)
        if done.state == "SUCCEEDED" and name in self.keys:
            cache.record(self.workdir, self.keys[name], self.record.id, out_dir, read_result(out_dir))
        self.progress.update(self.record)

    def _room(self):
        """Whether another step may start now."""
        if len(self.running) >= self.workers:
            return False
        return self.limited or not self.running or _memory_available() > _LOW_MEMORY

    def _next_event(self):
        try:
            return self.events.get(timeout=0.5)
        except queue.Empty:
            return None

    def _handle(self, event):
        if event is None:
            self.progress.update(self.record)
            return
        kind, name, stream_name, detail = event
        if kind == "warm" and detail:
            print(f"note: each step starts in a fresh process: {detail}.", file=sys.stderr)
        process = self.running.get(name)
        if process is None:
            return
        if kind == "line":
            if stream_name == "stderr":
                process.stderr_tail.append(detail)
            self._log(name, detail)
            self.progress.output(name, stream_name, detail)
        elif kind == "eof":
            process.open_streams.discard(stream_name)
        elif kind in ("exited", "failed"):
            process.returncode = detail if kind == "exited" else 127
            process.exited_at = time.monotonic()
            if kind == "failed":
                process.stderr_tail.append(f"the process could not be started: {detail}")

    def _lost(self):
        """The supervisor is gone (killed from outside): its steps went with it."""
        self.launcher.close()
        for name in list(self.running):
            del self.running[name]
            self._close_log(name)
            step = self.record.steps[name]
            step.state, step.finished = "FAILED", time.time()
            step.error = f"Step {name!r} was stopped: the run's supervisor process ended unexpectedly."
        self.progress.update(self.record)


def resumed(plan, start_from, previous):
    """{step: cache entry} of every step `--from start_from` does not run again: what it saved in the
    run in folder `previous`. KfmagicError naming each step that has nothing there to reuse."""
    again = {start_from} | plan.downstream(start_from)
    entries, missing = {}, []
    for step in plan.steps:
        if step.name in again:
            continue
        out_dir = os.path.join(previous, step.name)
        result = read_result(out_dir)
        if result is None or result["state"] != "SUCCEEDED":
            missing.append(f"{step.name!r} ({'not run' if result is None else result['state'].lower()})")
        elif any(var not in result["saved"] for var in step.outputs):
            missing.append(f"{step.name!r} (saved less than it must now: the notebook changed)")
        else:
            entries[step.name] = {"run": os.path.basename(previous), "out_dir": out_dir, "result": result}
    if missing:
        raise KfmagicError(
            f"--from {start_from}: the run being resumed ({os.path.basename(previous)}) has nothing to reuse of "
            f"step(s) {', '.join(missing)}, which {start_from!r} does not come before. Resume from one of "
            "them instead, or run the whole pipeline."
        )
    return entries


def run(plan, params, *, workdir, workers, progress, settings):
    """Execute `plan` with `params`; returns the Run once every step has ended.

    Of `settings` (base.Settings) apply: `isolate` (every step in a fresh process, none forked),
    `cache` (reuse outputs the cache has for a step's key), `start_from`/`previous` (resume).
    """
    reused = resumed(plan, settings.start_from, settings.previous) if settings.start_from else {}
    record = start_run(plan, params, workdir, "local")
    events = queue.Queue()
    stopped = (
        f"Run {record.id} interrupted: its step processes were stopped. Outputs of finished steps are "
        f"kept in {record.run_dir}."
    )
    with supervised(record, progress, events, stopped) as launcher:
        _Scheduler(plan, record, launcher, events, workers, progress, workdir, settings, reused).run()
    record.state = "SUCCEEDED" if all(s.state == "SUCCEEDED" for s in record.steps.values()) else "FAILED"
    record.finished = time.time()
    progress.finish(record)
    warn_of_random_draws(plan, record)
    return record
