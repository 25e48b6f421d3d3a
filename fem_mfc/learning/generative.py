"""Generative flow (MODEL §8): one population transported to a standard Gaussian.

Training minimises, over the feedback velocity a (the label-blind network with K = 1),

  J(a) = ∫_0^T∫_Ω ½|a|² ρ + β KL_η(ρ(T) ‖ N_Ω),
  ∂_t ρ + ∇·(ρa) = εΔρ,  ρ(0) = ρ_0 (KDE of the data),

  KL_η(ρ ‖ N_Ω) = ∫_Ω (ρ + η) log((ρ + η)/N_Ω) dx,   N_Ω = N(0, s²I)/Z_Ω (Z_Ω = ∫_Ω N(0, s²I)),

η ≥ 0 a small floor that keeps the logarithm finite where the Galerkin density touches zero.
KL is a functional of ρ(T), so the terminal condition of the adjoint is its derivative,

  u(T) = β (log((ρ(T) + η)/N_Ω) + 1),

coupled to the density.  It is handled inside the sweeps of :mod:`.feedback` like congestion:
before every backward sweep u^{N+1} is the L² projection onto P1 of β(log((ρ^N+η)/N_Ω) + 1),
i.e. M u^{N+1} = ∂(β KL_η)/∂ρ^N (the derivative of the discrete KL_η by ``ufl.derivative``), so
the sweep's â is still the exact discrete gradient direction and the line search on J stays
monotone.  The reported KL (history, ``KL_final``) is the exact ∫ρ log(ρ/N_Ω) (ρ > 0 part).

**The learned map.**  With noise, the deterministic ResNet x ↦ x + τaⁿ(x) does not transport ρⁿ
to ρ^{n+1}: FP is ∂_t ρ + ∇·(ρ v) = 0 with the *probability-flow* velocity v = a − ε∇log ρ.
The map used for likelihoods and sampling is therefore

  x_{n+1} = x_n + τ vⁿ(x_n),   vⁿ = aⁿ − ε sⁿ⁺¹,   sⁿ⁺¹ = P1 projection of ∇ρⁿ⁺¹/(ρⁿ⁺¹ + η),

(``score = false`` drops the diffusion's contribution ε s and uses a alone).  The model density
is the pull-back of N_Ω (change of variables along the flow):

  log p(x_0) = log N_Ω(x_N) + Σ_n log|det(I + τ∇vⁿ(x_n))|

(∇vⁿ is cell-wise constant for P1 v).  Sampling runs the flow backward from N_Ω: each step
x_n + τ vⁿ(x_n) = x_{n+1} is solved by Newton's method (cell-wise Jacobian I + τ∇vⁿ), safeguarded
by the fixed-point step x_n ← x_{n+1} − τ vⁿ(x_n) (a contraction when τ Lip(vⁿ) < 1).
Points are evaluated at their projection onto the mesh but not moved, so the forward map is
exactly the inverse of the sampler.  All log-likelihoods are in standardised data coordinates.

**Transport and trainer.**  :class:`GenerativeFlow` is the Galerkin discretisation above,
trained by the sweeps (``transport = "galerkin"``, ``method = "sweeps"``);
:class:`EdgeGenerativeFlow` (the default) the same J on the EAFE transport with lumped masses
(:mod:`.eafe`, :mod:`.reduced`), trained by ``[training] method`` (Newton–CG by default).
"""
from __future__ import annotations

import math

from mpi4py import MPI

import dolfinx
import numpy as np
import ufl

from ..errors import ConfigError, SolverError
from ..pointeval import PointEvaluator
from ..solvers.linear import LinearStepper
from . import data
from .feedback import FeedbackClassifier
from .reduced import EdgeClassifier


def log_target(s: float, gdim: int, Z: float):
    """log N_Ω at the rows of X: N(0, s²I) in ``gdim`` dimensions restricted to a mesh that
    holds the mass Z of it."""
    c = gdim / 2 * math.log(2 * math.pi * s * s) + math.log(Z)
    return lambda X: -(X ** 2).sum(axis=1) / (2 * s * s) - c


