"""User-facing errors.

Anything raised as :class:`UserError` is the user's to fix (a bad config key, a missing file):
the command line reports it as one line and exits with status 2, without a traceback; a
:class:`SolverError` (the solve ran and broke down) likewise with status 3.  Everything else
is a bug and keeps its traceback.  A :func:`warning` is one line on stderr, from rank 0 only.
"""
from __future__ import annotations

import functools
import os
import signal
import sys
import time

PROG = "fem-mfc"
# Environment variables an MPI launcher sets in its ranks (Open MPI/PRRTE, PMIx, MPICH Hydra).
LAUNCHER_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")


def launcher_rank() -> int | None:
    """This process's rank as its MPI launcher told it (None: not started by a launcher)."""
    for k in LAUNCHER_RANK_VARS:
        v = os.environ.get(k)
        if v is not None and v.strip().isdigit():
            return int(v)
    return None


def process_rank() -> int:
    """This process's rank in COMM_WORLD without starting MPI: mpi4py's while MPI runs, else
    the launcher's (0 without a launcher)."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        return mpi.COMM_WORLD.Get_rank()
    return launcher_rank() or 0


def warning(message: str) -> None:
    """Print ``fem-mfc: warning: MESSAGE`` on stderr, on rank 0 only."""
    if process_rank() == 0:
        print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


# Set by bin/fem-env's guard around an MPI launcher: a file that gets this process's last line
# too.  A launcher that receives the signal itself (a process-group signal: a terminal's Ctrl-C,
# `timeout`) ends its ranks and drops what they print meanwhile; the guard prints the file's
# lines it did not see on the launcher's stderr.
LAUNCHER_NOTE = "FEM_MFC_LAUNCHER_NOTE"


# SIGINT, SIGTERM, SIGHUP: what ends a run with one line (the run's and the CLI's handlers)
INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Ranks other than 0 wait this long in their handler before exiting: an MPI launcher ends the
# job when the first rank exits, and rank 0, which got the same signal, must have said so
# first (the line was lost in CI: rank 1 exited at once, prterun killed rank 0 before it
# wrote).  Below the run's watchdog grace (io.SIGNAL_GRACE_S).
RANK_EXIT_DELAY_S = 1.0


def interrupted(line: str, rank: int, size: int) -> None:
    """What a signal handler of a rank does before it cleans up and exits: ignore further
    signals (the group's, then the guard's copy, are no news: one line, once), rank 0 writes
    ``line`` (:func:`last_line`), the other ranks of a job of ``size`` wait
    RANK_EXIT_DELAY_S."""
    for s in INTERRUPTS:
        try:
            signal.signal(s, signal.SIG_IGN)
        except (ValueError, OSError):
            pass
    if rank == 0:
        last_line(line)
    elif size > 1:
        time.sleep(RANK_EXIT_DELAY_S)


def last_line(line: str) -> None:
    """Write ``line`` (the process's last: "fem-mfc: interrupted ...") on stderr and to the
    launcher's note file if there is one; safe in a signal handler (no exception escapes)."""
    text = line if line.endswith("\n") else line + "\n"
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except Exception:
        pass
    note = os.environ.get(LAUNCHER_NOTE)
    if note:
        try:
            fd = os.open(note, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, text.encode("utf-8", "replace"))
            finally:
                os.close(fd)
        except OSError:
            pass


def keeps_cause(method):
    """Decorate a method PETSc calls back (a residual, a python PC's apply…): an exception in
    it reaches PETSc as an error code only, so its message is kept on the object as
    ``self.error`` before it propagates (the solver then reports it)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            self.error = str(e) or type(e).__name__
            raise
    return wrapper


def toml_value(v) -> str:
    """``v`` as the user wrote it in TOML (``true``, ``"text"``, ``[1, 2]``, ``inf``), for
    messages: a config value is not a Python object to the user."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == float("inf") else
                                     "-inf" if v == float("-inf") else repr(v))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    return str(v)


class UserError(Exception):
    """An error in the user's input or an unsuccessful run: one line, exit code 2."""


class ConfigError(UserError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""

    def __init__(self, key: str, expected: str, got=None, source: str | None = None):
        self.key, self.expected, self.got, self.source = key, expected, got, source
        where = f"{source}: " if source else ""
        tail = "" if got is None else f", got {toml_value(got)}"
        super().__init__(f"{where}config key '{key}': expected {expected}{tail}")

    def located(self, source) -> ConfigError:
        """This error naming the config file ``source`` (as the errors found when loading it
        do), for one found later — building the problem, solving — that names no file; itself
        if it names one, or if its key is an option of the command line or PETSc's ('-…'),
        not a key of the file."""
        if self.source or not source or str(self.key).startswith("-"):
            return self
        located = ConfigError(self.key, self.expected, self.got, source=str(source))
        located.__cause__ = self.__cause__
        return located


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
