"""Bilinear forms affine in some coefficients, evaluated without assembly.

For a quadratic residual every Jacobian block a(w) is affine in the states it depends on
(``SpaceTime.quadratic``): with w = (w_1, …, w_m) the unknown Functions of the block,

      data(w) = d₀ + Σᵢ Tᵢ wᵢ,        d₀ = data(0),   Tᵢ = ∂data/∂wᵢ,

where ``data`` is the array of the form's local CSR matrix (before ghost rows are added to
their owners).  Tᵢ is sparse: entry e = (i, j) depends on the coefficient dofs of the cells
holding both i and j only.  It is computed by colouring (Curtis–Powell–Reid): the
coefficient dofs are coloured so that no two dofs of one colour touch a common matrix row
through their cells (distance-2 for P1–P1); assembling with wᵢ = the indicator of one colour
then gives, in every entry, the contribution of the unique dof of that colour among its
dofs: one assembly per colour and coefficient (≈ 10 on a 2D triangle mesh) gives Tᵢ
exactly up to the round-off of a difference of two assemblies.  Evaluating the block is then
one sparse product per coefficient instead of an assembly (element kernels and coefficient
packing): several times cheaper (docs/performance.md).

The result is checked against an assembly at the states of the set-up: a form that is not
affine in w, or any mismatch above round-off, makes :func:`affine_evaluator` return None and
the caller keeps assembling.  Cell integrals over the whole mesh with scalar spaces only;
everything else is assembled.  Rank-local (the local CSR data of each rank's cells); the
result enters the usual ghost-row scatter.
"""
from __future__ import annotations

from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import numpy as np
import scipy.sparse as sp

CHECK_RTOL = 1e-12
PROBE_RTOL = 1e-13              # Tᵢ = s·Tⱼ: both from the same kernel (exact here)


def _cell_dofs(V, ncells: int) -> np.ndarray:
    """cell → local dofs of V (python or C++ function space) for the first ``ncells`` cells."""
    dm = V.dofmap
    return (dm.list if hasattr(dm, "list") else dm.map())[:ncells]


def _cell_only(a: dolfinx.fem.Form) -> bool:
    cpp = a._cpp_object
    types = list(cpp.integral_types)
    return (len(types) == 1 and types[0] == dolfinx.fem.IntegralType.cell
            and list(cpp.integral_ids(types[0])) == [-1])


def colour_coefficient_dofs(rows: np.ndarray, coeff: np.ndarray, n_rows: int,
                            n_coeff: int) -> np.ndarray:
    """Greedy colouring of the coefficient dofs: k, k' differ in colour if some cell of k and
    some cell of k' share a row dof (``rows``/``coeff``: cell → dofs, local indices)."""
    ncells = rows.shape[0]
    cells = np.repeat(np.arange(ncells), rows.shape[1])
    R = sp.csr_matrix((np.ones(cells.size), (rows.ravel(), cells)), shape=(n_rows, ncells))
    cells = np.repeat(np.arange(ncells), coeff.shape[1])
    C = sp.csr_matrix((np.ones(cells.size), (cells, coeff.ravel())), shape=(ncells, n_coeff))
    S = (R @ C).tocsr()                       # row dof → coefficient dofs around it
    G = (S.T @ S).tocsr()                     # conflict graph of the coefficient dofs
    ptr, nbrs = G.indptr.tolist(), G.indices.tolist()
    colour = [-1] * n_coeff
    for k in range(n_coeff):
        used = {colour[j] for j in nbrs[ptr[k]:ptr[k + 1]]}
        c = 0
        while c in used:
            c += 1
        colour[k] = c
    return np.asarray(colour, dtype=np.int64)


