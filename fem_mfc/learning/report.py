"""Figures and the Markdown report of a classifier run (rank 0 writes, all ranks evaluate).

* ``decision_regions.png`` — the plane coloured by the predicted class (PDE network and torch
  baseline), test points on top;
* ``trajectories.png`` — training points flowing through the layers to their anchors;
* ``densities.png`` / ``densities.gif`` — the class densities ρ_kⁿ through the layers;
* ``history_J.png``, ``history_residual.png``, ``baseline_loss.png`` — training histories;
* ``report.md`` embedding them, with the summary and the PDE-vs-baseline table.
"""
from __future__ import annotations

import numpy as np

CLASS_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def grid(ds, dim, n=120, margin=0.4):
    """A regular n×n grid over the standardised data box, padded to ``dim`` coordinates."""
    X = np.vstack([ds.X_train, ds.X_test])[:, :2]
    lo, hi = X.min(axis=0) - margin, X.max(axis=0) + margin
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n))
    P = np.zeros((n * n, dim))
    P[:, 0], P[:, 1] = gx.ravel(), gy.ravel()
    return gx, gy, P


def slice_note(ds) -> str | None:
    """What the (x1, x2) plane of the decision regions is for data of more than two features:
    the slice through the training mean (the other standardised features 0), with the test
    points projected onto it; None for two features (zero-padded to the mesh: the plane is
    the data's)."""
    d = len(ds.mean)
    if d <= 2:
        return None
    rest = "x3" if d == 3 else f"x3, …, x{d}"
    return (f"slice {rest} = training mean (standardised 0) of {d} features; test points "
            "projected onto (x1, x2)")


