"""Errors a user sees as one clear message, never as a traceback from kfmagic's insides.

IPython renders an exception through its `_render_traceback_` when it has one, so raising a
KfmagicError anywhere in the kernel (magic or SDK call) shows just the message.
"""


class KfmagicError(Exception):
    """A problem the user can fix; the message says what and how."""

    def _render_traceback_(self):
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


class CellSyntaxError(KfmagicError):
    """A malformed `%%step`/`%%prelude`/`%%params`/`%pipeline` line or params cell."""


class PlanError(KfmagicError):
    """The pipeline cannot be planned; carries every problem found, one per line."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class RunFailed(KfmagicError):
    """A run ended in a state other than SUCCEEDED; `.run` keeps everything it produced."""

    def __init__(self, message, run):
        self.run = run
        super().__init__(message)


class SweepInterrupted(KfmagicError):
    """A sweep stopped before every combination ended (Ctrl-C): `.runs` are its combinations' runs,
    the finished ones kept; `.sweep` is the Sweep made of them, once the registry has made it."""

    def __init__(self, message, runs, sweep=None):
        self.runs, self.sweep = runs, sweep
        super().__init__(message)
