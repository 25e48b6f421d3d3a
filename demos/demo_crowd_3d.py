# ---
# jupytext:
#   formats: py:percent
#   text_representation:
#     extension: .py
#     format_name: percent
# ---
# %% [markdown]
# # A congested crowd in a 3D room with a pillar
#
# Mean-field control at size in three dimensions.  A crowd of unit mass, with density ρ(t, x),
# stands near one wall of a box room Ω = (0, 3) × (0, 1.5) × (0, 1) from which a cylindrical
# pillar (radius 0.3, floor to ceiling, in the middle of the room) is cut out.  It is steered by
# a velocity field a(t, x) to a target region near the opposite wall, with noise σ
# (ε = σ²/2), minimising
#
# $$ J(a) = \int_\Omega \Phi\,\rho(T) + \int_0^T\!\!\int_\Omega \Big(\tfrac12|a|^2\rho
#    + G(\rho)\Big), \qquad G(\rho) = \tfrac{\kappa}{2}\rho^2,
#    \qquad \Phi = \tfrac{\beta}{2}\big((x_0 - 2.5)^2 + (x_1 - 0.75)^2\big), $$
#
# subject to ∂ₜρ + ∇·(ρa) = εΔρ with no flux through the walls and the pillar.  The congestion
# G makes crowding expensive: the crowd has to split around the pillar and spread out.  This is
# mean-field *type control* (coupling `mftc`): the optimality system (MODEL §2) is
#
# $$ -\partial_t u - \varepsilon\Delta u + \tfrac12|\nabla u|^2 = G'(\rho),\quad u(T) = \Phi,
#    \qquad \partial_t\rho - \varepsilon\Delta\rho - \nabla\cdot(\rho\nabla u) = 0,
#    \quad \rho(0) = \rho_0, \qquad a = -\nabla u, $$
#
# with homogeneous Neumann conditions on every wall.  At a discrete solution the cost also
# equals the *value identity* J = ∫u(0)ρ₀ + ∫∫(G(ρ) − ρG'(ρ)), a check that the solve is one.
#
# The path: gmsh meshes the room from `meshes/room3d.geo` (the pillar is a boolean difference;
# the walls and the pillar are physical groups, i.e. facet tags) → the config
# `demos/crowd_3d.toml` supplies the data as formulas, parsed into UFL → Newton solves the
# HJB–FP system of all time levels at once (the automatic linear path takes FGMRES with the
# forward–backward sweep preconditioner and, in 3D, GMRES + ILU(0) per time step) → `VTXWriter`
# writes the ParaView series `rho.bp`, `u.bp`, `velocity.bp` → PyVista draws slices and
# iso-surfaces of ρ at several times, off-screen.
#
# We use the positivity-preserving P1 scheme (`[discretisation] stabilisation = "monotone"`:
# lumped mass, upwind Hamiltonian on the mesh edges, minimal artificial diffusion): a crowd
# density should not go negative, and on the coarse meshes of `--quick` the Galerkin scheme's
# mesh Péclet number is above 1.
#
# Run: `bin/fem-env mpirun -n 2 python3 demos/demo_crowd_3d.py` (full size: h = 0.0222, 264k
# P1 DOFs × 50 steps), `bin/fem-env python3 demos/demo_crowd_3d.py --quick` (2.7k DOFs × 10
# steps, seconds), or any size with `--h H --steps N`.  PETSc options of the Newton solve go on
# the command line with the prefix `mfc_`, e.g. `-mfc_snes_monitor`, `-mfc_sweep_ksp_rtol 1e-6`
# (the per-step GMRES).
#
# Cost, measured serially on one core of a shared 2-core machine (Newton: 9 iterations at
# every size; one FGMRES iteration per Newton step, the work is in the per-step ILU-GMRES):
#
# | h | P1 DOFs | steps | DOF·steps | solve | per DOF·step and Newton iteration | peak memory |
# |---|---|---|---|---|---|---|
# | 0.05 | 26,586 | 50 | 1.33M | 150 s (half a core) | | 1.66 GB |
# | 0.04 | 49,678 | 50 | 2.48M | 167 s | 7.5 µs | 2.80 GB |
# | 0.03 | 111,541 | 25 | 2.79M | 273 s | 10.9 µs | 3.44 GB |
#
# Memory fits 0.35 GB + 6 KB per DOF + 870 B per DOF·step.  **Full size, measured
# (2026-12-06, `mpirun -n 2`, nothing else running):** 264,133 P1 DOFs × 50 steps, mesh 20 s,
# Newton 11 iterations to 2.8e-13 in 643 s (the per-step solves GMRES + block-Jacobi
# ILU(0)), 690 s = 11.5 min in all, 16.9 GB over the two ranks (1277 B per DOF·step); J equal
# to its value identity to 7e-11, mass error 5e-14, min ρ ≥ 0, 99.9 % of the mass past the
# pillar at T.  (Predicted beforehand from the smaller sizes: 13–18 min, 14–15 GB.)
# GMRES + BoomerAMG per step
# (`-mfc_sweep_step amg`) was more than 4× slower at h = 0.03; a looser per-step tolerance
# (`-mfc_sweep_ksp_rtol 1e-6`) saved 6 % at h = 0.04; the Cole–Hopf initial guess
# (`--config` with `initial_guess = "cole-hopf"`) saved no Newton iteration at `--quick`.

