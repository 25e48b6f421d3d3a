"""Runner for ``formulation = "classifier"``: train, evaluate, compare, report.

The mathematics and the networks are in :mod:`fem_mfc.learning`; this module wires them
into a run:

1. data (``[data]``): split, standardise, pad to the mesh dimension; class densities ρ_{k,0} by
   KDE on the mesh (``[mesh]``), normalised to π_k;
2. training (``[problem]``, ``[network]``, ``[training]``): the label-blind feedback network of
   MODEL §2 on the EAFE transport as a reduced functional (:mod:`~fem_mfc.learning.reduced`)
   minimised by ``[training] method`` (:mod:`~fem_mfc.learning.trainer`: truncated
   Newton–CG by default), or on the Galerkin transport by damped forward–backward sweeps
   (:mod:`~fem_mfc.learning.feedback`); the dictionary network likewise
   (:mod:`~fem_mfc.learning.dictionary`);
3. inference (:mod:`~fem_mfc.learning.infer`): the ResNet x_{n+1} = x_n + τ aⁿ(x_n) on
   train/test points; accuracy, empirical objective; particles through the stochastic flow
   vs PDE moments;
4. comparison (:mod:`~fem_mfc.learning.compare`): accuracy on a fresh generator sample, the
   Bayes ceiling, and the torch baselines (:mod:`~fem_mfc.learning.baseline`: a ResNet of
   the same depth and a neural ODE on the same objective, early stopping, several seeds);
5. output: ParaView series of ρ_k and a, figures, ``report.md``
   (:mod:`~fem_mfc.learning.report`).

The run is described by a :class:`~fem_mfc.learning.problem.ClassifierProblem` built once
from the config; the steps read its fields.
"""
from __future__ import annotations

import time

import dolfinx
import numpy as np

from ..errors import DiskFullError, warning
from ..io import write_text_atomic
from ..learning import compare, data, infer, report, saved
from ..learning.dictionary import DictionaryFlow, DictionaryNetwork, EdgeDictionaryNetwork
from ..learning.feedback import FeedbackClassifier, anchors_from_config, matched_anchors
from ..learning.problem import ClassifierProblem, Training
from ..learning.reduced import EdgeClassifier
from ..pipeline import bound, build_mesh, verdict
from . import snapshot_steps

# The trained network's figures that decide whether the run is a success (``checks``, as for
# the HJB-FP runs): the discrete duality J = Σ_k∫u_k(0)ρ_k(0) + … holds for ANY control to
# the linear solvers' tolerance (observed ≤ 1e-12 |J|), each class keeps its mass to round-off
# (≤ 1e-13), and a density below −NEGATIVE_RHO·max ρ is unusable.
IDENTITY_RTOL = 1e-8
MASS_TOL = 1e-8


def build_model(cfg: dict, comm, problem: ClassifierProblem | None = None, md=None):
    """Mesh, data set, KDE class densities and the (untrained) network of a classifier config:
    returns (MeshData, DataSet, bandwidths, FeedbackClassifier or DictionaryNetwork).
    ``problem``: the config's :class:`ClassifierProblem` if already built; ``md``: the mesh
    (default: the config's)."""
    prob = problem or ClassifierProblem.from_config(cfg)
    md = md or build_mesh(cfg, comm)
    dim = md.mesh.geometry.dim
    ds = data.load(prob.data, dim)
    V = dolfinx.fem.functionspace(md.mesh, ("Lagrange", 1))
    rho0, hs = data.class_densities(ds, V, prob.bandwidth)
    anchors = anchors_from_config(prob.network, ds.K, dim)
    if not prob.network["anchors"] and prob.data["dataset"] == "csv":
        anchors = matched_anchors(anchors, ds.X_train, ds.y_train)
    eafe = prob.transport == "eafe"
    if prob.dictionary:
        kind = EdgeDictionaryNetwork if eafe else DictionaryNetwork
    else:
        kind = EdgeClassifier if eafe else FeedbackClassifier
    return md, ds, hs, kind(rho0, anchors, prob.equation, prob.network)


def train_model(model, training: Training, progress=None, log=None, checkpoint=None,
                resume=None) -> dict:
    """Train ``model`` by the configured method; returns the trainer's record (method,
    transport, outer iterations, residual, converged, counts, wall and CPU time).
    ``checkpoint``/``resume``: see :func:`fem_mfc.learning.trainer.train`."""
    t0, c0 = time.perf_counter(), time.process_time()
    kw = dict(progress=progress, log=log, checkpoint=checkpoint, resume=resume)
    if training.transport == "eafe":
        model.train(*training.args, method=training.method, **kw)
        info = dict(model.train_info)
    else:
        model.train(*training.args, **kw)
        info = {"method": training.method, "iterations": model.sweeps,
                "reason": model.stop_reason}
    info.update(transport=training.transport, residual=model.residual,
                converged=model.converged, tol=training.tol,
                wall_time_s=time.perf_counter() - t0, cpu_time_s=time.process_time() - c0)
    return info


