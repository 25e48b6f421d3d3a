"""Hamiltonian systems as the integrators see them.

The common interface (:class:`HamiltonianSystem`) is the ODE

    z' = B(z) ∇H(z),        B skew (a Poisson structure matrix),

with the gradient, a Jacobian of the vector field for the implicit solves, and counters of
evaluations.  Two families implement it:

* :class:`CanonicalSystem` — constant structure B = 𝕄⁻¹J with J = [[0, I], [−I, 0]] and an
  optional symmetric positive definite "mass" matrix 𝕄 acting on z = (q, p).  With 𝕄 = I this
  is  q' = ∂H/∂p,  p' = −∂H/∂q;  with a FEM mass matrix M (𝕄 = diag(M, M)) it is the
  semi-discrete system  M q' = ∇_p H,  M p' = −∇_q H,  which the generating-function steps solve
  in the M-weighted form  𝕄(ẑ − z) = τ J ∇ψ((z + ẑ)/2)  without inverting 𝕄.
* :class:`~fem_mfc.integrators.lie_poisson.LiePoissonSystem` — B(μ) the Lie–Poisson tensor,
  z' = ad*_{∂h/∂μ} μ.

Canonical systems are built from a sympy expression H(q, p) (all derivatives exact, lambdified)
or from callables H, ∇H, ∇²H and optionally the third-derivative contraction H'''(u, u, ·).
"""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import numpy as np

from .base import Counted


@runtime_checkable
class HamiltonianSystem(Protocol):
    """What an integrator needs from a system z' = B(z)∇H(z)."""

    nfev: int
    njev: int

    def H(self, z: np.ndarray) -> float: ...

    def grad_H(self, z: np.ndarray) -> np.ndarray: ...

    def vector_field(self, z: np.ndarray) -> np.ndarray: ...

    def jacobian(self, z: np.ndarray) -> np.ndarray:
        """∂(B∇H)/∂z as a dense matrix on the flattened state."""
        ...

    def structure(self, z: np.ndarray) -> np.ndarray:
        """The Poisson structure matrix B(z)."""
        ...


def canonical_J(ndof: int) -> np.ndarray:
    """J = [[0, I], [−I, 0]] on z = (q, p) with q, p ∈ R^ndof."""
    eye = np.eye(ndof)
    zero = np.zeros((ndof, ndof))
    return np.block([[zero, eye], [-eye, zero]])


