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

from mpi4py import MPI

import dolfinx
import numpy as np

from ..forms.dictionary import DictionaryForms
from .feedback import FeedbackClassifier
from .infer import FlowResult, _common_normal
from .numpy_resnet import NumpyResNet, dictionary_matrix, n_weights, ridges
from .reduced import EdgeClassifier


def _set_dictionary(net, d: int, network: dict):
    """The dictionary of θⁿ ↦ aⁿ on a network (Galerkin or EAFE): its kind, weight decay λ,
    number m of weights per layer and, for random tanh ridges, their directions and shifts."""
    net.kind = network["dictionary"]
    net.lam = network["weight_decay"]
    net.width = network["ridges"] if net.kind == "random-tanh" else 0
    net.m = n_weights(net.kind, d, net.width)
    net.ridge_w, net.ridge_b = (ridges(d, net.width, network["ridge_scale"],
                                       network["dictionary_seed"])
                                if net.kind == "random-tanh" else (None, None))


class DictionaryNetwork(FeedbackClassifier):
    """The K-class dictionary network; ``a[n]`` holds θⁿ (m numbers, the same on every rank)."""

    replicated_control = True       # checkpoints store the θⁿ as an (N, m) array

    def __init__(self, rho0, anchors, problem: dict, network: dict):
        _set_dictionary(self, rho0[0].function_space.mesh.geometry.dim, network)
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

    def save_weights(self, path, ds=None) -> None:
        """``weights.npz`` (rank 0, atomically); with the :class:`~.data.Dataset` ``ds``, also
        its standardisation and class labels (:meth:`NumpyResNet.classify` on raw points)."""
        if self.comm.rank == 0:
            net = self.numpy_resnet()
            if ds is not None:
                net.mean, net.scale = np.array(ds.mean), np.array(ds.scale)
                net.classes = tuple(ds.classes) or None
            net.save(path)
        self.comm.barrier()


class DictionaryFlow:
    """Inference with a trained :class:`DictionaryNetwork`: the ResNet x + τB(x)θⁿ (defined on
    all of R^d, so points are never projected), with the interface of
    :class:`~fem_mfc.learning.infer.TrainedFlow` (``push``, ``predict``, ``model``).  The
    running potential V of the empirical objective is evaluated as the feedback flow does
    (its P1 interpolant at x_n, n < N; a point off the mesh at its nearest point on it)."""

    def __init__(self, model: DictionaryNetwork):
        from ..pointeval import PointEvaluator
        from .infer import potential_function
        self.model = model
        self.net = model.numpy_resnet()
        self.Vh = potential_function(model)
        self.ev = PointEvaluator(model.mesh) if self.Vh is not None else None

    def push(self, X0, sigma: float = 0.0, rng=None, record: bool = False) -> FlowResult:
        m, net = self.model, self.net
        X = np.array(X0, float)
        kin = np.zeros(len(X))
        pot = np.zeros(len(X))
        path = [X.copy()] if record else None
        for n in range(net.depth):
            if self.Vh is not None:
                Xc, cell, _ = self.ev.clamp(X)
                pot += net.tau * self.ev.evaluate(self.Vh, Xc, cell)
            v = net.velocity(n, X)
            kin += net.tau * 0.5 * (v ** 2).sum(axis=1)
            X = X + net.tau * v
            if sigma > 0:
                X = X + sigma * np.sqrt(net.tau) * _common_normal(rng, X.shape, m.comm)
            if record:
                path.append(X.copy())
        return FlowResult(X, kin, pot, path, 0)

    def predict(self, X0) -> np.ndarray:
        return self.net.predict(X0)


class EdgeDictionaryNetwork(EdgeClassifier):
    """The dictionary network on the EAFE transport as a reduced functional J(θ) for the
    trainers of :mod:`.trainer` (``[network] transport = "eafe"``).

    The Lagrangian of :mod:`.reduced` with κ = 0, no velocity regularisation (δ and α do not
    enter) and the weight decay W = τλ/2 Σ_n|θⁿ|²; the nodal velocity of layer n is
    aⁿ_i = B(x_i)θⁿ with the dictionary B of :mod:`.numpy_resnet` at the mesh nodes, so
      ∂J/∂θⁿ = τλθⁿ + Σ_i B(x_i)ᵀ (∂J/∂aⁿ_i without the regularisation) (MPI-summed),
    and the same chain rule for the Hessian-vector products.  θ (N × m) is the same on every
    rank; the metric is τλI, so the relative residual r = ‖θ − θ̂‖/‖θ̂‖ with θ̂ = θ − ∇J/τλ is
    the one of the Galerkin sweeps of :class:`DictionaryNetwork`.  ``a`` holds the θⁿ as there.
    """

    kinetic = False
    replicated_control = True       # checkpoints store θ (N·m numbers) as an array

    def __init__(self, rho0, anchors, problem: dict, network: dict):
        _set_dictionary(self, rho0[0].function_space.mesh.geometry.dim, network)
        super().__init__(rho0, anchors, problem, network)

    # -- hooks of EdgeClassifier -----------------------------------------------------------
    def _setup_control(self):
        self.n_local = self.N * self.m
        self.Bn = dictionary_matrix(self.kind, self.g.x, self.ridge_w, self.ridge_b)

    def _prepare(self, x):
        """θ (N·m) → the nodal velocities (N, nl, gdim) of all layers."""
        return np.einsum("idm,nm->nid", self.Bn, np.asarray(x).reshape(self.N, self.m))

    def velocity(self, n: int, x=None) -> np.ndarray:
        return (self._prepare(self.x) if x is None else x)[n]

    def _field_cost(self, n, a, a_ext) -> float:
        return 0.0

    def _control_cost(self) -> float:
        return 0.5 * self.lam * self.tau * float(self.x @ self.x)

    def _theta_grad(self, q: np.ndarray) -> np.ndarray:
        return self.comm.allreduce(np.einsum("idm,id->m", self.Bn, q), op=MPI.SUM)

    def _control_grad(self, n, q, a, a_ext, xprep) -> np.ndarray:
        return self._theta_grad(q) + self.tau * self.lam * self.x[n * self.m:(n + 1) * self.m]

    def _control_hess(self, n, hq, da, da_ext, vprep) -> np.ndarray:
        return self._theta_grad(hq) + self.tau * self.lam * self._v_layer(vprep, n)

    def hessp(self, v: np.ndarray) -> np.ndarray:
        self._v = np.asarray(v)
        return super().hessp(v)

    def _v_layer(self, vprep, n):
        return self._v[n * self.m:(n + 1) * self.m]

    def _metric_setup(self):
        pass

    def precondition(self, q: np.ndarray) -> np.ndarray:
        return q / (self.tau * self.lam)

    def apply_metric(self, x: np.ndarray) -> np.ndarray:
        return self.tau * self.lam * x

    def dot(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(x @ y)            # θ is replicated: no reduction

    # -- the interface of DictionaryNetwork ------------------------------------------------
    @property
    def a(self):
        return [t.copy() for t in self.x.reshape(self.N, self.m)]

    def velocity_function(self, n: int):
        f = dolfinx.fem.Function(self.Va, name="velocity")
        f.x.array[:] = self._full(self.velocity(n), self.Va)
        return f

    def numpy_resnet(self) -> NumpyResNet:
        return NumpyResNet(self.kind, self.x.reshape(self.N, self.m).copy(), self.tau,
                           self.anchors.copy(), self.ridge_w, self.ridge_b)

    save_weights = DictionaryNetwork.save_weights
