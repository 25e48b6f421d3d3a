"""Cole–Hopf linear path for congestion-free problems (MODEL §4, forms/cole_hopf.py).

  backward:  (M + θτA) χⁿ = (M − (1−θ)τA) χ^{n+1},  χ^N = exp(−Φ/2ε)
  forward:   (M + θτA) Γ^{n+1} = (M − (1−θ)τA) Γⁿ,   Γ⁰ = ρ_0/χ⁰,   ρⁿ = χⁿΓⁿ (at the dofs)
  u = −2ε log χ.
One per-step solver (:func:`fem_mfc.solvers.steps.step_solver`, operators set once) serves
every step of both sweeps; ``-mfc_ch_pc_type`` / ``-mfc_ch_pc_factor_mat_solver_type``
override.  The sweeps run on PETSc Vecs that are views of rows of one (N+1) × n_local array,
so a step is one mat-vec, one solve and one global max, with no per-step allocation.
Log-scaling: χⁿ = exp(sₙ) χ̃ⁿ and Γⁿ = exp(rₙ − sₙ) Γ̂ⁿ with max|χ̃ⁿ| = max|Γ̂ⁿ| = 1, so
ρⁿ = χ̃ⁿΓ̂ⁿ e^{rₙ} and uⁿ = −2ε(log χ̃ⁿ + sₙ): the global level of exp(−u/2ε) never under- or
overflows for small σ (ρ is formed in logs only at the steps where e^{rₙ} would overflow).
A per-step scalar cannot represent a *spatial* range of χ beyond ~e^{±700}, and where χ is tiny
its FEM error (relative to max χ) is amplified by Γ = ρ/χ: keep osc(Φ + τV)/2ε moderate
(≲ 30) or use Newton.
"""
from __future__ import annotations

import math
import time

from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import dolfinx.fem.petsc
import numpy as np

from ..errors import ConfigError, SolverError
from ..forms import cole_hopf
from .linear import StepResidual
from .result import Result
from .steps import step_kind, step_solver

TINY = 1e-300
CH_STEP_RTOL = 1e-14
EXP_MAX = 700.0          # e^{r} is finite and accurate for r < EXP_MAX


def _gmax(comm, a):
    return comm.allreduce(float(np.abs(a).max()) if a.size else 0.0, op=MPI.MAX)


def _check(ksp, what):
    if ksp.getConvergedReason() < 0:
        raise SolverError(f"{what}: linear solve failed (KSP reason {ksp.getConvergedReason()})")


class _Sweeper:
    """x_{next} = (M + θτA)⁻¹ (M − (1−θ)τA) x on rows of a stored (N+1) × n_local array."""

    def __init__(self, A, B, prefix, N, nl, dim, periodic=None):
        self.A, self.B, self.comm = A, B, A.getComm().tompi4py()
        self.periodic = periodic           # PeriodicMap: A, B are R·Rᵀ-transformed
        self.kind = step_kind(A, prefix, dim, solves=2 * N)
        # the sweeps carry exp(−u/2ε) over many orders of magnitude: iterative per-step
        # solves to near round-off (a looser tolerance shows in ρ = χΓ where χ is small)
        # M + θτ(εK + V M) (and R·Rᵀ + I_s with periodic sides) is symmetric positive
        # definite: Cholesky where it is factorised
        self.ksp = step_solver(A, prefix, self.kind, rtol=CH_STEP_RTOL, dim=dim,
                               symmetric=True, solves=2 * N)
        self.rhs = A.createVecLeft()
        self.residual = StepResidual(A, self.ksp)    # of the steps' linear solves
        self.store = np.zeros((N + 1, nl))
        self.views = [self._wrap(row) for row in self.store]

    def _wrap(self, row):
        return PETSc.Vec().createWithArray(row, size=(row.size, PETSc.DETERMINE),
                                           comm=self.A.getComm())

    def step(self, src: int, dst: int, what: str) -> float:
        """store[dst] = step(store[src]), scaled to max 1; returns the log of the scale."""
        self.B.mult(self.views[src], self.rhs)
        self.ksp.solve(self.rhs, self.views[dst])
        _check(self.ksp, "Cole–Hopf")
        self.residual.after(self.rhs, self.views[dst])
        y = self.store[dst]
        if self.periodic is not None:      # z (slaves 0) → the periodic field Rᵀz
            self.periodic.extend(y)
        m = _gmax(self.comm, y)
        if not (np.isfinite(m) and m > 0):
            raise SolverError(f"Cole–Hopf: {what} sweep broke down at step {dst} (max = {m})")
        y *= 1.0 / m
        return math.log(m)

    def destroy(self):
        for v in self.views:
            v.destroy()
        for o in (self.rhs, self.residual, self.ksp):
            o.destroy()


