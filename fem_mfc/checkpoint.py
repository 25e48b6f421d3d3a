"""Checkpoints of a long all-at-once solve, and restarting from them.

With ``[output] checkpoint_every = k`` the Newton solve writes, every k Newton iterations and
after every converged continuation stage, the full state — the mesh and its tags
(adios4dolfinx's format, ``state.bp``, gathered on and written by rank 0), ρ¹..ρ^N and
u⁰..u^{N−1} as their values at the nodes with the nodes' coordinates (``nodal.npz``,
written by rank 0: a reader on any number of ranks finds its nodes by their coordinates, so a
checkpoint written on N ranks is read on M; one adios4dolfinx
function per state stored a dofmap each, 127 MB against 13 MB of values at 16,641 dofs × 50
steps) and ``meta.json`` (iteration, residual, the continuation parameter λ and noise start, a
hash of the config sections that define the discrete problem) — into
``OUT.checkpoint/`` beside the output folder ``OUT``.  Each checkpoint is written into a
temporary folder and renamed over the previous one, so a run killed at any moment leaves the
last complete checkpoint; a disk too full for it is a one-line error on every rank
(:func:`_commit`).

``fem-mfc run CONFIG --restart DIR`` (DIR: the checkpoint folder, or the output folder whose
``DIR.checkpoint`` it is) builds the problem of CONFIG on the checkpoint's mesh, loads the
states and continues: Newton from the stored iterate, or the continuation from the stored λ.
A checkpoint of another problem (hash mismatch) is refused with one line (exit 2).

The trainers of the learning formulations (``classifier``, ``generative``) write the same kind
of checkpoint every k outer iterations (:class:`TrainingWriter`): the mesh, the control (its
values at the velocity nodes, keyed by the nodes' coordinates, or the dictionary weights θ,
which every rank holds) and the trainer's own state — the L-BFGS pairs (controls too), the
relaxation of the sweeps, the history and the counts (``meta.json``).  A restart rebuilds
the densities on the checkpoint's mesh, reads the control and continues the outer iterations
where they stopped; Newton–CG and the sweeps then take the uninterrupted run's steps.

The time-stepped runs (``heat``, ``nls``, the QHD quantum signature) write one every k time
steps (:class:`StepWriter`): the state, what the next step reads, the figures' snapshots and
the invariants' histories; a restart takes the remaining steps (its ParaView series begins at
the checkpoint's time).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mpi4py import MPI

import numpy as np

from .errors import ConfigError, DiskFullError, UserError
from .io import _exchange, _leak, _no_space_left, is_disk_full

SECTIONS = ("run", "mesh", "problem", "rho0", "discretisation", "exact")
STATE = "state.bp"
META = "meta.json"
ARRAYS = "nodal.npz"          # states or controls at the nodes, with their coordinates
NODES, STATES = "__nodes__", "__states__"
PREVIOUS = "__previous__"     # a continuation's previous stage's states (secant predictor)
LAST = "__last__"             # ... and in the middle of a stage, its last converged stage's
LEARNING = ("classifier", "generative")


TAGS = ("cell_tags", "facet_tags")   # the problem's mesh tags a checkpoint keeps


def problem_sections(cfg: dict) -> dict:
    """The config sections (and keys) that define the discrete problem, as JSON values: what
    :func:`config_hash` hashes and a checkpoint's ``meta.json`` keeps as ``config``."""
    return json.loads(json.dumps(_sections(cfg), sort_keys=True, default=str))


def _sections(cfg: dict) -> dict:
    sections = {k: cfg.get(k) for k in SECTIONS}
    m = cfg.get("mesh") or {}
    if m.get("kind") == "file":
        # the mesh is the file's contents, not its name: a restart reads the checkpoint's
        # mesh, so a file changed since the checkpoint ran on the old mesh (exit 0)
        sections["mesh"] = {**m, "file_sha256": file_digest(m.get("file"))}
    for key in ("boundary", "population"):    # newer sections: only when they matter, so
        if cfg.get(key):                          # older checkpoints keep their hash
            sections[key] = cfg[key]
    if cfg.get("problem", {}).get("H", "quadratic") != "quadratic":
        sections["hamiltonian"] = cfg.get("hamiltonian")
    if cfg.get("run", {}).get("formulation") in ("qhd", "nls"):
        f = cfg["run"]["formulation"]
        sections[f] = cfg.get(f)
    if cfg.get("run", {}).get("formulation") in LEARNING:    # the data, the network, the trainer
        sections.update({k: cfg.get(k) for k in ("data", "network", "generative")})
        sections["training"] = {"method": cfg.get("training", {}).get("method")}
        d = cfg.get("data") or {}
        if d.get("dataset") == "csv":   # the points are the file's contents, not its name
            sections["data"] = {**d, "file_sha256": file_digest(d.get("file"))}
    return sections


def file_digest(path) -> str | None:
    """The SHA-256 of a file's bytes (the first 16 hex digits), or of a folder's files (their
    paths in it and their bytes, in order of path: an adios4dolfinx .bp checkpoint); None if
    it cannot be read.  What a restart (the config hash) and ``refine --resume``
    (:func:`input_digests`) take as a file's identity: its contents, not its time stamp."""
    try:
        p = Path(path)
        if not p.is_dir():
            return hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        h = hashlib.sha256()
        for q in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(q.relative_to(p)).encode() + b"\0" + q.read_bytes() + b"\0")
        return h.hexdigest()[:16]
    except (OSError, TypeError, ValueError):
        return None


INPUTS = ("mesh", "rho0")   # the config sections that may name a file (kind = 'file')


