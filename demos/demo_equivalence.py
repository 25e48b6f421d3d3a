# ---
# jupytext:
#   formats: py:percent
#   text_representation:
#     extension: .py
#     format_name: percent
# ---
# %% [markdown]
# # One congested control problem, three formulations
#
# Training a feedback network as mean-field control (MODEL §1) leads to the HJB–FP system
# (MODEL §2).  The same optimality system has two other faces:
#
# * **QHD** (MODEL §3): with S = −u − ε log ρ, the pair (ρ, S) obeys a continuity equation and
#   a Bernoulli equation with the quantum (Bohm) potential 2ε²Δ√ρ/√ρ, in imaginary time —
#   a two-point problem solved all-at-once;
# * **Cole–Hopf** (MODEL §4): with χ = exp(−u/2ε) and Γ = ρ/χ, a backward/forward pair of
#   imaginary-time Schrödinger equations, cubic when the congestion is G = κρ²/2.
#
# Each formulation is discretised on its own terms (backward Euler in time, P1 in space), so
# the three discrete solutions differ by discretisation error only: the differences
# ‖ρ_HJB − ρ_QHD‖, ‖ρ_HJB − χΓ‖ and |ΔJ| must go to zero at first order when τ and h are
# refined together (τ = h/2 ... τ ∝ h).  This script measures that.
#
# Run: `bin/fem-env python3 demos/demo_equivalence.py [--quick] [--out DIR]`.

# %%
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import dolfinx
import numpy as np
import ufl
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fem_mfc.problem import ControlProblem  # noqa: E402
from fem_mfc.solvers.cole_hopf_pair import solve_pair  # noqa: E402
from fem_mfc.solvers.newton import newton  # noqa: E402
from fem_mfc.solvers.qhd import solve_control  # noqa: E402

# %% [markdown]
# ## The problem
#
# Ω = (−1, 1)^d, T = 1, σ = 0.8 (ε = 0.32), V = 0, congestion G = κρ²/2 with κ = 1, terminal
# loss Φ = 0.4 sin(πx/2) + 0.2 cos(πx) (pushing mass to the left, ∂Φ/∂n = 0 so that u has no
# boundary layer at t = T), and ρ_0 ∝ 1 + ½cos(πx) — bounded away from zero, as the QHD form
# needs (vacuum makes log ρ and the Bohm potential undefined).  In 2D the data are products.

# %%
KAPPA, SIGMA, T = 1.0, 0.8, 1.0


def congestion(rho):
    return 0.5 * KAPPA * rho ** 2


def make_problem(cells: int, steps: int, dim: int = 1, comm=MPI.COMM_SELF) -> ControlProblem:
    """The congested test problem on (−1, 1)^dim with ``cells`` per axis and ``steps`` layers."""
    if dim == 1:
        msh = dolfinx.mesh.create_interval(comm, cells, [-1.0, 1.0])
    else:
        msh = dolfinx.mesh.create_rectangle(comm, [[-1.0, -1.0], [1.0, 1.0]], [cells, cells],
                                            dolfinx.mesh.CellType.triangle)
    x = ufl.SpatialCoordinate(msh)
    pi = math.pi
    rho0 = 1.0
    Phi = 0.0
    for i in range(dim):
        rho0 = rho0 * (1 + 0.5 * ufl.cos(pi * x[i]))
        Phi = Phi + (0.4 if i == 0 else 0.2) * ufl.sin(pi * x[i] / 2) + 0.2 * ufl.cos(pi * x[i])
    return ControlProblem(mesh=msh, T=T, sigma=SIGMA, steps=steps, rho0=rho0, Phi=Phi,
                          G=congestion)


# %% [markdown]
# ## Solving it three ways
#
# * HJB–FP: the existing all-at-once Newton on the discrete Lagrangian (`solvers/newton.py`);
# * QHD: Newton on the discrete action ∫S ∂_tρ − H(ρ, S) (`solvers/qhd.py`);
# * Cole–Hopf: Newton on the cubic (χ, Γ) pair (`solvers/cole_hopf_pair.py`), ρ = χΓ.
#
# The differences are max over the time levels t_n of the L² norm in space.

# %%
def l2_difference(fa, fb) -> float:
    comm = fa.function_space.mesh.comm
    val = dolfinx.fem.assemble_scalar(dolfinx.fem.form((fa - fb) ** 2 * ufl.dx))
    return math.sqrt(max(comm.allreduce(val, op=MPI.SUM), 0.0))


