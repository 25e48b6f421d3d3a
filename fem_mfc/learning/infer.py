"""Inference with the trained network: the ResNet defined by the per-layer velocity fields.

  x_{n+1} = x_n + τ aⁿ(x_n) (+ σ√τ ξ_n for the stochastic flow),  n = 0..N−1,
  predicted class = argmin_k Φ_k(x_N) = the nearest anchor,

with aⁿ evaluated at the points by :class:`~fem_mfc.learning.pointeval.PointEvaluator` (MPI-safe;
points leaving the mesh are projected back onto it).  The empirical objective of a flow on
labelled points is the sample version of J:
  (1/n) Σ_i [ Φ_{y_i}(x_N^i) + Σ_n τ (½|aⁿ(x_n^i)|² + V(x_n^i)) ].
"""
from __future__ import annotations

from dataclasses import dataclass

import dolfinx
import numpy as np

from ..pointeval import PointEvaluator


@dataclass
class FlowResult:
    X: np.ndarray            # final points x_N
    kinetic: np.ndarray      # Σ_n τ ½|aⁿ(x_n)|² per point
    potential: np.ndarray    # Σ_n τ V(x_n) per point
    path: list | None        # [x_0, ..., x_N] if recorded
    projected: int           # how many point-steps were projected back onto the mesh


class TrainedFlow:
    """The ResNet of a trained :class:`~fem_mfc.learning.feedback.FeedbackClassifier`."""

    def __init__(self, model):
        self.model = model
        self.ev = PointEvaluator(model.mesh)
        self.a = dolfinx.fem.Function(model.Va, name="a")
        self.Vh = potential_function(model)

    def push(self, X0, sigma: float = 0.0, rng=None, record: bool = False) -> FlowResult:
        """Run the (stochastic if σ > 0) ResNet from the rows of X0 (same on every rank)."""
        m = self.model
        X = np.array(X0, float)
        kin = np.zeros(len(X))
        pot = np.zeros(len(X))
        path = [X.copy()] if record else None
        nproj = 0
        for n in range(m.N):
            X, cell, k = self.ev.clamp(X)
            nproj += k
            self.a.x.array[:] = m.a[n]
            v = self.ev.evaluate(self.a, X, cell)
            kin += m.tau * 0.5 * (v ** 2).sum(axis=1)
            if self.Vh is not None:
                pot += m.tau * self.ev.evaluate(self.Vh, X, cell)
            X = X + m.tau * v
            if sigma > 0:
                X = X + sigma * np.sqrt(m.tau) * _common_normal(rng, X.shape, m.comm)
            if record:
                path.append(X.copy())
        X, _, k = self.ev.clamp(X)
        nproj += k
        if record:
            path[-1] = X.copy()
        return FlowResult(X, kin, pot, path, nproj)

    def predict(self, X0) -> np.ndarray:
        return nearest_anchor(self.push(X0).X, self.model.anchors)


def potential_function(model):
    """The running potential V of ``[problem] V`` as a P1 Function of ``model.V`` (evaluated at
    the points of a flow for its empirical objective), or None where V = 0."""
    V = model.Vpot
    if not varies(V):
        return None
    Vh = dolfinx.fem.Function(model.V)
    Vh.interpolate(dolfinx.fem.Expression(V, model.V.element.interpolation_points()))
    return Vh


def _common_normal(rng, shape, comm):
    """Standard normal samples identical on every rank (drawn on rank 0, broadcast)."""
    z = rng.standard_normal(shape) if comm.rank == 0 else None
    return comm.bcast(z, root=0)


def varies(V) -> bool:
    """Is the running potential V (a parsed ``[problem] V``) more than a number?  A constant
    shifts every objective by T·V and is left out of the empirical ones (the PDE network's
    and the torch baselines')."""
    return not (isinstance(V, (int, float)) or _is_constant_zero(V))


def _is_constant_zero(e) -> bool:
    import ufl
    return isinstance(e, ufl.constantvalue.Zero) or (
        isinstance(e, ufl.constantvalue.ScalarValue) and float(e) == 0.0)


def nearest_anchor(X, anchors) -> np.ndarray:
    """argmin_k ½|x − c_k|² for each row of X."""
    d2 = ((X[:, None, :] - anchors[None, :, :]) ** 2).sum(axis=2)
    return d2.argmin(axis=1)


def anchor_loss(X, y, anchors, beta) -> np.ndarray:
    """Φ_{y_i}(x_i) = β/2 |x_i − c_{y_i}|²."""
    return 0.5 * beta * ((X - anchors[y]) ** 2).sum(axis=1)


def evaluate_flow(flow: TrainedFlow, X, y) -> dict:
    """Accuracy and the empirical objective (anchor loss + kinetic + potential) on (X, y)."""
    r = flow.push(X)
    m = flow.model
    pred = nearest_anchor(r.X, m.anchors)
    loss = anchor_loss(r.X, y, m.anchors, m.beta)
    return {"accuracy": float((pred == y).mean()), "anchor_loss": float(loss.mean()),
            "kinetic": float(r.kinetic.mean()),
            "objective": float((loss + r.kinetic + r.potential).mean()),
            "projected": r.projected}


def sample_kde(points, h, n, rng) -> np.ndarray:
    """n samples of the Gaussian KDE (1/m) Σ_j N(p_j, h² I) (same dimension as the points)."""
    idx = rng.integers(len(points), size=n)
    return points[idx] + h * rng.standard_normal((n, points.shape[1]))


def particle_moments(flow: TrainedFlow, ds, bandwidths, n_particles: int, sigma: float,
                     seed: int = 0, layers=None):
    """Particle estimates of π_k E[x_n], π_k E[x_n²] for class k at the given layers.

    Particles start from the class KDEs (the exact ρ_{k,0} before interpolation) and follow the
    stochastic ResNet x_{n+1} = x_n + τ aⁿ(x_n) + σ√τ ξ_n, whose law solves the FP equation.
    Returns {layer: (m1 (K×d), m2 (K×d))}, comparable with ``model.moments(layer)``.
    """
    m = flow.model
    layers = list(range(m.N + 1)) if layers is None else layers
    rng = np.random.default_rng(seed)
    out = {n: (np.zeros((m.K, m.mesh.geometry.dim)), np.zeros((m.K, m.mesh.geometry.dim)))
           for n in layers}
    for k, pk in enumerate(ds.proportions):
        X0 = sample_kde(ds.X_train[ds.y_train == k], bandwidths[k], n_particles, rng)
        X0 = m.comm.bcast(X0, root=0)
        path = flow.push(X0, sigma=sigma, rng=rng, record=True).path
        for n in layers:
            out[n][0][k] = pk * path[n].mean(axis=0)
            out[n][1][k] = pk * (path[n] ** 2).mean(axis=0)
    return out
