"""Outputs of a run: atomic files, summary.json, ParaView time series, checkpoints, the log.

A run writes into an output folder ``DIR/`` that is always exactly one run:

* Everything (fields, figures, ``run.log``, ``config.toml``, ``summary.json``) is written by all
  ranks into a staging folder ``.staging-<DIR name>-<pid>-<random>/`` *beside* ``DIR`` (same
  file system), and only a successful run swaps it in with one atomic rename
  (``renameat2(RENAME_EXCHANGE)``; where the file system cannot exchange, two renames).  A run
  that fails, is interrupted or killed leaves ``DIR`` exactly as it was.
* The run that was in ``DIR`` before is kept as ``DIR.previous`` (one generation; an older
  ``DIR.previous`` is deleted), so no file of an earlier run ever sits beside a new summary.
* A lock file ``.<DIR name>.lock`` beside ``DIR`` (``flock``, released by the kernel when the
  process dies) makes a second concurrent run into the same ``DIR`` refuse with one line.
* Staging folders of dead runs (SIGKILL, power loss) are deleted by the next run into ``DIR``;
  SIGINT/SIGTERM/SIGHUP delete their own staging folder and exit with 130/143/129.  A run
  inside a long C call that holds the GIL (a factorisation, an ADIOS2 read) cannot run its
  Python handler until the call returns; a small watchdog process (:data:`WATCHDOG`), woken by
  the signal through :func:`signal.set_wakeup_fd`, then deletes the staging folder and ends
  the run with SIGKILL after :data:`SIGNAL_GRACE_S` seconds (exit status 137).
* A full disk (ENOSPC, EDQUOT) while writing anything -- a ParaView series, run.log, a figure,
  config.toml, summary.json -- is a :class:`~fem_mfc.errors.DiskFullError`: one line naming
  ``DIR`` and "no space left on device", exit 2, staging deleted, ``DIR`` unchanged.  An ADIOS2
  writer whose write or close failed is never closed or destroyed (its C++ destructor would
  throw and abort the process with exit 134).
* ``DIR`` must be new, empty or an earlier output folder (it holds ``summary.json``,
  ``config.toml`` or ``run.log``): a folder of other files is refused rather than moved away.

Single files outside run folders (``convergence.json`` of a refinement study) are written with
:func:`write_text_atomic` (temporary name in the same folder, then ``os.replace``).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mpi4py import MPI

import numpy as np

from .errors import INTERRUPTS, DiskFullError, UserError, interrupted, last_line

_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "errno = 28:", "errno = 122:")


def is_disk_full(e: BaseException | None) -> bool:
    """Did ``e`` (or an exception it was raised from) fail for want of space on a device?
    OSError ENOSPC/EDQUOT, or ADIOS2's RuntimeError quoting that errno."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DiskFullError):
            return True
        if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
            return True
        if isinstance(e, RuntimeError) and any(t in str(e) for t in _DISK_FULL_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


# ADIOS2 writers (C++ objects) whose write or close failed: closing them again throws, and their
# destructor calls Close, so that destroying one -- when it is garbage-collected or at exit --
# would throw from a destructor and abort the process (exit 134).  They are leaked instead (one
# reference more, never released: no destructor runs; the process keeps a few buffers).
_UNCLOSABLE: list = []


def _leak(writer) -> None:
    """Never destroy ``writer`` (see above)."""
    _UNCLOSABLE.append(writer)
    try:
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(writer))
    except (AttributeError, OSError):   # not CPython: the list keeps it until the module goes
        pass


def _json_default(o):
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_text_atomic(path: str | Path, text: str | bytes) -> None:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
            e.filename = str(path)          # the file meant, not its temporary name
        raise


def write_json_atomic(path: str | Path, obj) -> None:
    """Write ``obj`` as pretty JSON atomically (NaN is written as null: strict JSON)."""
    def clean(o):
        if isinstance(o, float) and not np.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o
    write_text_atomic(path, json.dumps(clean(json.loads(json.dumps(obj, default=_json_default))),
                                       indent=2, sort_keys=False) + "\n")


def _cannot_create(target: Path, e: OSError) -> str:
    """Why ``target`` cannot be created, naming the file in its way: EEXIST / ENOTDIR said
    "File exists" of a folder that did not exist."""
    for up in (target, *target.parents):
        if up.exists() or up.is_symlink():
            if not up.is_dir():
                return f"{target}: cannot create output folder ({up} is a file, not a folder)"
            break
    return f"{target}: cannot create output folder ({e.strerror})"


