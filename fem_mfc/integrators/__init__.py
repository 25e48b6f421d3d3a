"""Structure-preserving time integrators from Hamilton–Jacobi theory (MODEL §5–§6).

* :mod:`.systems` — the common interface z' = B(z)∇H(z); canonical systems (optionally with a
  mass matrix) from sympy or callables.
* :mod:`.generating` — canonical generating-function integrators (midpoint, order 4).
* :mod:`.lie_algebras`, :mod:`.lie_poisson` — so(3)*, se(3)*, gl(d)*, so(d)*; Ge–Marsden
  Lie–Poisson Hamilton–Jacobi integrators (orders 1, 2, 4), stochastic variant.
* :mod:`.composition` — triple jump and Suzuki compositions.
* :mod:`.baselines` — RK4, backward Euler, generic implicit midpoint, scipy references.
* :mod:`.weight_space` — the rotation network and its Lie–Poisson reduction.
* :mod:`.registry` — ``get_integrator(name, system)``.
"""
from .base import Integrator, Trajectory
from .baselines import RK4, BackwardEuler, ImplicitMidpoint, solve_reference
from .composition import Composition, suzuki, triple_jump
from .generating import GeneratingFunctionIntegrator
from .lie_algebras import GL, SE3, SO, SO3
from .lie_poisson import LPHJ, LiePoissonSystem, StochasticLPHJ
from .registry import available_integrators, get_integrator
from .systems import CanonicalSystem, HamiltonianSystem

__all__ = [
    "Integrator", "Trajectory", "RK4", "BackwardEuler", "ImplicitMidpoint", "solve_reference",
    "Composition", "suzuki", "triple_jump", "GeneratingFunctionIntegrator", "GL", "SE3", "SO",
    "SO3", "LPHJ", "LiePoissonSystem", "StochasticLPHJ", "available_integrators",
    "get_integrator", "CanonicalSystem", "HamiltonianSystem",
]
