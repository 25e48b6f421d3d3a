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
# **Part 1** solves the problem as HJB–FP in the open: the discrete Lagrangian with congestion
# in UFL, the equations of all layers as its derivatives, one petsc4py SNES on the space-time
# system, ParaView output with `VTXWriter` and a PyVista figure; then the library's Newton and
# `fem-mfc run demos/congested_square.toml` do the same and get the same J.
#
# **Part 2** solves it three ways.  Each formulation is discretised on its own terms (backward
# Euler in time, P1 in space), so the three discrete solutions differ by discretisation error
# only: the differences ‖ρ_HJB − ρ_QHD‖, ‖ρ_HJB − χΓ‖ and |ΔJ| must go to zero at first order
# when τ and h are refined together (τ = h/2 ... τ ∝ h).  This script measures that.
#
# Run: `bin/fem-env python3 demos/demo_equivalence.py [--quick] [--out DIR]` (also under
# `mpirun -n 2`); PETSc options of Part 1's SNES go on the command line with the prefix `eq_`,
# e.g. `-eq_snes_monitor`.

# %%
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import numpy as np
import ufl

from fem_mfc import config, options, viz
from fem_mfc.cli import split_petsc_options
from fem_mfc.equivalence import KEYS, solve_three
from fem_mfc.pipeline import run_config
from fem_mfc.problem import ControlProblem
from fem_mfc.solvers.newton import newton
from fem_mfc.solvers.spacetime import Formulation, SpaceTime

HERE = Path(__file__).resolve().parent
comm = MPI.COMM_WORLD

# %% [markdown]
# ## Part 1 — the problem, in the open
#
# Ω = (−1, 1)², T = 1, σ = 0.8 (ε = 0.32), V = 0, congestion G = κρ²/2 with κ = 1, terminal
# loss Φ = Σᵢ cᵢ sin(πxᵢ/2) + 0.2 cos(πxᵢ) (c = 0.4, 0.2: it pushes mass to the left;
# ∂Φ/∂n = 0, so u has no boundary layer at t = T), and ρ_0 ∝ Πᵢ(1 + ½cos(πxᵢ)) — bounded away
# from zero, as the QHD form needs (vacuum makes log ρ and the Bohm potential undefined).
# `demos/congested_square.toml` holds the same numbers; `ControlProblem` holds the data (the
# space, ρ_0 normalised to mass 1, τ and ε).

# %%
KAPPA, SIGMA, T = 1.0, 0.8, 1.0


def G(rho):
    return 0.5 * KAPPA * rho ** 2


def dG(rho):
    return KAPPA * rho


def square_problem(cells: int, steps: int) -> ControlProblem:
    msh = dolfinx.mesh.create_rectangle(comm, [[-1.0, -1.0], [1.0, 1.0]], [cells, cells],
                                        dolfinx.mesh.CellType.triangle)
    x = ufl.SpatialCoordinate(msh)
    rho0 = (1 + 0.5 * ufl.cos(math.pi * x[0])) * (1 + 0.5 * ufl.cos(math.pi * x[1]))
    Phi = (0.4 * ufl.sin(math.pi * x[0] / 2) + 0.2 * ufl.cos(math.pi * x[0])
           + 0.2 * ufl.sin(math.pi * x[1] / 2) + 0.2 * ufl.cos(math.pi * x[1]))
    return ControlProblem(mesh=msh, T=T, sigma=SIGMA, steps=steps, rho0=rho0, Phi=Phi, G=G)