def solve_three(cells: int, steps: int, dim: int = 1) -> dict:
    """Solve the problem as HJB–FP, QHD and Cole–Hopf pair; return differences and costs."""
    p = make_problem(cells, steps, dim)
    t0 = time.perf_counter()
    hjb = newton(p)
    t1 = time.perf_counter()
    qhd, _ = solve_control(p)
    t2 = time.perf_counter()
    pair = solve_pair(p)
    t3 = time.perf_counter()
    levels = range(p.steps + 1)
    return {
        "dim": dim, "cells": cells, "steps": steps, "h": 2.0 / cells, "tau": p.tau,
        "ndofs": p.space.dofmap.index_map.size_global,
        "rho_hjb_qhd": max(l2_difference(hjb.rho[n], qhd.rho[n]) for n in levels),
        "rho_hjb_pair": max(l2_difference(hjb.rho[n], pair.rho[n]) for n in levels),
        "J_hjb_qhd": abs(hjb.J - qhd.J), "J_hjb_pair": abs(hjb.J - pair.J),
        "J_hjb": hjb.J, "J_qhd": qhd.J, "J_pair": pair.J,
        "mass_error": max(hjb.mass_error, qhd.mass_error, pair.mass_error),
        "min_rho": min(hjb.min_rho, qhd.min_rho),
        "iterations": {"hjb": hjb.iterations, "qhd": qhd.iterations, "pair": pair.iterations},
        "seconds": {"hjb": t1 - t0, "qhd": t2 - t1, "pair": t3 - t2},
        "rho_T": {"hjb": hjb.rho[-1], "qhd": qhd.rho[-1], "pair": pair.rho[-1]},
    }


def rates(rows, key):
    """Observed orders log(e_{i−1}/e_i)/log(h_{i−1}/h_i)."""
    return [math.log(a[key] / b[key]) / math.log(a["h"] / b["h"])
            for a, b in zip(rows[:-1], rows[1:])]


# %% [markdown]
# ## Refinement study
#
# τ and h are halved together (τ = h/2 ... steps = cells/2).  Quick mode: three 1D levels and
# two small 2D levels.

# %%
KEYS = ("rho_hjb_qhd", "rho_hjb_pair", "J_hjb_qhd", "J_hjb_pair")


def study(quick: bool) -> dict:
    levels = {1: [16, 32, 64] if quick else [16, 32, 64, 128, 256],
              2: [8, 16] if quick else [8, 16, 32]}
    out = {}
    for dim, cells_list in levels.items():
        rows = [solve_three(c, max(c // 2, 2), dim) for c in cells_list]
        out[dim] = {"rows": rows, "rates": {k: rates(rows, k) for k in KEYS}}
    return out


# %% [markdown]
# ## Table, figures, summary

# %%
def table(res) -> str:
    lines = ["| d | cells | steps | ‖ρ_HJB−ρ_QHD‖ | ‖ρ_HJB−χΓ‖ | \\|J_HJB−J_QHD\\| | "
             "\\|J_HJB−J_pair\\| | Newton its (HJB/QHD/pair) |",
             "|---|---|---|---|---|---|---|---|"]
    for dim, r in res.items():
        for i, row in enumerate(r["rows"]):
            cells = [f"{row[k]:.3e}" + (f" ({r['rates'][k][i - 1]:.2f})" if i else "")
                     for k in KEYS]
            its = row["iterations"]
            lines.append(f"| {dim} | {row['cells']} | {row['steps']} | " + " | ".join(cells)
                         + f" | {its['hjb']}/{its['qhd']}/{its['pair']} |")
    return "\n".join(lines) + "\n\n(observed order in parentheses)\n"


def figures(res, out: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    labels = {"rho_hjb_qhd": "‖ρ_HJB − ρ_QHD‖", "rho_hjb_pair": "‖ρ_HJB − χΓ‖",
              "J_hjb_qhd": "|J_HJB − J_QHD|", "J_hjb_pair": "|J_HJB − J_pair|"}
    for dim, r in res.items():
        h = np.array([row["h"] for row in r["rows"]])
        for k in KEYS:
            ax.loglog(h, [row[k] for row in r["rows"]], "o-" if dim == 1 else "s--",
                      label=f"{labels[k]} ({dim}D)")
    h1 = np.array([row["h"] for row in res[1]["rows"]])
    ref = res[1]["rows"][0]["rho_hjb_qhd"] * (h1 / h1[0])
    ax.loglog(h1, ref, "k:", label="O(h + τ)")
    ax.set_xlabel("h (τ = h/2 ... τ ∝ h)")
    ax.set_ylabel("difference")
    ax.set_title("HJB–FP vs QHD vs Cole–Hopf pair")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "convergence.png", dpi=120)
    plt.close(fig)
    # final densities of the finest 1D level
    row = res[1]["rows"][-1]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, f in row["rho_T"].items():
        xs = f.function_space.tabulate_dof_coordinates()[:, 0]
        o = np.argsort(xs)
        ax.plot(xs[o], f.x.array[o], label=name, ls={"hjb": "-", "qhd": "--", "pair": ":"}[name])
    ax.set_xlabel("x")
    ax.set_ylabel("ρ(T)")
    ax.set_title(f"final density, {row['cells']} cells, {row['steps']} steps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "densities.png", dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="results/demo_equivalence")
    ap.add_argument("--quick", action="store_true", help="small levels (< 40 s)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = study(args.quick)
    figures(res, out)
    (out / "table.md").write_text(table(res))
    summary = {str(dim): {"rows": [{k: v for k, v in row.items() if k != "rho_T"}
                                   for row in r["rows"]], "rates": r["rates"]}
               for dim, r in res.items()}
    summary["seconds"] = time.perf_counter() - t0
    summary["quick"] = args.quick
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(table(res))
    print(f"wrote {out}/ (table.md, convergence.png, densities.png, summary.json) in "
          f"{summary['seconds']:.1f} s")


# %%
if __name__ == "__main__":
    main()
