"""The space-time Jacobian (the KKT matrix of the discrete Lagrangian) for Krylov methods.

Write the Jacobian of the HJB–FP system in the fields of
:class:`~fem_mfc.solvers.layout.SpaceTimeLayout` as

      K = [ A  P ]   rows: equations of u (FP steps),  columns: u, ρ
          [ Q  C ]   rows: equations of ρ (HJB steps)

with P block lower bidiagonal in time (pivots P_n = ∂FP_n/∂ρ^{n+1}, off-diagonal
B_n = ∂FP_n/∂ρⁿ), Q block upper bidiagonal, A block diagonal (−τ∫ρ̄∇·∇), C the ρ–ρ
(congestion) blocks.  :class:`KKTOperator` stores only what the formulation's declared
structure (:class:`~fem_mfc.solvers.spacetime.Formulation`) does not give for free:

* mirrored formulations (the rows are the gradient of one Lagrangian): Q = Pᵀ block by block,
  the Q blocks are the transposes of stored P blocks, never assembled;
* a forward split (FP step linear in ρⁿ, ρ^{n+1} through θ-means and the difference):
  B_n = αP_n + E with E = M/θ assembled once, B_n never stored;
* a midpoint coupling (Crank–Nicolson, ``Formulation.midpoint_coupling``): of the ρ–ρ
  blocks only C(n, n+1) (one per time interval) and C(1, 1) are stored, C(n+1, n) = C(n, n+1)
  and C(n, n) = C(n, n−1) + C(n, n+1) are sums of them (3 matrices per level → 1).

Every block is a short list of terms coeff·op(base), op ∈ {identity, transpose}
(:meth:`KKTOperator.terms`); the Krylov operator multiplies with them grouped by matrix
(:class:`~fem_mfc.solvers.kkt_product.KKTProduct`) and the sweep preconditioner
(:mod:`~fem_mfc.solvers.kkt_pc`) applies them row by row.  The tests compare both with the
fully assembled Jacobian.
"""
from __future__ import annotations

from mpi4py import MPI
from petsc4py import PETSc

import numpy as np

from .kkt_product import KKTProduct

SAME = PETSc.Mat.Structure.SAME_NONZERO_PATTERN


