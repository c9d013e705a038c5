"""The compiled pipeline run by KFP's own local executor (`kfp.local`), on this machine.

Proves that what would be submitted runs: the plan is compiled to IR YAML exactly as for a
cluster (only without pip installs, since kfp.local's SubprocessRunner(use_venv=False) runs steps
in this environment), then kfp.local executes that IR, one task at a time, in a child process
(`python -m kfmagic.backends.kfp_local`), which keeps kfp.local's global settings and logs out of
the kernel and makes an interrupt stop it. Each step's runtime leaves its result where a local run
does (`.kfmagic/runs/<run-id>/<step>/result.json`); values are read from the artifacts it wrote.
A sweep (`run_sweep`) is its compiled `dsl.ParallelFor` pipeline, run the same way.
"""

import contextlib
import dataclasses
import json
import os
import queue
import re
import shutil
import sys
import time
from dataclasses import dataclass

from .. import component, runtime, workspace
from ..compiler import Fanout, Target, compile_plan, kfp_name, pipeline_arguments
from ..errors import SweepInterrupted
from ..store import FolderStore
from ..sweep import swept as sweep_names
from .base import Run, ended, held, interrupted, read_result, start_run, step_runs, tell_failures, warn_of_random_draws
from .launcher import supervised, supervising

PACKAGE_FILE = "pipeline.yaml"
KFP_LOCAL_LOG = "kfp-local.log"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK_START = re.compile(r"Executing task '([^']+)'")


class _TaskOutput:
    """Which step a line of kfp.local's output belongs to, if it is the step's own output.

    kfp.local logs "Executing task 'NAME'" before a task and "... finished with status" after
    it, and indents what the task prints; inside that, kfp's executor logs its own lines and dumps
    its input as JSON, which are not the step's output.
    """

    def __init__(self, plan):
        self.steps = {kfp_name(step.name): step.name for step in plan.steps}
        self.step, self.in_executor_input = None, False
        self.ended = set()  # steps whose every line has been read: their result may be shown now

    def step_of(self, line):
        text = _ANSI.sub("", line)
        if not text.startswith("    "):
            started = _TASK_START.search(text)
            if started or "finished with status" in text:
                if not started and self.step:
                    self.ended.add(self.step)
                self.step = self.steps.get(started.group(1)) if started else None
            return None
        text = text[4:]
        if "Got executor_input:" in text:
            self.in_executor_input = True
        elif self.in_executor_input:
            self.in_executor_input = text != "}"
        elif text.strip() and not text.startswith("[KFP Executor") and self.step:  # kfp.local pads with blank lines
            return self.step, text
        return None


def _refresh(steps, run_dir, ended=None):
    """Step states from the files each step's component writes as it starts and ends; a step's end
    only once its output has all been read (`ended`; None: every step, once kfp.local is done)."""
    for name, step in steps.items():
        out_dir = os.path.join(run_dir, name)
        done = ended is None or name in ended
        result = read_result(out_dir) if step.state in ("PENDING", "RUNNING") and done else None
        if result is not None:
            step.apply_result(result, out_dir)
        elif step.state == "PENDING" and os.path.exists(os.path.join(out_dir, component.STARTED_FILE)):
            step.state, step.started = "RUNNING", os.path.getmtime(os.path.join(out_dir, component.STARTED_FILE))


def run(plan, params, *, workdir, workers, progress, settings):
    """Compile `plan` and run it with kfp.local; returns the Run once kfp.local has finished.

    `workers` is accepted for the common interface: kfp.local runs one task at a time. Of
    `settings` (base.Settings), the image applies.
    """
    record = start_run(plan, params, workdir, "kfp-local")
    run_dir, steps = record.run_dir, record.steps
    package = compile_plan(plan, os.path.join(run_dir, PACKAGE_FILE), Target(image=settings.image, install=False))
    task_output, told = _TaskOutput(plan), set()
    stopped = f"Run {record.id} interrupted: kfp.local was stopped. Its files are in {run_dir}."

    def on_line(line):
        found = task_output.step_of(line)
        if found:
            progress.output(found[0], "stdout", found[1])

    def on_tick():
        _refresh(steps, run_dir, task_output.ended)
        tell_failures(record, progress, told)
        progress.update(record)

    with held(record), _kfp_local(run_dir, package, params) as (events, execute), \
            supervised(record, progress, events, stopped) as launcher:
        returncode = execute(launcher, workdir, on_line, on_tick)
    _refresh(steps, run_dir)
    _conclude(record, returncode)
    tell_failures(record, progress, told)
    ended(record)
    progress.finish(record)
    warn_of_random_draws(plan, record)
    return record


