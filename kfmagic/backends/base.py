"""What every backend shares: its settings, the Run it returns (states with KFP's names,
durations, metrics, loadable values, logs), and how a run starts, reads step results, is cancelled
and is opened again from its folder. A Run reads its records through its store (store.py): its
own folder here, object storage for a run on Kubeflow Pipelines (backends/kfp.py)."""

import contextlib
import fcntl
import json
import os
import re
import secrets
import sys
import time
import weakref
from dataclasses import dataclass, field

from .. import runtime, serde, workspace
from ..component import LOG_FILE
from ..errors import KfmagicError, RunFailed
from ..plan import random_draw_warnings
from ..store import FolderStore
from . import RUNNERS

FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")
RUN_FILE = "run.json"
# A run's id names its folder: nothing read from a file or the network may name another.
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


@dataclass(frozen=True)
class Settings:
    """What a run may need besides the plan; each backend uses what applies to it."""

    image: str | None = None  # default image of the steps on Kubeflow (kfp-local, kfp)
    connection: object = field(default=None, repr=False)  # config.Connection (kfp)
    wait: bool = False  # follow a submitted run until it ends (kfp)
    isolate: bool = False  # every step in a fresh process, none forked from the warm prelude (local)
    cache: bool = True  # reuse what earlier runs computed (local: kfmagic's cache; kfp: KFP's)
    start_from: str | None = None  # run this step and what follows it, reuse the rest from `previous` (local)
    previous: str | None = None  # the folder of the run `start_from` resumes


@dataclass
class StepRun:
    name: str
    assigns: tuple = ()  # what the step's code assigns: tells which step has a name's last value
    state: str = "PENDING"
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    saved: dict = field(default_factory=dict)  # var -> {"type", "bytes", "path"[, "digest"]}
    skipped: dict = field(default_factory=dict)  # var -> why it was not kept
    metrics: dict = field(default_factory=dict)
    cached_from: str | None = None  # the run whose outputs it reused, instead of running
    random: tuple = ()  # the global random generators it left in another state than it found them

    @property
    def duration(self):
        """Seconds the step ran (so far, while it runs); None before it starts."""
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started

    def apply_result(self, result, out_dir):
        """Take state, error, metrics and saved values from a result `read_result` read in `out_dir`.

        A value's file is the runtime's output path in `out_dir`, or the artifact path a kfp-local
        result names: only a claim, which `Run.load` follows only into the run's own folder.
        """
        self.state, self.error = result["state"], result["error"]
        self.metrics, self.skipped = result["metrics"], result["skipped"]
        self.saved = {
            var: {
                "type": info["type"], "bytes": info["bytes"], "path": info.get("path") or runtime.output_path(out_dir, var),
                **({"digest": info["digest"]} if isinstance(info.get("digest"), str) else {}),
            }
            for var, info in result["saved"].items()
        }
        self.cached_from = result.get("cached_from") if isinstance(result.get("cached_from"), str) else None
        self.random = tuple(result.get("random", ()))
        self.started = result.get("started", self.started)
        self.finished = result.get("finished", self.finished or time.time())


def warn_of_random_draws(plan, record):
    """After a run: the steps whose random numbers differ from the notebook's (plan.random_draw_warnings)."""
    for warning in random_draw_warnings(plan, {name: step.random for name, step in record.steps.items()}):
        print(f"warning: {warning}", file=sys.stderr)


def read_result(out_dir):
    """The result a step's runtime wrote in `out_dir`, or None while there is none.

    A file that is not what the runtime writes is read as a FAILED result saying so: nothing in
    it is trusted (no value, no metric), and the runs, checks and compiles after it go on.
    """
    try:
        return workspace.step_result(out_dir)
    except workspace.UnreadableResult as error:
        path = os.path.join(out_dir, runtime.RESULT_FILE)
        message = (
            f"Step {os.path.basename(out_dir)!r}: its result file is unreadable ({error}): {path}. "
            "Nothing was taken from it; run the pipeline again."
        )
        return {"state": "FAILED", "error": message, "saved": {}, "skipped": {}, "metrics": {}}


