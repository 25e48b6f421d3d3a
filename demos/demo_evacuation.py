# ---
# jupytext:
#   formats: py:percent
#   text_representation:
#     extension: .py
#     format_name: percent
# ---
# %% [markdown]
# # Evacuating a room with pillars through two doors
#
# A crowd of unit mass, density ρ(t, x), stands in a room Ω = (0, 4) × (0, 3) with three round
# pillars (holes in the mesh) and two doors: one in the right wall, one in the top wall.  Every
# person chooses a velocity a(t, x) to get out quickly and comfortably: a mean-field *game*
# (coupling `mfg`) with the congestion Hamiltonian of Achdou and Porretta,
#
# $$ H(x, p, \rho) = \frac{|p|^2}{2(1 + \rho)^{\alpha}}, \qquad
#    a = -\partial_p H = -\frac{\nabla u}{(1 + \rho)^{\alpha}}, $$
#
# walking is slow where it is crowded.  The value function u and the density solve
#
# $$ -\partial_t u - \varepsilon\Delta u + H(x, \nabla u, \rho) = V(x), \quad u(T) = \Phi,
#    \qquad \partial_t\rho - \varepsilon\Delta\rho - \nabla\cdot(\rho\,\partial_p H) = 0,
#    \quad \rho(0) = \rho_0, $$
#
# with ε = σ²/2, no flux through the walls and the pillars (natural conditions: no code), and
# **exits** at the doors: absorbing, ρ = 0 and u = 0 (leaving costs nothing).  Whoever is
# still inside at T pays Φ = 2.  A running cost V penalises a region: here a wet patch of floor
# in front of the top door, V = v₀ exp(−|x − x_w|²/w²), so that the crowd weighs a detour to the
# right door against walking through it.
#
# The mass that leaves through each door per time step is the flux of the discrete FP step
# through the door's facets (`summary.json["mass_exited_by_tag"]`); the balance
# ∫ρ(t) + exited(t) = 1 holds to round-off at every step.  We report the **half-evacuation
# time** t½ (half of the crowd has left, interpolated in the cumulative exited mass), the
# mass left inside at T, and the cost J, and refine the mesh and the time step together to
# see them converge.
#
# The path: gmsh meshes the room from `meshes/room.geo` (physical groups: walls 1, right
# door 2, top door 3, pillars 4 = the facet tags of the `[[boundary]]` tables of
# `demos/room_evacuation.toml`) → `ControlProblem.from_config` turns the formulas into UFL and
# derives the FP drift −∂H/∂p with `ufl.derivative` → Newton solves all time levels at once →
# VTX series, PyVista figures and a GIF of ρ, a plot of the exit flux per door.
#
# Run: `bin/fem-env python3 demos/demo_evacuation.py` (mesh sizes 0.2, 0.1, 0.05 with 15, 30,
# 60 steps; about a minute), `--quick` (0.4, 0.2 with 8, 16 steps; seconds), under
# `mpirun -n 2` alike.  PETSc options of the Newton solves go on the command line with the
# prefix `mfc_`, e.g. `-mfc_snes_monitor`.

# %%
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mpi4py import MPI

import dolfinx
import numpy as np

from fem_mfc import config, options, viz
from fem_mfc.cli import split_petsc_options
from fem_mfc.mesh import MESH_DIR, from_geo
from fem_mfc.problem import ControlProblem
from fem_mfc.runs.control import write_series
from fem_mfc.solvers import solve

HERE = Path(__file__).resolve().parent
comm = MPI.COMM_WORLD
T0 = time.perf_counter()

parser = argparse.ArgumentParser(description="A crowd leaves a room through two doors.")
parser.add_argument("--out", default="results/demo_evacuation")
parser.add_argument("--quick", action="store_true", help="two coarse levels (seconds)")
parser.add_argument("--config", default=str(HERE / "room_evacuation.toml"))
parser.add_argument("--no-figures", action="store_true", help="skip the PyVista figures")
args, petsc_args = parser.parse_known_args()
# (mesh size, time steps) of the refinement levels: h and τ halved together
LEVELS = [(0.4, 8), (0.2, 16)] if args.quick else [(0.2, 15), (0.1, 30), (0.05, 60)]
WET = {"v0": 3.0, "x": 1.1, "y": 2.4, "w": 0.5}          # the wet patch before the top door
out = Path(args.out)
if comm.rank == 0:
    out.mkdir(parents=True, exist_ok=True)
