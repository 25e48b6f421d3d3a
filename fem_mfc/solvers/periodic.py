"""Periodic boundaries (``[[boundary]] kind = "periodic"``) of the HJB–FP system.

DOLFINx 0.9 cannot glue a mesh into a periodic topology, and dolfinx_mpc's reduced-space
assembly does not fit the shared-pattern block assembler, so the space stays the full,
non-periodic one and periodicity is imposed like the exits' Dirichlet data
(:mod:`fem_mfc.solvers.exits`): symmetrically, by a transformation that keeps every block's
size.  dolfinx_mpc only finds the pairs: every dof s of a slave side (``tag``) maps to the dof
m of the master side (``to``) at x_s − translation, with coefficient c_sm (1 on the matching
meshes of rectangles and boxes; the basis functions' values at the image point otherwise).
Chains (a corner of a box periodic in two directions is the slave of a slave) are resolved
globally, so every slave maps to final masters that are not slaves.

With the n × n matrix R, (Rr)_m = r_m + Σ_{s→m} c_sm r_s, (Rr)_s = 0 (slave rows added into
their masters, then zeroed), Rᵀ copies master values to the slaves: (Rᵀz)_s = Σ_m c_sm z_m.
The Newton unknown of a field is z (z = x with the slave entries 0) and the state is x = Rᵀz,
a periodic field.  The residual of a row is R F(Rᵀz) with the slave rows replaced by the
constraint z_s = 0 in the row's pivot field; the Jacobian blocks are R B Rᵀ (PETSc ``PtAP``
with P = Rᵀ), whose slave rows and columns vanish, with 1 on the diagonal of the pivot blocks'
slave rows.  Every block keeps its size, the KKT matrix stays symmetric and the pivot blocks
stay each other's transposes (``mirrored``), so the Newton and sweep machinery runs unchanged.

Mass: Rᵀ1 = 1 (the coefficients of a slave sum to 1), so Σ of the FP rows of R F is still
F(1) = ∫ρ^k − ∫ρ^{k+1}: ∫ρ is conserved to solver tolerance.  The states are stationary
points of L(Rᵀz) and lie in the range of Rᵀ, so the value identity J = J_value still holds.
"""
from __future__ import annotations

from mpi4py import MPI
from petsc4py import PETSc

import numpy as np

from ..errors import ConfigError
from ..forms import hjb_fp as H

PIVOTS = {("u", H.RHO_NEXT), ("rho", H.U_PREV), ("rho_last", H.U_PREV)}
DROP = 1e-10                       # coefficients of a master below this are dropped


def periodic_pairs(V, facet_tags, periodic) -> dict:
    """{global slave dof: {global master dof: coefficient}} over all ranks (the same dict
    on every rank), chains resolved.  ``periodic``: [problem.Periodic]."""
    import dolfinx_mpc
    mesh = V.mesh
    comm = mesh.comm
    if facet_tags is None:
        raise ConfigError("boundary.tag", "a mesh with tagged sides (an interval, rectangle "
                          "or box) for kind = 'periodic'", None)
    imap = V.dofmap.index_map
    nl = imap.size_local
    fdim = mesh.topology.dim - 1
    mesh.topology.create_connectivity(fdim, mesh.topology.dim)
    pairs: dict = {}
    for p in periodic:
        shift = np.zeros(3)
        shift[:len(p.translation)] = p.translation

        def relation(x, shift=shift):
            return x - shift[:, None]
        d = dolfinx_mpc.cpp.mpc.create_periodic_constraint_topological(
            V._cpp_object, facet_tags._cpp_object, int(p.tag), relation, [], 1.0, False)
        slaves, masters = np.asarray(d.slaves), np.asarray(d.masters)
        coeffs, offsets = np.asarray(d.coeffs), np.asarray(d.offsets)
        own = slaves < nl
        glob = imap.local_to_global(slaves[own].astype(np.int32))
        mine = {}
        for g, i in zip(glob.tolist(), np.flatnonzero(own).tolist()):
            ms = {int(m): float(c) for m, c in zip(masters[offsets[i]:offsets[i + 1]],
                                                   coeffs[offsets[i]:offsets[i + 1]])
                  if abs(c) > DROP}
            mine[g] = ms
        found = comm.allgather(mine)
        if sum(len(f) for f in found) == 0:
            raise ConfigError("boundary.tag", "a side of the mesh with facets (kind = "
                              "'periodic')", p.tag)
        for part in found:
            for s, ms in part.items():
                pairs.setdefault(s, ms)            # a dof on two slave sides: the first
    return {s: _resolve(s, pairs, 0) for s in pairs}


