"""Cole–Hopf / imaginary-time Schrödinger pair (χ, Γ) with congestion (MODEL §4).

With χ = exp(−u/2ε), Γ = ρ/χ (ρ = χΓ), W = V + c(χΓ), c = G' ("mftc") or G/ρ ("mfg"):

  ∂_tχ + εΔχ = (W/2ε) χ    backward,  χ(T) = exp(−Φ/2ε),   ∇χ·n = 0,
  ∂_tΓ − εΔΓ = −(W/2ε) Γ   forward,   Γ(0) = ρ_0/χ(0),      ∇Γ·n = 0.

For G = 0 both equations are linear; with G = κρ²/2 the pair is a cubic (Gross–Pitaevskii
type) system in imaginary time, solved all-at-once.

Discretisation (implicit in each equation's own time direction, one shared potential per step):

  χ-step k:  ∫(χ^k − χ^{k+1})q + τ a_k(χ^k, q) = 0,        k = 0..N−1, χ^N = exp(−Φ/2ε),
  Γ-step k:  ∫(Γ^{k+1} − Γ^k)q + τ a_k(Γ^{k+1}, q) = 0,    k = 0..N−1, Γ⁰ = ρ_0/χ⁰,
  a_k(f, q) = ε∫∇f·∇q + ∫(W_k/2ε) f q,   W_k = V + c(χ^kΓ^{k+1}).

Testing the χ-step with Γ^{k+1} and the Γ-step with χ^k and subtracting gives
∫χ^{k+1}Γ^{k+1} = ∫χ^kΓ^k: the discrete mass ∫ρ^k, ρ^k = χ^kΓ^k, is conserved exactly.

Space-time layout (that of forms/hjb_fp.py, Γ in the ρ-slots, χ in the u-slots): the row of
χ^k is the Γ-step k (as the FP step is the row of u^k), the row of Γ^k the χ-step k − 1 (as
the HJB step is the row of ρ^k).  Large |Φ|/ε over/underflows exp(−Φ/2ε): Φ is shifted by a
constant Φ_min (u → u − Φ_min leaves ρ and the optimality system unchanged).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import ufl

from .hjb_fp import RHO_CUR, RHO_NEXT, U_CUR, U_PREV, coupling_value

GAMMA_CUR, GAMMA_NEXT, CHI_PREV, CHI_CUR = RHO_CUR, RHO_NEXT, U_PREV, U_CUR


@dataclass
class PairData:
    """Data of the pair: τ, ε > 0 (dolfinx Constants: one compiled form for every step count
    and noise), V (UFL in x), G (ρ ↦ UFL or None), coupling, ρ_0."""

    tau: object
    eps: object
    V: object
    rho0: object
    G: Optional[Callable] = None
    coupling: str = "mftc"
    scale: object = None                  # Constant s: the forms use s·c (continuation)


def potential(rho, d: PairData):
    """W = V + c(ρ)."""
    if d.G is None:
        return d.V
    c = coupling_value(d.G, d.coupling, rho)
    return d.V + (c if d.scale is None else d.scale * c)


def operator(f, q, W, d: PairData):
    """a(f, q) = ε∫∇f·∇q + ∫(W/2ε) f q — the weak form of −εΔf + (W/2ε) f."""
    return (d.eps * ufl.inner(ufl.grad(f), ufl.grad(q)) + W / (2 * d.eps) * f * q) * ufl.dx


def step_potential(chi_k, gamma_k1, d: PairData):
    """W_k = V + c(χ^kΓ^{k+1})."""
    return potential(chi_k * gamma_k1, d)


def chi_step(chi_k, chi_k1, gamma_k1, q, d: PairData):
    """∫(χ^k − χ^{k+1})q + τ a_k(χ^k, q): the backward step of ∂_tχ + εΔχ = (W/2ε)χ."""
    W = step_potential(chi_k, gamma_k1, d)
    return (chi_k - chi_k1) * q * ufl.dx + d.tau * operator(chi_k, q, W, d)


def gamma_step(gamma_k, gamma_k1, chi_k, q, d: PairData):
    """∫(Γ^{k+1} − Γ^k)q + τ a_k(Γ^{k+1}, q): the forward step of ∂_tΓ − εΔΓ = −(W/2ε)Γ."""
    W = step_potential(chi_k, gamma_k1, d)
    return (gamma_k1 - gamma_k) * q * ufl.dx + d.tau * operator(gamma_k1, q, W, d)


def initial_gamma(chi0, d: PairData):
    """Γ⁰ = ρ_0/χ⁰."""
    return d.rho0 / chi0


def level_forms(tm: dict, d: PairData) -> dict:
    """Residual rows of level k on templates (Γ^k, Γ^{k+1}, χ^{k−1}, χ^k):
      "gamma_first" (k = 0): Γ-step 0 with Γ⁰ = ρ_0/χ⁰      (row of χ⁰),
      "gamma"  (1 ≤ k < N):  Γ-step k                        (row of χ^k),
      "chi"    (1 ≤ k ≤ N):  χ-step k − 1 (χ^N is data)      (row of Γ^k).
    The space-time solver takes the Jacobian blocks as their ``ufl.derivative``.
    """
    q = ufl.TestFunction(tm[GAMMA_CUR].function_space)
    gc, gn, cp, cc = (tm[k] for k in (GAMMA_CUR, GAMMA_NEXT, CHI_PREV, CHI_CUR))
    return {"gamma_first": gamma_step(initial_gamma(cc, d), gn, cc, q, d),
            "gamma": gamma_step(gc, gn, cc, q, d),
            "chi": chi_step(cp, cc, gc, q, d)}


def level_functionals(tm: dict, d: PairData) -> dict:
    """Mass ∫χ^kΓ^k of level k ("mass"; at k = 0 it is ∫ρ_0, "mass_first")."""
    return {"mass": tm[CHI_CUR] * tm[GAMMA_CUR] * ufl.dx, "mass_first": d.rho0 * ufl.dx}