comm.barrier()


def say(*a):
    if comm.rank == 0:
        print(*a, flush=True)


# %% [markdown]
# ## 1. The data
#
# `demos/room_evacuation.toml` holds the problem (T = 3, σ = 0.5, congestion exponent α = 1,
# ρ₀ a Gaussian of standard deviation 0.5 at (1.5, 1.5), the two exits) and is a valid
# `fem-mfc run` config on its own.  We add the running cost V of the wet patch as a formula:
# the config parser turns it into UFL on the mesh.

# %%
cfg = config.load(args.config)
cfg["problem"]["V"] = (f"{WET['v0']}*exp(-((x0 - {WET['x']})**2 + (x1 - {WET['y']})**2)"
                       f"/{WET['w']}**2)")
pr = cfg["problem"]
say(f"problem: T = {pr['T']}, sigma = {pr['sigma']}, H = {pr['H']} "
    f"(alpha = {cfg['hamiltonian']['alpha']}), V = {pr['V']}, Phi = {pr['Phi']}, "
    f"exits on tags {[b['tag'] for b in cfg['boundary'] if b['kind'] == 'exit']}")

# %% [markdown]
# ## 2. One level: mesh, solve, exit fluxes
#
# `from_geo` meshes `meshes/room.geo` with gmsh at size h on rank 0 and distributes it with its
# facet tags.  `solve` runs Newton (SNES) on the discrete HJB–FP system of all steps; the exits
# are rows of the space-time system held at ρ = 0, u = 0.  With the wet patch, Newton from the
# trivial guess (ρ = ρ₀, u = Φ at every step) stalls — its residual creeps down by 1 % a step
# — and the solver switches to a continuation in the noise: it solves the problem with 2σ,
# then follows σ down to its value, each stage from the last (`result.continuation` lists
# the stages).  From the result we read the mass that left through each door in each step
# and the half-evacuation time.


# %%
def half_time(tau: float, per_step: np.ndarray) -> float:
    """The time at which the cumulative exited mass reaches 1/2 (linear in each step), or
    inf if it never does."""
    cum = np.concatenate([[0.0], np.cumsum(per_step)])
    k = int(np.searchsorted(cum, 0.5))
    if k >= cum.size:
        return float("inf")
    return tau * (k - 1 + (0.5 - cum[k - 1]) / (cum[k] - cum[k - 1]))


def level(h: float, steps: int) -> dict:
    t = time.perf_counter()
    md = from_geo(MESH_DIR / "room.geo", 2, comm, h=h)
    c = dict(cfg, problem=dict(cfg["problem"], steps=steps))
    problem = ControlProblem.from_config(c, md.mesh, md.cell_tags, md.facet_tags)
    s = cfg["solver"]
    with options.inserted(settings=split_petsc_options(list(petsc_args))):
        r = solve(problem, method=s["method"], rtol=s["rtol"], atol=s["atol"],
                  max_it=s["max_it"], initial_guess=s["initial_guess"], linear=s["linear"],
                  step=s["step_solver"], continuation=s["continuation"], strict=False)
    ex = r.mass_exited
    doors = {tag: np.asarray(v) for tag, v in ex["by_tag"].items()}
    per_step = sum(doors.values())
    row = {"h": h, "steps": steps, "tau": problem.tau,
           "ndofs": problem.space.dofmap.index_map.size_global,
           "converged": bool(r.converged), "iterations": r.iterations,
           "continuation": [{k: v for k, v in st.items() if k != "reason"}
                            for st in r.continuation], "J": r.J,
           "J_value_identity": r.J_value, "mass_error": r.mass_error, "min_rho": r.min_rho,
           "exited": float(ex["total"]), "left_inside_T": 1.0 - float(ex["total"]),
           "by_door": {tag: float(v.sum()) for tag, v in doors.items()},
           "t_half": half_time(problem.tau, per_step), "seconds": time.perf_counter() - t}
    path = (f" after {len(r.continuation) - 1} continuation stages" if r.continuation
            else "")
    say(f"h = {h:<5} {steps:3d} steps {row['ndofs']:6d} dofs: Newton {r.iterations}{path} "
        f"({'converged' if r.converged else 'NOT converged'}), J = {r.J:.6f}, "
        f"exited {row['exited']:.4f} (" + ", ".join(f"door {t}: {v:.4f}" for t, v in
                                                    row["by_door"].items())
        + f"), t_half = {row['t_half']:.4f} ({row['seconds']:.1f} s)")
    return row, problem, r, doors


