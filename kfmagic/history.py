"""Looking back at a notebook's runs: list them, compare them, prune old ones, and pull what a step
saw into the kernel to debug it there.

A notebook's runs are the folders of `.kfmagic/runs/` in its folder (the kernel's working directory)
whose run.json names its pipeline: run.json records the pipeline's name, and the runs folder is the
notebook's folder's. Two notebooks of one folder that share a pipeline name share their runs.
Cluster submissions are listed from their folder (runner kfp), with what this machine has of them.

Space is counted by inode: a step reused from the cache holds hard links to an earlier run's value
files, so a file is counted once however many runs link to it, and removing a run frees only the
files no other run links to. A run is running while the process that runs it holds a lock on its
folder (base.is_running): a run whose process died is not, whatever its run.json says.
"""

import base64
import html
import io
import json
import os
import re
import shutil
import time

from . import cache, display, workspace
from .backends.base import FINAL_STATES, is_running, open_run_dir, read_info, run_folder
from .component import LOG_FILE
from .errors import KfmagicError

RECENT = 5  # runs `compare` shows when none is named
_STAMP = re.compile(r"-(\d{8}-\d{6})-(.+)$")  # what base.new_run_dir puts after the pipeline's name
_WORDS = {"SUBMITTED": "submitted", "STOPPED": "stopped"}  # the listing's own states, besides KFP's


# -- finding runs -------------------------------------------------------------------------------


def short_id(run_id, pipeline):
    """What identifies a run among its pipeline's: its id after `<pipeline>-<date>-<time>-`."""
    found = _STAMP.match(run_id[len(pipeline):]) if run_id.startswith(pipeline) else None
    return found.group(2) if found else run_id


def _started(run, folder):
    """When a run started: its first step, else the date and time in its id, else its folder's time."""
    times = [step.started for step in run.steps.values() if step.started]
    if times:
        return min(times)
    found = _STAMP.search(os.path.basename(folder))
    if found:
        return time.mktime(time.strptime(found.group(1), "%Y%m%d-%H%M%S"))
    return os.path.getmtime(folder)


def _opened(folder):
    """The run in `folder` as the listing shows it: a local run is RUNNING while its process holds its
    lock, else what its files say (STOPPED if they say it runs: its process died); a submission is
    SUBMITTED unless every step's record was read back here."""
    run = open_run_dir(folder)
    run.run_dir, run.folder_id = folder, os.path.basename(folder)
    if run.runner == "kfp":
        done = all(step.state in FINAL_STATES for step in run.steps.values())
        run.state = run.state if done and run.steps else "SUBMITTED"
        run.started, run.finished = _started(run, folder), run.finished if done else None
    elif is_running(folder):  # a step may have failed while the others go on
        run.state, run.finished = "RUNNING", None
    elif run.state == "RUNNING":
        run.state, run.finished = "STOPPED", run.finished or run.started
    return run


def notebook_runs(workdir, pipeline):
    """([Run, ...] of `pipeline` under `workdir`, newest first; [folder, ...] that are not readable runs)."""
    runs_dir = os.path.join(workdir, workspace.RUNS_DIR)
    runs, unreadable = [], []
    for name in sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else ():
        folder = run_folder(workdir, name)
        if folder is None or os.path.basename(folder) != name:
            continue
        try:
            info = read_info(folder)
        except KfmagicError:
            unreadable.append(folder)
            continue
        if info["pipeline"] == pipeline:
            runs.append(_opened(folder))
    runs.sort(key=lambda run: run.started, reverse=True)
    return runs, unreadable


