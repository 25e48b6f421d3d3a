"""Runner of ``formulation = "hjb-fp"`` with ``[[population]]`` tables: K interacting
populations (fem_mfc/populations.py, MODEL §2b), solved by the joint all-at-once Newton.

Writes the ParaView series ``rho.bp``, ``u.bp`` and ``velocity.bp`` with one field per
population (``rho_NAME``, ``u_NAME``, ``velocity_NAME``; times as for one population), figures
of every population's density at several layers, of the total density, of the solver history
and of the masses, and a summary with the joint cost two ways (direct and the value identity),
per-population masses (``populations``: mass per level, mass error, min ρ), iterations and the
solver path.  The checks (value identity, every population's mass, the sign of every ρ_k)
decide the verdict, as for one population.
"""
from __future__ import annotations

from mpi4py import MPI

import dolfinx
import numpy as np
import ufl

from ..pipeline import bound, build_mesh, solve_line
from . import snapshot_steps

IDENTITY_RTOL = 1e-6            # |J − J_value| / |J| at a discrete solution (Newton)
MASS_TOL = 1e-8                 # max_k,n |∫ρ_kⁿ − m_k|
NEGATIVE_RHO = 0.1              # min ρ_k below −NEGATIVE_RHO·max ρ: an unusable density


def solve_config(cfg: dict, ctx, md=None):
    """Build the K-population problem of ``cfg`` and solve it by Newton (flagged, not
    raised, when it does not converge); checkpoints and restarts as for one population."""
    from .. import populations
    from ..checkpoint import newton_checkpoints, restart_mesh, restarted_from
    from ..solvers import solve
    resume, md = restart_mesh(cfg, ctx, md)
    md = md or build_mesh(cfg, ctx.comm)
    problem = populations.from_config(cfg, md.mesh, md.cell_tags, md.facet_tags)
    s = cfg["solver"]
    with newton_checkpoints(cfg, ctx, problem, resume, True) as (system, writer):
        ctx.log.info("solving hjb-fp with %d populations (%s): %d dofs x %d steps, method "
                     "newton", problem.K, ", ".join(problem.names),
                     problem.space.dofmap.index_map.size_global * problem.K, problem.steps)
        result = solve(problem, method="newton", rtol=s["rtol"], atol=s["atol"],
                       max_it=s["max_it"], initial_guess="trivial", linear=s["linear"],
                       continuation=s["continuation"], strict=False, step=s["step_solver"],
                       system=system, checkpoint=writer, resume=resume, log=ctx.log)
        result.restarted_from = restarted_from(resume)
        if writer is not None:
            writer.converged = result.converged
    return md, problem, result


def checks(result, max_rho: list) -> dict:
    """{name: {value, limit, relation, ok, hint}}: the value identity of the joint system,
    every population's mass, every population's min ρ."""
    pops = result.populations
    scale = max(abs(result.J), abs(result.J_value), 1e-300)
    gap = abs(result.J - result.J_value) / scale
    out = {"value_identity": bound(gap, IDENTITY_RTOL, "|J - J_value| / |J|: the solve is "
                                                       "not a discrete solution")}
    for name, err, low, top in zip(pops["names"], pops["mass_error"], pops["min_rho"],
                                   max_rho):
        out[f"mass_{name}"] = bound(err, MASS_TOL, f"max |mass of {name} - its initial mass|")
        out[f"min_rho_{name}"] = bound(low, -NEGATIVE_RHO * top,
                                       f"negative density of {name}; refine the mesh", ">=")
    return out


