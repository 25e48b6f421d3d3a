"""Lie–Poisson systems on g* and Lie–Poisson Hamilton–Jacobi (Ge–Marsden) integrators.

Equation (the (−) Lie–Poisson equation, left-invariant/body form, see :mod:`.lie_algebras`):

    μ' = ad*_{∂h/∂μ} μ          (so(3): Π' = Π × Ω, Ω = ∂h/∂Π).

Its flow acts by the coadjoint action, μ(t) = Ad*_{g(t)} μ(0).  The LPHJ step replaces g(τ) by
the group element of a truncated generating function, g_n = exp(τ ξ_n) (or Cayley):

    μ_{n+1} = Ad*_{exp(τ ξ_n)} μ_n,
    order 1:  ξ_n = ∂h/∂μ(μ_n)                              (explicit, "Lie–Euler")
    order 2:  ξ_n = ∂h/∂μ((μ_n + μ_{n+1})/2)                 (implicit midpoint, symmetric)
    order 4:  symmetric triple-jump composition of the order-2 step (:mod:`.composition`).

Every iterate stays on the coadjoint orbit of μ_0, so Casimirs are conserved to round-off for
any step size, including the inexact iterates of the implicit solve.  When h is quadratic
(plus linear) the order-2 step also conserves h exactly, on any g: the discrete-gradient
identity h(μ_{n+1}) − h(μ_n) = ⟨μ_{n+1} − μ_n, ∂h/∂μ(μ̄)⟩ holds for quadratic h, and
⟨Ad*_{g}μ, ξ⟩ = ⟨μ, Ad_{g}ξ⟩ = ⟨μ, ξ⟩ for g = exp(τξ) or cay(τξ) (the tests check it).

Note on MODEL §6: it writes the step as μ_{n+1} = Ad*_{g_n^{-1}} μ_n with g_n = exp(τ ξ_n),
ξ_n ≈ ∂h/∂μ.  With the standard Ad* (defined by ⟨Ad*_g μ, η⟩ = ⟨μ, Ad_g η⟩) that map is
consistent with μ' = −ad*_{∂h/∂μ} μ, i.e. it runs the rigid body Π' = Π × Ω backwards in time
(tests/test_lie_poisson.py proves it against a reference solution).  The correct step for the
(−) equation is Ad*_{g_n} with g_n = exp(+τξ_n) (equivalently Ad*_{g^{-1}} with g = exp(−τξ_n)).

Stochastic variant (:class:`StochasticLPHJ`): the Stratonovich SDE

    dμ = ad*_{∂h/∂μ dt + Σ_i ζ_i(μ) ∘ dW_i} μ

is stepped with the generator τ ∂h/∂μ(μ̄) + Σ_i ζ_i(μ̄) ΔW_i, μ̄ = (μ_n + μ_{n+1})/2 (midpoint,
hence Stratonovich), ΔW_i ~ N(0, τ) from a seedable numpy Generator.  Coadjoint orbits are
preserved path by path.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .base import ROUNDOFF_TOL, Counted, Integrator, fixed_point, newton


class LiePoissonSystem(Counted):
    """μ' = ad*_{∂h/∂μ} μ on g* for an algebra of :mod:`.lie_algebras`.

    ``h``, ``grad_h`` (and optionally ``hess_h``) are callables of μ; for so(3) they may be
    vectorised over leading axes (batches of paths).
    """

    def __init__(self, algebra, h: Callable, grad_h: Callable, hess_h: Callable | None = None,
                 name: str = "lie-poisson"):
        self.algebra, self._h, self._grad, self._hess = algebra, h, grad_h, hess_h
        self.dim, self.name = algebra.dim, name

    def H(self, mu):
        return self._h(mu)

    def grad_H(self, mu):
        self.nfev += 1
        return np.asarray(self._grad(mu), dtype=float)

    def vector_field(self, mu):
        return self.algebra.ad_star(self.grad_H(mu), mu)

    def casimirs(self, mu):
        return self.algebra.casimirs(mu)

    def structure(self, mu):
        """Lie–Poisson tensor B(μ): B e_k = ad*_{e_k} μ, so that μ' = B(μ)∇h(μ)."""
        eye = np.eye(self.dim)
        return np.stack([self.algebra.ad_star(eye[k], mu) for k in range(self.dim)], axis=-1)

    def jacobian(self, mu):
        """∂/∂μ of ad*_{∇h(μ)} μ:  δ ↦ ad*_{∇²h δ} μ + ad*_{∇h} δ  (needs ``hess_h``)."""
        if self._hess is None:
            raise ValueError(f"system {self.name!r} has no Hessian of h")
        self.njev += 1
        mu = np.asarray(mu, dtype=float)
        S = np.asarray(self._hess(mu), dtype=float)
        g = np.asarray(self._grad(mu), dtype=float)
        eye = np.eye(self.dim)
        cols = [self.algebra.ad_star(S @ eye[k], mu) + self.algebra.ad_star(g, eye[k])
                for k in range(self.dim)]
        return np.stack(cols, axis=-1)


def _retraction(algebra, retraction: str):
    if retraction == "exp":
        return algebra.coadjoint_exp
    if retraction == "cayley":
        return algebra.coadjoint_cayley
    raise ValueError(f"retraction must be 'exp' or 'cayley', got {retraction!r}")


