"""Forward–backward sweep preconditioner for the space-time Newton system (newton.py).

Fields of the space-time vector (spacetime.py): f = 2n is uⁿ (n = 0..N−1), f = 2n − 1 is ρⁿ
(n = 1..N).  Row field 2n is the ρ-step equation n → n+1 (FP; "u" row of level n), row field
2n − 1 the u-step equation for u^{n−1} (HJB; "rho" row of level n).  Write the Jacobian as

      K = [ A  P ]   rows: FP equations (even fields),  columns: u (even), ρ (odd)
          [ Q  C ]   rows: HJB equations (odd fields)

with P block lower bidiagonal in time (pivots P_n = ∂FPₙ/∂ρ^{n+1}), Q block upper bidiagonal
(pivots Q_n = ∂HJB_{n+1}/∂uⁿ, = P_nᵀ for the HJB–FP Lagrangian), A block diagonal
(−τ∫ρ̄∇·∇), C the ρ–ρ (congestion) blocks.  The preconditioner solves exactly with

      M = [ A  P ]     (C dropped):  backward sweep  Q δu = r_HJB          (n = N−1 … 0),
          [ Q  0 ]                   forward sweep   P δρ = r_FP − A δu   (n = 0 … N−1),

i.e. one linearised HJB sweep and one linearised FP sweep per application, with one LU
factorisation per step (Q_n solved by the transposed solve of P_n's factors when Q_n = P_nᵀ,
checked once).  For G = 0 (C = 0) M = K and the Krylov method converges in one iteration; with
congestion M⁻¹K = I + M⁻¹[0 0; 0 C] has the eigenvalues 1 and 1 + λ(P⁻¹(−A)P⁻ᵀC), real and
≥ 1 for the HJB–FP Lagrangian (−A = τ∫ρ̄∇·∇ ≥ 0, C = τ∫G''(ρ̄)·· ≥ 0): the Krylov count does
not grow with the mesh (15, 12, 11, 10, 6 per Newton step from 2.4k to 60k dofs).
The operator K is the MatNest of the level blocks (no AIJ copy of the 3D-like matrix).
"""
from __future__ import annotations

from petsc4py import PETSc

from ..errors import SolverError
from .sweeps import step_solver

TRANSPOSE_RTOL = 1e-12          # Q_n = P_nᵀ up to assembly round-off
INF = PETSc.NormType.INFINITY


def mirrors(grid) -> set:
    """{(r, c)}: HJB-row (odd r) / u-column (even c) blocks equal to the transpose of block
    (c, r) up to assembly round-off."""
    nf = len(grid)
    return {(r, c) for r in range(1, nf, 2) for c in range(0, nf, 2)
            if grid[r][c] is not None and grid[c][r] is not None
            and grid[r][c].isTranspose(grid[c][r], tol=TRANSPOSE_RTOL * grid[c][r].norm(INF))}


class KKTOperator:
    """The space-time Jacobian as a MatNest of level blocks, reassembled in place.

    Every HJB-row/u-column block that is the transpose of its FP-row/ρ-column mirror at the
    first assembly (all of them for the HJB–FP Lagrangian: ∂²L/∂ρ∂u) becomes a virtual
    transpose of the mirror and is never assembled again: ``mirror`` holds these (r, c)
    (none with ``mirror=False``)."""

    def __init__(self, st, mirror: bool = True):
        self.st = st
        grid = st.block_grid()
        self.mirror = mirrors(grid) if mirror else set()
        for r, c in self.mirror:
            grid[r][c] = PETSc.Mat().createTranspose(grid[c][r])
        self.grid = grid
        self.mat = PETSc.Mat().createNest(grid, comm=st.comm)

    def update(self, X: PETSc.Vec | None = None) -> PETSc.Mat:
        """Reassemble every block at the states X (None: the current states)."""
        if X is not None:
            self.st.vec_to_states(X)
        grid = self.st.block_grid(self.mirror)
        if not all(a is b for ra, rb in zip(grid, self.grid) for a, b in zip(ra, rb)
                   if a is not None):
            raise SolverError("KKTOperator: the system returned new block matrices "
                              "(expected in-place reassembly)")
        self.mat.assemble()                   # new state: the PC sees a changed operator
        return self.mat


def pivot(f: int) -> int:
    """The column field a row field is solved for: FP row 2n → ρ^{n+1}, HJB row 2n+1 → uⁿ."""
    return f + 1 if f % 2 == 0 else f - 1