def input_digests(cfg: dict) -> dict:
    """{section: :func:`file_digest` of its file} for the INPUTS of ``cfg`` with kind 'file'
    (the mesh file, the rho0 checkpoint); {} when it reads none."""
    out = {}
    for section in INPUTS:
        c = cfg.get(section) or {}
        if c.get("kind") == "file" and c.get("file"):
            out[section] = file_digest(c["file"])
    return out


def config_hash(cfg: dict) -> str:
    """A hash of the config sections that define the discrete problem."""
    data = json.dumps(problem_sections(cfg), sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _differences(stored, mine, key: str = "") -> list[str]:
    """``key: A in the checkpoint, B here`` for every key whose value differs, inside arrays
    of tables too (``population[0].mass``: the whole [[population]] array was shown)."""
    from .errors import toml_value
    if isinstance(stored, dict) and isinstance(mine, dict):
        out = []
        for k in sorted(set(stored) | set(mine), key=str):
            out += _differences(stored.get(k), mine.get(k), f"{key}.{k}" if key else str(k))
        return out
    if (isinstance(stored, list) and isinstance(mine, list) and len(stored) == len(mine)
            and any(isinstance(v, (dict, list)) for v in stored + mine)):
        return [d for i, (a, b) in enumerate(zip(stored, mine))
                for d in _differences(a, b, f"{key}[{i}]")]
    if stored == mine:
        return []
    def shown(v):
        return "unset" if v is None else toml_value(v)
    return [f"{key}: {shown(stored)} in the checkpoint, {shown(mine)} here"]


def _mismatch(meta: dict, cfg: dict) -> str:
    """What the refusal of a checkpoint of another problem expects: the keys that differ
    (checkpoints that keep their config), else the sections that must agree."""
    mine = problem_sections(cfg)
    stored = meta.get("config")
    diffs = _differences(stored, mine) if isinstance(stored, dict) else []
    if diffs:
        more = f"; and {len(diffs) - 4} more" if len(diffs) > 4 else ""
        return ("a checkpoint of this config's problem; they differ in "
                + "; ".join(diffs[:4]) + more)
    names = [("training.method" if k == "training" else k) for k, v in _sections(cfg).items()
             if v is not None]
    return (f"a checkpoint of this config's problem (the {', '.join(names[:-1])} and "
            f"{names[-1]} sections must be those of the run that wrote it)")


def folder_for(outdir) -> Path:
    """The checkpoint folder of output folder ``outdir``."""
    p = Path(outdir).absolute()
    return p.with_name(p.name + ".checkpoint")


def resolve(path) -> Path:
    """The checkpoint folder named by ``--restart PATH`` (the folder or its output folder)."""
    p = Path(path).absolute()
    for cand in (p, folder_for(p)):
        if (cand / META).is_file() and (cand / STATE).exists():
            return cand
    raise ConfigError("--restart", f"a fem_mfc checkpoint folder (with {META} and {STATE}), "
                      f"or an output folder with one beside it{_why_none(p)}", str(path))


def _why_none(p: Path) -> str:
    """Why the output folder ``p`` of a run has no checkpoint beside it ("" if ``p`` is not
    one): the message said only what was expected, and a user pointing --restart at a run
    that had finished could not tell that there was nothing to continue."""
    try:
        s = json.loads((p / "summary.json").read_text())
    except (OSError, ValueError):
        return ""
    if not isinstance(s, dict):
        return ""
    if s.get("converged") is True:
        return (f"; {p.name} holds a finished run (converged), whose checkpoint was removed "
                "once its results were in place: nothing to restart")
    return (f"; the run in {p.name} wrote no checkpoint ([output] checkpoint_every = k writes "
            "one every k iterations or steps)")


class Writer:
    """Writes checkpoints of the space-time system ``st`` into ``folder`` (atomically).  A
    writer with ``every = 0`` is never :meth:`due`: a restart whose config has no
    ``checkpoint_every`` gets one, so that the checkpoint it read is removed once the run is
    complete (it stayed)."""

    def __init__(self, folder: Path, st, cfg: dict, every: int):
        self.folder, self.st, self.every = Path(folder), st, int(every)
        self.hash, self.sections = config_hash(cfg), problem_sections(cfg)
        self.written = 0
        self.legs = 1                 # the runs that continued each other's checkpoints
        self.restart = None           # the checkpoint folder this run continues, if any

    def due(self, iteration: int) -> bool:
        return self.every > 0 and iteration > 0 and iteration % self.every == 0

    def write(self, previous=None, last=None, **meta):
        """The current states of the system, with ``meta`` (iteration, λ, …) and, if given,
        the states of the vectors ``previous`` (a continuation's previous stage: its secant
        predictor's other point) and ``last`` (in the middle of a stage: the last converged
        one's), as ``nodal.npz`` columns PREVIOUS and LAST (read by :meth:`read_states`)."""
        st = self.st
        tags = {name: getattr(st.problem, name) for name in TAGS     # exits, walls, periodic
                if getattr(st.problem, name, None) is not None}      # sides, regions
        extra = {k: v for k, v in ((PREVIOUS, previous), (LAST, last)) if v is not None}

        def arrays():
            out = _gather_nodal(st.comm, st.V, _states(st))
            if extra:
                now = st.create_vec()
                st.states_to_vec(now)
                try:
                    for key, vec in extra.items():
                        st.vec_to_states(vec)
                        more = _gather_nodal(st.comm, st.V, _states(st))
                        if STATES in more:
                            out[key] = more[STATES]
                finally:
                    st.vec_to_states(now)
                    now.destroy()
            return out

        _commit(self.folder, st.comm, st.problem.mesh, tags, arrays,
                {"config_hash": self.hash, "steps": st.N,
                 "ndofs": st.V.dofmap.index_map.size_global, "legs": self.legs,
                 "config": self.sections, **meta, "previous_states": previous is not None,
                 "last_states": last is not None, "tags": list(tags)})
        self.written += 1
        _test_pause(st.comm, self.written, meta.get("phase", ""))

    def read_states(self, st, which: str = "previous"):
        """A new vector of the states ``which`` ("previous" or "last", :meth:`write`) stored
        with the checkpoint this run continues, for the system ``st`` (its current states are
        left alone); None if it holds none."""
        if self.restart is None:
            return None
        meta = read_meta(self.restart, None)
        if not meta.get(f"{which}_states"):
            return None
        now, vec = st.create_vec(), st.create_vec()
        st.states_to_vec(now)
        try:
            _scatter_nodal(self.restart, st.V, _states(st),
                           key={"previous": PREVIOUS, "last": LAST}[which])
            st.states_to_vec(vec)
        finally:
            st.vec_to_states(now)
            now.destroy()
        return vec


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (a read-only or busy folder): one line naming it,
    exit status 2 — an input/environment problem, not a failed solve.  (No space left:
    :class:`~fem_mfc.errors.DiskFullError`, as for every other output.)"""

    def __init__(self, folder, reason: str):
        super().__init__(f"{folder}: cannot write the checkpoint ({reason}); fix the folder "
                         "or set [output] checkpoint_every = 0")


def _commit(folder: Path, comm, mesh, tags: dict, arrays, info: dict,
            files=(STATE, ARRAYS, META), what: str = "a checkpoint"):
    """Write a checkpoint atomically into a temporary folder ``FOLDER.tmp-PID`` beside
    ``folder``, which then takes the place of ``folder`` (a run killed at any moment leaves
    the last complete checkpoint): the mesh and its ``tags`` {name: MeshTags} (``state.bp``),
    the nodal values ``arrays()`` returns ({name: array} on rank 0, collective; ``nodal.npz``)
    and the meta data ``info`` (``meta.json``).  ``files``: other names for these three
    (a saved model, :mod:`fem_mfc.learning.saved`), ``what``: the folder in error messages.

    Everything is written by rank 0 alone: the mesh is gathered there and written by ADIOS2
    on a communicator of its own.  A full disk is then one rank's Python exception, shared
    with the others by a broadcast: a collective ADIOS2 write that failed on one rank left the
    others waiting for ever, and a failed ADIOS2 engine aborts the process (exit 134) when it
    is destroyed.  Before writing, rank 0 checks the free space against the checkpoint's size
    (:func:`_needed`); a write that fails all the same (the disk filled meanwhile) leaks the
    failed engine (:func:`fem_mfc.io._leak`) instead of destroying it.  Either is a
    :class:`~fem_mfc.errors.DiskFullError` on every rank; the temporary folder is deleted."""
    tmp = comm.bcast(str(folder.with_name(folder.name + f".tmp-{os.getpid()}"))
                     if comm.rank == 0 else None, root=0)
    tmp = Path(tmp)

    def on_rank0(action):
        """``action()`` on rank 0; its failure is every rank's DiskFullError or
        CheckpointWriteError (an OSError on rank 0 was a solver failure — 'Device or resource
        busy' tried the whole continuation and exited 3 — and left the other ranks in a
        barrier)."""
        err = None
        if comm.rank == 0:
            try:
                action()
            except Exception as e:
                _leak(e)                # its traceback holds a failed ADIOS2 engine, if any
                shutil.rmtree(tmp, ignore_errors=True)
                if not isinstance(e, (OSError, RuntimeError)):     # (ADIOS2's errors are
                    raise                  # RuntimeErrors) a bug: MPI_Abort, see fem_mfc.cli
                full = is_disk_full(e) or _no_space_left(folder.parent)
                why = (e.strerror if isinstance(e, OSError) and e.strerror
                       else (str(e).strip().splitlines() or [type(e).__name__])[0][:200])
                err = (full, why)
        err = comm.bcast(err, root=0)
        if err is not None:
            full, reason = err
            if full:
                raise DiskFullError(folder, what)
            if what != "a checkpoint":
                raise UserError(f"{folder}: cannot write {what} ({reason})")
            raise CheckpointWriteError(folder, reason)

    for t in tags.values():
        mesh.topology.create_connectivity(t.dim, 0)
    data = _gather_mesh(comm, mesh, tags)
    nodal = arrays() or {}

    def begin():
        shutil.rmtree(tmp, ignore_errors=True)
        need = _needed(folder, data, nodal, files[2])
        free = _free_bytes(folder.parent)
        if free is not None and free < need:
            raise OSError(errno.ENOSPC, f"No space left on device ({need / 2**20:.1f} MB "
                          f"needed, {free / 2**20:.1f} MB free)", str(tmp))
        tmp.mkdir(parents=True)
        _write_state(tmp / files[0], data)
    on_rank0(begin)

    def finish():
        if nodal:
            np.savez(tmp / files[1], **nodal)
        meta = {**info, "ranks": comm.size, "state_files": _sizes(tmp / files[0])}
        (tmp / files[2]).write_text(json.dumps(meta, indent=1, default=_plain) + "\n")
        _replace(tmp, folder)
    on_rank0(finish)


def _replace(tmp: Path, folder: Path):
    """``tmp`` becomes ``folder`` in one step (``renameat2(RENAME_EXCHANGE)``, then the
    earlier checkpoint is deleted): a kill between the two renames of the fallback (file
    systems that cannot exchange) leaves ``FOLDER.old-PID``, which :func:`remove_stale` puts
    back."""
    if folder.exists():
        if _exchange(tmp, folder):
            shutil.rmtree(tmp, ignore_errors=True)          # now the earlier checkpoint
            return
        old = folder.with_name(folder.name + f".old-{os.getpid()}")
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)


def _gather_mesh(comm, mesh, tags: dict) -> dict | None:
    """The mesh's geometry (owned nodes, in their global order), its cells (global node
    numbers) and the ``tags`` {name: MeshTags} (each entity by its global node numbers, as
    adios4dolfinx writes them) gathered on rank 0, None elsewhere (collective)."""
    import dolfinx
    gmap, gdim = mesh.geometry.index_map(), mesh.geometry.dim
    tdim = mesh.topology.dim
    cells = mesh.topology.index_map(tdim).size_local
    x = mesh.geometry.x[:gmap.size_local, :gdim].copy()
    dofmap = mesh.geometry.dofmap[:cells, :]
    topo = np.asarray(gmap.local_to_global(dofmap.reshape(-1)), dtype=np.int64).reshape(
        dofmap.shape)
    layout = mesh.geometry.cmap.create_dof_layout()
    local_tags = {}
    for name, t in tags.items():
        owned = t.indices[t.indices < mesh.topology.index_map(t.dim).size_local]
        e2g = dolfinx.cpp.mesh.entities_to_geometry(mesh._cpp_object, t.dim, owned, False)
        nodes = np.asarray(gmap.local_to_global(e2g.reshape(-1)), dtype=np.int64).reshape(
            len(owned), layout.num_entity_closure_dofs(t.dim))
        local_tags[name] = (nodes, t.values[:len(owned)].copy(), t.dim)
    parts = comm.gather((x, topo, local_tags), root=0)
    if comm.rank != 0:
        return None
    return {"x": np.concatenate([p[0] for p in parts]),
            "cells": np.concatenate([p[1] for p in parts]),
            "cell_type": mesh.topology.cell_name(), "degree": mesh.geometry.cmap.degree,
            "variant": int(mesh.geometry.cmap.variant),
            "tags": {name: (np.concatenate([p[2][name][0] for p in parts]),
                            np.concatenate([p[2][name][1] for p in parts]), t.dim)
                     for name, t in tags.items()}}


def _write_state(bp: Path, data: dict):
    """Write the mesh and tags gathered by :func:`_gather_mesh` as adios4dolfinx does
    (``read_mesh`` and ``read_meshtags`` read them on any number of ranks), by this rank
    alone (rank 0; :func:`fem_mfc.compat.write_mesh_serially`)."""
    from .compat import write_mesh_serially
    write_mesh_serially(bp, data)


STATE_OVERHEAD = 1.1, 256 * 1024   # ADIOS2's file around the mesh's arrays: × 1.1 + 256 kB


def _needed(folder: Path, data: dict, nodal: dict, meta_name: str = META) -> int:
    """The bytes a new checkpoint of ``folder`` will take: its arrays (``nodal.npz``) and the
    mesh (``state.bp``: as large as the current checkpoint's, else its arrays with
    :data:`STATE_OVERHEAD`)."""
    arrays = sum(np.asarray(v).nbytes + 1024 for v in nodal.values())
    try:
        state = sum(json.loads((folder / meta_name).read_text())["state_files"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raw = data["x"].nbytes + data["cells"].nbytes + sum(
            a.nbytes + b.nbytes for a, b, _ in data["tags"].values())
        state = raw
    return int(arrays + STATE_OVERHEAD[0] * state + STATE_OVERHEAD[1])


def _free_bytes(path: Path) -> int | None:
    """Bytes free for an unprivileged writer on the file system of ``path`` (None: unknown)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    if st.f_blocks == 0:          # a file system that reports no sizes (some FUSE ones)
        return None
    return st.f_bavail * st.f_frsize


