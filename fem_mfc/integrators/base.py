"""Common machinery of the time integrators: the one-step interface, the run loop with invariant
monitors, evaluation counters and the small nonlinear solvers of the implicit steps.

Every integrator discretises an autonomous ODE  z' = f(z)  given by a *system* (a canonical
Hamiltonian system  z' = 𝕄⁻¹J∇H(z)  or a Lie–Poisson system  μ' = ad*_{∂h/∂μ} μ, see
:mod:`.systems` and :mod:`.lie_poisson`).  A one-step map is  z_{n+1} = Φ_τ(z_n);  ``run``
iterates it ``nsteps`` times from ``z0`` and records monitors  m(z_n)  (energy, Casimirs or any
callable) along the way.

Cost is counted by the systems themselves (``system.nfev`` = gradient / vector-field
evaluations, ``system.njev`` = Hessian / Jacobian evaluations), so that integrators of very
different structure are compared on the same currency in work–precision diagrams.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import SolverError

#: Default relative tolerance of the implicit solves: the fixed point is computed to round-off.
ROUNDOFF_TOL = 4e-15


class Counted:
    """Mix-in giving a system the counters ``nfev`` and ``njev`` (reset with
    :meth:`reset_counts`)."""

    nfev: int = 0
    njev: int = 0

    def reset_counts(self) -> None:
        self.nfev = 0
        self.njev = 0


@dataclass
class Trajectory:
    """Result of :meth:`Integrator.run`.

    ``t[k]`` and ``z[k]`` are the stored times and states (every ``store_every``-th step plus the
    last one); ``monitors[name][k]`` the monitor values at those states.  ``nfev``/``njev`` are
    the evaluations spent in the run, ``wall`` its wall-clock time in seconds.
    """

    t: np.ndarray
    z: np.ndarray
    monitors: dict[str, np.ndarray]
    nsteps: int
    tau: float
    nfev: int
    njev: int
    wall: float
    integrator: str = ""
    info: dict = field(default_factory=dict)

    @property
    def final(self) -> np.ndarray:
        return self.z[-1]

    def drift(self, name: str, relative: bool = True) -> np.ndarray:
        """|m(z_k) − m(z_0)| (divided by |m(z_0)| if ``relative`` and m(z_0) ≠ 0), per stored k."""
        m = np.asarray(self.monitors[name], dtype=float)
        d = np.abs(m - m[0])
        if relative:
            scale = np.abs(m[0])
            d = d / np.where(scale > 0, scale, 1.0)
        return d


MonitorSpec = Mapping[str, Callable | str] | Sequence[Callable | str] | None


def resolve_monitors(system, monitors: MonitorSpec) -> dict[str, Callable]:
    """Turn a monitor specification into ``{name: callable(z)}``.

    Accepted: a mapping name → callable, or a sequence of callables (named by ``__name__``) and
    of the strings ``"energy"`` (the system's Hamiltonian) and ``"casimirs"`` (the system's
    Casimir functions, an array per state).
    """
    if monitors is None:
        return {}
    items = monitors.items() if isinstance(monitors, Mapping) else (
        ((m if isinstance(m, str) else getattr(m, "__name__", f"monitor{i}")), m)
        for i, m in enumerate(monitors))
    out = {}
    for name, fn in items:
        if isinstance(fn, str):
            if fn == "energy":
                fn = system.H
            elif fn == "casimirs":
                if not hasattr(system, "casimirs"):
                    raise ValueError(f"system {type(system).__name__} has no Casimirs")
                fn = system.casimirs
            else:
                raise ValueError(f"unknown monitor {fn!r}: use 'energy', 'casimirs' or a callable")
        out[name] = fn
    return out


class Integrator(ABC):
    """A one-step method  z ↦ Φ_τ(z)  for the ODE of ``system``.

    Subclasses implement :meth:`step` (pure: it returns a new array) and set ``order`` (classical
    order p: global error O(τ^p)) and ``symmetric`` (Φ_{−τ} = Φ_τ^{-1}).
    """

    name = "integrator"
    order = 0
    symmetric = False

    def __init__(self, system):
        self.system = system

    @abstractmethod
    def step(self, z: np.ndarray, tau: float) -> np.ndarray:
        """One step z ↦ ẑ of size τ (a new array)."""

    def run(self, z0, tau: float, nsteps: int, monitors: MonitorSpec = None,
            store_every: int = 1) -> Trajectory:
        """Take ``nsteps`` steps of size ``tau`` from ``z0``; store every ``store_every``-th
        state."""
        if nsteps < 0 or store_every < 1:
            raise ValueError("nsteps must be >= 0 and store_every >= 1")
        mons = resolve_monitors(self.system, monitors)
        z = np.array(z0, dtype=float)
        ts, zs = [0.0], [z.copy()]
        hist = {k: [np.asarray(fn(z))] for k, fn in mons.items()}
        f0, j0 = self.system.nfev, self.system.njev
        start = time.perf_counter()
        for n in range(1, nsteps + 1):
            z = self.step(z, tau)
            if n % store_every == 0 or n == nsteps:
                ts.append(n * tau)
                zs.append(z.copy())
                for k, fn in mons.items():
                    hist[k].append(np.asarray(fn(z)))
        wall = time.perf_counter() - start
        return Trajectory(t=np.array(ts), z=np.array(zs),
                          monitors={k: np.array(v) for k, v in hist.items()},
                          nsteps=nsteps, tau=tau, nfev=self.system.nfev - f0,
                          njev=self.system.njev - j0, wall=wall, integrator=self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, order={self.order})"


def _converged(dx_norm: float, x_norm: float, tol: float) -> bool:
    return dx_norm <= tol * max(1.0, x_norm)


def newton(residual: Callable, jacobian: Callable, x0: np.ndarray, tol: float = ROUNDOFF_TOL,
           maxiter: int = 50, what: str = "implicit step") -> np.ndarray:
    """Solve F(x) = 0 by Newton's method  x ← x − J(x)⁻¹F(x)  to relative accuracy ``tol``.

    Iterates until the update is below ``tol``·max(1, |x|) (∞-norms).  If the updates stagnate at
    round-off level (no further decrease, below 1e-11 relative) the iterate is accepted; otherwise
    a :class:`~fem_mfc.errors.SolverError` is raised after ``maxiter`` iterations.  ``jacobian``
    may be a fixed matrix approximation (simplified Newton), which still converges to the exact
    solution of F(x) = 0, only linearly.  A stack of matrices (…, n, n) with residuals (…, n)
    solves independent systems at once (batches of paths).
    """
    def step(x):
        r = residual(x)          # before the Jacobian: it may reuse work of the residual
        A = jacobian(x)
        dx = np.linalg.solve(A, r[..., None])[..., 0] if A.ndim > 2 else np.linalg.solve(A, r)
        return x - dx

    return fixed_point(step, x0, tol, maxiter, what, method="Newton")


def fixed_point(update: Callable, x0: np.ndarray, tol: float = ROUNDOFF_TOL, maxiter: int = 200,
                what: str = "implicit step", method: str = "fixed-point iteration"
                ) -> np.ndarray:
    """Iterate  x ← G(x)  until the change is below ``tol``·max(1, |x|) (∞-norm, over all entries).

    Accepts stagnation at round-off like :func:`newton`; raises
    :class:`~fem_mfc.errors.SolverError` if the iteration does not contract.
    """
    x = np.array(x0, dtype=float)
    prev = np.inf
    for _ in range(maxiter):
        xn = update(x)
        dn, nrm = float(np.max(np.abs(xn - x))), float(np.max(np.abs(xn)))
        x = xn
        if not np.isfinite(dn):
            break
        if _converged(dn, nrm, tol) or (dn >= prev and _converged(dn, nrm, 1e-11)):
            return x
        prev = dn
    raise SolverError(f"{what}: {method} did not converge in {maxiter} iterations "
                      f"(last change {prev:.3e}); reduce the step size")