def prepare_outdir(outdir: str | Path, comm=MPI.COMM_WORLD) -> Path:
    """Create ``outdir`` (rank 0) and check it is a writable folder; all ranks agree."""
    outdir = Path(outdir).absolute()
    err = None
    if comm.rank == 0:
        try:
            if outdir.exists() and not outdir.is_dir():
                err = f"{outdir}: output path exists and is not a folder"
            else:
                outdir.mkdir(parents=True, exist_ok=True)
                if not os.access(outdir, os.W_OK):
                    err = f"{outdir}: output folder is not writable"
        except OSError as e:
            err = _cannot_create(outdir, e)
    err = comm.bcast(err, root=0)
    if err:
        raise UserError(err)
    return outdir


def _terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class _RunLogHandler(logging.FileHandler):
    """run.log: a write that fails (a full disk) is remembered, not printed as logging's
    "--- Logging error ---" traceback; the handler then stops writing and RunContext.commit
    reports the failure as one line."""

    failure: BaseException | None = None

    def handleError(self, record):
        if self.failure is None:
            self.failure = sys.exc_info()[1]

    def emit(self, record):
        if self.failure is None:
            super().emit(record)

    def flush(self):
        if self.failure is None:
            try:
                super().flush()
            except OSError as e:
                self.failure = e

    def close(self):
        try:
            super().close()
        except OSError as e:          # the buffered rest could not be written either
            if self.failure is None:
                self.failure = e


class _RankFilter(logging.Filter):
    """The console's records: rank 0's, without those logged ``extra={"console": False}``
    (run.log only: e.g. the flags, which the CLI prints once as ``fem-mfc: warning:`` lines
    when the run ends)."""

    def __init__(self, rank):
        super().__init__()
        self.rank = rank

    def filter(self, record):
        return self.rank == 0 and getattr(record, "console", True)


def make_logger(name: str, logfile: Path | None, comm=MPI.COMM_WORLD, quiet=False):
    """A logger that prints on rank 0 (stderr) and appends to ``logfile`` (rank 0)."""
    log = logging.getLogger(f"fem_mfc.{name}.{id(comm)}")
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    if not quiet:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(fmt)
        h.addFilter(_RankFilter(comm.rank))
        log.addHandler(h)
    if logfile is not None and comm.rank == 0:
        fh = _RunLogHandler(logfile, mode="w")
        fh.setFormatter(fmt)
        log.addHandler(fh)
    return log


# An animation ([output] animation) has at most this many frames, evenly chosen
MAX_FRAMES = 60


