"""The embedded default: every step in a fresh Python process on this machine, independent steps
in parallel, values passed as files under `.kfmagic/runs/<run-id>/` in the working directory, and
each step's output (stdout and stderr, as the lines arrive) kept in `<run-id>/<step>/log.txt`.

Processes are started through the run's supervisor (launcher.py): a step is finished when its
process exits, and what it left behind is stopped then. A sweep (`run_sweep`) schedules the runs of
all its combinations together, through one supervisor.
"""

import contextlib
import dataclasses
import os
import queue
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from .. import cache, runtime, workspace
from ..component import LOG_FILE
from ..errors import KfmagicError, SweepInterrupted
from ..sweep import swept as sweep_names
from .base import ended, held, interrupted, read_result, start_run, tell_failures, warn_of_random_draws
from .launcher import supervised, supervising

_NOT_RUN = ("FAILED", "SKIPPED", "CANCELED")
PRELUDE_FILE = "prelude.json"  # what the supervisor runs once, in the run's folder
# Without --workers, every ready step starts (most wait on I/O or each other more than on a core),
# up to this many at once, and none while the machine is short of memory.
DEFAULT_WORKERS = 16
_LOW_MEMORY = 0.05  # of the machine's memory still available
# Once a step's process has exited, its output is read to the end; what it left behind is being
# stopped meanwhile, so an output still open after this long belongs to something that escaped.
_DRAIN_SECONDS = 3.0
_TAG_END = "/"  # ends the tag that tells a sweep's runs apart in their processes' names (no step name has one)


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


class _Pool:
    """What the steps of one run, or of every run of a sweep, share: the run's supervisor (its launcher,
    the queue of what it reports, the prelude it has warmed) and how many steps may run at once."""

    def __init__(self, launcher, events, workers):
        self.launcher, self.events = launcher, events
        self.workers, self.limited = workers or DEFAULT_WORKERS, workers is not None
        self.running, self.warmed = 0, False

    def room(self):
        """Whether another step may start now."""
        if self.running >= self.workers:
            return False
        return self.limited or not self.running or _memory_available() > _LOW_MEMORY

    def next_event(self):
        try:
            return self.events.get(timeout=0.5)
        except queue.Empty:
            return None


class _Scheduler:
    """Starts each step of one run once its upstream steps have succeeded (or reuses what an earlier
    run made for it), skips it if one has not, and ends it once its process has exited and its output
    has been read.

    In a sweep, every combination's run has a scheduler of its own on one pool; `leader` is the
    scheduler whose run computes the `shared` steps, which this run then reuses (or fails as they did).
    Its processes are named `tag` + step name.
    """

    def __init__(self, plan, record, pool, progress, workdir, settings, reused, tag="", leader=None, shared=()):
        self.plan, self.record, self.pool, self.progress = plan, record, pool, progress
        self.workdir, self.settings, self.reused = workdir, settings, reused
        self.tag, self.leader, self.shared = tag, leader, set(shared)
        self.pending, self.running, self.keys = list(plan.steps), {}, {}
        self.logs = {}  # step -> its open log file
        self.told = set()  # failed steps whose output ends with the line saying where their log is
        if not settings.cache:  # every step will run: the prelude can start now, while the run is set up
            self._warm_up()
        self.specs = write_specs(plan, record.params, record.run_dir)

    def run(self):
        _drive([self], self.pool)

    @property
    def busy(self):
        return bool(self.pending or self.running)

    def start_ready(self):
        steps = self.record.steps
        for step in list(self.pending):
            upstream = [steps[name].state for name in step.upstream]
            if any(state in _NOT_RUN for state in upstream):
                steps[step.name].state = "SKIPPED"
                self.pending.remove(step)
                self.progress.update(self.record)
            elif all(state == "SUCCEEDED" for state in upstream) and self._led(step) and self.pool.room():
                self.pending.remove(step)
                if not self._reuse(step):
                    self._launch(step)
                self.progress.update(self.record)

    def _led(self, step):
        """Whether the step may start: a shared step of a sweep's run once the leader's run has ended
        it (its outputs are then reused, or its failure is this run's too), any other step at once."""
        if self.leader is None or step.name not in self.shared:
            return True
        theirs = self.leader.record.steps[step.name]
        if theirs.state not in _NOT_RUN + ("SUCCEEDED",):
            return False
        if theirs.state == "SUCCEEDED":
            self.reused.setdefault(step.name, self.leader.entry(step.name))
            return True
        mine = self.record.steps[step.name]
        mine.state = "FAILED" if theirs.state == "FAILED" else "SKIPPED"
        mine.error = theirs.error
        self.pending.remove(step)
        self.progress.update(self.record)
        return False

    def entry(self, name):
        """What step `name` of this run made, as the cache and `--from` hand a step to reuse."""
        out_dir = os.path.dirname(self.specs[name])
        return {"run": self.record.id, "out_dir": out_dir, "result": read_result(out_dir)}

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
        if not self.pool.warmed and not self.settings.isolate:
            params = {name: self.record.params[name] for name in self.plan.prelude_params}
            prelude = os.path.join(self.record.run_dir, PRELUDE_FILE)  # by file: messages stay small
            warm = {"prelude": [vars(part) for part in self.plan.prelude], "params": params, "seeded": list(self.plan.seeded)}
            workspace.write_private_json(prelude, warm, "the prelude")
            self.pool.launcher.warm(prelude, self.workdir)
            self.pool.warmed = True

    def _launch(self, step):
        self._warm_up()
        self.running[step.name] = _Process()
        self.pool.running += 1
        self.record.steps[step.name].state, self.record.steps[step.name].started = "RUNNING", time.time()
        self._open_log(step.name)
        argv = [sys.executable, "-m", "kfmagic.runtime", self.specs[step.name]]
        isolate = self.settings.isolate or bool(step.options.get("isolate"))
        self.pool.launcher.start(self.tag + step.name, argv, self.workdir, spec=self.specs[step.name], isolate=isolate)

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

    def close_logs(self):
        for name in list(self.logs):
            self._close_log(name)

    def finish_drained(self):
        """End every step whose process has exited and whose output has been read."""
        for name in [name for name, process in self.running.items() if process.drained()]:
            self.pool.running -= 1
            self._finish(name, self.running.pop(name))

    def _finish(self, name, process):
        self._close_log(name)
        out_dir = os.path.dirname(self.specs[name])
        done = self.record.steps[name]
        _read_result(done, process.returncode, out_dir, process.stderr_tail)
        if done.state == "SUCCEEDED" and name in self.keys:
            written = cache.file_stats(self.plan.step(name), self.workdir, written=True)
            cache.record(self.workdir, self.keys[name], self.record.id, out_dir, read_result(out_dir), written)
        tell_failures(self.record, self.progress, self.told)
        self.progress.update(self.record)

    def handle(self, kind, name, stream_name, detail):
        """What the supervisor reported of step `name` of this run."""
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

    def conclude(self):
        """Every step has ended: so has the run, and its progress says so."""
        self.record.state = "SUCCEEDED" if all(s.state == "SUCCEEDED" for s in self.record.steps.values()) else "FAILED"
        self.record.finished = time.time()
        ended(self.record)
        self.progress.finish(self.record)

    def lost(self):
        """The supervisor is gone (killed from outside): its steps went with it."""
        for name in list(self.running):
            del self.running[name]
            self.pool.running -= 1
            self._close_log(name)
            step = self.record.steps[name]
            step.state, step.finished = "FAILED", time.time()
            step.error = f"Step {name!r} was stopped: the run's supervisor process ended unexpectedly."
        self.progress.update(self.record)