# %% [markdown]
# ## 3. The refinement study
#
# h and τ halve together.  The differences between successive levels should shrink; their
# ratio estimates the order (backward Euler in time: first order once τ dominates).

# %%
rows, finest = [], None
for h, steps in LEVELS:
    row, problem, result, doors = level(h, steps)
    rows.append(row)
    finest = (problem, result, doors)
rates = {}
for key in ("J", "t_half", "left_inside_T"):
    d = [abs(b[key] - a[key]) for a, b in zip(rows, rows[1:])]
    rates[key] = {"differences": d,
                  "orders": [float(np.log2(a / b)) if a > 0 and b > 0 else None
                             for a, b in zip(d, d[1:])]}

# %% [markdown]
# ## 4. ParaView series, figures and a GIF (finest level)
#
# `rho.bp`, `u.bp` and `velocity.bp` (VTX) for ParaView; `rho_snapshots.png` (ρ/max ρ at
# t = 0, T/3, 2T/3, T: the crowd thins out as it leaves), `rho.gif` (ρ at every step, one scale),
# `exit_flux.png` (mass leaving per unit time through each door) and `refinement.png` (J and
# t½ against h).

# %%
problem, result, doors = finest
series = write_series(out, problem, result)
figures = []
if not args.no_figures:
    N = problem.steps
    snaps = sorted({round(N * k / 3) for k in range(4)})
    viz.ensure_display()
    tops = [comm.allreduce(float(result.rho[n].x.array.max()), op=MPI.MAX) for n in snaps]
    scaled = []
    for n, top in zip(snaps, tops):            # each snapshot relative to its own maximum
        f = dolfinx.fem.Function(problem.space, name="rho/max")
        f.x.array[:] = result.rho[n].x.array / top
        scaled.append(f)
    viz.plot_snapshots(scaled, [f"t = {problem.rho_time(n):.2f}, max {top:.3g}"
                                for n, top in zip(snaps, tops)],
                       out / "rho_snapshots.png", name="rho/max")
    viz.animate(result.rho, [f"t = {problem.rho_time(n):.2f}" for n in range(N + 1)],
                out / "rho.gif")
    if comm.rank == 0:
        t_mid = problem.tau * (np.arange(N) + 0.5)
        names = {"2": "right door", "3": "top door"}
        viz.line_plot(t_mid, {names.get(t, f"tag {t}"): v / problem.tau
                              for t, v in doors.items()},
                      out / "exit_flux.png", xlabel="t", ylabel="mass leaving per unit time",
                      title="exit flux per door")
        viz.line_plot([r["h"] for r in rows], {"J": [r["J"] for r in rows],
                                               "t_half": [r["t_half"] for r in rows]},
                      out / "refinement.png", xlabel="h (τ halved with h)",
                      title="refinement: cost and half-evacuation time", logx=True,
                      markers=True)
    figures = ["rho_snapshots.png", "rho.gif", "exit_flux.png", "refinement.png"]

# %% [markdown]
# ## 5. The numbers

# %%
summary = {"quick": args.quick, "ranks": comm.size, "levels": rows, "rates": rates,
           "wet_patch": WET, "figures": figures, "series": series,
           "converged": all(r["converged"] for r in rows),
           "wall_time_s": time.perf_counter() - T0}
if comm.rank == 0:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
table = ["| h | steps | dofs | Newton | J | exited (right, top) | t½ | mass error | s |",
         "|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    d = r["by_door"]
    table.append(f"| {r['h']} | {r['steps']} | {r['ndofs']} | {r['iterations']} | "
                 f"{r['J']:.6f} | {r['exited']:.4f} ({d.get('2', 0):.4f}, {d.get('3', 0):.4f})"
                 f" | {r['t_half']:.4f} | {r['mass_error']:.1e} | {r['seconds']:.1f} |")
say("\n" + "\n".join(table) + "\n")
say("differences between levels: " + ", ".join(
    f"{k}: " + ", ".join(f"{x:.2e}" for x in v["differences"]) for k, v in rates.items()))