def run_sweep(plan, combinations, per_combination, *, workdir, workers, progress, settings):
    """The sweep compiled as one pipeline, as it would be submitted (the shared steps, then one
    dsl.ParallelFor over the combinations running the `per_combination` steps, `workers` iterations at
    a time), run by kfp.local. Returns one Run per combination (`combinations`: each one's parameter
    values); Ctrl-C stops kfp.local and raises SweepInterrupted carrying them.

    Everything is in one run folder: the package, kfp.local's artifacts and log, each shared step's
    records in `<step>/` and each combination's in `c<N>/<step>/`, where the shared steps' are linked
    too, so that a combination's Run reads its records in one place.
    """
    record = start_run(plan, combinations[0], workdir, "kfp-local")
    swept = sweep_names(combinations)
    fanout = Fanout(tuple({name: values[name] for name in swept} for values in combinations), tuple(per_combination), workers)
    package = compile_plan(
        plan, os.path.join(record.run_dir, PACKAGE_FILE), Target(image=settings.image, install=False), fanout=fanout
    )
    runs = [
        CombinationRun(
            f"{record.id}-c{i + 1}", plan.name, "kfp-local", step_runs(plan), dict(values), run_dir=record.run_dir,
            state="RUNNING", records=os.path.join(record.run_dir, f"c{i + 1}"),
        )
        for i, values in enumerate(combinations)
    ]
    shown = [progress(i) for i in range(len(runs))]

    def on_tick():
        for run, its_progress in zip(runs, shown):
            run.refresh(per_combination)
            its_progress.update(run)

    def stop():
        for run, its_progress in zip(runs, shown):
            run.gather(per_combination)
            if all(step.state == "SUCCEEDED" for step in run.steps.values()):
                _conclude(run, 0)
                its_progress.finish(run)
            else:
                interrupted(run, its_progress, "")
        return SweepInterrupted(f"Sweep interrupted: kfp.local was stopped. Its files are in {record.run_dir}.", runs)

    fixed = {name: value for name, value in combinations[0].items() if name not in swept}
    with held(record), _kfp_local(record.run_dir, package, fixed) as (events, execute), \
            supervising(events, stop) as launcher:
        for run, its_progress in zip(runs, shown):
            its_progress.start(run)
        returncode = execute(launcher, workdir, lambda line: None, on_tick)  # iterations run at once: no telling whose a line is
    for run, its_progress in zip(runs, shown):
        run.gather(per_combination)
        _conclude(run, returncode if any(s.state != "SUCCEEDED" for s in run.steps.values()) else 0)
        ended(run)
        its_progress.finish(run)
    record.state = "SUCCEEDED" if all(run.state == "SUCCEEDED" for run in runs) else "FAILED"
    record.finished = time.time()
    ended(record)
    return runs


@dataclass(repr=False)
class CombinationRun(Run):
    """One combination of a sweep run by kfp.local: in the sweep's run folder (its values are kfp.local's
    artifacts there), its records in `records` (`c<N>/`), the shared steps' in the folder itself."""

    records: str = ""

    def refresh(self, per_combination):
        shared = {name: step for name, step in self.steps.items() if name not in per_combination}
        _refresh(shared, self.run_dir)
        _refresh({name: step for name, step in self.steps.items() if name in per_combination}, self.records)

    def gather(self, per_combination):
        """Final states, and the shared steps' records linked into this combination's folder (`logs`)."""
        self.refresh(per_combination)
        for name in self.steps:
            if name not in per_combination:
                _link_records(os.path.join(self.run_dir, name), os.path.join(self.records, name))

    def _store(self, what):
        return FolderStore(self.records)

    def write_info(self, **extra):
        """The combination's run.json goes in its own folder (the sweep's folder has the sweep's)."""
        workspace.private_dir(self.records, "a combination's records")
        Run.write_info(dataclasses.replace(self, run_dir=self.records), **extra)


def _link_records(source, target):
    """A shared step's result and log, hard-linked into a combination's folder (not its values: the result names them)."""
    for name in (runtime.RESULT_FILE, component.LOG_FILE):
        if os.path.exists(os.path.join(source, name)):
            workspace.private_dir(target, "a combination's records")
            with contextlib.suppress(FileExistsError):
                os.link(os.path.join(source, name), os.path.join(target, name))


