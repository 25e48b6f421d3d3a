# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # The linear–quadratic Gaussian control problem on an unstructured disk
#
# The simplest training problem with a closed-form answer (MODEL §7.1): a density of
# features $\rho_0 = N(m_0, s_0^2 I)$ is steered for a time $T$ (the depth of the network)
# by a velocity field $a(t,x)$ (the network) with noise $\sigma$, $\varepsilon = \sigma^2/2$,
# minimising
#
# $$ J(a) = \int_\Omega \tfrac{a_T}{2}|x|^2 \rho(T) + \int_0^T\!\!\int_\Omega \tfrac12 |a|^2 \rho
#    \quad\text{s.t.}\quad \partial_t\rho + \nabla\cdot(\rho a) = \varepsilon\Delta\rho,
#    \ \rho(0) = \rho_0 . $$
#
# The optimality system is the backward HJB equation for the value function $u$ and the forward
# Fokker–Planck equation for $\rho$, coupled through the feedback $a = -\nabla u$:
#
# $$ -\partial_t u - \varepsilon\Delta u + \tfrac12|\nabla u|^2 = 0,\quad u(T) = \Phi, \qquad
#    \partial_t\rho - \varepsilon\Delta\rho - \nabla\cdot(\rho\nabla u) = 0,\quad \rho(0)=\rho_0,$$
#
# with $\Phi = \tfrac{a_T}{2}|x|^2$.  Its exact solution is $u = \tfrac12 P(t)|x|^2 + \varepsilon
# d \log\tau(t)$ with $\tau(t) = 1 + a_T(T-t)$, $P = a_T/\tau$, and $\rho$ stays Gaussian.
#
# This demo goes from the equations to the numbers in the open: the discrete Lagrangian in UFL
# (§2), its derivatives as the equations of each layer and one petsc4py SNES per layer (§3),
# ParaView output with `VTXWriter` (§4), a PyVista figure (§5), the errors against the closed
# form (§6).  Then `fem-mfc run demos/lq_gaussian_disk.toml` does the same, and we check that it
# gets the same numbers (§7); a refinement study ends it (§8).
#
# Run it with `bin/fem-env python3 demos/demo_lq_gaussian.py [--quick] [--out DIR]`, or in
# parallel with `bin/fem-env mpirun -n 2 python3 demos/demo_lq_gaussian.py`.  PETSc options
# of the two solvers go on the command line: `-lq_hjb_snes_monitor`, `-lq_fp_ksp_view`.

# %%
import argparse
import math
from pathlib import Path

from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import dolfinx.fem.petsc
import ufl

from fem_mfc import config, options, viz
from fem_mfc.cli import split_petsc_options
from fem_mfc.exact import LQGaussian
from fem_mfc.io import write_json_atomic
from fem_mfc.pipeline import build_mesh, run_config
from fem_mfc.refine import refinement_study

parser = argparse.ArgumentParser(description="The LQ Gaussian problem, equation to figure.")
parser.add_argument("--out", default="results/demo_lq_gaussian")
parser.add_argument("--quick", action="store_true", help="coarse, for tests")
args, petsc_args = parser.parse_known_args()
out = Path(args.out)
here = Path(__file__).resolve().parent
comm = MPI.COMM_WORLD
if comm.rank == 0:
    out.mkdir(parents=True, exist_ok=True)
comm.barrier()


def integral(expr) -> float:
    """∫_Ω expr (or a surface integral), summed over the ranks."""
    return comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(expr)), op=MPI.SUM)


# %% [markdown]
# ## 1. Problem data and mesh
#
# The numbers come from the config file that `fem-mfc run` reads, so that §7 solves the same
# problem: a gmsh disk of radius 3 (target size h = 0.25), T = 1, σ = 0.6, 16 layers,
# $a_T = 1$, $\rho_0 = N((0.6, -0.3), 0.45^2 I)$, P1 elements and Crank–Nicolson (θ = ½).
# The closed-form solution (`fem_mfc.exact.LQGaussian`) gives $\rho_0$, the exact $J^*$ and
# $u$ for the errors; on the disk the exact $u$ has $\nabla u\cdot n \ne 0$, so its Neumann
# datum $b_H = \varepsilon\nabla u\cdot n$ enters the Lagrangian as a boundary term.

