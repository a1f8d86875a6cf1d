"""Errors caused by what the user asked for (a bad flag, a missing file, a broken checkpoint): the command line
prints them as one line and exits non-zero, without a traceback."""


class UserError(Exception):
    """A problem with the command's inputs, explained by its message."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, or does not fit the run."""


class NonFiniteError(UserError, ValueError):
    """A loss, gradient norm, result or weight that is NaN or infinite (a ``ValueError`` too: the value, not the
    command, is wrong, and callers that report bad values as such keep doing so)."""
