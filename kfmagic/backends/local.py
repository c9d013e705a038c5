"""The embedded default: every step in a fresh Python process on this machine, independent steps
in parallel, values passed as files under `.kfmagic/runs/<run-id>/` in the working directory.
"""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque

from .. import runtime
from .base import interrupted, read_result, start_run

_NOT_RUN = ("FAILED", "SKIPPED", "CANCELED")


def write_specs(plan, params, run_dir):
    """One runtime spec per step: what it runs, where its inputs are, what it must save."""
    prelude = [vars(part) for part in plan.prelude]
    paths = {}
    for step in plan.steps:
        out_dir = os.path.join(run_dir, step.name)
        os.makedirs(out_dir, exist_ok=True)
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
        with open(paths[step.name], "w") as file:
            json.dump(spec, file)
    return paths


def pump_lines(name, stream_name, pipe, events):
    for raw in iter(pipe.readline, b""):
        events.put(("line", name, stream_name, raw.decode("utf-8", "replace").rstrip("\n")))
    pipe.close()
    events.put(("eof", name, stream_name, None))


def step_env():
    """The step process finds kfmagic even when the kernel imported it from a source checkout."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), package_parent) if p)
    return env


def stop_process(process):
    """Terminate a step's whole process group, then kill it if it does not go."""
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        if grace is None:
            process.wait()
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _read_result(step_run, process, out_dir, stderr_tail):
    """Fill a finished StepRun from the result file its runtime wrote (or from how it died)."""
    step_run.finished = time.time()
    if process.returncode < 0:
        sig = signal.Signals(-process.returncode).name
        hint = " (the system may have run out of memory)" if sig == "SIGKILL" else ""
        step_run.state, step_run.error = "FAILED", f"Step {step_run.name!r} was killed by {sig}{hint}."
        return
    result = read_result(out_dir)
    if result is None:
        tail = "\n".join(stderr_tail)
        step_run.state = "FAILED"
        step_run.error = f"Step {step_run.name!r} exited with code {process.returncode} before reporting a result.\n{tail}"
        return
    step_run.apply_result(result, out_dir)


def run(plan, params, *, workdir, workers, progress, settings):
    """Execute `plan` with `params`; returns the Run once every step has ended.

    `settings` (base.Settings) is accepted for the common interface: nothing in it applies here.
    """
    record = start_run(plan, params, workdir, "local")
    run_id, run_dir, steps = record.id, record.run_dir, record.steps
    specs = write_specs(plan, params, run_dir)
    events = queue.Queue()
    pending = list(plan.steps)
    running = {}  # name -> (process, open streams, last lines of stderr)
    env = step_env()
    progress.start(record)
    try:
        while pending or running:
            for step in list(pending):
                upstream = [steps[name].state for name in step.upstream]
                if any(state in _NOT_RUN for state in upstream):
                    steps[step.name].state = "SKIPPED"
                    pending.remove(step)
                    progress.update(record)
                elif len(running) < workers and all(state == "SUCCEEDED" for state in upstream):
                    process = subprocess.Popen(
                        [sys.executable, "-m", "kfmagic.runtime", specs[step.name]],
                        cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                    )
                    for stream_name, pipe in (("stdout", process.stdout), ("stderr", process.stderr)):
                        threading.Thread(target=pump_lines, args=(step.name, stream_name, pipe, events), daemon=True).start()
                    running[step.name] = (process, {"stdout", "stderr"}, deque(maxlen=10))
                    steps[step.name].state, steps[step.name].started = "RUNNING", time.time()
                    pending.remove(step)
                    progress.update(record)
            try:
                kind, name, stream_name, text = events.get(timeout=0.5)
            except queue.Empty:
                progress.update(record)
                continue
            process, open_streams, stderr_tail = running[name]
            if kind == "line":
                if stream_name == "stderr":
                    stderr_tail.append(text)
                progress.output(name, stream_name, text)
                continue
            open_streams.discard(stream_name)
            if not open_streams:
                process.wait()
                del running[name]
                _read_result(steps[name], process, os.path.dirname(specs[name]), stderr_tail)
                progress.update(record)
    except KeyboardInterrupt:
        for process, _, _ in running.values():
            stop_process(process)
        raise interrupted(
            record, progress,
            f"Run {run_id} interrupted: its step processes were stopped. Outputs of finished steps are "
            f"kept in {run_dir}; in the kernel, the run is kfmagic.pipeline().last_run.",
        ) from None
    record.state = "SUCCEEDED" if all(s.state == "SUCCEEDED" for s in steps.values()) else "FAILED"
    record.finished = time.time()
    progress.finish(record)
    return record
