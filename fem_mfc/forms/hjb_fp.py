"""Discrete Lagrangian of the feedback-network optimality system (MODEL §2).

Continuous system (ε = σ²/2, natural boundary conditions):

  HJB (backward):  −∂_t u − εΔu + ½|∇u|² = V + c(ρ),   u(T) = Φ
  FP  (forward):    ∂_t ρ − εΔρ − ∇·(ρ∇u) = 0,          ρ(0) = ρ_0
  coupling c(ρ) = G'(ρ) ("mftc") or G(ρ)/ρ ("mfg").

Discretisation: the discrete Lagrangian, with the control a = −∇u eliminated,

  L(ρ, u) = ∫Φ ρ^N + Σ_{n=0}^{N−1} L_n(ρⁿ, ρ^{n+1}, uⁿ),
  L_n = τ∫[V ρ̄ + G(ρ̄) − ½ ρ̄ |∇uⁿ|²] − ∫uⁿ(ρ^{n+1} − ρⁿ) − τε∫∇uⁿ·∇ρ̄,

  ρ̄ = ρ^{n+1} (backward Euler, θ = 1) or (ρⁿ + ρ^{n+1})/2 (implicit midpoint, θ = ½).

∂L/∂uⁿ = 0 is the FP step (test function 1 ⇒ ∫ρ^{n+1} = ∫ρⁿ); ∂L/∂ρ^{n+1} = 0 is the
implicit HJB step for uⁿ (the ∫Φρ^N term plays "u^N = Φ").  Every residual and Jacobian is
obtained from this one density with ``ufl.derivative``.  The congestion enters the ρ-rows as
∫c(ρ̄) ∂ρ̄/∂ρ[q]; for "mftc" this is exactly ∂/∂ρ of τ∫G(ρ̄), for "mfg" it is the game coupling
(not a derivative of L); Jacobians are derivatives of these residuals, so both modes come from
the one definition of G.

Manufactured sources enter L linearly: an HJB forcing f_H and Neumann datum b_H = ε∇u·n as
τ∫f_H ρ̄ + τ∫_∂ b_H ρ̄, an FP forcing f_F and boundary flux b_F = (ε∇ρ + ρ∇u)·n as
τ∫f_F u + τ∫_∂ b_F u.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import ufl

THETA = {"backward-euler": 1.0, "crank-nicolson": 0.5}

# Template coefficients of one time level k (see ``level_forms``).
RHO_PREV, RHO_CUR, RHO_NEXT, U_PREV, U_CUR = "rho_prev", "rho_cur", "rho_next", "u_prev", "u_cur"


@dataclass
class StepData:
    """Everything the per-step density needs (UFL expressions in x; ``sources(t)`` in x, t)."""

    tau: float
    eps: float
    theta: float
    V: object
    Phi: object
    G: Optional[Callable] = None          # rho ↦ UFL expression, None = no congestion
    coupling: str = "mftc"
    sources: Optional[Callable] = None    # t ↦ dict(f_H=, b_H=, f_F=, b_F=) (entries may be None)


def rho_bar(rho_old, rho_new, theta: float):
    """ρ̄ = θρ^{n+1} + (1 − θ)ρⁿ."""
    if theta == 1.0:
        return rho_new
    return theta * rho_new + (1.0 - theta) * rho_old


def coupling_value(G: Callable, coupling: str, rho):
    """c(ρ) = G'(ρ) (mftc) or G(ρ)/ρ (mfg), from the one UFL definition of G."""
    r = ufl.variable(rho)
    if coupling == "mftc":
        return ufl.diff(G(r), r)
    if coupling == "mfg":
        return G(r) / r
    raise ValueError(f"unknown coupling {coupling!r}")


def _sources(d: StepData, t):
    s = d.sources(t) if d.sources is not None else {}
    return {k: s.get(k) for k in ("f_H", "b_H", "f_F", "b_F")}


def step_lagrangian(rho_old, rho_new, u, t, d: StepData, congestion: bool = True):
    """L_n(ρⁿ, ρ^{n+1}, uⁿ) at source time t (see module docstring); G only if ``congestion``."""
    rb = rho_bar(rho_old, rho_new, d.theta)
    tau, eps = d.tau, d.eps
    L = (tau * (d.V * rb - 0.5 * rb * ufl.inner(ufl.grad(u), ufl.grad(u))) * ufl.dx
         - u * (rho_new - rho_old) * ufl.dx
         - tau * eps * ufl.inner(ufl.grad(u), ufl.grad(rb)) * ufl.dx)
    if congestion and d.G is not None:
        L += tau * d.G(rb) * ufl.dx
    s = _sources(d, t)
    if s["f_H"] is not None:
        L += tau * s["f_H"] * rb * ufl.dx
    if s["b_H"] is not None:
        L += tau * s["b_H"] * rb * ufl.ds
    if s["f_F"] is not None:
        L += tau * s["f_F"] * u * ufl.dx
    if s["b_F"] is not None:
        L += tau * s["b_F"] * u * ufl.ds
    return L