# %% [markdown]
# ## The discrete Lagrangian with congestion
#
# Backward Euler (ρ̄ = ρ^{n+1}), the control a = −∇u eliminated:
#
# $$ L_n(\rho^n, \rho^{n+1}, u^n) = \tau\!\int\big[G(\rho^{n+1})
#    - \tfrac12\rho^{n+1}|\nabla u^n|^2\big] - \int u^n(\rho^{n+1} - \rho^n)
#    - \tau\varepsilon\!\int\nabla u^n\cdot\nabla\rho^{n+1},
#    \qquad L = \int\Phi\rho^N + \sum_n L_n . $$
#
# ∂L/∂uⁿ = 0 is the Fokker–Planck step, ∂L/∂ρᵏ = 0 the HJB step for u^{k−1} — now with the
# congestion G'(ρᵏ) in it, so the HJB equations depend on ρ and the layers no longer decouple
# (compare `demo_lq_gaussian.py`): all 2N fields are solved at once.
#
# `fem_mfc.solvers.spacetime.SpaceTime` is the space-time bookkeeping: level k of the system
# holds the templates ρ^{k−1}, ρ^k, ρ^{k+1}, u^{k−1}, u^k and the rows (equations) of that level;
# a `Formulation` says what the rows are.  Ours: the three derivatives of L below.  SpaceTime
# derives every Jacobian block from them with `ufl.derivative`, assembles the residual of all
# levels into one PETSc vector and the Jacobian into one matrix.

#
# One detail of the integrals: Φ here is not a polynomial, so no quadrature rule integrates
# ∫Φρ^N exactly.  Every form below therefore uses one rule, `dx` (the library's
# `StepData.dx`): with UFL's estimate per form the HJB row's ∫Φq and the cost's ∫Φρ^N would be
# summed with different terms and integrated by different rules, and the discrete value
# identity would hold only to their quadrature difference.

# %%
def step_lagrangian(rho_old, rho_new, u, tau, eps, dx):
    return (tau * (G(rho_new) - 0.5 * rho_new * ufl.inner(ufl.grad(u), ufl.grad(u))) * dx
            - u * (rho_new - rho_old) * dx
            - tau * eps * ufl.inner(ufl.grad(u), ufl.grad(rho_new)) * dx)


def hjb_fp_formulation(p: ControlProblem) -> Formulation:
    tau, eps, Phi = p.tau, p.eps, p.Phi
    dx = p.step_data().dx
    phi = dolfinx.fem.Function(p.space)
    phi.interpolate(dolfinx.fem.Expression(Phi, p.space.element.interpolation_points()))

    def L(rho_old, rho_new, u):
        return step_lagrangian(rho_old, rho_new, u, tau, eps, dx)

    def rows(tm, t_prev, t_cur):
        q = ufl.TestFunction(p.space)
        rp, rc, rn, up, uc = (tm[k] for k in ("rho_prev", "rho_cur", "rho_next",
                                               "u_prev", "u_cur"))
        return {"u": ufl.derivative(L(rc, rn, uc), uc, q),                     # FP k -> k+1
                "rho": ufl.derivative(L(rp, rc, up) + L(rc, rn, uc), rc, q),   # HJB for u^{k-1}
                "rho_last": ufl.derivative(L(rp, rc, up) + Phi * rc * dx, rc, q)}

    def functionals(tm, t_cur):
        """Per level: the cost of step k, ∫Φρ^N, the mass, and the two terms of the discrete
        value identity J = ∂L/∂ρ⁰[ρ⁰] + τΣ∫(G(ρ) − ρG'(ρ)) (MODEL §2)."""
        rc, rn, uc = tm["rho_cur"], tm["rho_next"], tm["u_cur"]
        return {"cost": tau * (0.5 * ufl.inner(ufl.grad(uc), ufl.grad(uc)) * rn + G(rn)) * dx,
                "terminal": Phi * rc * dx, "mass": rc * dx,
                "u0": ufl.derivative(L(rc, rn, uc), rc, rc),
                "value": tau * (G(rn) - rn * dG(rn)) * dx}

    # data: ρ⁰ = ρ_0; initial guess ρⁿ = ρ_0, uⁿ = Φ
    return Formulation(build=rows, functionals=functionals, data={"rho": p.rho0, "u": None},
                       guess={"rho": p.rho0, "u": phi})


# %% [markdown]
# ## One SNES for all layers
#
# Newton on F(X) = 0, X = (u⁰, ρ¹, u¹, …, ρ^N): the residual and Jacobian callbacks are
# SpaceTime's; the Newton step is solved by LU (MUMPS, with the scaling that suits the
# saddle-point structure of the KKT matrix).  Options under the prefix `eq_`, scoped.