class KKTOperator:
    """The Jacobian blocks of ``st`` at its current states, reassembled in place by
    :meth:`update`; ``product.mat`` is the operator as a PETSc (python) Mat."""

    def __init__(self, st):
        self.st = st
        L, keys, fm = st.layout, st.block_keys, st.formulation
        self.mirror = ({(r, c) for (r, c) in keys
                        if L.is_forward(r) and not L.is_forward(c) and (c, r) in keys}
                       if fm.mirrored else set())
        self.derived = {}                     # (r, c) of B_n -> (r, c') of its P_n
        self.E = None
        if st.split is not None:
            split, E_form = st.split
            for (r, c), (key, k) in keys.items():
                if key == (split.row, split.prev):
                    nxt = st.field(split.next, k)
                    if (r, nxt) in keys:
                        self.derived[(r, c)] = (r, nxt)
            if self.derived:
                self.alpha = split.alpha
                self.E = st.assembler.fresh(E_form)
        self.combined = self._midpoint_blocks() if fm.midpoint_coupling else {}
        self.skip = self.mirror | set(self.derived) | set(self.combined)
        self.stored = set(keys) - self.skip
        self.grid = st.block_grid(self.skip)
        rho = set(L.forward_fields()) if fm.constant_coupling else set()
        self.constant = {self.grid[r][c].handle for (r, c) in self.stored
                         if st.constant_block[keys[(r, c)][0]] or (r in rho and c in rho)}
        if self.E is not None:                # handles of the matrices whose values change
            self.constant.add(self.E.handle)  # with the parameters only, not the states
        self.assemblies = 1
        self._fresh = st.create_vec()         # states of the grid, until the first update
        st.states_to_vec(self._fresh)
        self.product = KKTProduct(self)

    def _midpoint_blocks(self) -> dict:
        """{(r, c): [(r', c') …]}: the ρ–ρ blocks that are sums of stored C(n, n+1)."""
        L, keys, N = self.st.layout, self.st.block_keys, self.st.N
        R = [None] + [L.index("rho", n) for n in range(1, N + 1)]
        nxt = {n: (R[n], R[n + 1]) for n in range(1, N) if (R[n], R[n + 1]) in keys}
        if len(nxt) != N - 1:
            return {}
        out = {}
        for n in range(1, N):
            out[(R[n + 1], R[n])] = [nxt[n]]
        for n in range(2, N + 1):
            out[(R[n], R[n])] = [nxt[n - 1]] + ([nxt[n]] if n < N else [])
        return {k: v for k, v in out.items() if k in keys}

    # -- the operator as terms ---------------------------------------------------------------
    def own_terms(self, r: int, c: int) -> list:
        """[(base, transposed, coeff)] of a non-mirror block (r, c)."""
        if (r, c) in self.derived:            # B_n = α P_n + E
            rp, cp = self.derived[(r, c)]
            return [(self.grid[rp][cp], False, self.alpha), (self.E, False, 1.0)]
        if (r, c) in self.combined:           # midpoint coupling: sums of C(n, n+1)
            return [(self.grid[a][b], False, 1.0) for a, b in self.combined[(r, c)]]
        return [(self.grid[r][c], False, 1.0)]

    def terms(self, r: int, c: int) -> list:
        """[(base, transposed, coeff)] whose sum is block (r, c)."""
        if (r, c) in self.mirror:
            return [(b, not t, a) for b, t, a in self.own_terms(c, r)]
        return self.own_terms(r, c)

    def blocks(self):
        """The (r, c) of the nonzero blocks, row by row."""
        return sorted(self.st.block_keys)

    def row_blocks(self, r: int) -> list:
        """The columns c of the nonzero blocks of row r."""
        rows = getattr(self, "_rows", None)
        if rows is None:
            rows = self._rows = {}
            for (i, j) in self.st.block_keys:
                rows.setdefault(i, []).append(j)
            for v in rows.values():
                v.sort()
        return rows.get(r, [])

    def mult_add(self, r: int, c: int, x: PETSc.Vec, y: PETSc.Vec, work: PETSc.Vec,
                 scale: float = 1.0):
        """y += scale·K_rc x (``work``: a vector of one field)."""
        for base, t, a in self.terms(r, c):
            (base.multTranspose if t else base.mult)(x, work)
            y.axpy(scale * a, work)

    def attractive(self) -> bool:
        """Is the coupling attractive at the blocks' states (:func:`negative_diagonal` of
        the stored ρ–ρ blocks)?  Collective."""
        L = self.st.layout
        return negative_diagonal([self.grid[r][c] for r, c in self.stored
                                  if L.is_forward(r) and L.is_forward(c)], self.st.comm)

    def pivot_matrix(self, r: int):
        """(matrix, transposed) of the pivot block of equation r (the block solved for in
        the sweeps): a stored matrix, or the transpose of its stored mirror."""
        c = self.st.layout.pivot(r)
        if (r, c) in self.mirror:
            return self.grid[c][r], True
        return self.grid[r][c], False

    # -- states -> blocks ----------------------------------------------------------------------
    def update(self, X: PETSc.Vec | None = None):
        """Reassemble the stored blocks at the states X (None: the current states); the
        first call at the states of the construction reuses its blocks."""
        if X is not None:
            self.st.vec_to_states(X)
        if self._fresh is not None:
            unchanged = X is not None and X.equal(self._fresh)
            self._fresh.destroy()
            self._fresh = None
            if unchanged:
                return
        grid = self.st.block_grid(self.skip)
        for ra, rb in zip(grid, self.grid):
            for a, b in zip(ra, rb):
                if a is not b:
                    raise RuntimeError("KKTOperator: the assembler returned new block "
                                       "matrices (expected in-place reassembly)")
        self.assemblies += 1
        self.product.mat.assemble()           # a new state: the preconditioner sets up again

    def parameters_changed(self):
        """A continuation parameter changed: the blocks of the construction are no longer
        those at its states (the first :meth:`update` at them kept them: a restart in a
        continuation stage took its first Newton step with the λ = 1 blocks)."""
        if self._fresh is not None:
            self._fresh.destroy()
            self._fresh = None

    def destroy(self):
        self.product.destroy()
        for m in (self.E, self._fresh):
            if m is not None:
                m.destroy()
        self.E = self._fresh = None


