"""Baseline one-step methods for any system z' = f(z) (canonical or Lie–Poisson), and a
wrapper of scipy's adaptive solvers for references and work–precision comparisons.

* RK4 (classical explicit Runge–Kutta, order 4): neither symplectic nor orbit-preserving; its
  energy and Casimir errors grow linearly in time on long runs.
* Backward Euler  ẑ = z + τ f(ẑ)  (order 1, dissipative), Newton with ∂f/∂z.
* Implicit midpoint  ẑ = z + τ f((z + ẑ)/2)  (order 2, symmetric) for non-canonical systems;
  on a canonical system it coincides with the ψ = H generating-function step, and on so(3)*
  with a quadratic h it is LPHJ2 with the Cayley retraction (it conserves every quadratic
  invariant, hence |Π|² and the kinetic energy).
"""
from __future__ import annotations

import time

import numpy as np
from scipy.integrate import solve_ivp

from .base import ROUNDOFF_TOL, Integrator, newton


class RK4(Integrator):
    """Classical explicit Runge–Kutta method of order 4."""

    name, order, symmetric = "rk4", 4, False

    def step(self, z, tau):
        f = self.system.vector_field
        z = np.asarray(z, dtype=float)
        k1 = f(z)
        k2 = f(z + 0.5 * tau * k1)
        k3 = f(z + 0.5 * tau * k2)
        k4 = f(z + tau * k3)
        return z + (tau / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


class _ImplicitRK1(Integrator):
    """ẑ = z + τ f(z + θ(ẑ − z)) solved by Newton's method (θ = 1: backward Euler, ½: midpoint)."""

    theta = 1.0

    def __init__(self, system, tol: float = ROUNDOFF_TOL, maxiter: int = 50):
        super().__init__(system)
        self.tol, self.maxiter = tol, maxiter

    def step(self, z, tau):
        z = np.asarray(z, dtype=float)
        shape, th, sys = z.shape, self.theta, self.system
        eye = np.eye(z.size)

        def stage(zh):
            return z + th * (zh.reshape(shape) - z)

        def residual(zh):
            return zh - z.ravel() - tau * sys.vector_field(stage(zh)).ravel()

        def jacobian(zh):
            return eye - th * tau * sys.jacobian(stage(zh))

        guess = (z + tau * sys.vector_field(z)).ravel()
        return newton(residual, jacobian, guess, self.tol, self.maxiter,
                      what=self.name).reshape(shape)


class BackwardEuler(_ImplicitRK1):
    """ẑ = z + τ f(ẑ): order 1, L-stable, energy-dissipating baseline."""

    name, order, symmetric, theta = "backward-euler", 1, False, 1.0


class ImplicitMidpoint(_ImplicitRK1):
    """ẑ = z + τ f((z + ẑ)/2): order 2, symmetric."""

    name, order, symmetric, theta = "midpoint", 2, True, 0.5


def solve_reference(system, z0, t_eval, method: str = "DOP853", rtol: float = 1e-13,
                    atol: float = 1e-13):
    """scipy ``solve_ivp`` on z' = f(z) (flattened); returns (states at t_eval, nfev, wall)."""
    z0 = np.asarray(z0, dtype=float)
    t_eval = np.atleast_1d(np.asarray(t_eval, dtype=float))

    def rhs(_t, y):
        return system.vector_field(y.reshape(z0.shape)).ravel()

    start = time.perf_counter()
    sol = solve_ivp(rhs, (0.0, float(t_eval[-1])), z0.ravel(), method=method, t_eval=t_eval,
                    rtol=rtol, atol=atol)
    wall = time.perf_counter() - start
    if not sol.success:
        raise RuntimeError(f"solve_ivp({method}) failed: {sol.message}")
    return sol.y.T.reshape((len(t_eval),) + z0.shape), sol.nfev, wall