@dataclass
class Run:
    id: str
    pipeline: str
    runner: str
    steps: dict  # name -> StepRun, in plan order
    params: dict
    run_dir: str | None = None
    state: str = "PENDING"
    started: float = field(default_factory=time.time)
    finished: float | None = None
    error: str | None = None  # why the run failed when no step's error says it (its runner could not go on)

    @property
    def metrics(self):
        """{step: {metric: value}} for the steps that report metrics."""
        return {name: dict(step.metrics) for name, step in self.steps.items() if step.metrics}

    @property
    def duration(self):
        return (self.finished or time.time()) - self.started

    def wait(self, timeout=None):
        """Block until the run ends (a local run has ended when it is returned)."""
        return self

    def load(self, name, step=None):
        """A value this run produced, loaded into the caller (the kernel's namespace is not touched).

        Without `step`, the value comes from the last step (in plan order) that assigns `name`:
        the value it would have after running the notebook top to bottom.
        """
        step = self._step_of(name, step)
        found = self.steps.get(step)
        if found is not None and name in found.saved:
            return self._load_saved(name, found, self._value_file(found, name))
        if found is None:
            saved = sorted({var for s in self.steps.values() for var in s.saved})
            raise KfmagicError(f"run.load({name!r}): no step of this run assigns {name!r}. Saved values: {', '.join(saved) or 'none'}.")
        if name in found.skipped:
            why = f"it could not be kept: {found.skipped[name]}"
        elif found.state != "SUCCEEDED":
            why = f"the step did not finish ({found.state})"
        else:
            why = f"no later step reads it; add `--outputs {name}` to step {step!r} to keep it"
        raise KfmagicError(f"run.load({name!r}): step {step!r} has the value, but did not save it: {why}.")

    def _step_of(self, name, step):
        """The step `load` reads `name` from: `step`, else the last (in plan order) that assigns it, else None."""
        if step is not None and step not in self.steps:
            raise KfmagicError(f"run.load({name!r}, step={step!r}): no step {step!r} in this run. Steps: {', '.join(self.steps)}.")
        if step is None:
            writers = [s.name for s in self.steps.values() if name in s.assigns or name in s.saved]
            step = writers[-1] if writers else None
        return step

    def _value_file(self, step, name):
        """The file holding the value of `name` that `step` saved (here: where its result says)."""
        return step.saved[name]["path"]

    def _load_saved(self, name, step, path):
        """The value of `name` that `step` saved, in file `path`, read only from inside this run's
        folder; else one message naming the run, the step and the variable, and what to do."""
        where = f"run.load({name!r}): the value of {name!r} saved by step {step.name!r} of run {self.id}"
        if not (self.run_dir and workspace.inside(path, self.run_dir)):
            raise KfmagicError(
                f"{where} is not loaded: its file {path} lies outside the run's folder {self.run_dir} (a path "
                "taken from a file, or a link). Loading a pickle runs code, so kfmagic loads values only from "
                "the run's own folder. Run the pipeline again to make the value there."
            )
        real = os.path.realpath(path)
        if os.path.exists(real) and not os.path.isfile(real):
            raise KfmagicError(f"{where} is not loaded: {path} is not a regular file. Run the pipeline again to remake it.")
        try:
            return serde.load(real)
        except serde.DamagedValue as error:
            raise KfmagicError(f"{where} is damaged: {error} ({path}). Run the pipeline again to remake it.") from None
        except Exception as error:  # what the value's classes raise, or damage that reads as a pickle
            raise KfmagicError(
                f"{where} cannot be loaded here: {type(error).__name__}: {error}. It needs what step {step.name!r} "
                "had when it saved it (its libraries and their versions, the %%prelude's classes and functions); "
                f"if those are here, the file is damaged ({path}): run the pipeline again to remake it."
            ) from None

    def _store(self, what):
        """Where this run's records are read from (`what` reads them: for a message): its folder."""
        return FolderStore(self.run_dir)

    def logs(self, step):
        """What step STEP printed, stdout and stderr as they came: its log in the run's store."""
        what = f"logs of step {step!r}"
        if step not in self.steps:
            raise KfmagicError(f"{what}: no step {step!r} in run {self.id}. Steps: {', '.join(self.steps) or 'none'}.")
        path = self._store(what).fetch(step, LOG_FILE, fresh=True)
        if path is not None:
            with open(path, encoding="utf-8", errors="replace") as file:
                return file.read()
        found = self.steps[step]
        earlier = self._cached_log(found)
        if earlier is not None:
            return earlier
        if found.state in ("PENDING", "RUNNING"):
            raise KfmagicError(f"{what}: step {step!r} of run {self.id} has not ended yet and has no log yet; ask again later.")
        if found.state in ("SKIPPED", "CANCELED"):
            raise KfmagicError(f"{what}: step {step!r} of run {self.id} did not run ({found.state}), so it has no log.")
        raise KfmagicError(f"{what}: run {self.id} kept no log of step {step!r} (in {self._store(what).where}).")

    def _cached_log(self, step):
        """The log of the earlier run whose outputs a cached step reused, with a note saying so; or None."""
        earlier = step.cached_from
        if not (earlier and RUN_ID.match(earlier) and self.run_dir):
            return None
        path = os.path.join(os.path.dirname(self.run_dir), earlier, step.name, LOG_FILE)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8", errors="replace") as file:
            return f"(step {step.name!r} reused the outputs of run {earlier}: its log from that run)\n" + file.read()

    def failure_message(self):
        failed = [s for s in self.steps.values() if s.state == "FAILED"]
        not_run = [s.name for s in self.steps.values() if s.state in ("SKIPPED", "CANCELED", "PENDING")]
        lines = [f"Run {self.id} {self.state}."] + ([self.error] if self.error else [])
        for step in failed:
            first = (step.error or "").strip().splitlines()
            lines.append(f"Step {step.name!r} failed: {first[-1] if first else 'no error reported'}")
        if not_run:
            lines.append(f"Not run: {', '.join(not_run)}.")
        if failed and self.runner == "local":
            lines.append(f"Resume from the failed step with `--from {failed[0].name}`: what ran before it is reused.")
        if failed and self._pullable():
            lines.append(
                f"Debug it in the notebook: `%pipeline pull {failed[0].name} {self.id}` loads what step "
                f"{failed[0].name!r} saw (its inputs and parameters); then re-run its cell there."
            )
        if self.run_dir:
            lines.append(f"Outputs of finished steps are kept in {self.run_dir}.")
        return "\n".join(lines)

    def _pullable(self):
        """Whether `%pipeline pull` can read what this run's steps saw: a run here can."""
        return self.runner in ("local", "kfp-local")

    def write_info(self, **extra):
        """Write run.json in the run's directory: what ran (its steps in order, with what each
        assigns), with which parameters, and where."""
        steps = [[step.name, list(step.assigns)] for step in self.steps.values()]
        workspace.write_private_json(
            os.path.join(self.run_dir, RUN_FILE),
            {"id": self.id, "pipeline": self.pipeline, "params": self.params, "runner": self.runner, "steps": steps, **extra},
            f"the record of run {self.id} ({RUN_FILE})",
        )

    def _repr_html_(self):
        from ..display import run_html

        return run_html(self)

    def __repr__(self):
        from ..display import run_text

        return run_text(self)