def _sizes(bp: Path) -> dict:
    """{relative path: size} of the files of the ADIOS2 folder ``bp`` (a checkpoint's
    integrity record: a reader of a truncated BP file waits for the rest for ever)."""
    if not bp.is_dir():
        return {}
    return {str(f.relative_to(bp)): f.stat().st_size for f in sorted(bp.rglob("*"))
            if f.is_file()}


def _plain(v):
    """JSON for numpy numbers and arrays in meta data."""
    return v.tolist() if isinstance(v, np.ndarray) else float(v)


def _test_pause(comm, count: int, phase: str):
    """Test hook: with FEM_MFC_TEST_CHECKPOINT_PAUSE=S (or S:PHASE), announce every checkpoint
    (of that phase, "newton" or "continuation") on stderr (rank 0), and at the
    FEM_MFC_TEST_CHECKPOINT_AT-th of them (default 1) sleep S seconds, so that a test can kill
    the run right after it."""
    pause = os.environ.get("FEM_MFC_TEST_CHECKPOINT_PAUSE")
    if not pause:
        return
    seconds, _, only = pause.partition(":")
    if only and only != phase:
        return
    import sys
    import time
    _PAUSE_SEEN[0] += 1
    if comm.rank == 0:
        sys.stderr.write(f"CHECKPOINT {count} {phase}\n")
        sys.stderr.flush()
    if _PAUSE_SEEN[0] == int(os.environ.get("FEM_MFC_TEST_CHECKPOINT_AT", "1")):
        time.sleep(float(seconds))