class SweepPC:
    """petsc4py PC context (type "python") applying M⁻¹ of the module docstring."""

    def __init__(self, op: KKTOperator, prefix: str = "mfc_sweep_"):
        self.op, self.prefix = op, prefix
        self.ksp = {}                         # row field → per-step LU solver
        self.setups = 0                       # factorisation passes (for reports)
        st = op.st
        self.work = [st.create_vec() for _ in range(2)]
        nl = st.nl
        self.views = [[PETSc.Vec().createWithArray(w.getArray()[f * nl:(f + 1) * nl],
                                                   size=(nl, PETSc.DETERMINE), comm=st.comm)
                       for f in range(st.nfields)] for w in self.work]
        self.rhs, self.tmp = self.views[0][0].duplicate(), self.views[0][0].duplicate()

    def _solver(self, r: int) -> PETSc.KSP:
        A = self.op.grid[r][pivot(r)]
        ksp = self.ksp.get(r)
        if ksp is None:
            ksp = self.ksp[r] = step_solver(A, self.prefix)
        else:
            ksp.getPC().setReusePreconditioner(False)
            ksp.setOperators(A)
            ksp.setUp()                       # numeric refactorisation, same pattern
        ksp.getPC().setReusePreconditioner(True)      # keep these factors until the next setUp
        return ksp

    def setUp(self, pc):
        """Factorise the FP pivots P_n (and the HJB pivots Q_n unless Q_n = P_nᵀ, solved by
        transposed solves with P_n's factors)."""
        for r in range(self.op.st.nfields):
            if not self._transposed(r):
                self._solver(r)
        self.setups += 1

    def _transposed(self, r: int) -> bool:
        """Is the pivot of row r the transpose of the pivot of row r − 1 (HJB rows)?"""
        return (r, pivot(r)) in self.op.mirror

    def _solve(self, r: int, b: PETSc.Vec, x: PETSc.Vec):
        if self._transposed(r):
            self.ksp[r - 1].solveTranspose(b, x)
        else:
            self.ksp[r].solve(b, x)

    def _rhs(self, r: int, b: PETSc.Vec, z: list, done) -> PETSc.Vec:
        """b_r − Σ_{c ≠ pivot, done(c)} K_rc z_c."""
        self.rhs.array[:] = b.array_r
        for c, K in enumerate(self.op.grid[r]):
            if K is not None and c != pivot(r) and done(c):
                K.mult(z[c], self.tmp)
                self.rhs.axpy(-1.0, self.tmp)
        return self.rhs

    def apply(self, pc, x: PETSc.Vec, y: PETSc.Vec):
        """y = M⁻¹ x: backward sweep over the HJB rows for δu, forward over FP rows for δρ."""
        nf = self.op.st.nfields
        b, z = self.views
        x.copy(self.work[0])
        self.work[1].zeroEntries()
        for r in range(nf - 1, 0, -2):        # HJB rows 2n+1, n = N−1 … 0 → δuⁿ
            c = pivot(r)
            self._solve(r, self._rhs(r, b[r], z, lambda j, c=c: j % 2 == 0 and j > c), z[c])
        for r in range(0, nf, 2):             # FP rows 2n, n = 0 … N−1 → δρ^{n+1}
            c = pivot(r)
            self._solve(r, self._rhs(r, b[r], z, lambda j, c=c: j % 2 == 0 or j < c), z[c])
        self.work[1].stateIncrease()          # written through the views: drop cached norms
        self.work[1].copy(y)

    def destroy(self, pc=None):
        for k in self.ksp.values():
            k.destroy()
        for v in [self.rhs, self.tmp] + [v for vs in self.views for v in vs] + self.work:
            v.destroy()
        self.ksp = {}


def sweep_ksp(ksp: PETSc.KSP, op: KKTOperator, rtol: float, atol: float, prefix: str):
    """Configure ``ksp`` as right-preconditioned GMRES (the residual it tests is the true one)
    + :class:`SweepPC` (options under ``prefix`` override; FGMRES for inexact sweeps)."""
    ksp.setType("gmres")
    ksp.setPCSide(PETSc.PC.Side.RIGHT)
    ksp.setTolerances(rtol=rtol, atol=atol, max_it=300)
    ksp.setGMRESRestart(100)
    pc = ksp.getPC()
    pc.setType("python")
    ctx = SweepPC(op, prefix + "sweep_")
    pc.setPythonContext(ctx)
    return ctx


__all__ = ["KKTOperator", "SweepPC", "pivot", "sweep_ksp"]