class TimeSeries:
    """A ParaView time series of one or more dolfinx Functions (VTX .bp, optional XDMF).

    Functions must share one mesh.  ``write(t)`` writes their current values at time ``t``.
    VTX needs the functions of one writer to share one element; P2 fields are written natively
    (VTX supports arbitrary-degree Lagrange), XDMF gets a P1 interpolation.
    """

    def __init__(self, folder: Path, name: str, functions, xdmf=False, vtx=True,
                 outdir: Path | None = None, movie: bool = False):
        import dolfinx.io
        self.functions = list(functions)
        # ``movie``: keep a copy of the density at every write for the animated GIF of
        # ``[output] animation`` (RunContext.render_animations): a series whose first function
        # is a scalar "rho…" — several populations' rho_k are summed (the total density)
        self._dens = [f for f in self.functions
                      if f.name.startswith("rho") and f.ufl_shape == ()
                      and f.function_space == self.functions[0].function_space]
        ok = movie and self._dens and self._dens[0] is self.functions[0]
        self.frames = [] if ok else None
        self._stride, self._writes = 1, 0      # frames kept: every _stride-th write
        self._last = None
        mesh = self.functions[0].function_space.mesh
        self.comm = mesh.comm
        self.name = name
        self.outdir = outdir or folder       # named in errors (the staging folder is internal)
        self.folder = folder
        self._vtx = None
        self._xdmf = None
        self._broken = False
        if vtx:
            self._guarded(f"{name}.bp", lambda: setattr(self, "_vtx", dolfinx.io.VTXWriter(
                self.comm, str(folder / f"{name}.bp"), self.functions, engine="BP4")))
        if xdmf:
            def open_xdmf():
                self._xdmf = dolfinx.io.XDMFFile(self.comm, str(folder / f"{name}.xdmf"), "w")
                self._xdmf.write_mesh(mesh)
            self._guarded(f"{name}.xdmf", open_xdmf)
            self._p1 = {}
            for f in self.functions:
                V1 = dolfinx.fem.functionspace(mesh, ("Lagrange", 1, f.ufl_shape))
                g = dolfinx.fem.Function(V1, name=f.name)
                self._p1[f.name] = (f, g)

    def _guarded(self, what: str, fn):
        """Run a write/close of the writers; on failure never touch them again (a failed ADIOS2
        engine throws on every further Close, also from its destructor: it is leaked), and
        report a full disk as a DiskFullError naming the output folder."""
        try:
            fn()
        except Exception as e:
            self._broken = True
            for w in (self._vtx, self._xdmf):
                if w is not None:
                    _leak(w)
            self._vtx = self._xdmf = None
            if is_disk_full(e) or _no_space_left(self.folder):
                raise DiskFullError(self.outdir, what) from None
            raise

    def write(self, t: float):
        if self.frames is not None:
            frame = self._dens[0].copy()
            for f in self._dens[1:]:
                frame.x.array[:] += f.x.array
            frame.name = "rho"
            self._last = None
            if self._writes % self._stride == 0:
                self.frames.append((float(t), frame))
            else:
                self._last = (float(t), frame)   # the latest, for the animation's end
            if len(self.frames) > 2 * MAX_FRAMES:
                # every written density was kept (500 copies for 500 NLS steps, for a GIF
                # of 60): drop every other frame and keep every other write from now on
                self.frames = self.frames[::2]
                self._stride *= 2
            self._writes += 1
        if self._broken:
            return
        if self._vtx is not None:
            self._guarded(f"{self.name}.bp", lambda: self._vtx.write(float(t)))
        if self._xdmf is not None:
            def xdmf():
                for f, g in self._p1.values():
                    g.interpolate(f)
                    self._xdmf.write_function(g, float(t))
            self._guarded(f"{self.name}.xdmf", xdmf)

    def movie_frames(self) -> list:
        """[(t, density)] for the animation: every kept frame and the last one written."""
        return self.frames + ([self._last] if self._last is not None else [])

    def close(self):
        if self._broken:
            return
        vtx, xdmf = self._vtx, self._xdmf
        if vtx is not None:
            self._guarded(f"{self.name}.bp", vtx.close)
        if xdmf is not None and not self._broken:
            self._guarded(f"{self.name}.xdmf", xdmf.close)


def _no_space_left(folder: Path) -> bool:
    """Is the file system holding ``folder`` full (for an error that does not say why)?"""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail == 0 or st.f_favail == 0


# -- test hook: sleep at named points so a test can kill the process there --------------------
def _pause(point: str) -> None:
    """With ``FEM_MFC_TEST_PAUSE=point1,point2`` (or ``*``) in the environment, append ``point``
    to the file ``FEM_MFC_TEST_PAUSE_FILE`` and sleep ``FEM_MFC_TEST_PAUSE_S`` seconds (default
    60) there.  Used only by tests that kill a run at that point."""
    spec = os.environ.get("FEM_MFC_TEST_PAUSE")
    if not spec:
        return
    names = spec.split(",")
    if point not in names and "*" not in names:
        return
    deaf = int(os.environ.get("FEM_MFC_TEST_PAUSE_DEAF", "0"))
    A = None
    if deaf:
        # a C call that holds the GIL and makes no system call a signal would interrupt, as
        # a long factorisation does: the dense LU of a deaf × deaf matrix (the Python
        # handler of a signal runs only after it); set up before the point is announced,
        # so that a signal sent after the announcement finds the LU running
        from petsc4py import PETSc
        A = PETSc.Mat().createDense((deaf, deaf), comm=PETSc.COMM_SELF)
        A.setUp()
        A.getDenseArray()[:] = np.random.default_rng(0).random((deaf, deaf)) + deaf * np.eye(deaf)
        A.assemble()
        order = A.getOrdering("natural")
    f = os.environ.get("FEM_MFC_TEST_PAUSE_FILE")
    if f:
        with open(f, "a") as fh:
            fh.write(point + "\n")
    if A is not None:
        A.factorLU(*order)
        A.destroy()
    else:
        time.sleep(float(os.environ.get("FEM_MFC_TEST_PAUSE_S", "60")))


# -- an atomic exchange of two paths -------------------------------------------------------------
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange the paths ``a`` and ``b`` (Linux ``renameat2(RENAME_EXCHANGE)``);
    False where the kernel or file system cannot (the caller falls back to two renames)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(libc, "renameat2", None)
    except OSError:
        return False
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    r = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if r == 0:
        return True
    e = ctypes.get_errno()
    if e in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(e, os.strerror(e), str(a))