def new_run_dir(workdir, pipeline_name, suffix=None):
    """(run id, its directory under RUNS_DIR): `<pipeline>-<date>-<time>-<random>[-suffix]`, 0700.

    The directory is made by this call alone (never an existing one, so two runs started in the
    same second never share one): on the rare clash the random part is drawn again.
    """
    runs = workspace.runs_dir(workdir)
    while True:
        run_id = f"{pipeline_name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
        if suffix:
            run_id += f"-{suffix}"
        run_dir = os.path.join(runs, run_id)
        with workspace.writing(f"the folder of run {run_id}", run_dir):
            try:
                os.mkdir(run_dir, workspace.PRIVATE_DIR_MODE)
            except FileExistsError:
                continue
            os.chmod(run_dir, workspace.PRIVATE_DIR_MODE)  # whatever the umask
        return run_id, run_dir


def latest_run_dir(workdir, pipeline_name, runner):
    """The folder of the newest run of `pipeline_name` by `runner` under `workdir`, or None."""
    runs = os.path.join(workdir, workspace.RUNS_DIR)
    found = []
    for run_id in os.listdir(runs) if os.path.isdir(runs) else ():
        try:
            with open(os.path.join(runs, run_id, RUN_FILE)) as file:
                info = json.load(file)
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and info.get("pipeline") == pipeline_name and info.get("runner") == runner:
            found.append(os.path.join(runs, run_id))
    return max(found, key=os.path.getmtime, default=None)


