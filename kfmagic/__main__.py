"""The `kfmagic` command (also `python -m kfmagic`); kfmagic/cli.py says what it does.

A command that runs a pipeline (`run`, `sweep`) starts the run's supervisor before importing the
rest of kfmagic, so that the two start up together: on a 2-core machine, ~50 ms less before the
prelude begins, in a command whose whole cost should be the notebook's own.
"""

import contextlib
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    ahead = contextlib.nullcontext()
    if argv[:1] in (["run"], ["sweep"]):
        from .backends.launcher import supervisor_ahead

        ahead = supervisor_ahead()
    with ahead:
        from .cli import main as command

        return command(argv)


if __name__ == "__main__":
    sys.exit(main())