RUN_MARKERS = ("summary.json", "config.toml", "run.log")
_SIGNALS = INTERRUPTS

# A run that has not ended this many seconds after SIGINT/SIGTERM/SIGHUP is in a C call that
# holds the GIL: its watchdog deletes the staging folder and kills it.
SIGNAL_GRACE_S = 3.0
# The watchdog (python3 -S -c WATCHDOG FD PID STAGING GRACE): Python's C-level signal handler
# writes the signal's number to the run's wakeup fd at once, GIL or not; the watchdog reads
# it, gives the run's own handler GRACE seconds, then cleans up and kills.  End of file on
# the fd (the run finished or died: only it holds the write end) ends the watchdog — after a
# signal, with the staging folder removed if it is still there (an MPI launcher SIGKILLs
# ranks soon after its SIGTERM).  The byte STAND_DOWN from the run (its commit point passed:
# the staging folder is the finished run, being swapped in) ends it without either.
STAND_DOWN = 255
WATCHDOG = """
import os, select, shutil, signal, sys, time
fd, pid, staging, grace = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # sent to the whole process group
    signal.signal(s, signal.SIG_IGN)                    # (Ctrl-C, timeout, mpirun): outlive it
got = 0
while not got:
    b = os.read(fd, 64)
    if not b or 255 in b:
        sys.exit(0)
    got = next((x for x in b if x in (1, 2, 15)), 0)
end = time.monotonic() + grace
while (left := end - time.monotonic()) > 0:
    if not select.select([fd], [], [], left)[0]:
        continue
    b = os.read(fd, 64)
    if 255 in b:                                        # the run is past its commit point
        sys.exit(0)
    if not b:
        # the run ended: its own handler removed the staging folder, or something else
        # (an MPI launcher's SIGKILL after its SIGTERM) killed it before it could
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
        sys.exit(0)
if staging:
    shutil.rmtree(staging, ignore_errors=True)
try:
    name = signal.Signals(got).name
    line = (f"fem-mfc: interrupted ({name}) inside a computation that cannot be "
            f"interrupted; ended it after {grace:g} s\\n")
    sys.stderr.write(line)
    sys.stderr.flush()
    note = os.environ.get("FEM_MFC_LAUNCHER_NOTE")      # (errors.last_line)
    if note and staging:                                  # (rank 0's watchdog)
        fd = os.open(note, os.O_WRONLY | os.O_APPEND)
        os.write(fd, line.encode())
        os.close(fd)
    os.kill(pid, signal.SIGKILL)
except (ProcessLookupError, ValueError, OSError):
    pass
"""


def _staging_prefix(name: str) -> str:
    return f".staging-{name}-"


def _is_staging_of(entry: str, name: str) -> bool:
    """``.staging-<name>-<pid>-<random>`` (random has no '-': tempfile's alphabet)."""
    if not entry.startswith(".staging-"):
        return False
    parts = entry[len(".staging-"):].rsplit("-", 2)
    return len(parts) == 3 and parts[0] == name and parts[1].isdigit()


class _FolderLock:
    """An exclusive, non-blocking ``flock`` on ``.<name>.lock`` beside the output folder."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = None

    def acquire(self) -> str | None:
        """None on success, else a description of the holder."""
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                try:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                finally:
                    os.close(fd)
                return holder or "another process"
            # the file may have been unlinked by its previous holder between open and flock
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            self.fd = fd
            return None
        return "another process"

    def release(self):
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None


# What rank 0 has made of a run folder before the run's signal handlers are installed (the
# lock, the staging folder): an early signal's handler (fem_mfc.cli) removes it
PREPARED: dict = {}
HANDLED = [False]                 # has a run installed its signal handlers in this process?
COMMITTED = [False]               # has a run of this process been swapped into its folder?
COMMITTED_CONVERGED = [True]      # ... and did its summary say converged (the run's status)?


def abandon_prepared() -> None:
    """Remove what :func:`_prepare_run_folder` made (a signal before the run's handlers)."""
    staging, lock = PREPARED.pop("staging", None), PREPARED.pop("lock", None)
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)
    if lock is not None:
        lock.release()


