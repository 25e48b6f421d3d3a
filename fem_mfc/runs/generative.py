"""Runner for ``formulation = "generative"``: one population flowed to N(0, s²I) (MODEL §8).

data (``[data]``, labels dropped) → KDE density ρ_0 on the mesh → training of the flow
(:class:`~fem_mfc.learning.generative.EdgeGenerativeFlow` on the EAFE transport by
``[training] method``, or :class:`~fem_mfc.learning.generative.GenerativeFlow` by Galerkin
sweeps) → held-out log-likelihoods of the learned map
(:class:`~fem_mfc.learning.generative.FlowMap`) against a KDE and a Gaussian fit → samples
by running the flow backward from the target (``samples.csv``, in the data's units) → the
learned map saved in ``model/`` (:func:`~fem_mfc.learning.saved.save_generative`: ``fem-mfc
sample`` and ``fem-mfc predict``) → ParaView series of ρ, figures, summary.
The run is described by a :class:`~fem_mfc.learning.problem.GenerativeProblem` built once
from the config.
"""
from __future__ import annotations

import dataclasses

import dolfinx
import numpy as np

from ..io import write_text_atomic
from ..learning import data, saved
from ..learning.generative import (
    EdgeGenerativeFlow,
    FlowMap,
    GenerativeFlow,
    gaussian_log_likelihood,
    kde_log_likelihood,
)
from ..learning.problem import GenerativeProblem
from ..pipeline import bound, build_mesh
from . import snapshot_steps
from .classifier import learning_checks, save_model, stop_reason, train_model