# %%
cfg = config.load(here / "lq_gaussian_disk.toml")
if args.quick:
    cfg["mesh"]["h"] = 0.5
    cfg["problem"]["steps"] = 6
pr, r0, disc = cfg["problem"], cfg["rho0"], cfg["discretisation"]
T, sigma, N, a_T = pr["T"], pr["sigma"], pr["steps"], pr["params"]["a"]
eps, tau = 0.5 * sigma ** 2, T / N
theta = {"backward-euler": 1.0, "crank-nicolson": 0.5}[disc["scheme"]]

msh = build_mesh(cfg, comm).mesh                      # the gmsh disk of demos/lq_gaussian_disk.toml
V = dolfinx.fem.functionspace(msh, ("Lagrange", disc["degree"]))
x, normal = ufl.SpatialCoordinate(msh), ufl.FacetNormal(msh)
exact = LQGaussian(msh, T, sigma, a=a_T, mean=r0["mean"], std=r0["std"])

Phi = 0.5 * a_T * ufl.inner(x, x)


def b_H(t):
    """The exact Neumann datum ε∇u·n at time t (a float or a UFL Constant)."""
    return eps * ufl.dot(ufl.grad(exact.u(t)), normal)


rho0 = dolfinx.fem.Function(V, name="rho")
rho0.interpolate(dolfinx.fem.Expression(exact.rho(0.0), V.element.interpolation_points()))
rho0.x.array[:] /= integral(rho0 * ufl.dx)            # mass 1 on the disk
if comm.rank == 0:
    print(f"{V.dofmap.index_map.size_global} P{disc['degree']} dofs, {N} layers, "
          f"tau = {tau:.4g}, theta = {theta}, {comm.size} rank(s)")

# %% [markdown]
# ## 2. The discrete Lagrangian
#
# With the control $a = -\nabla u$ eliminated, one layer $n \to n+1$ contributes
#
# $$ L_n(\rho^n, \rho^{n+1}, u^n) = -\tau\!\int \tfrac12\bar\rho|\nabla u^n|^2
#    - \int u^n(\rho^{n+1} - \rho^n) - \tau\varepsilon\!\int \nabla u^n\cdot\nabla\bar\rho
#    + \tau\!\int_{\partial\Omega} b_H\,\bar\rho, \qquad
#    \bar\rho = \theta\rho^{n+1} + (1-\theta)\rho^n, $$
#
# and $L = \int\Phi\rho^N + \sum_n L_n$.  Its derivatives are the discrete equations:
# $\partial L/\partial u^n = 0$ is the Fokker–Planck step $\rho^n \to \rho^{n+1}$ (test function
# 1 gives $\int\rho^{n+1} = \int\rho^n$), and $\partial L/\partial\rho^k = 0$ is the implicit HJB
# step $u^k \to u^{k-1}$ (the term $\int\Phi\rho^N$ plays "$u^N = \Phi$").  So the discrete FP
# operator is exactly the adjoint of the linearised discrete HJB operator.  In UFL:

# %%
def step_lagrangian(rho_old, rho_new, u, t):
    """L_n: the Lagrangian of one layer, source data at time t."""
    rho_bar = theta * rho_new + (1 - theta) * rho_old
    return (-tau * 0.5 * rho_bar * ufl.inner(ufl.grad(u), ufl.grad(u)) * ufl.dx
            - u * (rho_new - rho_old) * ufl.dx
            - tau * eps * ufl.inner(ufl.grad(u), ufl.grad(rho_bar)) * ufl.dx
            + tau * b_H(t) * rho_bar * ufl.ds)


