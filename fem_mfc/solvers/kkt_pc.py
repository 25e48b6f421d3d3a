"""Forward–backward sweep preconditioner for the space-time Newton system.

With the Jacobian of :mod:`fem_mfc.solvers.kkt` written as K = [A P; Q C] (rows: equations of
u — the FP steps — and of ρ — the HJB steps; P block lower bidiagonal with pivots P_n,
Q block upper bidiagonal with pivots Q_n = P_nᵀ for the HJB–FP Lagrangian), the
preconditioner solves exactly with

      M = [ A  P ]     (C dropped):  backward sweep  Q δu = r_HJB          (n = N−1 … 0),
          [ Q  0 ]                   forward sweep   P δρ = r_FP − A δu   (n = 0 … N−1),

i.e. one linearised HJB sweep and one linearised FP sweep per application with one per-step
solve per time step.  For G = 0 (C = 0) M = K and the Krylov method converges in one
iteration; with congestion M⁻¹K = I + M⁻¹[0 0; 0 C] has the eigenvalues 1 and
1 + λ(P⁻¹(−A)P⁻ᵀC), real and ≥ 1 for the HJB–FP Lagrangian (−A = τ∫ρ̄∇·∇ ≥ 0,
C = τ∫G''(ρ̄)·· ≥ 0): the Krylov count does not grow with the mesh.  (Attractive couplings,
G'' < 0, make C negative and the eigenvalues may approach 0.)

:class:`SweepPC` is a PETSc python preconditioner: ``-{prefix}pc_type python
-{prefix}pc_python_type fem_mfc.solvers.kkt_pc.SweepPC`` on a KSP whose preconditioning
matrix is the python Mat of a :class:`~fem_mfc.solvers.kkt.KKTOperator` (how Newton sets up
its sweep path).  Per-step solvers and their options live under ``{prefix}sweep_``
(:func:`fem_mfc.solvers.steps.step_solver`: LU by default, iterative AMG-preconditioned
solves with ``-{prefix}sweep_pc_type gamg|hypre``).  Cost savings (see :class:`SweepPC`):
per-step factors reused while the pivot moved less than ``reuse_rtol`` (across Newton
steps and time steps), explicit factors of P_nᵀ for the HJB sweep.
"""
from __future__ import annotations

import time

from mpi4py import MPI
from petsc4py import PETSc

import numpy as np

from .. import options
from ..errors import SolverError, keeps_cause
from .assembly import VALUES
from .steps import OwnedLU, OwnerTransfer, is_direct, redundant, step_kind, step_solver

REUSE_RTOL = 5e-3               # reuse factors of pivots within 0.5 % (Frobenius): against
                                # 0.2 %, half the factorisations for ≤ 1 more Krylov iteration
                                # (2D P1/P2 289–66k dofs, docs/performance.md) ...
REUSE_FULL_DOFS = 66_049        # ... up to this many dofs per pivot; above, δ ∝ n^{-1/2} (∝ h
                                # in 2D: the Frobenius norm is the mass's and diffusion's, the
                                # part that changes is the transport, relatively larger on finer
                                # meshes).  251k 2D dofs × 20: 0.5 % shared the factors of
                                # whole sweeps (2 factorisations) for 40 Krylov iterations,
                                # 68 s; 0.256 % 6 and 17, 48 s.


class StepFailed(SolverError):
    """A per-step solve of a sweep failed (reported to PETSc as a failed PC)."""


def reuse_rtol(ndofs: int, dim: int) -> float:
    """The default ``-{prefix}sweep_reuse_rtol`` for pivots of ``ndofs`` rows on a mesh of
    dimension ``dim`` (1D: −1, refactorise every pivot — a factorisation costs a few
    solves)."""
    if dim <= 1:
        return -1.0
    return REUSE_RTOL * min(1.0, (REUSE_FULL_DOFS / max(ndofs, 1)) ** 0.5)
