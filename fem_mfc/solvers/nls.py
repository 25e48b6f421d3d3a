"""Time stepping of the real-time NLS / Gross–Pitaevskii equation (forms in ``forms/nls.py``).

  iħ ∂_tΨ = −(ħ²/2)ΔΨ + (V + g(|Ψ|²))Ψ,   Ψ = q + ip,   ħ M ż = F(z)   (semi-discrete).

* :class:`MidpointStepper` — implicit midpoint (Crank–Nicolson for the linear part)
  ħ M (zⁿ⁺¹ − zⁿ) = τ F(zⁿ⁺½; ḡ), solved by petsc4py SNES (Newton, LU/MUMPS, Jacobian from
  ``ufl.derivative``; options prefix ``nls_``).  ḡ = g(|zⁿ⁺½|²) ("midpoint": symplectic, energy
  error O(τ²)) or the average of g between ρⁿ and ρⁿ⁺¹ ("energy-conserving": discrete gradient,
  mass *and* energy conserved to solver tolerance).  Both conserve the mass exactly.
* :class:`RK4Stepper` — classical explicit RK4 on the same ħ M ż = F(z), one mass-matrix solve
  per stage: the contrast (conditionally stable, mass and energy drift).
* :func:`ground_state` — imaginary-time normalised gradient flow (semi-implicit backward
  Euler + renormalisation to the prescribed mass); its fixed point is an exact discrete
  nonlinear eigenfunction H(φ)φ = μφ, hence stationary under the real-time steppers.
"""
from __future__ import annotations

from mpi4py import MPI
from petsc4py import PETSc

import basix.ufl
import dolfinx
import dolfinx.fem.petsc
import numpy as np
import ufl

from .. import options
from ..errors import SolverError
from ..forms import nls as forms
from .linear import StepResiduals, make_ksp
from .steps import set_lu, step_solver

NONLINEARITIES = ("energy-conserving", "midpoint")


class NLSProblem:
    """Mesh, space and coefficients of iħΨ_t = −(ħ²/2)ΔΨ + (V + G'(|Ψ|²))Ψ.

    ``V`` is a UFL expression (or number) in the coordinates; ``G`` a map ρ ↦ UFL expression
    (None: linear Schrödinger).  The space holds z = (q, p) as a blocked Lagrange element of
    shape (2,).
    """

    def __init__(self, mesh, degree: int = 1, hbar: float = 1.0, V=0.0, G=None):
        self.mesh = mesh
        self.degree = degree
        cell = mesh.basix_cell()
        self.W = dolfinx.fem.functionspace(
            mesh, basix.ufl.element("Lagrange", cell, degree, shape=(2,)))
        self.hbar_value = float(hbar)
        self.hbar = dolfinx.fem.Constant(mesh, float(hbar))
        self.V = V if not isinstance(V, (int, float)) else dolfinx.fem.Constant(mesh, float(V))
        self.G = G if G is not None else (lambda rho: 0.0 * rho)
        self.g = forms.nonlinearity(self.G)
        self.linear = G is None
        self.dxp = forms.dx_potential(mesh, degree)

    def function(self, name: str = "psi") -> dolfinx.fem.Function:
        return dolfinx.fem.Function(self.W, name=name)

    def interpolate(self, z, re, im) -> None:
        """z ← nodal interpolation of Ψ = re + i·im (UFL expressions)."""
        expr = dolfinx.fem.Expression(ufl.as_vector([re, im]),
                                      self.W.element.interpolation_points())
        z.interpolate(expr)
        z.x.scatter_forward()

    @property
    def ndofs(self) -> int:
        im = self.W.dofmap.index_map
        return im.size_global * self.W.dofmap.index_map_bs

    def g_value(self, z):
        """g(|z|²) as a UFL expression (0 for the linear equation)."""
        return 0.0 if self.linear else self.g(forms.density(z))


DEFAULTS = {"snes_linesearch_type": "basic"}