def terminal(rho_N):
    return Phi * rho_N * ufl.dx


# Placeholders of the fields one equation involves: ρ^{k−1}, ρ^k, ρ^{k+1}, u^{k−1}, u^k, and
# the source times t_{k−1} + θτ, t_k + θτ of the two layers next to level k.
rho_prev, rho_k, rho_next = (dolfinx.fem.Function(V) for _ in range(3))
u_prev, u_k = dolfinx.fem.Function(V, name="u"), dolfinx.fem.Function(V, name="u")
t_prev, t_k = dolfinx.fem.Constant(msh, 0.0), dolfinx.fem.Constant(msh, 0.0)
q = ufl.TestFunction(V)

# HJB: ∂L/∂ρ^k = 0 (level k < N, and the last level with the terminal term) -- for u^{k−1}
hjb = ufl.derivative(step_lagrangian(rho_prev, rho_k, u_prev, t_prev)
                     + step_lagrangian(rho_k, rho_next, u_k, t_k), rho_k, q)
hjb_last = ufl.derivative(step_lagrangian(rho_prev, rho_k, u_prev, t_prev) + terminal(rho_k),
                          rho_k, q)
# FP: ∂L/∂u^k = 0 -- for ρ^{k+1}
fp = ufl.derivative(step_lagrangian(rho_k, rho_next, u_k, t_k), u_k, q)

# %% [markdown]
# With $V = G = 0$, $L$ is *linear* in $\rho$: the HJB equations do not contain $\rho$ at all.
# The system decouples — solve the HJB equations backward in time, then the FP equations
# forward.  (With congestion it does not: see `demo_equivalence.py`, which solves all layers
# at once.)  UFL confirms it:

# %%
unknown_rho = {rho_prev, rho_k, rho_next}
for name, F in (("hjb", hjb), ("hjb_last", hjb_last)):
    used = set(ufl.algorithms.extract_coefficients(ufl.algorithms.expand_derivatives(F)))
    assert not used & unknown_rho, f"{name} depends on rho"

# %% [markdown]
# ## 3. One SNES per layer
#
# Each equation is $F(w; q) = 0$ for one unknown Function $w$ (HJB: $u^{k-1}$, nonlinear through
# $|\nabla u|^2$; FP: $\rho^{k+1}$, linear).  A petsc4py SNES assembles $F$ and its Jacobian
# $\partial F/\partial w$ (from `ufl.derivative`) with DOLFINx; its options live under a prefix
# and are scoped with `fem_mfc.options.inserted` (defaults never override the command line,
# and nothing is left in PETSc's options database afterwards).

# %%
SOLVER = {"snes_type": "newtonls", "snes_linesearch_type": "basic", "snes_rtol": 1e-12,
          "snes_atol": 1e-13, "ksp_type": "preonly", "pc_type": "lu",
          "pc_factor_mat_solver_type": "mumps"}


class LayerSolver:
    """A SNES for F(w; q) = 0 in the Function w, with options prefix ``prefix``."""

    def __init__(self, F, w, prefix):
        self.w = w
        self.F = dolfinx.fem.form(F)
        self.J = dolfinx.fem.form(ufl.derivative(F, w, ufl.TrialFunction(V)))
        self.b = dolfinx.fem.petsc.create_vector(self.F)
        self.A = dolfinx.fem.petsc.create_matrix(self.J)
        self.x = self.b.duplicate()
        self.snes = PETSc.SNES().create(comm)
        self.snes.setOptionsPrefix(prefix)
        self.snes.setFunction(self.residual, self.b)
        self.snes.setJacobian(self.jacobian, self.A)
        self.iterations = 0

    def _set(self, x):
        x.copy(self.w.x.petsc_vec)
        self.w.x.scatter_forward()

    def residual(self, snes, x, b):
        self._set(x)
        with b.localForm() as b_local:
            b_local.set(0.0)
        dolfinx.fem.petsc.assemble_vector(b, self.F)
        b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)

    def jacobian(self, snes, x, A, P):
        self._set(x)
        A.zeroEntries()
        dolfinx.fem.petsc.assemble_matrix(A, self.J)
        A.assemble()

    def solve(self):
        """Solve from the current w; w ends at the solution."""
        self.w.x.petsc_vec.copy(self.x)
        self.snes.solve(None, self.x)
        reason = self.snes.getConvergedReason()
        if reason <= 0:
            raise RuntimeError(f"{self.snes.getOptionsPrefix()}: SNES diverged ({reason})")
        self.iterations += self.snes.getIterationNumber()
        self._set(self.x)


