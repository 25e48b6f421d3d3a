"""All-at-once SNES Newton for the Cole–Hopf pair (χ, Γ) with congestion (forms/cole_hopf_pair.py).

The pair is a :class:`~fem_mfc.solvers.qhd.LevelSystem` in the HJB–FP layout (Γ¹..Γ^N in the
ρ-slots, χ⁰..χ^{N−1} in the u-slots, χ^N = exp(−(Φ − Φ_min)/2ε) data) solved by the Newton of
:mod:`fem_mfc.solvers.newton`.  For G = 0 the χ-equations are linear and decoupled and only
Γ⁰ = ρ_0/χ⁰ is nonlinear: Newton converges in two steps (the first gives the exact χ).
:func:`solve_pair` returns a :class:`PairResult` with ρ^k = χ^kΓ^k and
u^k = −2ε log χ^k + Φ_min interpolated in the solve space, and J from the HJB–FP
functionals, so it compares directly with the HJB–FP result.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import dolfinx
import numpy as np
import ufl
from mpi4py import MPI

from ..errors import ConfigError, SolverError
from ..forms import cole_hopf_pair as forms
from ..problem import interpolate
from .newton import newton
from .qhd import HJB_LAYOUT, Layout, LevelSystem
from .spacetime import SpaceTime

PAIR_ROWS = {"gamma_first": ("u", lambda k, N: k == 0),
             "gamma": ("u", lambda k, N: 1 <= k < N),
             "chi": ("rho", lambda k, N: 1 <= k <= N)}


class PairSystem(LevelSystem):
    """The discrete pair as a space-time system; initial guess χ^k = χ^N, Γ^k = ρ_0/χ^N."""

    def __init__(self, problem):
        if not problem.eps > 0:
            raise ConfigError("problem.sigma", "a positive noise for the Cole-Hopf pair "
                              "(chi = exp(-u/sigma^2))", problem.sigma)
        V = problem.space
        phi = interpolate(problem.Phi, V)
        nl = V.dofmap.index_map.size_local
        local = phi.x.array[:nl]
        self.shift = problem.mesh.comm.allreduce(float(local.min()) if nl else math.inf,
                                                 op=MPI.MIN)
        self.data = d = forms.PairData(tau=problem.tau, eps=problem.eps, V=problem.V,
                                       rho0=problem.rho0, G=problem.G,
                                       coupling=problem.coupling)
        chi_T = interpolate(ufl.exp(-(problem.Phi - self.shift) / (2 * problem.eps)), V, "chi")
        gamma0 = interpolate(problem.rho0 / chi_T, V, "Gamma")
        super().__init__(problem, Layout(HJB_LAYOUT, PAIR_ROWS),
                         lambda tm: forms.level_forms(tm, d),
                         lambda tm: forms.level_functionals(tm, d),
                         rho_data=gamma0, u_data=chi_T, rho_guess=gamma0, u_guess=chi_T,
                         names=("Gamma", "chi"))

    @property
    def chi(self):
        """χ⁰..χ^N (the last is the terminal datum)."""
        return self.u + [self.u_data]

    @property
    def gamma(self):
        """Γ⁰..Γ^N (Γ⁰ = ρ_0/χ⁰ interpolated after the solve)."""
        return self.rho

    def fields(self):
        """ρ^k = χ^kΓ^k (k = 0..N, ρ⁰ = ρ_0) and u^k = −2ε log χ^k + Φ_min (k = 0..N−1),
        interpolated in the solve space (nodal products for Lagrange elements)."""
        p, V = self.problem, self.V
        rho = [p.rho0] + [interpolate(c * g, V, "rho")
                          for c, g in zip(self.chi[1:], self.gamma[1:])]
        u = [interpolate(-2 * p.eps * ufl.ln(c) + self.shift, V, "u") for c in self.u]
        return rho, u

    def diagnostics(self) -> dict:
        """Masses ∫χ^kΓ^k, min(χ, Γ), and J, J_value of the HJB–FP functionals (forms/hjb_fp.py)
        evaluated on (ρ, u) — the same definitions of J as for the HJB–FP solvers."""
        masses = []
        for k in range(self.N + 1):
            self.load(k)
            masses.append(self.scalar("mass_first" if k == 0 else "mass"))
        nl = self.nl
        mins = [min(c.x.array[:nl].min(), g.x.array[:nl].min()) if nl else np.inf
                for c, g in zip(self.chi[1:], self.gamma[1:])]
        hjb = SpaceTime(self.problem)
        rho, u = self.fields()
        for a, b in zip(hjb.rho[1:] + hjb.u, rho[1:] + u):
            a.x.array[:] = b.x.array
        dh = hjb.diagnostics()
        return {"J": dh["J"], "J_value": dh["J_value"], "mass": masses,
                "mass_error": max(abs(m - 1.0) for m in masses),
                "min_rho": self.comm.allreduce(float(min(mins)), op=MPI.MIN)}


@dataclass
class PairResult:
    """ρ^k = χ^kΓ^k (k = 0..N), u^k = −2ε log χ^k + Φ_min (k = 0..N−1, at t_k as the HJB–FP
    backward-Euler u^k) with the solve's diagnostics."""

    problem: object
    chi: list
    gamma: list
    rho: list
    u: list
    J: float
    J_value: float
    mass: list
    mass_error: float
    min_rho: float
    iterations: int
    history: list = field(default_factory=list)
    seconds: float = 0.0
    method: str = "cole-hopf-pair"

    def summary(self) -> dict:
        return {"method": self.method, "J": self.J, "J_value_identity": self.J_value,
                "mass_error": self.mass_error, "min_rho": self.min_rho,
                "iterations": self.iterations, "seconds": self.seconds}


def solve_pair(problem, rtol=1e-10, atol=1e-12, max_it=50, petsc_options=None,
               prefix="chp_") -> PairResult:
    """Solve the (cubic) pair all-at-once by Newton (G = 0: two Newton steps)."""
    st = PairSystem(problem)
    res = newton(problem, rtol=rtol, atol=atol, max_it=max_it, prefix=prefix,
                 petsc_options=petsc_options, system=st)
    st.rho[0].interpolate(dolfinx.fem.Expression(problem.rho0 / st.u[0],
                                                 problem.space.element.interpolation_points()))
    if res.min_rho <= 0:
        raise SolverError(f"Cole-Hopf pair: chi or Gamma lost positivity (min "
                          f"{res.min_rho:.3g}); refine tau or h")
    rho, u = st.fields()
    return PairResult(problem=problem, chi=st.chi, gamma=st.gamma, rho=rho, u=u, J=res.J,
                      J_value=res.J_value, mass=res.mass, mass_error=res.mass_error,
                      min_rho=res.min_rho, iterations=res.iterations, history=res.history,
                      seconds=res.seconds)
