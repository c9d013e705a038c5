"""The embedded default: every step in a fresh Python process on this machine, independent steps
in parallel, values passed as files under `.kfmagic/runs/<run-id>/` in the working directory.

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

from .. import runtime, workspace
from .base import read_result, start_run
from .launcher import step_env, supervised

_NOT_RUN = ("FAILED", "SKIPPED", "CANCELED")
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
    """Starts each step once its upstream steps have succeeded, skips it if one has not, and ends it
    once its process has exited and its output has been read."""

    def __init__(self, plan, record, specs, launcher, events, workers, progress, workdir, isolate):
        self.record, self.specs, self.launcher, self.events = record, specs, launcher, events
        self.progress, self.workdir, self.isolate = progress, workdir, isolate
        self.workers, self.limited = workers or DEFAULT_WORKERS, workers is not None
        self.pending, self.running, self.env = list(plan.steps), {}, step_env()
        if not isolate and not all(step.options.get("isolate") for step in plan.steps):
            every_step = set.intersection(*(set(step.params) for step in plan.steps))  # the prelude's, at least
            params = {name: record.params[name] for name in every_step}
            launcher.warm([vars(part) for part in plan.prelude], params, workdir)

    def run(self):
        while self.pending or self.running:
            self._start_ready()
            self._handle(self._next_event())
            for name in [name for name, process in self.running.items() if process.drained()]:
                process = self.running.pop(name)
                _read_result(self.record.steps[name], process.returncode, os.path.dirname(self.specs[name]), process.stderr_tail)
                self.progress.update(self.record)
            if self.running and self.launcher.stopped.is_set():
                self._lost()

    def _start_ready(self):
        steps = self.record.steps
        for step in list(self.pending):
            upstream = [steps[name].state for name in step.upstream]
            if any(state in _NOT_RUN for state in upstream):
                steps[step.name].state = "SKIPPED"
                self.pending.remove(step)
                self.progress.update(self.record)
            elif self._room() and all(state == "SUCCEEDED" for state in upstream):
                self.pending.remove(step)
                self.running[step.name] = _Process()
                steps[step.name].state, steps[step.name].started = "RUNNING", time.time()
                argv = [sys.executable, "-m", "kfmagic.runtime", self.specs[step.name]]
                isolate = self.isolate or bool(step.options.get("isolate"))
                self.launcher.start(step.name, argv, self.workdir, self.env, spec=self.specs[step.name], isolate=isolate)
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
            step = self.record.steps[name]
            step.state, step.finished = "FAILED", time.time()
            step.error = f"Step {name!r} was stopped: the run's supervisor process ended unexpectedly."
        self.progress.update(self.record)


def run(plan, params, *, workdir, workers, progress, settings):
    """Execute `plan` with `params`; returns the Run once every step has ended.

    Of `settings` (base.Settings), `isolate` applies: every step in a fresh process, none forked.
    """
    record = start_run(plan, params, workdir, "local")
    specs = write_specs(plan, params, record.run_dir)
    events = queue.Queue()
    stopped = (
        f"Run {record.id} interrupted: its step processes were stopped. Outputs of finished steps are "
        f"kept in {record.run_dir}."
    )
    with supervised(record, progress, events, stopped) as launcher:
        _Scheduler(plan, record, specs, launcher, events, workers, progress, workdir, settings.isolate).run()
    record.state = "SUCCEEDED" if all(s.state == "SUCCEEDED" for s in record.steps.values()) else "FAILED"
    record.finished = time.time()
    progress.finish(record)
    return record
