"""Weak forms of the real-time nonlinear Schrödinger (Gross–Pitaevskii) equation (MODEL §4, §5).

  iħ ∂_tΨ = −(ħ²/2)ΔΨ + (V + g(|Ψ|²)) Ψ   in Ω,   ∇Ψ·n = 0 on ∂Ω,    g = G'.

With Ψ = q + ip and z = (q, p) (real PETSc), the semi-discrete system is Hamiltonian,

  ħ (∂_t q, φ) =  a(p, φ),   ħ (∂_t p, χ) = −a(q, χ),   for all w = (φ, χ),
  a(u, v)  = (ħ²/2) ∫∇u·∇v + ∫(V + g) u v,                                       (1)
  E(z)     = ∫ (ħ²/2)|∇z|² + V|z|² + G(|z|²)        (so that a(q, ·) = ½ ∂E/∂q),

and every time stepper below is written with the one right-hand side
F(z; w) = a(p, φ) − a(q, χ) of (1) — the implicit midpoint step and the explicit RK4 stages only
differ in where F is evaluated and which g it sees.

The potential terms ∫(V + g)uv and ∫V|z|² + G(|z|²) use one quadrature rule (``dx_potential``):
the energy identity of the averaged-g midpoint step holds quadrature point by quadrature point,
so the discrete energy is conserved exactly only if residual and energy share the rule.
"""
from __future__ import annotations

import numpy as np
import ufl


def dx_potential(mesh, degree: int):
    """The measure of the potential/nonlinear terms (degree 4k + 2 for Lagrange degree k)."""
    return ufl.dx(domain=mesh, metadata={"quadrature_degree": 4 * degree + 2})


def density(z):
    """ρ = |Ψ|² = q² + p²."""
    return z[0] ** 2 + z[1] ** 2


def nonlinearity(G):
    """g = G' as a Python map ρ ↦ UFL expression, by ``ufl.diff`` of ``G`` (a map ρ ↦ G(ρ))."""
    def g(rho):
        r = ufl.variable(rho)
        return ufl.diff(G(r), r)
    return g


def averaged_nonlinearity(g, rho_old, rho_new, points: int = 3):
    """ḡ = ∫₀¹ g(ρⁿ + s(ρⁿ⁺¹ − ρⁿ)) ds by Gauss–Legendre (exact for g of degree ≤ 2·points − 1).

    ḡ (ρⁿ⁺¹ − ρⁿ) = G(ρⁿ⁺¹) − G(ρⁿ): the discrete gradient of G (Delfour–Fortin–Payre for the
    cubic NLS), which makes the midpoint step conserve the energy exactly.
    """
    s, w = np.polynomial.legendre.leggauss(points)
    s, w = (s + 1) / 2, w / 2
    return sum(float(wi) * g(rho_old + float(si) * (rho_new - rho_old)) for si, wi in zip(s, w))


def hamiltonian_action(u, v, hbar, V, gval, dxp):
    """a(u, v) = (ħ²/2)∫∇u·∇v + ∫(V + g) u v — the weak form of Hu = −(ħ²/2)Δu + (V + g)u."""
    return hbar ** 2 / 2 * ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx \
        + (V + gval) * u * v * dxp


def schrodinger_rhs(z, w, hbar, V, gval, dxp):
    """F(z; w) = a(p, φ) − a(q, χ): the right-hand side of ħ M ż = F(z) (real form of −iHΨ)."""
    return hamiltonian_action(z[1], w[0], hbar, V, gval, dxp) \
        - hamiltonian_action(z[0], w[1], hbar, V, gval, dxp)


def mass_form(z, w):
    """(z, w) = ∫ qφ + pχ: the mass matrix of the time derivative (and of RK4's solves)."""
    return ufl.inner(z, w) * ufl.dx


def midpoint_residual(z, z_old, w, tau, hbar, V, gval, dxp):
    """R(zⁿ⁺¹; w) = ħ(zⁿ⁺¹ − zⁿ, w) − τ F(zⁿ⁺½; w) with zⁿ⁺½ = (zⁿ + zⁿ⁺¹)/2.

    ``gval`` is g(|zⁿ⁺½|²) (implicit midpoint) or the average of g between ρⁿ and ρⁿ⁺¹
    (:func:`averaged_nonlinearity`).  Testing with w = zⁿ⁺½ rotated by J gives
    ∫|zⁿ⁺¹|² = ∫|zⁿ|² for any real ``gval``: the mass is conserved exactly.
    """
    z_mid = (z + z_old) / 2
    return hbar * mass_form(z - z_old, w) - tau * schrodinger_rhs(z_mid, w, hbar, V, gval, dxp)


def energy(z, hbar, V, G, dxp):
    """E(z) = ∫ (ħ²/2)|∇z|² + V|z|² + G(|z|²)."""
    rho = density(z)
    return hbar ** 2 / 2 * ufl.inner(ufl.grad(z), ufl.grad(z)) * ufl.dx \
        + (V * rho + G(rho)) * dxp


def momentum(z, hbar):
    """P = ∫ ħ Im(Ψ̄∇Ψ) = ∫ ħ (q∇p − p∇q), one form per axis."""
    j = hbar * (z[0] * ufl.grad(z[1]) - z[1] * ufl.grad(z[0]))
    return [j[i] * ufl.dx for i in range(j.ufl_shape[0])]


def imaginary_time_step(phi, v, phi_old, tau, hbar, V, g_old, dxp):
    """Semi-implicit backward Euler for the normalised gradient flow ħ∂_tφ = −H(φ)φ (real φ).

      (φ*, v) + (τ/ħ) a(φ*, v; g(φⁿ²)) = (φⁿ, v),   then φⁿ⁺¹ = φ* · (N / ∫φ*²)^{1/2}.

    Returns the bilinear and linear forms (a, L) for φ*.
    """
    a = phi * v * ufl.dx + tau / hbar * hamiltonian_action(phi, v, hbar, V, g_old, dxp)
    L = phi_old * v * ufl.dx
    return a, L