def run(cfg: dict, ctx) -> dict:
    """Runner of ``formulation = "classifier"`` (data → KDE → train → evaluate → report)."""
    from ..checkpoint import restart_mesh, training_checkpoints
    prob = ClassifierProblem.from_config(cfg)
    meta, md = restart_mesh(cfg, ctx)
    md, ds, hs, model = build_model(cfg, ctx.comm, prob, md)
    dim = md.mesh.geometry.dim
    V, anchors = model.V, model.anchors
    ctx.log.info("classifier: %s, K = %d, %d train / %d test points, %dD mesh with %d dofs, "
                 "%d layers", ds.name, ds.K, len(ds.y_train), len(ds.y_test), dim,
                 V.dofmap.index_map.size_global, model.N)
    if not np.array_equal(anchors, anchors_from_config(prob.network, ds.K, dim)):
        ctx.log.info("default anchors assigned to the classes by their positions: %s",
                     ", ".join(f"{c} -> ({', '.join(f'{v:g}' for v in a)})"
                               for c, a in zip(ds.classes, anchors)))
    with training_checkpoints(cfg, ctx, model, meta) as (writer, resume):
        info = train_model(model, prob.training, progress=ctx.progress, log=ctx.log,
                           checkpoint=writer, resume=resume)
    ctx.log.info("training (%s, %s transport): %d outer iterations, residual %.3e, "
                 "converged %s, %.1f s", info["method"], info["transport"], info["iterations"],
                 info["residual"], info["converged"], info["wall_time_s"])
    train_time = info["wall_time_s"]
    masses = model.masses()
    flow = DictionaryFlow(model) if prob.dictionary else infer.TrainedFlow(model)
    tr = infer.evaluate_flow(flow, ds.X_train, ds.y_train)
    te = infer.evaluate_flow(flow, ds.X_test, ds.y_test)
    pe = model.peclet(md.h)
    if pe > 2 and info["transport"] == "galerkin":
        ctx.log.info("warning: mesh Péclet number %.2g > 2; refine the mesh or raise sigma "
                     "for an accurate Galerkin FP solution", pe)
    h = model.history
    summary = {
        "dataset": ds.name, "K": ds.K, "classes": list(ds.classes),
        "feature_mean": ds.mean, "feature_scale": ds.scale,
        "n_train": len(ds.y_train), "n_test": len(ds.y_test),
        "dim": dim, "ndofs": V.dofmap.index_map.size_global, "nsteps": model.N, "h": md.h,
        "tau": model.tau, "sigma": prob.sigma, "anchors": anchors,
        "bandwidths": hs, "velocity": prob.velocity,
        "train_accuracy": tr["accuracy"], "test_accuracy": te["accuracy"],
        "J": model.J, "control_energy": model.energy,
        "empirical_objective": tr["objective"], "test_objective": te["objective"],
        "train_anchor_loss": tr["anchor_loss"], "train_kinetic": tr["kinetic"],
        "method": info["method"], "transport": info["transport"], "training": info,
        "sweeps": model.sweeps, "converged": model.converged, "residual": model.residual,
        "reason": stop_reason(info, info["transport"]),
        "iterations": model.sweeps, "J_history": h.J, "residual_history": h.residual,
        "value_identity_gap": abs(model.J - model.value_identity()),
        "mass_error": float(np.abs(masses - masses[:, :1]).max()),
        "min_rho": model.min_rho(), "peclet": pe, "projected_points": tr["projected"] +
        te["projected"], "train_time_s": train_time,
        "train_cpu_s": info["cpu_time_s"],
    }
    if resume is not None:            # as the time steppers' restarted_at_step (the run.log
        summary["restarted_at_iteration"] = resume.iteration      # said so, the summary not)
    off = data_off_mesh(model.mesh, np.vstack([ds.X_train, ds.X_test]))
    summary["data_points_off_mesh"] = off
    point_steps = (len(ds.y_train) + len(ds.y_test)) * model.N
    summary["projected_fraction"] = summary["projected_points"] / max(point_steps, 1)
    if summary["projected_fraction"] > PROJECTED_WARN:
        warning(f"{summary['projected_points']} of {point_steps} point-steps "
                f"({summary['projected_fraction']:.1%}) left the mesh and were projected back "
                "onto it: the trained flow is confined to the domain; a larger domain "
                "(mesh.radius, or mesh.lower and mesh.upper) leaves the data room")
    summary["checks"] = learning_checks(model, masses, identity_gap=summary["value_identity_gap"])
    summary["checks"]["data_on_mesh"] = bound(
        off / max(len(ds.y_train) + len(ds.y_test), 1), DATA_OFF_MESH,
        "fraction of the train and test points outside the mesh at the start, where the class "
        "densities are cut off: the features are standardised (mean 0, variance 1), so the "
        "mesh must cover a neighbourhood of the origin")
    if prob.particles > 0:
        summary["particles"] = _particle_check(flow, model, ds, hs, prob.particles, prob.sigma,
                                               prob.seed)
    base = compare.compare(summary, prob, ds, model, flow, ctx.comm, ctx.log)
    if prob.dictionary:
        model.save_weights(ctx.path("weights.npz"), ds)
        summary.update(dictionary=model.kind, weights_per_layer=model.m,
                       weight_decay_cost=model._control_cost(), theta=np.array(model.a),
                       model="weights.npz")
    else:
        summary["model"] = save_model(
            ctx, lambda folder: saved.save_feedback(folder, model, ds, prob),
            "network", f"fem-mfc predict {ctx.outdir} POINTS.csv labels new points")
    _write_series(ctx, model, prob.every)
    figures = _figures(ctx, model, flow, ds, base) if ctx.figures else []
    summary["figures"] = figures
    if figures and (note := report.slice_note(ds)):
        summary["decision_regions_slice"] = note
    if ctx.comm.rank == 0:
        write_text_atomic(ctx.path("report.md"), report.markdown(summary, figures, prob.title,
                                                                 flags=verdict(summary)))
    model.destroy()
    return summary


