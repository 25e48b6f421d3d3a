"""All-at-once SNES Newton for the Cole–Hopf pair (χ, Γ) with congestion (forms/cole_hopf_pair.py).

The pair is a space-time description (:func:`cole_hopf_pair`) in the HJB–FP layout (Γ¹..Γ^N
in the ρ-slots, χ⁰..χ^{N−1} in the u-slots, χ^N = exp(−(Φ − Φ_min)/2ε) data) solved by the
Newton of :mod:`fem_mfc.solvers.newton`.  For G = 0 the χ-equations are linear and decoupled
and only Γ⁰ = ρ_0/χ⁰ is nonlinear: Newton converges in two steps (the first gives the exact
χ).  With congestion the forms scale c by a Constant λ (``parameters["coupling"]``): where
Newton from the G = 0 guess stalls (the 2D benchmark problem, χ(T) down to e⁻⁹), the
continuation of :mod:`fem_mfc.solvers.continuation` starts at the linear pair (λ = 0) and
steps to λ = 1, recorded in ``Result.continuation``.
:func:`solve_pair` returns a :class:`PairResult` with ρ^k = χ^kΓ^k and
u^k = −2ε log χ^k + Φ_min interpolated in the solve space, and J from the HJB–FP functionals,
so it compares directly with the HJB–FP result.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from mpi4py import MPI

import dolfinx
import ufl

from ..errors import ConfigError, SolverError
from ..forms import cole_hopf_pair as forms
from ..forms.qhd import constants
from ..problem import interpolate
from .newton import newton
from .result import Result
from .spacetime import Formulation, SpaceTime, first

PAIR_ROWS = {"gamma_first": ("u", first),
             "gamma": ("u", lambda k, N: 1 <= k < N),
             "chi": ("rho", lambda k, N: 1 <= k <= N)}
# ∫ρ^k: ∫ρ_0 at k = 0, ∫χ^kΓ^k after; J and J_value come from the HJB–FP functionals
PAIR_DIAGNOSTICS = {"mass": ("list", (("mass_first", first),
                                      ("mass", lambda k, N: k >= 1)))}


def cole_hopf_pair(problem) -> Formulation:
    """The discrete pair as a space-time description; initial guess χ^k = χ^N,
    Γ^k = ρ_0/χ^N.  ``params["shift"]`` = Φ_min (χ^N = exp(−(Φ − Φ_min)/2ε))."""
    if not problem.eps > 0:
        raise ConfigError("problem.sigma", "a positive noise for the Cole-Hopf pair "
                          "(chi = exp(-u/sigma^2))", problem.sigma)
    V = problem.space
    nl = V.dofmap.index_map.size_local
    local = interpolate(problem.Phi, V).x.array[:nl]
    shift = problem.mesh.comm.allreduce(float(local.min()) if nl else math.inf, op=MPI.MIN)
    tau, eps, scale = constants(problem.mesh, problem.tau, problem.eps, 1.0)
    c = problem.potential_gauge()           # as the linear sweeps (solvers/sweeps.py)
    d = forms.PairData(tau=tau, eps=eps, V=problem.V - c if c else problem.V,
                       rho0=problem.rho0, G=problem.G,
                       coupling=problem.coupling, scale=scale if problem.G else None)
    chi_T = interpolate(ufl.exp(-(problem.Phi - shift) / (2 * problem.eps)), V, "chi")
    gamma0 = interpolate(problem.rho0 / chi_T, V, "Gamma")
    return Formulation(build=lambda tm, tp, tc: forms.level_forms(tm, d),
                       functionals=lambda tm, tc: forms.level_functionals(tm, d),
                       data={"rho": gamma0, "u": chi_T}, guess={"rho": gamma0, "u": chi_T},
                       rows=PAIR_ROWS, diagnostics=PAIR_DIAGNOSTICS, names=("Gamma", "chi"),
                       params={"shift": shift}, finish=finish,
                       parameters={"coupling": scale} if problem.G else {})


def fields(st: SpaceTime):
    """ρ^k = χ^kΓ^k (k = 0..N, ρ⁰ = ρ_0) and u^k = −2ε log χ^k + Φ_min (k = 0..N−1) of a
    pair system, interpolated in the solve space (nodal products for Lagrange elements)."""
    p, V = st.problem, st.V
    rho = [p.rho0] + [interpolate(c * g, V, "rho") for c, g in zip(st.u[1:] + [st.u_data],
                                                                     st.rho[1:])]
    g = p.potential_gauge()
    u = [interpolate(-2 * p.eps * ufl.ln(c) + st.formulation.params["shift"]
                     + g * (p.T - k * p.tau), V, "u") for k, c in enumerate(st.u)]
    return rho, u


def finish(st: SpaceTime, out: dict) -> dict:
    """J, J_value of the HJB–FP functionals (forms/hjb_fp.py) evaluated on (ρ, u) — the same
    definitions of J as for the HJB–FP solvers — and min ρ = min(χ, Γ) over levels 1..N."""
    hjb = SpaceTime(st.problem)
    rho, u = fields(st)
    hjb.assign(rho, u)
    dh = hjb.diagnostics()
    # min ρ is ρ's (it was min(χ, Γ), reported as min_rho); χ, Γ > 0 is solve_pair's test
    out.update(J=dh["J"], J_value=dh["J_value"], min_rho=hjb.min_of(rho[1:]),
               min_chi_gamma=st.min_of(st.u[1:] + [st.u_data] + st.rho[1:]))
    return out


class PairSystem(SpaceTime):
    """The space-time system of :func:`cole_hopf_pair` with χ/Γ-named views."""

    describe = staticmethod(cole_hopf_pair)

    @property
    def shift(self) -> float:
        """Φ_min."""
        return self.formulation.params["shift"]

    @property
    def chi(self):
        """χ⁰..χ^N (the last is the terminal datum)."""
        return self.u + [self.u_data]

    @property
    def gamma(self):
        """Γ⁰..Γ^N (Γ⁰ = ρ_0/χ⁰ interpolated after the solve)."""
        return self.rho

    def fields(self):
        return fields(self)


@dataclass
class PairResult(Result):
    """A :class:`Result` with ρ^k = χ^kΓ^k (k = 0..N), u^k = −2ε log χ^k + Φ_min (k = 0..N−1,
    at t_k as the HJB–FP backward-Euler u^k), and the pair's own χ⁰..χ^N, Γ⁰..Γ^N."""

    chi: list = field(default_factory=list)
    gamma: list = field(default_factory=list)


def solve_pair(problem, rtol=1e-10, atol=1e-12, max_it=50, petsc_options=None,
               prefix="chp_", log=None) -> PairResult:
    """Solve the (cubic) pair all-at-once by Newton (G = 0: two Newton steps); ``log``: the
    Newton steps and continuation stages, as in :func:`~.newton.newton`."""
    st = PairSystem(problem)
    res = newton(problem, rtol=rtol, atol=atol, max_it=max_it, prefix=prefix,
                 petsc_options=petsc_options, system=st, log=log).check()
    st.rho[0].interpolate(dolfinx.fem.Expression(problem.rho0 / st.u[0],
                                                 problem.space.element.interpolation_points()))
    low = st.min_of(st.u[1:] + [st.u_data] + st.rho[1:])
    if low <= 0:
        raise SolverError(f"Cole-Hopf pair: chi or Gamma lost positivity (min "
                          f"{low:.3g}); refine tau or h")
    rho, u = st.fields()
    return PairResult(**{**vars(res), "rho": rho, "u": u, "method": "cole-hopf-pair"},
                      chi=st.chi, gamma=st.gamma)
