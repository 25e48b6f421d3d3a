"""Named example systems used by the tests, the demo and the benchmark.

Canonical (z = (q, p)):
    harmonic oscillator  H = p²/2 + ω²q²/2            (exact flow known)
    pendulum             H = p²/2 − cos q
    Hénon–Heiles         H = |p|²/2 + |q|²/2 + q₁²q₂ − q₂³/3
Lie–Poisson:
    free rigid body on so(3)*   h = ½ Σ Π_i²/I_i,   Π' = Π × I⁻¹Π
    heavy top on se(3)*         h = ½ Σ Π_i²/I_i + Γ·χ   (χ = m g ℓ · centre of mass direction)
    quadratic h = ½|μ|²_F on gl(d)* / so(d)*  (μ' = μᵀμ − μμᵀ on gl(d)*)
"""
from __future__ import annotations

import numpy as np
import sympy as sp

from .lie_algebras import GL, SE3, SO, SO3
from .lie_poisson import LiePoissonSystem
from .systems import CanonicalSystem


def harmonic_oscillator(omega: float = 1.0) -> CanonicalSystem:
    q, p = sp.symbols("q p")
    return CanonicalSystem.from_sympy(p ** 2 / 2 + omega ** 2 * q ** 2 / 2, [q], [p],
                                      name="harmonic-oscillator")


def harmonic_oscillator_exact(z0, t, omega: float = 1.0) -> np.ndarray:
    """Exact flow of the harmonic oscillator at time t."""
    q0, p0 = z0
    c, s = np.cos(omega * t), np.sin(omega * t)
    return np.array([q0 * c + p0 * s / omega, -q0 * omega * s + p0 * c])


def pendulum() -> CanonicalSystem:
    q, p = sp.symbols("q p")
    return CanonicalSystem.from_sympy(p ** 2 / 2 - sp.cos(q), [q], [p], name="pendulum")


def henon_heiles() -> CanonicalSystem:
    q1, q2, p1, p2 = sp.symbols("q1 q2 p1 p2")
    H = (p1 ** 2 + p2 ** 2) / 2 + (q1 ** 2 + q2 ** 2) / 2 + q1 ** 2 * q2 - q2 ** 3 / 3
    return CanonicalSystem.from_sympy(H, [q1, q2], [p1, p2], name="henon-heiles")


def rigid_body(inertia=(1.0, 2.0, 3.0)) -> LiePoissonSystem:
    """Free rigid body Π' = Π × Ω, Ω = I⁻¹Π (vectorised over leading axes of Π)."""
    inv = 1.0 / np.asarray(inertia, dtype=float)
    return LiePoissonSystem(SO3(), lambda m: 0.5 * np.sum(inv * np.asarray(m) ** 2, axis=-1),
                            lambda m: inv * np.asarray(m), lambda m: np.diag(inv),
                            name="rigid-body")


def rigid_body_rhs(inertia=(1.0, 2.0, 3.0)):
    """The rigid-body equation written out independently of the Lie-algebra code (reference)."""
    inv = 1.0 / np.asarray(inertia, dtype=float)

    def rhs(_t, m):
        return np.cross(m, inv * m)
    return rhs


def heavy_top(inertia=(1.0, 2.0, 3.0), chi=(0.0, 0.0, 1.0)) -> LiePoissonSystem:
    """Heavy top on se(3)*: Π' = Π×Ω + Γ×χ, Γ' = Γ×Ω (Γ the gravity direction in the body)."""
    inv = 1.0 / np.asarray(inertia, dtype=float)
    chi = np.asarray(chi, dtype=float)

    def h(z):
        z = np.asarray(z)
        return 0.5 * np.sum(inv * z[..., :3] ** 2, axis=-1) + z[..., 3:] @ chi

    def grad(z):
        z = np.asarray(z)
        return np.concatenate([inv * z[..., :3], np.broadcast_to(chi, z[..., 3:].shape)], axis=-1)

    hess = np.zeros((6, 6))
    hess[:3, :3] = np.diag(inv)
    return LiePoissonSystem(SE3(), h, grad, lambda z: hess, name="heavy-top")


def quadratic_matrix_system(d: int, skew: bool = False) -> LiePoissonSystem:
    """h(μ) = ½ tr(μᵀμ) on gl(d)* (or so(d)* if ``skew``), with a weighted variant for so(d)
    (h = ½ Σ w_ij μ_ij², w_ij = 1 + i + j) so that the flow is not trivial there."""
    alg = SO(d) if skew else GL(d)
    if skew:
        w = (1.0 + np.add.outer(np.arange(d), np.arange(d))).ravel()
    else:
        w = np.ones(d * d)
    return LiePoissonSystem(alg, lambda m: 0.5 * np.sum(w * np.asarray(m) ** 2),
                            lambda m: w * np.asarray(m), lambda m: np.diag(w),
                            name=f"quadratic-{alg.name}".replace("(d)", f"({d})"))