def _drive(schedulers, pool):
    """Run the steps of every scheduler's run to their end through the pool's one supervisor: what the
    supervisor reports goes to the run whose `tag` names the process."""
    by_tag = {scheduler.tag: scheduler for scheduler in schedulers}
    try:
        while any(scheduler.busy for scheduler in schedulers):
            for scheduler in schedulers:
                scheduler.start_ready()
            if pool.running:
                _route(pool.next_event(), schedulers, by_tag)
            for scheduler in schedulers:
                scheduler.finish_drained()
            if pool.running and pool.launcher.stopped.is_set():
                pool.launcher.close()
                for scheduler in schedulers:
                    scheduler.lost()
            for scheduler in schedulers:
                if not scheduler.busy and scheduler.record.state == "RUNNING":
                    scheduler.conclude()
    finally:
        for scheduler in schedulers:
            scheduler.close_logs()


def _route(event, schedulers, by_tag):
    if event is None:  # nothing for a while: the times shown move on
        for scheduler in schedulers:
            if scheduler.running:
                scheduler.progress.update(scheduler.record)
        return
    kind, name, stream_name, detail = event
    if kind == "warm":
        if detail:
            print(f"note: each step starts in a fresh process: {detail}.", file=sys.stderr)
        return
    tag, _, step = name.rpartition(_TAG_END)
    scheduler = by_tag.get(tag + _TAG_END if tag else "")
    if scheduler is not None:
        scheduler.handle(kind, step, stream_name, detail)


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
    with held(record), supervised(record, progress, events, stopped) as launcher:
        _Scheduler(plan, record, _Pool(launcher, events, workers), progress, workdir, settings, reused).run()
    warn_of_random_draws(plan, record)
    return record


def run_sweep(plan, combinations, per_combination, *, workdir, workers, progress, settings):
    """Run `plan` once per combination (`combinations`: each one's parameter values), each a Run in a
    folder of its own, through one supervisor and one warm prelude: the steps not in `per_combination`
    run once, in the first combination's run, and the others reuse what it made (so they never run
    twice at once, whatever the cache holds); the rest run per combination, as workers allow. A
    combination that fails stops no other. `progress(index)`: the progress of combination `index`.

    Returns the Runs. Ctrl-C stops every process and raises SweepInterrupted carrying them: those that
    ended keep their state, the others are CANCELED. If the %%prelude reads a parameter the
    combinations change, every step starts afresh (one warm prelude cannot hold two values).
    """
    if set(plan.prelude_params) & set(sweep_names(combinations)):
        settings = dataclasses.replace(settings, isolate=True)
    shared = [step.name for step in plan.steps if step.name not in per_combination]
    records = [start_run(plan, params, workdir, "local", suffix=f"c{i + 1}") for i, params in enumerate(combinations)]
    shown = [progress(i) for i in range(len(records))]
    events = queue.Queue()

    def stop():
        for record, its_progress in zip(records, shown):
            if record.state == "RUNNING":
                interrupted(record, its_progress, "")
        done = sum(record.state == "SUCCEEDED" for record in records)
        return SweepInterrupted(f"Sweep interrupted: {done} of {len(records)} combinations had finished.", records)

    with contextlib.ExitStack() as stack, supervising(events, stop) as launcher:
        for record in records:
            stack.enter_context(held(record))
        pool, leader, schedulers = _Pool(launcher, events, workers), None, []
        for i, (record, its_progress) in enumerate(zip(records, shown)):
            its_progress.start(record)
            scheduler = _Scheduler(
                plan, record, pool, its_progress, workdir, settings, {}, tag=f"c{i + 1}{_TAG_END}", leader=leader, shared=shared,
            )
            leader = leader or scheduler
            schedulers.append(scheduler)
        _drive(schedulers, pool)
    return records