# %%
SNES_DEFAULTS = {"snes_type": "newtonls", "snes_linesearch_type": "bt", "snes_rtol": 1e-10,
                 "snes_atol": 1e-12, "ksp_type": "preonly", "pc_type": "lu",
                 "pc_factor_mat_solver_type": "mumps", "mat_mumps_icntl_14": 100,
                 "mat_mumps_icntl_6": 5}


def solve_in_the_open(p: ControlProblem, petsc_args=()) -> tuple[SpaceTime, dict]:
    st = SpaceTime(p, hjb_fp_formulation(p), cache=False)
    X, F = st.create_vec(), st.create_vec()
    st.states_to_vec(X)                                   # the initial guess
    A = st.jacobian(None)
    snes = PETSc.SNES().create(comm)
    snes.setOptionsPrefix("eq_")
    snes.setFunction(lambda snes, x, f: st.residual(x, f), F)
    snes.setJacobian(lambda snes, x, J, P: st.jacobian(x), A, A)
    with options.inserted(settings=split_petsc_options(list(petsc_args)),
                          defaults=SNES_DEFAULTS, prefix="eq_"):
        snes.setFromOptions()
        snes.solve(None, X)
    if snes.getConvergedReason() <= 0:
        raise SystemExit(f"SNES did not converge ({snes.getConvergedReason()})")
    st.vec_to_states(X)
    d = st.diagnostics()                                  # J, J_value, mass, min ρ
    d["iterations"] = snes.getIterationNumber()
    snes.destroy()
    return st, d


# %% [markdown]
# ## ParaView files and a PyVista figure
#
# ρⁿ at tₙ and uⁿ at tₙ (backward Euler) into `rho.bp`, `u.bp`; the density at three layers,
# gathered to rank 0 (`fem_mfc.viz.gather_p1`) and drawn as warped surfaces.

# %%
def write_vtx(st: SpaceTime, out: Path):
    p = st.problem
    rho_out = dolfinx.fem.Function(p.space, name="rho")
    u_out = dolfinx.fem.Function(p.space, name="u")
    with dolfinx.io.VTXWriter(comm, str(out / "rho.bp"), [rho_out], engine="BP4") as vr, \
            dolfinx.io.VTXWriter(comm, str(out / "u.bp"), [u_out], engine="BP4") as vu:
        for n in range(p.steps + 1):
            rho_out.x.array[:] = st.rho[n].x.array
            vr.write(n * p.tau)
            if n < p.steps:
                u_out.x.array[:] = st.u[n].x.array
                vu.write(n * p.tau)