with options.inserted(settings=split_petsc_options(petsc_args),
                      defaults={**{"lq_hjb_" + k: v for k, v in SOLVER.items()},
                  **{"lq_fp_" + k: v for k, v in SOLVER.items()}}):
    hjb_solver = LayerSolver(hjb, u_prev, "lq_hjb_")
    hjb_last_solver = LayerSolver(hjb_last, u_prev, "lq_hjb_")
    fp_solver = LayerSolver(fp, rho_next, "lq_fp_")
    for s in (hjb_solver, hjb_last_solver, fp_solver):
        s.snes.setFromOptions()

    # backward: u^{N−1} from Φ, then u^{k−1} from u^k (each layer's data at t_n + θτ)
    u = [dolfinx.fem.Function(V, name="u") for _ in range(N)]
    u_prev.interpolate(dolfinx.fem.Expression(Phi, V.element.interpolation_points()))
    for k in range(N, 0, -1):
        t_prev.value = (k - 1 + theta) * tau
        t_k.value = (k + theta) * tau
        if k < N:
            u_k.x.array[:] = u[k].x.array
        (hjb_last_solver if k == N else hjb_solver).solve()
        u[k - 1].x.array[:] = u_prev.x.array

    # forward: ρ^{k+1} from ρ^k and u^k
    rho = [rho0] + [dolfinx.fem.Function(V, name="rho") for _ in range(N)]
    for k in range(N):
        rho_k.x.array[:] = rho[k].x.array
        u_k.x.array[:] = u[k].x.array
        t_k.value = (k + theta) * tau
        rho_next.x.array[:] = rho[k].x.array        # initial guess
        fp_solver.solve()
        rho[k + 1].x.array[:] = rho_next.x.array

# %% [markdown]
# The cost, evaluated directly, $J = \sum_n \tau\int\tfrac12|\nabla u^n|^2\bar\rho^n + \int\Phi
# \rho^N$, and by the **discrete value identity**: $L$ is linear in $\rho$, so
# $L = \sum_k \partial L/\partial\rho^k[\rho^k] = \partial L/\partial\rho^0[\rho^0]$ at the
# solution (the HJB equations make the other terms vanish), and the FP equations turn $L$ into
# $J + \tau\sum_n\int_{\partial\Omega} b_H\bar\rho^n$ — the discrete form of
# $J^* = \int u(0)\rho_0$.  Both agree to solver tolerance; mass is conserved to round-off.

# %%
rho_bar = theta * rho_next + (1 - theta) * rho_k              # of layer k (placeholders)
cost = dolfinx.fem.form(tau * 0.5 * ufl.inner(ufl.grad(u_k), ufl.grad(u_k)) * rho_bar * ufl.dx)
flux = dolfinx.fem.form(tau * b_H(t_k) * rho_bar * ufl.ds)
J, boundary = integral(terminal(rho[N])), 0.0
for k in range(N):
    rho_k.x.array[:], rho_next.x.array[:] = rho[k].x.array, rho[k + 1].x.array
    u_k.x.array[:] = u[k].x.array
    t_k.value = (k + theta) * tau
    J += comm.allreduce(dolfinx.fem.assemble_scalar(cost), op=MPI.SUM)
    boundary += comm.allreduce(dolfinx.fem.assemble_scalar(flux), op=MPI.SUM)
