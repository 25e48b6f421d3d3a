"""Attractive (aggregation) games on meshes graded towards the centre: a refinement study.

    bin/fem-env python3 benchmarks/bench_attractive.py --c -0.1 --cells 100,200,400 \
        --steps 20,40 [--grading 6] [--degree 2] [--rtol 1e-10] [--timeout 600] \
        [--stages auto,sweep,lu] [--ranks 1,2] --out results/bench_attractive

The problem of issue 11 (docs/performance.md, "Attractive (aggregation) games"): 1D
Ω = (0, 1), σ = 0.1, T = 1, Φ = (x − ½)², ρ₀ ∝ exp(−50(x − ½)²), ``coupling = "mfg"``,
G = cρ² with c < 0, solved by ``fem-mfc run`` (Newton with its continuation, the default)
with the monotone scheme (``stabilisation = "monotone"``; ``--degree 2``: P2 Galerkin
instead).  The density concentrates at x = ½ into the stationary profile
ρ = sech²(x/L)/(2L) of width L = 8ε²/|c| (ε = σ²/2) and height ρ_max = |c|/(16ε²) (√ρ solves
2ε²ψ″ + |c|ψ³ = λψ: the mfg coupling is G/ρ = cρ), so the mesh is graded towards ½: its
vertices are x = ½ + sinh(a s)/(2 sinh a) for s uniform in [−1, 1] (``--grading a``; 0:
uniform), whose smallest cell is h_min ≈ a/(cells · sinh a) and whose neighbouring cells differ
by a factor ≤ exp(2a/cells) (→ 1 under refinement: the upwind Hamiltonian of the monotone
scheme is consistent only where neighbouring cells are alike).

Each run writes its mesh (a meshio .vtu line mesh, ``[mesh] kind = "file"``) and config under
OUT/runs/, one run at a time; a run killed by ``--timeout`` is recorded as such.  ``--rtol``
is the config's ``solver.rtol`` (the solver's default, 1e-10; the study's tables were
measured with 1e-6 and 1e-4 before Newton measured its round-off floor, docs/performance.md).
Each point also times the limit proxy in the benchmark's own process (one rank): ``steps``
backward-Euler heat steps of the same mesh and degree with one reused factorisation
(``bench_matrix.heat_proxy``), and reports DOF·steps/s of the solve and its ratio to the
proxy — for a continuation, the price of its ≈ 75 Newton iterations over ≈ 15 stages.
``--stages`` runs each point with every listed ``-mfc_continuation_linear`` (the
continuation's linear path: ``auto``, the default, exact LU stages for these attractive
games where the LU is cheap; ``sweep``; ``lu``), one process each, alternating; ``--ranks``
on each listed number of MPI ranks (``mpirun -n``).
The rows (c, scheme, grading, cells, steps, h_min, h_max, h_min/L, J, its value identity,
max ρ, the stationary ρ_max, min ρ, exit status, converged, continuation stages, Newton
iterations, solve and wall seconds) accumulate in OUT/results.json and OUT/results.csv (a
row of the same c, scheme, grading, cells and steps is replaced).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SIGMA = 0.1
EPS = SIGMA ** 2 / 2

CONFIG = """\
[run]
formulation = "hjb-fp"
[mesh]
kind = "file"
file = "{mesh}"
[problem]
T = 1.0
sigma = {sigma}
steps = {steps}
Phi = "(x0 - 0.5)**2"
G = "c*rho**2"
coupling = "mfg"
params = {{ c = {c} }}
[rho0]
kind = "formula"
formula = "exp(-50*(x0 - 0.5)**2)"
[discretisation]
{discretisation}
[solver]
method = "newton"
rtol = {rtol}
[output]
figures = false
vtx = false
progress = false
"""

FIELDS = ["c", "scheme", "grading", "cells", "steps", "stages_linear", "ranks", "h_min",
          "h_max",
          "h_min_over_L", "J", "J_value_identity", "max_rho", "rho_max_stationary", "min_rho",
          "exit", "converged", "reason", "stages", "newton", "solve_s", "wall_s", "ndofs",
          "dof_steps_per_s", "proxy_s", "ratio_to_proxy", "continuation_path"]


def graded_points(cells: int, a: float) -> np.ndarray:
    """Vertices of (0, 1) graded towards ½: ½ + sinh(a s)/(2 sinh a), s uniform in [−1, 1]
    (a = 0: uniform); an even number of cells puts a vertex at ½."""
    from fem_mfc.mesh import grading_map  # the map of [mesh] grading = a
    s = np.linspace(0.0, 1.0, cells + 1)
    return grading_map(0.0, 1.0, 0.5, a)(s) if a > 0 else s


def proxy_seconds(cells: int, steps: int, a: float, degree: int) -> tuple[int, float]:
    """(dofs, seconds) of the heat-step limit proxy on the point's graded mesh (one rank)."""
    from types import SimpleNamespace

    from mpi4py import MPI

    import dolfinx
    from bench_matrix import heat_proxy
    mesh = dolfinx.mesh.create_interval(MPI.COMM_SELF, cells, [0.0, 1.0])
    t = mesh.geometry.x[:, 0].copy()
    if a > 0:
        from fem_mfc.mesh import grading_map
        mesh.geometry.x[:, 0] = grading_map(0.0, 1.0, 0.5, a)(t)
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", degree))
    n = V.dofmap.index_map.size_global
    best = min(heat_proxy(SimpleNamespace(space=V, tau=1.0 / steps, eps=EPS, steps=steps))
               for _ in range(3))
    return n, best


