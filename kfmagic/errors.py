"""Errors a user sees as one clear message, never as a traceback from kfmagic's insides.

They derive from IPython's UsageError, which IPython displays as a single line without a
traceback, so raising one anywhere in the kernel (magic or SDK call) shows just the message.
"""

from IPython.core.error import UsageError


class KfmagicError(UsageError):
    """A problem the user can fix; the message says what and how."""


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