class MidpointStepper:
    """One implicit-midpoint step zⁿ → zⁿ⁺¹ per :meth:`step`, solved with SNES Newton."""

    def __init__(self, problem: NLSProblem, z, tau: float,
                 nonlinearity: str = "energy-conserving", prefix: str = "nls_",
                 rtol: float = 1e-10, atol: float = 1e-12, max_it: int = 50):
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}")
        self.problem, self.z = problem, z
        P = problem
        self.z_old = dolfinx.fem.Function(P.W)
        self.z_prev = dolfinx.fem.Function(P.W)
        self.tau = dolfinx.fem.Constant(P.mesh, float(tau))
        w = ufl.TestFunction(P.W)
        if P.linear:
            gval = 0.0
        elif nonlinearity == "midpoint":
            gval = P.g(forms.density((z + self.z_old) / 2))
        else:
            gval = forms.averaged_nonlinearity(P.g, forms.density(self.z_old), forms.density(z))
        R = forms.midpoint_residual(z, self.z_old, w, self.tau, P.hbar, P.V, gval, P.dxp)
        self.R = dolfinx.fem.form(R)
        self.J = dolfinx.fem.form(ufl.derivative(R, z, ufl.TrialFunction(P.W)))
        self.b = dolfinx.fem.petsc.create_vector(self.R)
        self.A = dolfinx.fem.petsc.create_matrix(self.J)
        snes = options.make_snes(P.mesh.comm, prefix, rtol, atol, max_it)
        snes.setFunction(self._residual, self.b)
        snes.setJacobian(self._jacobian, self.A)
        # the linear equation's Jacobian M + iτH/2 depends on τ alone: assembled and factorised
        # once per τ (a composition's sub-steps change it), not at every step
        self._jacobian_tau = None
        self._jacobian(snes, None, self.A, self.A)   # its zero pivot relative to the Jacobian
        # the per-step factorisation (:func:`~.steps.set_lu`): PETSc's LU on one rank (faster
        # at every size); on 2–4 ranks the same on every rank for the linear Jacobian (its
        # factors serve every step) below 1M dofs and for a nonlinear one (one solve per
        # factorisation) in 1D below 100k — MUMPS refactorising a 40k-dof 1D Jacobian at each
        # Newton iteration made a 2-rank run 2.4× slower than one rank —, MUMPS otherwise
        # (it refactorises a 2D Jacobian faster: :func:`~.steps.redundant`)
        self._pivot = set_lu(snes.getKSP(), self.A, prefix,
                             solves=float("inf") if P.linear else 1,
                             dim=P.mesh.topology.dim)
        self.prefix = prefix
        with self._options():
            snes.setFromOptions()
        self.snes = snes
        self.residuals = StepResiduals(snes)
        self.steps = 0
        self.newton_iterations = 0

    def _residual(self, snes, x, b):
        x.copy(self.z.x.petsc_vec)
        self.z.x.scatter_forward()
        with b.localForm() as bl:
            bl.set(0.0)
        dolfinx.fem.petsc.assemble_vector(b, self.R)
        b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)

    def _jacobian(self, snes, x, A, P):
        tau = float(self.tau.value)
        if self.problem.linear and tau == self._jacobian_tau:
            return          # the linear equation's Jacobian: unchanged, its factors are kept
        A.zeroEntries()
        dolfinx.fem.petsc.assemble_matrix(A, self.J)
        A.assemble()
        self._jacobian_tau = tau
        if snes is not None:            # MUMPS (2D on 2-4 ranks, more ranks): factorised here,
            options.factorise(snes.getKSP(), A, P)   # with more workspace where it asks

    def _options(self):
        """Plain Newton steps (no line search) unless the user's options say otherwise."""
        return options.inserted(defaults={**DEFAULTS, **self._pivot}, prefix=self.prefix)

    def step(self) -> int:
        """Advance z by one step; return the number of Newton iterations."""
        z, zo, zp = self.z.x.array, self.z_old.x.array, self.z_prev.x.array
        zp[:] = zo if self.steps else z
        zo[:] = z
        z[:] = 2 * zo - zp                       # linear extrapolation as Newton's first guess
        with self._options():
            if self.problem.linear:   # its Jacobian kept (see _jacobian): factorised once here
                options.factorise(self.snes.getKSP(), self.A, self.A)
            self.snes.solve(None, self.z.x.petsc_vec)
        self.z.x.scatter_forward()
        reason = self.snes.getConvergedReason()
        its = self.snes.getIterationNumber()
        if reason <= 0 or not np.isfinite(self.z.x.array).all():
            raise SolverError(f"NLS midpoint step {self.steps + 1}: Newton did not converge "
                              f"(SNES reason {reason} after {its} iterations); reduce the time "
                              f"step or relax the tolerances")
        self.residuals.record()
        self.steps += 1
        self.newton_iterations += its
        return its

    def destroy(self):
        self.snes.destroy()
        self.A.destroy()
        self.b.destroy()


