"""Backends run a Plan and return a Run; each is one module behind the same `run(...)` call."""

from ..errors import KfmagicError

RUNNERS = ("local",)


def get_backend(runner):
    if runner == "local":
        from . import local

        return local
    raise KfmagicError(f"Unknown runner {runner!r}. Runners: {', '.join(RUNNERS)}.")
