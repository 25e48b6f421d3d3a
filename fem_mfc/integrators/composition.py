"""Symmetric composition methods: raising the order of a symmetric one-step method.

Given a symmetric method Φ_τ of even order p, the composition

    Ψ_τ = Φ_{γ_s τ} ∘ … ∘ Φ_{γ_1 τ},     γ palindromic,  Σ γ_i = 1,  Σ γ_i^{p+1} = 0,

is symmetric of order p + 2 (Yoshida 1990; Hairer–Lubich–Wanner, GNI §II.4).  Coefficients:

* triple jump (s = 3):  γ_1 = γ_3 = 1/(2 − 2^{1/(p+1)}),  γ_2 = −2^{1/(p+1)}/(2 − 2^{1/(p+1)});
* Suzuki's fractal (s = 5):  γ_1 = γ_2 = γ_4 = γ_5 = 1/(4 − 4^{1/(p+1)}),
  γ_3 = −4^{1/(p+1)}/(4 − 4^{1/(p+1)})  (smaller error constant, all sub-steps shorter).

Compositions of symplectic (Poisson, orbit-preserving) maps keep that property, so the
triple jump of the midpoint rule is a symplectic order-4 method and the triple jump of LPHJ2 is
the order-4 Lie–Poisson integrator LPHJ4.
"""
from __future__ import annotations

import numpy as np

from .base import Integrator


def triple_jump_coefficients(p: int = 2) -> np.ndarray:
    a = 2.0 ** (1.0 / (p + 1))
    g = 1.0 / (2.0 - a)
    return np.array([g, -a * g, g])


def suzuki_coefficients(p: int = 2) -> np.ndarray:
    a = 4.0 ** (1.0 / (p + 1))
    g = 1.0 / (4.0 - a)
    return np.array([g, g, -a * g, g, g])


class Composition(Integrator):
    """Ψ_τ = Φ_{γ_s τ} ∘ … ∘ Φ_{γ_1 τ} for a symmetric base method and palindromic γ."""

    symmetric = True

    def __init__(self, base: Integrator, gammas, name: str | None = None):
        super().__init__(base.system)
        if not base.symmetric or base.order % 2:
            raise ValueError(f"composition needs a symmetric base method of even order, "
                             f"got {base!r}")
        self.base, self.gammas = base, np.asarray(gammas, dtype=float)
        if not np.allclose(self.gammas, self.gammas[::-1]) or abs(self.gammas.sum() - 1) > 1e-14:
            raise ValueError("composition coefficients must be palindromic and sum to 1")
        self.order = base.order + 2
        self.name = name or f"composition({base.name})"

    def step(self, z, tau):
        for g in self.gammas:
            z = self.base.step(z, g * tau)
        return z


def triple_jump(base: Integrator, name: str | None = None) -> Composition:
    """Order p + 2 from a symmetric order-p method by the triple jump."""
    return Composition(base, triple_jump_coefficients(base.order),
                       name or f"triple-jump({base.name})")


def suzuki(base: Integrator, name: str | None = None) -> Composition:
    """Order p + 2 from a symmetric order-p method by Suzuki's 5-stage fractal composition."""
    return Composition(base, suzuki_coefficients(base.order), name or f"suzuki({base.name})")
