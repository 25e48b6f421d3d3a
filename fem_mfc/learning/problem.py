"""The learning problems (MODEL §2, §8) as typed objects, built once from a validated config.

:class:`ClassifierProblem` (``formulation = "classifier"``) and :class:`GenerativeProblem`
(``"generative"``) say what a run learns and how: the data set, the equation of the class
densities, the network, its training and the output cadence.  The runners of
:mod:`fem_mfc.runs` build one with ``from_config(cfg)`` and read its fields; the network
classes (:mod:`.feedback`, :mod:`.reduced`, :mod:`.dictionary`, :mod:`.generative`) and
:func:`.data.load` still take the config sections they read (``equation``, ``network``,
``data``: read-only views of the validated sections), so the schema stays the one place that
knows the key names.  ``'auto'`` choices (``[network] transport``, ``[training] method``)
are resolved here, once.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, Mapping, Optional

from ..config import resolve_training

TOL_SECOND_ORDER = 1e-6   # [training] tol = 'auto' for newton / lbfgs (quadratic, superlinear)
TOL_SWEEPS = 1e-3         # ... and for the sweeps (a gradient method: linear convergence)


def _frozen(section: dict) -> Mapping[str, Any]:
    return MappingProxyType(dict(section))


@dataclass(frozen=True)
class Baseline:
    """The torch baselines trained beside the PDE network (``[training]`` baseline keys):
    the ResNet of the same depth and, with ``node``, the neural ODE."""

    epochs: int                  # at most; early stopping after ``patience``
    lr: float
    hidden: int                  # hidden width of each residual block
    node: bool                   # also the neural ODE
    patience: int                # epochs without improvement that make a plateau (0: none)
    seeds: int                   # runs per baseline (data seed, data seed + 1, ...)


@dataclass(frozen=True)
class Training:
    """How the network is trained: transport and method with ``'auto'`` resolved."""

    transport: str               # 'eafe' or 'galerkin'
    method: str                  # 'newton', 'lbfgs' or 'sweeps'
    max_sweeps: int
    relaxation: float
    tol: float

    @classmethod
    def from_config(cls, cfg: dict) -> "Training":
        t = cfg["training"]
        transport, method = resolve_training(cfg)
        tol = t["tol"]
        if tol == "auto":
            tol = TOL_SWEEPS if method == "sweeps" else TOL_SECOND_ORDER
        return cls(transport, method, t["max_sweeps"], t["relaxation"], float(tol))

    @property
    def args(self) -> tuple:
        """(max_sweeps, relaxation, tol): the positional arguments of the models' train."""
        return self.max_sweeps, self.relaxation, self.tol


@dataclass(frozen=True)
class LearningProblem:
    """What every learning run shares; see the module docstring."""

    title: str
    data: Mapping[str, Any]      # [data], for data.load
    seed: int                    # of the data set and its split
    bandwidth: Any               # KDE rule ('scott', 'silverman') or a number
    equation: Mapping[str, Any]  # [problem] (T, sigma, steps, V, G, ...), for the networks
    sigma: float
    network: Mapping[str, Any]   # [network], for the networks
    velocity: str                # finite element of a(t_n, .): 'P1' or 'DG0'
    training: Training
    every: int                   # write fields every `every` layers

    @classmethod
    def _fields(cls, cfg: dict) -> dict:
        d, p, n = cfg["data"], cfg["problem"], cfg["network"]
        return dict(title=cfg["run"]["title"], data=_frozen(d), seed=d["seed"],
                    bandwidth=d["bandwidth"], equation=_frozen(p), sigma=p["sigma"],
                    network=_frozen(n), velocity=n["velocity"],
                    training=Training.from_config(cfg), every=cfg["output"]["every"])

    @property
    def transport(self) -> str:
        return self.training.transport


@dataclass(frozen=True)
class ClassifierProblem(LearningProblem):
    """A K-class classifier (MODEL §2): the feedback or dictionary network, the particle
    check of the PDE moments and the optional torch baseline."""

    dictionary: bool             # [network] kind = 'dictionary'
    particles: int               # particles through the learned flow (0: no check)
    baseline: Optional[Baseline]  # None: no baseline
    fresh: int                   # fresh generator sample for accuracies (0: none)

    @classmethod
    def from_config(cls, cfg: dict) -> "ClassifierProblem":
        t = cfg["training"]
        base = (Baseline(t["epochs"], t["lr"], t["hidden"], t["node"], t["patience"],
                         t["seeds"]) if t["baseline"] else None)
        return cls(**cls._fields(cfg), dictionary=cfg["network"]["kind"] == "dictionary",
                   particles=t["particles"], baseline=base, fresh=t["fresh"])


@dataclass(frozen=True)
class Generative:
    """The terminal cost β KL_η(ρ(T) ‖ N(0, s²I)) and the use of the learned map."""

    kl_weight: float             # β
    kl_floor: float              # η
    target_std: float            # s
    samples: int                 # drawn by running the flow backward from the target
    score: bool                  # probability-flow velocity a − ε∇log ρ in the map

    def options(self) -> dict:
        """The ``generative`` argument of the flow classes."""
        return asdict(self)


@dataclass(frozen=True)
class GenerativeProblem(LearningProblem):
    """One population flowed to N(0, s²I) (MODEL §8)."""

    generative: Generative

    @classmethod
    def from_config(cls, cfg: dict) -> "GenerativeProblem":
        g = cfg["generative"]
        return cls(**cls._fields(cfg), generative=Generative(
            g["kl_weight"], g["kl_floor"], g["target_std"], g["samples"], g["score"]))


__all__ = ["Baseline", "ClassifierProblem", "Generative", "GenerativeProblem",
           "LearningProblem", "Training"]
