"""The compiled pipeline run by KFP's own local executor (`kfp.local`), on this machine.

Proves that what would be submitted runs: the plan is compiled to IR YAML exactly as for a
cluster (only without pip installs, since kfp.local's SubprocessRunner(use_venv=False) runs steps
in this environment), then kfp.local executes that IR, one task at a time, in a child process
(`python -m kfmagic.backends.kfp_local`), which keeps kfp.local's global settings and logs out of
the kernel and makes an interrupt stop it. Each step's runtime leaves its result where a local run
does (`.kfmagic/runs/<run-id>/<step>/result.json`); values are read from the artifacts it wrote.
"""

import contextlib
import json
import os
import queue
import re
import shutil
import sys
import time

from .. import component, workspace
from ..compiler import Target, compile_plan, kfp_name, pipeline_arguments
from .base import read_result, start_run, warn_of_random_draws
from .launcher import supervised

PACKAGE_FILE = "pipeline.yaml"
LOG_FILE = "kfp-local.log"
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
    scratch = workspace.private_dir(os.path.join(run_dir, "tmp"), "kfp.local's scratch folder")
    env = {"TMPDIR": scratch, component.RESULT_DIR_ENV: run_dir}  # kfp's launcher makes temp folders
    argv = [sys.executable, "-m", __name__, package, os.path.join(run_dir, "kfp"), json.dumps(pipeline_arguments(params))]
    events, task_output = queue.Queue(), _TaskOutput(plan)
    stopped = f"Run {record.id} interrupted: kfp.local was stopped. Its files are in {run_dir}."
    log = os.fdopen(os.open(os.path.join(run_dir, LOG_FILE), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w")
    with log, _tidied(run_dir, scratch), supervised(record, progress, events, stopped) as launcher:
        launcher.start("kfp-local", argv, workdir, env)
        returncode, open_streams = None, {"stdout", "stderr"}
        while returncode is None or open_streams:
            try:
                kind, _, stream_name, detail = events.get(timeout=0.3)
            except queue.Empty:
                kind = None
            _refresh(steps, run_dir, task_output.ended)
            progress.update(record)
            if kind == "line":
                log.write(detail + "\n")
                found = task_output.step_of(detail)
                if found:
                    progress.output(found[0], "stdout", found[1])
            elif kind == "eof":
                open_streams.discard(stream_name)
            elif kind in ("exited", "failed"):
                returncode = detail if kind == "exited" else 127
            elif launcher.stopped.is_set():
                returncode = returncode if returncode is not None else -9
                break
    _refresh(steps, run_dir)
    failed = any(step.state != "SUCCEEDED" for step in steps.values()) or returncode != 0
    for step in steps.values():
        if step.state == "RUNNING":  # started, never reported: the task process died
            step.state, step.finished = "FAILED", time.time()
            step.error = f"Step {step.name!r} ended without a result; kfp.local's log: {os.path.join(run_dir, LOG_FILE)}"
        elif step.state == "PENDING":
            step.state = "SKIPPED" if failed else step.state
    record.state = "FAILED" if failed else "SUCCEEDED"
    record.finished = time.time()
    progress.finish(record)
    warn_of_random_draws(plan, record)
    return record


@contextlib.contextmanager
def _tidied(run_dir, scratch):
    """However the run ends: kfp.local's scratch gone, and what kfp wrote (the compiled pipeline,
    its artifacts) made private like the rest of the run."""
    try:
        yield
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        workspace.make_private(run_dir)


def _execute(package, pipeline_root, params_json):
    """In the child process: run the compiled IR with kfp.local; exit code 1 if a task failed."""
    import kfp.local
    from kfp import components

    os.dup2(1, 2)  # one stream, in order: which task a line belongs to is told by the lines before it
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root, raise_on_error=True)
    pipeline = components.load_component_from_file(package)
    try:
        pipeline(**json.loads(params_json))
    except RuntimeError as error:  # kfp.local: "Pipeline ... finished with status FAILURE"
        print(error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_execute(*sys.argv[1:4]))
