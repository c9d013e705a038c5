"""Submit the compiled pipeline to a Kubeflow Pipelines cluster and follow the run from the kernel.

Uploads the pipeline (or a new version of the pipeline of that name), files the run under an
experiment it creates if needed, and returns a RemoteRun: the same Run as a local run, refreshed
from the API. Its `wait` ends on every final state, CANCELED included.

With a run store (store.py), the run is given kfmagic's own id for it (the submission's folder
name) and where to keep its records; its steps' pods write their results, logs and values there,
and the RemoteRun reads its metrics, values and logs from there, as a local run's from its folder.
A run is found again from its id on the cluster by those two parameters (`fetch`).
"""

import contextlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field

from .. import store, workspace
from ..compiler import (
    RUN_ID_PARAM, RUNTIME_DISPLAY_NAME, STORE_PARAM, Fanout, Target, compile_plan, kfp_name, pipeline_arguments,
    store_warnings,
)
from ..component import LOG_FILE, STEPS_FILE
from ..config import calling
from ..errors import KfmagicError, RunFailed
from ..plan import RUNTIME_TASK
from ..runtime import OUTPUTS_DIR, RESULT_FILE
from ..sweep import swept as sweep_names
from .base import FINAL_STATES, RUN_ID, Run, StepRun, new_run_dir, read_result, step_runs, steps_listed
from .launcher import release_ahead

POLL_SECONDS = 2.0
DEFAULT_EXPERIMENT = "Default"


def _timestamp(value):
    return value.timestamp() if hasattr(value, "timestamp") and value.year > 1970 else None