# %%
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from mpi4py import MPI

import dolfinx
import numpy as np
import ufl

from fem_mfc import config, options, viz
from fem_mfc.cli import split_petsc_options
from fem_mfc.mesh import MESH_DIR, from_geo
from fem_mfc.problem import ControlProblem
from fem_mfc.runs.control import write_series
from fem_mfc.solvers import solve

HERE = Path(__file__).resolve().parent
comm = MPI.COMM_WORLD
T0 = time.perf_counter()

# Mesh size h of the room and number of time steps: full size (h = 0.0222: 264k vertices, i.e.
# P1 DOFs) and --quick (h = 0.12: 2.7k).
FULL = {"h": 0.0222, "steps": 50}
QUICK = {"h": 0.12, "steps": 10}
ROOM = {"Lx": 3.0, "Ly": 1.5, "Lz": 1.0, "cx": 1.5, "cy": 0.75, "r": 0.3}

parser = argparse.ArgumentParser(description="Congested crowd in a 3D room with a pillar.")
parser.add_argument("--out", default="results/demo_crowd_3d")
parser.add_argument("--quick", action="store_true", help="a small mesh and few steps (< 30 s)")
parser.add_argument("--h", type=float, help="target mesh size (default 0.0222, quick 0.12)")
parser.add_argument("--steps", type=int, help="time steps (default 50, quick 10)")
parser.add_argument("--config", default=str(HERE / "crowd_3d.toml"),
                    help="the problem's config (its mesh is replaced by the room at size h)")
parser.add_argument("--no-figures", action="store_true", help="skip the PyVista figures")
args, petsc_args = parser.parse_known_args()
size = dict(QUICK if args.quick else FULL)
size.update({k: v for k, v in (("h", args.h), ("steps", args.steps)) if v is not None})
out = Path(args.out)
if comm.rank == 0:
    out.mkdir(parents=True, exist_ok=True)
comm.barrier()
clock = {}


def say(*a):
    if comm.rank == 0:
        print(*a, flush=True)


# %% [markdown]
# ## 1. The data
#
# `demos/crowd_3d.toml` holds the numbers (T = 1, σ = 0.3, κ = 0.1, β = 4, ρ₀ a Gaussian of
# standard deviation 0.18 centred at (0.5, 0.75, 0.5), i.e. in front of the pillar, and
# normalised to mass 1 on the room), validated like any `fem-mfc run` config.  Its mesh is a
# small committed `meshes/room3d.msh`; here we mesh the room at our own size instead, and take
# the number of steps from the command line.

# %%
cfg = config.load(args.config)
cfg["problem"]["steps"] = size["steps"]
pr = cfg["problem"]
say(f"problem: T = {pr['T']}, sigma = {pr['sigma']}, G = {pr['G']} ({pr['coupling']}), "
    f"Phi = {pr['Phi']}, params {pr['params']}")

# %% [markdown]
# ## 2. The room, meshed by gmsh
#
# `meshes/room3d.geo` (OpenCASCADE): `Box` minus `Cylinder`, target size h.  `from_geo` meshes
# it on rank 0 and distributes it; the physical groups become tags (cells: 1 = room; facets:
# 1 = outer walls, 2 = pillar).  The walls need no code: no-flux and homogeneous Neumann
# conditions are natural in the weak forms.

# %%
t = time.perf_counter()
md = from_geo(MESH_DIR / "room3d.geo", 3, comm, h=size["h"], **ROOM)
msh = md.mesh
clock["mesh_s"] = time.perf_counter() - t
ncells = msh.topology.index_map(3).size_global
pillar_facets = comm.allreduce(int(np.sum(md.facet_tags.values == 2)), op=MPI.SUM)
say(f"mesh: h = {size['h']}, {ncells} tetrahedra, {pillar_facets} facets on the pillar "
    f"({clock['mesh_s']:.1f} s)")

# %% [markdown]
# ## 3. The problem and its solve
#
# `ControlProblem.from_config` parses Φ, G and ρ₀ into UFL on this mesh and builds the P1
# space; `solve(..., method="newton")` assembles the discrete HJB–FP system of all N steps
# (2N fields) and runs a petsc4py SNES on it.  `linear = "auto"` estimates the cost of an LU of
# the space-time matrix against that of the sweeps and takes the sweeps here (the estimate and
# the choice are in `result.path`).