# More than this fraction of the train and test points outside the mesh at the start fails the
# run's checks (exit 3), as for the generative flow: the class densities miss them
DATA_OFF_MESH = 0.01


def data_off_mesh(mesh, X) -> int:
    """How many rows of X (the same on every rank) lie outside the mesh (collective)."""
    from ..pointeval import PointEvaluator
    _, owner = PointEvaluator(mesh).locate(X)
    return int(np.count_nonzero(owner == mesh.comm.size))


# More than this fraction of the train and test point-steps projected back onto the mesh is
# reported (the points of the flagship, on a disk of radius 3.5, never leave it).
PROJECTED_WARN = 0.01


def stop_reason(info: dict, transport: str) -> str:
    """Why the training stopped, for the run's verdict line: the trainer's reason, and where no
    step of the Galerkin sweeps decreases J, what to change (their densities leave the
    admissible set at small noise or on coarse meshes; in a random sweep of 69 learning configs
    19 of the 34 Galerkin runs stopped so, and all 15 EAFE Newton runs converged)."""
    why = info.get("reason", "")
    if why == "no descent" and transport == "galerkin":
        why += (" of the Galerkin sweeps; network.transport = 'eafe' (monotone, with the Newton "
                "trainer) or a finer mesh")
    elif why == "maximum iterations":
        why += f" ({info.get('iterations')}); raise training.max_sweeps"
    return why


def learning_checks(model, masses, identity_gap: float | None = None) -> dict:
    """{name: {value, limit, relation, ok, hint}} of a trained network (see IDENTITY_RTOL):
    the value identity (where the model has one), the class masses, the sign of the
    densities; a failed check flags the run (exit status 3)."""
    from mpi4py import MPI

    from .control import NEGATIVE_RHO
    out = {}
    if identity_gap is not None:
        gap = identity_gap / max(abs(model.J), 1e-300)
        out["value_identity"] = bound(gap, IDENTITY_RTOL,
                                      "|J - J_value| / |J|: the discrete duality fails")
    out["mass"] = bound(float(np.abs(masses - masses[:, :1]).max()), MASS_TOL,
                        "max |mass(t) - mass(0)| of a class")
    top = model.comm.allreduce(max((float(r.max()) for rk in model.rho for r in rk if r.size),
                                   default=0.0), op=MPI.MAX)
    out["min_rho"] = bound(model.min_rho(), -NEGATIVE_RHO * top, "negative density; refine "
                           "the mesh or use network.transport = 'eafe'", ">=")
    return out