def _resolve(s, pairs, depth) -> dict:
    if depth > 8:
        raise ConfigError("boundary.to", "periodic sides without a cycle (a side is its own "
                          "master through the other pairs)", None)
    out: dict = {}
    for m, c in pairs[s].items():
        if m in pairs:
            for mm, cc in _resolve(m, pairs, depth + 1).items():
                out[mm] = out.get(mm, 0.0) + c * cc
        else:
            out[m] = out.get(m, 0.0) + c
    return out


class PeriodicMap:
    """The matrix R of a space (module docstring) and its actions on Functions."""

    def __init__(self, V, facet_tags, periodic):
        imap = V.dofmap.index_map
        self.comm = comm = V.mesh.comm
        self.nl = nl = imap.size_local
        self.pairs = pairs = periodic_pairs(V, facet_tags, periodic)
        lo = imap.local_range[0]
        hi = lo + nl
        self.nslaves = len(pairs)
        # R as CSR of the owned rows: 1 on the diagonal of the non-slaves, c_sm at (m, s)
        sl = np.fromiter(pairs, dtype=np.int64, count=len(pairs))
        keep = np.ones(nl, dtype=bool)
        own = sl[(sl >= lo) & (sl < hi)]
        keep[own - lo] = False
        diag = np.arange(lo, hi, dtype=np.int64)[keep]
        links = [(m, s_, cm) for s_, ms in pairs.items() for m, cm in ms.items()
                 if lo <= m < hi]
        lr, lc, lv = (np.array(t, dtype=d).reshape(-1) for t, d in zip(
            zip(*links) if links else ((), (), ()), (np.int64, np.int64, float)))
        r, c = np.concatenate([diag, lr]), np.concatenate([diag, lc])
        v = np.concatenate([np.ones(diag.size), lv])
        order = np.lexsort((c, r))
        r, c, v = r[order], c[order], v[order]
        indptr = np.searchsorted(r, np.arange(lo, hi + 1))
        self.R = PETSc.Mat().createAIJ(
            ((nl, PETSc.DETERMINE), (nl, PETSc.DETERMINE)),
            csr=(indptr.astype(PETSc.IntType), c.astype(PETSc.IntType),
                 v.astype(PETSc.ScalarType)), comm=comm)
        self.R.assemble()
        self.P = self.R.transpose(PETSc.Mat())         # P = Rᵀ: z ↦ the periodic field
        self.slaves = np.sort(own - lo).astype(np.int32)      # owned slaves, local indices
        self._x, self._y = self.R.createVecs()

    # -- vectors ---------------------------------------------------------------------------
    def extend(self, a: np.ndarray):
        """a[:nl] ← Rᵀa (owned entries; the slaves get their masters' values)."""
        self._x.array[:] = a[:self.nl]
        self.P.mult(self._x, self._y)
        a[:self.nl] = self._y.array

    def gather(self, a: np.ndarray):
        """a[:nl] ← R a (slave entries added into their masters, then zeroed)."""
        self._x.array[:] = a[:self.nl]
        self.R.mult(self._x, self._y)
        a[:self.nl] = self._y.array

    def periodise(self, f):
        """The Function f ← its periodic version (slaves ← masters, ghosts updated)."""
        self.extend(f.x.array)
        f.x.scatter_forward()

    def max_mismatch(self, f) -> float:
        """max |f_s − Σ c_sm f_m| over the slaves (all ranks)."""
        a = f.x.array[:self.nl].copy()
        self._x.array[:] = a
        self.P.mult(self._x, self._y)
        d = float(np.abs(self._y.array - a).max()) if self.nl else 0.0
        return self.comm.allreduce(d, op=MPI.MAX)

    # -- matrices --------------------------------------------------------------------------
    def transform(self, B: PETSc.Mat, C: PETSc.Mat | None = None) -> PETSc.Mat:
        """R B Rᵀ (into C, a previous result of this call for a matrix of B's pattern)."""
        if C is None:
            return B.PtAP(self.P)
        B.PtAP(self.P, result=C)
        return C

    def identity(self) -> PETSc.Mat:
        """The diagonal matrix with 1 at the slaves (kept)."""
        if getattr(self, "_diag", None) is None:
            lo = self.R.getOwnershipRange()[0]
            is_slave = np.zeros(self.nl, dtype=bool)
            is_slave[self.slaves] = True
            indptr = np.concatenate([[0], np.cumsum(is_slave)]).astype(PETSc.IntType)
            cols = (np.flatnonzero(is_slave) + lo).astype(PETSc.IntType)
            self._diag = PETSc.Mat().createAIJ(self.R.getSizes(),
                                               csr=(indptr, cols, np.ones(cols.size)),
                                               comm=self.comm)
            self._diag.assemble()
        return self._diag

    def constrained(self, B: PETSc.Mat, pivot: bool) -> PETSc.Mat:
        """A new matrix R B Rᵀ, + 1 on the slave diagonal if ``pivot`` (a step matrix whose
        solve must return z_s = 0)."""
        C = self.transform(B)
        if pivot:
            C.axpy(1.0, self.identity(), PETSc.Mat.Structure.DIFFERENT_NONZERO_PATTERN)
        return C

    def destroy(self):
        for o in (self.R, self.P, self._x, self._y, getattr(self, "_diag", None)):
            if o is not None:
                o.destroy()