@dataclass(repr=False)
class RemoteRun(Run):
    """A run on a cluster: `refresh()` reads it from the API, `wait()` polls until it ends."""

    url: str | None = None
    connection: object = field(default=None, repr=False)
    task_names: dict = field(default_factory=dict)  # kfp task or display name -> step
    _client: object = field(default=None, repr=False)
    store: object = field(default=None, repr=False)  # store.ObjectStore of its records; None: submitted without one
    _recorded: set = field(default_factory=set, repr=False)  # steps whose final record was read from the store
    _shown: set = field(default_factory=set, repr=False)  # steps whose log `wait` has shown (None: it cannot)

    @property
    def client(self):
        if self._client is None:
            self._client = self.connection.client()
        return self._client

    def refresh(self):
        """Read the run's state and its tasks' states from the API."""
        with calling(self.connection, f"reading run {self.id}"):
            api_run = self.client.get_run(self.id)
        self.state = str(api_run.state or "PENDING").upper()
        self.started = _timestamp(api_run.created_at) or self.started
        self.finished = _timestamp(api_run.finished_at) if self.state in FINAL_STATES else None
        details = api_run.run_details.task_details if api_run.run_details else None
        for task in details or ():
            name = self.task_names.get(task.display_name)
            if name is None:
                continue  # the root DAG, drivers and other bookkeeping tasks
            step = self.steps.setdefault(name, StepRun(name))
            step.state = str(task.state or "PENDING").upper()
            step.started = _timestamp(task.start_time) or _timestamp(task.create_time)
            step.finished = _timestamp(task.end_time) if step.state in FINAL_STATES else None
            step.error = getattr(task.error, "message", None) if task.error else None
        if self.state in FINAL_STATES:
            for step in self.steps.values():
                if step.state in ("PENDING", "RUNNING"):
                    step.state = "SKIPPED" if self.state != "CANCELED" else "CANCELED"
        return self

    def wait(self, timeout=None, progress=None, interval=POLL_SECONDS):
        """Poll until the run ends (SUCCEEDED, FAILED, SKIPPED or CANCELED), showing task states live."""
        from ..display import default_progress

        progress = progress or default_progress()
        deadline = None if timeout is None else time.time() + timeout
        progress.start(self)
        while self.refresh().state not in FINAL_STATES:
            progress.update(self)
            self._show_ended(progress)
            if deadline is not None and time.time() > deadline:
                progress.finish(self)
                raise KfmagicError(f"Run {self.id} is still {self.state} after {timeout:g}s: {self.url}")
            time.sleep(interval)
        self._show_ended(progress)
        if self.store is not None:
            try:
                self._read_records("the run's results")
            except KfmagicError as error:
                print(f"warning: {error}", file=sys.stderr)
        progress.finish(self)
        return self

    def _show_ended(self, progress):
        """What each ended step printed (its log in the store), shown as a local run streams it; a store
        that cannot be read is said once, and nothing more is tried."""
        if self.store is None or self._shown is None:
            return
        for step in [s for s in self.steps.values() if s.state in FINAL_STATES and s.name not in self._shown]:
            self._shown.add(step.name)
            try:
                path = self.store.fetch(step.name, LOG_FILE, fresh=True)
            except KfmagicError as error:
                print(f"warning: the steps' output cannot be shown: {error}", file=sys.stderr)
                self._shown = None
                return
            if path is not None:
                with open(path, encoding="utf-8", errors="replace") as file:
                    for line in file.read().splitlines():
                        progress.output(step.name, "stdout", line)

    @property
    def metrics(self):
        """{step: {metric: value}}, read from the run's store (a step that left no record there is named)."""
        self._read_records("run.metrics")
        unrecorded = [s.name for s in self.steps.values() if s.state == "SUCCEEDED" and s.name not in self._recorded]
        if unrecorded:
            print(
                f"warning: step(s) {', '.join(unrecorded)} of run {self.id} left no record in the run store "
                f"{self.store.where}, so their metrics are not known here (their logs on Kubeflow say why: {self.url}).",
                file=sys.stderr,
            )
        return super().metrics

    def load(self, name, step=None):
        self._read_records(f"run.load({name!r})")
        found = self.steps.get(self._step_of(name, step))
        if found is not None and found.state == "SUCCEEDED" and found.name not in self._recorded:
            raise KfmagicError(
                f"run.load({name!r}): step {found.name!r} of run {self.id} left no record in the run store "
                f"{self.store.where}: its pod could not write there (its log on Kubeflow says why: {self.url})."
            )
        return super().load(name, step)

    def logs(self, step):
        records = self._store(f"logs of step {step!r}")
        if self.state not in FINAL_STATES:
            self.refresh()
        self._adopt_steps(records)
        return super().logs(step)

    def _store(self, what):
        if self.store is None:
            raise KfmagicError(
                f"{what}: run {self.id} ran on Kubeflow without a run store, so its results stay in the cluster "
                f"(its page: {self.url}). To read the values, metrics and logs of cluster runs here, give a store "
                "before submitting: `%pipeline config --host URL --store s3://BUCKET/PREFIX` (or set KFMAGIC_STORE; "
                f"gs:// for GCS), with {store.INSTALL_HINT} and the store's credentials in the environment, here and in "
                f"the steps' pods ({store.CREDENTIALS_HINT}). Or run here: `%pipeline run --local`."
            )
        return self.store

    def _read_records(self, what):
        """Each ended step's record (its error, metrics and saved values) from the run's store, once;
        the cluster's word on how the task ended stands."""
        records = self._store(what)
        if self.state not in FINAL_STATES:
            self.refresh()
        self._adopt_steps(records)
        for step in self.steps.values():
            if step.name in self._recorded or step.state not in ("SUCCEEDED", "FAILED"):
                continue
            path = records.fetch(step.name, RESULT_FILE, fresh=True)
            if path is None:
                continue
            state, error = step.state, step.error
            step.apply_result(read_result(os.path.dirname(path)), os.path.dirname(path))
            step.state, step.error = state, step.error or error
            self._recorded.add(step.name)

    def read_ended(self, state):
        """The steps' outcomes from their records alone (a combination of a sweep, which the cluster's
        run of `state` ran): a step without one did not run."""
        for step in self.steps.values():
            path = self.store.fetch(step.name, RESULT_FILE, fresh=True)
            if path is not None:
                step.apply_result(read_result(os.path.dirname(path)), os.path.dirname(path))
                self._recorded.add(step.name)
            else:
                step.state = "CANCELED" if state == "CANCELED" else "SKIPPED"
        failed = any(step.state != "SUCCEEDED" for step in self.steps.values())
        self.state = ("CANCELED" if state == "CANCELED" else "FAILED") if failed else "SUCCEEDED"
        times = [t for step in self.steps.values() for t in (step.started, step.finished) if t]
        self.started, self.finished = min(times, default=self.started), max(times, default=time.time())

    def _adopt_steps(self, records):
        """A run opened by its id knows its steps from the cluster's task names; the store's list of the
        plan's steps gives their names, order and what each assigns (which has a name's last value)."""
        if self._recorded or any(step.assigns for step in self.steps.values()):
            return
        path = records.fetch(STEPS_FILE, fresh=True)
        listed = steps_listed(_read_json(path)) if path else None
        if not listed:
            return
        steps = {}
        for name, assigns in listed:
            known = self.steps.pop(name, None) or self.steps.pop(kfp_name(name), None) or StepRun(name)
            known.name, known.assigns = name, assigns
            steps[name] = known
            self.task_names[kfp_name(name)] = name
        for label, known in self.steps.items():  # tasks shown under a --display-name (not kfmagic's own)
            if label not in (kfp_name(RUNTIME_TASK), RUNTIME_DISPLAY_NAME):
                steps.setdefault(label, known)
        self.steps = steps
        for step in self.steps.values():
            if self.state in FINAL_STATES and step.state == "PENDING":
                step.state = "SKIPPED" if self.state != "CANCELED" else "CANCELED"

    def _value_file(self, step, name):
        path = self.store.fetch(step.name, OUTPUTS_DIR, f"{name}.pkl")
        if path is None:
            raise KfmagicError(
                f"run.load({name!r}): the run store {self.store.where} has no value {name!r} of step {step.name!r}, "
                "though the step's record says it saved one: the store was changed since. Run the pipeline again."
            )
        return path

    def failure_message(self):
        return super().failure_message() + f"\nOn Kubeflow: {self.url}"

    def _pullable(self):
        return self.store is not None  # its steps' values come back through the store


