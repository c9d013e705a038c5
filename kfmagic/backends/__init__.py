"""Backends run a Plan and return a Run; each is one module behind the same `run(...)` call."""

from ..errors import KfmagicError

RUNNERS = ("local", "kfp-local", "kfp")


def get_backend(runner):
    if runner == "local":
        from . import local

        return local
    if runner == "kfp-local":
        from . import kfp_local

        return kfp_local
    if runner == "kfp":
        from . import kfp

        return kfp
    raise KfmagicError(f"Unknown runner {runner!r}. Runners: {', '.join(RUNNERS)}.")
