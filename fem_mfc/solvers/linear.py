"""Linear solves shared by every time stepper: a PETSc KSP (LU with MUMPS unless the user's
options say otherwise) whose factorisation is reused across steps, and a checked solve that
assembles the right-hand side, solves, updates ghosts and rejects NaN or a failed KSP.
"""
from __future__ import annotations

from petsc4py import PETSc

import dolfinx
import dolfinx.fem.petsc
import numpy as np

from ..errors import SolverError


def make_ksp(A, prefix: str, solves: float = float("inf"), symmetric: bool = False):
    """A factorisation of A with options prefix ``prefix`` whose factors serve ``solves``
    solves (user options override; ``symmetric``: A is symmetric positive definite, Cholesky).
    It is the sweeps' per-step LU (:func:`fem_mfc.solvers.steps.step_solver`): PETSc's own
    on one rank — its triangular solves take a third of MUMPS' time (2D P1, factorisation +
    20 solves, one process: 4,225 dofs 0.16 against 0.38 ms per solve, 66,049 dofs 4.5
    against 14 ms, 251,001 dofs 20 against 59 ms; the factorisations within ±30 %) —, on
    2–4 ranks the same on every rank or MUMPS by size and number of solves
    (:func:`~fem_mfc.solvers.steps.redundant`); MUMPS on more.  (It was MUMPS on any number
    of ranks: a heat run of 82k dofs × 100 steps stepped 5× slower on 2 ranks than on 1.)"""
    from .steps import step_solver
    return step_solver(A, prefix, "lu", symmetric=symmetric, solves=solves)


def assemble_rhs(b, L_form) -> None:
    """b ← assembled linear form (zeroed first, ghost contributions accumulated)."""
    with b.localForm() as loc:
        loc.set(0.0)
    dolfinx.fem.petsc.assemble_vector(b, L_form)
    b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)


def solve_checked(ksp, b, target, what: str) -> None:
    """Solve ``ksp`` x = b into the Function ``target``; SolverError on failure or NaN."""
    ksp.solve(b, target.x.petsc_vec)
    reason = ksp.getConvergedReason()
    if reason < 0:
        raise SolverError(f"{what}: linear solve failed (KSP reason {reason})")
    target.x.scatter_forward()
    if not np.isfinite(target.x.array).all():
        raise SolverError(f"{what}: the solution became NaN/inf")


class StepResidual:
    """The largest relative residual ‖b − Ax‖/‖b‖ of a per-step solver's solves (``value``):
    a direct solve reports none, and a user's options may make the solve loose.  Computed
    after every solve of an iterative solver and after every DIRECT_STRIDE-th (the first
    included) of a factorisation, whose residuals are of one size for one set of factors
    (backward stability): one product with A per step cost 6–8 % of a heat or Cole–Hopf step
    at 60k 2D P1 dofs."""

    DIRECT_STRIDE = 10
    DIRECT = ("lu", "cholesky", "redundant")

    def __init__(self, A: PETSc.Mat, ksp: PETSc.KSP):
        self.A, self.r = A, A.createVecLeft()
        direct = ksp.getType() == "preonly" and ksp.getPC().getType() in self.DIRECT
        self.stride = self.DIRECT_STRIDE if direct else 1
        self.value, self.solves = 0.0, 0

    def after(self, b: PETSc.Vec, x: PETSc.Vec) -> None:
        """After the solve A x = b (collective)."""
        if self.solves % self.stride == 0:
            self.A.mult(x, self.r)
            self.r.aypx(-1.0, b)                # r = b − A x
            nb = b.norm()
            self.value = max(self.value, self.r.norm() / nb if nb > 0 else self.r.norm())
        self.solves += 1

    def destroy(self) -> None:
        self.r.destroy()


