"""What every backend shares: its settings, the Run it returns (states with KFP's names,
durations, metrics, loadable values), and how a run starts, reads step results and is cancelled."""

import json
import os
import secrets
import time
from dataclasses import dataclass, field

from .. import runtime, serde, workspace
from ..errors import KfmagicError, RunFailed

FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")
RUN_FILE = "run.json"


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
        self.started = result.get("started", self.started)
        self.finished = result.get("finished", self.finished or time.time())


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
        if step is not None and step not in self.steps:
            raise KfmagicError(f"run.load({name!r}, step={step!r}): no step {step!r} in this run. Steps: {', '.join(self.steps)}.")
        if step is None:
            writers = [s.name for s in self.steps.values() if name in s.assigns or name in s.saved]
            step = writers[-1] if writers else None
        found = self.steps.get(step)
        if found is not None and name in found.saved:
            return self._load_saved(name, found)
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

    def _load_saved(self, name, step):
        """The value of `name` that `step` saved, read only from inside this run's folder; else one
        message naming the run, the step and the variable, and what to do."""
        path = step.saved[name]["path"]
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

    def failure_message(self):
        failed = [s for s in self.steps.values() if s.state == "FAILED"]
        not_run = [s.name for s in self.steps.values() if s.state in ("SKIPPED", "CANCELED", "PENDING")]
        lines = [f"Run {self.id} {self.state}."]
        for step in failed:
            first = (step.error or "").strip().splitlines()
            lines.append(f"Step {step.name!r} failed: {first[-1] if first else 'no error reported'}")
        if not_run:
            lines.append(f"Not run: {', '.join(not_run)}.")
        if failed and self.runner == "local":
            lines.append(f"Resume from the failed step with `--from {failed[0].name}`: what ran before it is reused.")
        if self.run_dir:
            lines.append(f"Outputs of finished steps are kept in {self.run_dir}.")
        return "\n".join(lines)

    def write_info(self, **extra):
        """Write run.json in the run's directory: what ran, with which parameters, and where."""
        workspace.write_private_json(
            os.path.join(self.run_dir, RUN_FILE),
            {"id": self.id, "pipeline": self.pipeline, "params": self.params, "runner": self.runner, **extra},
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


def step_runs(plan):
    """A PENDING StepRun per step of `plan`, in plan order."""
    return {step.name: StepRun(step.name, step.assigns) for step in plan.steps}


def start_run(plan, params, workdir, runner):
    """A RUNNING Run of `plan` here: its directory made, its run.json written."""
    run_id, run_dir = new_run_dir(workdir, plan.name)
    record = Run(run_id, plan.name, runner, step_runs(plan), dict(params), run_dir=run_dir, state="RUNNING")
    try:
        record.write_info()
    except KfmagicError:
        os.rmdir(run_dir)  # nothing ran: no empty run left behind
        raise
    return record


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
    progress.finish(record)
    return RunFailed(message, record)