_PAUSE_SEEN = [0]          # checkpoints of the selected phase announced in this process


@contextlib.contextmanager
def _intact(folder, part: str):
    """Reading ``part`` of checkpoint ``folder``: a damaged or truncated file (a disk that
    filled, a copy cut short) is refused with one line (exit 2), not a traceback."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as e:     # JSON, zip (npz) and ADIOS2 errors, missing arrays or names
        why = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise ConfigError("--restart", f"an intact checkpoint ({part} cannot be read: {why})",
                          str(folder)) from None


def read_meta(folder: Path, cfg: dict | None) -> dict:
    """The checkpoint's meta data, refused if it belongs to another problem (``cfg`` None:
    not checked)."""
    with _intact(folder, META):
        meta = json.loads((Path(folder) / META).read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    if cfg is None:
        return meta
    if meta.get("config_hash") != config_hash(cfg):
        raise ConfigError("--restart", _mismatch(meta, cfg), str(folder))
    if meta.get("steps") != cfg["problem"]["steps"]:
        raise ConfigError("--restart", f"a checkpoint with problem.steps = "
                          f"{cfg['problem']['steps']}", str(folder))
    return meta


def read_mesh(folder: Path, comm=MPI.COMM_WORLD, meta: dict | None = None):
    """The checkpoint's mesh, distributed over ``comm`` (any number of ranks), and its tags:
    (mesh, {"cell_tags": …, "facet_tags": …}) with the tags the checkpoint holds."""
    import adios4dolfinx
    bp = Path(folder) / STATE
    with _intact(folder, STATE):
        expected, found = (meta or {}).get("state_files"), _sizes(bp)
        if expected is not None and found != expected:          # ADIOS2 waits for a file
            raise ValueError("its files are not those written")   # cut short, for ever
        if not any(k.startswith("md.") and v > 0 for k, v in found.items()):
            raise ValueError("no metadata")         # a checkpoint older than the record
        mesh = adios4dolfinx.read_mesh(bp, comm)
        tags = {}
        for name in (meta or {}).get("tags", ()):
            if name in TAGS:
                tags[name] = adios4dolfinx.read_meshtags(bp, mesh, meshtag_name=name)
    return mesh, tags


def _states(st) -> list:
    """The states a checkpoint holds: ρ¹..ρ^N, u⁰..u^{N−1}."""
    return [st.rho[n] for n in range(1, st.N + 1)] + [st.u[n] for n in range(st.N)]


def _gather_rows(comm, nodes, columns: dict) -> dict:
    """{NODES: coordinates, name: values} gathered on rank 0 in rank order (empty elsewhere):
    ``nodes`` this rank's owned node coordinates, ``columns`` {name: (nodes, k) values}."""
    nodes = comm.gather(nodes, root=0)
    vals = {key: comm.gather(v, root=0) for key, v in columns.items()}
    if comm.rank != 0:
        return {}
    return {NODES: np.concatenate(nodes), **{k: np.concatenate(v) for k, v in vals.items()}}