class LinearStepper:
    """x^{n+1} from A x^{n+1} = b(xⁿ) with a constant matrix A, solved by the sweeps' per-step
    solver (:func:`fem_mfc.solvers.steps.step_solver`, ``-{prefix}step lu|ilu|amg|auto``;
    ``auto``: factorised once in 1D and 2D, GMRES + ILU(0) to STEP_RTOL in 3D, as the
    Cole–Hopf sweeps of the same heat-step matrices); ``steps``: how many steps it serves,
    ``symmetric``: A is symmetric positive definite (Cholesky).

    ``residual`` is the largest relative residual ‖b − Ax^{n+1}‖/‖b‖ of the steps so far
    (:class:`StepResidual`)."""

    STEP_RTOL = 1e-14        # iterative kinds: to near round-off, as the Cole–Hopf sweeps

    def __init__(self, a, L, prefix: str, steps: float = float("inf"), symmetric=False):
        from .steps import step_kind, step_solver
        self.a_form, self.L_form = dolfinx.fem.form(a), dolfinx.fem.form(L)
        self.A = dolfinx.fem.petsc.assemble_matrix(self.a_form)
        self.A.assemble()
        self.b = dolfinx.fem.petsc.create_vector(self.L_form)
        dim = self.a_form.mesh.geometry.dim
        kind = step_kind(self.A, prefix, dim, solves=steps)
        self.ksp = step_solver(self.A, prefix, kind, rtol=self.STEP_RTOL, dim=dim,
                               symmetric=symmetric, solves=steps)
        self.monitor = StepResidual(self.A, self.ksp)

    @property
    def residual(self) -> float:
        return self.monitor.value

    @residual.setter
    def residual(self, value: float) -> None:        # a restart's steps before it
        self.monitor.value = value

    def step(self, target, what: str = "step") -> None:
        assemble_rhs(self.b, self.L_form)
        solve_checked(self.ksp, self.b, target, what)
        self.monitor.after(self.b, target.x.petsc_vec)

    def destroy(self) -> None:
        self.ksp.destroy()
        self.A.destroy()
        self.b.destroy()
        self.monitor.destroy()


class StepResiduals:
    """How far each time step's Newton solve reduced its residual: the check that a step was
    solved at all.

    SNES accepts a step when ‖F‖ ≤ max(atol, rtol‖F₀‖), F₀ the residual of the first guess.
    An absolute tolerance above the residual's scale accepts the first guess: the state
    freezes (or follows the guess's extrapolation), and mass and energy are then conserved
    trivially — NLS and QHD runs with ``atol = 10`` made 0 Newton iterations and reported
    success.  :meth:`record` keeps (‖F₀‖, ‖F‖) after every solve.  The run's check (a
    runner's ``bound(worst(), limit(), HINT)``): the largest ‖F‖/‖F₀‖ over the steps that had
    something to solve (‖F₀‖ above round-off, ``AT_REST``) is at most max(rtol,
    ``REDUCTION``) — the solve's own relative tolerance, or a reduction by 10⁶ for steps that
    met a small absolute one first."""

    REDUCTION = 1e-6
    AT_REST = 1e-14         # absolute, or relative to the run's largest first residual: 1e-12

    def __init__(self, snes):
        """``snes`` after its ``setFromOptions`` (its rtol is the user's)."""
        snes.setConvergenceHistory(reset=True)
        self.snes, self.pairs, self.rtol = snes, [], snes.getTolerances()[0]

    def record(self) -> None:
        hist = self.snes.getConvergenceHistory()[0]
        final = float(self.snes.getFunctionNorm())
        self.pairs.append((float(hist[0]) if len(hist) else final, final))

    def restore(self, pairs) -> None:
        """The pairs of the steps before a restart (from a checkpoint's ``step_residuals``)."""
        self.pairs = [tuple(p) for p in pairs]

    def worst(self) -> float:
        """max ‖F‖/‖F₀‖ over the steps not at rest (0 when every step was)."""
        if not self.pairs:
            return 0.0
        first = np.array([p[0] for p in self.pairs])
        final = np.array([p[1] for p in self.pairs])
        moving = first > max(self.AT_REST, 1e-12 * float(first.max()))
        return float((final[moving] / first[moving]).max()) if moving.any() else 0.0

    def limit(self) -> float:
        """max(the solve's rtol, REDUCTION): what :meth:`worst` may be in a solved run."""
        return max(self.rtol, self.REDUCTION)

    HINT = ("largest residual a time step's Newton solve left, relative to its first guess's: "
            "a large atol accepted the guess and the state did not move as the equation says; "
            "lower the solver's atol")