def run(cfg: dict, ctx) -> dict:
    """Runner of ``formulation = "generative"`` (data → KDE → train → likelihoods → samples)."""
    from ..checkpoint import restart_mesh, training_checkpoints
    prob = GenerativeProblem.from_config(cfg)
    gen, training = prob.generative, prob.training
    meta, md = restart_mesh(cfg, ctx)
    md = md or build_mesh(cfg, ctx.comm)
    msh = md.mesh
    dim = msh.geometry.dim
    ds = data.load(prob.data, dim)
    # one population: the labels are dropped (K = 1)
    one = dataclasses.replace(ds, y_train=np.zeros_like(ds.y_train),
                              y_test=np.zeros_like(ds.y_test))
    V = dolfinx.fem.functionspace(msh, ("Lagrange", 1))
    (rho0,), (h,) = data.class_densities(one, V, prob.bandwidth, names=["rho"])
    transport, method = training.transport, training.method
    flow = EdgeGenerativeFlow if transport == "eafe" else GenerativeFlow
    model = flow(rho0, prob.equation, prob.network, gen.options())
    ctx.log.info("generative flow: %s, %d train / %d test points, %d dofs, %d layers",
                 ds.name, len(ds.y_train), len(ds.y_test), V.dofmap.index_map.size_global,
                 model.N)
    kl0 = model.kl_of(0)
    with training_checkpoints(cfg, ctx, model, meta) as (writer, resume):
        # the classifier's record: method, transport, iterations, residual, converged, tol,
        # counts, wall and CPU time (the flow's lacked converged and tol)
        info = train_model(model, training, progress=ctx.progress, log=ctx.log,
                           checkpoint=writer, resume=resume)
    train_time, train_cpu = info["wall_time_s"], info["cpu_time_s"]
    ctx.log.info("training (%s, %s transport): %d outer iterations, residual %.3e, converged "
                 "%s, %.1f s", method, transport, model.sweeps, model.residual, model.converged,
                 train_time)
    masses = model.masses()
    fm = FlowMap(model, gen.score)
    d = ds.mean.shape[0]
    Xtr, Xte = ds.X_train[:, :d], ds.X_test[:, :d]
    ll_flow = fm.log_likelihood(ds.X_test)
    ll_drift = FlowMap(model, False).log_likelihood(ds.X_test)
    rng = np.random.default_rng(prob.seed + 1)
    samples, Z = fm.sample(gen.samples, rng, gen.target_std)
    back, _, _ = fm.forward(samples)
    h_hist = model.history
    summary = {
        "dataset": ds.name, "n_train": len(ds.y_train), "n_test": len(ds.y_test), "dim": dim,
        "ndofs": V.dofmap.index_map.size_global, "nsteps": model.N, "h": md.h,
        "tau": model.tau, "sigma": prob.sigma, "bandwidth": h, "kl_weight": model.kl_weight,
        "kl_floor": model.eta, "score": gen.score,
        "KL_initial": kl0, "KL_final": model.kl, "KL_history": h_hist.terminal,
        "J": model.J, "J_history": h_hist.J, "control_energy": model.energy,
        "residual": model.residual, "residual_history": h_hist.residual,
        "sweeps": model.sweeps, "converged": model.converged,
        "method": method, "transport": transport, "iterations": model.sweeps,
        "training": info,
        "reason": stop_reason(info, transport),
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
    if resume is not None:            # as the classifier's and the time steppers' record
        summary["restarted_at_iteration"] = resume.iteration
    gap = abs(model.J - model.value_identity())     # (both transports: with the KL term)
    summary["value_identity_gap"] = gap
    summary["checks"] = learning_checks(model, masses, identity_gap=gap)
    # a flow on a mesh that misses much of the target or of the data claims a likelihood it
    # has not earned: its density is normalised on the mesh and held-out points outside it
    # are clamped onto it (radius 1.2: half of N(0, I) on the mesh, 69 of 100 test points
    # off it, a log-likelihood above the KDE's — and exit 0)
    _, owner = fm.ev.locate(ds.X_test)
    off = int(np.count_nonzero(owner == ctx.comm.size))
    summary["test_points_off_mesh"] = off
    summary["checks"]["target_on_mesh"] = bound(
        float(model.Z), TARGET_ON_MESH, "mass of the target N(0, I) on the mesh: enlarge the "
        "mesh (a disk of radius 3.5 holds 99.8 %)", ">=")
    summary["checks"]["data_on_mesh"] = bound(
        off / max(len(ds.y_test), 1), DATA_OFF_MESH, "fraction of the held-out points outside "
        "the mesh, where the flow's density is not defined: enlarge the mesh")
    # the layer maps must be one-to-one for the log-likelihood (change of variables) and the
    # samples (their inverse) to mean anything: sigma 0.15, bandwidth 0.1, 2 layers folded
    # (det -0.25 in a cell) and the run reported its likelihood, converged, exit 0
    summary["min_jacobian_det"] = fm.min_jacobian()
    summary["checks"]["invertible"] = bound(
        summary["min_jacobian_det"], MIN_JACOBIAN, "smallest det(I + tau grad v) of a layer's "
        "map over the cells: where it is not positive the map folds, so the log-likelihood and "
        "the samples are not those of a density; more layers (problem.steps), a larger "
        "sigma or data.bandwidth", ">=")
    ctx.log.info("KL %.4g -> %.4g in %d outer iterations (%s); held-out log-likelihood: flow "
                 "%.4f, KDE %.4f, Gaussian fit %.4f", kl0, model.kl, model.sweeps, method,
                 summary["loglik_flow"], summary["loglik_kde"], summary["loglik_gaussian"])
    if ctx.comm.rank == 0:
        write_text_atomic(ctx.path("samples.csv"), saved.samples_text(
            saved.unstandardise(samples, ds.mean, ds.scale)))
    summary["samples_file"] = "samples.csv"
    summary["model"] = save_model(
        ctx, lambda folder: saved.save_generative(folder, fm, ds, prob), "flow",
        f"fem-mfc sample {ctx.outdir} N draws new samples")
    _write_series(ctx, model, prob.every)
    summary["figures"] = _figures(ctx, model, fm, ds, samples) if ctx.figures else []
    model.destroy()
    return summary


TARGET_ON_MESH = 0.99       # ∫_Ω N(0, I) at least (the KL and samples are of N restricted to Ω)
DATA_OFF_MESH = 0.01        # held-out points outside the mesh at most (their density is clamped)
MIN_JACOBIAN = 1e-12        # det(I + tau grad v) positive in every cell: the layer maps invert


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
    layers = snapshot_steps(N, 4)
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