class GenerativeFlow(FeedbackClassifier):
    """The feedback network with K = 1 and the terminal cost β KL_η(ρ(T) ‖ N(0, s²I)).

    ``generative``: the ``[generative]`` config section (kl_weight β, kl_floor η, target_std s).
    """

    def __init__(self, rho0, problem: dict, network: dict, generative: dict):
        if network["velocity"] != "P1":
            raise ConfigError("network.velocity", "'P1' for the generative flow (its Jacobian "
                              "enters the log-likelihood)", network["velocity"])
        gdim = rho0.function_space.mesh.geometry.dim
        super().__init__([rho0], np.zeros((1, gdim)), problem, network)
        self.kl_weight = generative["kl_weight"]
        self.eta = generative["kl_floor"]
        s = generative["target_std"]
        x = ufl.SpatialCoordinate(self.mesh)
        r2 = ufl.inner(x, x)
        self.Z = self._sum(dolfinx.fem.form(
            ufl.exp(-r2 / (2 * s * s)) / (2 * math.pi * s * s) ** (gdim / 2) * ufl.dx))
        self.log_target = log_target(s, gdim, self.Z)
        logN = -r2 / (2 * s * s) - gdim / 2 * math.log(2 * math.pi * s * s) - math.log(self.Z)
        rho = self.f.rho_cur[0]
        kl_eta = (rho + self.eta) * (ufl.ln(rho + self.eta) - logN) * ufl.dx
        self._terminal_form = dolfinx.fem.form(self.kl_weight * kl_eta)
        pos = ufl.gt(rho, 1e-300)
        self._kl_form = dolfinx.fem.form(
            ufl.conditional(pos, rho * (ufl.ln(ufl.conditional(pos, rho, 1.0)) - logN), 0.0)
            * ufl.dx)
        w, v = ufl.TestFunction(self.V), ufl.TrialFunction(self.V)
        self._u_T = dolfinx.fem.Function(self.V, name="u_T")
        self._terminal_adjoint = LinearStepper(
            v * w * ufl.dx, ufl.derivative(self.kl_weight * kl_eta, rho, w), "generative_terminal_")
        self._pairing = dolfinx.fem.form(rho * self.f.u_cur[0] * ufl.dx)
        self.neg_tol = 0.5 * self.eta if self.eta > 0 else self.neg_tol
        self.kl = math.nan

    def forward(self, a=None) -> float:
        """FP steps; J = kinetic + β KL_η, and ``terminal``/``kl`` = the exact KL(ρ^N ‖ N_Ω)."""
        J = super().forward(a)
        self.kl = self.terminal = self._sum(self._kl_form)     # slots hold ρ^N
        return J

    def kl_of(self, n: int) -> float:
        """KL(ρⁿ ‖ N_Ω) of layer n."""
        self.f.rho_cur[0].x.array[:] = self.rho[0][n]
        return self._sum(self._kl_form)

    def value_identity(self) -> float:
        """The classifier's identity (:meth:`FeedbackClassifier.value_identity`) with the
        terminal cost's part, β KL_η(ρ^N) − ∫ρ^N u^{N+1}: the telescoping sum ends in
        ⟨ρ^N, u^{N+1}⟩ = ∂(β KL_η)/∂ρ^N · ρ^N (u^{N+1} its projection), which is the terminal
        cost itself only for a cost linear in ρ (the classifier's anchors).  Equals J for any
        control whose adjoint has been swept (:meth:`backward`)."""
        val = super().value_identity()
        f = self.f
        f.rho_cur[0].x.array[:] = self.rho[0][self.N]
        f.u_cur[0].x.array[:] = self.u[0][self.N + 1]
        return val + self._sum(self._terminal_form) - self._sum(self._pairing)

    def backward(self) -> float:
        """u^{N+1} = P1 projection of β(log((ρ^N+η)/N_Ω) + 1), then the adjoint sweep."""
        self.f.rho_cur[0].x.array[:] = self.rho[0][self.N]
        self._terminal_adjoint.step(self._u_T, "terminal condition u(T) = log(rho/N) + 1")
        self.u[0][self.N + 1] = self._u_T.x.array.copy()
        return super().backward()

    def destroy(self):
        super().destroy()
        self._terminal_adjoint.destroy()