class LPHJ(Integrator):
    """Lie–Poisson Hamilton–Jacobi step μ_{n+1} = Ad*_{g(τξ_n)} μ_n of order 1 or 2.

    ``retraction``: ``"exp"`` (Rodrigues for so(3)/se(3), scipy expm otherwise) or ``"cayley"``.
    The order-2 equation x = G(x) := Ad*_{g(τ∂h/∂μ((μ_n + x)/2))} μ_n is solved to round-off,
    started from the order-1 step, by

    * ``solver="newton"`` (needs ∂²h/∂μ²; pays off for large τ|∂²h||μ|): quasi-Newton on x − G(x)
      with the matrix I − (τ/2) B(G(x)) ∂²h/∂μ²(m), B the Lie–Poisson tensor (it drops the
      O(τ|ξ|) terms of dexp, so the iteration contracts like O(τ²) per step instead of O(τ));
    * ``solver="fixed-point"`` (default, cheapest per iteration): x ← G(x), contraction
      ≈ (τ/2)|∂²h||μ|.

    Every iterate is Ad*_g μ_n for some g, so it lies on the orbit whichever solver is used.
    """

    def __init__(self, system: LiePoissonSystem, order: int = 2, retraction: str = "exp",
                 tol: float = ROUNDOFF_TOL, maxiter: int = 200, solver: str = "fixed-point"):
        super().__init__(system)
        if order not in (1, 2):
            raise ValueError("LPHJ steps exist for order 1 and 2 (order 4: compose order 2)")
        if solver not in ("newton", "fixed-point"):
            raise ValueError(f"solver must be 'newton' or 'fixed-point', got {solver!r}")
        self.solver = solver
        self.order, self.symmetric = order, order == 2
        self.act = _retraction(system.algebra, retraction)
        self.retraction = retraction
        self.name = f"lphj{order}" + ("" if retraction == "exp" else "-cayley")
        self.tol, self.maxiter = tol, maxiter

    def generator(self, mu, mu_next, tau):
        """τ ξ_n for the step μ_n → μ_{n+1} (order 2: evaluated at the midpoint)."""
        return tau * self.system.grad_H(0.5 * (mu + mu_next))

    def _solve(self, mu, first, tau):
        """The implicit order-2 equation x = Ad*_{g(generator(μ, x))} μ from the guess ``first``."""
        G = lambda x: self.act(self.generator(mu, x, tau), mu)  # noqa: E731
        if self.solver == "fixed-point":
            return fixed_point(G, first, self.tol, self.maxiter, what=self.name)
        sys, eye = self.system, np.eye(self.system.dim)
        cache = {}

        def residual(x):
            cache["Gx"] = G(x)
            return x - cache["Gx"]

        def jacobian(x):
            sys.njev += 1
            S = np.asarray(sys._hess(0.5 * (mu + x)), dtype=float)
            return eye - 0.5 * tau * (sys.structure(cache["Gx"]) @ S)

        return newton(residual, jacobian, first, self.tol, self.maxiter, what=self.name)

    def step(self, mu, tau):
        mu = np.asarray(mu, dtype=float)
        first = self.act(tau * self.system.grad_H(mu), mu)
        if self.order == 1:
            return first
        return self._solve(mu, first, tau)

    def step_generator(self, mu, tau):
        """(μ_{n+1}, τξ_n): the step and the Lie-algebra element of its group element
        (for reconstruction, e.g. rotating the particles of the weight-space model)."""
        mu = np.asarray(mu, dtype=float)
        if self.order == 1:
            xi = tau * self.system.grad_H(mu)
            return self.act(xi, mu), xi
        nxt = self.step(mu, tau)
        return nxt, self.generator(mu, nxt, tau)


class StochasticLPHJ(LPHJ):
    """Stratonovich Lie–Poisson SDE  dμ = ad*_{∇h dt + Σ_i ζ_i ∘ dW_i} μ  (midpoint LPHJ step).

    ``noise``: a sequence of generators ζ_i, each a fixed algebra element (array) or a callable
    ζ_i(μ) (e.g. ∂h_i/∂μ of a stochastic Hamiltonian h_i).  ``rng``: a numpy Generator or a seed.
    States may carry leading batch axes (independent paths) when the algebra and h are
    vectorised (so(3)): each path gets its own Brownian increments.  Weak order 1.
    """

    name = "slphj"
    symmetric = False

    def __init__(self, system: LiePoissonSystem, noise: Sequence, rng=None,
                 retraction: str = "exp", tol: float = ROUNDOFF_TOL, maxiter: int = 200,
                 solver: str = "fixed-point"):
        super().__init__(system, order=2, retraction=retraction, tol=tol, maxiter=maxiter,
                         solver=solver)
        self.order, self.symmetric, self.name = 1, False, "slphj"
        self.noise = list(noise)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self._dW = None

    def _noise_generator(self, m):
        out = 0.0
        for i, zeta in enumerate(self.noise):
            z = np.asarray(zeta(m) if callable(zeta) else zeta, dtype=float)
            out = out + z * self._dW[..., i:i + 1]
        return out

    def generator(self, mu, mu_next, tau):
        m = 0.5 * (mu + mu_next)
        return tau * self.system.grad_H(m) + self._noise_generator(m)

    def step(self, mu, tau):
        mu = np.asarray(mu, dtype=float)
        self._dW = self.rng.normal(0.0, np.sqrt(abs(tau)), size=mu.shape[:-1] + (len(self.noise),))
        first = self.act(tau * self.system.grad_H(mu) + self._noise_generator(mu), mu)
        return self._solve(mu, first, tau)
