"""The Run every backend returns: states with KFP's names, durations, metrics, loadable values."""

import time
from dataclasses import dataclass, field

from .. import serde
from ..errors import KfmagicError

FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")


@dataclass
class StepRun:
    name: str
    assigns: tuple = ()  # what the step's code assigns: tells which step has a name's last value
    state: str = "PENDING"
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    saved: dict = field(default_factory=dict)  # var -> {"type", "bytes", "path"}
    skipped: dict = field(default_factory=dict)  # var -> why it was not kept
    metrics: dict = field(default_factory=dict)

    @property
    def duration(self):
        """Seconds the step ran (so far, while it runs); None before it starts."""
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started


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
            return serde.load(found.saved[name]["path"])
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

    def failure_message(self):
        failed = [s for s in self.steps.values() if s.state == "FAILED"]
        not_run = [s.name for s in self.steps.values() if s.state in ("SKIPPED", "CANCELED", "PENDING")]
        lines = [f"Run {self.id} {self.state}."]
        for step in failed:
            first = (step.error or "").strip().splitlines()
            lines.append(f"Step {step.name!r} failed: {first[-1] if first else 'no error reported'}")
        if not_run:
            lines.append(f"Not run: {', '.join(not_run)}.")
        if self.run_dir:
            lines.append(f"Outputs of finished steps are kept in {self.run_dir}.")
        lines.append("In the kernel, the run is kfmagic.pipeline().last_run.")
        return "\n".join(lines)

    def _repr_html_(self):
        from ..display import run_html

        return run_html(self)

    def __repr__(self):
        from ..display import run_text

        return run_text(self)