@contextlib.contextmanager
def _quiet_kfp():
    """kfp.Client prints (or displays) its own links on every call; kfmagic shows one link itself."""
    from kfp.client import auth

    is_ipython = auth.is_ipython
    auth.is_ipython = lambda: False
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        auth.is_ipython = is_ipython


def _read_json(path):
    """What the JSON file at `path` holds, or None if it is not JSON."""
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except ValueError:
        return None


def run(plan, params, *, workdir, workers, progress, settings):
    """Compile, upload and start `plan` on the cluster; returns the RemoteRun (ended if `settings.wait`).

    Of `settings` (base.Settings), the image, the connection (with its run store) and `wait` apply;
    `workers` does not.
    """
    record = _submit(plan, params, workdir, settings)
    if not settings.wait:
        return record.refresh()
    try:
        return record.wait(progress=progress)
    except KeyboardInterrupt:  # the run is the cluster's: only the following stops
        raise _stopped_following(record) from None


def _stopped_following(record):
    return RunFailed(
        f"Stopped following run {record.id}; it goes on on Kubeflow: {record.url}. Cancel it with "
        f"`%pipeline cancel {record.id}` in the notebook, or `kfmagic cancel {record.id} --host "
        f"{record.connection.endpoint}` in a shell.", record,
    )


def _submit(plan, params, workdir, settings, fanout=None):
    """Compile `plan` (a sweep's with `fanout`), upload it and start it with `params`; returns its RemoteRun."""
    release_ahead()  # it runs no process here: a supervisor the command started ahead of it is not needed
    connection, stamp = settings.connection, time.strftime("%Y%m%d-%H%M%S")
    store_url = connection.run_store
    client = connection.client()  # first: a cluster out of reach leaves no submission folder behind
    # the compiled package and run.json; the folder's name is unique, so it names the pipeline version
    # too, and is kfmagic's id of the run: where its records go in the store
    submission, submit_dir = new_run_dir(workdir, plan.name, suffix="kfp")
    # --no-cache is compiled in: kfp.Client drops enable_caching for a run of an uploaded version
    target = Target(image=settings.image, store=store_url, cache=settings.cache)
    package = compile_plan(plan, os.path.join(submit_dir, "pipeline.yaml"), target, fanout=fanout)
    for warning in store_warnings(plan, target):
        print(f"warning: {warning}", file=sys.stderr)
    arguments = pipeline_arguments(params)
    if store_url:
        arguments.update({STORE_PARAM: store.pipeline_location(store_url, plan.name), RUN_ID_PARAM: submission})
    name = kfp_name(plan.name)
    with calling(connection, f"uploading pipeline {name!r}"), _quiet_kfp():
        pipeline_id = client.get_pipeline_id(name)
        if pipeline_id is None:
            pipeline_id = client.upload_pipeline(package, pipeline_name=name).pipeline_id
            versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
            version_id = versions.pipeline_versions[0].pipeline_version_id
        else:
            version = client.upload_pipeline_version(package, pipeline_version_name=submission, pipeline_id=pipeline_id)
            version_id = version.pipeline_version_id
    experiment = connection.experiment or plan.experiment or DEFAULT_EXPERIMENT
    with calling(connection, f"creating experiment {experiment!r}"), _quiet_kfp():
        experiment_id = client.create_experiment(experiment, namespace=connection.namespace).experiment_id
    with calling(connection, "creating the run"), _quiet_kfp():
        api_run = client.run_pipeline(
            experiment_id=experiment_id, job_name=f"{name} {stamp}", params=arguments,
            pipeline_id=pipeline_id, version_id=version_id,
        )
    steps = step_runs(plan)
    task_names = {kfp_name(step.name): step.name for step in plan.steps}
    task_names.update({step.options["display_name"]: step.name for step in plan.steps if step.options.get("display_name")})
    record = RemoteRun(
        api_run.run_id, plan.name, "kfp", steps, dict(params), run_dir=submit_dir, state="PENDING",
        url=connection.run_url(api_run.run_id), connection=connection, task_names=task_names, _client=client,
    )
    if store_url:
        record.store = store.ObjectStore(store.run_location(arguments[STORE_PARAM], submission), submit_dir)
    record.write_info(
        host=connection.endpoint, url=record.url, experiment=experiment, kfmagic_run_id=submission,
        store=record.store.where if record.store else None,
    )
    print(f"Submitted run {record.id} of pipeline {name!r} (experiment {experiment!r}): {record.url}")
    return record