def _prepare_run_folder(outdir: Path) -> tuple[Path, "_FolderLock", Path]:
    """Rank 0: check ``outdir``, take its lock, clean stale staging, make a new staging folder.
    Raises UserError (one line) when the folder cannot hold a run."""
    target = Path(os.path.abspath(outdir))
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    if target.exists() and not target.is_dir():
        raise UserError(f"{target}: output path exists and is not a folder")
    if target.parent == target:
        raise UserError(f"{target}: cannot write a run into the root folder")
    parent, name = target.parent, target.name
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(_cannot_create(target, e)) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{target}: its parent folder {parent} is not writable (a run is staged "
                        "beside its output folder and swapped in)")
    if target.is_dir():
        if os.path.ismount(target):
            raise UserError(f"{target}: is a mount point; write the run into a subfolder of it")
        if not os.access(target, os.W_OK):
            raise UserError(f"{target}: output folder is not writable")
        try:
            entries = [e for e in os.listdir(target)
                       if not e.startswith((".staging-", ".old-"))]
        except OSError as e:
            raise UserError(f"{target}: cannot read the output folder ({e.strerror})") from None
        if entries and not any(m in entries for m in RUN_MARKERS):
            raise UserError(f"{target}: exists and is not a fem_mfc output folder (it has no "
                            f"{', '.join(RUN_MARKERS)}): choose a new or empty folder")
    lock = _FolderLock(parent / f".{name}.lock")
    try:
        holder = lock.acquire()
        if holder is None:
            PREPARED["lock"] = lock            # (until the run's own handlers take over)
    except OSError as e:
        if e.errno in _DISK_FULL_ERRNOS:
            raise DiskFullError(target, f"its lock file {lock.path.name}") from None
        raise UserError(f"{target}: cannot lock the output folder ({e.strerror})") from None
    if holder is not None:
        raise UserError(f"{target}: another run is writing this folder ({holder}); wait for it "
                        "or choose another --out")
    try:
        for e in os.listdir(parent):   # staging of dead runs (we hold the lock: none is live)
            if _is_staging_of(e, name):
                shutil.rmtree(parent / e, ignore_errors=True)
        if target.is_dir():            # leftovers of the per-file moves of earlier versions
            for e in os.listdir(target):
                if e.startswith((".staging-", ".old-")):
                    shutil.rmtree(target / e, ignore_errors=True)
        _pause("create:locked")
        staging = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(name)}{os.getpid()}-",
                                        dir=parent))
        PREPARED["staging"] = staging
        os.chmod(staging, 0o755)
    except OSError as e:
        lock.release()
        if e.errno in _DISK_FULL_ERRNOS:
            raise DiskFullError(target, "a staging folder beside it") from None
        raise UserError(f"{target}: cannot create a staging folder beside it ({e.strerror})") \
            from None
    except BaseException:
        lock.release()
        raise
    return target, lock, staging


