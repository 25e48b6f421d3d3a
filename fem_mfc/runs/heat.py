"""Runner for ``formulation = "heat"``: the uncontrolled Fokker–Planck flow of ρ_0.

The smoke problem of the platform: it exercises mesh, config, assembly, a PETSc linear solve
with a reused factorisation, ParaView output, figures and the summary, on every mesh kind and
under MPI.  With ``[exact] solution = "heat-gaussian"`` (a Gaussian ρ_0 on a domain much wider
than it) the error against the free-space solution N(m, (s_0² + 2εt) I) is reported.
"""
from __future__ import annotations

import math

from mpi4py import MPI

import dolfinx
import numpy as np
import ufl

from ..density import gaussian_mean, gaussian_ufl, initial_density
from ..errors import ConfigError
from ..forms.heat import THETA, heat_step
from ..invariants import integrate, l2_error
from ..pipeline import bound, build_mesh
from ..solvers.linear import LinearStepper
from . import snapshot_steps

MASS_TOL = 1e-8
# each step is a linear solve (by default a reused factorisation: relative residual ≈ 1e-15);
# above this, the per-step solve (e.g. a user's loose -heat_step_ksp_rtol) did not solve it
RESIDUAL_TOL = 1e-8


def run(cfg: dict, ctx) -> dict:
    from ..checkpoint import load_stepping, restart_mesh, snapshot_fields, stepping_checkpoints
    resume, md = restart_mesh(cfg, ctx)
    md = md or build_mesh(cfg, ctx.comm)
    msh = md.mesh
    p, dcfg = cfg["problem"], cfg["discretisation"]
    T, N = p["T"], p["steps"]
    tau, eps = T / N, p["sigma"] ** 2 / 2
    V = dolfinx.fem.functionspace(msh, ("Lagrange", dcfg["degree"]))
    rho0 = initial_density(cfg["rho0"], V, p["params"])
    rho = dolfinx.fem.Function(V, name="rho")
    rho.x.array[:] = rho0.x.array
    rho_old = dolfinx.fem.Function(V)
    stepper = LinearStepper(*heat_step(rho_old, tau, eps, THETA[dcfg["scheme"]]), "heat_",
                            steps=N, symmetric=True)

    exact = None
    if cfg["exact"]["solution"] == "heat-gaussian":
        if cfg["rho0"]["kind"] != "gaussian":
            raise ConfigError("exact.solution", "rho0.kind = 'gaussian' for 'heat-gaussian'",
                              cfg["rho0"]["kind"])
        t_c = dolfinx.fem.Constant(msh, 0.0)
        s0 = cfg["rho0"]["std"]
        mean = gaussian_mean(cfg["rho0"], msh.geometry.dim)
        exact = (t_c, gaussian_ufl(ufl.SpatialCoordinate(msh), mean,
                                   ufl.sqrt(s0 ** 2 + 2 * eps * t_c)))
    elif cfg["exact"]["solution"] != "none":
        raise ConfigError("exact.solution", "'none' or 'heat-gaussian' for the heat formulation",
                          cfg["exact"]["solution"])

    every = cfg["output"]["every"]
    series = ctx.series("rho", [rho])
    masses, mins = [integrate(rho)], [_min(rho)]
    snap_at = snapshot_steps(N)
    snaps = {0: rho.copy()}
    start = 0
    if resume is not None:                       # the state, snapshots and histories so far
        start = resume["step"]
        snaps = {k: dolfinx.fem.Function(V) for k in snap_at if k <= start}
        load_stepping(ctx.restart, resume, {"rho": rho, **snapshot_fields(snaps)})
        masses, mins = resume["masses"], resume["mins"]
        stepper.residual = resume.get("residual", 0.0)
    series.write(start * tau)                    # a restart's series begins at its checkpoint
    with stepping_checkpoints(cfg, ctx, msh, resume) as writer:
        for n in ctx.progress(range(start + 1, N + 1), desc="heat", total=N - start):
            rho_old.x.array[:] = rho.x.array
            stepper.step(rho, f"heat step {n}")
            masses.append(integrate(rho))
            mins.append(_min(rho))
            if n % every == 0 or n == N:
                series.write(n * tau)
            if n in snap_at:
                snaps[n] = rho.copy()
            if writer is not None and writer.due(n) and n < N:
                writer.write(n, {"rho": rho, **snapshot_fields(snaps)},
                             masses=masses, mins=mins, residual=stepper.residual)
        if writer is not None:
            writer.done = True
    stepper.destroy()

    from .control import NEGATIVE_RHO
    top = _max(rho0)              # the flow's largest density (the maximum principle)
    summary = {"ndofs": V.dofmap.index_map.size_global, "nsteps": N, "h": md.h, "tau": tau,
               "mass": masses[-1], "mass_error": float(np.max(np.abs(np.array(masses) - 1))),
               "min_rho": float(min(mins)), "iterations": N, "residual": stepper.residual}
    if resume is not None:
        summary["restarted_at_step"] = start
    # the no-flux FP steps conserve the mass to the linear solver's tolerance (observed
    # ≤ 1e-14): the run's checks, as for the other runners
    summary["checks"] = {
        "mass": bound(summary["mass_error"], MASS_TOL, "max |mass - 1|"),
        "residual": bound(stepper.residual, RESIDUAL_TOL,
                          "largest relative residual |b - A rho|/|b| of a step's linear solve"),
        # the sign of rho, as the HJB-FP runs check it: one Crank-Nicolson step of a narrow
        # Gaussian (1D, 40 cells, std 0.15, tau = 2) gave min rho = -0.64 (24 % of max rho)
        "min_rho": bound(summary["min_rho"], -NEGATIVE_RHO * top, "negative density; refine "
                         "the mesh" + (" or use [discretisation] scheme = \"backward-euler\""
                                       if dcfg["scheme"] == "crank-nicolson" else ""), ">=")}
    if exact is not None:
        exact[0].value = T
        summary["err_rho_L2"] = l2_error(rho, exact[1])
    if ctx.figures:
        from .. import viz
        labels = [f"t = {T * k / N:.3g}" for k in snap_at]
        viz.plot_snapshots([snaps[k] for k in snap_at], labels,
                           ctx.figure("rho_snapshots.png"), name="rho")
        viz.line_plot(np.linspace(0, T, N + 1), {"mass - 1": np.array(masses) - 1},
                      ctx.figure("mass.png"), xlabel="t", ylabel="mass error")
    return summary


def _max(f) -> float:
    a = f.x.array[: f.function_space.dofmap.index_map.size_local]
    return f.function_space.mesh.comm.allreduce(float(a.max()) if a.size else -math.inf,
                                                op=MPI.MAX)


def _min(f) -> float:
    a = f.x.array[: f.function_space.dofmap.index_map.size_local]
    return f.function_space.mesh.comm.allreduce(float(a.min()) if a.size else math.inf,
                                                op=MPI.MIN)