class EdgeGenerativeFlow(EdgeClassifier):
    """The generative flow on the EAFE transport as a reduced functional J(a) for the trainers
    of :mod:`.trainer` (``[network] transport = "eafe"``): the Lagrangian of :mod:`.reduced`
    with K = 1, κ = 1 and the lumped terminal cost

      T(ρ^N) = β Σ_i m_i (ρ_i^N + η)(log(ρ_i^N + η) − log N_Ω(x_i)),

    so u^{N+1} = β(log((ρ^N + η)/N_Ω) + 1) at the nodes (no projection: the lumped mass makes
    ∂T/∂ρ_i = m_i u_i) and the terminal Hessian is diagonal, T''δρ = β m δρ/(ρ + η).  Every
    density stays non-negative (EAFE), so the floor η only regularises the logarithm.  The
    reported KL is Σ_i m_i ρ_i log(ρ_i/N_Ω(x_i)) over ρ_i > 0.  The interface of
    :class:`GenerativeFlow` for the runner and :class:`FlowMap`."""

    def __init__(self, rho0, problem: dict, network: dict, generative: dict):
        gdim = rho0.function_space.mesh.geometry.dim
        super().__init__([rho0], np.zeros((1, gdim)), problem, network)
        self.kl_weight = generative["kl_weight"]
        self.eta = generative["kl_floor"]
        s = generative["target_std"]
        x = ufl.SpatialCoordinate(self.mesh)
        r2 = ufl.inner(x, x)
        self.Z = self.comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(
            ufl.exp(-r2 / (2 * s * s)) / (2 * math.pi * s * s) ** (gdim / 2) * ufl.dx)),
            op=MPI.SUM)
        self.log_target = log_target(s, gdim, self.Z)
        self.logN = self.log_target(self.g.x)
        self.kl = math.nan

    def _terminal_value(self) -> float:
        r = self._rho[0][self.N] + self.eta
        return self.kl_weight * float(self.g.m @ (r * (np.log(r) - self.logN)))

    def _terminal_adjoint(self) -> list:
        r = self._rho[0][self.N] + self.eta
        return [self.kl_weight * (np.log(r) - self.logN + 1.0)]

    def _terminal_hessian(self, drho: list) -> list:
        return [self.kl_weight * drho[0] / (self._rho[0][self.N] + self.eta)]

    def _kl_local(self, rho) -> float:
        pos = rho > 1e-300
        return float(self.g.m[pos] @ (rho[pos] * (np.log(rho[pos]) - self.logN[pos])))

    def forward(self, x=None) -> float:
        """FP sweep; J = kinetic + regularisation + β KL_η; ``terminal``/``kl`` = KL(ρ^N‖N_Ω)."""
        J = super().forward(x)
        self.kl = self.terminal = self.kl_of(self.N)
        return J

    def kl_of(self, n: int) -> float:
        """KL(ρⁿ ‖ N_Ω) of layer n (lumped)."""
        return self.comm.allreduce(self._kl_local(self._rho[0][n]), op=MPI.SUM)


