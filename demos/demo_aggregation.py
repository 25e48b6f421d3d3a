# ---
# jupytext:
#   formats: py:percent
#   text_representation:
#     extension: .py
#     format_name: percent
# ---
# %% [markdown]
# # An aggregation game, resolved by a graded mesh
#
# Agents on Ω = (0, 1) steer with velocity a = −∂_x u and noise σ; each pays ½|a|², a
# terminal cost Φ = (x − ½)² and a running cost that *decreases* where the others are: a
# mean-field game (coupling `mfg`) with G(ρ)/ρ = cρ, c < 0,
#
# $$ -\partial_t u - \varepsilon\,\partial_{xx} u + \tfrac12|\partial_x u|^2 = c\rho, \quad
#    u(T) = \Phi, \qquad
#    \partial_t\rho - \varepsilon\,\partial_{xx}\rho - \partial_x(\rho\,\partial_x u) = 0,
#    \quad \rho(0) = \rho_0, $$
#
# ε = σ²/2.  Attraction makes the game non-monotone: Newton from the trivial guess fails, and
# the solver follows the solution by continuation in the coupling strength (λc, λ: 0 → 1;
# `result.continuation` lists the stages).
#
# **How concentrated?**  In the middle of the horizon the crowd sits near a stationary state
# ρ = e^{−u/ε}/Z of the ergodic game.  With ψ = √ρ the HJB equation becomes the cubic
# stationary Schrödinger (Gross–Pitaevskii) equation 2ε²ψ″ + |c|ψ³ = λψ, whose
# normalised ground state is the soliton
#
# $$ \rho(x) = \frac{1}{2L}\,\mathrm{sech}^2\!\Big(\frac{x - \tfrac12}{L}\Big), \qquad
#    L = \frac{8\varepsilon^2}{|c|}, \qquad \rho_{\max} = \frac{|c|}{16\varepsilon^2}. $$
#
# For σ = 0.1 and c = −0.1: L = 0.002 and ρ_max = 250.  A uniform mesh must have h ≲ L/10
# *everywhere* to see it — 5,000 cells — although only the cells near ½ matter.
#
# **Graded meshes.**  `[mesh] grading = a` moves the vertices of an interval (rectangle, box)
# by x = c + λ sinh(2a(t − t_c)), t uniform, towards `focus` (default: the middle): with a = 6
# the cells at ½ are a/sinh a = 0.03 of the uniform size, those at the sides 6× — neighbours
# differ by at most e^{2a/cells}.  The monotone P1 scheme (`stabilisation = "monotone"`)
# keeps ρ ≥ 0 on any mesh.
#
# This demo solves the game of `demos/aggregation.toml` on graded and on uniform meshes of the
# same number of cells, compares J, max ρ and the profile at t = T/2 with the soliton, and
# refines the graded mesh (h_min halves per level: J and max ρ converge at first order).
#
# Run: `bin/fem-env python3 demos/demo_aggregation.py` (100–800 cells; about a minute),
# `--quick` (50 and 100 cells; seconds).  PETSc options of the Newton solves go on the
# command line with the prefix `mfc_`, e.g. `-mfc_snes_monitor`.

# %%
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mpi4py import MPI

import numpy as np

from fem_mfc import config, options
from fem_mfc.cli import split_petsc_options
from fem_mfc.pipeline import build_mesh
from fem_mfc.problem import ControlProblem
from fem_mfc.solvers import solve

HERE = Path(__file__).resolve().parent
comm = MPI.COMM_WORLD
T0 = time.perf_counter()

parser = argparse.ArgumentParser(description="An aggregation game on graded meshes.")
parser.add_argument("--out", default="results/demo_aggregation")
parser.add_argument("--quick", action="store_true", help="50 and 100 cells (seconds)")
parser.add_argument("--config", default=str(HERE / "aggregation.toml"))
parser.add_argument("--no-figures", action="store_true", help="skip the figures")
args, petsc_args = parser.parse_known_args()
CELLS = [50, 100] if args.quick else [100, 200, 400, 800]
out = Path(args.out)
if comm.rank == 0:
    out.mkdir(parents=True, exist_ok=True)