def decision_regions(path, gx, gy, preds: dict, ds, K):
    """One panel per model: the grid coloured by predicted class, test points on top (for
    more than two features a labelled slice: :func:`slice_note`)."""
    plt = _plt()
    from matplotlib.colors import ListedColormap
    cmap = ListedColormap(CLASS_COLOURS[:K])
    note = slice_note(ds)
    fig, axes = plt.subplots(1, len(preds), figsize=(5.2 * len(preds), 4.6 + 0.3 * bool(note)),
                             squeeze=False)
    for ax, (title, p) in zip(axes[0], preds.items()):
        ax.contourf(gx, gy, p.reshape(gx.shape), levels=np.arange(K + 1) - 0.5, cmap=cmap,
                    alpha=0.3)
        for k in range(K):
            m = ds.y_test == k
            ax.scatter(ds.X_test[m, 0], ds.X_test[m, 1], s=7, c=CLASS_COLOURS[k],
                       edgecolors="none", label=f"class {k} (test)")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("x1 (standardised)", fontsize=8)
        ax.set_ylabel("x2 (standardised)", fontsize=8)
        ax.set_aspect("equal")
    axes[0][0].legend(loc="lower left", fontsize=7)
    if note:
        fig.suptitle(note, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def trajectories(path, paths, y, anchors, K, title=""):
    """Lines x_0 → x_N of (a subset of) points, coloured by class; anchors as stars."""
    plt = _plt()
    P = np.asarray(paths)            # (N+1, n, d)
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    for k in range(K):
        idx = np.where(y == k)[0]
        for i in idx:
            ax.plot(P[:, i, 0], P[:, i, 1], "-", color=CLASS_COLOURS[k], lw=0.5, alpha=0.35)
        ax.scatter(P[0, idx, 0], P[0, idx, 1], s=5, c=CLASS_COLOURS[k], alpha=0.6)
        ax.scatter(P[-1, idx, 0], P[-1, idx, 1], s=9, c=CLASS_COLOURS[k], marker="x")
    ax.scatter(anchors[:, 0], anchors[:, 1], s=160, c=CLASS_COLOURS[:K], marker="*",
               edgecolors="k", zorder=5, label="anchors c_k")
    ax.set_aspect("equal")
    ax.legend(loc="lower left", fontsize=7)
    ax.set_title(title or "trajectories x_0 (dots) → x_N (crosses)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows, header) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(x) for x in r) + " |")
    return "\n".join(out)


def _fmt(x):
    """A table cell: numbers to 4 digits, '|' escaped (Markdown table syntax)."""
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x).replace("|", "\\|")


def comparison_section(s: dict) -> list[str]:
    """The fair comparison (:mod:`.compare`): which problem each side solves, the table with
    one row per model and the computed verdict (where the PDE network loses)."""
    from .compare import COLUMNS, table_cells
    c = s["comparison"]
    lines = ["## Comparison with torch baselines and the Bayes ceiling", "",
             "The two sides solve different problems. The mean-field PDE network minimises J, "
             "the population objective of the KDE-smoothed class densities under the noise σ "
             "(anchor loss of ρ_k(T) + kinetic energy ∫∫½|a|²ρ + the velocity regularisation), "
             f"here to a relative optimality residual of {s['residual']:.1e}. The torch "
             "baselines minimise the empirical objective on the training points (anchor loss "
             "β/2|x_N − c_y|² + kinetic energy of each path, averaged), with the same anchor "
             "head (predicted class = nearest anchor): a ResNet of the same depth and a neural "
             "ODE ẋ = a(x, t) (an MLP of (x, t) integrated by a fixed-step scheme, trained "
             "through the solver)."]
    if "baseline" in s:
        b = s["baseline"]
        lines[-1] += (f" Each is trained by full-batch Adam from {len(b.get('seeds', [0]))} "
                      f"seed(s) until its objective stops improving (a relative 1e-4 within "
                      f"{c['patience']} epochs, after two learning-rate reductions; at most "
                      f"{c['max_epochs']} epochs: 'converged' says which ended it). ResNet: "
                      f"{b['depth']} residual blocks of width {b['width']}, "
                      f"{b['parameters']} parameters.")
        if "node" in s:
            n = s["node"]
            lines[-1] += (f" Neural ODE: {n['steps']} {n['scheme'].upper()} steps, hidden "
                          f"width {n['width']}, {n['parameters']} parameters.")
    lines[-1] += (" The kinetic energy and the empirical objective of every model are "
                  "evaluated on the training points (for the PDE network: its ResNet "
                  "x_{n+1} = x_n + τ aⁿ(x_n)), i.e. on the baselines' own problem; conversely "
                  "the J of a baseline (best run) is that of its velocity field put into the "
                  "PDE problem (the field at the mesh nodes and the layer times t_n as the P1 "
                  "control, one Fokker–Planck sweep), i.e. the baseline on the PDE's problem.")
    if c["fresh_n"]:
        lines[-1] += (f" 'fresh acc.' is the accuracy on {c['fresh_n']} new points of the "
                      f"data generator (standard error ≤ {0.5 / c['fresh_n'] ** 0.5:.1g}).")
    if c["bayes_ceiling"] is not None:
        lines[-1] += (" The Bayes-optimal classifier uses the generator's exact model (the "
                      "class-conditional densities): its accuracy on the fresh sample is the "
                      "ceiling no classifier can beat but by sampling error.")
    else:
        lines[-1] += " Bayes ceiling: n/a (no generator model for these data, or no noise)."
    lines += ["", table([table_cells(r) for r in c["rows"]], [h for _, h in COLUMNS]), ""]
    lines += [" ".join(c["verdict"]), ""] if c["verdict"] else []
    return lines


def figure_captions(summary: dict) -> dict:
    """The report's caption of each figure (the decision regions' names their slice of the
    feature space, if any: ``summary["decision_regions_slice"]``)."""
    captions = {"decision_regions.png": "Decision regions (colour = predicted class), test "
                "points on top.",
                "trajectories.png": "Training points flowing through the layers of the PDE "
                "network to the class anchors.",
                "densities.png": "Class densities ρ_k through the layers (rows: classes).",
                "densities.gif": "Class densities flowing through the layers (animation).",
                "history_J.png": "Objective J over the outer iterations of the trainer.",
                "history_residual.png": "Relative residual of the optimality condition.",
                "baseline_loss.png": "Torch baseline: training objective over the epochs."}
    note = summary.get("decision_regions_slice")
    if note:
        captions["decision_regions.png"] += f" A {note}."
    return captions


def markdown(summary: dict, figures: list[str], title: str, flags: list[str] = ()) -> str:
    """``report.md``: summary, figures, and the PDE-vs-baseline comparison table; ``flags``:
    why the run is not a success (:func:`fem_mfc.pipeline.verdict`), said at the top."""
    s = summary
    lines = [f"# {title or 'Mean-field classifier'}", "",
             f"Data set **{s['dataset']}** ({s['n_train']} training / {s['n_test']} test points, "
             f"K = {s['K']} classes), label-blind feedback network trained as a mean-field "
             f"optimal control problem: {s['nsteps']} layers (τ = {s['tau']:.3g}, σ = "
             f"{s['sigma']:.3g}) on a mesh with {s['ndofs']} P1 dofs (h = {s['h']:.3g}).", ""]
    if flags:          # a flagged run's report read as a success ("converged True", no word)
        lines += ["**This run is flagged (`\"converged\": false` in summary.json, exit status "
                  "3):**", ""] + [f"* {_fmt(f)}" for f in flags] + [""]
    lines += ["## Results", "",
             table([["train accuracy", s["train_accuracy"]], ["test accuracy", s["test_accuracy"]],
                    ["J (PDE objective, incl. regularisation)", s["J"]],
                    ["control energy ∫∫½|a|²ρ", s["control_energy"]],
                    ["empirical objective (train points)", s["empirical_objective"]],
                    ["training method (transport)", f"{s.get('method', 'sweeps')} "
                     f"({s.get('transport', 'galerkin')})"],
                    ["outer iterations / training converged",
                     f"{s['sweeps']} / {s['converged']}"],
                    ["optimality residual", s["residual"]],
                    ["value identity gap |J − Σ∫u_k(0)ρ_k(0) − …|", s["value_identity_gap"]],
                    ["max class mass error", s["mass_error"]], ["min ρ_k", s["min_rho"]],
                    ["mesh Péclet number max|a|h/(2ε)", s["peclet"]],
                    ["training wall time [s]", s["train_time_s"]],
                    ["training CPU time [s]", s.get("train_cpu_s", float("nan"))]],
                   ["quantity", "value"]), ""]
    if "particles" in s:
        p = s["particles"]
        lines += [f"Particle check (MODEL §7.7): {p['n']} particles per class through the "
                  f"stochastic ResNet; max |moment(PDE) − moment(particles)| = "
                  f"{p['max_moment_error']:.3g} (first moments {p['max_mean_error']:.3g}).", ""]
    if "comparison" in s:
        lines += comparison_section(s)
    captions = figure_captions(s)
    if figures:                             # (figures = false: no empty heading)
        lines += ["## Figures", ""]
    for f in figures:
        lines += [f"![{captions.get(f, f)}]({f})", "", f"*{captions.get(f, f)}*", ""]
    return "\n".join(lines)