def negative_diagonal(mats, comm, rtol: float = 1e-10) -> bool:
    """Has one of the ρ–ρ (coupling) blocks ``mats`` (an iterable: they may be assembled one
    at a time) a diagonal entry below −rtol × the largest in magnitude?  For the HJB–FP
    Lagrangian C = τ∫G''(ρ̄)·· (or τ∫c'(ρ̄)·· for a game): a congestion makes it ≥ 0, an
    attractive coupling (G'' < 0 somewhere, the aggregation games) negative there.
    Collective."""
    lo = hi = 0.0
    for A in mats:
        d = A.getDiagonal()
        a = d.getArray(readonly=True)
        if a.size and not np.isnan(a).all():       # (NaN: ρ^1.5 at a negative ρ)
            lo, hi = min(lo, float(np.nanmin(a))), max(hi, float(np.nanmax(np.abs(a))))
        d.destroy()
    lo, hi = comm.allreduce(lo, op=MPI.MIN), comm.allreduce(hi, op=MPI.MAX)
    return lo < -rtol * hi


def attractive_coupling(st) -> bool:
    """:func:`negative_diagonal` of the ρ–ρ blocks of ``st`` at its current states, each
    assembled and freed in turn (for solvers without a :class:`KKTOperator`; the monotone
    scheme, which has no UFL block forms, assembles its kept blocks).  Collective."""
    L = st.layout

    def blocks():
        for (r, c), (key, k) in st.block_keys.items():
            if not (L.is_forward(r) and L.is_forward(c)):
                continue
            try:
                A, own = st.assemble_block(r, c), True
            except TypeError:
                st.load(k)
                A, own = st.assembler.block(key, k), False
            try:
                yield A
            finally:
                if own:
                    A.destroy()
    return negative_diagonal(blocks(), st.comm)


class TrapezoidResidual:
    """The residual of a system *quadratic* in its unknowns (``Formulation.quadratic``) from
    the Jacobian operator, which Newton assembles anyway: with K affine in the state,

        F(y) = F(x) + ½(K(x) + K(y))(y − x)          (trapezoidal rule, exact),

    so after one assembled F(x₀) every residual costs two operator products instead of an
    assembly of all rows, and the blocks assembled at y serve the Jacobian at y that SNES
    asks for next.  ``current(x)``: are the operator's blocks those at x?"""

    def __init__(self, op: KKTOperator):
        self.op = op
        self.x = self.F = None                # the last point and F there (two space-time
        self.assembled = self.derived = 0     # vectors); residuals by assembly / identity

    def current(self, x: PETSc.Vec) -> bool:
        return self.x is not None and x.equal(self.x)

    def reset(self):
        """Forget the last point (the system changed: e.g. a continuation parameter)."""
        for v in (self.x, self.F):
            if v is not None:
                v.destroy()
        self.x = self.F = None

    def __call__(self, x: PETSc.Vec, f: PETSc.Vec):
        if self.x is None:
            self.op.update(x)                 # no reassembly at the construction states
            self.op.st.residual(None, f)      # the states were set by update
            self.x, self.F = x.copy(), f.copy()
            self.assembled += 1
            return
        if x.equal(self.x):
            self.F.copy(f)
            return
        K, F = self.op.product.mat, self.F
        try:
            x.copy(f)
            f.axpy(-1.0, self.x)
            f.scale(0.5)                      # f = ½d, d = y − x (f is the work vector)
            K.multAdd(f, F, F)                # F(x) + ½K(x)d
            self.op.update(x)                 # the blocks (and states) at y
            K.multAdd(f, F, F)                # F(y) = F(x) + ½K(x)d + ½K(y)d
        except BaseException:
            self.reset()                      # F no longer holds F(x)
            raise
        x.copy(self.x)
        F.copy(f)
        self.derived += 1

    def destroy(self):
        self.reset()


__all__ = ["KKTOperator", "TrapezoidResidual"]