t_k.value = theta * tau
J_value = integral(ufl.derivative(step_lagrangian(rho[0], rho[1], u[0], t_k), rho[0], rho[0])
                   ) - boundary
mass_error = max(abs(integral(r * ufl.dx) - 1.0) for r in rho)
if comm.rank == 0:
    print(f"J = {J:.10f}, value identity {J_value:.10f} (gap {abs(J - J_value):.1e}), "
          f"exact J* = {exact.J:.10f}; mass error {mass_error:.1e}; SNES iterations: HJB "
          f"{hjb_solver.iterations + hjb_last_solver.iterations}, FP {fp_solver.iterations}")

# %% [markdown]
# ## 4. ParaView files
#
# `rho.bp` holds $\rho^n$ at $t_n$, `u.bp` holds $u^n$ at the time it approximates,
# $t_n + (1-\theta)\tau$ (ADIOS2 VTX files: open them in ParaView).

# %%
rho_out, u_out = dolfinx.fem.Function(V, name="rho"), dolfinx.fem.Function(V, name="u")
with dolfinx.io.VTXWriter(comm, str(out / "rho.bp"), [rho_out], engine="BP4") as vtx_rho, \
        dolfinx.io.VTXWriter(comm, str(out / "u.bp"), [u_out], engine="BP4") as vtx_u:
    for n in range(N + 1):
        rho_out.x.array[:] = rho[n].x.array
        vtx_rho.write(n * tau)
        if n < N:
            u_out.x.array[:] = u[n].x.array
            vtx_u.write((n + 1 - theta) * tau)

# %% [markdown]
# ## 5. A PyVista figure
#
# The density at the first and last layer and the exact $\rho(T)$, as warped surfaces.  The
# fields are gathered to rank 0 (`fem_mfc.viz.gather_p1`: points, cells, cell types and values
# of every rank) and drawn there off-screen.

# %%
rho_exact_T = dolfinx.fem.Function(V, name="rho")
rho_exact_T.interpolate(dolfinx.fem.Expression(exact.rho(T), V.element.interpolation_points()))
panels = {"rho(0)": rho[0], f"rho(T), {N} layers": rho[N], "exact rho(T)": rho_exact_T}
gathered = {title: viz.gather_p1(f) for title, f in panels.items()}
if comm.rank == 0:
    import pyvista
    viz.ensure_display()                  # VTK 9.3 needs an X server even off-screen
    top = max(float(d[3].max()) for d in gathered.values())
    plotter = pyvista.Plotter(off_screen=True, shape=(1, 3), window_size=[1350, 480])
    for i, (title, (points, cells, types, values)) in enumerate(gathered.items()):
        grid = pyvista.UnstructuredGrid(cells, types, points)
        grid.point_data["rho"] = values
        plotter.subplot(0, i)
        plotter.add_mesh(grid.warp_by_scalar("rho", factor=2.0 / top), scalars="rho",
                         clim=[0.0, top], cmap="viridis", show_scalar_bar=(i == 2))
        plotter.add_text(title, font_size=11)
        plotter.view_isometric()
        plotter.camera.zoom(1.4)
    plotter.screenshot(str(out / "rho.png"))
    plotter.close()

# %% [markdown]
# ## 6. Errors against the closed form
#
# $\max_n\|\rho^n - \rho(t_n)\|_{L^2}$, $\max_n\|u^n - u(t_n + (1-\theta)\tau)\|_{L^2}$ and
# $|J - J^*|$.

# %%
t_exact = dolfinx.fem.Constant(msh, 0.0)
f = dolfinx.fem.Function(V)
error_forms = {name: dolfinx.fem.form((f - getattr(exact, name)(t_exact)) ** 2 * ufl.dx)
               for name in ("rho", "u")}