def run_folder(workdir, run_id):
    """The folder of run `run_id` under `workdir`'s runs (a plain name, a real folder), or None. A
    run's short id (what follows the date and time in its id, as `%pipeline runs` shows it) names it
    too, when one run has it; KfmagicError when several do."""
    if not (isinstance(run_id, str) and RUN_ID.match(run_id)):
        return None
    runs = os.path.join(workdir, workspace.RUNS_DIR)
    folder = os.path.join(runs, run_id)
    if not os.path.lexists(folder):
        shortened = re.compile(rf"-\d{{8}}-\d{{6}}-{re.escape(run_id)}$")
        found = sorted(name for name in (os.listdir(runs) if os.path.isdir(runs) else ()) if shortened.search(name))
        if len(found) > 1:
            raise KfmagicError(f"Run {run_id!r}: several runs here end so ({', '.join(found)}); give the whole id.")
        folder = os.path.join(runs, found[0]) if found else folder
    return folder if os.path.isdir(folder) and not os.path.islink(folder) else None


def read_info(run_dir):
    """The run.json of the run in `run_dir`, checked to be what kfmagic writes; KfmagicError otherwise."""
    path = os.path.join(run_dir, RUN_FILE)
    try:
        with open(path, encoding="utf-8") as file:
            info = json.load(file)
    except (OSError, ValueError) as error:
        raise KfmagicError(f"Run folder {run_dir} has no readable {RUN_FILE} ({error}); it is not a run kfmagic made.") from None
    good = (
        isinstance(info, dict) and isinstance(info.get("id"), str) and isinstance(info.get("pipeline"), str)
        and info.get("runner") in RUNNERS and isinstance(info.get("params", {}), dict)
        and steps_listed(info.get("steps", [])) is not None
    )
    if not good:
        raise KfmagicError(f"{path} is not what kfmagic writes (a run's id, pipeline, runner and steps); it was not opened.")
    return info


def steps_listed(steps):
    """[(step, assigns)] from a run's list of [step, [variable, ...]] (run.json, a store's steps.json),
    or None if it is not such a list."""
    if not isinstance(steps, list):
        return None
    listed = []
    for entry in steps:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and RUN_ID.match(entry[0])
                and isinstance(entry[1], list) and all(isinstance(var, str) and var.isidentifier() for var in entry[1])):
            return None
        listed.append((entry[0], tuple(entry[1])))
    return listed


def open_run_dir(run_dir):
    """The run kept in `run_dir` (local or kfp-local, run by any kernel or the CLI), as a Run read from
    its run.json and its steps' results. Its state is what those say: SUCCEEDED when every step
    succeeded, FAILED when one failed or the run ended so, CANCELED if it was stopped, else RUNNING
    (still running, or its process was killed)."""
    info = read_info(run_dir)
    listed = steps_listed(info.get("steps")) or [(name, ()) for name in FolderStore(run_dir).steps()]
    steps = {name: StepRun(name, assigns) for name, assigns in listed}
    times = info.get("times") if isinstance(info.get("times"), dict) else {}
    for step in steps.values():
        out_dir = os.path.join(run_dir, step.name)
        result = read_result(out_dir)
        if result is not None:
            step.apply_result(result, out_dir)
            step.started, step.finished = _recorded_times(times.get(step.name), result, out_dir)
        elif os.path.exists(os.path.join(out_dir, LOG_FILE)):
            step.state, step.started = "RUNNING", os.path.getmtime(os.path.join(out_dir, LOG_FILE))
    record = Run(info["id"], info["pipeline"], info["runner"], steps, dict(info.get("params", {})), run_dir=run_dir)
    states = {step.state for step in steps.values()}
    if "FAILED" in states:
        record.state = "FAILED"
    elif states <= {"SUCCEEDED"}:
        record.state = "SUCCEEDED"
    else:
        record.state = info.get("state") if info.get("state") in ("CANCELED", "FAILED") else "RUNNING"
    ended = {"FAILED": {"PENDING": "SKIPPED"}, "CANCELED": {"PENDING": "CANCELED", "RUNNING": "CANCELED"}}
    if info.get("state") == "FAILED":  # the run ended (stopped by an error of its own): nothing of it runs
        ended["FAILED"]["RUNNING"] = "FAILED"
    for step in steps.values():
        step.state = ended.get(record.state, {}).get(step.state, step.state)
    moments = [t for step in steps.values() for t in (step.started, step.finished) if t]
    record.started = _time(info.get("started")) or min(moments, default=os.path.getmtime(run_dir))
    ended_at = _time(info.get("finished")) or max(moments, default=record.started)
    record.finished = ended_at if record.state != "RUNNING" else None
    return record


