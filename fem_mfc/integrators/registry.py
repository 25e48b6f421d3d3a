"""Integrators by name, so that a configuration can choose one with a string.

``get_integrator(name, system, **options)`` returns a ready integrator for ``system``:

==================  ============================================================  =====
name                method                                                        order
==================  ============================================================  =====
midpoint            implicit midpoint (generating function ψ = H if canonical)    2
gf4                 generating function ψ = H + (τ²/24) H''(B∇H, B∇H)             4
triple-jump         triple-jump composition of midpoint                           4
suzuki              Suzuki 5-stage composition of midpoint                        4
lphj1               Lie–Poisson HJ, ξ = ∂h/∂μ(μ_n)                                1
lphj2               Lie–Poisson HJ, implicit midpoint generator                   2
lphj4               triple-jump composition of lphj2                              4
rk4                 explicit Runge–Kutta baseline                                 4
backward-euler      implicit Euler baseline                                       1
==================  ============================================================  =====

Options are passed to the constructor (e.g. ``retraction="cayley"`` for the LPHJ family,
``tol``).  Unknown names raise :class:`~fem_mfc.errors.ConfigError`.
"""
from __future__ import annotations

from ..errors import ConfigError
from .baselines import RK4, BackwardEuler, ImplicitMidpoint
from .composition import suzuki, triple_jump
from .generating import GeneratingFunctionIntegrator
from .lie_poisson import LPHJ, LiePoissonSystem
from .systems import CanonicalSystem


def _midpoint(system, **kw):
    if isinstance(system, CanonicalSystem):
        return GeneratingFunctionIntegrator(system, order=2, **kw)
    return ImplicitMidpoint(system, **kw)


def _lie_poisson(order):
    def make(system, **kw):
        if not isinstance(system, LiePoissonSystem):
            raise ConfigError("integrator", "a Lie–Poisson system for the LPHJ family",
                              got=type(system).__name__)
        if order == 4:
            return triple_jump(LPHJ(system, order=2, **kw), name="lphj4")
        return LPHJ(system, order=order, **kw)
    return make


_REGISTRY = {
    "midpoint": _midpoint,
    "gf4": lambda s, **kw: GeneratingFunctionIntegrator(s, order=4, **kw),
    "triple-jump": lambda s, **kw: triple_jump(_midpoint(s, **kw), name="triple-jump"),
    "suzuki": lambda s, **kw: suzuki(_midpoint(s, **kw), name="suzuki"),
    "lphj1": _lie_poisson(1),
    "lphj2": _lie_poisson(2),
    "lphj4": _lie_poisson(4),
    "rk4": lambda s, **kw: RK4(s, **kw),
    "backward-euler": lambda s, **kw: BackwardEuler(s, **kw),
}


def available_integrators() -> list[str]:
    return sorted(_REGISTRY)


def get_integrator(name: str, system, **options):
    """The integrator called ``name`` for ``system`` (see the table in the module docstring)."""
    try:
        make = _REGISTRY[name]
    except KeyError:
        raise ConfigError("integrator", "one of " + ", ".join(available_integrators()),
                          got=name) from None
    return make(system, **options)
