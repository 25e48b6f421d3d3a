"""User-facing errors.

Anything raised as :class:`UserError` is the user's to fix (a bad config key, a missing file):
the command line reports it as one line and exits with status 2, without a traceback; a
:class:`SolverError` (the solve ran and broke down) likewise with status 3.  Everything else
is a bug and keeps its traceback.
"""


class UserError(Exception):
    """An error in the user's input or an unsuccessful run: one line, exit code 2."""


class ConfigError(UserError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""

    def __init__(self, key: str, expected: str, got=None, source: str | None = None):
        self.key, self.expected, self.got = key, expected, got
        where = f"{source}: " if source else ""
        tail = "" if got is None else f", got {got!r}"
        super().__init__(f"{where}config key '{key}': expected {expected}{tail}")


class SolverError(UserError):
    """A solve diverged (NaN, no convergence) or produced an inadmissible state: one line,
    exit code 3 (the solve ran but did not meet its tolerance)."""


class DiskFullError(UserError):
    """Writing a run's outputs failed for want of space (ENOSPC, EDQUOT): one line naming the
    output folder.  The run is discarded; an earlier result in the folder is unchanged."""

    def __init__(self, folder, what: str | None = None):
        self.folder, self.what = folder, what
        while_ = f" while writing {what}" if what else ""
        super().__init__(f"{folder}: no space left on device{while_} (the run was discarded; "
                         "an earlier result in this folder is unchanged)")