MASS_RTOL = 1e-14        # relative residual of the distributed mass-matrix solves (CG)


def mass_solver(M: PETSc.Mat, prefix: str) -> PETSc.KSP:
    """The solver of the mass matrix M of an explicit stepper (four solves per RK4 step), with
    options prefix ``prefix`` (user options override): on one rank its Cholesky factors
    (:func:`~.linear.make_ksp`), on more CG with Jacobi to MASS_RTOL — D⁻¹M has a condition
    number independent of h, so a few dozen iterations, no redundant or distributed
    factorisation, parallel without a serial part (2D disk, 105k dofs × 100 steps, 400
    solves: 2 ranks 18.4 s with the redundant Cholesky, 11.8 s with CG, 1 rank 19.4 s; the
    same states to 1e-15)."""
    comm = M.getComm()
    if comm.getSize() == 1:
        return make_ksp(M, prefix, symmetric=True)
    ksp = options.make_ksp(comm, prefix, M, ksp_type="cg", pc_type="jacobi",
                           rtol=MASS_RTOL, atol=0.0, max_it=1000)
    ksp.setUp()
    return ksp


class RK4Stepper:
    """Classical RK4 on ħ M ż = F(z): kᵢ = M⁻¹F(zᵢ)/ħ, zⁿ⁺¹ = zⁿ + τ(k₁ + 2k₂ + 2k₃ + k₄)/6."""

    def __init__(self, problem: NLSProblem, z, tau: float, prefix: str = "nls_rk4_"):
        P = self.problem = problem
        self.z, self.tau = z, float(tau)
        self.stage = dolfinx.fem.Function(P.W)
        w = ufl.TestFunction(P.W)
        self.F = dolfinx.fem.form(forms.schrodinger_rhs(self.stage, w, P.hbar, P.V,
                                                        P.g_value(self.stage), P.dxp))
        self.M = dolfinx.fem.petsc.assemble_matrix(
            dolfinx.fem.form(forms.mass_form(ufl.TrialFunction(P.W), w)))
        self.M.assemble()
        self.b = dolfinx.fem.petsc.create_vector(self.F)
        self.k = self.b.duplicate()
        self.ksp = mass_solver(self.M, prefix)
        self.residuals = None                   # explicit: no equation to solve per step
        self.steps = 0
        self.newton_iterations = 0

    def _f(self, y):
        """M⁻¹F(y)/ħ for owned values ``y``."""
        self.stage.x.petsc_vec.array_w[:] = y
        self.stage.x.scatter_forward()
        with self.b.localForm() as bl:
            bl.set(0.0)
        dolfinx.fem.petsc.assemble_vector(self.b, self.F)
        self.b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        self.ksp.solve(self.b, self.k)
        reason = self.ksp.getConvergedReason()
        if reason == PETSc.KSP.ConvergedReason.DIVERGED_NANORINF:
            # the stage was already inf/NaN: on 2+ ranks the mass matrix's CG saw it first and
            # the run said "the mass-matrix solve failed (KSP reason -9)" where one rank said
            # what to do
            raise self._blew_up()
        if reason < 0:
            raise SolverError(f"NLS RK4 step {self.steps + 1}: the mass-matrix solve failed "
                              f"(KSP reason {reason})")
        return self.k.array_r / self.problem.hbar_value

    def _blew_up(self) -> SolverError:
        return SolverError(f"NLS RK4 step {self.steps + 1}: the solution blew up (explicit "
                           f"RK4 needs τ ≲ 2.8/λ_max(ħM⁻¹K/2): reduce the time step)")

    def step(self) -> int:
        tau, y = self.tau, self.z.x.petsc_vec.array_r.copy()
        k1 = self._f(y)
        k2 = self._f(y + tau / 2 * k1)
        k3 = self._f(y + tau / 2 * k2)
        k4 = self._f(y + tau * k3)
        self.z.x.petsc_vec.array_w[:] = y + tau / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        self.z.x.scatter_forward()
        finite = bool(np.isfinite(self.z.x.array).all())
        if not self.z.function_space.mesh.comm.allreduce(finite, op=MPI.LAND):
            raise self._blew_up()
        self.steps += 1
        return 0

    def destroy(self):
        self.ksp.destroy()
        self.M.destroy()
        self.b.destroy()
        self.k.destroy()