comm.barrier()


def say(*a):
    if comm.rank == 0:
        print(*a, flush=True)


# %% [markdown]
# ## 1. The data and the soliton's scales

# %%
cfg = config.load(args.config)
pr = cfg["problem"]
c, eps = pr["params"]["c"], 0.5 * pr["sigma"] ** 2
L, rho_max = 8 * eps ** 2 / abs(c), abs(c) / (16 * eps ** 2)
say(f"c = {c}, sigma = {pr['sigma']}: soliton width L = {L:.3g}, height rho_max = "
    f"{rho_max:.4g}; grading a = {cfg['mesh']['grading']}")


def soliton(x):
    return 1.0 / (2 * L) / np.cosh((x - 0.5) / L) ** 2


# %% [markdown]
# ## 2. One solve
#
# `build_mesh` builds the (graded or uniform) interval of the config; `solve` runs Newton with
# its continuation.  We keep J, its value identity (the discrete duality: the two must agree to
# solver tolerance), max ρ, min ρ (≥ 0: the monotone scheme), the continuation's stages, and ρ
# at t = T/2 gathered on rank 0 with its vertices.

# %%
def gathered(f):
    """(x, values) of a P1 function in 1D, owned dofs of every rank, sorted, on rank 0."""
    V = f.function_space
    n = V.dofmap.index_map.size_local
    x = V.tabulate_dof_coordinates()[:n, 0]
    parts = comm.gather((x, f.x.array[:n].copy()), root=0)
    if comm.rank != 0:
        return None
    x = np.concatenate([p[0] for p in parts])
    v = np.concatenate([p[1] for p in parts])
    i = np.argsort(x)
    return x[i], v[i]


def level(cells: int, grading: float) -> dict:
    t = time.perf_counter()
    c_ = dict(cfg, mesh=dict(cfg["mesh"], cells=cells, grading=grading))
    md = build_mesh(c_, comm)
    problem = ControlProblem.from_config(c_, md.mesh, md.cell_tags, md.facet_tags)
    s = cfg["solver"]
    with options.inserted(settings=split_petsc_options(list(petsc_args))):
        r = solve(problem, method=s["method"], rtol=s["rtol"], atol=s["atol"],
                  max_it=s["max_it"], continuation=s["continuation"], strict=False)
    N = problem.steps
    mid = gathered(r.rho[N // 2])
    top = comm.allreduce(max(float(f.x.array.max()) for f in r.rho), op=MPI.MAX)
    row = {"cells": cells, "grading": grading, "h_min": md.h_min, "h_max": md.h,
           "h_min_over_L": md.h_min / L, "converged": bool(r.converged), "J": r.J,
           "J_value_identity": r.J_value, "max_rho": top, "min_rho": r.min_rho,
           "mass_error": r.mass_error, "stages": len(r.continuation),
           "newton": r.iterations, "seconds": time.perf_counter() - t}
    kind = f"graded (a = {grading:g})" if grading else "uniform"
    say(f"{cells:4d} cells {kind:15s} h_min = {md.h_min:.2e} = L/{L / md.h_min:<6.1f} "
        f"J = {r.J:.6f} (value identity {r.J_value:.6f}), max rho = {top:7.2f}, "
        f"min rho = {r.min_rho:.1e}, {row['stages']} continuation stages, "
        f"{'converged' if r.converged else 'NOT converged'} ({row['seconds']:.1f} s)")
    return row, mid, (problem, r)


# %% [markdown]
# ## 3. Graded against uniform, and refinement of the graded mesh

# %%
a = cfg["mesh"]["grading"] or 6.0
rows, mids, finest = [], {}, None
for cells in CELLS:
    row, mid, finest = level(cells, a)
    rows.append(row)
    mids[f"graded, {cells} cells"] = mid
uniform, mid, _ = level(CELLS[-1], 0.0)
mids[f"uniform, {CELLS[-1]} cells"] = mid
d = [abs(q["J"] - p["J"]) for p, q in zip(rows, rows[1:])]
orders = [float(np.log2(x / y)) for x, y in zip(d, d[1:]) if x > 0 and y > 0]
say("graded: J differences between levels " + ", ".join(f"{x:.3e}" for x in d)
    + (f", observed order {orders[-1]:.2f}" if orders else ""))

# %% [markdown]
# ## 4. Figures
#
# `profile.png`: ρ at t = T/2 on each mesh against the soliton (the graded meshes approach it
# from below; the uniform one is far off), `spacetime.png`: ρ(t, x) on the finest graded
# mesh (time upwards, on a power scale: the Gaussian of width 0.1 contracts into the soliton
# within the first steps and stays there — the turnpike — until T), `cells.png`: the cell
# sizes of the graded mesh against L.

# %%
figures = []
if not args.no_figures and comm.rank == 0:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.4))
    xs = np.linspace(0.5 - 8 * L, 0.5 + 8 * L, 801)
    ax.plot(xs, soliton(xs), "k--", lw=1, label=f"soliton L = {L:g}")
    for name, (x, v) in mids.items():
        ax.plot(x, v, ".-" if "uniform" in name else "-", ms=3, label=name)
    ax.set_xlim(0.5 - 8 * L, 0.5 + 8 * L)
    ax.set_xlabel("x")
    ax.set_ylabel("rho(T/2, x)")
    ax.set_title(f"aggregation game, c = {c}: the density at t = T/2")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "profile.png", dpi=110)
    plt.close(fig)
    figures.append("profile.png")