def _read_rows(folder: Path, nodes, names, key: str = NODES) -> dict:
    """{name: values at this rank's ``nodes``} of a checkpoint written by :func:`_gather_rows`,
    the rows found by the nodes' coordinates (stored as ``key``)."""
    with _intact(folder, ARRAYS), np.load(Path(folder) / ARRAYS) as z:
        rows = _match_nodes(z[key], nodes, folder)
        return {name: z[name][rows] for name in names}


def _gather_nodal(comm, V, functions) -> dict:
    """The values of ``functions`` (of V) at V's owned nodes, (nodes, len(functions)·bs), as
    the column STATES of :func:`_gather_rows`."""
    n, bs = V.dofmap.index_map.size_local, V.dofmap.index_map_bs
    vals = np.stack([f.x.array[: n * bs].reshape(n, bs) for f in functions], axis=1)
    return _gather_rows(comm, V.tabulate_dof_coordinates()[:n], {STATES: vals.reshape(n, -1)})


def _scatter_nodal(folder: Path, V, functions, group: str = "", key: str | None = None):
    """``functions`` (of V; None: skip that column) ← the values of :func:`_gather_nodal`
    stored in ``folder`` (as columns NODES + group, ``key`` or STATES + group)."""
    n, bs = V.dofmap.index_map.size_local, V.dofmap.index_map_bs
    key = key or STATES + group
    vals = _read_rows(folder, V.tabulate_dof_coordinates()[:n], [key], NODES + group)[key]
    vals = vals.reshape(n, len(functions), bs)
    for k, f in enumerate(functions):
        if f is not None:
            f.x.array[: n * bs] = vals[:, k].ravel()
            f.x.scatter_forward()


def load_states(folder: Path, st):
    """States of ``st`` (built on the checkpoint's mesh) ← the checkpoint (its nodal values;
    a checkpoint of fem_mfc ≤ 2026-12-07 holds one adios4dolfinx function per state)."""
    if (Path(folder) / ARRAYS).is_file():
        _scatter_nodal(folder, st.V, _states(st))
        return
    import adios4dolfinx
    bp = Path(folder) / STATE
    with _intact(folder, STATE):
        for n in range(1, st.N + 1):
            adios4dolfinx.read_function(bp, st.rho[n], name=f"rho_{n}")
            st.rho[n].x.scatter_forward()
        for n in range(st.N):
            adios4dolfinx.read_function(bp, st.u[n], name=f"u_{n}")
            st.u[n].x.scatter_forward()