def cole_hopf_solve(problem, prefix="mfc_ch_") -> Result:
    """Solve a congestion-free problem by one backward and one forward linear sweep.

    ``Result.seconds`` counts assembly, factorisation, sweeps and the output fields, not the
    set-up of the HJB–FP functionals (SpaceTime) nor the diagnostics J, mass."""
    from .spacetime import SpaceTime
    st = SpaceTime(problem)               # the output fields and the HJB–FP functionals
    t0 = time.perf_counter()
    residual = cole_hopf_fields(problem, st.rho, st.u, prefix)
    st.check_finite("Cole–Hopf")
    seconds = time.perf_counter() - t0
    return Result.from_system(st, method="cole-hopf", iterations=0, history=[], seconds=seconds,
                              residual=residual)


def hamiltonian_refusal(what: str) -> ConfigError:
    """The one-line error of a path that needs the quadratic Hamiltonian (Cole–Hopf, QHD,
    NLS, the monotone scheme)."""
    return ConfigError("problem.H", f"'quadratic' for {what} (it needs H = |p|^2/2; use "
                       "formulation 'hjb-fp' with solver.method 'newton' or 'picard')",
                       "non-quadratic H")


def cole_hopf_obstacles(problem) -> dict:
    """What keeps the linear Cole–Hopf path from solving ``problem`` exactly: {name: the
    config error it raises}; empty when it applies (no congestion, σ > 0, no sources)."""
    p, out = problem, {}
    if p.G is not None:
        out["congestion"] = ConfigError("solver.method", "'newton' or 'picard' when problem.G "
                                        "≠ 0 (Cole–Hopf needs a congestion-free problem)",
                                        "cole-hopf")
    if p.eps <= 0:
        out["noise"] = ConfigError("problem.sigma", "a positive noise for the Cole–Hopf "
                                   "transform", p.sigma)
    if getattr(p, "robins", None):
        out["robin"] = ConfigError("solver.method", "'newton' or 'picard' for a problem with "
                                   "leaky walls ([[boundary]] kind = 'robin')", "cole-hopf")
    if getattr(p, "exits", None):
        out["exits"] = ConfigError("solver.method", "'newton' for a problem with exits "
                                   "([[boundary]] kind = 'exit')", "cole-hopf")
    if getattr(p, "hamiltonian", None) is not None:
        out["hamiltonian"] = hamiltonian_refusal("solver.method = 'cole-hopf'")
    if getattr(p.exact, "sources", None) is not None:
        out["sources"] = ConfigError("solver.method", "'newton' or 'picard' for problems with "
                                     "source terms (boundary data of an exact solution)",
                                     "cole-hopf")
    return out