def _time(value):
    """A time read from a file, if it is one."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def _recorded_times(recorded, result, out_dir):
    """(started, finished) of a step of a run read back: what its run.json recorded when the run ended,
    else its result's, else when its result was written (and not when it started)."""
    if isinstance(recorded, list) and len(recorded) == 2 and all(_time(t) for t in recorded):
        return tuple(recorded)
    finished = _time(result.get("finished")) or os.path.getmtime(os.path.join(out_dir, runtime.RESULT_FILE))
    return _time(result.get("started")), finished


def step_runs(plan):
    """A PENDING StepRun per step of `plan`, in plan order."""
    return {step.name: StepRun(step.name, step.assigns) for step in plan.steps}


def start_run(plan, params, workdir, runner, suffix=None):
    """A RUNNING Run of `plan` here: its directory made (its id ending in `suffix`) and held
    (`is_running`) until `ended`, its run.json written."""
    run_id, run_dir = new_run_dir(workdir, plan.name, suffix)
    record = Run(run_id, plan.name, runner, step_runs(plan), dict(params), run_dir=run_dir, state="RUNNING")
    try:
        record.write_info()
    except KfmagicError:
        os.rmdir(run_dir)  # nothing ran: no empty run left behind
        raise
    _hold(record)
    return record


def _hold(record):
    """Lock the run's folder for as long as this process runs it: the system drops the lock when the
    process ends, however it ends, so a run whose kernel died is not taken for a running one."""
    folder = os.open(record.run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a file system without locks: the run goes on (`is_running` then says so of it)
        os.close(folder)
        return
    record.lock = weakref.finalize(record, os.close, folder)  # closed once, here or when the Run goes


@contextlib.contextmanager
def held(record):
    """Around a run's processes: once they are done, however (an error included), it is not running.
    An error of kfmagic's own that stops the run loop ends the run FAILED (Ctrl-C: CANCELED) in its
    run.json, unless the run has ended already: it never reads back as still running."""
    try:
        yield
    except BaseException as error:
        if record.state == "RUNNING":
            _cut_short(record, error)
        raise
    finally:
        _release(record)


def _cut_short(record, error):
    """The run `record` stops midway on `error`: its steps not ended, and itself, end so."""
    state = "CANCELED" if isinstance(error, KeyboardInterrupt) else "FAILED"
    now = time.time()
    for step in record.steps.values():
        if step.state == "RUNNING":
            step.state, step.finished = state, now
            if state == "FAILED":
                step.error = f"Step {step.name!r} was stopped: the run ended on an error ({type(error).__name__}: {error})."
        elif step.state == "PENDING":
            step.state = "SKIPPED" if state == "FAILED" else "CANCELED"
    record.state, record.finished = state, now
    ended(record)


def _release(record):
    lock = getattr(record, "lock", None)
    if lock is not None:
        lock()


def ended(record):
    """The run is over: its state and times are kept in its run.json (`open_run_dir` reads them), and
    it is no longer running (`is_running`)."""
    times = {name: [step.started, step.finished] for name, step in record.steps.items()}
    try:
        record.write_info(state=record.state, started=record.started, finished=record.finished, times=times)
    except KfmagicError:
        pass  # the disk is full: the run ends all the same, and is read back from its steps' files
    _release(record)


def is_running(run_dir):
    """Whether a process runs the run in `run_dir` now: it holds the folder's lock. (On a file system
    without locks no run holds one, and none can be told to run.)"""
    try:
        folder = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(folder, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(folder)
    return False


def tell_failures(record, progress, told):
    """End the output of each newly failed step (not in `told`, which it joins) with one line: which
    run, which step, where its whole log is."""
    for step in record.steps.values():
        if step.state == "FAILED" and step.name not in told:
            told.add(step.name)
            log = os.path.join(record.run_dir, step.name, LOG_FILE)
            progress.output(step.name, "stderr", f"(run {record.id}, step {step.name!r} failed; its log: {log})")


def interrupted(record, progress, message):
    """After Ctrl-C (its processes stopped): every step not ended and the run are CANCELED, the
    progress shows it; returns the RunFailed to raise, carrying the run."""
    now = time.time()
    for step in record.steps.values():
        if step.state == "RUNNING":
            step.state, step.finished = "CANCELED", now
        elif step.state == "PENDING":
            step.state = "CANCELED"
    record.state, record.finished = "CANCELED", now
    if record.run_dir:
        ended(record)  # so that the run opened again (open_run) says it was stopped
    progress.finish(record)
    return RunFailed(message, record)