def run_sweep(plan, combinations, per_combination, *, workdir, workers, progress, settings):
    """The sweep compiled as one pipeline (the shared steps, then one dsl.ParallelFor running the
    `per_combination` steps once per combination, `workers` at a time) and submitted as one run,
    followed until it ends; returns one Run per combination (`combinations`: each one's parameter
    values), read from the run store, where each combination's steps keep their records (`c<N>/`):
    the cluster's API does not say which iteration of the loop a task was, its records do.

    Ctrl-C stops the following, not the run (RunFailed says how to cancel it).
    """
    if not settings.connection.run_store:
        raise KfmagicError(
            "A sweep on Kubeflow reads each combination's metrics from the run store, where the steps' pods "
            "write them: give one (`%pipeline config --store s3://BUCKET/PREFIX`, --store, or KFMAGIC_STORE), or "
            "sweep here with --runner local."
        )
    swept = sweep_names(combinations)
    fanout = Fanout(tuple({name: values[name] for name in swept} for values in combinations), tuple(per_combination), workers)
    fixed = {name: value for name, value in combinations[0].items() if name not in swept}
    record = _submit(plan, fixed, workdir, settings, fanout)
    try:
        while record.refresh().state not in FINAL_STATES:
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        raise _stopped_following(record) from None
    runs = []
    for i, values in enumerate(combinations):
        own = store.ObjectStore(f"{record.store.where}/c{i + 1}", os.path.join(record.run_dir, f"c{i + 1}"))
        run = RemoteRun(
            f"{record.id}-c{i + 1}", plan.name, "kfp", step_runs(plan), dict(values), run_dir=record.run_dir,
            url=record.url, connection=record.connection, store=store.CombinationStore(record.store, own, per_combination),
        )
        run.read_ended(record.state)
        its_progress = progress(i)
        its_progress.start(run)
        its_progress.finish(run)
        runs.append(run)
    return runs


def cancel(connection, run_id):
    """Ask the cluster to stop run `run_id` (its running tasks end CANCELED); returns it, refreshed."""
    with calling(connection, f"canceling run {run_id}"), _quiet_kfp():
        connection.client().terminate_run(run_id)
    return fetch(connection, run_id)


def fetch(connection, run_id, workdir=None):
    """A RemoteRun for any run id on the cluster (`%pipeline status RUN`, `open_run`). A run that kept
    its records in a run store reads them from where its parameters say, downloading what it reads into
    `.kfmagic/runs/<its kfmagic id>/` under `workdir` (default: here)."""
    record = RemoteRun(run_id, "", "kfp", {}, {}, url=connection.run_url(run_id), connection=connection)
    with calling(connection, f"reading run {run_id}"):
        api_run = record.client.get_run(run_id)
    record.pipeline = api_run.display_name or ""
    params = dict((api_run.runtime_config.parameters or {}) if api_run.runtime_config else {})
    location, kfmagic_id = params.pop(STORE_PARAM, None), params.pop(RUN_ID_PARAM, None) or run_id
    record.params = params
    details = api_run.run_details.task_details if api_run.run_details else None
    record.task_names = {task.display_name: task.display_name for task in details or () if task.display_name}
    if isinstance(location, str) and location:
        if not RUN_ID.match(str(kfmagic_id)):
            raise KfmagicError(f"Run {run_id}: its {RUN_ID_PARAM} parameter {kfmagic_id!r} is not an id kfmagic makes.")
        record.run_dir = os.path.join(workspace.runs_dir(workdir or os.getcwd()), kfmagic_id)
        record.store = store.ObjectStore(store.run_location(location, kfmagic_id), record.run_dir)
    record.refresh()
    if record.store is not None:
        with contextlib.suppress(KfmagicError):  # a store out of reach here: its steps are read when asked for
            record._adopt_steps(record.store)
    return record