def _particle_check(flow, model, ds, hs, n, sigma, seed) -> dict:
    """Moments of ρ_kⁿ (PDE) vs particles through the stochastic flow (MODEL §7.7)."""
    layers = sorted({0, model.N // 2, model.N})
    pm = infer.particle_moments(flow, ds, hs, n, sigma, seed, layers)
    e1 = e2 = 0.0
    for n_ in layers:
        m1, m2 = model.moments(n_)
        e1 = max(e1, float(np.abs(m1 - pm[n_][0]).max()))
        e2 = max(e2, float(np.abs(m2 - pm[n_][1]).max()))
    return {"n": n, "layers": layers, "max_mean_error": e1, "max_moment_error": max(e1, e2)}


def save_model(ctx, save, what: str, hint: str) -> str:
    """``save(folder)`` the trained ``what`` into the run's ``model/`` folder; a full disk
    names the output folder.  Returns the folder's name (for the summary)."""
    t0 = time.perf_counter()
    try:
        save(ctx.path(saved.MODEL_DIR))
    except DiskFullError:                  # (it named the staging folder)
        raise DiskFullError(ctx.outdir.absolute(), f"{saved.MODEL_DIR}/") from None
    ctx.log.info("trained %s saved to %s/ (%.2f s): %s", what, saved.MODEL_DIR,
                 time.perf_counter() - t0, hint)
    return saved.MODEL_DIR


def _write_series(ctx, model, every):
    """ParaView: ρ_k and the velocity (as P1) at the layers."""
    rhos = [dolfinx.fem.Function(model.V, name=f"rho_{k}") for k in range(model.K)]
    s = ctx.series("densities", rhos)
    for n in range(model.N + 1):
        if n % every and n != model.N:
            continue
        for k in range(model.K):
            rhos[k].x.array[:] = model.rho[k][n]
        s.write(n * model.tau)
    gdim = model.mesh.geometry.dim
    V1 = dolfinx.fem.functionspace(model.mesh, ("Lagrange", 1, (gdim,)))
    a1 = dolfinx.fem.Function(V1, name="velocity")
    sv = ctx.series("velocity", [a1])
    for n in range(model.N):
        if n % every:
            continue
        a1.interpolate(model.velocity_function(n))
        sv.write(n * model.tau)


def _figures(ctx, model, flow, ds, base) -> list[str]:
    from .. import viz
    from ..learning import baseline as bl
    figs = []
    dim, K, N = model.mesh.geometry.dim, model.K, model.N
    gx, gy, P = report.grid(ds, dim)
    preds = {"mean-field PDE network": flow.predict(P)}
    if base is not None:
        preds["torch ResNet baseline"] = bl.predict(base["state"], P, model.anchors, model.T, N)
    sub = np.random.default_rng(1).choice(len(ds.y_train), min(200, len(ds.y_train)),
                                          replace=False)
    paths = flow.push(ds.X_train[sub], record=True).path
    if ctx.comm.rank == 0:
        report.decision_regions(ctx.figure("decision_regions.png"), gx, gy, preds, ds, K)
        report.trajectories(ctx.figure("trajectories.png"), paths, ds.y_train[sub],
                            model.anchors, K)
    figs += ["decision_regions.png", "trajectories.png"]
    layers = snapshot_steps(N, 4)
    snaps, labels = [], []
    for k in range(K):
        for n in layers:
            snaps.append(model.function(model.rho[k][n], name="rho"))
            labels.append(f"class {k}, layer {n}")
    viz.plot_snapshots(snaps, labels, ctx.figure("densities.png"), name="rho")
    figs.append("densities.png")
    frames, flabels = [], []
    for n in range(N + 1):
        arr = model.rho[1][n] - model.rho[0][n] if K == 2 else sum(r[n] for r in model.rho)
        frames.append(model.function(arr, name="rho_1 - rho_0" if K == 2 else "rho"))
        flabels.append(f"layer {n} (t = {n * model.tau:.2f})")
    viz.animate(frames, flabels, ctx.figure("densities.gif"),
                name="rho_1 - rho_0" if K == 2 else "rho")
    figs.append("densities.gif")
    h = model.history
    if ctx.comm.rank == 0:
        it = np.arange(len(h.J))
        viz.line_plot(it, {"J": np.array(h.J)}, ctx.figure("history_J.png"), xlabel="sweep",
                      ylabel="J", markers=True)
        viz.line_plot(it, {"residual": np.array(h.residual)}, ctx.figure("history_residual.png"),
                      xlabel="sweep", ylabel="relative optimality residual", logy=True,
                      markers=True)
        if base is not None:
            viz.line_plot(np.arange(len(base["history"])), {"objective": base["history"]},
                          ctx.figure("baseline_loss.png"), xlabel="epoch", ylabel="objective",
                          logy=True)
    figs += ["history_J.png", "history_residual.png"]
    if base is not None:
        figs.append("baseline_loss.png")
    return figs