TRANSPOSE_FACTORS_FROM = 40_000  # explicit Pᵀ factors for pivots of this many dofs or more
EXACT_RTOL = 1e-13              # reuse factors of coinciding pivots only (M unchanged)
FRO = PETSc.NormType.FROBENIUS
SAME = PETSc.Mat.Structure.SAME_NONZERO_PATTERN


def rel_diff(A: PETSc.Mat, B: PETSc.Mat, work: PETSc.Mat) -> float:
    """‖A − B‖_F / ‖A‖_F for A, B of one nonzero pattern (``work``: same pattern, clobbered)."""
    A.copy(work, structure=SAME)
    work.axpy(-1.0, B, structure=SAME)
    na = A.norm(FRO)
    return work.norm(FRO) / na if na > 0 else work.norm(FRO)


def same_pattern(A: PETSc.Mat, B: PETSc.Mat) -> bool:
    """Cheap necessary check (sizes, nonzero counts) for SAME_NONZERO_PATTERN operations
    between blocks of one form (they share one sparsity pattern)."""
    if A.getSizes() != B.getSizes():
        return False
    comm = A.getComm().tompi4py()
    ok = A.getInfo()["nz_used"] == B.getInfo()["nz_used"]
    return comm.allreduce(ok, op=MPI.LAND)