class CanonicalSystem(Counted):
    """z = (q, p) ∈ R^{2n},  z' = 𝕄⁻¹J∇H(z)  (𝕄 = I unless ``mass`` is given).

    Parameters
    ----------
    H, grad_H, hess_H:
        callables of z (flat array of length 2n).
    ndof:
        n, the number of degrees of freedom.
    d3H:
        optional ``d3H(z, u)`` = H'''(z)(u, u, ·), needed by the order-4 generating function.
    mass:
        optional 𝕄: a (2n, 2n) matrix, or a (n, n) matrix M meaning 𝕄 = diag(M, M).
    grad_K, hess_K:
        optional exact ∇K, ∇²K of the modified-Hamiltonian correction K = H''(B∇H, B∇H)
        (supplied by :meth:`from_sympy`); otherwise ∇K is assembled from ``d3H`` and the
        order-4 step uses a simplified Newton iteration.
    """

    def __init__(self, H: Callable, grad_H: Callable, hess_H: Callable | None, ndof: int, *,
                 d3H: Callable | None = None, mass: np.ndarray | None = None,
                 grad_K: Callable | None = None, hess_K: Callable | None = None,
                 name: str = "canonical"):
        self._H, self._grad, self._hess, self._d3 = H, grad_H, hess_H, d3H
        self._grad_K, self._hess_K = grad_K, hess_K
        self.ndof, self.dim, self.name = ndof, 2 * ndof, name
        self.J = canonical_J(ndof)
        if mass is None:
            self.mass = None
            self.B = self.J
        else:
            mass = np.asarray(mass, dtype=float)
            if mass.shape == (ndof, ndof):
                mass = np.block([[mass, np.zeros_like(mass)], [np.zeros_like(mass), mass]])
            if mass.shape != (self.dim, self.dim):
                raise ValueError(f"mass must be ({ndof},{ndof}) or ({self.dim},{self.dim})")
            self.mass = mass
            self.B = np.linalg.solve(mass, self.J)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_sympy(cls, H_expr, q, p, *, mass=None, name: str = "canonical"):
        """Build from a sympy expression ``H_expr`` in the symbols ``q`` and ``p`` (sequences).

        Differentiates symbolically: ∇H, ∇²H, and the correction K = H''(B∇H, B∇H) of the
        order-4 generating function with its gradient and Hessian; all lambdified to numpy.
        """
        import sympy as sp

        q, p = list(q), list(p)
        n = len(q)
        z = q + p
        grad = sp.Matrix([sp.diff(H_expr, v) for v in z])
        hess = sp.hessian(H_expr, z)
        J = sp.Matrix(canonical_J(n).astype(int))
        if mass is None:
            B = J
        else:
            m = np.asarray(mass, dtype=float)
            if m.shape == (n, n):
                m = np.block([[m, np.zeros_like(m)], [np.zeros_like(m), m]])
            B = sp.Matrix(np.linalg.solve(m, canonical_J(n)))
        f = B * grad
        K = sp.expand((f.T * hess * f)[0, 0])
        grad_K = sp.Matrix([sp.diff(K, v) for v in z])
        hess_K = sp.hessian(K, z)

        def lamb(expr, shape):
            fn = sp.lambdify(z, expr, modules="numpy")

            def call(zv):
                return np.asarray(fn(*np.asarray(zv, dtype=float)), dtype=float).reshape(shape)
            return call

        d = 2 * n
        return cls(lamb(H_expr, ()), lamb(grad, (d,)), lamb(hess, (d, d)), n, mass=mass,
                   grad_K=lamb(grad_K, (d,)), hess_K=lamb(hess_K, (d, d)), name=name)

    # -- the protocol ------------------------------------------------------------------------
    def H(self, z):
        return float(self._H(z))

    def grad_H(self, z):
        self.nfev += 1
        return np.asarray(self._grad(z), dtype=float)

    def hess_H(self, z):
        if self._hess is None:
            raise ValueError(f"system {self.name!r} has no Hessian")
        self.njev += 1
        return np.asarray(self._hess(z), dtype=float)

    def vector_field(self, z):
        return self.B @ self.grad_H(z)

    def jacobian(self, z):
        return self.B @ self.hess_H(z)

    def structure(self, z=None):
        return self.B

    # -- the order-4 generating-function correction -------------------------------------------
    @property
    def has_K(self) -> bool:
        return self._grad_K is not None or (self._d3 is not None and self._hess is not None)

    def grad_K(self, z):
        """∇K for K = H''(f, f), f = B∇H:  ∇K = H'''(f, f, ·) − 2 H'' B H'' f."""
        self.nfev += 1
        if self._grad_K is not None:
            return np.asarray(self._grad_K(z), dtype=float)
        if not self.has_K:
            raise ValueError(f"system {self.name!r}: the order-4 generating function needs third "
                             "derivatives (build it with from_sympy or pass d3H)")
        S = np.asarray(self._hess(z), dtype=float)
        f = self.B @ np.asarray(self._grad(z), dtype=float)
        return np.asarray(self._d3(z, f), dtype=float) - 2.0 * S @ (self.B @ (S @ f))

    def hess_K(self, z):
        """Exact ∇²K if known (sympy), else ``None`` (the caller then uses simplified Newton)."""
        if self._hess_K is None:
            return None
        self.njev += 1
        return np.asarray(self._hess_K(z), dtype=float)