def mesh_data(folder: Path, cfg: dict, comm=MPI.COMM_WORLD, meta: dict | None = None):
    """The :class:`~fem_mfc.mesh.MeshData` of a restart: the checkpoint's mesh and tags (the
    sides' tags of an interval/rectangle/box again where it holds none), with the config's
    formulas checked on it."""
    from .checks import check_formulas
    from .mesh import MeshData, side_tags
    mesh, tags = read_mesh(folder, comm, meta)
    md = MeshData(mesh, **tags)
    m = cfg["mesh"]
    if md.facet_tags is None and m["kind"] in ("interval", "rectangle", "box"):
        md.facet_tags = side_tags(md.mesh, m["lower"], m["upper"])
    check_formulas(cfg, md.mesh)
    return md


class TrainingWriter:
    """Checkpoints of a trainer (:mod:`fem_mfc.learning.trainer`, or the Galerkin sweeps of
    :mod:`fem_mfc.learning.feedback`) every ``every`` outer iterations.  A control is stored as
    its values at the velocity nodes, all layers side by side, in the nodes' global order with
    their coordinates (``nodal.npz``, written by rank 0): a reader on any number of ranks
    finds its nodes by their coordinates.  (One adios4dolfinx function per layer and control
    stored a dofmap each: 858 MB for L-BFGS with 6 pairs at 25,611 dofs × 20 layers, against
    the 106 MB of the values.)  The dictionary weights θ, which every rank holds, are stored
    as they are (``replicated_control``)."""

    def __init__(self, folder: Path, model, cfg: dict, every: int):
        self.folder, self.model, self.every = Path(folder), model, int(every)
        self.hash, self.sections = config_hash(cfg), problem_sections(cfg)
        self.written = 0

    due = Writer.due

    def write(self, iteration: int, controls: dict, **meta):
        """The controls ``{name: control}`` (the iterate and the trainer's vectors) after outer
        iteration ``iteration``, with the trainer's ``meta`` (JSON: history, counts, …)."""
        model = self.model

        def arrays():
            if model.replicated_control:
                return {k: np.asarray(c, dtype=float) for k, c in controls.items()}
            return _gather_rows(model.comm, model.control_nodes(),
                                {k: model.control_values(c) for k, c in controls.items()})

        _commit(self.folder, model.comm, model.mesh, {}, arrays,
                {"config_hash": self.hash, "config": self.sections, "steps": model.N,
                 "phase": "training",
                 "iteration": int(iteration), "controls": list(controls),
                 "ndofs": model.V.dofmap.index_map.size_global, **meta})
        self.written += 1
        _test_pause(model.comm, self.written, "training")


@dataclass
class TrainingState:
    """A trainer's checkpoint read back: the outer iteration it was written after, the controls
    by name (in the model's format) and the trainer's meta data."""

    iteration: int
    controls: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def load_training(folder: Path, model, meta: dict) -> TrainingState:
    """The training state of checkpoint ``folder`` for ``model`` (built on its mesh, on any
    number of ranks)."""
    if meta.get("phase") != "training":
        raise ConfigError("--restart", "a checkpoint written by a trainer (this one is of an "
                          f"HJB-FP solve: phase '{meta.get('phase')}')", str(folder))
    names = meta["controls"]
    if model.replicated_control:
        with _intact(folder, ARRAYS), np.load(Path(folder) / ARRAYS) as z:
            controls = {key: z[key].copy() for key in names}
    else:
        controls = {key: model.control_from_values(v)
                    for key, v in _read_rows(folder, model.control_nodes(), names).items()}
    return TrainingState(int(meta["iteration"]), controls, meta)


class StepWriter:
    """Checkpoints of a time-stepped run (``heat``, ``nls``, ``qhd`` with signature
    ``quantum``) every ``every`` steps: the mesh; the fields the next step reads — the state,
    and for the NLS midpoint rule the previous state its extrapolated first guess needs — and
    the figures' snapshots so far, as nodal values keyed by the nodes' coordinates (one
    group per function space); the step and the invariants' histories in ``meta.json``.  A
    restart continues from the stored step and takes the uninterrupted run's steps."""

    def __init__(self, folder: Path, mesh, cfg: dict, every: int):
        self.folder, self.mesh, self.every = Path(folder), mesh, int(every)
        self.hash, self.steps = config_hash(cfg), cfg["problem"]["steps"]
        self.sections = problem_sections(cfg)
        self.written = 0

    due = Writer.due

    def write(self, step: int, fields: dict, **meta):
        """``fields`` {name: Function} after time step ``step``, with ``meta`` (JSON)."""
        comm = self.mesh.comm
        groups = [names for _, names in _by_space(fields)]

        def arrays():
            out = {}
            for g, (V, names) in enumerate(_by_space(fields)):
                rows = _gather_nodal(comm, V, [fields[k] for k in names])
                out.update({f"{key}{g}": v for key, v in rows.items()})
            return out

        _commit(self.folder, comm, self.mesh, {}, arrays,
                {"config_hash": self.hash, "steps": self.steps, "config": self.sections,
                 "phase": "stepping",
                 "step": int(step), **meta, "groups": groups})
        self.written += 1
        _test_pause(comm, self.written, "stepping")


def snapshot_fields(snaps: dict) -> dict:
    """The figures' snapshots {step: Function or tuple of Functions} as checkpoint fields
    (``snap_<step>``, ``snap_<step>_<i>`` for the i-th of a tuple), for :class:`StepWriter`
    and :func:`load_stepping` alike."""
    out = {}
    for k, f in snaps.items():
        if isinstance(f, tuple):
            out.update({f"snap_{k}_{i}": g for i, g in enumerate(f)})
        else:
            out[f"snap_{k}"] = f
    return out