class SweepPC:
    """petsc4py PC context (type "python") applying M⁻¹ of the module docstring.

    Reuse of per-step factors (``-{prefix}sweep_reuse_rtol δ``, default :func:`reuse_rtol`):
    at every set-up the pivot of equation r keeps the factors it was last solved with if
    ‖P_r − P_f‖_F ≤ δ‖P_r‖_F (P_f: the matrix those factors were computed from; lagging
    across Newton iterations), else takes those of the previous equation of its kind when
    within δ (across time steps — only for direct per-step solvers, whose solve does not use
    the current operator), else is refactorised.  δ = EXACT_RTOL reuses only coinciding
    pivots (round-off), so M is unchanged; the default gives an inexact but fixed M (the
    Krylov method stays valid; the Newton iterates are those of LU to the Krylov tolerance).
    ``-{prefix}sweep_reuse_rtol -1``: refactorise every pivot at every set-up.
    ``-{prefix}sweep_transpose_factors``: factorise P_rᵀ explicitly too for the HJB sweep.
    PETSc's transposed triangular solves (column-oriented) are about twice as slow as forward
    solves with the same factors, so explicit factors of P_rᵀ repay their factorisation after
    some tens of HJB solves with them.  Default: on where factors are reused (reuse_rtol ≥ 0)
    and the pivot has TRANSPOSE_FACTORS_FROM dofs or more (the measurements behind the
    threshold: docs/performance.md, "Where the Newton time goes"), and always with owned
    factors.
    ``-{prefix}sweep_owned_factors`` (default: on 2–4 ranks where the per-step LU would be
    redundant, :func:`~fem_mfc.solvers.steps.redundant`, and no per-step solver options are
    given): every factorisation is gathered to one rank, the ranks in turn, and factorised
    there while the others factorise theirs (:class:`~fem_mfc.solvers.steps.OwnedLU`) —
    instead of every rank factorising every pivot.  A set-up then takes 1/ranks of the
    time and each factor is stored once; the solves are the same (one rank solves, as every
    rank does with redundant factors) and so are the iterates.  At 251k 2D dofs × 20 steps
    on 2 ranks: set-up 16.5 → 9.2 s, Newton 48.4 → 41.6 s (one rank: 54.5 s)."""

    def __init__(self, op=None):
        self.op = op
        self.ksp = {}                         # equation → per-step solver it owns
        self.snap = {}                        # equation → matrix its factors were built from
        self.owner = {}                       # equation → equation whose solver it uses
        self.kspT, self.matT = {}, {}         # equation → solver / matrix of its pivotᵀ
        self.setups = 0                       # set-up passes (for reports)
        self.factorisations = 0               # per-step numeric factorisations (for reports)
        self.seconds = {"setup": 0.0, "apply": 0.0}   # cumulative (for reports)
        self._work = None
        self.prefix = None
        self._vecs = None
        self.kind = None                      # per-step solver kind (fem_mfc.solvers.steps)
        self.owned = False                    # LU factors held by one rank each (OwnedLU)
        self._pending, self._turn = [], 0     # owned factors gathered, not yet factorised
        self._io = {}                         # owner rank → its OwnerTransfer
        self.it, self._T, self._due = {}, None, {}   # iterative kinds: one KSP per direction
        self._terms = {}                      # (equation, sweep) → its right-hand side terms
        self._norms = {}                      # equation → ‖pivot‖_F in this set-up pass
        self.error = None                     # the message of an exception in a callback

    # -- PETSc python PC interface ----------------------------------------------------------
    def create(self, pc):
        pass

    def _bind(self, pc):
        """Find the operator (the python Mat's context) and the options of this PC."""
        if self.op is None:
            P = pc.getOperators()[1]
            self.op = P.getPythonContext().op
        if self.prefix is None:
            self.prefix = (pc.getOptionsPrefix() or "") + "sweep_"
            opts = PETSc.Options(self.prefix)
            dim = self.op.st.V.mesh.topology.dim
            im = self.op.st.V.dofmap
            n = im.index_map.size_global * im.index_map_bs   # a pivot's rows (K populations)
            self.reuse_rtol = opts.getReal("reuse_rtol", reuse_rtol(n, dim))
            A0 = self.op.pivot_matrix(self.op.st.layout.forward_rows()[0])[0]
            self.kind = step_kind(A0, self.prefix, dim)
            size = A0.getComm().getSize()
            user = any(opts.hasName(k)
                       for k in ("ksp_type", "pc_type", "pc_factor_mat_solver_type"))
            self.owned = opts.getBool("owned_factors", self.kind == "lu" and not user
                                      and redundant(n, size)) and size > 1
            # explicit Pᵀ factors: where they repay (large pivots), and always with owned
            # factors (another rank factorises them at the same time)
            self.tfactor = opts.getBool("transpose_factors", self.reuse_rtol >= 0 and (
                n >= TRANSPOSE_FACTORS_FROM or self.owned))
        if self._vecs is None:
            st = self.op.st
            nl = st.nl
            # per-field views, placed on the input and output arrays of each application
            # (no space-time work vectors)
            self._dummy = np.zeros(nl, dtype=PETSc.ScalarType)
            self.views = [None, [PETSc.Vec().createWithArray(self._dummy,
                                                             size=(nl, PETSc.DETERMINE),
                                                             comm=st.comm)
                                 for f in range(st.nfields)]]
            self.rhs = PETSc.Vec().createMPI((nl, PETSc.DETERMINE), comm=st.comm)
            self.tmp = self.rhs.duplicate()
            self._vecs = True

    def setFromOptions(self, pc):
        pass

    def view(self, pc, viewer):
        viewer.printfASCII(f"  sweep preconditioner: per-step {self.kind}"
                           f"{' (factors owned by one rank each)' if self.owned else ''}, "
                           f"{self.factorisations} set-ups, reuse_rtol {self.reuse_rtol:g}\n")

    # -- factors -------------------------------------------------------------------------------
    def _factor(self, r: int):
        """(Re)build equation r's own solver on its current pivot."""
        A, transposed = self.op.pivot_matrix(r)
        assert not transposed
        if self.owned:                        # factorised with the set-up's others
            self._gather(self.ksp, r, A, False)
        else:
            ksp = self.ksp.get(r)
            if ksp is None:
                ksp = self.ksp[r] = step_solver(A, self.prefix)
            else:
                ksp.getPC().setReusePreconditioner(False)
                ksp.setOperators(A)
                options.factorise(ksp)        # (MUMPS: more workspace where it asks)
                ksp.setUp()                   # numeric refactorisation, same pattern
            ksp.getPC().setReusePreconditioner(True)  # keep these factors until the next setUp
        if self.reuse_rtol >= 0:
            a = A.getAttr(VALUES)
            if a is not None:                 # one rank, values on an array: a numpy copy
                if r in self.snap:
                    np.copyto(self.snap[r], a)
                else:
                    self.snap[r] = a.copy()
            elif r in self.snap:
                A.copy(self.snap[r], structure=SAME)
            else:
                self.snap[r] = A.copy()
        self.owner[r] = r
        self.factorisations += 1
        if self.tfactor and self._mirrored_by(r):
            self._factor_transpose(r, A)

    def _mirrored_by(self, r: int) -> bool:
        """Is the pivot of equation r the mirror of another equation's pivot?"""
        L = self.op.st.layout
        c = L.pivot(r)
        return (c, r) in self.op.mirror

    def _gather(self, store: dict, r: int, A: PETSc.Mat, transpose: bool):
        """Owned factors: gather A (or Aᵀ) to the next rank in turn, to be factorised with the
        set-up's others (:meth:`_factor_pending`)."""
        owner = self._turn % A.getComm().getSize()
        self._turn += 1
        io = self._io.get(owner)              # one transfer per owner, shared by its factors
        if io is None:
            io = self._io[owner] = OwnerTransfer(A.getComm(), A.getLocalSize()[0],
                                                 A.getSize()[0], owner)
        f = store.get(r)
        if f is None:
            f = store[r] = OwnedLU(A, self.prefix, io, transpose=transpose)
        else:
            f.gather(A, io)
        self._pending.append(f)

    def _factor_pending(self):
        """Owned factors: every rank factorises the pivots gathered to it (at the same time as
        the others theirs); a failure anywhere raises on every rank."""
        pending, self._pending, self._turn = self._pending, [], 0
        for f in pending:
            f.factor()
        comm = self.op.st.comm
        if not comm.allreduce(not any(f.failed for f in pending), op=MPI.LAND):
            raise SolverError("sweep preconditioner: a per-step LU factorisation failed")

    def _factor_transpose(self, r: int, A: PETSc.Mat):
        if self.owned:
            self._gather(self.kspT, r, A, True)
            self.factorisations += 1
            return
        T = self.matT.get(r)
        if T is not None:
            A.setTransposePrecursor(T)
        self.matT[r] = T = A.transpose(T if T is not None else PETSc.Mat())
        ksp = self.kspT.get(r)
        if ksp is None:
            self.kspT[r] = step_solver(T, self.prefix)
        else:
            ksp.getPC().setReusePreconditioner(False)
            ksp.setOperators(T)
            options.factorise(ksp)
            ksp.setUp()
        self.kspT[r].getPC().setReusePreconditioner(True)
        self.factorisations += 1

    def _close(self, r: int, f: int) -> bool:
        """Is equation r's current pivot within reuse_rtol of the matrix of f's factors?"""
        S = self.snap.get(f)
        if S is None or self.reuse_rtol < 0:
            return False
        A = self.op.pivot_matrix(r)[0]
        if isinstance(S, np.ndarray):         # values of one pattern (the pivots' form)
            a = A.getAttr(VALUES)
            if a is None or a.shape != S.shape:
                return False
            na = self._norms.get(r)
            if na is None:
                na = self._norms[r] = float(np.linalg.norm(a))
            if self._work is None or self._work.shape != a.shape:
                self._work = np.empty_like(a)
            d = float(np.linalg.norm(np.subtract(a, S, out=self._work)))
            return d <= self.reuse_rtol * na if na > 0 else d <= self.reuse_rtol
        if f != r and not same_pattern(A, S):
            return False
        if self._work is None:
            self._work = A.duplicate()
        return rel_diff(A, S, self._work) <= self.reuse_rtol

    def _shareable(self, f: int) -> bool:
        ksp = self.ksp.get(f)
        return ksp is not None and is_direct(ksp)

    def _transposed(self, r: int) -> bool:
        """Is the pivot of equation r the transpose of a stored pivot (HJB rows)?"""
        return self.op.pivot_matrix(r)[1]

    @keeps_cause
    def setUp(self, pc=None):
        """Factorise the stored pivots (the HJB pivots Q_n = P_nᵀ use P_n's factors),
        reusing factors within reuse_rtol; iterative per-step kinds set up per solve."""
        t0 = time.perf_counter()
        if pc is not None:
            pc.setFailedReason(PETSc.PC.FailedReason.NOERROR)
        try:
            self._setup(pc)
        finally:
            self.seconds["setup"] += time.perf_counter() - t0

    def _setup(self, pc):
        if pc is not None:
            self._bind(pc)
        if self.kind != "lu":
            self._due = {"fw": True, "bw": True}      # a new ILU / AMG per Newton step
            self.setups += 1
            return
        L = self.op.st.layout
        self._norms = {}
        self._pending, self._turn = [], 0     # (an interrupted set-up leaves none behind)
        prev = {}                             # kind → owner used by the previous equation
        for r in range(self.op.st.nfields):
            if self._transposed(r):
                continue
            kind = L.is_forward(r)
            own, last = self.owner.get(r), prev.get(kind)
            if own is not None and self._close(r, own):
                pass                                          # lag: keep the factors
            elif last is not None and self._shareable(last) and self._close(r, last):
                self.owner[r] = last                          # share with the previous step
            else:
                self._factor(r)
            prev[kind] = self.owner[r]
        if self.owned:
            self._factor_pending()
        self._release_unused()
        self.setups += 1

    def _release_unused(self):
        """Free the factors (and their snapshots, explicit transposes) that no equation
        uses any more: an equation that now shares its predecessor's factors, or lags
        another's, would otherwise keep its own old ones for the rest of the solve."""
        used = set(self.owner.values())
        for r in [r for r in self.ksp if r not in used]:
            for store in (self.ksp, self.snap, self.kspT, self.matT):
                obj = store.pop(r, None)
                if obj is not None and not isinstance(obj, np.ndarray):
                    obj.destroy()

    # -- application -----------------------------------------------------------------------------
    def _solve_iterative(self, r: int, b: PETSc.Vec, x: PETSc.Vec):
        """One iterative per-step solve with the current pivot (explicit transpose for the
        HJB steps); the preconditioner (ILU, AMG) is built once per set-up and direction and
        serves the direction's other pivots (GMRES solves each with its own pivot to the
        per-step tolerance).  Rebuilding ILU for every pivot cost more than the iterations
        it saved — on 2 ranks, where the overlapping Schwarz blocks are extracted at every
        set-up, most of the sweep: 3D P1 27k dofs × 20, sweeps 6.96 → 3.78 s (one rank
        5.72 → 4.96 s), the same Krylov iterations and J (docs/performance.md)."""
        A, transposed = self.op.pivot_matrix(r)
        key = "bw" if self.op.st.layout.is_forward(r) else "fw"     # HJB / FP steps
        if transposed:                        # one buffer for every level (one pattern)
            if self._T is None:
                self._T = A.transpose(PETSc.Mat())
            else:
                A.setTransposePrecursor(self._T)
                A.transpose(self._T)
            A = self._T
        ksp = self.it.get(key)
        if ksp is None:
            ksp = self.it[key] = step_solver(A, self.prefix, self.kind,
                                             dim=self.op.st.V.mesh.topology.dim)
            self.factorisations += 1
        else:
            reuse = not self._due.get(key, True)
            ksp.getPC().setReusePreconditioner(reuse)
            ksp.setOperators(A)
            if not reuse:
                self.factorisations += 1
        self._due[key] = False
        ksp.solve(b, x)
        return ksp

    def _solve(self, r: int, b: PETSc.Vec, x: PETSc.Vec):
        if self.kind != "lu":
            ksp = self._solve_iterative(r, b, x)
        elif self._transposed(r):
            o = self.owner[self.op.st.layout.pivot(r)]       # the mirror's owner
            if o in self.kspT:
                ksp = self.kspT[o]
                ksp.solve(b, x)
            else:
                ksp = self.ksp[o]
                ksp.solveTranspose(b, x)
        else:
            ksp = self.ksp[self.owner[r]]
            ksp.solve(b, x)
        if ksp.getConvergedReason() < 0:
            raise StepFailed(f"sweep preconditioner: the per-step solve of equation {r} "
                              f"failed (KSP reason {ksp.getConvergedReason()})")

    def _rhs(self, r: int, b, z: list, known) -> PETSc.Vec:
        """b_r − Σ_{c ≠ pivot, known(c)} K_rc z_c (b_r: the owned array of equation r); the
        terms (product, column, −coefficient) of each equation and sweep are listed once."""
        terms = self._terms.get((r, known))
        if terms is None:
            op, piv = self.op, self.op.st.layout.pivot(r)
            terms = self._terms[(r, known)] = [
                (base.multTranspose if t else base.mult, c, -a)
                for c in op.row_blocks(r) if c != piv and known(c, r)
                for base, t, a in op.terms(r, c)]
        rhs, tmp = self.rhs, self.tmp
        rhs.array[:] = b
        for mult, c, a in terms:
            mult(z[c], tmp)
            rhs.axpy(a, tmp)
        return rhs

    @keeps_cause
    def apply(self, pc, x: PETSc.Vec, y: PETSc.Vec):
        """y = M⁻¹ x: backward sweep over the HJB equations for δu, forward over the FP
        equations for δρ."""
        t0 = time.perf_counter()
        try:
            self._apply(x, y)
        except StepFailed as e:               # PETSc's own failure path, not an exception
            self.error = str(e)               # through its line searches (nleqerr crashed)
            y.set(np.nan)
            if pc is not None:
                pc.setFailedReason(PETSc.PC.FailedReason.SUBPC_ERROR)
        self.seconds["apply"] += time.perf_counter() - t0

    def _apply(self, x: PETSc.Vec, y: PETSc.Vec):
        L = self.op.st.layout
        z = self.views[1]
        y.zeroEntries()
        xa, ya = x.getArray(readonly=True), y.getArray()
        for f in range(L.nfields):
            z[f].placeArray(ya[L.slice(f)])
        try:
            for r in L.backward_rows():       # equations of ρ^N … ρ¹ → δu^{N−1} … δu⁰
                self._solve(r, self._rhs(r, xa[L.slice(r)], z, L.before_in_backward_sweep),
                            z[L.pivot(r)])
            for r in L.forward_rows():        # equations of u⁰ … u^{N−1} → δρ¹ … δρ^N
                self._solve(r, self._rhs(r, xa[L.slice(r)], z, L.before_in_forward_sweep),
                            z[L.pivot(r)])
        finally:
            for f in range(L.nfields):
                z[f].resetArray()
        y.stateIncrease()                     # written through the views: drop cached norms

    def destroy(self, pc=None):
        for k in [*self.ksp.values(), *self.snap.values(), *self.kspT.values(),
                  *self.matT.values(), *self.it.values()] + ([self._T] if self._T else []):
            if not isinstance(k, np.ndarray):
                k.destroy()
        self.ksp, self.snap, self.kspT, self.matT, self.it, self._T = {}, {}, {}, {}, {}, None
        if isinstance(self._work, PETSc.Mat):
            self._work.destroy()
        self._work = None
        self._terms = {}
        if self._vecs:
            for v in [self.rhs, self.tmp] + self.views[1]:
                v.destroy()
            self._vecs = None
        for io in self._io.values():
            io.destroy()
        self._io = {}


PYTHON_TYPE = f"{SweepPC.__module__}.{SweepPC.__qualname__}"


__all__ = ["SweepPC", "PYTHON_TYPE", "REUSE_RTOL", "EXACT_RTOL", "reuse_rtol"]