class _Structure:
    """The sparsity of Tᵢ for one scratch matrix and one coefficient space (shared by every
    form and coefficient on them): (entry e, coefficient dof k) pairs as CSR, the colours of
    the coefficient dofs and, per colour, the pairs whose dof has it."""

    def __init__(self, a: dolfinx.fem.Form, csr, W):
        V0, V1 = a.function_spaces
        ncells = a.mesh.topology.index_map(a.mesh.topology.dim).size_local
        r_dofs, c_dofs, k_dofs = (_cell_dofs(V, ncells) for V in (V0, V1, W))
        # position of every (cell, a, b) element entry in the CSR data
        indptr, indices = csr.indptr, csr.indices
        nrows = indptr.size - 1
        ncols = int(indices.max()) + 1 if indices.size else 1
        keys = np.repeat(np.arange(nrows, dtype=np.int64), np.diff(indptr)) * ncols + indices
        order = None if np.all(np.diff(keys) > 0) else np.argsort(keys, kind="stable")
        q = (r_dofs[:, :, None].astype(np.int64) * ncols + c_dofs[:, None, :]).reshape(ncells, -1)
        pos = np.searchsorted(keys if order is None else keys[order], q)
        entries = pos if order is None else order[pos]            # (ncells, n0·n1)
        n0 = V0.dofmap.index_map.size_local + V0.dofmap.index_map.num_ghosts
        nw = W.dofmap.index_map.size_local + W.dofmap.index_map.num_ghosts
        self.colour = colour_coefficient_dofs(r_dofs, k_dofs, n0, nw)
        # (entry, coefficient dof) pairs, one per cell contribution, made unique (CSR by entry)
        e = np.repeat(entries, k_dofs.shape[1], axis=1).ravel()
        k = np.tile(k_dofs, (1, entries.shape[1])).ravel()
        P = sp.csr_matrix((np.ones(e.size, dtype=np.int8), (e, k)), shape=(csr.data.size, nw))
        P.sum_duplicates()                    # sorted, unique columns per row (values unused)
        self.indptr = P.indptr.astype(PETSc.IntType)
        self.k = k = P.indices.astype(PETSc.IntType)
        self.e = np.repeat(np.arange(csr.data.size), np.diff(P.indptr))
        ck = self.colour[k]
        self.by_colour = [np.flatnonzero(ck == c) for c in range(int(self.colour.max()) + 1
                                                                    if nw else 0)]
        self.shape = (csr.data.size, nw)


