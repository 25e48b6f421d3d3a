"""Solvers of the QHD system (forms/qhd.py, MODEL §3).

* :func:`solve_control` — the control signature, a two-point problem in time, solved
  all-at-once by the SNES Newton of :mod:`fem_mfc.solvers.newton` on the space-time system of
  :mod:`fem_mfc.solvers.spacetime` with the QHD description :func:`qhd_control` (unknowns
  S⁰, ρ¹, S¹, …, S^{N−1}, ρ^N in the HJB–FP layout, S in the u-slots).
* :func:`solve_quantum` — the quantum signature, an initial-value problem stepped in time;
  every discrete-gradient step is a SNES Newton solve for (ρ^{n+1}, S^{n+1}).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from mpi4py import MPI
from petsc4py import PETSc

import basix.ufl
import dolfinx
import dolfinx.fem.petsc
import numpy as np
import ufl

from .. import options
from ..compat import create_vector, nonlinear_residual_jacobian
from ..errors import ConfigError, SolverError
from ..forms import qhd as forms
from ..problem import interpolate
from .linear import StepResiduals
from .newton import REASONS, newton
from .spacetime import HJB_DIAGNOSTICS, Formulation, ForwardSplit, SpaceTime, before_last

# the HJB–FP diagnostics plus the Hamiltonian and the Fisher term at (ρ^k, S^k), k < N
QHD_DIAGNOSTICS = {**HJB_DIAGNOSTICS, "energy": ("list", (("energy", before_last),)),
                   "fisher": ("list", (("fisher", before_last),))}


# -- control signature --------------------------------------------------------------------------
def check_positive(rho, what: str = "rho0"):
    """Vacuum is an error for QHD: ConfigError if ρ ≤ 0 at some dof."""
    V = rho.function_space
    a = rho.x.array[: V.dofmap.index_map.size_local]
    lo = V.mesh.comm.allreduce(float(a.min()) if a.size else math.inf, op=MPI.MIN)
    if not lo > 0:
        raise ConfigError(what, "a strictly positive density for the QHD form (vacuum rho <= 0 "
                          "makes log rho and the quantum potential undefined)",
                          f"min {lo:.3g}")
    return lo


def qhd_control(problem, quadrature_degree=None) -> Formulation:
    """The discrete action's optimality system (forms/qhd.py, control) as a space-time
    description; initial guess ρⁿ = ρ_0, Sⁿ = −Φ − ε log ρ_0 (the terminal condition frozen
    at ρ_0).  ConfigError on vacuum in ρ_0."""
    check_positive(problem.rho0)
    d = forms.QHDData.control(problem, quadrature_degree)
    S_guess = interpolate(-problem.Phi - problem.eps * ufl.ln(problem.rho0) if problem.eps > 0
                          else -problem.Phi, problem.space)
    theta = problem.theta
    return Formulation(build=lambda tm, tp, tc: forms.level_forms(tm, tp, tc, d),
                       functionals=lambda tm, tc: forms.level_functionals(tm, tc, d),
                       data={"rho": problem.rho0, "u": None},
                       guess={"rho": problem.rho0, "u": S_guess},
                       diagnostics=QHD_DIAGNOSTICS, names=("rho", "S"),
                       mirrored=True, sweep=False,
                       forward_split=(ForwardSplit("u", forms.RHO_CUR, forms.RHO_NEXT,
                                                   (1.0 - theta) / theta)
                                      if 0.0 < theta < 1.0 else None))


class QHDControlSystem(SpaceTime):
    """The space-time system of :func:`qhd_control`, with S-named views of its unknowns.

    ``diagnostics()``: J (direct, a = ∇S + ε∇ρ/ρ), J_value (∫u(0)ρ_0 + Σ∫∫(G − ρc) with
    u(0) = −S⁰ − ε log ρ_0), masses, Hamiltonian and Fisher term per level, min ρ."""

    describe = staticmethod(qhd_control)

    @property
    def S(self):
        return self.u

    def set_from_hjb_fp(self, rho, u):
        """States ← the QHD image of an HJB–FP solution: ρⁿ, Sⁿ = −uⁿ − ε log ρⁿ (MODEL §3)."""
        p = self.problem
        pts = self.V.element.interpolation_points()
        for k in range(1, self.N + 1):
            self.rho[k].x.array[:] = rho[k].x.array
        for k in range(self.N):
            expr = -u[k] - (p.eps * ufl.ln(rho[k]) if p.eps > 0 else 0.0)
            self.S[k].interpolate(dolfinx.fem.Expression(expr, pts))

    def residual_norms(self) -> dict:
        """Consistency of the current states: max over levels of ‖F_row‖_{H⁻¹}/τ, the discrete
        dual norm (F^T (K + M)^{-1} F)^{1/2} of the continuity ("u") and Bernoulli ("rho")
        residual rows, K, M stiffness and mass matrices."""
        F = self.create_vec()
        self.residual(None, F)
        V = self.V
        w, v = ufl.TrialFunction(V), ufl.TestFunction(V)
        K = dolfinx.fem.petsc.assemble_matrix(
            dolfinx.fem.form((ufl.inner(ufl.grad(w), ufl.grad(v)) + w * v) * ufl.dx))
        K.assemble()
        ksp = options.make_ksp(self.comm, "qhd_residual_", K)      # MUMPS' LU
        options.factorise(ksp)                   # (more workspace if MUMPS asks for it)
        b, y = K.createVecs()
        a, nl = F.getArray(readonly=True), self.nl
        out = {"continuity": 0.0, "bernoulli": 0.0}
        for f in range(self.nfields):
            b.getArray()[:] = a[f * nl:(f + 1) * nl]
            ksp.solve(b, y)
            if ksp.getConvergedReason() < 0:
                raise SolverError("QHD residual norms: the LU solve with K + M failed (KSP "
                                  f"reason {ksp.getConvergedReason()})")
            key = "continuity" if f % 2 == 0 else "bernoulli"
            out[key] = max(out[key], math.sqrt(max(b.dot(y), 0.0)) / self.problem.tau)
        for o in (ksp, K, b, y, F):
            o.destroy()
        return out


def solve_control(problem, rtol=1e-10, atol=1e-12, max_it=50, petsc_options=None,
                  prefix="qhd_", system: QHDControlSystem | None = None, checkpoint=None,
                  resume: dict | None = None, log=None, strict: bool = True):
    """All-at-once SNES Newton for the control QHD system; returns (Result, system).
    ``checkpoint``/``resume``/``log``: checkpoints, restarts and the log of the Newton steps
    as in :func:`~.newton.newton`; ``strict=False``: a solve that does not meet its tolerance
    is returned flagged (``converged`` False, its best iterate), not raised.

    ``Result.u`` holds S⁰..S^{N−1} (Sⁿ pairs with ρ̄ⁿ of step n → n+1)."""
    st = system or QHDControlSystem(problem)
    res = newton(problem, rtol=rtol, atol=atol, max_it=max_it, prefix=prefix,
                 petsc_options=petsc_options, system=st, checkpoint=checkpoint,
                 resume=resume, log=log)
    if strict:
        res.check()
    res.method = "qhd-newton"
    if res.min_rho <= 0:
        raise SolverError(f"QHD control solve: the density lost positivity (min rho "
                          f"{res.min_rho:.3g}); refine the mesh or increase sigma")
    return res, st


# -- quantum signature -----------------------------------------------------------------------
@dataclass
class QuantumResult:
    """Time history of the quantum QHD run."""

    times: list
    mass: list
    energy: list
    fisher: list
    iterations: list
    residuals: list
    min_rho: list
    z: object
    seconds: float = 0.0

    def drift(self, key: str) -> float:
        v = np.asarray(getattr(self, key))
        return float(np.max(np.abs(v - v[0])))


class QuantumStepper:
    """Discrete-gradient steps of the quantum QHD system on P_k × P_k (forms/qhd.py)."""

    def __init__(self, mesh, degree: int, hbar: float, tau: float, V, G=None,
                 coupling="mftc", prefix="qhdq_", rtol=1e-12, atol=1e-13, max_it=30,
                 petsc_options=None):
        if not hbar > 0:
            raise ConfigError("qhd.hbar", "a positive number", hbar)
        el = basix.ufl.element("Lagrange", mesh.basix_cell(), degree)
        self.W = dolfinx.fem.functionspace(mesh, basix.ufl.mixed_element([el, el]))
        self.scalar_space = self.W.sub(0).collapse()[0]
        self.d = forms.QHDData.quantum(mesh, tau, hbar, V, G, coupling, 4 * degree + 2)
        self.z = dolfinx.fem.Function(self.W, name="z")
        self.z_old = dolfinx.fem.Function(self.W)
        w = ufl.TestFunction(self.W)
        F = forms.quantum_step_residual(self.z_old, self.z, w, self.d)
        self.problem = nonlinear_residual_jacobian(F, self.z)
        self.comm = mesh.comm
        V0, dofs = self.W.sub(0).collapse()
        self._rho_dofs = np.asarray(dofs[: V0.dofmap.index_map.size_local])
        self.funcs = {k: dolfinx.fem.form(f)
                      for k, f in forms.quantum_functionals(self.z, self.d).items()}
        self._snes(prefix, rtol, atol, max_it, petsc_options or {})

    def _snes(self, prefix, rtol, atol, max_it, settings):
        self.b = create_vector(self.problem.L)
        self.A = dolfinx.fem.petsc.create_matrix(self.problem.a)
        snes = options.make_snes(self.comm, prefix, rtol, atol, max_it)
        snes.setFunction(self._residual, self.b)
        snes.setJacobian(self._jacobian, self.A)
        snes.getKSP().setType("preonly")
        snes.getKSP().getPC().setType("lu")
        snes.getKSP().getPC().setFactorSolverType("mumps")
        self._settings, self._prefix = settings, prefix
        with options.inserted(settings=settings, prefix=prefix):
            snes.setFromOptions()
        self.snes = snes
        self.residuals = StepResiduals(snes)
        self.factorisation_retries = []     # the factorisations repeated with more workspace

    def _update(self, x):
        x.copy(self.z.x.petsc_vec)
        self.z.x.scatter_forward()

    def _residual(self, snes, x, b):
        self._update(x)
        self.problem.F(x, b)

    def _jacobian(self, snes, x, A, P):
        self._update(x)
        self.problem.J(x, A)
        # factorised here, by MUMPS with more workspace where a work array proved too small
        # (an intermittent INFOG(1) = -9 on 2 ranks ended the step); the KSP finds it current
        options.factorise(snes.getKSP(), A, P, retries=self.factorisation_retries)

    def set_initial(self, rho0, S0):
        """z⁰ = (ρ_0, S_0) (UFL expressions in x or Functions); ConfigError on vacuum."""
        for i, f in enumerate((rho0, S0)):
            self.z.sub(i).interpolate(interpolate(f, self.scalar_space))
        self.z.x.scatter_forward()
        check_positive(self.rho(), "rho0")

    def rho(self, name="rho"):
        f = self.z.sub(0).collapse()
        f.name = name
        return f

    def S(self, name="S"):
        f = self.z.sub(1).collapse()
        f.name = name
        return f

    def value(self, key: str) -> float:
        return self.comm.allreduce(dolfinx.fem.assemble_scalar(self.funcs[key]), op=MPI.SUM)

    def step(self, n: int = 0) -> tuple[int, float]:
        """zⁿ → z^{n+1}; returns (Newton iterations, final residual norm).  Errors name the
        step to t_{n+1} "step n + 1", as the NLS steppers count."""
        self.z_old.x.array[:] = self.z.x.array
        x = self.z.x.petsc_vec.copy()
        try:
            with options.inserted(settings=self._settings, prefix=self._prefix):
                self.snes.solve(None, x)
        except PETSc.Error as e:
            raise SolverError(f"QHD quantum step {n + 1}: PETSc error {e.ierr}") from None
        self._update(x)
        x.destroy()
        reason = self.snes.getConvergedReason()
        fnorm = self.snes.getFunctionNorm()
        if reason < 0 or not np.isfinite(self.z.x.array).all():
            raise SolverError(f"QHD quantum step {n + 1}: Newton did not converge "
                              f"({REASONS.get(reason, reason)}, residual {fnorm:.3e}); "
                              "reduce tau or check for vacuum")
        self.residuals.record()
        return self.snes.getIterationNumber(), fnorm


HISTORY = ("times", "mass", "energy", "fisher", "iterations", "residuals", "min_rho")


def solve_quantum(stepper: QuantumStepper, T: float, steps: int, callback=None,
                  history: dict | None = None) -> QuantumResult:
    """Step from the state in ``stepper`` to t = T in ``steps`` steps, recording invariants.
    ``callback(n, t, result)`` is called after every step (and at n = 0) with the result so
    far.  ``history``: the lists
    (``HISTORY``) of a run restarted after ``len(history["iterations"])`` steps from the
    state in ``stepper``."""
    t0 = time.perf_counter()
    tau = T / steps
    if history is not None:
        out = QuantumResult(**{k: list(history[k]) for k in HISTORY}, z=stepper.z)
    else:
        out = QuantumResult(times=[0.0], mass=[stepper.value("mass")],
                            energy=[stepper.value("energy")],
                            fisher=[stepper.value("fisher")], iterations=[], residuals=[],
                            min_rho=[_min(stepper)], z=stepper.z)
        if callback:
            callback(0, 0.0, out)
    for n in range(len(out.iterations), steps):
        its, fnorm = stepper.step(n)
        out.iterations.append(its)
        out.residuals.append(fnorm)
        out.times.append((n + 1) * tau)
        out.mass.append(stepper.value("mass"))
        out.energy.append(stepper.value("energy"))
        out.fisher.append(stepper.value("fisher"))
        out.min_rho.append(_min(stepper))
        if out.min_rho[-1] <= 0:
            raise SolverError(f"QHD quantum step {n + 1}: vacuum formed (min rho "
                              f"{out.min_rho[-1]:.3g}); the Madelung form breaks down, use "
                              "formulation = 'nls'")
        if callback:
            callback(n + 1, (n + 1) * tau, out)
    out.seconds = time.perf_counter() - t0
    return out


def _min(stepper) -> float:
    a = stepper.z.x.array[stepper._rho_dofs]
    return stepper.comm.allreduce(float(a.min()) if a.size else math.inf, op=MPI.MIN)


def bohm_potential(rho, kappa_Q: float, out=None):
    """Q = κ_Q Δ√ρ/√ρ as a field: the mixed form ∫Q R q = −κ_Q∫∇R·∇q (R = √ρ) solved in ρ's
    space (needs ρ > 0).  Returns ``out`` (a new Function named "Q" if None)."""
    from .linear import LinearStepper
    V = rho.function_space
    out = out or dolfinx.fem.Function(V, name="Q")
    a, L = forms.bohm_potential_forms(rho, ufl.TrialFunction(V), ufl.TestFunction(V),
                                      float(kappa_Q))
    stepper = LinearStepper(a, L, "qhd_bohm_")
    stepper.step(out, "Bohm potential")
    stepper.destroy()
    return out
