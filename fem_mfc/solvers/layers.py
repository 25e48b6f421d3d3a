"""Per-layer factorisations distributed over the ranks by layer, not by space.

A sweep over N layers (time steps) solves with N matrices A₀ … A_{N−1} that are all known
before it starts — in the reduced functionals of the learning problems they depend on the
control only (M + τXₙ for the transport, Cₙ for the metric) — and its cost is their
factorisation (the solves reuse the factors many times).  Distributing each factorisation
over the ranks (MUMPS) gains little on the meshes of such problems (2D, 3k–100k dofs; the
measurements: docs/performance.md, "Learning under MPI"), and redundant factors on every
rank gain nothing.  Here layer n is factorised on rank
``owner(n) = n mod size`` from a full copy of Aₙ gathered there (``MatCreateSubMatrices``),
all ranks factorising their layers at the same time; a solve gathers the right-hand side on
the owner, solves there and scatters the solution back (two messages of one vector).  The
sweep itself stays sequential — its solves are cheap beside the factorisations.  The data
movement is :class:`~fem_mfc.solvers.steps.OwnerTransfer`'s, shared with the sweep
preconditioner's one-rank factors (:class:`~fem_mfc.solvers.steps.OwnedLU`).

:class:`LayerFactors` is that; on one rank (or with ``-{prefix}layers spatial``) it is the
plain per-layer KSP on the distributed matrix, factorised at the first solve after
:meth:`LayerFactors.update`.  Same factors, same solution (to round-off) either way.
"""
from __future__ import annotations

from mpi4py import MPI
from petsc4py import PETSc

import numpy as np

from .. import options
from ..errors import SolverError
from .steps import OwnerTransfer, factorise

MODES = ("auto", "layers", "spatial")
NOT_FINITE = -1000                    # a "reason": the solution has NaN/inf


def _check(reason: int, what: str):
    """Raise for a failed (reason < 0) or non-finite (NOT_FINITE) solve."""
    if reason == NOT_FINITE:
        raise SolverError(f"{what}: NaN/inf in the solution")
    if reason < 0:
        raise SolverError(f"{what}: linear solve failed (KSP reason {reason})")


