"""Which packages a step's container installs: what its code imports, pinned to the kernel's versions.

A value pickled in the kernel's environment loads only where the same libraries are, at the same
versions; so a step installs exactly the distributions providing the modules its prelude and cells
import, at the versions installed here, plus what marshalling needs.
"""

import contextlib
import functools
import importlib.metadata
import json
import os
import re
import sys

from . import workspace
from .errors import KfmagicError

# The runtime's serde needs these in every step, whatever the step's code imports.
MARSHALLING = ("cloudpickle", "dill")
# Needed by a step whose code has `%` or `!` lines: the runtime runs them through IPython.
SHELL = ("ipython",)
_NAME_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _installed_stamp():
    """When the installed distributions last changed, as far as a lookup here can tell: the
    modification times of the folders on sys.path (installing, upgrading or removing a distribution
    adds or removes its .dist-info folder in one of them). `!pip install -U` in a kernel changes it."""
    stamps = []
    for entry in sys.path:
        with contextlib.suppress(OSError):
            if entry:  # the working directory changes with every file a notebook writes
                stamps.append((entry, os.stat(entry).st_mtime_ns))
    return tuple(stamps)


@functools.lru_cache(maxsize=4)
def _providers(stamp, kept_in=None):
    """{top-level module: [distributions providing it]}: importlib.metadata's map for the installed
    distributions `stamp` stands for, ~0.1 s to build; kept in this process, and in the file `kept_in`
    (if given) for the processes after it: each `kfmagic run` is a new one."""
    stamped = json.loads(json.dumps(stamp))  # as the file holds it
    kept = _read_kept(kept_in)
    if kept.get("stamp") == stamped:
        return kept["providers"]
    providers = importlib.metadata.packages_distributions()
    if kept_in is not None:
        with contextlib.suppress(KfmagicError):  # not kept: the next process builds it again
            workspace.private_dir(os.path.dirname(kept_in), "the cache")
            workspace.write_private_json(kept_in, {"stamp": stamped, "providers": providers}, "the cache")
    return providers


def _read_kept(path):
    """What `_providers` kept in `path`: {} if there is none, or it is not what it writes."""
    if path is None:
        return {}
    try:
        with open(path) as file:
            kept = json.load(file)
        well_formed = all(
            isinstance(names, list) and all(isinstance(name, str) for name in names) for names in kept["providers"].values()
        )
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}
    return kept if well_formed else {}


def normalize(name):
    """PEP 503 name: how pip compares distribution names."""
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.lru_cache(maxsize=None)
def _pinned(distribution, stamp):
    return f"{distribution}=={importlib.metadata.version(distribution)}"


def requirements(modules, extra=(), shell=False, kept_in=None):
    """(pinned requirements, modules no installed distribution provides) for a step.

    `modules` are top-level module names the step imports; standard library modules need nothing.
    `extra` (the step's --packages) adds requirements and replaces a pinned one of the same name.
    `kept_in`: a file where the map of modules to distributions is kept for the next process.
    """
    wanted, unknown, stamp = {}, [], _installed_stamp()  # looked up again once that changes
    providers = _providers(stamp, kept_in)
    for module in modules:
        if module in sys.stdlib_module_names or module in sys.builtin_module_names:
            continue
        distributions = providers.get(module)
        if not distributions:
            unknown.append(module)
            continue
        for distribution in distributions:
            wanted.setdefault(normalize(distribution), _pinned(distribution, stamp))
    for distribution in (*MARSHALLING, *(SHELL if shell else ())):
        wanted.setdefault(normalize(distribution), _pinned(distribution, stamp))
    for requirement in extra:
        match = _NAME_RE.match(requirement)
        wanted[normalize(match.group(1)) if match else requirement] = requirement
    return sorted(wanted.values(), key=str.lower), unknown
