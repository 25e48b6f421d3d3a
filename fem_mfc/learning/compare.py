"""The fair comparison of a classifier run (issue 13, item 5): the PDE network against torch
baselines trained to convergence of their own objective, and the Bayes-optimal ceiling.

* Fresh sample (:func:`fresh_sample`): ``[training] fresh`` new points (default 20 000) from the
  data set's generator with another seed, standardised like the split; every model's accuracy
  on it estimates its population accuracy (standard error ≤ 0.5/√n).
* Bayes ceiling (:func:`bayes_predict`, :func:`bayes_ceiling`): the accuracy of the Bayes
  classifier argmax_k π_k p_k(x) on the fresh sample, from the generator's exact model: equal
  priors (every generator splits the points evenly between the classes); for ``gaussians``
  p_k = N(m_k, s² I) (the Bayes rule is the nearest centre; for K = 2 the accuracy is
  Φ(|m_0 − m_1|/(2s)) in closed form); for ``moons``, ``circles`` and ``spirals`` p_k is the
  generator's curve measure convolved with N(0, s² I), computed by quadrature over the curve
  parameter (uniform on the arcs for moons and circles, density 2q of q = √U for the spirals).
  Without noise or for CSV data the ceiling is not available (``None``, "n/a").
* Baselines (:mod:`.baseline`): the torch ResNet of the same depth and the neural ODE, each over
  ``[training] seeds`` seeds with early stopping on a plateau (``patience``).
* :func:`compare` gathers the rows of the table (one per model: test accuracy, fresh-sample
  accuracy, kinetic energy, empirical objective, PDE objective J — for a baseline the J of its
  velocity field on the mesh (:func:`pde_objective`) —, CPU and wall time, iterations or epochs,
  converged) and :func:`verdict` the sentences that say where the PDE network loses.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import SolverError
from . import baseline, data, infer

FRESH_SEED_OFFSET = 1_000_003       # the fresh sample's seed = the data seed + this (mod 2³¹)
# the table: (key of a row, column header)
COLUMNS = (("model", "model"), ("test_accuracy", "test acc."),
           ("fresh_accuracy", "fresh acc."), ("kinetic", "kinetic energy"),
           ("objective", "empirical objective"), ("J", "PDE objective J"),
           ("cpu_time_s", "CPU [s]"), ("wall_time_s", "wall [s]"),
           ("iterations", "iterations / epochs"), ("converged", "converged"))


def fresh_sample(dcfg: dict, ds, dim: int, n: int):
    """(X standardised and padded to ``dim``, y, X raw) of n fresh generator points, or None
    (CSV data have no generator)."""
    if n <= 0 or dcfg["dataset"] == "csv":
        return None
    cfg = dict(dcfg, n_samples=n, seed=(dcfg["seed"] + FRESH_SEED_OFFSET) % 2 ** 31)
    X, y = data.generate(cfg)
    return ds.transform(X, dim), np.asarray(y), X


def gaussian_centres(K: int) -> np.ndarray:
    """The centres of :func:`~fem_mfc.learning.data.gaussian_blobs` (unit circle)."""
    ang = math.pi + 2 * math.pi * np.arange(K) / K
    return np.c_[np.cos(ang), np.sin(ang)]


def _curves(dcfg: dict, m: int):
    """Per class, quadrature nodes on the generator's curve and their weights (sum 1)."""
    kind = dcfg["dataset"]
    if kind == "moons":
        th = (np.arange(m) + 0.5) * math.pi / m
        w = np.full(m, 1.0 / m)
        return [(np.c_[np.cos(th), np.sin(th)], w),
                (np.c_[1 - np.cos(th), 1 - np.sin(th) - 0.5], w)]
    if kind == "circles":
        th = (np.arange(m) + 0.5) * 2 * math.pi / m
        w = np.full(m, 1.0 / m)
        c = np.c_[np.cos(th), np.sin(th)]
        return [(c, w), (dcfg["factor"] * c, w)]
    if kind == "spirals":
        turns = dcfg["turns"]
        q = (np.arange(m) + 0.5) / m            # q = √U has the density 2q on [0, 1]
        w = 2 * q / m
        w /= w.sum()
        th = math.pi / 2 + q * 2 * math.pi * turns
        r = th / (2 * math.pi * turns)
        arm = np.c_[r * np.cos(th), r * np.sin(th)]
        return [(arm, w), (-arm, w)]
    raise ValueError(kind)