def l2_error(name, g, t):
    f.x.array[:] = g.x.array
    t_exact.value = t
    return math.sqrt(comm.allreduce(dolfinx.fem.assemble_scalar(error_forms[name]),
                                    op=MPI.SUM))


errors = {"err_rho_L2": max(l2_error("rho", rho[n], n * tau) for n in range(N + 1)),
          "err_u_L2": max(l2_error("u", u[n], (n + 1 - theta) * tau) for n in range(N)),
          "err_J": abs(J - exact.J)}
if comm.rank == 0:
    print("errors: " + ", ".join(f"{k} {v:.3e}" for k, v in errors.items()))

# %% [markdown]
# ## 7. `fem-mfc run demos/lq_gaussian_disk.toml` does the same
#
# The command line runs the same config through `fem_mfc.pipeline.run_config`: the same
# Lagrangian (`fem_mfc.forms.hjb_fp`), all layers at once by Newton
# (`fem_mfc.solvers.newton`), and writes `summary.json`, VTX files and figures into its output
# folder.  It reaches the same discrete solution: J, the errors and the value identity agree
# to solver tolerance.

# %%
run = run_config(cfg, out / "solve", config_path="demos/lq_gaussian_disk.toml", quiet=True)
agreement = {"J_demo": J, "J_run": run["J"], "J_diff": abs(J - run["J"]),
             "J_value_diff": abs(J_value - run["J_value_identity"])}
agreement.update({f"{k}_diff": abs(errors[k] - run[k]) for k in errors})
if comm.rank == 0:
    print(f"fem-mfc run: J = {run['J']:.10f} ({run['iterations']} Newton iterations, "
          f"{run['solver_path']['linear']} linear path); |J_demo - J_run| = "
          f"{agreement['J_diff']:.1e}")
if agreement["J_diff"] > 1e-8 * abs(J):
    raise SystemExit(f"the demo and fem-mfc run disagree: {agreement}")

# %% [markdown]
# ## 8. Convergence under refinement
#
# Refining the mesh and the time step together (`fem-mfc refine demos/lq_gaussian_disk.toml
# --levels 3 --in both`), Crank–Nicolson with P1 elements converges at order 2 in $u$, $\rho$
# and $J$.

# %%
levels = 2 if args.quick else 3
conv = refinement_study(cfg, out / "refine", levels=levels, where="both",
                        config_path="demos/lq_gaussian_disk.toml")
if comm.rank == 0:
    print("level      h       tau    err_u     err_rho    err_J")
    for row in conv["levels"]:
        print(f"{row['level']:5d} {row['h']:8.4f} {row['tau']:8.4f} {row['err_u_L2']:9.2e} "
              f"{row['err_rho_L2']:9.2e} {row['err_J']:9.2e}")
    print("observed orders:", {k: [round(r, 2) for r in v if r is not None]
                               for k, v in conv["rates"].items()})
    write_json_atomic(out / "summary.json", {
        "quick": args.quick, "ranks": comm.size, "ndofs": V.dofmap.index_map.size_global,
        "nsteps": N, "J": J, "J_value_identity": J_value, "J_exact": exact.J,
        "mass_error": mass_error, **errors,
        "iterations": {"hjb": hjb_solver.iterations + hjb_last_solver.iterations,
                       "fp": fp_solver.iterations},
        "agreement": agreement, "solve": run, "convergence": conv,
        "figures": ["rho.png"], "vtx": ["rho.bp", "u.bp"]})
    print(f"wrote {out}/ (rho.bp, u.bp, rho.png, summary.json, solve/, refine/)")

# %% [markdown]
# Also in the output folder: `solve/` (what `fem-mfc run` writes: `rho_layers.png`,
# `rho_exact.png`, `rho_profile.png`, `history.png`, `rho.bp`, `u.bp`, `velocity.bp`) and
# `refine/convergence.png`.