def coupling_residual(rho_old, rho_new, wrt, q, d: StepData):
    """τ∫c(ρ̄) ∂ρ̄/∂(wrt)[q]: the congestion part of the ρ-residual of one step."""
    if d.G is None:
        return None
    rb = rho_bar(rho_old, rho_new, d.theta)
    return d.tau * coupling_value(d.G, d.coupling, rb) * ufl.derivative(rb, wrt, q) * ufl.dx


def rho_residual(rho_old, rho_new, u, t, wrt, q, d: StepData):
    """∂L_n/∂(wrt)[q] with the congestion replaced by its coupling c (wrt = ρⁿ or ρ^{n+1})."""
    F = ufl.derivative(step_lagrangian(rho_old, rho_new, u, t, d, congestion=False), wrt, q)
    c = coupling_residual(rho_old, rho_new, wrt, q, d)
    return F if c is None else F + c


def terminal(rho_N, d: StepData):
    """∫Φ ρ^N."""
    return d.Phi * rho_N * ufl.dx


def nonzero(form):
    """The form with derivatives expanded, or None if it vanishes identically."""
    f = ufl.algorithms.expand_derivatives(form)
    return None if f.empty() else f


def level_forms(tm: dict, t_prev, t_cur, d: StepData) -> dict:
    """UFL residuals and Jacobian blocks of time level k on template coefficients ``tm``.

    ``tm`` maps RHO_PREV, RHO_CUR, RHO_NEXT, U_PREV, U_CUR to Functions holding ρ^{k−1}, ρ^k,
    ρ^{k+1}, u^{k−1}, u^k.  Returns {"res": {row: F}, "jac": {(row, col): a}} with rows
      "u":        ∂L_k/∂u^k                       (FP step k → k+1),
      "rho":      ∂(L_{k−1} + L_k)/∂ρ^k + coupling (HJB step for u^{k−1}, 1 ≤ k < N),
      "rho_last": ∂(L_{N−1} + ∫Φρ^N)/∂ρ^N + coupling,
    and Jacobian blocks (row, template) = derivative of the row w.r.t. that template
    (vanishing blocks omitted).
    """
    V = tm[RHO_CUR].function_space
    q, dtrial = ufl.TestFunction(V), ufl.TrialFunction(V)
    rp, rc, rn, up, uc = (tm[k] for k in (RHO_PREV, RHO_CUR, RHO_NEXT, U_PREV, U_CUR))
    res = {
        "u": ufl.derivative(step_lagrangian(rc, rn, uc, t_cur, d), uc, q),
        "rho": rho_residual(rp, rc, up, t_prev, rc, q, d) + rho_residual(rc, rn, uc, t_cur, rc, q, d),
        "rho_last": rho_residual(rp, rc, up, t_prev, rc, q, d)
        + ufl.derivative(terminal(rc, d), rc, q),
    }
    depends = {"u": (RHO_CUR, U_CUR, RHO_NEXT),
               "rho": (RHO_PREV, U_PREV, RHO_CUR, U_CUR, RHO_NEXT),
               "rho_last": (RHO_PREV, U_PREV, RHO_CUR)}
    jac = {}
    for row, F in res.items():
        for col in depends[row]:
            a = nonzero(ufl.derivative(F, tm[col], dtrial))
            if a is not None:
                jac[(row, col)] = a
    return {"res": res, "jac": jac}


def level_functionals(tm: dict, t_cur, d: StepData) -> dict:
    """Scalar functionals of step k (on ρ^k, ρ^{k+1}, u^k) used for the cost and identities.

      "cost":  τ∫[(½|∇u^k|² + V)ρ̄ + G(ρ̄)]                 (direct evaluation of J),
      "value": τ∫[G(ρ̄) − ρ̄ c(ρ̄)] − τ∫f_H ρ̄ − τ∫_∂ b_H ρ̄   (value-identity correction),
      "u0":    ∂L_0/∂ρ⁰[ρ⁰] with G → c: the discrete ∫u(0)ρ_0 (only meaningful at k = 0),
      "mass":  ∫ρ^k.
    At a discrete stationary point J = Σ cost + ∫Φρ^N = u0 + Σ value exactly (discrete value
    identity, MODEL §2: J* = ∫u(0)ρ_0 + ∫∫(G(ρ) − ρG'(ρ))).
    """
    rc, rn, uc = tm[RHO_CUR], tm[RHO_NEXT], tm[U_CUR]
    rb = rho_bar(rc, rn, d.theta)
    cost = d.tau * (0.5 * ufl.inner(ufl.grad(uc), ufl.grad(uc)) + d.V) * rb * ufl.dx
    value = None
    if d.G is not None:
        cost += d.tau * d.G(rb) * ufl.dx
        value = d.tau * (d.G(rb) - rb * coupling_value(d.G, d.coupling, rb)) * ufl.dx
    s = _sources(d, t_cur)
    for key, meas in (("f_H", ufl.dx), ("b_H", ufl.ds)):
        if s[key] is not None:
            term = -d.tau * s[key] * rb * meas
            value = term if value is None else value + term
    return {"cost": cost, "value": value,
            "u0": rho_residual(rc, rn, uc, t_cur, rc, rc, d),
            "mass": rc * ufl.dx, "terminal": terminal(rc, d)}