class PeriodicConstraints:
    """The periodic transformation of a space-time system (module docstring): residual rows,
    Jacobian blocks and the vector ↔ states maps."""

    kind = "periodic"

    def __init__(self, st):
        self.st = st
        self.map = st.problem.periodic_map()
        self.z = {}                           # field → its slave entries of the last vector
        self._blocks = {}                     # (key, handle of B) → (B state, C0, C)

    # -- states ----------------------------------------------------------------------------
    def impose(self):
        """States ← periodic (slaves take their masters' values), ρ⁰ too."""
        st = self.st
        for f in st.rho + st.u:
            self.map.periodise(f)
        self.z = {}

    def to_vec(self, a: np.ndarray):
        """The Newton vector of the states: z = x with the slave entries 0."""
        L = self.st.layout
        for f in range(L.nfields):
            a[L.slice(f)][self.map.slaves] = 0.0
        self.z = {}

    def from_vec(self, a: np.ndarray):
        """States ← Rᵀz (after the owned entries were copied from the vector ``a``)."""
        st, L = self.st, self.st.layout
        s = self.map.slaves
        self.z = {f: a[L.slice(f)][s].copy() for f in range(L.nfields)}
        for f in range(L.nfields):
            self.map.extend(st.function(f).x.array)

    # -- residual and blocks ---------------------------------------------------------------
    def fix_row(self, row: str, k: int, F: np.ndarray):
        """F ← R F, the slave entries ← z_s of the row's pivot field."""
        st = self.st
        self.map.gather(F)
        piv = st.layout.pivot(st.row_field(row, k))
        z = self.z.get(piv)
        F[self.map.slaves] = 0.0 if z is None else z

    def fix_block(self, key, A: PETSc.Mat, fresh: bool = False) -> PETSc.Mat:
        """R A Rᵀ (+ 1 on the slave diagonal of a pivot block).  The result of a kept block
        is kept too and updated in place (the same Mat for the same A on every call)."""
        pivot = key in PIVOTS
        if fresh:
            return self.map.constrained(A, pivot)
        mkey = (key, A.handle)
        memo = self._blocks.get(mkey)
        state = A.stateGet()
        if memo is not None and memo[0] == state:
            return memo[2]
        if memo is None:
            C0 = self.map.transform(A)
            if pivot:
                C = C0.duplicate(copy=True)
                C.axpy(1.0, self.map.identity(), PETSc.Mat.Structure.DIFFERENT_NONZERO_PATTERN)
            else:
                C = C0
        else:
            C0, C = self.map.transform(A, memo[1]), memo[2]
            if pivot:
                C.zeroEntries()
                C.axpy(1.0, C0, PETSc.Mat.Structure.SUBSET_NONZERO_PATTERN)
                C.axpy(1.0, self.map.identity(), PETSc.Mat.Structure.SUBSET_NONZERO_PATTERN)
        self._blocks[mkey] = (A.stateGet(), C0, C)
        return C

    def destroy(self):
        for _, C0, C in self._blocks.values():
            if C is not C0:
                C.destroy()
            C0.destroy()
        self._blocks = {}


__all__ = ["PeriodicMap", "PeriodicConstraints", "periodic_pairs", "PIVOTS"]