def find_run(workdir, pipeline, run_id, last_run=None, remote=None):
    """Run RUN_ID (its id, or the short id `runs` shows), else the kernel's last run, else the newest run
    of `pipeline` here; KfmagicError saying what there is otherwise. `remote` (given when a cluster is
    configured) opens a cluster run, by its submission's folder here or by the cluster's id."""
    if run_id is not None:
        folder = run_folder(workdir, run_id)
        if last_run is not None and folder is not None and last_run.run_dir == folder:
            return last_run
        if remote is not None and (folder is None or read_info(folder)["runner"] == "kfp"):
            return remote(os.path.basename(folder) if folder else run_id)
        if folder is None:
            raise KfmagicError(f"No run {run_id!r} among the runs kept in {workdir}. `%pipeline runs` lists this notebook's runs.")
        return _opened(folder)
    if last_run is not None:
        return last_run
    runs, _ = notebook_runs(workdir, pipeline)
    if not runs:
        raise KfmagicError(f"Pipeline {pipeline!r} has no run in {os.path.join(workdir, workspace.RUNS_DIR)} yet.")
    return runs[0]


# -- sizes --------------------------------------------------------------------------------------


def _inodes(folders):
    """{(device, inode): [links found under `folders`, links it has, bytes on disk]}, links not
    followed. A folder has one link here (its st_nlink counts its subfolders' `..`)."""
    found = {}
    for top in folders:
        for folder, _, files in os.walk(top):
            for path in [folder, *(os.path.join(folder, name) for name in files)]:
                try:
                    info = os.lstat(path)
                except OSError:
                    continue  # removed meanwhile
                links = 1 if path == folder else info.st_nlink
                entry = found.setdefault((info.st_dev, info.st_ino), [0, links, info.st_blocks * 512])
                entry[0] += 1
    return found


def disk_usage(folders):
    """Bytes the files under `folders` take on disk, each file once however many links it has."""
    return sum(size for _, _, size in _inodes(folders).values())


def freed_by_removing(folders):
    """Bytes removing `folders` frees: the files none of whose links lie elsewhere (another run's)."""
    return sum(size for found, links, size in _inodes(folders).values() if found >= links)


def _size(number):
    """Bytes in words: 512 bytes, 1.8 MB."""
    if number < 1000:
        return f"{number} bytes"
    for unit in ("KB", "MB", "GB", "TB"):
        number /= 1000
        if number < 1000 or unit == "TB":
            return f"{number:.1f} {unit}"


# -- runs ---------------------------------------------------------------------------------------


def _metric_values(run):
    """{label: value} of a run's metrics; a metric two steps report is labelled `step.metric`."""
    counts = {}
    for metrics in run.metrics.values():
        for name in metrics:
            counts[name] = counts.get(name, 0) + 1
    return {
        (name if counts[name] == 1 else f"{step}.{name}"): value
        for step, metrics in run.metrics.items() for name, value in metrics.items()
    }


def _elapsed(seconds):
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _state_word(run):
    return _WORDS.get(run.state) or display._STATE_WORDS.get(run.state, run.state.lower())


def _params_text(params):
    return ", ".join(f"{name}={value!r}" for name, value in params.items()) or "-"


def _metrics_text(run):
    return ", ".join(f"{name}={value:.4g}" for name, value in _metric_values(run).items()) or "-"