class LayerFactors:
    """Solvers of the per-layer matrices ``mats`` (distributed, filled by the caller).

    ``make_ksp(comm, A) -> KSP`` builds one layer's solver on ``comm`` (its options prefix
    ``prefix``); ``mode``: "layers" (factorise layer n on rank n mod size), "spatial" (the
    KSP on the distributed matrix) or "auto" (layers on more than one rank when
    ``direct``, i.e. the solver is a factorisation; option ``-{prefix}layers``)."""

    def __init__(self, mats: list, prefix: str, make_ksp, direct: bool = True,
                 mode: str = "auto"):
        self.mats = mats
        self.comm = mats[0].getComm().tompi4py()
        self.size, self.rank = self.comm.size, self.comm.rank
        mode = options.get("layers", mode, prefix)
        if mode not in MODES:
            from ..errors import ConfigError
            raise ConfigError(f"-{prefix}layers", "one of " + ", ".join(MODES), mode)
        if mode == "auto":
            mode = "layers" if self.size > 1 and direct and len(mats) > 1 else "spatial"
        self.mode = "spatial" if self.size == 1 else mode
        self.N = len(mats)
        if self.mode == "spatial":
            self.ksp = [make_ksp(self.comm, A) for A in mats]
            self.b, self.y = mats[0].createVecs()
            return
        n_glob = mats[0].getSize()[0]
        self.owned = [n for n in range(self.N) if n % self.size == self.rank]
        self.sub = {}                         # layer -> sequential copy (empty off its owner)
        self.ksp = {}
        self.b, self.y = mats[0].createVecs()
        self.fullx = PETSc.Vec().createSeq(n_glob, comm=PETSc.COMM_SELF)
        self.io = [OwnerTransfer(mats[0].getComm(), self.b.getLocalSize(), n_glob, o)
                   for o in range(self.size)]          # owner rank -> gather / scatter back
        self._make = make_ksp
        self._pool = []                       # full vectors of the owned right-hand sides

    def owner(self, n: int) -> int:
        return n % self.size

    # -- factors ---------------------------------------------------------------------------
    def update(self):
        """The matrices were refilled: gather each layer's copy on its owner and factorise
        (spatial mode: MUMPS' factorisations now, with more workspace where it asks for it
        (:func:`fem_mfc.options.factorise`), the others at the next solve).  Collective."""
        if self.mode == "spatial":
            for ksp, A in zip(self.ksp, self.mats):
                ksp.setOperators(A)
                options.factorise(ksp)
            return
        for n, A in enumerate(self.mats):     # collective gathers first (every rank keeps
            self.sub[n] = self.io[self.owner(n)].matrix(A, self.sub.get(n))   # its part,
        ok = True                                       # empty or full, so all reuse together)
        for n in self.owned:                  # ... then every rank factorises its layers
            try:                              # (local: a failure must reach the allreduce)
                ksp = self.ksp.get(n)
                if ksp is None:
                    ksp = self.ksp[n] = self._make(MPI.COMM_SELF, self.sub[n])
                ok = factorise(ksp, self.sub[n]) and ok     # e.g. a zero pivot
            except Exception:
                ok = False
        if not self.comm.allreduce(ok, op=MPI.LAND):
            raise SolverError("a per-layer factorisation failed")

    # -- solves ------------------------------------------------------------------------------
    def solve(self, n: int, rhs: np.ndarray, transpose: bool = False,
              what: str = "layer solve") -> np.ndarray:
        """Aₙ⁻¹ rhs (or Aₙ⁻ᵀ rhs) for the owned part ``rhs``; owned part of the solution.
        Collective."""
        self.b.array[:] = rhs
        if self.mode == "spatial":
            reason = self._own_solve(self.ksp[n], transpose, self.b, self.y)
            reason = self.comm.allreduce(reason, op=MPI.MIN)
        else:                  # the hot path of the sweeps: one vector, one broadcast
            o = self.owner(n)
            v = self.io[o].gather(self.b)
            reason = self._own_solve(self.ksp[n], transpose, v) if o == self.rank else 0
            self.io[o].scatter_back(v, self.y)
            reason = self.comm.bcast(reason, root=o)
        _check(reason, what)
        return self.y.array.copy()

    def _own_solve(self, ksp, transpose: bool, b: PETSc.Vec, x: PETSc.Vec | None = None) -> int:
        """Solve on this rank into x (None: in place in b, through ``fullx``); the KSP reason,
        or NOT_FINITE."""
        out = self.fullx if x is None else x
        (ksp.solveTranspose if transpose else ksp.solve)(b, out)
        reason = ksp.getConvergedReason()
        if reason >= 0 and not np.isfinite(out.array_r).all():
            reason = NOT_FINITE
        if x is None:
            out.copy(b)
        return reason

    def solve_many(self, items: list, transpose: bool = False,
                   what: str = "layer solve") -> list:
        """[Aₙ⁻¹ rhs for (n, rhs) in items]: independent solves, each owner solving its
        layers' at the same time as the others (gather all, solve, scatter all back).
        Collective; the same ``items`` layers on every rank."""
        if self.mode == "spatial":
            return [self.solve(n, r, transpose, what) for n, r in items]
        while len(self._pool) < len(items):           # full vectors, kept for the next call
            self._pool.append(self.fullx.duplicate())
        mine, reason = [], 0
        for i, (n, rhs) in enumerate(items):          # gather every right-hand side
            o = self.owner(n)
            self.b.array[:] = rhs
            self.io[o].gather(self.b, self._pool[i] if o == self.rank else None)
            if o == self.rank:
                mine.append(i)
        for i in mine:                                # solve the own ones (concurrently)
            reason = min(reason, self._own_solve(self.ksp[items[i][0]], transpose,
                                                 self._pool[i]))
        outs = []
        for i, (n, _) in enumerate(items):            # scatter every solution back
            o = self.owner(n)
            self.io[o].scatter_back(self._pool[i] if o == self.rank else self.io[o].full,
                                    self.y)
            outs.append(self.y.array.copy())
        _check(self.comm.allreduce(reason, op=MPI.MIN), what)
        return outs

    def destroy(self):
        objs = [self.b, self.y]
        if self.mode == "spatial":
            objs += self.ksp
        else:
            objs += list(self.ksp.values()) + list(self.sub.values()) + self.io
            objs += [self.fullx, *self._pool]
        for o in objs:
            o.destroy()
        self.ksp = {} if self.mode != "spatial" else []


__all__ = ["LayerFactors", "MODES"]