problem, r = finest
frames = [gathered(f) for f in r.rho]
if not args.no_figures and comm.rank == 0:
    x = frames[0][0]
    t = np.array([problem.rho_time(n) for n in range(problem.steps + 1)])
    data = np.array([v for _, v in frames])
    fig, ax = plt.subplots(figsize=(7, 4.4))
    pc = ax.pcolormesh(x, t, data, shading="nearest", cmap="viridis",
                       norm=matplotlib.colors.PowerNorm(gamma=0.3))
    fig.colorbar(pc, ax=ax, label="rho (power scale: the initial spread shows)")
    ax.set_xlim(0.25, 0.75)
    ax.set_xlabel("x")
    ax.set_ylabel("t")
    ax.set_title(f"rho(t, x), {CELLS[-1]} graded cells")
    fig.tight_layout()
    fig.savefig(out / "spacetime.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.semilogy(0.5 * (x[1:] + x[:-1]), np.diff(x), ".", ms=3)
    ax.axhline(L, color="k", ls="--", lw=1, label="L")
    ax.set_xlabel("x")
    ax.set_ylabel("cell size")
    ax.set_title(f"{CELLS[-1]} cells, grading a = {a:g}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "cells.png", dpi=110)
    plt.close(fig)
    figures += ["spacetime.png", "cells.png"]

# %% [markdown]
# ## 5. The numbers

# %%
summary = {"quick": args.quick, "ranks": comm.size, "c": c, "sigma": pr["sigma"], "L": L,
           "rho_max_soliton": rho_max, "graded": rows, "uniform": uniform,
           "J_differences": d, "observed_orders": orders, "figures": figures,
           "converged": all(q["converged"] for q in rows) and uniform["converged"],
           "wall_time_s": time.perf_counter() - T0}
if comm.rank == 0:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
table = ["| mesh | cells | h_min / L | J | value identity | max ρ (soliton "
         f"{rho_max:g}) | min ρ | stages | s |", "|---|---|---|---|---|---|---|---|---|"]
for q in rows + [uniform]:
    table.append(f"| {'graded' if q['grading'] else 'uniform'} | {q['cells']} | "
                 f"{q['h_min_over_L']:.3f} | {q['J']:.6f} | {q['J_value_identity']:.6f} | "
                 f"{q['max_rho']:.2f} | {q['min_rho']:.1e} | {q['stages']} | "
                 f"{q['seconds']:.1f} |")
say("\n" + "\n".join(table) + "\n")