class FlowMap:
    """The learned invertible map x_0 ↦ x_N of a trained :class:`GenerativeFlow` (module doc).

    ``model`` needs ``mesh``, ``Va``, ``a``, ``N``, ``tau``, ``comm`` and ``log_target``, and
    for the score (``score`` and ε > 0) ``V``, ``eps``, ``eta`` and the densities ``rho``.  A
    saved flow (:class:`~.saved.GenerativeModel`) holds vⁿ itself as its ``a``: ``score =
    False``."""

    def __init__(self, model: GenerativeFlow, score: bool = True):
        self.model = model
        self.ev = PointEvaluator(model.mesh)
        d = model.mesh.geometry.dim
        self.d = d
        Va = model.Va
        self.v = [dolfinx.fem.Function(Va, name=f"v_{n}") for n in range(model.N)]
        Vg = dolfinx.fem.functionspace(model.mesh, ("DG", 0, (d, d)))
        self.grad = [dolfinx.fem.Function(Vg, name=f"grad_v_{n}") for n in range(model.N)]
        proj = None
        if score and model.eps > 0:
            rho = dolfinx.fem.Function(model.V)
            b, s = ufl.TestFunction(Va), ufl.TrialFunction(Va)
            proj = LinearStepper(ufl.inner(s, b) * ufl.dx,
                                 ufl.inner(ufl.grad(rho) / (rho + model.eta), b) * ufl.dx,
                                 "generative_score_")
            score_fn = dolfinx.fem.Function(Va)
        for n in range(model.N):
            self.v[n].x.array[:] = model.a[n]
            if proj is not None:
                rho.x.array[:] = model.rho[0][n + 1]
                proj.step(score_fn, f"score of layer {n + 1}")
                self.v[n].x.array[:] -= model.eps * score_fn.x.array
            self.grad[n].interpolate(dolfinx.fem.Expression(
                ufl.grad(self.v[n]), Vg.element.interpolation_points()))
        if proj is not None:
            proj.destroy()

    def min_jacobian(self) -> float:
        """min over the layers and cells of det(I + τ∇vⁿ): the layer maps are piecewise affine
        (v is P1), one-to-one where every cell keeps its orientation (> 0); where one does not
        the map folds, and the change of variables of :meth:`log_likelihood` (with |det|) and
        the inverse of :meth:`sample` no longer describe a density (collective)."""
        d, tau = self.d, self.model.tau
        low = min((float(np.linalg.det(np.eye(d) + tau * g.x.array.reshape(-1, d, d)).min())
                   for g in self.grad if g.x.array.size), default=math.inf)
        return self.model.comm.allreduce(low, op=MPI.MIN)

    def _eval(self, f, X):
        Y, cell, _ = self.ev.clamp(X)
        return self.ev.evaluate(f, Y, cell)

    def forward(self, X0, record: bool = False):
        """(x_N, Σ_n log|det(I + τ∇vⁿ(x_n))|, path or None) for the rows of X0."""
        tau, d = self.model.tau, self.d
        X = np.array(X0, float)
        logdet = np.zeros(len(X))
        path = [X.copy()] if record else None
        for n in range(self.model.N):
            Y, cell, _ = self.ev.clamp(X)
            Jv = self.ev.evaluate(self.grad[n], Y, cell).reshape(-1, d, d)
            logdet += np.log(np.abs(np.linalg.det(np.eye(d) + tau * Jv)))
            X = X + tau * self.ev.evaluate(self.v[n], Y, cell)
            if record:
                path.append(X.copy())
        return X, logdet, path

    def inverse(self, XN, tol: float = 1e-11, max_it: int = 200, record: bool = False):
        """x_0 from x_N: x_n + τvⁿ(x_n) = x_{n+1} solved for x_n, n = N−1..0, by Newton's
        method with the cell-wise Jacobian I + τ∇vⁿ (v is piecewise linear: a few steps), a
        point whose residual a Newton step does not reduce taking the fixed-point step
        x_n ← x_{n+1} − τvⁿ(x_n) instead.  (The fixed-point iteration alone contracts by
        τ Lip(vⁿ) per step: at σ = 0.1, τ = 0.75 it stopped at |dx| = 9e-10 after 200 steps and
        the run ended after its training had converged.)"""
        tau, d = self.model.tau, self.d
        X = np.array(XN, float)
        path = [X.copy()] if record else None
        eye = np.eye(d)
        for n in range(self.model.N - 1, -1, -1):
            Y = X.copy()
            R = X + tau * self._eval(self.v[n], X) - Y          # the residual at x = x_{n+1}
            err = float(np.abs(R).max()) if len(X) else 0.0
            for _it in range(max_it):
                if err < tol:
                    break
                Yc, cell, _ = self.ev.clamp(X)
                A = eye + tau * self.ev.evaluate(self.grad[n], Yc, cell).reshape(-1, d, d)
                with np.errstate(all="ignore"):
                    step = np.linalg.solve(A, R[..., None])[..., 0]
                Xt = X - np.where(np.isfinite(step), step, R)
                Rt = Xt + tau * self._eval(self.v[n], Xt) - Y
                worse = np.abs(Rt).max(axis=1) >= np.abs(R).max(axis=1)
                if worse.any():                                   # fixed-point step there
                    Xt[worse] = X[worse] - R[worse]
                    Rt[worse] = Xt[worse] + tau * self._eval(self.v[n], Xt[worse]) - Y[worse]
                X, R = Xt, Rt
                err = float(np.abs(R).max())
            else:
                raise SolverError(f"backward sampling, layer {n}: x + tau v(x) = y not solved "
                                  f"(|residual| = {err:.2e}); reduce the time step")
            if record:
                path.append(X.copy())
        return X, (path[::-1] if record else None)

    def log_likelihood(self, X) -> np.ndarray:
        """log p(x) = log N_Ω(x_N) + Σ_n log|det(I + τ∇vⁿ(x_n))| per row of X."""
        XN, logdet, _ = self.forward(X)
        return self.model.log_target(XN) + logdet

    def sample(self, n: int, rng, std: float = 1.0):
        """n samples: z ~ N(0, std² I) restricted to the mesh, pulled back through the flow."""
        Z = np.zeros((0, self.d))
        drawn = 0
        while len(Z) < n:
            cand = std * rng.standard_normal((2 * n, self.d)) if self.model.comm.rank == 0 \
                else None
            cand = self.model.comm.bcast(cand, root=0)
            _, owner = self.ev.locate(cand)
            Z = np.vstack([Z, cand[owner < self.model.comm.size]])
            drawn += len(cand)
            rate = len(Z) / drawn            # the same on every rank (cand is broadcast)
            if len(Z) < n and drawn >= SAMPLE_PATIENCE * n and (
                    rate == 0 or (n - len(Z)) / rate > SAMPLE_MAX_DRAWS * n):
                # a target far wider than the mesh, or narrower than a hole at the origin:
                # the rejection loop never ended (a hang)
                raise ConfigError("generative.target_std", "a target N(0, s^2 I) that the "
                                  f"mesh holds (only {rate:.2g} of its samples fall on the "
                                  "mesh: sampling it would not end)", std)
        Z = Z[:n]
        X, _ = self.inverse(Z)
        return X, Z


# sampling the target restricted to the mesh by rejection: give up (ConfigError) once
# SAMPLE_PATIENCE * n candidates have been drawn if n samples would need more than
# SAMPLE_MAX_DRAWS * n candidates at the acceptance rate seen so far
SAMPLE_PATIENCE, SAMPLE_MAX_DRAWS = 10, 1000


def kde_log_likelihood(X_train, h, X) -> np.ndarray:
    """log of the Gaussian KDE (bandwidth h) of the training points at the rows of X."""
    return np.log(np.maximum(data.kde(X_train, h, X, X_train.shape[1]), 1e-300))


def gaussian_log_likelihood(X_train, X) -> np.ndarray:
    """log N(x; μ, Σ) with the maximum-likelihood fit (μ, Σ) of the training points."""
    from scipy.stats import multivariate_normal
    mu = X_train.mean(axis=0)
    C = np.cov(X_train.T, bias=True)
    return multivariate_normal(mu, C).logpdf(X)