def pyvista_figure(st: SpaceTime, path: Path):
    N = st.N
    layers = (0, N // 2, N)
    gathered = [viz.gather_p1(st.rho[n]) for n in layers]
    if comm.rank != 0:
        return
    import pyvista
    viz.ensure_display()                     # VTK 9.3 needs an X server even off-screen
    top = max(float(d[3].max()) for d in gathered)
    plotter = pyvista.Plotter(off_screen=True, shape=(1, 3), window_size=[1350, 480])
    for i, (n, (points, cells, types, values)) in enumerate(zip(layers, gathered)):
        grid = pyvista.UnstructuredGrid(cells, types, points)
        grid.point_data["rho"] = values
        plotter.subplot(0, i)
        plotter.add_mesh(grid.warp_by_scalar("rho", factor=0.7 / top), scalars="rho",
                         clim=[0.0, top], cmap="viridis", show_scalar_bar=(i == 2))
        plotter.add_text(f"rho, layer {n} (t = {n * st.problem.tau:.2f})", font_size=11)
        plotter.view_isometric()
    plotter.screenshot(str(path))
    plotter.close()


# %% [markdown]
# ## The library does the same
#
# `fem_mfc.solvers.newton` solves the same discrete system (its Formulation is written in
# `fem_mfc.forms.hjb_fp`, its linear path chosen by cost, its residuals and blocks cached), and
# `fem-mfc run demos/congested_square.toml` runs it from the config file.  Both give the same J
# to solver tolerance.

# %%
def part1(quick: bool, out: Path, petsc_args=()) -> dict:
    cfg = config.load(HERE / "congested_square.toml")
    if quick:
        cfg["mesh"]["cells"], cfg["problem"]["steps"] = 8, 4
    cells, steps = cfg["mesh"]["cells"], cfg["problem"]["steps"]
    p = square_problem(cells, steps)
    st, d = solve_in_the_open(p, petsc_args)
    write_vtx(st, out)
    pyvista_figure(st, out / "rho.png")
    lib = newton(square_problem(cells, steps))
    run = run_config(cfg, out / "run", config_path="demos/congested_square.toml", quiet=True)
    res = {"cells": cells, "steps": steps, "ndofs": p.space.dofmap.index_map.size_global,
           "J": d["J"], "J_value_identity": d["J_value"], "mass_error": d["mass_error"],
           "min_rho": d["min_rho"], "iterations": d["iterations"],
           "J_library": lib.J, "J_run": run["J"], "library_iterations": lib.iterations,
           "J_library_diff": abs(d["J"] - lib.J), "J_run_diff": abs(d["J"] - run["J"])}
    if comm.rank == 0:
        print(f"Part 1: {cells}x{cells} square, {steps} layers: J = {d['J']:.10f} "
              f"(value identity {d['J_value']:.10f}, {d['iterations']} Newton iterations, "
              f"mass error {d['mass_error']:.1e})")
        print(f"  fem_mfc.solvers.newton: J = {lib.J:.10f}; fem-mfc run: J = {run['J']:.10f}")
    worst = max(res["J_library_diff"], res["J_run_diff"])
    if worst > 1e-8 * abs(d["J"]):
        raise SystemExit(f"the demo and the library disagree: {res}")
    return res


# %% [markdown]
# ## Part 2 — three formulations, refined together
#
# `fem_mfc.equivalence.solve_three` solves the same problem (`make_problem` there builds the
# data above, in 1D or 2D) as
#
# * HJB–FP: the all-at-once Newton on the discrete Lagrangian (`solvers/newton.py`);
# * QHD: Newton on the discrete action ∫S ∂_tρ − H(ρ, S) (`solvers/qhd.py`);
# * Cole–Hopf: Newton on the cubic (χ, Γ) pair (`solvers/cole_hopf_pair.py`), ρ = χΓ,
#
# and returns the differences (max over the time levels t_n of the L² norm in space).
# τ and h are halved together (τ = h/2 ... steps = cells/2).  Quick mode: three 1D levels and
# two small 2D levels.

# %%
def rates(rows, key):
    """Observed orders log(e_{i−1}/e_i)/log(h_{i−1}/h_i)."""
    return [math.log(a[key] / b[key]) / math.log(a["h"] / b["h"])
            for a, b in zip(rows[:-1], rows[1:])]


def study(quick: bool) -> dict:
    levels = {1: [16, 32, 64] if quick else [16, 32, 64, 128, 256],
              2: [8, 16] if quick else [8, 16, 32]}
    out = {}
    for dim, cells_list in levels.items():
        rows = [solve_three(c, max(c // 2, 2), dim, comm=comm) for c in cells_list]
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
    finest = {name: viz.gather_p1(f) for name, f in res[1]["rows"][-1]["rho_T"].items()}
    if comm.rank != 0:
        return
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
    for name, (points, _, _, values) in finest.items():
        o = np.argsort(points[:, 0])
        ax.plot(points[o, 0], values[o], label=name,
                ls={"hjb": "-", "qhd": "--", "pair": ":"}[name])
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
    args, petsc_args = ap.parse_known_args(argv)
    out = Path(args.out)
    if comm.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    comm.barrier()
    t0 = time.perf_counter()
    first = part1(args.quick, out, petsc_args)
    res = study(args.quick)
    figures(res, out)
    summary = {str(dim): {"rows": [{k: v for k, v in row.items() if k != "rho_T"}
                                   for row in r["rows"]], "rates": r["rates"]}
               for dim, r in res.items()}
    summary["part1"] = first
    summary["seconds"] = time.perf_counter() - t0
    summary["quick"] = args.quick
    summary["ranks"] = comm.size
    if comm.rank == 0:
        (out / "table.md").write_text(table(res))
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(table(res))
        print(f"wrote {out}/ (rho.bp, u.bp, rho.png, run/, table.md, convergence.png, "
              f"densities.png, summary.json) in {summary['seconds']:.1f} s")


# %%
if __name__ == "__main__":
    main()
