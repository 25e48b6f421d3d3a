"""Cole–Hopf linear path for congestion-free problems (MODEL §4, forms/cole_hopf.py).

  backward:  (M + θτA) χⁿ = (M − (1−θ)τA) χ^{n+1},  χ^N = exp(−Φ/2ε)
  forward:   (M + θτA) Γ^{n+1} = (M − (1−θ)τA) Γⁿ,   Γ⁰ = ρ_0/χ⁰,   ρⁿ = χⁿΓⁿ (at the dofs)
  u = −2ε log χ.
One LU factorisation (KSP preonly + LU, operators set once) serves every step of both sweeps.
Log-scaling: χⁿ = exp(sₙ) χ̃ⁿ and Γⁿ = exp(rₙ − sₙ) Γ̂ⁿ with max|χ̃ⁿ| = max|Γ̂ⁿ| = 1, so
ρⁿ = χ̃ⁿΓ̂ⁿ e^{rₙ} and uⁿ = −2ε(log χ̃ⁿ + sₙ): the global level of exp(−u/2ε) never under- or
overflows for small σ.  A per-step scalar cannot represent a *spatial* range of χ beyond
~e^{±700}, and where χ is tiny its FEM error (relative to max χ) is amplified by
Γ = ρ/χ: keep osc(Φ + τV)/2ε moderate (≲ 30) or use Newton.
"""
from __future__ import annotations

import math
import time

import dolfinx
import dolfinx.fem.petsc
import numpy as np
from mpi4py import MPI
from petsc4py import PETSc

from ..errors import ConfigError, SolverError
from ..forms import cole_hopf
from .result import Result

TINY = 1e-300


def _gmax(comm, a):
    return comm.allreduce(float(np.abs(a).max()) if a.size else 0.0, op=MPI.MAX)


def cole_hopf_solve(problem, prefix="mfc_ch_") -> Result:
    """Solve a congestion-free problem by one backward and one forward linear sweep."""
    t0 = time.perf_counter()
    p = problem
    if p.G is not None:
        raise ConfigError("solver.method", "'newton' or 'picard' when problem.G ≠ 0 "
                          "(Cole–Hopf needs a congestion-free problem)", "cole-hopf")
    if p.eps <= 0:
        raise ConfigError("problem.sigma", "a positive noise for the Cole–Hopf transform", p.sigma)
    if getattr(p.exact, "sources", None) is not None:
        raise ConfigError("solver.method", "'newton' or 'picard' for problems with source terms "
                          "(boundary data of an exact solution)", "cole-hopf")
    V, comm, N, eps = p.space, p.mesh.comm, p.steps, p.eps
    nl = V.dofmap.index_map.size_local
    a_form, b_form = cole_hopf.step_matrices(V, p.tau, eps, p.V, p.theta)
    A = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(a_form))
    A.assemble()
    B = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(b_form))
    B.assemble()
    ksp = PETSc.KSP().create(comm)
    ksp.setOptionsPrefix(prefix)
    ksp.setOperators(A)
    ksp.setType("preonly")
    ksp.getPC().setType("lu")
    ksp.getPC().setFactorSolverType("mumps")
    ksp.setFromOptions()
    x, rhs = A.createVecs()
    tmp = rhs.duplicate()

    def step(vec_in: np.ndarray) -> np.ndarray:
        tmp.getArray()[:] = vec_in
        B.mult(tmp, rhs)
        ksp.solve(rhs, x)
        if ksp.getConvergedReason() < 0:
            raise SolverError(f"Cole–Hopf: linear solve failed (KSP reason "
                              f"{ksp.getConvergedReason()})")
        return x.getArray(readonly=True).copy()

    # backward sweep for χ̃ⁿ, sₙ (n = N … 0)
    phi = dolfinx.fem.Function(V)
    phi.interpolate(dolfinx.fem.Expression(p.Phi, V.element.interpolation_points()))
    ph = phi.x.array[:nl]
    phi_min = comm.allreduce(float(ph.min()) if nl else np.inf, op=MPI.MIN)
    chi = [None] * (N + 1)
    s = np.zeros(N + 1)
    chi[N] = np.exp(-(ph - phi_min) / (2 * eps))
    s[N] = -phi_min / (2 * eps)
    for n in range(N - 1, -1, -1):
        y = step(chi[n + 1])
        m = _gmax(comm, y)
        if not (np.isfinite(m) and m > 0):
            raise SolverError(f"Cole–Hopf: backward sweep broke down at step {n} (max |χ| = {m})")
        chi[n], s[n] = y / m, s[n + 1] + math.log(m)
    # forward sweep for Γ̃ⁿ with ρⁿ = χ̃ⁿ Γ̃ⁿ
    rho = [p.rho0] + [dolfinx.fem.Function(V, name="rho") for _ in range(N)]
    gam = p.rho0.x.array[:nl] / np.maximum(chi[0], TINY)
    m = _gmax(comm, gam)
    gam, r = gam / m, math.log(m)          # Γⁿ = exp(rₙ − sₙ) Γ̂ⁿ, max|Γ̂ⁿ| = 1
    for n in range(N):
        y = step(gam)
        m = _gmax(comm, y)
        if not (np.isfinite(m) and m > 0):
            raise SolverError(f"Cole–Hopf: forward sweep broke down at step {n} (max |Γ| = {m})")
        gam, r = y / m, r + math.log(m) + s[n + 1] - s[n]
        prod = chi[n + 1] * gam            # ρ = χ̃Γ̂ e^{r}, formed in logs (e^{r} may overflow)
        with np.errstate(divide="ignore"):
            rho[n + 1].x.array[:nl] = np.sign(prod) * np.exp(np.log(np.abs(prod)) + r)
        rho[n + 1].x.scatter_forward()
    # u at the times of the HJB–FP scheme's u: t_n (θ = 1), t_{n+½} (θ = ½, mean of the logs)
    logchi = [np.log(np.maximum(c, TINY)) + sn for c, sn in zip(chi, s)]   # = −u/2ε
    u = []
    for n in range(N):
        lc = logchi[n] if p.theta == 1.0 else 0.5 * (logchi[n] + logchi[n + 1])
        f = dolfinx.fem.Function(V, name="u")
        f.x.array[:nl] = -2 * eps * lc
        f.x.scatter_forward()
        u.append(f)
    ksp.destroy()
    if not all(np.all(np.isfinite(f.x.array)) for f in rho + u):
        raise SolverError("Cole–Hopf: the solution contains NaN or inf")
    return _result(p, rho, u, time.perf_counter() - t0)


def _result(p, rho, u, seconds) -> Result:
    """Diagnostics of the Cole–Hopf fields with the HJB–FP functionals (same J definitions)."""
    from .spacetime import SpaceTime
    st = SpaceTime(p)
    for a, b in zip(st.rho, rho):
        a.x.array[:] = b.x.array
    for a, b in zip(st.u, u):
        a.x.array[:] = b.x.array
    return Result.from_system(st, method="cole-hopf", iterations=0, history=[],
                              seconds=seconds)