def _swap_in(staging: Path, target: Path) -> None:
    """Make ``staging`` the folder ``target`` in one atomic step; keep the earlier run as
    ``target.previous``.  Signals are blocked meanwhile (SIGKILL cannot be: an exchange is one
    system call, so a kill leaves either the old or the new folder at ``target``)."""
    previous = target.with_name(target.name + ".previous")
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        _pause("swap:before")
        if not target.exists():
            os.rename(staging, target)
            _pause("swap:renamed")
            return
        if _exchange(staging, target):
            # target is the new run; ``staging`` now holds the earlier one
            _pause("swap:exchanged")
            earlier = staging
        else:          # no RENAME_EXCHANGE: two renames, target briefly absent
            earlier = staging.with_name(staging.name + "x")
            os.rename(target, earlier)
            _pause("swap:moved-old")
            os.rename(staging, target)
            _pause("swap:renamed")
        try:       # the new run is in place: what follows only tidies the earlier one
            if not os.listdir(earlier):
                os.rmdir(earlier)
                return
            if previous.exists() or previous.is_symlink():
                trash = staging.with_name(staging.name + "p")  # a staging name: cleaned if killed
                os.rename(previous, trash)
                _pause("swap:previous-moved")
                os.rename(earlier, previous)
                _pause("swap:previous-kept")
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.rename(earlier, previous)
                _pause("swap:previous-kept")
        except OSError:
            pass
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@dataclass
class RunContext:
    """Everything a runner needs besides the config: where and how to write, PETSc options.

    Runners call ``ctx.series(...)`` for ParaView output, ``ctx.figure(name)`` for the path of a
    PNG (rank 0 renders), ``ctx.progress(iterable, desc)`` for a progress bar, ``ctx.log``.
    Files go to the staging folder and appear in ``outdir`` only when the run succeeds, all at
    once (see the module docstring).
    """

    comm: object
    outdir: Path
    petsc_options: dict = field(default_factory=dict)
    show_progress: bool = True
    figures: bool = True
    vtx: bool = True
    xdmf: bool = False
    animation: bool = False                    # [output] animation: GIFs of the densities
    log: logging.Logger = None
    staging: Path = None
    _series: list = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)
    _lock: object = None
    restart: Path = None                       # a checkpoint folder to continue from
    _old_handlers: dict = field(default_factory=dict)
    _done: bool = False
    _committing: bool = False        # past the commit point: a signal lets the run finish
    _told: bool = False              # ... and rank 0 said so
    _watchdog: object = None         # (process, read end, write end, previous wakeup fd)
    after_commit: list = field(default_factory=list)   # called once the results are in place

    @classmethod
    def create(cls, outdir, comm=MPI.COMM_WORLD, petsc_options=None, cfg=None, quiet=False):
        err = target = lock = staging = None
        COMMITTED[0] = False        # (an earlier run of this process is not this one)
        COMMITTED_CONVERGED[0] = True
        if comm.rank == 0:
            try:
                target, lock, staging = _prepare_run_folder(Path(outdir))
            except UserError as e:
                err = str(e)
        err = comm.bcast(err, root=0)
        if err:
            raise UserError(err)
        target = Path(comm.bcast(str(target) if target else None, root=0))
        staging = Path(comm.bcast(str(staging) if staging else None, root=0))
        out = cfg.get("output", {}) if cfg else {}
        ctx = cls(comm=comm, outdir=target, petsc_options=dict(petsc_options or {}),
                  show_progress=out.get("progress", True) and not quiet,
                  figures=out.get("figures", True), vtx=out.get("vtx", True),
                  xdmf=out.get("xdmf", False), animation=out.get("animation", False),
                  staging=staging, _lock=lock)
        ctx._install_signal_handlers()
        ctx.log = make_logger("run", staging / "run.log" if comm.rank == 0 else None, comm,
                              quiet=quiet)
        _pause("create:staged")
        return ctx

    # -- signals -------------------------------------------------------------------------------
    def _install_signal_handlers(self):
        def handler(signum, frame):
            if self._committing:
                # past the commit point (see commit): the run finishes and ends with its own
                # status, in its folder; said once (the group's signal, then the guard's copy)
                if self.comm.rank == 0 and not self._told:
                    self._told = True
                    last_line(f"fem-mfc: {signal.Signals(signum).name} after the run's summary "
                              f"was written: finishing it into {self.outdir}")
                return
            interrupted(f"fem-mfc: interrupted ({signal.Signals(signum).name}); "
                        f"{self.outdir} left as it was", self.comm.rank, self.comm.size)
            self._remove_staging()
            os._exit(128 + signum)
        try:
            for s in _SIGNALS:
                self._old_handlers[s] = signal.signal(s, handler)
        except ValueError:          # not the main thread: no handlers (abort() still cleans)
            self._old_handlers.clear()
            return
        PREPARED.clear()            # (the run's handler removes them from now on)
        HANDLED[0] = True
        self._start_watchdog()

    def _start_watchdog(self):
        """The process that ends this run if a signal's handler cannot run (see WATCHDOG)."""
        import subprocess
        r, w = os.pipe()
        try:
            os.set_blocking(w, False)
            staging = str(self.staging) if self.comm.rank == 0 and self.staging else ""
            proc = subprocess.Popen(
                [sys.executable, "-S", "-c", WATCHDOG, str(r), str(os.getpid()), staging,
                 repr(SIGNAL_GRACE_S)], pass_fds=(r,), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, start_new_session=True)   # out of reach of the
            # signals to the run's process group (an MPI launcher SIGKILLs the group)
            old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except (OSError, ValueError):
            os.close(w)
            os.close(r)
            return
        # the run keeps its read end open too: a wakeup write with no reader left would raise
        # SIGPIPE, which PETSc's handler turns into MPI_Abort(59)
        self._watchdog = (proc, r, w, old)

    def _stand_down_watchdog(self):
        """Past the commit point: the watchdog must neither kill the run nor remove its
        staging folder (the finished run, being swapped in) for a signal it saw."""
        if self._watchdog is not None:
            with contextlib.suppress(OSError):
                os.write(self._watchdog[2], bytes([STAND_DOWN]))

    def _stop_watchdog(self):
        if self._watchdog is None:
            return
        proc, r, w, old = self._watchdog
        self._watchdog = None
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(old)
        os.close(w)                 # end of file: the watchdog exits
        os.close(r)
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)

    def _restore_signal_handlers(self):
        self._stop_watchdog()
        for s, h in self._old_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._old_handlers.clear()

    def _remove_staging(self):
        if self.comm.rank == 0:
            if self.staging is not None and self.staging.exists() and not self._done:
                shutil.rmtree(self.staging, ignore_errors=True)
            if self._lock is not None:
                self._lock.release()

    # -- outputs -------------------------------------------------------------------------------
    def series(self, name: str, functions) -> TimeSeries:
        ts = TimeSeries(self.staging, name, functions, xdmf=self.xdmf, vtx=self.vtx,
                        outdir=self.outdir, movie=self.animation)
        self._series.append(ts)
        return ts

    MAX_FRAMES = MAX_FRAMES

    def render_animations(self) -> list:
        """``[output] animation``: an animated GIF ``<series>.gif`` of the density of every
        series that has one, from the times it was written (at most MAX_FRAMES, evenly
        chosen); returns the files' names.  Collective."""
        from . import viz
        made = []
        for ts in self._series:
            if not ts.frames:
                continue
            movie = ts.movie_frames()
            pick = np.unique(np.linspace(0, len(movie) - 1,
                                         min(len(movie), self.MAX_FRAMES)).round()
                             .astype(int))
            frames = [movie[i] for i in pick]
            name = f"{ts.name}.gif"
            viz.animate([f for _, f in frames], [f"t = {t:.3g}" for t, _ in frames],
                        self.figure(name), name="rho")
            ts.frames = None
            if self.comm.rank == 0 and self.figure(name).is_file():
                made.append(name)
        return self.comm.bcast(made, root=0)

    def figure(self, name: str) -> Path:
        """Path for a figure file (PNG/GIF) in the staging folder."""
        return self.staging / name

    def path(self, name: str) -> Path:
        return self.staging / name

    def progress(self, iterable, desc: str = "", total=None):
        """``iterable`` with a progress bar on stderr (rank 0), where stderr is a terminal:
        into a file or a pipe the bar's redraws were carriage-return junk between the lines
        of the log."""
        if self.comm.rank != 0 or not self.show_progress or not _terminal(sys.stderr):
            return iterable
        from tqdm import tqdm
        return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False,
                    dynamic_ncols=True, mininterval=0.5)

    # -- finishing -----------------------------------------------------------------------------
    def commit(self, summary: dict | None = None):
        """Close series, write summary.json, and swap the staging folder in as ``outdir``
        (the earlier run becomes ``outdir.previous``).

        The commit point is rank 0's summary.json written: a SIGINT/SIGTERM/SIGHUP whose
        handler runs before it ends the run (128 + the signal, ``outdir`` as it was), one
        after it lets the run finish (its own exit status, ``outdir`` the new run).  It was
        decided by where the handler happened to run: in or after the swap (which blocks
        signals in the main thread only: another thread takes one, and the handler runs in
        the main thread all the same) it said "left as it was" and exited 143 with the new
        run in place, the earlier one lost if the staging folder it removed held it by then
        (the writer of the tests, SIGTERM at swap:exchanged: .previous the run before).  The
        other ranks let a signal pass, their watchdogs stood down, from before
        the barrier that rank 0 passes only once they all reached it: rank 0 past its commit
        point means every rank finishes; a rank 0 ended before it ends the job."""
        for ts in self._series:
            ts.close()
        self._series.clear()
        if self.comm.rank != 0:
            # a signal from here on lets the run finish (see below): so must this rank's
            # watchdog, which otherwise killed the rank SIGNAL_GRACE_S after it while rank 0
            # was still swapping the run in (the job then ended 137, not with its status)
            self._committing = True
            self._stand_down_watchdog()
        COMMITTED_CONVERGED[0] = bool((summary or {}).get("converged", True))
        self.comm.barrier()
        err = None
        if self.comm.rank == 0:
            _pause("commit:begin")
            try:
                for h in list(self.log.handlers):
                    if isinstance(h, logging.FileHandler):
                        h.flush()
                    if getattr(h, "failure", None) is not None:
                        f = h.failure
                        raise f if isinstance(f, OSError) else OSError(
                            errno.EIO, str(f), "run.log")
                if summary is not None:
                    write_json_atomic(self.staging / "summary.json", summary)
                self._committing = True                         # the commit point
                self._stand_down_watchdog()
                _pause("commit:summary")
                _swap_in(self.staging, self.outdir)
                self._done = True
                COMMITTED[0] = True
                _pause("commit:swapped")
            except OSError as e:
                if is_disk_full(e):
                    what = Path(e.filename).name if e.filename else None
                    err = str(DiskFullError(self.outdir, what))
                else:
                    err = f"{self.outdir}: cannot move the finished run into place ({e.strerror})"
            finally:
                if self._done and self._lock is not None:
                    self._lock.release()
        err = self.comm.bcast(err, root=0)
        self.comm.barrier()
        if err:
            self._committing = False
            self.abort()
            raise UserError(err)
        COMMITTED[0] = True
        for hook in self.after_commit:         # e.g. the finished run's checkpoint removed
            hook()
        self.after_commit.clear()
        self._restore_signal_handlers()

    def abort(self):
        """Discard staged files; earlier results in ``outdir`` are untouched."""
        for ts in self._series:
            with contextlib.suppress(Exception):
                ts.close()
        self._series.clear()
        if self.comm.rank == 0 and self.log is not None:
            for h in list(self.log.handlers):
                with contextlib.suppress(Exception):
                    h.close()
        self._remove_staging()
        self._restore_signal_handlers()


