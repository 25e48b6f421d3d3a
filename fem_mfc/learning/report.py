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


def decision_regions(path, gx, gy, preds: dict, ds, K):
    """One panel per model: the grid coloured by predicted class, test points on top."""
    plt = _plt()
    from matplotlib.colors import ListedColormap
    cmap = ListedColormap(CLASS_COLOURS[:K])
    fig, axes = plt.subplots(1, len(preds), figsize=(5.2 * len(preds), 4.6), squeeze=False)
    for ax, (title, p) in zip(axes[0], preds.items()):
        ax.contourf(gx, gy, p.reshape(gx.shape), levels=np.arange(K + 1) - 0.5, cmap=cmap,
                    alpha=0.3)
        for k in range(K):
            m = ds.y_test == k
            ax.scatter(ds.X_test[m, 0], ds.X_test[m, 1], s=7, c=CLASS_COLOURS[k],
                       edgecolors="none", label=f"class {k} (test)")
        ax.set_title(title, fontsize=10)
        ax.set_aspect("equal")
    axes[0][0].legend(loc="lower left", fontsize=7)
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


def markdown(summary: dict, figures: list[str], title: str) -> str:
    """``report.md``: summary, figures, and the PDE-vs-baseline comparison table."""
    s = summary
    lines = [f"# {title or 'Mean-field classifier'}", "",
             f"Data set **{s['dataset']}** ({s['n_train']} training / {s['n_test']} test points, "
             f"K = {s['K']} classes), label-blind feedback network trained as a mean-field "
             f"optimal control problem: {s['nsteps']} layers (τ = {s['tau']:.3g}, σ = "
             f"{s['sigma']:.3g}) on a mesh with {s['ndofs']} P1 dofs (h = {s['h']:.3g}).", "",
             "## Results", "",
             table([["train accuracy", s["train_accuracy"]], ["test accuracy", s["test_accuracy"]],
                    ["J (PDE objective, incl. regularisation)", s["J"]],
                    ["control energy ∫∫½|a|²ρ", s["control_energy"]],
                    ["empirical objective (train points)", s["empirical_objective"]],
                    ["training method (transport)", f"{s.get('method', 'sweeps')} "
                     f"({s.get('transport', 'galerkin')})"],
                    ["outer iterations / converged", f"{s['sweeps']} / {s['converged']}"],
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
    if "baseline" in s:
        b = s["baseline"]
        lines += ["## Comparison with a discrete ResNet (torch, Adam)", "",
                  f"Same depth ({b['depth']} residual blocks, width {b['width']}, tanh, "
                  f"{b['parameters']} parameters), same split, {b['epochs']} full-batch epochs. "
                  f"The two sides solve different problems: the torch ResNet minimises the "
                  f"empirical objective (anchor loss + kinetic energy) on the training points; "
                  f"the PDE network minimises J, the same terms for the KDE-smoothed class "
                  f"densities under noise σ (plus the velocity regularisation), to a relative "
                  f"optimality residual of {s['residual']:.1e}. The rows below evaluate both "
                  f"flows on the empirical objective, i.e. on torch's problem.", "",
                  table([["train accuracy", s["train_accuracy"], b["train_accuracy"]],
                         ["test accuracy", s["test_accuracy"], b["test_accuracy"]],
                         ["objective (train)", s["empirical_objective"], b["train_objective"]],
                         ["anchor loss (train)", s["train_anchor_loss"], b["train_anchor_loss"]],
                         ["kinetic energy of the flow (train)", s["train_kinetic"],
                          b["train_kinetic"]],
                         ["objective (test)", s["test_objective"], b["test_objective"]],
                         ["training wall time [s]", s["train_time_s"], b["wall_time_s"]],
                         ["training CPU time [s]", s.get("train_cpu_s", float("nan")),
                          b.get("cpu_time_s", float("nan"))]],
                        ["", "mean-field PDE network", "torch ResNet"]), ""]
    captions = {"decision_regions.png": "Decision regions (colour = predicted class), test "
                "points on top.",
                "trajectories.png": "Training points flowing through the layers of the PDE "
                "network to the class anchors.",
                "densities.png": "Class densities ρ_k through the layers (rows: classes).",
                "densities.gif": "Class densities flowing through the layers (animation).",
                "history_J.png": "Objective J over the outer iterations of the trainer.",
                "history_residual.png": "Relative residual of the optimality condition.",
                "baseline_loss.png": "Torch baseline: training objective over the epochs."}
    lines += ["## Figures", ""]
    for f in figures:
        lines += [f"![{captions.get(f, f)}]({f})", "", f"*{captions.get(f, f)}*", ""]
    return "\n".join(lines)
