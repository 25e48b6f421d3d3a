"""Training the dictionary network a(t, x) = B(x)θ(t) (MODEL §2) by damped successive
approximations (the method of successive approximations of E–Han–Li, with relaxation).

  J(θ) = Σ_k ∫Φ_k ρ_k(T) + ∫∫(Vρ + G(ρ)) + (λ/2)∫|θ|² dt,
  forward  ∂_t ρ_k + ∇·(ρ_k Bθ) = εΔρ_k,
  backward −∂_t u_k − εΔu_k − (Bθ)·∇u_k = V + G'(ρ),  u_k(T) = Φ_k,
  optimality λθ(t) + Σ_k ∫ρ_k Bᵀ∇u_k dx = 0.

The discrete system is the derivative of the step Lagrangian of :mod:`fem_mfc.forms.dictionary`;
the sweeps, the line search and the diagnostics are those of
:class:`~fem_mfc.learning.feedback.FeedbackClassifier` with the control θⁿ ∈ R^m per layer:
after the backward sweep θ̂ⁿ = −(1/τλ)∂ℓⁿ/∂θⁿ, and since ∂J/∂θⁿ = τλ(θⁿ − θ̂ⁿ) the update
θ ← θ + ω(θ̂ − θ) is a gradient step (ω halved until J decreases).  Residual:
  r = (Σ_n τλ|θⁿ − θ̂ⁿ|²)^{1/2} / (Σ_n τλ|θ̂ⁿ|²)^{1/2}.

The trained θ is exported as a :class:`~.numpy_resnet.NumpyResNet` (``weights.npz``);
:class:`DictionaryFlow` is the inference used by the classifier runner (the same NumPy network,
so the PDE side and the reloaded NumPy ResNet agree exactly).
"""
from __future__ import annotations

import dolfinx
import numpy as np
from mpi4py import MPI

from ..forms.dictionary import DictionaryForms
from .feedback import FeedbackClassifier
from .infer import FlowResult, _common_normal
from .numpy_resnet import NumpyResNet, n_weights, ridges


class DictionaryNetwork(FeedbackClassifier):
    """The K-class dictionary network; ``a[n]`` holds θⁿ (m numbers, the same on every rank)."""

    def __init__(self, rho0, anchors, problem: dict, network: dict):
        d = rho0[0].function_space.mesh.geometry.dim
        self.kind = network["dictionary"]
        self.lam = network["weight_decay"]
        self.width = network["width"] if self.kind == "random-tanh" else 0
        self.m = n_weights(self.kind, d, self.width)
        self.ridge_w, self.ridge_b = (ridges(d, self.width, network["ridge_scale"],
                                             network["dictionary_seed"])
                                      if self.kind == "random-tanh" else (None, None))
        super().__init__(rho0, anchors, problem, network)

    # -- hooks of the sweeps ---------------------------------------------------------------
    def _make_forms(self, G, network):
        gdim = self.mesh.geometry.dim
        self.Va = dolfinx.fem.functionspace(self.mesh, ("Lagrange", 1, (gdim,)))  # output only
        return DictionaryForms(self.V, self.K, self.tau, self.eps, self.Vpot, G, self.kind,
                               self.m, self.ridge_w, self.ridge_b)

    def _zero_control(self) -> np.ndarray:
        return np.zeros(self.m)

    def _load_control(self, n: int) -> None:
        self.f.theta.value[:] = self.a[n]

    def _control_cost(self) -> float:
        """The weight decay τλ/2 Σ_n |θⁿ|²."""
        return 0.5 * self.lam * self.tau * float(sum(t @ t for t in self.a))

    def _setup_control_solver(self):
        nloc = self.f.Vtheta.dofmap.index_map.size_local
        self._owned = nloc * self.m

    def _destroy_control_solver(self):
        pass

    def gradient_layer(self) -> np.ndarray:
        """∂ℓ/∂θ of the layer in the slots (Σ over the owned cells of the DG0 vector, global)."""
        vec = dolfinx.fem.assemble_vector(self.f.grad)
        g = vec.array[:self._owned].reshape(-1, self.m).sum(axis=0)
        return self.comm.allreduce(g, op=MPI.SUM)

    def _update_control(self, m: int) -> np.ndarray:
        """θ̂^{m−1} = −(1/τλ) ∂ℓ/∂θ; returns (gap, gap_ref) on rank 0 (zeros elsewhere)."""
        tl = self.tau * self.lam
        self.a_hat[m - 1] = -self.gradient_layer() / tl
        d = self.a[m - 1] - self.a_hat[m - 1]
        out = np.array([tl * d @ d, tl * self.a_hat[m - 1] @ self.a_hat[m - 1]])
        return out if self.comm.rank == 0 else np.zeros(2)

    def gradient(self) -> list[np.ndarray]:
        """∂J/∂θⁿ = τλ(θⁿ − θ̂ⁿ) after :meth:`forward` and :meth:`backward`."""
        return [self.tau * self.lam * (t - th) for t, th in zip(self.a, self.a_hat)]

    # -- outputs -------------------------------------------------------------------------------
    def velocity_function(self, n: int):
        """Bθⁿ interpolated in the P1 vector space (for output)."""
        self._load_control(n)
        a = dolfinx.fem.Function(self.Va, name="velocity")
        a.interpolate(dolfinx.fem.Expression(self.f.velocity,
                                             self.Va.element.interpolation_points()))
        return a

    def peclet(self, h: float) -> float:
        """max over the layers and mesh nodes of |Bθ| h / (2ε)."""
        amax = 0.0
        for n in range(self.N):
            v = self.velocity_function(n).x.array.reshape(-1, self.mesh.geometry.dim)
            amax = max(amax, float(np.sqrt((v ** 2).sum(axis=1)).max()) if len(v) else 0.0)
        amax = self.comm.allreduce(amax, op=MPI.MAX)
        return amax * h / (2 * self.eps) if self.eps > 0 else float("inf")

    def numpy_resnet(self) -> NumpyResNet:
        return NumpyResNet(self.kind, np.array(self.a), self.tau, self.anchors.copy(),
                           self.ridge_w, self.ridge_b)

    def save_weights(self, path) -> None:
        """``weights.npz`` (rank 0, atomically)."""
        if self.comm.rank == 0:
            self.numpy_resnet().save(path)
        self.comm.barrier()


class DictionaryFlow:
    """Inference with a trained :class:`DictionaryNetwork`: the ResNet x + τB(x)θⁿ (defined on
    all of R^d, so points are never projected; the potential V is not evaluated), with the
    interface of
    :class:`~fem_mfc.learning.infer.TrainedFlow` (``push``, ``predict``, ``model``)."""

    def __init__(self, model: DictionaryNetwork):
        self.model = model
        self.net = model.numpy_resnet()

    def push(self, X0, sigma: float = 0.0, rng=None, record: bool = False) -> FlowResult:
        m, net = self.model, self.net
        X = np.array(X0, float)
        kin = np.zeros(len(X))
        path = [X.copy()] if record else None
        for n in range(net.depth):
            v = net.velocity(n, X)
            kin += net.tau * 0.5 * (v ** 2).sum(axis=1)
            X = X + net.tau * v
            if sigma > 0:
                X = X + sigma * np.sqrt(net.tau) * _common_normal(rng, X.shape, m.comm)
            if record:
                path.append(X.copy())
        return FlowResult(X, kin, np.zeros(len(X)), path, 0)

    def predict(self, X0) -> np.ndarray:
        return self.net.predict(X0)