def save_checkpoint(path: Path, mesh, functions: dict, time_value: float = 0.0):
    """Write a mesh and named functions with adios4dolfinx (readable by ``load_checkpoint``)."""
    import adios4dolfinx
    adios4dolfinx.write_mesh(path, mesh)
    for name, f in functions.items():
        adios4dolfinx.write_function(path, f, time=time_value, name=name)


def checkpoint_function_names(path: Path) -> list[str] | None:
    """Names of the functions stored in an adios4dolfinx checkpoint (None if unknown)."""
    try:
        from .compat import adios2
        with adios2().FileReader(str(path)) as f:
            variables = f.available_variables()
    except Exception:        # noqa: BLE001 (best effort: only used for the error message)
        return None
    return sorted({v[:-len("_values")] for v in variables if v.endswith("_values")})


def is_vtx_series(path: Path) -> bool:
    """Is ``path`` a VTX time series (dolfinx's VTXWriter: ParaView's .bp, not a checkpoint)?"""
    try:
        from .compat import adios2
        with adios2().FileReader(str(path)) as f:
            variables = f.available_variables()
    except Exception:        # noqa: BLE001 (best effort: only used for the error message)
        return False
    return {"connectivity", "geometry", "types"} <= set(variables)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0][:100] if text else "") or type(e).__name__


