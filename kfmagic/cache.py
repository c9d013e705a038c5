"""One cache for every local run: a step whose inputs are what they were in an earlier run is not
run again; its outputs are reused.

A step's key is a hash of everything that decides what it saves: its code, the prelude, the values
of the parameters it reads, its options, what it must save, the content of each of its inputs (the
digest its producer recorded), the size and modification time of the files its code reads (by a
literal path, files.py), the versions of the packages its code and the prelude import (and the text
of local modules they import), and Python's version. A step whose code gives random or
time-dependent results is still reused by that key, as Kubeflow Pipelines caches.

An entry (`.kfmagic/cache/<key>.json`) names the run and step whose outputs it is; reusing it links
those files into the new run's step folder — a hard link, never a copy of a large value — and the
step's result says which run it came from. An entry whose files are gone (a pruned run) is a miss,
and so is one whose step wrote a file (by a literal path) that is gone or was written since.
"""

import hashlib
import json
import os
import sys

from . import runtime, workspace
from .analysis import AnalysisError, analyze
from .files import step_paths
from .modules import module_source
from .packages import requirements

CACHE_DIR = os.path.join(workspace.KFMAGIC_DIR, "cache")
PACKAGES_FILE = os.path.join(CACHE_DIR, "packages.json")  # which distribution provides which module
_FORMAT = 2  # bumped when what a key covers changes


def step_key(plan, step, params, inputs, folder):
    """The cache key of `step` of `plan` run with `params`; `inputs`: {var: its value's digest}."""
    codes = [part.code for part in (*plan.prelude, *step.parts)]
    modules = []
    for code in codes:
        try:
            modules += analyze(code).imports
        except AnalysisError:
            continue  # the plan has reported it
    pinned, local = requirements(dict.fromkeys(modules), kept_in=os.path.join(folder, PACKAGES_FILE))
    described = {
        "format": _FORMAT,
        "python": sys.version,
        "code": codes,
        "params": {name: params[name] for name in step.params},
        "options": step.options,
        "saves": [list(step.outputs), list(step.keep), list(step.metrics)],
        "inputs": inputs,
        "packages": pinned,
        "local": {module: module_source(module, folder) for module in local},
        "files": file_stats(step, folder),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def file_stats(step, folder, written=False):
    """{path: [size, modification time]} of the files the step's code reads (or, `written`, writes)
    that exist now. In a key, taken once its upstream steps have written theirs: a file written
    anew makes the step run again. In an entry, what the step wrote: reused only while they stand."""
    found = {}
    for path in step_paths([part.code for part in step.parts])[1 if written else 0]:
        stat = _stat(os.path.join(folder, path))
        if stat is not None:
            found[path] = stat
    return found


def _stat(path):
    """[size, modification time] of the file at `path`, None if there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _entry_path(workdir, key):
    return os.path.join(workdir, CACHE_DIR, f"{key}.json")


def lookup(workdir, key):
    """The entry for `key` whose value files are all still there, else None."""
    try:
        with open(_entry_path(workdir, key)) as file:
            entry = json.load(file)
        saved = entry["result"]["saved"]
        out_dir = entry["out_dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all(os.path.isfile(runtime.output_path(out_dir, var)) for var in saved):
        return None
    if any(_stat(os.path.join(workdir, path)) != stat for path, stat in dict(entry.get("files") or {}).items()):
        return None  # a file the step wrote is gone or was written since: top to bottom, the step writes it
    return entry


def reuse(entry, out_dir):
    """The cached step's result, its value files linked into `out_dir`; None if they cannot be."""
    result = dict(entry["result"], cached_from=entry["run"])
    workspace.private_dir(os.path.join(out_dir, runtime.OUTPUTS_DIR), "a step's outputs")
    try:
        for var in result["saved"]:
            target = runtime.output_path(out_dir, var)
            if os.path.lexists(target):
                os.remove(target)
            os.link(runtime.output_path(entry["out_dir"], var), target)
    except OSError:
        return None  # gone meanwhile, or another file system: run the step
    workspace.write_private_json(os.path.join(out_dir, runtime.RESULT_FILE), result, "a reused step's result")
    return result


def record(workdir, key, run_id, out_dir, result, files=None):
    """Remember that `result` (a step's, in `out_dir` of run `run_id`) is what `key` gives; `files`:
    the step's `file_stats` of what it wrote."""
    folder = workspace.private_dir(os.path.join(workdir, CACHE_DIR), "kfmagic's cache")
    entry = {"run": run_id, "out_dir": out_dir, "result": result, "files": files or {}}
    workspace.write_private_json(os.path.join(folder, f"{key}.json"), entry, "a cache entry")


def entries(workdir):
    """[(path, entry)] of every readable cache entry here."""
    folder = os.path.join(workdir, CACHE_DIR)
    found = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        path = os.path.join(folder, name)
        try:
            with open(path) as file:
                entry = json.load(file)
        except (OSError, ValueError):
            continue
        if name.endswith(".json") and isinstance(entry, dict):
            found.append((path, entry))
    return found


def forget(path):
    """Drop the cache entry at `path` (its run is gone: it would only ever miss)."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
