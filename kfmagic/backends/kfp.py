"""Submit the compiled pipeline to a Kubeflow Pipelines cluster and follow the run from the kernel.

Uploads the pipeline (or a new version of the pipeline of that name), files the run under an
experiment it creates if needed, and returns a RemoteRun: the same Run as a local run, refreshed
from the API. Its `wait` ends on every final state, CANCELED included.
"""

import contextlib
import io
import os
import time
from dataclasses import dataclass, field

from ..compiler import Target, compile_plan, kfp_name, pipeline_arguments
from ..config import calling
from ..errors import KfmagicError, RunFailed
from .base import FINAL_STATES, Run, StepRun, new_run_dir, step_runs

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
            if deadline is not None and time.time() > deadline:
                progress.finish(self)
                raise KfmagicError(f"Run {self.id} is still {self.state} after {timeout:g}s: {self.url}")
            time.sleep(interval)
        progress.finish(self)
        return self

    def load(self, name, step=None):
        raise KfmagicError(
            f"run.load({name!r}): run {self.id} ran on Kubeflow, so its values are artifacts in the cluster's "
            f"object storage (see {self.url}). To get values in the kernel, run here: "
            "`%pipeline run --local` or `--runner kfp-local`."
        )

    def failure_message(self):
        return super().failure_message() + f"\nOn Kubeflow: {self.url}"


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


def run(plan, params, *, workdir, workers, progress, settings):
    """Compile, upload and start `plan` on the cluster; returns the RemoteRun (ended if `settings.wait`).

    Of `settings` (base.Settings), the image, the connection and `wait` apply; `workers` does not.
    """
    connection, stamp = settings.connection, time.strftime("%Y%m%d-%H%M%S")
    # the compiled package and run.json; the folder's name is unique, so it names the pipeline version too
    submission, submit_dir = new_run_dir(workdir, plan.name, suffix="kfp")
    package = compile_plan(plan, os.path.join(submit_dir, "pipeline.yaml"), Target(image=settings.image))
    client = connection.client()
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
            experiment_id=experiment_id, job_name=f"{name} {stamp}", params=pipeline_arguments(params),
            pipeline_id=pipeline_id, version_id=version_id, enable_caching=None if settings.cache else False,
        )
    steps = step_runs(plan)
    task_names = {kfp_name(step.name): step.name for step in plan.steps}
    task_names.update({step.options["display_name"]: step.name for step in plan.steps if step.options.get("display_name")})
    record = RemoteRun(
        api_run.run_id, plan.name, "kfp", steps, dict(params), run_dir=submit_dir, state="PENDING",
        url=connection.run_url(api_run.run_id), connection=connection, task_names=task_names, _client=client,
    )
    record.write_info(host=connection.endpoint, url=record.url, experiment=experiment)
    print(f"Submitted run {record.id} of pipeline {name!r} (experiment {experiment!r}): {record.url}")
    if not settings.wait:
        return record.refresh()
    try:
        return record.wait(progress=progress)
    except KeyboardInterrupt:  # the run is the cluster's: only the following stops
        raise RunFailed(
            f"Stopped following run {record.id}; it goes on on Kubeflow: {record.url}. Cancel it with "
            f"`%pipeline cancel {record.id}` in the notebook, or `kfmagic cancel {record.id} --host "
            f"{connection.endpoint}` in a shell.", record,
        ) from None


def cancel(connection, run_id):
    """Ask the cluster to stop run `run_id` (its running tasks end CANCELED); returns it, refreshed."""
    with calling(connection, f"canceling run {run_id}"), _quiet_kfp():
        connection.client().terminate_run(run_id)
    return fetch(connection, run_id)


def fetch(connection, run_id):
    """A RemoteRun for any run id on the cluster (`%pipeline status RUN`)."""
    record = RemoteRun(run_id, "", "kfp", {}, {}, url=connection.run_url(run_id), connection=connection)
    with calling(connection, f"reading run {run_id}"):
        api_run = record.client.get_run(run_id)
    record.pipeline = api_run.display_name or ""
    record.params = dict((api_run.runtime_config.parameters or {}) if api_run.runtime_config else {})
    details = api_run.run_details.task_details if api_run.run_details else None
    record.task_names = {task.display_name: task.display_name for task in details or () if task.display_name}
    return record.refresh()
