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
The operator K is the MatNest of the level blocks (no AIJ copy of the 3D-like matrix); the
Krylov method multiplies with it through :class:`~fem_mfc.solvers.kkt_product.KKTProduct`.
Cost savings (defaults; see :class:`SweepPC`, :class:`KKTOperator`): per-step factors are
reused while the pivot moved less than 0.2 % (across Newton steps and time steps; M then
uses slightly lagged pivots), P_nᵀ is factorised explicitly for the HJB sweep, and the
FP blocks ∂FP_n/∂ρⁿ are formed from P_n instead of assembled.  Inexact per-step solves by
one AMG V-cycle (``-mfc_sweep_pc_type gamg``) were tried: 60k dofs × 50 steps, Krylov
64/60/57/48/27 and slower than LU; on small meshes with strong drift GMRES did not converge.
"""
from __future__ import annotations

from mpi4py import MPI
from petsc4py import PETSc

from ..errors import SolverError
from .kkt_product import KKTProduct
from .sweeps import step_solver

TRANSPOSE_RTOL = 1e-12          # Q_n = P_nᵀ up to assembly round-off
DERIVE_RTOL = 1e-11             # B_n = αP_n + E up to assembly round-off
REUSE_RTOL = 2e-3               # reuse factors of pivots within 0.2 % (Frobenius)
EXACT_RTOL = 1e-13              # reuse factors of coinciding pivots only (M unchanged)
INF = PETSc.NormType.INFINITY
FRO = PETSc.NormType.FROBENIUS
SAME = PETSc.Mat.Structure.SAME_NONZERO_PATTERN


def mirrors(st) -> set:
    """{(r, c)}: HJB-row (odd r) / u-column (even c) blocks equal to the transpose of block
    (c, r) up to assembly round-off.  Blocks built from one pair of forms are all mirrors or
    none (the identity ∂²L/∂ρ∂u = (∂²L/∂u∂ρ)ᵀ is one of the forms, not of a level), so each
    pair of forms is checked once, on a block pair from the middle of the horizon."""
    keys = st.block_keys
    groups = {}
    for (r, c), (key, _) in keys.items():
        if r % 2 == 1 and c % 2 == 0 and (c, r) in keys:
            groups.setdefault((key, keys[(c, r)][0]), []).append((r, c))
    out = set()
    for members in groups.values():
        r, c = members[len(members) // 2]
        A, B = st.assemble_block(r, c), st.assemble_block(c, r)
        if A.isTranspose(B, tol=TRANSPOSE_RTOL * B.norm(INF)):
            out.update(members)
        A.destroy(), B.destroy()
    return out


def rel_diff(A: PETSc.Mat, B: PETSc.Mat, work: PETSc.Mat) -> float:
    """‖A − B‖_F / ‖A‖_F for A, B of one nonzero pattern (``work``: same pattern, clobbered)."""
    A.copy(work, structure=SAME)
    work.axpy(-1.0, B, structure=SAME)
    na = A.norm(FRO)
    return work.norm(FRO) / na if na > 0 else work.norm(FRO)


def same_pattern(A: PETSc.Mat, B: PETSc.Mat) -> bool:
    """Cheap necessary check (sizes, nonzero counts) for SAME_NONZERO_PATTERN operations
    between blocks of one form (dolfinx gives them one sparsity pattern)."""
    if A.getSizes() != B.getSizes():
        return False
    comm = A.getComm().tompi4py()
    ok = A.getInfo()["nz_used"] == B.getInfo()["nz_used"]
    return comm.allreduce(ok, op=MPI.LAND)


class KKTOperator:
    """The space-time Jacobian as a MatNest of level blocks, reassembled in place; ``mat``
    is the MatNest (the matrix the preconditioner is built from), ``product.mat`` the same
    operator multiplied with fewer matrix reads (:mod:`.kkt_product`; the Krylov operator).

    Every HJB-row/u-column block that is the transpose of its FP-row/ρ-column mirror (checked
    once per pair of forms at the initial states, :func:`mirrors`; all of them for the HJB–FP
    Lagrangian: ∂²L/∂ρ∂u) becomes a virtual transpose of the mirror and is never assembled:
    ``mirror`` holds these (r, c) (none with ``mirror=False``).

    Assembly savings (``derive``, option ``-{prefix}kkt_derive``, default on):

    * the first :meth:`update` at the states of the construction (SNES' first Jacobian) does
      not reassemble;
    * the FP row n is linear in (ρⁿ, ρ^{n+1}) through ρ̄ = θρ^{n+1} + (1−θ)ρⁿ and −∫u(ρ^{n+1}−ρⁿ),
      so B_n = ∂FP_n/∂ρⁿ = α P_n + E with α = (1−θ)/θ and E = M/θ independent of the state and
      of n.  E is taken from the first assembly, the identity is checked against the
      assembled B_n of the first and last level at the first new state (any mismatch above
      round-off, or E differing between levels, switches the derivation off), and from then
      on B_n is formed by a copy and an axpy (≈ 1 ms) instead of an assembly (≈ 17 ms at
      60k P1 dofs).  ``derived`` holds the
      (r, c) formed this way once verified."""

    def __init__(self, st, mirror: bool = True, derive: bool | None = None, prefix: str = ""):
        self.st = st
        self.mirror = mirrors(st) if mirror else set()
        grid = st.block_grid(self.mirror)
        for r, c in self.mirror:
            grid[r][c] = PETSc.Mat().createTranspose(grid[c][r])
        self.grid = grid
        self.mat = PETSc.Mat().createNest(grid, comm=st.comm)
        self.product = KKTProduct(self)       # the same operator, fewer matrix reads
        if derive is None:
            derive = PETSc.Options(prefix).getBool("kkt_derive", True)
        self.assemblies = 1                   # full block assemblies (for reports)
        self._fresh = None                    # states of the last assembly, until first update
        self.derived, self._candidates, self._E, self._verified = set(), [], None, False
        if derive:
            self._fresh = st.create_vec()
            st.states_to_vec(self._fresh)
            self._setup_derive()

    # -- B_n = α P_n + E ---------------------------------------------------------------
    def _setup_derive(self):
        g, nf = self.grid, self.st.nfields
        theta = getattr(self.st.problem, "theta", None)
        pairs = [(r, r - 1) for r in range(2, nf, 2)
                 if g[r][r - 1] is not None and g[r][r + 1] is not None]
        if theta is None or not 0 < theta < 1 or len(pairs) < 2:
            return
        if len({id(g[r][c]) for r, c in pairs}) < len(pairs):   # shared (constant) blocks
            return
        if not all(same_pattern(g[r][c], g[r][r + 1]) for r, c in pairs):
            return
        self._alpha = (1.0 - theta) / theta
        r0, c0 = pairs[0]
        E = g[r0][c0].copy()
        E.axpy(-self._alpha, g[r0][r0 + 1], structure=SAME)
        work, scratch = E.duplicate(), E.duplicate()
        same = True
        for r, c in pairs[1:]:                # E must be one matrix for every level
            g[r][c].copy(work, structure=SAME)
            work.axpy(-self._alpha, g[r][r + 1], structure=SAME)
            if rel_diff(E, work, scratch) > DERIVE_RTOL:
                same = False
                break
        work.destroy(), scratch.destroy()
        if not same:
            E.destroy()
            return
        self._E, self._candidates = E, pairs

    def derivation(self, r: int, c: int):
        """(P_n, α, E) with the derived block (r, c) = α P_n + E (``(r, c) in derived``)."""
        return self.grid[r][r + 1], self._alpha, self._E

    def _derive(self, check: bool, pairs=None) -> bool:
        """Form B_n = α P_n + E in place, or (``check``) compare it with the assembled B_n of
        ``pairs`` (default: all candidates)."""
        g, work, ok = self.grid, [], True
        for r, c in (pairs if pairs is not None else self._candidates):
            B, P = g[r][c], g[r][r + 1]
            if check:
                if not work:
                    work = [B.duplicate(), B.duplicate()]      # αP_n + E, scratch
                P.copy(work[0], structure=SAME)
                work[0].scale(self._alpha)
                work[0].axpy(1.0, self._E, structure=SAME)
                if rel_diff(B, work[0], work[1]) > DERIVE_RTOL:
                    ok = False
                    break
            else:
                P.copy(B, structure=SAME)
                B.scale(self._alpha)
                B.axpy(1.0, self._E, structure=SAME)
        for m in work:
            m.destroy()
        return ok

    def update(self, X: PETSc.Vec | None = None) -> PETSc.Mat:
        """Reassemble every block at the states X (None: the current states)."""
        if X is not None:
            self.st.vec_to_states(X)
        if self._fresh is not None:
            unchanged = X is not None and X.equal(self._fresh)
            self._fresh.destroy()
            self._fresh = None
            if unchanged:                     # the blocks of the construction are current
                return self.mat
        verify = bool(self._candidates) and not self.derived and not self._verified
        skip = self.mirror | self.derived
        if verify:                            # assemble B_n at the first and last level only
            skip = skip | set(self._candidates[1:-1])
        grid = self.st.block_grid(skip)
        self.assemblies += 1
        if not all(a is b for ra, rb in zip(grid, self.grid) for a, b in zip(ra, rb)
                   if a is not None):
            raise SolverError("KKTOperator: the system returned new block matrices "
                              "(expected in-place reassembly)")
        if verify:
            self._verified = True             # one check, at the first new state
            ends = [self._candidates[0], self._candidates[-1]]
            if self._derive(check=True, pairs=ends):
                self.derived = set(self._candidates)
            else:                             # assemble the B_n skipped above
                middle = set(self._candidates[1:-1])
                self.st.block_grid(set(self.st.block_keys) - middle)
        if self.derived:
            self._derive(check=False)
        self.mat.assemble()                   # new state: the PC sees a changed operator
        return self.mat

    def destroy(self):
        self.product.mat.destroy()            # its context frees its work objects
        for m in (self._E, self._fresh):
            if m is not None:
                m.destroy()
        self._E = self._fresh = None


class TrapezoidResidual:
    """The residual of a system *quadratic* in its unknowns (``SpaceTime.quadratic``) from the
    Jacobian operator, which Newton assembles anyway: with K affine in the state,

        F(y) = F(x) + ½(K(x) + K(y))(y − x)          (trapezoidal rule, exact),

    so after one assembled F(x₀) every residual costs two operator products instead of an
    assembly of all rows (≈ 0.22 s instead of 1.3 s at 60k P1 dofs × 50 steps), and the blocks
    assembled at y serve the Jacobian at y that SNES asks for next.  ``x``/``F``: the last
    point and its residual; ``current(x)``: are the operator's blocks those at x?"""

    def __init__(self, op: KKTOperator):
        self.op = op
        st = op.st
        self.x = self.F = None
        self.d, self.w = st.create_vec(), st.create_vec()
        self.assembled = self.derived = 0     # residuals by assembly / by the identity

    def current(self, x: PETSc.Vec) -> bool:
        return self.x is not None and x.equal(self.x)

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
        x.copy(self.d)
        self.d.axpy(-1.0, self.x)             # d = y − x
        K = self.op.product.mat
        K.mult(self.d, self.w)                # K(x) d
        self.op.update(x)                     # the blocks (and states) at y
        K.mult(self.d, f)                     # K(y) d
        f.axpy(1.0, self.w)
        f.aypx(0.5, self.F)                   # F(y) = F(x) + ½(K(x) + K(y)) d
        x.copy(self.x)
        f.copy(self.F)
        self.derived += 1

    def destroy(self):
        for v in (self.x, self.F, self.d, self.w):
            if v is not None:
                v.destroy()
        self.x = self.F = None


def pivot(f: int) -> int:
    """The column field a row field is solved for: FP row 2n → ρ^{n+1}, HJB row 2n+1 → uⁿ."""
    return f + 1 if f % 2 == 0 else f - 1


class SweepPC:
    """petsc4py PC context (type "python") applying M⁻¹ of the module docstring.

    Per-step solvers: KSP preonly + LU by default; any KSP/PC through the options under
    ``prefix`` (e.g. ``-mfc_sweep_pc_type gamg`` for one AMG V-cycle per step: GAMG applies
    transposed, BoomerAMG does not, so hypre needs ``mirror=False``).  Reuse of per-step
    factors (``-{prefix}reuse_rtol δ``, default REUSE_RTOL): at every set-up the pivot P_r of
    row r keeps the factors it was last solved with if ‖P_r − P_f‖_F ≤ δ‖P_r‖_F (P_f: the matrix
    those factors were computed from; lagging across Newton iterations), else takes those of
    the previous row of its kind when within δ (across time steps — only for ``preonly``
    step solvers, whose solve does not use the current operator), else is refactorised.
    δ = EXACT_RTOL reuses only coinciding pivots (round-off), so M is unchanged (the first
    Newton step from the constant guess factorises one pivot instead of N); the default
    δ = 2e-3 gives an inexact but fixed M (GMRES stays valid; the Newton iterates are those of
    LU to the Krylov tolerance).  60k P1 dofs × 50 CN steps, congested: 7 factorisations
    instead of 250, Krylov 15/14/13/11/7 instead of 15/12/11/10/6 per Newton step.
    ``-{prefix}reuse_rtol -1``: refactorise every pivot at every set-up.
    ``-{prefix}transpose_factors`` (default on): factorise P_rᵀ explicitly too (one more
    factorisation per factorised pivot; forward instead of transposed triangular solves in
    the HJB sweep, PETSc's MatSolveTranspose being ≈ 2.5× slower than MatSolve at 60k dofs);
    pays off because factors are reused over many sweeps."""

    def __init__(self, op: KKTOperator, prefix: str = "mfc_sweep_"):
        self.op, self.prefix = op, prefix
        self.ksp = {}                         # row field → per-step solver it owns
        self.snap = {}                        # row field → matrix its factors were built from
        self.owner = {}                       # row field → row field whose solver it uses
        self.setups = 0                       # set-up passes (for reports)
        self.factorisations = 0               # per-step numeric factorisations (for reports)
        opts = PETSc.Options(prefix)
        self.reuse_rtol = opts.getReal("reuse_rtol", REUSE_RTOL)
        self.tfactor = opts.getBool("transpose_factors", True)
        self.kspT, self.matT = {}, {}         # row field → solver / matrix of its pivotᵀ
        self._work = None
        st = op.st
        self.work = [st.create_vec() for _ in range(2)]
        nl = st.nl
        self.views = [[PETSc.Vec().createWithArray(w.getArray()[f * nl:(f + 1) * nl],
                                                   size=(nl, PETSc.DETERMINE), comm=st.comm)
                       for f in range(st.nfields)] for w in self.work]
        self.rhs, self.tmp = self.views[0][0].duplicate(), self.views[0][0].duplicate()

    def _factor(self, r: int):
        """(Re)build row r's own solver on its current pivot."""
        A = self.op.grid[r][pivot(r)]
        ksp = self.ksp.get(r)
        if ksp is None:
            ksp = self.ksp[r] = step_solver(A, self.prefix)
        else:
            ksp.getPC().setReusePreconditioner(False)
            ksp.setOperators(A)
            ksp.setUp()                       # numeric refactorisation, same pattern
        ksp.getPC().setReusePreconditioner(True)      # keep these factors until the next setUp
        if self.reuse_rtol >= 0:
            if r in self.snap:
                A.copy(self.snap[r], structure=SAME)
            else:
                self.snap[r] = A.copy()
        self.owner[r] = r
        self.factorisations += 1
        if self.tfactor and (r + 1, r) in self.op.mirror:
            self._factor_transpose(r, A)

    def _factor_transpose(self, r: int, A: PETSc.Mat):
        """Explicit P_rᵀ and its own factors: the HJB step r + 1 then uses forward triangular
        solves (PETSc's MatSolveTranspose is ≈ 2.5× slower than MatSolve at 60k P1 dofs)."""
        T = self.matT.get(r)
        self.matT[r] = T = A.transpose(T if T is not None else PETSc.Mat())
        ksp = self.kspT.get(r)
        if ksp is None:
            self.kspT[r] = step_solver(T, self.prefix)
        else:
            ksp.getPC().setReusePreconditioner(False)
            ksp.setOperators(T)
            ksp.setUp()
        self.kspT[r].getPC().setReusePreconditioner(True)
        self.factorisations += 1

    def _close(self, r: int, f: int) -> bool:
        """Is row r's current pivot within reuse_rtol of the matrix of row f's factors?"""
        S = self.snap.get(f)
        if S is None or self.reuse_rtol < 0:
            return False
        A = self.op.grid[r][pivot(r)]
        if f != r and not same_pattern(A, S):
            return False
        if self._work is None:
            self._work = A.duplicate()
        return rel_diff(A, S, self._work) <= self.reuse_rtol

    def setUp(self, pc):
        """Factorise the FP pivots P_n (and the HJB pivots Q_n unless Q_n = P_nᵀ, solved by
        transposed solves with P_n's factors), reusing factors within reuse_rtol."""
        prev = {}                             # row parity → owner used by the previous row
        for r in range(self.op.st.nfields):
            if self._transposed(r):
                continue
            own, last = self.owner.get(r), prev.get(r % 2)
            if own is not None and self._close(r, own):
                pass                                          # lag: keep the factors
            elif last is not None and self._shareable(last) and self._close(r, last):
                self.owner[r] = last                          # share with the previous step
            else:
                self._factor(r)
            prev[r % 2] = self.owner[r]
        self.setups += 1

    def _shareable(self, f: int) -> bool:
        ksp = self.ksp.get(f)
        return ksp is not None and ksp.getType() == PETSc.KSP.Type.PREONLY

    def _transposed(self, r: int) -> bool:
        """Is the pivot of row r the transpose of the pivot of row r − 1 (HJB rows)?"""
        return (r, pivot(r)) in self.op.mirror

    def _solve(self, r: int, b: PETSc.Vec, x: PETSc.Vec):
        if self._transposed(r):
            o = self.owner[r - 1]
            if o in self.kspT:
                self.kspT[o].solve(b, x)
            else:
                self.ksp[o].solveTranspose(b, x)
        else:
            self.ksp[self.owner[r]].solve(b, x)

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
        for k in [*self.ksp.values(), *self.snap.values(), *self.kspT.values(),
                  *self.matT.values()]:
            k.destroy()
        self.kspT, self.matT = {}, {}
        if self._work is not None:
            self._work.destroy()
        self.snap, self._work = {}, None
        for v in [self.rhs, self.tmp] + [v for vs in self.views for v in vs] + self.work:
            v.destroy()
        self.ksp = {}


def sweep_ksp(ksp: PETSc.KSP, op: KKTOperator, rtol: float, atol: float, prefix: str):
    """Configure ``ksp`` as FGMRES (right-preconditioned: the residual it tests is the true
    one) + :class:`SweepPC`; options under ``prefix`` override.  FGMRES keeps the
    preconditioned directions M⁻¹vⱼ and forms the update from them; right-preconditioned
    GMRES would apply M⁻¹ once more per solve to unwind (one more forward–backward sweep per
    Newton step, ≈ 20 % of the Krylov work at 3–5 iterations per step)."""
    ksp.setType("fgmres")
    ksp.setPCSide(PETSc.PC.Side.RIGHT)
    ksp.setTolerances(rtol=rtol, atol=atol, max_it=300)
    ksp.setGMRESRestart(100)
    pc = ksp.getPC()
    pc.setType("python")
    ctx = SweepPC(op, prefix + "sweep_")
    pc.setPythonContext(ctx)
    return ctx


__all__ = ["KKTOperator", "SweepPC", "TrapezoidResidual", "pivot", "sweep_ksp"]