def run(cfg: dict, ctx) -> dict:
    md, problem, result = solve_config(cfg, ctx)
    K, N = problem.K, problem.steps
    nl = problem.space.dofmap.index_map.size_local * K
    max_rho = [ctx.comm.allreduce(max((float(f.x.array[:nl][k::K].max()) if nl else -np.inf)
                                      for f in result.rho), op=MPI.MAX) for k in range(K)]
    pops = result.populations
    summary = {
        "method": result.method, "J": result.J, "J_value_identity": result.J_value,
        "mass_error": result.mass_error, "min_rho": result.min_rho, "max_rho": max(max_rho),
        "iterations": result.iterations, "converged": result.converged,
        "reason": result.reason, "residual": result.residual,
        "history": list(result.history),
        "ndofs": problem.space.dofmap.index_map.size_global * K, "nsteps": N, "h": md.h,
        "tau": problem.tau, "solve_time_s": result.seconds,
        "populations": [{"name": n, "mass0": m0, "mass": ms, "mass_error": e, "min_rho": lo,
                         "max_rho": hi, "sigma": p.sigma,
                         "interaction": list(row)}
                        for n, m0, ms, e, lo, hi, p, row in zip(
                            pops["names"], pops["mass0"], pops["mass"], pops["mass_error"],
                            pops["min_rho"], max_rho, problem.populations,
                            problem.interaction)],
        "coupling": problem.coupling,
        "checks": checks(result, max_rho), "H": "quadratic",
    }
    ctx.log.info("%s", solve_line(result.method, result.converged, result.iterations,
                                  result.reason, result.residual, summary["checks"]))
    if result.path:
        summary["solver_path"] = result.path
    if result.continuation:
        summary["continuation"] = result.continuation
        summary.update(result.run_totals())
    if result.restarted_from:
        summary["restarted_from"] = result.restarted_from
    write_fields(problem, result, ctx.series, cfg["output"]["every"])
    if ctx.figures:
        _figures(problem, result, ctx)
    return summary


def write_fields(problem, result, series, every: int = 1) -> list:
    """ParaView series with one field per population: ρ_kⁿ at t_n (``rho``), u_kⁿ and
    a_k = −∇u_kⁿ at the time uⁿ approximates (``u``, ``velocity``), u_k^N = Φ_k at T."""
    S, K = problem.scalar_space, problem.K
    msh = problem.mesh
    deg = S.element.basix_element.degree
    W = dolfinx.fem.functionspace(msh, ("Lagrange", deg, (msh.geometry.dim,)))
    rho = [dolfinx.fem.Function(S, name=f"rho_{n}") for n in problem.names]
    u = [dolfinx.fem.Function(S, name=f"u_{n}") for n in problem.names]
    a = [dolfinx.fem.Function(W, name=f"velocity_{n}") for n in problem.names]
    expr = [dolfinx.fem.Expression(-ufl.grad(f), W.element.interpolation_points()) for f in u]
    phi = [dolfinx.fem.Expression(p.Phi, S.element.interpolation_points())
           for p in problem.populations]
    out = [series("rho", rho), series("u", u), series("velocity", a)]
    rho_series, u_series, vel = out
    N = problem.steps
    for n in range(N + 1):
        if n % every and n != N:
            continue
        for k in range(K):
            problem.component(result.rho[n], k, rho[k])
        rho_series.write(problem.rho_time(n))
        for k in range(K):
            if n < N:
                problem.component(result.u[n], k, u[k])
            else:
                u[k].interpolate(phi[k])
            a[k].interpolate(expr[k])
        t_u = problem.u_time(n) if n < N else problem.T
        u_series.write(t_u)
        vel.write(t_u)
    return out


def _figures(problem, result, ctx):
    from .. import viz
    N, K = problem.steps, problem.K
    layers = snapshot_steps(N)
    for k, name in enumerate(problem.names):
        viz.plot_snapshots([problem.component(result.rho[n], k) for n in layers],
                           [f"{name}, layer {n}: t = {problem.rho_time(n):.3g}"
                            for n in layers], ctx.figure(f"rho_{name}_layers.png"),
                           name=f"rho_{name}")
    total = []
    for n in layers:
        f = dolfinx.fem.Function(problem.scalar_space, name="rho_total")
        f.x.array[:] = sum(problem.component(result.rho[n], k).x.array for k in range(K))
        total.append(f)
    viz.plot_snapshots(total, [f"all, layer {n}" for n in layers],
                       ctx.figure("rho_total_layers.png"), name="rho_total")
    if ctx.comm.rank == 0 and result.history:
        viz.line_plot(np.arange(len(result.history)),
                      {"residual": [h["residual"] for h in result.history]},
                      ctx.figure("history.png"), xlabel="iteration", ylabel="residual",
                      logy=True, markers=True, title=f"{result.method} convergence")
    if ctx.comm.rank == 0:
        pops = result.populations
        t = problem.tau * np.arange(N + 1)
        viz.line_plot(t, {f"mass {n} - {m0:g}": np.array(ms) - m0 for n, m0, ms in
                          zip(pops["names"], pops["mass0"], pops["mass"])},
                      ctx.figure("mass.png"), xlabel="t", ylabel="mass error")