class AffineForm:
    """data(w) = d₀ + Σᵢ Tᵢ wᵢ for the form ``a`` on the scratch CSR matrix ``csr``, affine in
    the Functions ``inputs`` (see the module docstring).  :meth:`evaluate` writes into
    ``csr.data`` what ``dolfinx.fem.assemble_matrix(csr, a)`` would.  ``structures``: a dict
    shared by the forms of one system (the sparsity of Tᵢ per matrix and coefficient space)."""

    def __init__(self, a: dolfinx.fem.Form, csr, inputs: list, structures: dict):
        self.a, self.csr, self.inputs = a, csr, list(inputs)
        # groups: [(T, [(input index, s)])] — Tᵢ = s·Tⱼ (e.g. ρ̄ = (ρⁿ + ρ^{n+1})/2 enters
        # through both states alike) is found by one probe and applied as Tⱼ(wⱼ + s·wᵢ)
        self.T, self.groups = [], []
        saved = [w.x.array.copy() for w in self.inputs]
        rng = np.random.default_rng(0)
        try:
            for w in self.inputs:
                w.x.array[:] = 0.0
            self.d0 = self._assemble().copy()
            for i, w in enumerate(self.inputs):
                found = self._probe(w, rng)
                if found is not None:
                    self.groups[found[0]][1].append((i, found[1]))
                else:
                    st = _structure(a, csr, w.function_space, structures)
                    self.T.append(self._derivative(w, st))
                    self.groups.append((self.T[-1], [(i, 1.0)]))
                w.x.array[:] = 0.0
        finally:
            for w, s in zip(self.inputs, saved):
                w.x.array[:] = s
        self._wvecs = [PETSc.Vec().createWithArray(w.x.array, comm=MPI.COMM_SELF)
                       for w in self.inputs]
        self._d0vec = PETSc.Vec().createWithArray(self.d0, comm=MPI.COMM_SELF)
        self._dvec = PETSc.Vec().createWithArray(csr.data, comm=MPI.COMM_SELF)
        self._comb = self._wvecs[0].duplicate() if len(self.groups) < len(self.inputs) else None

    def _probe(self, w, rng):
        """(group, s) if ∂data/∂w = s·T of an earlier group, tested with one assembly at a
        random w (a nonzero row of ∂data/∂w − sT would show a.s.; the whole evaluator is
        checked against assembly afterwards)."""
        r = rng.standard_normal(w.x.array.size)
        w.x.array[:] = r
        d = self._assemble() - self.d0
        nd = np.linalg.norm(d)
        rv = PETSc.Vec().createWithArray(r, comm=MPI.COMM_SELF)
        try:
            for g, (T, _) in enumerate(self.groups):
                if T.getSize()[1] != r.size:
                    continue
                q = T.createVecLeft()
                T.mult(rv, q)
                qa = q.array_r
                qq = float(qa @ qa)
                sc = float(d @ qa) / qq if qq > 0 else 0.0
                close = np.linalg.norm(d - sc * qa) <= PROBE_RTOL * nd
                q.destroy()
                if close and sc != 0.0:
                    return g, sc
            return None
        finally:
            rv.destroy()

    def _assemble(self) -> np.ndarray:
        self.csr.set_value(0.0)
        dolfinx.fem.assemble_matrix(self.csr, self.a)
        return self.csr.data

    def _derivative(self, w, st: _Structure) -> PETSc.Mat:
        """Tᵢ = ∂data/∂w as a SeqAIJ (data entries × local dofs of w), one assembly per colour:
        with w the indicator of colour c, entry e holds T[e, k] of its unique dof k of colour c."""
        vals = np.empty(st.k.size, dtype=PETSc.ScalarType)
        for c, sel in enumerate(st.by_colour):
            w.x.array[:] = (st.colour == c)
            vals[sel] = self._assemble()[st.e[sel]] - self.d0[st.e[sel]]
        return PETSc.Mat().createAIJ(st.shape, csr=(st.indptr, st.k, vals), comm=MPI.COMM_SELF)

    def evaluate(self, out: np.ndarray | None = None) -> np.ndarray:
        """csr.data (or ``out``, an array of its layout) ← d₀ + Σᵢ Tᵢ wᵢ at the current values
        of the inputs."""
        if out is not None:
            self._dvec.placeArray(out)
        try:
            acc = self._d0vec
            for T, members in self.groups:
                if len(members) == 1:
                    w = self._wvecs[members[0][0]]
                else:
                    w = self._comb
                    c = w.array
                    np.copyto(c, self.inputs[members[0][0]].x.array)
                    for i, s in members[1:]:
                        c += s * self.inputs[i].x.array
                T.multAdd(w, acc, self._dvec)     # d = acc + T w (first: acc = d₀)
                acc = self._dvec
            if acc is self._d0vec:
                self._d0vec.copy(self._dvec)
        finally:
            if out is not None:
                self._dvec.resetArray()
        return self.csr.data if out is None else out

    def matches_assembly(self) -> bool:
        """Does :meth:`evaluate` agree with an assembly at the current inputs (round-off)?"""
        ref = self._assemble().copy()
        got = self.evaluate()
        scale = np.abs(ref).max() if ref.size else 0.0
        return bool(np.abs(got - ref).max() <= CHECK_RTOL * scale) if ref.size else True

    def destroy(self):
        for o in self.T + self._wvecs + [self._d0vec, self._dvec, self._comb]:
            if o is not None:
                o.destroy()


def applicable(a: dolfinx.fem.Form, inputs: list, comm) -> bool:
    """Cell integrals over the whole mesh, scalar spaces, some inputs (on every rank)."""
    spaces = list(a.function_spaces) + [w.function_space for w in inputs]
    ok = (bool(inputs) and _cell_only(a)
          and all(V.dofmap.index_map_bs == 1 for V in spaces))
    return comm.allreduce(ok, op=MPI.LAND)


def _structure(a, csr, W, structures: dict) -> _Structure:
    key = (id(csr), id(W))
    if key not in structures:
        structures[key] = _Structure(a, csr, W)
    return structures[key]


def setup_assemblies(a: dolfinx.fem.Form, csr, inputs: list, structures: dict, comm) -> int:
    """Assemblies the set-up of an :class:`AffineForm` costs at most: one per colour and
    input, d₀, the check (max over ranks; colours cached in ``structures``)."""
    n = sum(len(_structure(a, csr, w.function_space, structures).by_colour) for w in inputs)
    return comm.allreduce(n + 2, op=MPI.MAX)


def affine_evaluator(a: dolfinx.fem.Form, csr, inputs: list, structures: dict,
                     comm) -> AffineForm | None:
    """An :class:`AffineForm` for ``a`` if it applies and matches assembly on every rank."""
    if not applicable(a, inputs, comm):
        return None
    f = AffineForm(a, csr, inputs, structures)
    if comm.allreduce(f.matches_assembly(), op=MPI.LAND):
        return f
    f.destroy()
    return None


__all__ = ["AffineForm", "affine_evaluator", "applicable", "colour_coefficient_dofs",
           "setup_assemblies"]
