"""The fair comparison table of issue 13 across data sets: the mean-field PDE network against a
torch ResNet of the same depth and a neural ODE (same anchor head, trained to a plateau of
their own objective over several seeds), with the Bayes-optimal ceiling.

  bin/fem-env python3 benchmarks/bench_comparison.py [--quick] [--seeds 3] [--epochs 20000]
      [--patience 100] [--only moons,spirals1.5] [--out results/bench_comparison]

Data sets: the demo configs (demos/moons.toml, circles.toml, circles3d.toml, spirals.toml) and
variants of them: spirals with 1.5 turns (with the 1-turn settings, and with the settings of
demos/spirals_hard.toml), noisy moons (noise 0.2 and 0.3, demos/moons_noisy.toml), 3 and 5
noisy Gaussian classes.  Each runs through
the classifier runner (``fem-mfc run`` without figures, particles or ParaView output beyond
the runner's own), whose :mod:`fem_mfc.learning.compare` measures every model: test accuracy,
accuracy on a fresh 20k sample of the generator, kinetic energy and empirical objective on the
training points, the PDE objective J (PDE network only), CPU and wall time of the training,
outer iterations or epochs, converged.  ``--quick`` applies the demos' small overrides (coarse
mesh, few layers, 50 epochs) and a 2000-point fresh sample.

Writes ``comparison.json`` (every data set's comparison and PDE summary figures),
``comparison.csv`` (one row per data set and model) and ``comparison.md`` (the Markdown table
printed at the end) into ``--out``.  Serial by design: the CPU times compare one core with one
core (torch runs on one thread).
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import runpy
import time
import tomllib
from pathlib import Path

from mpi4py import MPI

from fem_mfc import config
from fem_mfc.learning.compare import COLUMNS, table_cells
from fem_mfc.learning.report import table
from fem_mfc.pipeline import run_config

REPO = Path(__file__).resolve().parent.parent
QUICK = runpy.run_path(str(REPO / "demos" / "_common.py"))["QUICK"]   # the demos' --quick

GAUSS = {"anchor_radius": 2.0, "loss_weight": 1.0}
# name -> (demo config, overrides)
DATASETS = {
    "moons": ("moons.toml", {}),
    "circles": ("circles.toml", {}),
    "circles3d": ("circles3d.toml", {}),
    "spirals1": ("spirals.toml", {}),
    "spirals1.5": ("spirals.toml", {"data": {"turns": 1.5}}),
    "spirals1.5-hard": ("spirals_hard.toml", {}),              # sigma 0.25
    "moons-noisy0.2": ("moons.toml", {"data": {"noise": 0.2},
                                      "network": {"loss_weight": 4.0}}),
    "moons-noisy0.3": ("moons_noisy.toml", {}),
    "gauss3": ("moons.toml", {"data": {"dataset": "gaussians", "classes": 3, "noise": 0.4},
                              "network": GAUSS}),
    "gauss5": ("moons.toml", {"data": {"dataset": "gaussians", "classes": 5, "noise": 0.3},
                              "network": GAUSS}),
}
QUICK3D = {"mesh": {"h": 0.6}, "problem": {"steps": 4},    # demos/demo_circles.py --quick
           "training": {"max_sweeps": 15, "epochs": 50, "fresh": 4000}}


def build(name: str, quick: bool, seeds: int, epochs: int, patience: int, fresh: int) -> dict:
    toml, over = DATASETS[name]
    path = REPO / "demos" / toml
    raw = copy.deepcopy(tomllib.loads(path.read_text()))
    layers = [over]
    if quick:
        layers.append(QUICK3D if name == "circles3d" else QUICK)
    layers.append({"training": {"seeds": seeds, "patience": patience, "fresh": fresh,
                                "particles": 0, "baseline": True, "node": True,
                                **({} if quick else {"epochs": epochs})},
                   "output": {"figures": False, "progress": False, "animation": False}})
    for layer in layers:
        for section, keys in layer.items():
            raw.setdefault(section, {}).update(copy.deepcopy(keys))
    raw["training"]["particles"] = 0
    return config.validate(raw, source=str(path), base_dir=path.parent)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small runs (demo --quick sizes)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per baseline (default 3)")
    ap.add_argument("--epochs", type=int, default=20000,
                    help="baselines' maximum epochs (default 20000; --quick: 50)")
    ap.add_argument("--patience", type=int, default=100, help="plateau window (default 100)")
    ap.add_argument("--fresh", type=int, default=None,
                    help="fresh sample size (default 20000; --quick: 2000)")
    ap.add_argument("--only", default="", help="comma-separated subset of " +
                    ", ".join(DATASETS))
    ap.add_argument("--out", default="results/bench_comparison")
    a = ap.parse_args()
    comm = MPI.COMM_WORLD
    names = [n for n in a.only.split(",") if n] or list(DATASETS)
    unknown = set(names) - set(DATASETS)
    if unknown:
        ap.error(f"unknown data set(s) {', '.join(sorted(unknown))}")
    fresh = a.fresh if a.fresh is not None else (2000 if a.quick else 20000)
    out = Path(a.out)
    results, md_rows, csv_rows = {}, [], []
    for name in names:
        cfg = build(name, a.quick, a.seeds, a.epochs, a.patience, fresh)
        t0 = time.perf_counter()
        s = run_config(cfg, out / name, config_path=f"bench_comparison:{name}", quiet=True,
                       force=True)
        total = time.perf_counter() - t0
        c = s["comparison"]
        results[name] = {"comparison": c, "dataset": s["dataset"], "K": s["K"], "dim": s["dim"],
                         "ndofs": s["ndofs"], "nsteps": s["nsteps"], "residual": s["residual"],
                         "total_wall_s": total}
        for r in c["rows"]:
            cells = table_cells(r)
            md_rows.append([name] + cells)
            csv_rows.append({"dataset": name, **{k: _plain(r.get(k)) for k, _ in COLUMNS}})
        if comm.rank == 0:
            print(f"{name}: {s['ndofs']} dofs, {s['nsteps']} layers, total {total:.0f} s; "
                  + " ".join(c["verdict"]), flush=True)
    if comm.rank != 0:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(results, indent=1, default=_plain))
    with open(out / "comparison.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["dataset"] + [k for k, _ in COLUMNS])
        w.writeheader()
        w.writerows(csv_rows)
    md = table(md_rows, ["data set"] + [h for _, h in COLUMNS])
    (out / "comparison.md").write_text(md + "\n")
    print()
    print(md)


def _plain(v):
    """CSV/JSON cell: a (mean, std) pair as 'mean±std', None as ''."""
    if v is None:
        return ""
    if isinstance(v, (tuple, list)) and len(v) == 2:
        return f"{v[0]:.6g}±{v[1]:.3g}"
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


if __name__ == "__main__":
    main()