def write_mesh(path: Path, x: np.ndarray) -> None:
    import meshio
    n = x.size - 1
    meshio.write(path, meshio.Mesh(x[:, None], [("line", np.c_[np.arange(n),
                                                               np.arange(1, n + 1)])]))


def run_point(out: Path, c: float, cells: int, steps: int, a: float, degree: int,
              timeout: float, rtol: float = 1e-10, stages: str = "auto",
              ranks: int = 1) -> dict:
    scheme = "monotone" if degree == 1 else f"P{degree} Galerkin"
    name = (f"c{c:g}_{'mono' if degree == 1 else f'p{degree}'}_a{a:g}_n{cells}_s{steps}"
            f"_{stages}" + (f"_r{ranks}" if ranks != 1 else ""))
    d = out / "runs" / name
    d.mkdir(parents=True, exist_ok=True)
    x = graded_points(cells, a)
    write_mesh(d / "mesh.vtu", x)
    disc = 'stabilisation = "monotone"' if degree == 1 else f"degree = {degree}"
    (d / "config.toml").write_text(CONFIG.format(mesh=(d / "mesh.vtu").resolve(), sigma=SIGMA,
                                                 steps=steps, c=c, discretisation=disc,
                                                 rtol=rtol))
    L = 8 * EPS ** 2 / abs(c)
    h = np.diff(x)
    row = {"c": c, "scheme": scheme, "grading": a, "cells": cells, "steps": steps,
           "stages_linear": stages, "ranks": ranks,
           "h_min": float(h.min()), "h_max": float(h.max()),
           "h_min_over_L": float(h.min() / L), "rho_max_stationary": 1 / (2 * L)}
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    try:
        mpi = ["mpirun", "-n", str(ranks)] if ranks != 1 else []
        p = subprocess.run(mpi + [sys.executable, "-m", "fem_mfc", "run", str(d / "config.toml"),
                            "--out", str(d / "out"), "--quiet",
                            "-mfc_continuation_linear", stages], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=timeout)
        row["exit"] = p.returncode
    except subprocess.TimeoutExpired:
        row.update({"exit": "timeout", "wall_s": time.perf_counter() - t0})
        return row
    row["wall_s"] = time.perf_counter() - t0
    try:
        s = json.loads((d / "out" / "summary.json").read_text())
    except (OSError, ValueError):
        row["error"] = p.stderr.strip().splitlines()[-1:] if p.stderr.strip() else ""
        return row
    stages = s.get("continuation") or []
    row.update({"J": s.get("J"), "J_value_identity": s.get("J_value_identity"),
                "max_rho": s.get("max_rho"), "min_rho": s.get("min_rho"),
                "converged": s.get("converged"), "reason": s.get("reason"),
                "stages": max(len(stages) - 1, 0),
                "newton": s.get("iterations_total", s.get("iterations")),
                "solve_s": s.get("solve_time_s"), "ndofs": s.get("ndofs"),
                "continuation_path": (s.get("solver_path") or {}).get("auto", {}).get(
                    "continuation", "the direct attempt's")})
    n, proxy = proxy_seconds(cells, steps, a, degree)
    solve = row.get("solve_s")
    row.update({"proxy_s": proxy, "ndofs": row.get("ndofs") or n,
                "dof_steps_per_s": n * steps / solve if solve else None,
                "ratio_to_proxy": solve / proxy if solve and proxy > 0 else None})
    return row


def key(r: dict) -> tuple:
    return (r["c"], r["scheme"], r["grading"], r["cells"], r["steps"],
            r.get("stages_linear", "auto"), r.get("ranks", 1))


def save(out: Path, rows: list) -> None:
    rows = sorted(rows, key=lambda r: tuple(str(v) for v in key(r)))
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def ints(text: str) -> list:
    return [int(v) for v in text.split(",") if v]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--c", type=float, nargs="+", default=[-0.1])
    ap.add_argument("--cells", type=ints, default=[100, 200, 400])
    ap.add_argument("--steps", type=ints, default=[20, 40])
    ap.add_argument("--grading", type=float, default=6.0)
    ap.add_argument("--degree", type=int, default=1, choices=(1, 2))
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--rtol", type=float, default=1e-10)
    ap.add_argument("--stages", type=lambda t: [v for v in t.split(",") if v],
                    default=["auto"], help="-mfc_continuation_linear values (auto,sweep,lu)")
    ap.add_argument("--ranks", type=ints, default=[1], help="MPI ranks per run (1,2)")
    ap.add_argument("--out", type=Path, default=Path("results/bench_attractive"))
    ap.add_argument("--quick", action="store_true",
                    help="one small point (100 cells, 20 steps; benchmarks/run_all.py --quick)")
    a = ap.parse_args()
    if a.quick:
        a.cells, a.steps = [100], [20]
    a.out.mkdir(parents=True, exist_ok=True)
    try:
        rows = json.loads((a.out / "results.json").read_text())
    except (OSError, ValueError):
        rows = []
    for c in a.c:
        for cells in a.cells:
            for steps in a.steps:
                for ranks in a.ranks:
                    for stages in a.stages:
                        r = run_point(a.out, c, cells, steps, a.grading, a.degree, a.timeout,
                                      a.rtol, stages, ranks)
                        rows = [q for q in rows if key(q) != key(r)] + [r]
                        save(a.out, rows)
                        print(" ".join(f"{k}={r[k]:.6g}" if isinstance(r.get(k), float) else
                                       f"{k}={r.get(k)}" for k in FIELDS), flush=True)


if __name__ == "__main__":
    main()