def load_checkpoint(path: Path, comm, name: str, element=("Lagrange", 1), time_value=0.0):
    """Read back a mesh and one function written by :func:`save_checkpoint`.

    Every failure is a one-line :class:`UserError` naming the file and what was expected (a
    .bp folder written by fem_mfc, a function of that name and element)."""
    import adios4dolfinx
    import dolfinx
    path = Path(path)
    expected = ("an adios4dolfinx checkpoint folder (.bp) written by fem_mfc, e.g. with "
                f"fem_mfc.io.save_checkpoint(path, mesh, {{'{name}': f}})")
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found (expected {expected})")
    if not path.is_dir() or not (path / "md.idx").exists():
        raise UserError(f"{path}: not a checkpoint (expected {expected})")
    try:
        mesh = adios4dolfinx.read_mesh(path, comm)
    except Exception as e:  # noqa: BLE001 (adios2 and adios4dolfinx raise many kinds)
        if is_vtx_series(path):
            # a run's rho.bp, the file a user points at first: it was "written by fem_mfc",
            # and the message said to give a file written by fem_mfc
            raise UserError(f"{path}: is a ParaView (VTX) time series, as the rho.bp of a run, "
                            f"not a checkpoint (expected {expected})") from None
        raise UserError(f"{path}: holds no readable mesh (expected {expected}; "
                        f"{_first_line(e)})") from None
    names = checkpoint_function_names(path)
    if names is not None and name not in names:
        raise UserError(f"{path}: holds no function named '{name}' (it holds "
                        f"{', '.join(repr(n) for n in names) or 'no function'}; expected a "
                        f"function saved as '{name}')")
    V = dolfinx.fem.functionspace(mesh, element)
    f = dolfinx.fem.Function(V, name=name)
    try:
        adios4dolfinx.read_function(path, f, time=time_value, name=name)
    except KeyError:
        raise UserError(f"{path}: holds no function named '{name}' at time {time_value:g} "
                        f"(expected a function saved as '{name}')") from None
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path}: cannot read function '{name}' as {element[0]} degree "
                        f"{element[1]} ({_first_line(e)})") from None
    return mesh, f

