"""Discrete Lagrangian of K interacting populations (an extension beyond the paper; MODEL §2b).

Population k has its own noise ε_k = σ_k²/2, running potential V_k, terminal cost Φ_k, initial
density ρ_{k,0} (mass m_k) and self-congestion G_k(ρ_k); the populations interact through a
coupling matrix C:

  HJB_k (backward):  −∂_t u_k − ε_kΔu_k + ½|∇u_k|² = V_k + c_k(ρ),   u_k(T) = Φ_k
  FP_k  (forward):    ∂_t ρ_k − ε_kΔρ_k − ∇·(ρ_k∇u_k) = 0,          ρ_k(0) = ρ_{k,0}
  c_k(ρ) = g_k(ρ_k) + Σ_l C_kl ρ_l,   g_k = G_k' ("mftc") or G_k/ρ_k ("mfg").

"mftc" (one planner for all populations) needs C symmetric: c is then the gradient of
G(ρ) = Σ_k G_k(ρ_k) + ½ Σ_kl C_kl ρ_k ρ_l, and the system is the optimality system of
J = Σ_k [∫Φ_kρ_k(T) + ∫∫(½|a_k|² + V_k)ρ_k] + ∫∫G(ρ).  "mfg" (a game between the populations)
takes c as given (C may be non-symmetric: how much population k minds population l).

The unknowns of one time level are K-valued Functions (a blocked Lagrange space, component k =
population k), and the discrete Lagrangian is the sum of the single-population ones of
:mod:`fem_mfc.forms.hjb_fp` (one StepData per population, congestion left out) plus the
interaction, entering the ρ-rows as τ∫c(ρ̄)·∂ρ̄/∂ρ[q] exactly as the single-population
coupling does.  So every residual and Jacobian is again ``ufl.derivative`` of one density:
the FP rows of population k involve u_k and ρ_k only, the per-step pivots of the sweep
preconditioner are block diagonal (K decoupled single-population steps), and the interaction
is all in the ρ–ρ blocks that the sweep drops.  For K = 1 and C = [[κ]] this is the
single-population system with G = κρ²/2 (mftc): the same equations.

The value identity of the single-population system holds with ρ·c: at a discrete solution
J = Σ cost + Σ_k∫Φ_kρ_k^N = Σ_k ∂L_0/∂ρ_k⁰[ρ_k⁰] + Σ τ∫(G(ρ̄) − ρ̄·c(ρ̄)) (the Lagrangian
without G is linear in ρ), for either coupling.
"""
from __future__ import annotations

from dataclasses import dataclass

import ufl

from . import hjb_fp as H
from .hjb_fp import RHO_CUR, RHO_NEXT, RHO_PREV, U_CUR, U_PREV, StepData  # noqa: F401


@dataclass
class PopulationsData:
    """The per-step data of K populations: one :class:`~fem_mfc.forms.hjb_fp.StepData` per
    population (``G0`` its self-congestion, ``scale`` the shared continuation Constant s), the
    coupling matrix ``C`` (K lists of K numbers) and the coupling mode."""

    steps: tuple
    C: tuple
    coupling: str = "mftc"
    scale: object = None

    @property
    def K(self) -> int:
        return len(self.steps)

    @property
    def tau(self):
        return self.steps[0].tau

    @property
    def theta(self) -> float:
        return self.steps[0].theta

    @property
    def dx(self):
        """The measure of every cell integral (the populations share one rule:
        :attr:`fem_mfc.forms.hjb_fp.StepData.dx`)."""
        return self.steps[0].dx

    def c_matrix(self) -> list:
        """The matrix of the interaction in the HJB rows: C ("mfg") or ½(C + Cᵀ) ("mftc",
        ∂/∂ρ_k of ½ρᵀCρ; equal to C for the symmetric C that mftc is given)."""
        C, K = self.C, self.K
        if self.coupling == "mfg":
            return [[float(C[k][m]) for m in range(K)] for k in range(K)]
        return [[0.5 * (float(C[k][m]) + float(C[m][k])) for m in range(K)] for k in range(K)]

    @property
    def interacting(self) -> bool:
        return any(v != 0.0 for row in self.C for v in row)

    @property
    def parameters(self) -> dict:
        """The Constants a continuation may change: the coupling strength s (of every G_k
        and of C)."""
        if self.scale is not None and (self.interacting
                                       or any(d.G0 is not None for d in self.steps)):
            return {"coupling": self.scale}
        return {}


def _s(P: PopulationsData, expr):
    return expr if P.scale is None else P.scale * expr


def coupling_vector(P: PopulationsData, rb) -> list:
    """[c_0(ρ̄), …, c_{K−1}(ρ̄)] (entries None where c_k vanishes identically): the own
    coupling g_k(ρ̄_k) plus the interaction Σ_l C_kl ρ̄_l (module docstring)."""
    Cm = P.c_matrix()
    out = []
    for k, d in enumerate(P.steps):
        c = None
        if d.G is not None and not H._zero(d.G(rb[k])):
            c = H.coupling_value(d.G, P.coupling, rb[k])
        terms = [Cm[k][m] * rb[m] for m in range(P.K) if Cm[k][m] != 0.0]
        if terms:
            inter = _s(P, sum(terms[1:], terms[0]))
            c = inter if c is None else c + inter
        out.append(c)
    return out


