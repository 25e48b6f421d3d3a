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
x_n = x_{n+1} − τ vⁿ(x_n) is solved by fixed-point iteration (a contraction when τ Lip(vⁿ) < 1).
Points are evaluated at their projection onto the mesh but not moved, so the forward map is
exactly the inverse of the sampler.  All log-likelihoods are in standardised data coordinates.

**Transport and trainer.**  :class:`GenerativeFlow` is the Galerkin discretisation above,
trained by the sweeps (``transport = "galerkin"``, ``method = "sweeps"``);
:class:`EdgeGenerativeFlow` (the default) the same J on the EAFE transport with lumped masses
(:mod:`.eafe`, :mod:`.reduced`), trained by ``[training] method`` (Newton–CG by default).
"""
from __future__ import annotations

import dataclasses
import math
import time

from mpi4py import MPI

import dolfinx
import numpy as np
import ufl

from ..config import resolve_training
from ..errors import ConfigError, SolverError
from ..pipeline import build_mesh
from ..pointeval import PointEvaluator
from ..solvers.linear import LinearStepper
from . import data
from .feedback import FeedbackClassifier
from .reduced import EdgeClassifier


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
        self.log_target = lambda X: (-(X ** 2).sum(axis=1) / (2 * s * s)
                                     - gdim / 2 * math.log(2 * math.pi * s * s) - math.log(self.Z))
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
        self.log_target = lambda X: (-(X ** 2).sum(axis=1) / (2 * s * s)
                                     - gdim / 2 * math.log(2 * math.pi * s * s) - math.log(self.Z))
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
    """The learned invertible map x_0 ↦ x_N of a trained :class:`GenerativeFlow` (module doc)."""

    def __init__(self, model: GenerativeFlow, score: bool = True):
        self.model = model
        self.ev = PointEvaluator(model.mesh)
        d = model.mesh.geometry.dim
        self.d = d
        Va = model.Va
        rho = dolfinx.fem.Function(model.V)
        b, s = ufl.TestFunction(Va), ufl.TrialFunction(Va)
        proj = LinearStepper(ufl.inner(s, b) * ufl.dx,
                             ufl.inner(ufl.grad(rho) / (rho + model.eta), b) * ufl.dx,
                             "generative_score_")
        score_fn = dolfinx.fem.Function(Va)
        self.v = [dolfinx.fem.Function(Va, name=f"v_{n}") for n in range(model.N)]
        Vg = dolfinx.fem.functionspace(model.mesh, ("DG", 0, (d, d)))
        self.grad = [dolfinx.fem.Function(Vg, name=f"grad_v_{n}") for n in range(model.N)]
        for n in range(model.N):
            self.v[n].x.array[:] = model.a[n]
            if score and model.eps > 0:
                rho.x.array[:] = model.rho[0][n + 1]
                proj.step(score_fn, f"score of layer {n + 1}")
                self.v[n].x.array[:] -= model.eps * score_fn.x.array
            self.grad[n].interpolate(dolfinx.fem.Expression(
                ufl.grad(self.v[n]), Vg.element.interpolation_points()))
        proj.destroy()

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
        """x_0 from x_N: x_n = x_{n+1} − τ vⁿ(x_n) by fixed-point iteration, n = N−1..0."""
        tau = self.model.tau
        X = np.array(XN, float)
        path = [X.copy()] if record else None
        for n in range(self.model.N - 1, -1, -1):
            Y = X.copy()
            for _it in range(max_it):
                Xn = Y - tau * self._eval(self.v[n], X)
                err = float(np.abs(Xn - X).max()) if len(X) else 0.0
                X = Xn
                if err < tol:
                    break
            else:
                raise SolverError(f"backward sampling, layer {n}: the fixed-point iteration did "
                                  f"not converge (|dx| = {err:.2e}); reduce the time step")
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
        while len(Z) < n:
            cand = std * rng.standard_normal((2 * n, self.d)) if self.model.comm.rank == 0 \
                else None
            cand = self.model.comm.bcast(cand, root=0)
            _, owner = self.ev.locate(cand)
            Z = np.vstack([Z, cand[owner < self.model.comm.size]])
        Z = Z[:n]
        X, _ = self.inverse(Z)
        return X, Z


def kde_log_likelihood(X_train, h, X) -> np.ndarray:
    """log of the Gaussian KDE (bandwidth h) of the training points at the rows of X."""
    return np.log(np.maximum(data.kde(X_train, h, X, X_train.shape[1]), 1e-300))


def gaussian_log_likelihood(X_train, X) -> np.ndarray:
    """log N(x; μ, Σ) with the maximum-likelihood fit (μ, Σ) of the training points."""
    from scipy.stats import multivariate_normal
    mu = X_train.mean(axis=0)
    C = np.cov(X_train.T, bias=True)
    return multivariate_normal(mu, C).logpdf(X)


def run_generative(cfg: dict, ctx) -> dict:
    """Runner of ``formulation = "generative"`` (data → KDE → train → likelihoods → samples)."""
    md = build_mesh(cfg, ctx.comm)
    msh = md.mesh
    dim = msh.geometry.dim
    dcfg, ncfg, tcfg, gcfg, p = (cfg["data"], cfg["network"], cfg["training"],
                                 cfg["generative"], cfg["problem"])
    ds = data.load(dcfg, dim)
    # one population: the labels are dropped (K = 1)
    one = dataclasses.replace(ds, y_train=np.zeros_like(ds.y_train),
                              y_test=np.zeros_like(ds.y_test))
    V = dolfinx.fem.functionspace(msh, ("Lagrange", 1))
    (rho0,), (h,) = data.class_densities(one, V, dcfg["bandwidth"], names=["rho"])
    transport, method = resolve_training(cfg)
    model = (EdgeGenerativeFlow if transport == "eafe" else GenerativeFlow)(rho0, p, ncfg, gcfg)
    ctx.log.info("generative flow: %s, %d train / %d test points, %d dofs, %d layers",
                 ds.name, len(ds.y_train), len(ds.y_test), V.dofmap.index_map.size_global,
                 model.N)
    kl0 = model.kl_of(0)
    t0, c0 = time.perf_counter(), time.process_time()
    model.train(tcfg["max_sweeps"], tcfg["relaxation"], tcfg["tol"], progress=ctx.progress,
                log=ctx.log, **({"method": method} if transport == "eafe" else {}))
    train_time, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    ctx.log.info("training (%s, %s transport): %d outer iterations, residual %.3e, converged "
                 "%s, %.1f s", method, transport, model.sweeps, model.residual, model.converged,
                 train_time)
    masses = model.masses()
    fm = FlowMap(model, gcfg["score"])
    d = ds.mean.shape[0]
    Xtr, Xte = ds.X_train[:, :d], ds.X_test[:, :d]
    ll_flow = fm.log_likelihood(ds.X_test)
    ll_drift = FlowMap(model, False).log_likelihood(ds.X_test)
    rng = np.random.default_rng(dcfg["seed"] + 1)
    samples, Z = fm.sample(gcfg["samples"], rng, gcfg["target_std"])
    back, _, _ = fm.forward(samples)
    h_hist = model.history
    summary = {
        "dataset": ds.name, "n_train": len(ds.y_train), "n_test": len(ds.y_test), "dim": dim,
        "ndofs": V.dofmap.index_map.size_global, "nsteps": model.N, "h": md.h,
        "tau": model.tau, "sigma": p["sigma"], "bandwidth": h, "kl_weight": model.kl_weight,
        "kl_floor": model.eta, "score": gcfg["score"],
        "KL_initial": kl0, "KL_final": model.kl, "KL_history": h_hist.terminal,
        "J": model.J, "J_history": h_hist.J, "control_energy": model.energy,
        "residual": model.residual, "residual_history": h_hist.residual,
        "sweeps": model.sweeps, "converged": model.converged,
        "method": method, "transport": transport, "iterations": model.sweeps,
        "training": getattr(model, "train_info", {"method": method}),
        "loglik_flow": float(ll_flow.mean()), "loglik_flow_drift_only": float(ll_drift.mean()),
        "loglik_kde": float(kde_log_likelihood(Xtr, h, Xte).mean()),
        "loglik_gaussian": float(gaussian_log_likelihood(Xtr, Xte).mean()),
        "loglik_units": "nats per point, standardised data coordinates",
        "sample_roundtrip_error": float(np.abs(back - Z).max()),
        "sample_mean": samples.mean(axis=0), "sample_cov": np.cov(samples[:, :d].T),
        "data_mean": Xtr.mean(axis=0), "data_cov": np.cov(Xtr.T),
        "mass_error": float(np.abs(masses - masses[:, :1]).max()),
        "min_rho": model.min_rho(), "peclet": model.peclet(md.h), "target_mass_on_mesh": model.Z,
        "train_time_s": train_time, "train_cpu_s": train_cpu,
    }
    ctx.log.info("KL %.4g -> %.4g in %d sweeps; held-out log-likelihood: flow %.4f, KDE %.4f, "
                 "Gaussian fit %.4f", kl0, model.kl, model.sweeps, summary["loglik_flow"],
                 summary["loglik_kde"], summary["loglik_gaussian"])
    _write_series(ctx, model, cfg["output"]["every"])
    summary["figures"] = _figures(ctx, model, fm, ds, samples) if ctx.figures else []
    model.destroy()
    return summary


def _write_series(ctx, model, every):
    r = dolfinx.fem.Function(model.V, name="rho")
    s = ctx.series("density", [r])
    for n in range(model.N + 1):
        if n % every == 0 or n == model.N:
            r.x.array[:] = model.rho[0][n]
            s.write(n * model.tau)


def _figures(ctx, model, fm, ds, samples) -> list[str]:
    from .. import viz
    N = model.N
    layers = sorted(set(np.linspace(0, N, 4).round().astype(int).tolist()))
    target = dolfinx.fem.Function(model.V, name="rho")
    target.interpolate(lambda X: np.exp(model.log_target(X[:model.mesh.geometry.dim].T)))
    snaps = [model.function(model.rho[0][n], name="rho") for n in layers] + [target]
    labels = [f"layer {n} (t = {n * model.tau:.2f})" for n in layers] + ["target N(0, I)"]
    viz.plot_snapshots(snaps, labels, ctx.figure("densities.png"), name="rho")
    viz.animate([model.function(model.rho[0][n], name="rho") for n in range(N + 1)],
                [f"layer {n} (t = {n * model.tau:.2f})" for n in range(N + 1)],
                ctx.figure("densities.gif"), name="rho")
    sub = ds.X_train[np.random.default_rng(2).choice(len(ds.X_train),
                                                     min(300, len(ds.X_train)), replace=False)]
    _, _, path = fm.forward(sub, record=True)
    if ctx.comm.rank == 0:
        _scatter(ctx.figure("samples.png"), ds.X_test, samples, path)
        h = model.history
        it = np.arange(len(h.terminal))
        viz.line_plot(it, {"KL(rho(T) || N(0, I))": np.array(h.terminal)},
                      ctx.figure("history_KL.png"), xlabel="outer iteration", ylabel="KL",
                      logy=True, markers=True)
        viz.line_plot(it, {"J": np.array(h.J)}, ctx.figure("history_J.png"),
                      xlabel="outer iteration", ylabel="J", markers=True)
    return ["densities.png", "densities.gif", "samples.png", "history_KL.png", "history_J.png"]


def _scatter(path, X_data, samples, paths):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(11, 5))
    ax[0].scatter(X_data[:, 0], X_data[:, 1], s=6, alpha=0.6, label="held-out data")
    ax[0].scatter(samples[:, 0], samples[:, 1], s=6, alpha=0.6, label="samples (flow backward "
                  "from N(0, I))")
    ax[0].set_title("samples vs data")
    P = np.stack(paths)
    for i in range(P.shape[1]):
        ax[1].plot(P[:, i, 0], P[:, i, 1], "-", lw=0.4, color="0.6")
    ax[1].scatter(P[0, :, 0], P[0, :, 1], s=5, label="data x_0")
    ax[1].scatter(P[-1, :, 0], P[-1, :, 1], s=5, label="x_N (should look N(0, I))")
    ax[1].set_title("data pushed forward through the flow")
    for a in ax:
        a.set_aspect("equal")
        a.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
