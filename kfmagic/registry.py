"""The pipeline a notebook declares: its marked cells in notebook order, plus name and defaults.

The kernel fills it cell by cell as they run; `kfmagic.notebook` fills it from a saved file.
Everything else (plan, run, show) is derived from it on demand, never stored twice.
"""

import difflib
import functools
import hashlib
import os
import sys
from dataclasses import dataclass, field

from . import display
from .errors import CellSyntaxError, KfmagicError, RunFailed, SweepInterrupted
from .modules import star_names
from .plan import build_plan
from .syntax import check_name


@dataclass(frozen=True)
class RegisteredCell:
    """One marked cell: its spec, the key that recognises it on a re-run, and where it came from."""

    spec: object  # syntax.CellSpec
    key: str
    label: str  # "In [5]" in the kernel, "cell 5" in a file
    cell_id: str | None = None  # the notebook's id of the cell, when known

    @property
    def has_id(self):
        return self.cell_id is not None


@dataclass
class Pipeline:
    """The notebook's pipeline; `kfmagic.pipeline()` returns the kernel's one.

    Every `%pipeline` subcommand is a method here; the magics only parse and display.
    """

    name: str = display.DEFAULT_NAME
    experiment: str | None = None
    cells: list = field(default_factory=list)
    last_run: object = None
    last_sweep: object = None  # the last sweep.Sweep, also one stopped before it ended
    # Tells where a name that no step provides came from (the kernel knows; a file does not).
    explain_missing: object = None
    # The saved .ipynb this pipeline is declared in, when known: the drift check compares with it.
    notebook_path: str | None = None
    # Default container image of the steps on Kubeflow (None: python:<kernel version>).
    image: str | None = None
    # Where Kubeflow Pipelines is (config.Connection); in memory only, never saved.
    connection: object = field(default=None, repr=False)

    # -- registration -------------------------------------------------------------------------

    def add(self, spec, cell_id=None, label="cell", position=None):
        """Register a marked cell; a re-run of a known cell replaces it in place. Returns the cell
        it replaced, or None.

        What makes a cell "the same cell": in a notebook file, its position (every cell is its own,
        duplicates included); in a kernel, the cell id the front-end sends (JupyterLab, Notebook 7,
        VS Code); without one (nbclient, papermill, terminal IPython), its text — so re-running a
        cell replaces it, an edited cell is a new cell, and a second cell of identical text is
        taken for a re-run of the first (the kernel cannot tell them apart).
        """
        if position is not None:
            key = f"cell:{position}"
        elif cell_id:
            key = f"id:{cell_id}"
        else:
            key = "text:" + hashlib.sha256(spec.source.encode()).hexdigest()
        cell = RegisteredCell(spec, key, label, cell_id or None)
        for index, known in enumerate(self.cells):
            if known.key == key:
                self.cells[index] = cell
                return known
        self.cells.append(cell)
        return None

    def forget_cell(self, cell_id):
        """A cell that was marked and now runs without a magic is no longer part of the pipeline."""
        self.cells = [cell for cell in self.cells if cell.cell_id != cell_id]

    def parts_of(self, name):
        return [cell for cell in self.cells if cell.spec.kind == "step" and cell.spec.name == name]

    # -- subcommands ----------------------------------------------------------------------------

    def init(self, name, experiment=None, notebook=None, image=None):
        """Name the pipeline (and its experiment, the notebook file it lives in, its steps' default
        image on Kubeflow); cells are kept."""
        check_name(name, "%pipeline init")
        self.name, self.experiment, self.image = name, experiment, image
        if notebook:
            self.notebook_path = os.path.abspath(notebook)
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
        folder = os.path.dirname(self.notebook_path) if self.notebook_path else os.getcwd()
        return build_plan(
            self.name, self.experiment, self.cells, self.explain_missing,
            star_names=functools.partial(star_names, directory=folder),
        )

    def check(self):
        """Every problem of the pipeline, nothing run: raises PlanError, else returns the plan. Warns
        (on stderr) of what would not work in a step's pod, as `compile` does (files read by a relative
        path, big values, kernel magics)."""
        from .portability import warnings_for

        plan = self.plan()
        warn(warnings_for(plan, os.path.dirname(self.notebook_path) if self.notebook_path else os.getcwd()))
        return plan

    def show(self):
        """A displayable summary: step table, inputs with their producers, params, DAG."""
        return display.PlanView(self.plan())

    def compile(self, path=None):
        """Write the pipeline as Kubeflow Pipelines IR YAML (default `<name>.yaml` here); returns the path.

        Warns (on stderr) of what would not work in a step's pod (relative paths, big values,
        kernel magics, modules no installed package provides).
        """
        from .compiler import Target, compile_plan, plan_packages, store_warnings
        from .portability import size_warnings, warnings_for

        plan = self.plan()
        target = Target(image=self.image, store=self._connection().run_store)
        packages = plan_packages(plan, target.store)
        path = compile_plan(plan, path or f"{self.name}.yaml", target, packages)
        problems = list(plan.warnings) + warnings_for(plan, os.getcwd()) + size_warnings(path) + store_warnings(plan, target)
        if packages.prelude_unknown:
            problems.append(
                f"The %%prelude imports {', '.join(packages.prelude_unknown)}, which no installed package provides "
                "(a local module?): no step's pod will have it. Build it into --image, or make it an installable "
                "package and add it with --packages."
            )
        for step, modules in packages.unknown.items():
            receivers = packages.receivers.get(step)
            also = (
                f", nor will the pod{'s' * (len(receivers) > 1)} of {', '.join(map(repr, receivers))}, which "
                f"receive{'s' * (len(receivers) == 1)} values step {step!r} made with it" if receivers else ""
            )
            problems.append(
                f"Step {step!r} imports {', '.join(modules)}, which no installed package provides (a local "
                f"module?): its pod will not have it{also}. Move the code into the %%prelude, or build it into --image."
            )
        warn(problems)
        return path

    def configure(self, host=None, namespace=None, experiment=None, token=None, token_path=None, cookies=None,
                  store=None):
        """Where `run` submits: a Kubeflow Pipelines host and how to authenticate (kept in memory only),
        and the run store where cluster runs keep their records (default: $KFMAGIC_STORE)."""
        from .config import Connection

        self.connection = Connection(host, namespace, experiment, token, token_path, cookies, store)
        return self.connection

    def _connection(self):
        from .config import Connection

        return self.connection or Connection()

    def run(self, params=None, workers=None, runner=None, wait=False, progress=None, isolate=False, cache=True,
            start_from=None):
        """Run the pipeline and return its Run; RunFailed (carrying `.run`) if it ended unsuccessfully.

        `runner`: "local" (steps as processes here), "kfp-local" (the compiled pipeline run by
        kfp.local here) or "kfp" (submitted to Kubeflow Pipelines); by default "kfp" when a host is
        configured (or KF_PIPELINES_ENDPOINT is set), else "local". A submitted run is returned
        while it runs unless `wait`. `params` overrides parameter defaults; values given as text
        ("0.1") are parsed to the default's type. `isolate`: every step in a fresh process (local).
        `cache=False`: run every step (local), or ask Kubeflow not to reuse cached tasks (kfp).
        `start_from`: run that step and every step after it, reusing the other steps' outputs from the
        last local run of this pipeline here. Runs never touch the kernel's namespace.
        """
        from .backends import get_backend
        from .backends.base import FINAL_STATES, Settings

        _check_workers(workers)
        if runner is None:
            runner = "kfp" if self._connection().endpoint else "local"
        backend = get_backend(runner)
        plan = self.plan()
        values = plan.resolve_params(params or {})
        previous = self._resumed_run(plan, start_from, runner) if start_from is not None else None
        warn(plan.warnings)
        if runner == "kfp":  # what works here but not in a pod: said before it is submitted
            from .portability import warnings_for

            warn(warnings_for(plan, os.getcwd()))
        try:
            run = backend.run(
                plan,
                values,
                workdir=os.getcwd(),
                workers=workers,
                progress=progress or display.default_progress(plan),
                settings=Settings(
                    image=self.image, connection=self._connection(), wait=wait, isolate=isolate, cache=cache,
                    start_from=start_from, previous=previous,
                ),
            )
        except RunFailed as interrupted:
            self.last_run = interrupted.run
            raise
        self.last_run = run
        if run.state in FINAL_STATES and run.state != "SUCCEEDED":
            raise RunFailed(run.failure_message(), run)
        return run

    def sweep(self, params, random=None, seed=None, metric=None, maximize=True, workers=None, runner=None,
              isolate=False, cache=True, progress=None):
        """Run the pipeline once per combination of parameter values; returns the sweep.Sweep.

        `params`: {name: values}, values a list, or text as `--param` takes it ("0.1,1,10", a range
        "1e-4..1e-1:log" or "2..8"). A grid of every combination, or with `random=N` N combinations drawn
        with `seed` (a random one, said, if not given). `metric` ("STEP.NAME", needed when the pipeline
        reports several) orders them, highest first unless `maximize=False`. Steps that no swept parameter
        reaches run once and are shared; the rest run per combination. `runner` as for `run`: on Kubeflow
        the sweep is one submitted run, followed until it ends, its results read from the run store.
        Ctrl-C raises SweepInterrupted carrying the sweep so far (finished combinations kept; running the
        same sweep again reuses them).
        """
        from . import sweep as sweeps
        from .backends import get_backend
        from .backends.base import Settings

        _check_workers(workers)
        runner = runner or ("kfp" if self._connection().endpoint else "local")
        backend = get_backend(runner)
        plan = self.plan()
        planned = sweeps.plan_sweep(plan, params, random, seed, metric)
        print(planned.describe(plan, maximize))
        warn(plan.warnings)
        combinations = planned.combinations
        progress = progress or display.SweepProgress(combinations, planned.shared, planned.metric)

        def result(runs, state):
            self.last_sweep = sweeps.Sweep(
                plan.name, combinations, runs, planned.metric, maximize, planned.swept, tuple(planned.shared), planned.seed, state,
            )
            return self.last_sweep

        try:
            runs = backend.run_sweep(
                plan, planned.values, planned.per_combination, workdir=os.getcwd(), workers=workers, progress=progress.of,
                settings=Settings(image=self.image, connection=self._connection(), isolate=isolate, cache=cache),
            )
        except SweepInterrupted as stopped:
            made = result(stopped.runs, "CANCELED")
            finished = [f"c{i + 1}" for i in made.finished()]
            raise SweepInterrupted(
                f"{stopped} Their runs are kept{' (' + ', '.join(finished) + ')' if finished else ''}; the others were "
                "stopped. Run the same sweep again to finish it: what finished is reused from the cache.", stopped.runs, made,
            ) from None
        return result(runs, "SUCCEEDED")

    def _resumed_run(self, plan, step, runner):
        """The folder of the run `--from STEP` resumes: the last local run of this pipeline here."""
        from .backends.base import latest_run_dir

        if runner != "local":
            raise KfmagicError(f"--from {step}: resuming is for local runs (Kubeflow caches steps itself).")
        names = [s.name for s in plan.steps]
        if step not in names:
            close = difflib.get_close_matches(step, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else f" Steps: {', '.join(names)}."
            raise KfmagicError(f"--from {step}: no such step.{hint}")
        last = self.last_run
        if last is not None and last.runner == "local" and last.pipeline == self.name and last.run_dir:
            return last.run_dir
        found = latest_run_dir(os.getcwd(), self.name, "local")
        if found is None:
            raise KfmagicError(
                f"--from {step}: there is no earlier local run of pipeline {self.name!r} here to resume; run it whole first."
            )
        return found

    def cancel(self, run_id=None):
        """Stop run RUN_ID on Kubeflow Pipelines (default: the last run); returns it, refreshed."""
        known = self.last_run if run_id in (None, getattr(self.last_run, "id", None)) else None
        if known is None and run_id is None:
            raise KfmagicError("cancel: no run yet in this kernel to cancel; name one: %pipeline cancel RUN_ID.")
        if known is not None and known.runner != "kfp":
            raise KfmagicError(
                f"cancel: run {known.id} ran here ({known.runner}) and has ended ({known.state}): nothing to cancel. "
                "A local run stops with Ctrl-C."
            )
        connection = known.connection if known is not None else self._connection()
        if not connection.endpoint:
            raise KfmagicError(
                f"cancel {run_id}: no Kubeflow Pipelines host is configured to ask (`%pipeline config --host URL`, "
                "--host URL, or KF_PIPELINES_ENDPOINT)."
            )
        from .backends import get_backend

        return get_backend("kfp").cancel(connection, known.id if known is not None else run_id)

    def open_run(self, run_id):
        """Run RUN_ID, started anywhere: a run of this folder's `.kfmagic/runs` by its kfmagic id (a local
        or kfp-local run, or a submission), else a run of the configured Kubeflow Pipelines by its id."""
        from .backends import get_backend
        from .backends.base import open_run_dir, read_info, run_folder
        from .config import Connection
        from .workspace import RUNS_DIR

        folder = run_folder(os.getcwd(), run_id)
        if folder is not None:
            info = read_info(folder)
            if info["runner"] != "kfp":
                return open_run_dir(folder)
            connection = self._connection() if self._connection().endpoint else Connection(host=info.get("host"))
            return get_backend("kfp").fetch(connection, info["id"])
        if not self._connection().endpoint:
            raise KfmagicError(
                f"open_run({run_id!r}): no run of that id in {os.path.join(os.getcwd(), RUNS_DIR)}, and no "
                "Kubeflow Pipelines host is configured to ask (`%pipeline config --host URL`, or KF_PIPELINES_ENDPOINT)."
            )
        return get_backend("kfp").fetch(self._connection(), run_id)

    def logs(self, step, run_id=None):
        """What step STEP printed (stdout and stderr) in the last run, or in run RUN_ID (`open_run`)."""
        if run_id is None or (self.last_run is not None and self.last_run.id == run_id):
            if self.last_run is None:
                raise KfmagicError(f"%pipeline logs {step}: no run yet in this kernel; name one: %pipeline logs {step} RUN_ID.")
            return self.last_run.logs(step)
        return self.open_run(run_id).logs(step)

    # -- looking back (history.py) ---------------------------------------------------------------

    def runs(self):
        """This notebook's runs here (`.kfmagic/runs` of its pipeline), newest first, and their room on disk."""
        from .history import RunsView

        return RunsView(os.getcwd(), self.name)

    def compare(self, *run_ids):
        """Runs RUN_IDS (default: the last few) side by side: a Comparison of their params and metrics."""
        from .history import compare

        return compare(os.getcwd(), self.name, run_ids, self.last_run, self._remote())

    def prune(self, keep, dry_run=False):
        """Remove this pipeline's runs here but the `keep` newest (never a running one, nor `last_run`)."""
        from .history import prune

        return prune(os.getcwd(), self.name, keep, dry_run, self.last_run)

    def pull(self, step, run_id=None):
        """What step STEP saw in the last run, or in run RUN_ID: a Pulled, whose `values` the magic sets
        in the kernel (its inputs and parameters), to re-run the step's cell there."""
        from .history import find_run, pull

        try:
            plan = self.plan()
        except KfmagicError:
            plan = None  # only needed for a run that kept no spec of the step
        return pull(find_run(os.getcwd(), self.name, run_id, self.last_run, self._remote()), step, plan)

    def _remote(self):
        """How a run on the configured cluster is opened, when one is configured."""
        return self.open_run if self._connection().endpoint else None

    def status(self, run_id=None):
        """The last run (refreshed if it runs on Kubeflow), or run RUN_ID of the configured cluster."""
        if run_id is None or (self.last_run is not None and self.last_run.id == run_id):
            if self.last_run is None:
                raise KfmagicError("%pipeline status: no run yet in this kernel. Start one with %pipeline run.")
            return self.last_run.refresh() if hasattr(self.last_run, "refresh") else self.last_run
        if not self._connection().endpoint:
            raise KfmagicError(
                f"%pipeline status {run_id}: not a run of this kernel, and no Kubeflow Pipelines host is "
                "configured to ask (`%pipeline config --host URL`)."
            )
        from .backends import get_backend

        return get_backend("kfp").fetch(self._connection(), run_id)


def _check_workers(workers):
    if workers is not None and workers < 1:
        raise KfmagicError(f"--workers {workers}: at least one step must run at a time; use 1 or more.")


def warn(warnings):
    """What may not work as the user expects, on stderr (in a kernel it shows in the cell)."""
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def run_options(args):
    """Pipeline.run's arguments from a parsed `%pipeline run` / `kfmagic run` line."""
    return dict(
        params=parse_param_overrides(args.param), workers=args.workers, runner=args.runner, wait=args.wait,
        isolate=args.isolate, cache=args.cache, start_from=args.start_from,
    )


def sweep_options(args):
    """Pipeline.sweep's arguments from a parsed `%pipeline sweep` / `kfmagic sweep` line."""
    return dict(
        params=parse_param_overrides(args.param), random=args.random, seed=args.seed, metric=args.metric,
        maximize=args.maximize is not False, workers=args.workers, runner=args.runner, isolate=args.isolate,
        cache=args.cache,
    )


def parse_param_overrides(pairs):
    """['k=v', ...] from the command line -> {k: 'v'} (typed later against the defaults)."""
    overrides = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise CellSyntaxError(f"--param {pair!r}: write NAME=VALUE, e.g. --param learning_rate=0.05.")
        if name.strip() in overrides:
            raise CellSyntaxError(f"--param {name.strip()}: given twice; give it once.")
        overrides[name.strip()] = value
    return overrides


_CURRENT = Pipeline()


def current_pipeline():
    return _CURRENT