# %%
problem = ControlProblem.from_config(cfg, msh, md.cell_tags, md.facet_tags)
V = problem.space
ndofs = V.dofmap.index_map.size_global
say(f"solving: {ndofs} P1 DOFs x {problem.steps} steps = {ndofs * problem.steps:.3g} "
    f"DOF-steps on {comm.size} rank(s)")
s = cfg["solver"]
t = time.perf_counter()
with options.inserted(settings=split_petsc_options(list(petsc_args))):
    result = solve(problem, method=s["method"], rtol=s["rtol"], atol=s["atol"],
                   max_it=s["max_it"], initial_guess=s["initial_guess"], linear=s["linear"],
                   step=s["step_solver"], continuation=s["continuation"], strict=False)
clock["solve_s"] = time.perf_counter() - t
path = result.path
say(f"Newton: {result.iterations} iterations, {result.reason}, residual {result.residual:.2e} "
    f"({clock['solve_s']:.1f} s; linear path {path.get('linear')}, per step "
    f"{path.get('step_solver')})")

# %% [markdown]
# ## 4. ParaView series
#
# ρⁿ at tₙ into `rho.bp`, uⁿ (backward Euler: at tₙ) into `u.bp` and the control a = −∇uⁿ into
# `velocity.bp` (`write_series`, the runner's own writer), one VTX (ADIOS2) series
# each; open them in ParaView and play the time steps.

# %%
t = time.perf_counter()
series = write_series(out, problem, result)
clock["vtx_s"] = time.perf_counter() - t

# %% [markdown]
# ## 5. Figures
#
# Four times t = 0, T/3, 2T/3, T.  The fields are gathered to rank 0 (`viz.gather_p1`) and
# drawn off-screen (`viz.ensure_display` starts a private Xvfb when there is no display):
#
# * `rho_slices.png`: ρ on the horizontal mid-plane x₂ = ½ (top row, seen from above: the
#   hole is the pillar) and on the vertical plane x₁ = ¾ through the pillar's axis (bottom
#   row, seen from the front), one colour scale per time (the crowd spreads out);
# * `rho_isosurfaces.png`: iso-surfaces of ρ at ¼, ½ and ¾ of its maximum at that time, in
#   the translucent room.

# %%
layers = sorted({round(problem.steps * k / 3) for k in range(4)})
labels = [f"t = {problem.rho_time(n):.2f}" for n in layers]


def pillar(pv):
    return pv.Cylinder(center=(ROOM["cx"], ROOM["cy"], ROOM["Lz"] / 2), direction=(0, 0, 1),
                       radius=ROOM["r"], height=ROOM["Lz"], resolution=48)


def figures(datas, path_slices, path_iso):
    import pyvista as pv
    viz.ensure_display()
    pv.OFF_SCREEN = True
    grids = []
    for d in datas:
        g = pv.UnstructuredGrid(d[1], d[2], d[0])
        g.point_data["rho"] = d[3]
        grids.append(g)
    room = pv.Box(bounds=(0, ROOM["Lx"], 0, ROOM["Ly"], 0, ROOM["Lz"])).extract_all_edges()
    front = (0.35, -1.0, 0.9)                    # from the front (x0 to the right), above

    def bar(i):
        return {"title": f"rho ({labels[i]})", "vertical": False, "width": 0.7,
                "height": 0.06, "position_x": 0.15, "position_y": 0.03, "fmt": "%.2g",
                "title_font_size": 12, "label_font_size": 11}

    # slices: the horizontal mid-plane (top row, seen from above) and the vertical plane
    # through the pillar's axis (bottom row, seen from the front); one colour scale per time
    n = len(grids)
    p = pv.Plotter(off_screen=True, shape=(2, n), window_size=[400 * n, 560])
    for i, (g, lab) in enumerate(zip(grids, labels)):
        clim = [0.0, float(g.point_data["rho"].max())]
        for row, (normal, origin) in enumerate((("z", (0, 0, ROOM["Lz"] / 2)),
                                                ("y", (0, ROOM["cy"], 0)))):
            p.subplot(row, i)
            p.add_mesh(g.slice(normal=normal, origin=origin), scalars="rho", cmap="viridis",
                       clim=clim, show_scalar_bar=(row == 0), scalar_bar_args=bar(i))
            p.add_text(f"{lab}: x2 = 1/2" if row == 0 else f"{lab}: x1 = 3/4", font_size=9)
            if row == 0:
                p.view_xy()
            else:
                p.view_xz()
            p.camera.zoom(1.3)
    p.screenshot(str(path_slices))
    p.close()
    # iso-surfaces at 1/4, 1/2 and 3/4 of the maximum at that time, pillar and room edges
    p = pv.Plotter(off_screen=True, shape=(1, n), window_size=[400 * n, 400])
    for i, (g, lab) in enumerate(zip(grids, labels)):
        p.subplot(0, i)
        m = float(g.point_data["rho"].max())
        iso = g.contour([0.25 * m, 0.5 * m, 0.75 * m], scalars="rho")
        if iso.n_points:
            p.add_mesh(iso, scalars="rho", cmap="plasma", opacity=0.5, clim=[0, m],
                       scalar_bar_args=bar(i))
        p.add_mesh(pillar(pv), color="lightgrey")
        p.add_mesh(room, color="black")
        p.add_text(f"{lab}: rho = (1/4, 1/2, 3/4) max", font_size=9)
        p.view_vector(front, viewup=(0, 0, 1))
    p.screenshot(str(path_iso))
    p.close()


