"""The pipeline a notebook declares: its marked cells in notebook order, plus name and defaults.

The kernel fills it cell by cell as they run; `kfmagic.notebook` fills it from a saved file.
Everything else (plan, run, show) is derived from it on demand, never stored twice.
"""

import hashlib
import os
from dataclasses import dataclass, field

from . import display
from .errors import CellSyntaxError, KfmagicError, RunFailed
from .plan import build_plan
from .syntax import check_name


@dataclass(frozen=True)
class RegisteredCell:
    """One marked cell: its spec, the key that recognises it on a re-run, and where it came from."""

    spec: object  # syntax.CellSpec
    key: str
    label: str  # "In [5]" in the kernel, "cell 5" in a file
    has_id: bool


@dataclass
class Pipeline:
    """The notebook's pipeline; `kfmagic.pipeline()` returns the kernel's one.

    Every `%pipeline` subcommand is a method here; the magics only parse and display.
    """

    name: str = "pipeline"
    experiment: str | None = None
    cells: list = field(default_factory=list)
    last_run: object = None
    # Tells where a name that no step provides came from (the kernel knows; a file does not).
    explain_missing: object = None

    # -- registration -------------------------------------------------------------------------

    def add(self, spec, cell_id=None, label="cell"):
        """Register a marked cell; a re-run of a known cell replaces it in place.

        A cell is known by its cell id when the front-end sends one (JupyterLab, Notebook 7).
        Without one (nbclient, papermill, terminal IPython) it is known by its text: re-running
        the same text replaces it, an edited cell is registered as a new cell.
        """
        key = f"id:{cell_id}" if cell_id else "text:" + hashlib.sha256(spec.source.encode()).hexdigest()
        cell = RegisteredCell(spec, key, label, bool(cell_id))
        for index, known in enumerate(self.cells):
            if known.key == key:
                self.cells[index] = cell
                return cell
        self.cells.append(cell)
        return cell

    def forget_cell(self, cell_id):
        """A cell that was marked and now runs without a magic is no longer part of the pipeline."""
        self.cells = [cell for cell in self.cells if cell.key != f"id:{cell_id}"]

    def parts_of(self, name):
        return [cell for cell in self.cells if cell.spec.kind == "step" and cell.spec.name == name]

    # -- subcommands ----------------------------------------------------------------------------

    def init(self, name, experiment=None):
        """Name the pipeline (and its experiment); registered cells are kept."""
        check_name(name, "%pipeline init")
        self.name, self.experiment = name, experiment
        return self

    def remove(self, name):
        """Unregister every cell of step NAME."""
        if not self.parts_of(name):
            steps = sorted({cell.spec.name for cell in self.cells if cell.spec.kind == "step"})
            raise KfmagicError(f"%pipeline remove: no step named {name!r}. Steps: {', '.join(steps) or 'none'}.")
        self.cells = [cell for cell in self.cells if not (cell.spec.kind == "step" and cell.spec.name == name)]

    def reset(self):
        """Unregister every cell; the name and experiment stay."""
        self.cells = []
        self.last_run = None

    def plan(self):
        """The validated DAG (PlanError lists every problem)."""
        return build_plan(self.name, self.experiment, self.cells, self.explain_missing)

    def check(self):
        """Every problem of the pipeline, nothing run: raises PlanError, else returns the plan."""
        return self.plan()

    def show(self):
        """A displayable summary: step table, inputs with their producers, params, DAG."""
        return display.PlanView(self.plan())

    def run(self, params=None, workers=None, runner="local", progress=None):
        """Run the pipeline and return its Run; RunFailed (carrying `.run`) if it did not succeed.

        `params` overrides parameter defaults; values given as text ("0.1") are parsed to the
        default's type. Local runs never touch the kernel's namespace.
        """
        from .backends import get_backend

        if workers is not None and workers < 1:
            raise KfmagicError(f"--workers {workers}: at least one step must run at a time; use 1 or more.")
        plan = self.plan()
        values = plan.resolve_params(params or {})
        backend = get_backend(runner)
        try:
            run = backend.run(
                plan,
                values,
                workdir=os.getcwd(),
                workers=workers or os.cpu_count() or 1,
                progress=progress or display.default_progress(),
            )
        except RunFailed as interrupted:
            self.last_run = interrupted.run
            raise
        self.last_run = run
        if run.state != "SUCCEEDED":
            raise RunFailed(run.failure_message(), run)
        return run


def parse_param_overrides(pairs):
    """['k=v', ...] from the command line -> {k: 'v'} (typed later against the defaults)."""
    overrides = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise CellSyntaxError(f"--param {pair!r}: write NAME=VALUE, e.g. --param learning_rate=0.05.")
        overrides[name.strip()] = value
    return overrides


_CURRENT = Pipeline()


def current_pipeline():
    return _CURRENT