class RunsView:
    """`%pipeline runs`: a notebook's runs, newest first, and how much room its runs folder takes."""

    HEADERS = ["run", "runner", "state", "started", "time", "params", "metrics"]

    def __init__(self, workdir, pipeline):
        self.pipeline, self.folder = pipeline, os.path.join(workdir, workspace.RUNS_DIR)
        self.runs, self.unreadable = notebook_runs(workdir, pipeline)
        self.size = disk_usage([self.folder]) if os.path.isdir(self.folder) else 0

    def _cells(self, run, run_id):
        duration = _elapsed(run.finished - run.started) if run.finished else ""
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started))
        return [run_id, run.runner, _state_word(run), started, duration, _params_text(run.params), _metrics_text(run)]

    def _title(self):
        return f"runs of {display.pipeline_title(self.pipeline)}, newest first: {len(self.runs)}"

    def _footer(self):
        lines = [
            f"{self.folder} takes {_size(self.size)} on disk (all its runs; a value reused from the cache is "
            "counted once). `%pipeline prune --keep N` (`kfmagic prune NB --keep N`) removes older runs."
        ]
        if self.unreadable:
            lines.append(
                f"Not runs kfmagic can read (no readable run.json), left alone: "
                f"{', '.join(os.path.basename(folder) for folder in self.unreadable)}."
            )
        return lines

    def __repr__(self):
        rows = [self._cells(run, short_id(run.folder_id, self.pipeline)) for run in self.runs]
        table = display._table(self.HEADERS, rows) if rows else "(none yet: `%pipeline run` makes one)"
        return "\n".join([self._title(), table, *map(display._wrap, self._footer())])

    def _repr_html_(self):
        rows = []
        for run in self.runs:
            run_id, runner, state, *rest = (html.escape(cell) for cell in self._cells(run, run.folder_id))
            rows.append([("", f"<code>{run_id}</code>"), ("", runner), (" class='kfm-st'", state), *(("", cell) for cell in rest)])
        classes = [f" class='kfm-{html.escape(_state_word(run))}'" for run in self.runs]  # the state's colour
        footer = "".join(f"<div class='kfm-note'>{html.escape(line)}</div>" for line in self._footer())
        table = display._html_table(self.HEADERS, rows, classes)
        return display.html_block(f"<b>{html.escape(self._title())}</b>{table}{footer}")


# -- compare ------------------------------------------------------------------------------------


class Comparison:
    """Runs side by side: a row per parameter and per metric, a column per run (oldest first).
    `data` holds the values: {"runs": [id, ...], "params": {name: {id: value}}, "metrics": {...}}."""

    def __init__(self, runs, pipeline):
        self.runs, self.pipeline = list(runs), pipeline
        ids = [run.id for run in self.runs]
        params, metrics = {}, {}
        for run in self.runs:
            for name, value in run.params.items():
                params.setdefault(name, {})[run.id] = value
            for name, value in _metric_values(run).items():
                metrics.setdefault(name, {})[run.id] = value
        self.data = {"runs": ids, "params": params, "metrics": metrics}

    def _rows(self, label):
        ids = self.data["runs"]
        rows = [["state", *(_state_word(run) for run in self.runs)]]
        for name, values in self.data["params"].items():
            rows.append([f"{name} (param)", *(repr(values[i]) if i in values else "-" for i in ids)])
        for name, values in self.data["metrics"].items():
            rows.append([name, *(f"{values[i]:.4g}" if i in values else "-" for i in ids)])
        return [label(run) for run in self.runs], rows

    def __repr__(self):
        heads, rows = self._rows(lambda run: short_id(run.id, self.pipeline))
        return f"{display.pipeline_title(self.pipeline)}: {len(self.runs)} runs compared\n" + display._table(["", *heads], rows)

    def _repr_html_(self):
        heads, rows = self._rows(lambda run: short_id(run.id, self.pipeline))
        cells = [[("", html.escape(cell)) for cell in row] for row in rows]
        ids = ", ".join(self.data["runs"])
        return display.html_block(
            f"<b>{html.escape(display.pipeline_title(self.pipeline))}: {len(self.runs)} runs compared</b>"
            + display._html_table(["", *heads], cells) + f"<div class='kfm-note'>runs {html.escape(ids)}</div>"
            + self._picture()
        )

    def _picture(self):
        """The plot as an inline PNG, when matplotlib is installed and there are metrics to plot."""
        if not self.data["metrics"]:
            return ""
        try:
            figure = self.plot()
        except ImportError:
            return "<div class='kfm-note'>(install matplotlib to see the metrics plotted)</div>"
        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=80)
        return f"<div><img alt='metrics by run' src='data:image/png;base64,{base64.b64encode(png.getvalue()).decode()}'/></div>"

    def plot(self):
        """A matplotlib Figure: a group of bars per metric, a bar per run (matplotlib imported only here)."""
        from matplotlib.figure import Figure

        metrics = self.data["metrics"]
        figure = Figure(figsize=(min(2 + 1.2 * len(metrics) * max(1, len(self.runs)) / 2, 12), 3.2))
        axes = figure.add_subplot()
        width = 0.8 / max(1, len(self.runs))
        for number, run in enumerate(self.runs):
            values = [metrics[name].get(run.id, 0) for name in metrics]
            positions = [index + number * width for index in range(len(metrics))]
            axes.bar(positions, values, width, label=short_id(run.id, self.pipeline))
        axes.set_xticks([index + width * (len(self.runs) - 1) / 2 for index in range(len(metrics))], list(metrics))
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
        figure.tight_layout()
        return figure