t = time.perf_counter()
figs = []
if not args.no_figures:
    gathered = [viz.gather_p1(result.rho[n]) for n in layers]
    if comm.rank == 0:
        figures(gathered, out / "rho_slices.png", out / "rho_isosurfaces.png")
    figs = ["rho_slices.png", "rho_isosurfaces.png"]
    del gathered
clock["figures_s"] = time.perf_counter() - t

# %% [markdown]
# ## 6. The numbers
#
# Where the crowd is at t = T: the fraction of the mass in the target half x₀ > 1.5 (behind
# the pillar) and its centre of mass.  Then the figures of the run: DOFs, steps, Newton
# iterations, J and its value identity, the mass error (max over the time levels of |∫ρⁿ − 1|),
# min ρ, wall time and peak memory (`getrusage`: the peak resident set of each rank, summed).

# %%
X = ufl.SpatialCoordinate(msh)
rhoT = result.rho[-1]


def integral(expr) -> float:
    return comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(expr * ufl.dx)),
                          op=MPI.SUM)


beyond = integral(ufl.conditional(ufl.gt(X[0], ROOM["cx"]), rhoT, 0.0))
centre = [integral(X[i] * rhoT) for i in range(3)]
max_rho = comm.allreduce(max(float(f.x.array.max()) for f in result.rho), op=MPI.MAX)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0       # Linux: KiB
peaks = comm.allgather(peak)
wall = time.perf_counter() - T0
summary = {
    "quick": args.quick, "ranks": comm.size, "h": size["h"], "ndofs": ndofs,
    "ncells": ncells, "nsteps": problem.steps, "dof_steps": ndofs * problem.steps,
    "method": result.method, "converged": bool(result.converged), "reason": result.reason,
    "iterations": result.iterations, "residual": result.residual,
    "J": result.J, "J_value_identity": result.J_value,
    "value_identity_gap": abs(result.J - result.J_value) / abs(result.J),
    "mass_error": result.mass_error, "min_rho": result.min_rho, "max_rho": max_rho,
    "mass_beyond_pillar_T": beyond, "centre_of_mass_T": centre,
    "solver_path": {k: v for k, v in path.items() if not isinstance(v, dict)},
    "wall_time_s": wall, **clock,
    "peak_memory_bytes": float(sum(peaks)), "peak_memory_bytes_per_rank": peaks,
    "bytes_per_dof_step": float(sum(peaks)) / (ndofs * problem.steps),
    "figures": figs, "series": series, "history": list(result.history),
}
if comm.rank == 0:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
mem = sum(peaks)
times = ", ".join(f"{k[:-2]} {v:.1f}" for k, v in clock.items())
rows = [("P1 DOFs x steps", f"{ndofs} x {problem.steps} ({ndofs * problem.steps:.3g} DOF-steps)"),
        ("Newton iterations", f"{result.iterations} "
                              f"({'converged' if result.converged else 'NOT converged'})"),
        ("J", f"{result.J:.10f}"),
        ("J (value identity)", f"{result.J_value:.10f} "
                               f"(relative gap {summary['value_identity_gap']:.1e})"),
        ("mass error", f"{result.mass_error:.1e}"),
        ("min rho / max rho", f"{result.min_rho:.2e} / {max_rho:.3g}"),
        ("mass beyond the pillar at T", f"{beyond:.3f}"),
        ("centre of mass at T", "(" + ", ".join(f"{c:.3f}" for c in centre) + ")"),
        ("wall time", f"{wall:.1f} s ({times})"),
        ("peak memory", f"{mem / 1e9:.2f} GB over {comm.size} rank(s) "
                        f"({mem / (ndofs * problem.steps):.0f} B per DOF-step)")]
say("\n| figure | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n")
say(f"wrote {out}/ ({', '.join(series)}, {', '.join(figs + ['summary.json'])})")
