"""Which packages a step's container installs: what its code imports, pinned to the kernel's versions.

A value pickled in the kernel's environment loads only where the same libraries are, at the same
versions; so a step installs exactly the distributions providing the modules its prelude and cells
import, at the versions installed here, plus what marshalling needs.
"""

import contextlib
import functools
import importlib.metadata
import os
import re
import sys

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


@functools.lru_cache(maxsize=1)
def _providers(stamp):
    return importlib.metadata.packages_distributions()


def normalize(name):
    """PEP 503 name: how pip compares distribution names."""
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.lru_cache(maxsize=None)
def _pinned(distribution, stamp):
    return f"{distribution}=={importlib.metadata.version(distribution)}"


def requirements(modules, extra=(), shell=False):
    """(pinned requirements, modules no installed distribution provides) for a step.

    `modules` are top-level module names the step imports; standard library modules need nothing.
    `extra` (the step's --packages) adds requirements and replaces a pinned one of the same name.
    """
    wanted, unknown, stamp = {}, [], _installed_stamp()  # looked up again once that changes
    for module in modules:
        if module in sys.stdlib_module_names or module in sys.builtin_module_names:
            continue
        distributions = _providers(stamp).get(module)
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