def compare(workdir, pipeline, run_ids=(), last_run=None, remote=None):
    """A Comparison of runs RUN_IDS (short ids too; `remote`: as `find_run`), or of the RECENT newest
    runs of `pipeline` here."""
    if run_ids:
        return Comparison([find_run(workdir, pipeline, run_id, last_run, remote) for run_id in run_ids], pipeline)
    runs, _ = notebook_runs(workdir, pipeline)
    if not runs:
        raise KfmagicError(f"compare: pipeline {pipeline!r} has no run in {os.path.join(workdir, workspace.RUNS_DIR)} yet.")
    return Comparison(reversed(runs[:RECENT]), pipeline)


# -- prune --------------------------------------------------------------------------------------


class Pruned:
    """What `prune` removed (or, dry, would remove), what it kept and why, and the room it freed."""

    def __init__(self, removed, kept, freed, dry_run, pipeline):
        self.removed, self.kept, self.freed, self.dry_run, self.pipeline = removed, kept, freed, dry_run, pipeline

    def __repr__(self):
        verb = "would remove" if self.dry_run else "removed"
        lines = [
            f"prune {display.pipeline_title(self.pipeline)}: {verb} {len(self.removed)} run"
            f"{'' if len(self.removed) == 1 else 's'}, freeing {_size(self.freed)}"
            f"{' (dry run: nothing removed)' if self.dry_run else ''}."
        ]
        lines += [f"  {verb} {run_id}" for run_id in self.removed]
        lines += [f"  kept {run_id}: {why}" for run_id, why in self.kept]
        return "\n".join(map(display._wrap, lines))


def prune(workdir, pipeline, keep, dry_run=False, last_run=None):
    """Remove the folders of `pipeline`'s runs here but the `keep` newest, never a running one nor the
    kernel's last run; cluster submissions stay. Cache entries and logs of kept runs that reused a
    removed run's outputs move to the kept run, so what it reused still loads and is reused again."""
    if keep is None or keep < 0:
        raise KfmagicError(f"prune --keep {keep}: say how many of the newest runs to keep, 0 or more (--keep 5).")
    runs, _ = notebook_runs(workdir, pipeline)
    here = [run for run in runs if run.runner != "kfp"]
    kept, remove = [], []
    for run in here[keep:]:
        why = (
            "it is running" if run.state == "RUNNING"  # `_opened` asked its lock
            else "it is the kernel's last run" if last_run is not None and last_run.run_dir == run.run_dir
            else None
        )
        if why:
            kept.append((run.folder_id, why))
        else:
            remove.append(run)
    folders = [run.run_dir for run in remove]
    freed = freed_by_removing(folders)
    if not dry_run:
        staying = [run for run in runs if run.run_dir not in folders]
        for run in remove:
            _hand_over(workdir, run, staying)
            with workspace.writing(f"the folder of run {run.folder_id} (removing it)", run.run_dir):
                shutil.rmtree(run.run_dir)
    return Pruned([run.folder_id for run in remove], kept, freed, dry_run, pipeline)