class ComposedStepper:
    """Symmetric composition of midpoint steps, Ψ_τ = Φ_{γ_s τ} ∘ … ∘ Φ_{γ_1 τ} (MODEL §6).

    With the triple-jump or Suzuki coefficients of :mod:`fem_mfc.integrators.composition`
    the midpoint rule (order 2, symplectic, symmetric) becomes an order-4 symplectic scheme;
    every sub-step conserves mass (and, with the averaged nonlinearity, energy) like midpoint.
    """

    def __init__(self, problem: NLSProblem, z, tau: float, gammas, **kw):
        self.base = MidpointStepper(problem, z, tau, **kw)
        self.z, self.gammas, self.tau = z, [float(g) for g in gammas], float(tau)
        self.steps = 0

    @property
    def newton_iterations(self) -> int:
        return self.base.newton_iterations

    @property
    def residuals(self) -> StepResiduals:
        return self.base.residuals

    def step(self) -> int:
        its = 0
        for g in self.gammas:
            self.base.tau.value = g * self.tau
            self.base.steps = 0          # sub-steps differ in length: no extrapolated guess
            its += self.base.step()
        self.steps += 1
        return its

    def destroy(self):
        self.base.destroy()


def make_stepper(integrator: str, problem: NLSProblem, z, tau: float, **kw):
    """A stepper by name: ``midpoint``, ``triple-jump`` / ``suzuki`` (order-4 compositions of
    midpoint) or ``rk4`` (explicit contrast)."""
    from ..integrators.composition import suzuki_coefficients, triple_jump_coefficients
    if integrator == "midpoint":
        return MidpointStepper(problem, z, tau, **kw)
    if integrator == "triple-jump":
        return ComposedStepper(problem, z, tau, triple_jump_coefficients(2), **kw)
    if integrator == "suzuki":
        return ComposedStepper(problem, z, tau, suzuki_coefficients(2), **kw)
    if integrator == "rk4":
        return RK4Stepper(problem, z, tau)
    raise ValueError(f"unknown integrator {integrator!r}")