def _by_space(fields: dict) -> list:
    """[(space, [names])] of ``fields`` {name: Function}, one entry per function space."""
    out = []
    for name, f in fields.items():
        for V, names in out:
            if V is f.function_space:
                names.append(name)
                break
        else:
            out.append((f.function_space, [name]))
    return out


def load_stepping(folder: Path, meta: dict, fields: dict) -> dict:
    """``fields`` {name: Function} (on the checkpoint's mesh, any number of ranks) ← the
    stored fields of a :class:`StepWriter` checkpoint; returns its meta data.  Stored names
    that ``fields`` lacks are skipped; a name the checkpoint lacks is refused."""
    if meta.get("phase") != "stepping":
        raise ConfigError("--restart", "a checkpoint of a time-stepped run (this one is of a "
                          f"'{meta.get('phase')}' solve)", str(folder))
    for g, names in enumerate(meta["groups"]):
        wanted = [k for k in names if k in fields]
        if wanted:
            _scatter_nodal(folder, fields[wanted[0]].function_space,
                           [fields.get(k) for k in names], str(g))
    missing = set(fields) - {k for names in meta["groups"] for k in names}
    if missing:
        raise ConfigError("--restart", f"a checkpoint holding {sorted(missing)}", str(folder))
    return meta


def _match_nodes(stored: np.ndarray, mine: np.ndarray, folder) -> np.ndarray:
    """Rows of ``stored`` (node coordinates) at the coordinates ``mine``; refused where a node
    has no stored twin (a checkpoint of another mesh)."""
    from scipy.spatial import cKDTree
    if not len(mine):
        return np.zeros(0, dtype=np.int64)
    scale = float(np.abs(stored).max()) if len(stored) else 1.0
    tol = 1e-10 * max(scale, 1.0)
    if len(stored) < 2:
        dist, rows = cKDTree(stored).query(mine) if len(stored) else (np.array([np.inf]), None)
        twin = np.full(len(mine), np.inf)
    else:
        dist, rows = cKDTree(stored).query(mine, k=2)
        twin, dist, rows = dist[:, 1], dist[:, 0], rows[:, 0]
    if dist.max() > tol:
        raise ConfigError("--restart", "a checkpoint whose nodes are this run's (the same mesh "
                          "and elements)", str(folder))
    if twin.min() <= tol:           # two stored nodes at one point: which is whose is unknown
        raise ConfigError("--restart", "a mesh whose nodes have distinct coordinates (this "
                          "checkpoint's mesh has coincident nodes, e.g. a slit; its values "
                          "cannot be matched to nodes)", str(folder))
    return rows


def remove(folder: Path, comm=MPI.COMM_WORLD):
    """Delete a checkpoint folder (after the run it belongs to has finished), with the
    temporary and replaced copies a killed write left beside it (``.tmp-PID``, ``.old-PID``)."""
    if comm.rank == 0:
        folder = Path(folder)
        shutil.rmtree(folder, ignore_errors=True)
        for stale, pid in _leftovers(folder):        # this process's, or a dead one's (not
            if pid == os.getpid() or not _alive(pid):   # a run that took the folder since)
                shutil.rmtree(stale, ignore_errors=True)
    comm.barrier()


def _leftovers(folder: Path) -> list:
    """[(path, pid)] of the copies a checkpoint write leaves beside ``folder`` while it runs
    (``FOLDER.tmp-PID``, ``FOLDER.old-PID``: only names of that form)."""
    out = []
    for kind in (".old-", ".tmp-"):
        for p in folder.parent.glob(folder.name + kind + "*"):
            pid = p.name[len(folder.name) + len(kind):]
            if pid.isdigit() and p.is_dir() and not p.is_symlink():
                out.append((p, int(pid)))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                 # EPERM: someone else's, alive
        return True
    return True


def remove_stale(folder: Path, comm=MPI.COMM_WORLD, log=None):
    """At the start of a run or restart (its output folder locked): delete the temporary and
    replaced copies beside checkpoint folder ``folder`` whose process no longer exists — a run
    killed, or ended by a full disk, while it wrote a checkpoint.  They were deleted only when
    a later run into the folder converged, and a run that could not finish for want of space
    left one every time.  Where ``folder`` itself is missing (killed between the two renames of
    :func:`_replace`'s fallback), the complete copy is put back instead: the new one (its
    ``meta.json`` is written last), else the replaced one."""
    if comm.rank == 0:
        folder = Path(folder)
        dead = [(p, pid) for p, pid in _leftovers(folder) if not _alive(pid)]
        if not folder.exists():
            whole = ([p for p, _ in dead if ".tmp-" in p.name and (p / META).is_file()]
                     + [p for p, _ in dead if ".old-" in p.name and (p / META).is_file()])
            if whole:
                with contextlib.suppress(OSError):
                    os.rename(whole[0], folder)
                    if log is not None:
                        log.info("checkpoint %s restored from %s", folder, whole[0].name)
        for p, _ in dead:
            if p.exists():
                shutil.rmtree(p, ignore_errors=True)
                if log is not None:
                    log.info("deleted %s (a checkpoint write of a process that ended)", p)
    comm.barrier()


def remove_when_committed(folder: Path, ctx):
    """Delete a finished run's checkpoint once its results are in place (``ctx.commit``), not
    when its solve ends: a run killed while it wrote its outputs (figures, series: 10 s after
    a 2 s solve) used to lose both the results and the checkpoint.  Without a run context
    that commits (library use), at once."""
    hooks = getattr(ctx, "after_commit", None)
    if hooks is None:
        remove(folder, ctx.comm)
    else:
        hooks.append(lambda: remove(folder, ctx.comm))


