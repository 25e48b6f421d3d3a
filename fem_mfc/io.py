"""Outputs of a run: atomic files, summary.json, ParaView time series, checkpoints, the log.

A run writes into an output folder ``DIR/``.  Every file is written atomically (to a temporary
name in the same folder, then ``os.replace``) by rank 0 only, so an interrupted or crashed run
never leaves a half-written ``summary.json`` and never destroys an earlier result.  Field time
series (VTX ``.bp`` for ParaView, optionally XDMF) are written collectively by all ranks into a
staging folder ``DIR/.staging-<pid>/`` and moved into place when the run succeeds.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mpi4py import MPI

from .errors import UserError


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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
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
            err = f"{outdir}: cannot create output folder ({e.strerror})"
    err = comm.bcast(err, root=0)
    if err:
        raise UserError(err)
    return outdir


class _RankFilter(logging.Filter):
    def __init__(self, rank):
        super().__init__()
        self.rank = rank

    def filter(self, record):
        return self.rank == 0


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
        fh = logging.FileHandler(logfile, mode="w")
        fh.setFormatter(fmt)
        log.addHandler(fh)
    return log


class TimeSeries:
    """A ParaView time series of one or more dolfinx Functions (VTX .bp, optional XDMF).

    Functions must share one mesh.  ``write(t)`` writes their current values at time ``t``.
    VTX needs the functions of one writer to share one element; P2 fields are written natively
    (VTX supports arbitrary-degree Lagrange), XDMF gets a P1 interpolation.
    """

    def __init__(self, folder: Path, name: str, functions, xdmf=False, vtx=True):
        import dolfinx.io
        self.functions = list(functions)
        mesh = self.functions[0].function_space.mesh
        self.comm = mesh.comm
        self._vtx = None
        self._xdmf = None
        if vtx:
            self._vtx = dolfinx.io.VTXWriter(self.comm, str(folder / f"{name}.bp"), self.functions,
                                             engine="BP4")
        if xdmf:
            self._xdmf = dolfinx.io.XDMFFile(self.comm, str(folder / f"{name}.xdmf"), "w")
            self._xdmf.write_mesh(mesh)
            self._p1 = {}
            for f in self.functions:
                V1 = dolfinx.fem.functionspace(mesh, ("Lagrange", 1, f.ufl_shape))
                g = dolfinx.fem.Function(V1, name=f.name)
                self._p1[f.name] = (f, g)

    def write(self, t: float):
        if self._vtx is not None:
            self._vtx.write(float(t))
        if self._xdmf is not None:
            for f, g in self._p1.values():
                g.interpolate(f)
                self._xdmf.write_function(g, float(t))

    def close(self):
        if self._vtx is not None:
            self._vtx.close()
        if self._xdmf is not None:
            self._xdmf.close()


@dataclass
class RunContext:
    """Everything a runner needs besides the config: where and how to write, PETSc options.

    Runners call ``ctx.series(...)`` for ParaView output, ``ctx.figure(name)`` for the path of a
    PNG (rank 0 renders), ``ctx.progress(iterable, desc)`` for a progress bar, ``ctx.log``.
    Files go to the staging folder and appear in ``outdir`` only when the run succeeds.
    """

    comm: object
    outdir: Path
    petsc_options: dict = field(default_factory=dict)
    show_progress: bool = True
    figures: bool = True
    vtx: bool = True
    xdmf: bool = False
    log: logging.Logger = None
    staging: Path = None
    _series: list = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)

    @classmethod
    def create(cls, outdir, comm=MPI.COMM_WORLD, petsc_options=None, cfg=None, quiet=False):
        outdir = prepare_outdir(outdir, comm)
        staging = None
        if comm.rank == 0:
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=outdir))
        staging = Path(comm.bcast(str(staging) if staging else None, root=0))
        out = cfg.get("output", {}) if cfg else {}
        ctx = cls(comm=comm, outdir=outdir, petsc_options=dict(petsc_options or {}),
                  show_progress=out.get("progress", True) and not quiet,
                  figures=out.get("figures", True), vtx=out.get("vtx", True),
                  xdmf=out.get("xdmf", False), staging=staging)
        ctx.log = make_logger("run", staging / "run.log" if comm.rank == 0 else None, comm,
                              quiet=quiet)
        return ctx

    # -- outputs -------------------------------------------------------------------------------
    def series(self, name: str, functions) -> TimeSeries:
        ts = TimeSeries(self.staging, name, functions, xdmf=self.xdmf, vtx=self.vtx)
        self._series.append(ts)
        return ts

    def figure(self, name: str) -> Path:
        """Path for a figure file (PNG/GIF) in the staging folder."""
        return self.staging / name

    def path(self, name: str) -> Path:
        return self.staging / name

    def progress(self, iterable, desc: str = "", total=None):
        if self.comm.rank != 0 or not self.show_progress:
            return iterable
        from tqdm import tqdm
        return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False,
                    dynamic_ncols=True, mininterval=0.5)

    # -- finishing -----------------------------------------------------------------------------
    def commit(self, summary: dict | None = None):
        """Close series, write summary.json, and move every staged file into ``outdir``."""
        for ts in self._series:
            ts.close()
        self._series.clear()
        self.comm.barrier()
        if self.comm.rank == 0:
            for h in list(self.log.handlers):
                if isinstance(h, logging.FileHandler):
                    h.flush()
            if summary is not None:
                write_json_atomic(self.staging / "summary.json", summary)
            names = sorted(os.listdir(self.staging), key=lambda n: n == "summary.json")
            for name in names:  # summary.json last: its presence means the run is complete
                src, dst = self.staging / name, self.outdir / name
                if dst.is_dir() and not dst.is_symlink():
                    old = self.outdir / f".old-{name}-{os.getpid()}"
                    os.replace(dst, old)
                    os.replace(src, dst)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(src, dst)
            shutil.rmtree(self.staging, ignore_errors=True)
        self.comm.barrier()

    def abort(self):
        """Discard staged files; earlier results in ``outdir`` are untouched."""
        for ts in self._series:
            with contextlib.suppress(Exception):
                ts.close()
        self._series.clear()
        if self.comm.rank == 0 and self.staging is not None:
            for h in list(self.log.handlers):
                with contextlib.suppress(Exception):
                    h.close()
            shutil.rmtree(self.staging, ignore_errors=True)


def save_checkpoint(path: Path, mesh, functions: dict, time_value: float = 0.0):
    """Write a mesh and named functions with adios4dolfinx (readable by ``load_checkpoint``)."""
    import adios4dolfinx
    adios4dolfinx.write_mesh(path, mesh)
    for name, f in functions.items():
        adios4dolfinx.write_function(path, f, time=time_value, name=name)


def checkpoint_function_names(path: Path) -> list[str] | None:
    """Names of the functions stored in an adios4dolfinx checkpoint (None if unknown)."""
    try:
        import adios2
        with adios2.FileReader(str(path)) as f:
            variables = f.available_variables()
    except Exception:        # noqa: BLE001 (best effort: only used for the error message)
        return None
    return sorted({v[:-len("_values")] for v in variables if v.endswith("_values")})


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
    expected = "an adios4dolfinx checkpoint folder (.bp) written by fem_mfc"
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found (expected {expected})")
    if not path.is_dir() or not (path / "md.idx").exists():
        raise UserError(f"{path}: not a checkpoint (expected {expected})")
    try:
        mesh = adios4dolfinx.read_mesh(path, comm)
    except Exception as e:  # noqa: BLE001 (adios2 and adios4dolfinx raise many kinds)
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