def total_G(P: PopulationsData, rb):
    """G(ρ̄) = Σ_k s·G_k(ρ̄_k) + ½ s Σ_kl C_kl ρ̄_k ρ̄_l, or None if it vanishes."""
    terms = [d.G(rb[k]) for k, d in enumerate(P.steps)
             if d.G is not None and not H._zero(d.G(rb[k]))]
    pairs = [0.5 * float(P.C[k][m]) * rb[k] * rb[m] for k in range(P.K) for m in range(P.K)
             if float(P.C[k][m]) != 0.0]
    if pairs:
        terms.append(_s(P, sum(pairs[1:], pairs[0])))
    return sum(terms[1:], terms[0]) if terms else None


def coupling_shape(P: PopulationsData) -> tuple[bool | None, bool]:
    """(the HJB rows depend on ρ, the coupling is at most quadratic in ρ): the own couplings
    by :func:`fem_mfc.forms.hjb_fp.coupling_shape`, the interaction (linear in ρ) adds the ρ
    dependence."""
    varies, quadratic = False, True
    for d in P.steps:
        v, q = H.coupling_shape(d.G0, P.coupling)
        if v is None:
            return None, False
        varies, quadratic = varies or v, quadratic and q
    return varies or P.interacting, quadratic


def step_lagrangian(rho_old, rho_new, u, t, P: PopulationsData):
    """Σ_k L_n^k(ρ_kⁿ, ρ_k^{n+1}, u_kⁿ) without the congestion (forms/hjb_fp.py)."""
    Ls = [H.step_lagrangian(rho_old[k], rho_new[k], u[k], t, d, congestion=False)
          for k, d in enumerate(P.steps)]
    return sum(Ls[1:], Ls[0])


def rho_residual(rho_old, rho_new, u, t, wrt, q, P: PopulationsData):
    """∂L_n/∂(wrt)[q] with the congestion replaced by the coupling: + τ∫c(ρ̄)·∂ρ̄/∂(wrt)[q]."""
    F = ufl.derivative(step_lagrangian(rho_old, rho_new, u, t, P), wrt, q)
    rb = H.rho_bar(rho_old, rho_new, P.theta)
    c = coupling_vector(P, rb)
    if all(ck is None for ck in c):
        return F
    drb = ufl.derivative(rb, wrt, q)
    terms = [ck * drb[k] for k, ck in enumerate(c) if ck is not None]
    return F + P.tau * sum(terms[1:], terms[0]) * P.dx


def terminal(rho_N, P: PopulationsData):
    """Σ_k ∫Φ_k ρ_k^N."""
    parts = [d.Phi * rho_N[k] * P.dx for k, d in enumerate(P.steps)]
    return sum(parts[1:], parts[0])


def level_residuals(tm: dict, t_prev, t_cur, P: PopulationsData) -> dict:
    """The residual rows of time level k (as :func:`fem_mfc.forms.hjb_fp.level_residuals`),
    K-valued: row "u" holds the FP steps of all populations, "rho"/"rho_last" their HJB
    steps."""
    return H.level_rows(tm, t_prev, t_cur, P, step_lagrangian, rho_residual, terminal)


def level_functionals(tm: dict, t_cur, P: PopulationsData) -> dict:
    """The functionals of step k (as :func:`fem_mfc.forms.hjb_fp.level_functionals`) plus
    ``mass:k``, ∫ρ_k per population; ``mass`` is the total ∫Σ_kρ_k."""
    rc, rn, uc = tm[RHO_CUR], tm[RHO_NEXT], tm[U_CUR]
    rb = H.rho_bar(rc, rn, P.theta)
    tau = P.tau
    cost = None
    value = None
    for k, d in enumerate(P.steps):
        term = tau * (0.5 * ufl.inner(ufl.grad(uc[k]), ufl.grad(uc[k])) + d.V) * rb[k] * P.dx
        cost = term if cost is None else cost + term
        s = H._sources(d, t_cur)
        for key, meas in (("f_H", P.dx), ("b_H", ufl.ds)):
            if s[key] is not None:
                t = -tau * s[key] * rb[k] * meas
                value = t if value is None else value + t
    G = total_G(P, rb)
    if G is not None:
        cost += tau * G * P.dx
        c = coupling_vector(P, rb)
        rc_terms = [rb[k] * ck for k, ck in enumerate(c) if ck is not None]
        term = tau * (G - sum(rc_terms[1:], rc_terms[0])) * P.dx
        value = term if value is None else value + term
    masses = {f"mass:{k}": rc[k] * P.dx for k in range(P.K)}
    total = sum((rc[k] for k in range(1, P.K)), rc[0]) * P.dx
    return {"cost": cost, "value": value, "u0": rho_residual(rc, rn, uc, t_cur, rc, rc, P),
            "mass": total, "terminal": terminal(rc, P), **masses}


__all__ = ["PopulationsData", "coupling_vector", "total_G", "coupling_shape",
           "level_residuals", "level_functionals", "step_lagrangian", "rho_residual",
           "terminal"]