def _hand_over(workdir, gone, staying):
    """Before run `gone` is removed: each step a staying run reused from it gets that step's log, and
    the cache entries naming `gone` name the staying run that holds the same files (else are dropped)."""
    heirs = {}
    for run in staying:
        for step in run.steps.values():
            if step.cached_from == gone.id and run.run_dir:
                heirs.setdefault(step.name, run)
                _copy_log(gone, run, step.name)
    for path, entry in cache.entries(workdir):
        if entry.get("run") != gone.id:
            continue
        step = os.path.basename(str(entry.get("out_dir", "")))
        heir = heirs.get(step)
        if heir is not None:
            cache.record(workdir, os.path.basename(path)[: -len(".json")], heir.id, os.path.join(heir.run_dir, step), entry["result"],
                         entry.get("files"))
        else:
            cache.forget(path)


def _copy_log(gone, heir, step):
    """The log of `step` in run `gone`, into the same step of `heir` (which reused its outputs)."""
    source, target = os.path.join(gone.run_dir, step, LOG_FILE), os.path.join(heir.run_dir, step, LOG_FILE)
    if not os.path.isfile(source) or os.path.lexists(target):
        return
    with open(source, encoding="utf-8", errors="replace") as file:
        text = file.read()
    note = f"(step {step!r} reused the outputs of run {gone.id}, since pruned: its log from that run)\n"
    workspace.write_private(target, note + text, f"the log of step {step!r}")


# -- pull ---------------------------------------------------------------------------------------


class Pulled:
    """What `pull` set: `values` ({name: value}) step STEP saw in `run`, and where each came from."""

    def __init__(self, run, step, values, told):
        self.run, self.step, self.values, self.told = run, step, values, told

    def __repr__(self):
        if not self.told:
            return (
                f"Step {self.step!r} of run {self.run.id} read no other step's value and no parameter: nothing to "
                "pull. Re-run its cell."
            )
        width = max(len(name) for name, _ in self.told)
        lines = [f"Set in the kernel what step {self.step!r} saw in run {self.run.id}:"]
        lines += [f"  {name.ljust(width)}  {where}" for name, where in self.told]
        lines.append(f"Re-run the cell of step {self.step!r} to run it here.")
        return "\n".join(lines)


def pull(run, step, plan=None):
    """A Pulled of what step STEP saw in `run`: its inputs, loaded from its upstream steps' saved
    values, and its parameters. What the step read is its spec in the run's folder (local runs), else
    the current plan's step of that name. Everything is loaded before anything is handed over."""
    if step not in run.steps:
        raise KfmagicError(f"pull {step}: run {run.id} has no step {step!r}. Steps: {', '.join(run.steps) or 'none'}.")
    producers, params = _what_it_read(run, step, plan)
    values, told = {}, []
    for var, producer in producers.items():
        values[var] = run.load(var, step=producer)
        told.append((var, f"from step {producer!r}"))
    for name, value in params.items():
        values[name] = value
        told.append((name, f"parameter, {value!r}"))
    return Pulled(run, step, values, told)


def _what_it_read(run, step, plan):
    """({input: producing step}, {param: value}) of `step` in `run`."""
    spec = _spec(run, step)
    if spec is not None:
        return spec["producers"], spec["params"]
    planned = {s.name: s for s in plan.steps} if plan is not None else {}
    if step not in planned:
        raise KfmagicError(
            f"pull {step}: run {run.id} kept no record of what step {step!r} read, and the notebook's pipeline "
            "has no step of that name now to tell it."
        )
    found = planned[step]
    return dict(found.inputs), {name: run.params[name] for name in found.params if name in run.params}


def _spec(run, step):
    """The spec a local run wrote for `step` ({producers, params}), if it is there and well formed."""
    path = os.path.join(run.run_dir or "", step, "spec.json")
    try:
        with open(path, encoding="utf-8") as file:
            spec = json.load(file)
    except (OSError, ValueError):
        return None
    producers, params = spec.get("producers"), spec.get("params")
    good = (
        isinstance(producers, dict) and isinstance(params, dict)
        and all(isinstance(var, str) and var.isidentifier() and producer in run.steps for var, producer in producers.items())
        and all(isinstance(name, str) and name.isidentifier() for name in params)
    )
    return {"producers": producers, "params": params} if good else None