def _log_mixture(X, nodes, w, s):
    """log Σ_j w_j N(x; nodes_j, s² I) for the rows of X (up to the common constant)."""
    out = np.empty(len(X))
    logw = np.log(w)
    for idx in np.array_split(np.arange(len(X)), max(1, len(X) // 1000)):
        d2 = ((X[idx, None, :] - nodes[None]) ** 2).sum(axis=2)
        z = logw[None] - d2 / (2 * s * s)
        zmax = z.max(axis=1)
        out[idx] = zmax + np.log(np.exp(z - zmax[:, None]).sum(axis=1))
    return out


def bayes_predict(dcfg: dict, X_raw, nodes: int = 1024):
    """The Bayes classifier's class of the raw (unstandardised) points, or None where the
    generator's model is not available (CSV, no noise)."""
    kind, s = dcfg["dataset"], dcfg["noise"]
    if kind not in ("gaussians", "moons", "circles", "spirals") or not s > 0:
        return None
    X = np.asarray(X_raw, float)
    if kind == "gaussians":
        return gaussian_bayes_predict(X, gaussian_centres(dcfg["classes"]))
    logp = np.stack([_log_mixture(X, c, w, s) for c, w in _curves(dcfg, nodes)], axis=1)
    return logp.argmax(axis=1)


def gaussian_bayes_predict(X, centres) -> np.ndarray:
    """Equal priors, isotropic Gaussians of one std: the nearest centre (ties: lowest k)."""
    d2 = ((np.asarray(X)[:, None, :] - np.asarray(centres)[None]) ** 2).sum(axis=2)
    return d2.argmin(axis=1)


def gaussian_two_class_ceiling(centres, std: float) -> float:
    """Exact Bayes accuracy of two equally likely N(m_k, s² I): Φ(|m_0 − m_1| / (2s))."""
    d = float(np.linalg.norm(np.asarray(centres[0]) - np.asarray(centres[1])))
    return 0.5 * (1 + math.erf(d / (2 * std) / math.sqrt(2)))


def bayes_ceiling(dcfg: dict, X_raw, y) -> float | None:
    """Monte-Carlo Bayes accuracy on the labelled sample (X_raw, y), or None."""
    pred = bayes_predict(dcfg, X_raw)
    return None if pred is None else float((pred == np.asarray(y)).mean())


def _pde_row(summary, flow, fresh):
    s = summary
    row = {"model": "mean-field PDE network", "test_accuracy": s["test_accuracy"],
           "kinetic": s["train_kinetic"], "objective": s["empirical_objective"], "J": s["J"],
           "cpu_time_s": s["train_cpu_s"], "wall_time_s": s["train_time_s"],
           "iterations": s["iterations"], "converged": s["converged"]}
    if fresh is not None:
        row["fresh_accuracy"] = float((flow.predict(fresh[0]) == fresh[1]).mean())
    return row


def pde_objective(model, kind, run) -> float | None:
    """J of a baseline's velocity field on the PDE's problem: its velocity at the mesh nodes
    at the PDE's layer times (the ResNet's f_n, the neural ODE's a(·, t_n)) as the P1 control
    of the trained model, one FP sweep; the model is then put back at its own control.
    None where the control is not a nodal velocity (dictionary network, Galerkin transport)."""
    from .dictionary import EdgeDictionaryNetwork
    from .reduced import EdgeClassifier
    if not isinstance(model, EdgeClassifier) or isinstance(model, EdgeDictionaryNetwork):
        return None
    X = model.g.x[:model.nl, :model.gdim]
    times = [n * model.tau for n in range(model.N)]
    fields = baseline.velocities(kind, run["state"], X, model.T, model.N, times)
    own = model.control()
    try:
        J = float(model.forward(np.concatenate([f.ravel() for f in fields])))
    except SolverError:
        J = None
    model.forward(own)
    model.backward()
    return J


def _baseline_rows(name, res, J=None) -> list[dict]:
    """Rows of a baseline over its seeds: the best run (with ``J``, the PDE objective of its
    velocity field), then mean ± spread."""
    b, mean, spread = res["best"], res["mean"], res["spread"]
    n = len(res["seeds"])
    best = {"model": f"{name}, best of {n} seed{'s' if n > 1 else ''} (seed {b['seed']})",
            "test_accuracy": b["test_accuracy"], "fresh_accuracy": b.get("fresh_accuracy"),
            "kinetic": b["train_kinetic"], "objective": b["train_objective"], "J": J,
            "cpu_time_s": b["cpu_time_s"], "wall_time_s": b["wall_time_s"],
            "iterations": b["epochs"], "converged": b["converged"],
            "patience": b.get("patience")}
    rows = [best]
    if len(res["seeds"]) > 1:
        keys = {"test_accuracy": "test_accuracy", "fresh_accuracy": "fresh_accuracy",
                "kinetic": "train_kinetic", "objective": "train_objective",
                "cpu_time_s": "cpu_time_s", "wall_time_s": "wall_time_s",
                "iterations": "epochs"}
        ms = {"model": f"{name}, mean ± std over {len(res['seeds'])} seeds", "J": None,
              "converged": f"{sum(r['converged'] for r in res['runs'])}/{len(res['runs'])}"}
        for k, src in keys.items():
            ms[k] = (mean[src], spread[src]) if src in mean else None
        rows.append(ms)
    return rows


# baselines capped at this many epochs or more train in worker processes (baseline.train_all)
WORKERS_FROM_EPOCHS = 500


def potential(prob, model):
    """The running potential V of a classifier problem as the torch baselines take it:
    (formula, params), or None where it is a constant, which the PDE network's empirical
    objective leaves out too (:func:`fem_mfc.learning.infer.potential_function`)."""
    if not infer.varies(model.Vpot):
        return None
    return str(prob.equation["V"]), dict(prob.equation["params"])


def compare(summary: dict, prob, ds, model, flow, comm, log=None) -> dict | None:
    """Fresh-sample accuracy of the PDE network, the Bayes ceiling and the torch baselines of a
    classifier run (``prob``: its :class:`~fem_mfc.learning.problem.ClassifierProblem`);
    fills ``summary["comparison"]`` (and ``summary["baseline"]``, ``summary["node"]``: the
    best runs' figures) and returns the best ResNet run (with its history and state, for the
    figures) or None without baselines."""
    dcfg, b = prob.data, prob.baseline
    dim = model.mesh.geometry.dim
    fresh = fresh_sample(dcfg, ds, dim, prob.fresh)
    rows = [_pde_row(summary, flow, fresh)]
    bayes = None
    if fresh is not None:
        bayes = comm.bcast(bayes_ceiling(dcfg, fresh[2], fresh[1]) if comm.rank == 0 else None,
                           root=0)
    base = None
    out = {"fresh_n": 0 if fresh is None else len(fresh[1]), "bayes_ceiling": bayes}
    if b is not None:
        out.update(seeds=b.seeds, patience=b.patience, max_epochs=b.epochs)
        seeds = [dcfg["seed"] + i for i in range(b.seeds)]
        args = (ds.X_train, ds.y_train, ds.X_test, ds.y_test, model.anchors, model.beta,
                model.T, model.N, b.hidden, b.epochs, b.lr)
        kw = {"comm": comm, "patience": b.patience,
              "fresh": None if fresh is None else fresh[:2], "potential": potential(prob, model)}
        kinds = [("resnet", "torch ResNet")] + ([("node", "neural ODE")] if b.node else [])
        if log is not None:
            log.info("training the baselines (%s; %d seed(s) each, at most %d epochs, patience "
                     "%d; independent runs side by side on the free cores)",
                     ", ".join(name for _, name in kinds), b.seeds, b.epochs, b.patience)
        # side by side in worker processes when the runs are long enough to pay for their
        # start-up (importing torch, ≈ 1–2 s each)
        workers = None if b.epochs >= WORKERS_FROM_EPOCHS else 1
        results = baseline.train_all([kind for kind, _ in kinds], seeds, *args,
                                     workers=workers, **kw)
        for kind, name in kinds:
            res = results[kind]
            key = "baseline" if kind == "resnet" else "node"
            summary[key] = {k: v for k, v in res["best"].items()
                            if k not in ("history", "train_paths", "state")}
            summary[key].update(seeds=res["seeds"], mean=res["mean"], spread=res["spread"],
                                runs=res["runs"])
            if kind == "resnet":
                base = res["best"]
            rows += _baseline_rows(name, res, pde_objective(model, kind, res["best"]))
    if bayes is not None:
        rows.append({"model": "Bayes-optimal classifier (generator's model)",
                     "test_accuracy": None, "fresh_accuracy": bayes})
    out["rows"] = rows
    out["verdict"] = verdict(rows, bayes)
    summary["comparison"] = out
    return base


def _value(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def verdict(rows: list[dict], bayes=None) -> list[str]:
    """Sentences comparing the PDE network (row 0) with the best run of each baseline: where
    it loses (lower accuracy, higher empirical objective, more CPU time) and where it wins."""
    pde = rows[0]
    out = []
    for r in rows[1:]:
        if " best of " not in r["model"]:
            continue
        name = r["model"].split(",")[0]
        lose, win = [], []
        for key, what, higher_better in (("J", "the PDE objective J", False),
                                         ("test_accuracy", "test accuracy", True),
                                         ("fresh_accuracy", "fresh-sample accuracy", True),
                                         ("objective", "empirical objective", False),
                                         ("kinetic", "kinetic energy", False),
                                         ("cpu_time_s", "CPU time", False)):
            a, b = _value(pde.get(key)), _value(r.get(key))
            if a is None or b is None:
                continue
            if a == b:
                continue
            better = (a > b) == higher_better
            (win if better else lose).append(f"{what} ({_num(a)} vs {_num(b)})")
        if lose:
            out.append(f"The PDE network loses to the {name} on " + ", ".join(lose) + ".")
        if win:
            out.append(f"{'It' if lose else 'The PDE network'} beats the {name} on "
                       + ", ".join(win) + ".")
        if not lose and not win:
            out.append(f"The PDE network and the {name} tie.")
        if r.get("converged") is False and r.get("patience") == 0:
            out.append(f"(The {name} trained for a fixed number of epochs, [training] "
                       f"patience = 0: no plateau of its objective was looked for, so its "
                       f"figures may not be converged.)")
        elif r.get("converged") is False:
            out.append(f"(The {name} stopped at the epoch cap before its objective reached a "
                       f"plateau: its figures are not converged; raise [training] epochs.)")
    if bayes is not None and pde.get("fresh_accuracy") is not None:
        acc = pde["fresh_accuracy"]
        if acc < bayes:
            out.append(f"The PDE network's fresh-sample accuracy is {_num(bayes - acc)} below "
                       f"the Bayes ceiling {_num(bayes)}.")
        else:
            out.append(f"The PDE network's fresh-sample accuracy reaches the Bayes ceiling "
                       f"{_num(bayes)} (up to sampling error).")
    return out


def _num(x) -> str:
    return f"{x:.4g}"


def table_cells(row: dict) -> list:
    """A row's cells in the order of :data:`COLUMNS`: numbers, 'a ± b' or 'n/a'."""
    cells = []
    for key, _ in COLUMNS:
        v = row.get(key)
        if v is None:
            cells.append("n/a")
        elif isinstance(v, (tuple, list)):
            spread = v[1] if abs(v[1]) > 1e-12 * abs(v[0]) else 0.0
            cells.append(f"{v[0]:.4g} ± {spread:.2g}")
        else:
            cells.append(v)
    return cells