def _conclude(record, returncode):
    """The run's state once kfp.local has ended: a step started and never reported has died, one never
    started was skipped (after a failure)."""
    steps = record.steps
    failed = any(step.state != "SUCCEEDED" for step in steps.values()) or returncode != 0
    if returncode != 0 and not any(step.state in ("RUNNING", "FAILED") for step in steps.values()):
        record.error = _kfp_local_failure(record.run_dir, returncode)
    for step in steps.values():
        if step.state == "RUNNING":  # started, never reported: the task process died
            step.state, step.finished = "FAILED", time.time()
            step.error = f"Step {step.name!r} ended without a result; kfp.local's log: {os.path.join(record.run_dir, KFP_LOCAL_LOG)}"
        elif step.state == "PENDING":
            step.state = "SKIPPED" if failed else step.state
    record.state = "FAILED" if failed else "SUCCEEDED"
    record.finished = time.time()


def _kfp_local_failure(run_dir, returncode):
    """What kfp.local said when it stopped before any step failed (it could not start the pipeline)."""
    path = os.path.join(run_dir, KFP_LOCAL_LOG)
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            said = [line.strip() for line in file if line.strip()]
    except OSError:
        said = []
    last = _ANSI.sub("", said[-1]) if said else "it printed nothing"
    return f"kfp.local stopped (exit status {returncode}) before any step failed: {last} Its log: {path}"


@contextlib.contextmanager
def _kfp_local(run_dir, package, params):
    """(the queue a launcher reports on, `execute(launcher, workdir, on_line, on_tick)`): kfp.local running
    `package` with `params` in a process that launcher starts, followed to its end (each line of its
    output to its log and `on_line`, `on_tick()` after every event), returning its exit status. Its
    scratch and log in `run_dir`, tidied however it ends."""
    scratch = workspace.private_dir(os.path.join(run_dir, "tmp"), "kfp.local's scratch folder")
    env = {"TMPDIR": scratch, component.RESULT_DIR_ENV: run_dir}  # kfp's launcher makes temp folders
    argv = [sys.executable, "-m", __name__, package, os.path.join(run_dir, "kfp"), json.dumps(pipeline_arguments(params))]
    events = queue.Queue()
    log = os.fdopen(os.open(os.path.join(run_dir, KFP_LOCAL_LOG), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w")

    def execute(launcher, workdir, on_line, on_tick):
        launcher.start("kfp-local", argv, workdir, env)
        returncode, open_streams = None, {"stdout", "stderr"}
        while returncode is None or open_streams:
            try:
                kind, _, stream_name, detail = events.get(timeout=0.3)
            except queue.Empty:
                kind = None
            on_tick()
            if kind == "line":
                log.write(detail + "\n")
                on_line(detail)
            elif kind == "eof":
                open_streams.discard(stream_name)
            elif kind in ("exited", "failed"):
                returncode = detail if kind == "exited" else 127
            elif launcher.stopped.is_set():
                return returncode if returncode is not None else -9
        return returncode

    with log, _tidied(run_dir, scratch):
        yield events, execute


@contextlib.contextmanager
def _tidied(run_dir, scratch):
    """However the run ends: kfp.local's scratch gone, and what kfp wrote (the compiled pipeline,
    its artifacts) made private like the rest of the run."""
    try:
        yield
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        workspace.make_private(run_dir)


def _as_a_pipeline(package):
    """The package's text, loadable as its pipeline: kfp loads the component named like the pipeline
    instead of the pipeline (`comp-kde` for pipeline `kde`), so a step named like the pipeline is
    given another pipeline name here (kfp.local shows it; the tasks keep theirs)."""
    import yaml
    from kfp.dsl.utils import sanitize_component_name

    with open(package) as file:
        documents = list(yaml.safe_load_all(file))
    info = documents[0]["pipelineInfo"]
    while sanitize_component_name(info["name"]) in documents[0]["components"]:
        info["name"] += "-pipeline"
    return yaml.safe_dump_all(documents, sort_keys=False)


def _execute(package, pipeline_root, params_json):
    """In the child process: run the compiled IR with kfp.local; exit code 1 if a task failed."""
    import kfp.local
    from kfp import components

    os.dup2(1, 2)  # one stream, in order: which task a line belongs to is told by the lines before it
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root, raise_on_error=True)
    pipeline = components.load_component_from_text(_as_a_pipeline(package))
    try:
        pipeline(**json.loads(params_json))
    except RuntimeError as error:  # kfp.local: "Pipeline ... finished with status FAILURE"
        print(error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_execute(*sys.argv[1:4]))