def ground_state(problem: NLSProblem, mass: float = 1.0, tau: float = 0.5, tol: float = 1e-10,
                 max_steps: int = 5000, phi0=None, prefix: str = "nls_gs_"):
    """Ground state by the normalised gradient flow in imaginary time (semi-implicit BE).

    Starts from ``phi0`` (UFL expression; default a unit Gaussian), iterates
    (φ*, v) + (τ/ħ)a(φ*, v; g(φⁿ²)) = (φⁿ, v), φⁿ⁺¹ = φ*·(mass/∫φ*²)^{1/2} until
    max|φⁿ⁺¹ − φⁿ| < tol·max|φⁿ⁺¹|.  Returns (z = (φ, 0) in ``problem.W``, μ, steps) with the
    chemical potential μ = a(φ, φ; g(φ²))/mass.
    """
    P = problem
    Vs, _ = P.W.sub(0).collapse()
    comm = P.mesh.comm
    phi, phi_old = dolfinx.fem.Function(Vs), dolfinx.fem.Function(Vs)
    x = ufl.SpatialCoordinate(P.mesh)
    phi.interpolate(dolfinx.fem.Expression(phi0 if phi0 is not None
                                           else ufl.exp(-ufl.inner(x, x) / 2),
                                           Vs.element.interpolation_points()))
    m_form = dolfinx.fem.form(phi * phi * ufl.dx)

    def total(form):
        return comm.allreduce(dolfinx.fem.assemble_scalar(form), op=MPI.SUM)

    def gmax(a):
        n = Vs.dofmap.index_map.size_local
        return comm.allreduce(float(np.abs(a[:n]).max()) if n else 0.0, op=MPI.MAX)

    phi.x.array[:] *= np.sqrt(mass / total(m_form))
    phi_old.x.array[:] = phi.x.array
    u, v = ufl.TrialFunction(Vs), ufl.TestFunction(Vs)
    g_old = P.g_value(ufl.as_vector([phi_old, 0.0 * phi_old]))
    a, L = forms.imaginary_time_step(u, v, phi_old, tau, P.hbar, P.V, g_old, P.dxp)
    a, L = dolfinx.fem.form(a), dolfinx.fem.form(L)
    A = dolfinx.fem.petsc.assemble_matrix(a)
    A.assemble()
    b = dolfinx.fem.petsc.create_vector(L)
    # refactorised at every step when nonlinear (one solve per factorisation: MUMPS on 2–4
    # ranks in 2D and 3D, :func:`~.steps.redundant`), factorised once when linear
    ksp = step_solver(A, prefix, "lu", dim=P.mesh.topology.dim,
                      solves=max_steps if P.linear else 1)
    steps, change = 0, np.inf
    while steps < max_steps and change >= tol:
        if not P.linear and steps:
            A.zeroEntries()
            dolfinx.fem.petsc.assemble_matrix(A, a)
            A.assemble()
            options.factorise(ksp)       # MUMPS: with more workspace where it asks for it
        with b.localForm() as bl:
            bl.set(0.0)
        dolfinx.fem.petsc.assemble_vector(b, L)
        b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        ksp.solve(b, phi.x.petsc_vec)
        phi.x.scatter_forward()
        phi.x.array[:] *= np.sqrt(mass / total(m_form))
        change = gmax(phi.x.array - phi_old.x.array) / gmax(phi.x.array)
        phi_old.x.array[:] = phi.x.array
        steps += 1
        if not np.isfinite(change):        # NaN >= tol is False: it ended the loop as converged
            break
    ksp.destroy()
    A.destroy()
    b.destroy()
    if not np.isfinite(change):
        raise SolverError(f"ground state: the imaginary-time flow broke down at step {steps} "
                          "(the state became NaN/inf)")
    if change >= tol:
        raise SolverError(f"ground state: imaginary-time flow not converged after {max_steps} "
                          f"steps (relative change {change:.2e} > {tol:.1e})")
    mu = total(dolfinx.fem.form(forms.hamiltonian_action(
        phi, phi, P.hbar, P.V, P.g_value(ufl.as_vector([phi, 0.0 * phi])), P.dxp))) / mass
    z = P.function()
    q_dofs = P.W.sub(0).collapse()[1]
    z.x.array[:] = 0.0
    z.x.array[q_dofs] = phi.x.array
    z.x.scatter_forward()
    return z, mu, steps