def cole_hopf_fields(problem, rho: list, u: list, prefix="mfc_ch_"):
    """The sweeps of :func:`cole_hopf_solve`: ρ¹..ρᴺ into ``rho[1:]`` and u⁰..u^{N−1} into
    ``u`` (Functions on a space with the dof layout of ``problem.space``).  Returns the largest
    relative residual ‖b − Ax‖/‖b‖ of the steps' linear solves."""
    p = problem
    for err in cole_hopf_obstacles(p).values():
        raise err
    V, comm, N, eps = p.space, p.mesh.comm, p.steps, p.eps
    nl = V.dofmap.index_map.size_local * V.dofmap.index_map_bs
    # The gauge: the sweeps see V − c, c = (min V + max V)/2 at the nodes, and u gets
    # c·(T − t) back, the shift the exact solution and the HJB–FP scheme have.  The θ-steps
    # of χ are not exact for a constant potential, so without it the answer depended on V's
    # constant: V + 1 moved J by 1.0061 instead of T = 1 and 'auto' switched method between
    # V and V + 1.  (c = min V, a potential ≥ 0, made the σ = 0.1 sweeps of
    # test_cole_hopf_small_noise_log_scaling overflow; the midrange keeps |V − c| smallest.)
    c = p.potential_gauge()
    a_form, b_form = cole_hopf.step_matrices(V, p.tau, eps, p.V - c if c else p.V, p.theta)
    A = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(a_form))
    A.assemble()
    B = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(b_form))
    B.assemble()
    pm = p.periodic_map() if getattr(p, "periodic", None) else None
    if pm is not None:     # periodic sides (solvers/periodic.py): R A Rᵀ + I_s, R B Rᵀ
        A, B = pm.constrained(A, True), pm.constrained(B, False)
    sw = _Sweeper(A, B, prefix, N, nl, p.mesh.topology.dim, pm)
    chi = sw.store

    # backward sweep for χ̃ⁿ, sₙ (n = N … 0)
    phi = dolfinx.fem.Function(V)
    phi.interpolate(dolfinx.fem.Expression(p.Phi, V.element.interpolation_points()))
    if pm is not None:
        pm.periodise(phi)
    ph = phi.x.array[:nl]
    phi_min = comm.allreduce(float(ph.min()) if nl else np.inf, op=MPI.MIN)
    s = np.zeros(N + 1)
    chi[N] = np.exp(-(ph - phi_min) / (2 * eps))
    s[N] = -phi_min / (2 * eps)
    for n in range(N - 1, -1, -1):
        s[n] = s[n + 1] + sw.step(n + 1, n, "backward")
    # log χ̃ⁿ for u, before the forward sweep reuses the store for Γ̂
    logchi = np.log(np.maximum(chi, TINY))
    # forward sweep for Γ̂ⁿ with ρⁿ = χ̃ⁿ Γ̂ⁿ e^{rₙ}  (Γⁿ = exp(rₙ − sₙ) Γ̂ⁿ, max|Γ̂ⁿ| = 1)
    gam = sw.store
    gam[0] = p.rho0.x.array[:nl] / np.maximum(np.exp(logchi[0]), TINY)
    m = _gmax(comm, gam[0])
    gam[0] *= 1.0 / m
    r = math.log(m)
    for n in range(N):
        r += sw.step(n, n + 1, "forward") + s[n + 1] - s[n]
        out = rho[n + 1].x.array[:nl]
        prod = np.exp(logchi[n + 1]) * gam[n + 1]
        if r < EXP_MAX:
            np.multiply(prod, math.exp(r), out=out)
        else:                              # e^{r} overflows: form ρ in logs
            with np.errstate(divide="ignore"):
                out[:] = np.sign(prod) * np.exp(np.log(np.abs(prod)) + r)
    residual = sw.residual.value
    sw.destroy()
    # u at the times of the HJB–FP scheme's u: t_n (θ = 1), t_{n+½} (θ = ½, mean of the logs)
    logchi += s[:, None]                   # = −u/2ε
    for n, f in enumerate(u):
        lc = logchi[n] if p.theta == 1.0 else 0.5 * (logchi[n] + logchi[n + 1])
        np.multiply(lc, -2 * eps, out=f.x.array[:nl])
        if c:
            f.x.array[:nl] += c * (p.T - p.u_time(n))
    for f in list(rho[1:]) + list(u):
        f.x.scatter_forward()
    return residual