def _obsolete(writer, ctx) -> bool:
    """Is ``writer``'s checkpoint folder obsolete now that its run has finished: written by
    this run, or the very checkpoint it restarted from (a restart that converged without
    another checkpoint left it, 8 MB, behind)?"""
    restart = getattr(ctx, "restart", None)
    return bool(writer.written) or (restart is not None
                                    and Path(restart).absolute() == writer.folder.absolute())


# -- the runners' side: restarts and writers of a run ---------------------------------------
def restart_mesh(cfg: dict, ctx, md=None):
    """(the restart's meta data or None, the mesh): the checkpoint's mesh on a restart
    (``ctx.restart``), else ``md`` (None: the caller builds the config's)."""
    restart = getattr(ctx, "restart", None)
    if restart is None:
        return None, md
    resume = read_meta(restart, cfg)
    return resume, mesh_data(restart, cfg, ctx.comm, resume)


def restarted_from(resume: dict | None) -> dict | None:
    """The summary's record of a Newton restart: the checkpoint's phase, ``iteration`` (the
    Newton iterations of its attempt from the attempt's start, across earlier restarts),
    ``iterations_run`` (every Newton iteration of the run before it) and continuation
    parameter, and ``leg``, this run's place in the chain of restarts (2: the first restart;
    a checkpoint older than the count counts as one leg); None without a restart."""
    if resume is None:
        return None
    out = {k: resume.get(k) for k in ("phase", "iteration", "iterations_run", "lambda")
           if resume.get(k) is not None}
    out["leg"] = int(resume.get("legs", 1)) + 1
    return out


@contextlib.contextmanager
def newton_checkpoints(cfg: dict, ctx, problem, resume, newton: bool, make=None):
    """(system, writer) for a Newton solve of ``problem``: the space-time system (``make``,
    default :func:`~fem_mfc.solvers.newton.make_system`) holding the checkpoint's states on a
    restart, and the writer of ``[output] checkpoint_every`` (None, None: neither).  The
    checkpoint is removed when the solve has converged (the caller sets
    ``writer.converged``)."""
    from .solvers.newton import make_system
    every = cfg["output"].get("checkpoint_every", 0)
    system = writer = None
    if resume is not None or (every and newton):
        system = (make or make_system)(problem)
        if resume is not None:
            load_states(ctx.restart, system)
            ctx.log.info("restarting from %s (iteration %s, lambda %s)", ctx.restart,
                         resume.get("iteration"), resume.get("lambda"))
        if every or resume is not None:     # (every = 0: writes nothing, removes the
            writer = Writer(folder_for(ctx.outdir), system, cfg, every)    # one it read)
            writer.converged = False
            if resume is not None:
                writer.legs = int(resume.get("legs", 1)) + 1
                writer.restart = ctx.restart
    yield system, writer
    if writer is not None and writer.converged and _obsolete(writer, ctx):
        remove_when_committed(writer.folder, ctx)        # the run is complete


@contextlib.contextmanager
def stepping_checkpoints(cfg: dict, ctx, mesh, resume):
    """The checkpoint writer of a time-stepped run on ``mesh`` (None: ``checkpoint_every``
    off); ``resume``: the restart's meta data (:func:`restart_mesh`), or None.  The checkpoint
    is removed when the run has taken its last step (the caller sets ``writer.done``)."""
    every = cfg["output"]["checkpoint_every"]
    writer = (StepWriter(folder_for(ctx.outdir), mesh, cfg, every)    # every = 0 on a
              if every or resume is not None else None)             # restart: see Writer
    if resume is not None:
        if resume.get("phase") != "stepping":
            load_stepping(ctx.restart, resume, {})           # refused with one line
        ctx.log.info("restarting from %s (step %d)", ctx.restart, resume["step"])
    if writer is not None:
        writer.done = False
    yield writer
    if writer is not None and writer.done and _obsolete(writer, ctx):
        remove_when_committed(writer.folder, ctx)        # the run is complete


@contextlib.contextmanager
def training_checkpoints(cfg: dict, ctx, model, meta):
    """(writer, resume) for the trainer of ``model`` (built on the mesh of
    :func:`restart_mesh`): the checkpoint writer of ``[output] checkpoint_every`` (None: off)
    and the state to resume from, read from ``ctx.restart`` whose meta data is ``meta``
    (None: a fresh start).  The checkpoint is removed once the training has converged."""
    resume = None
    if meta is not None:
        resume = load_training(ctx.restart, model, meta)
        ctx.log.info("restarting the training from %s (outer iteration %d)", ctx.restart,
                     resume.iteration)
    every = cfg["output"]["checkpoint_every"]
    writer = (TrainingWriter(folder_for(ctx.outdir), model, cfg, every)   # every = 0 on a
              if every or meta is not None else None)                   # restart: see Writer
    yield writer, resume
    if writer is not None and model.converged and _obsolete(writer, ctx):
        remove_when_committed(writer.folder, ctx)        # the training is complete


__all__ = ["StepWriter", "TrainingState", "TrainingWriter", "Writer", "config_hash",
           "file_digest", "input_digests",
           "problem_sections", "folder_for", "resolve", "read_meta", "read_mesh", "mesh_data",
           "load_states", "load_training", "load_stepping", "remove", "remove_stale",
           "restart_mesh", "newton_checkpoints", "training_checkpoints", "stepping_checkpoints",
           "restarted_from", "snapshot_fields"]
