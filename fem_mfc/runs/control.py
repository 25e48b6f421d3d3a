"""Runner for ``formulation = "hjb-fp"`` and ``"cole-hopf"``: the feedback-network optimality
system of MODEL §2 (backward HJB, forward Fokker–Planck), solved by Newton, Picard or the
Cole–Hopf sweeps (``[solver] method``; ``cole-hopf`` forces the linear path).

Writes the ParaView series ``rho.bp`` (ρⁿ at t_n), ``u.bp`` (uⁿ at the time it
approximates: t_n for backward Euler, t_{n+½} for Crank–Nicolson; u^N = Φ at T) and
``velocity.bp`` (a = −∇uⁿ, at the times of u), figures of ρ at several layers and of the
solver history, and a summary with the cost two ways (direct evaluation and the value
identity), mass error, min ρ, iterations, the solver path and — with an ``[exact]`` solution
— the error norms ``err_u_L2``, ``err_rho_L2``, ``err_J``.

The summary's ``checks`` decide whether the run is a success (:func:`checks`): the value
identity, mass conservation and the sign of ρ; a failed check or an unconverged solve flags
the run (exit status 3).
"""
from __future__ import annotations

from mpi4py import MPI

import dolfinx
import numpy as np
import ufl

from ..errors import ConfigError
from ..pipeline import bound, build_mesh, solve_line
from ..problem import ControlProblem
from ..solvers import COLE_HOPF_IDENTITY_RTOL
from ..solvers.result import identity_gap
from . import snapshot_steps

# A computed J and its value identity agree to solver tolerance at a discrete solution of the
# HJB–FP scheme (Newton, Picard); the Cole–Hopf paths solve another discretisation of the same
# problem, whose J differs from the HJB–FP value identity by the discretisation error.
IDENTITY_RTOL = {"newton": 1e-6, "picard": 1e-6}
IDENTITY_RTOL_OTHER = COLE_HOPF_IDENTITY_RTOL
MASS_TOL = 1e-8                 # discrete mass conservation (Newton, Picard)
SOLVER_FACTOR = 10.0            # … or 10 × the solve's residual target where that is larger
                                # (a loosened tolerance: 2D 16² × 20 with rtol 1e-4 reached
                                # 1.1e-6 against a target of 7.1e-6, identity gap 1.8e-6)
NEGATIVE_RHO = 0.1              # min ρ below −NEGATIVE_RHO·max ρ: an unusable density
ABSORBING = 1e6                 # a leaky wall with rate·h/ε above this is an exit to 6 digits
# (ε = σ²/2): its rows, rate·ρ beside the diffusion's ε/h, lose digits to round-off — the mass
# check failed from rate 1e10 (1D, 20 cells, σ = 0.2: 3.7e-7 against 1e-8; 2D 8², σ = 0.3:
# from 1e11) with nothing wrong that refining would cure: the advice is the exit, their limit
EXIT_INFLOW = 1e-3              # mass entering through exits (ρ = 0 there), of the initial 1
STEP_RESIDUAL_TOL = 1e-8        # the Cole–Hopf sweeps' linear steps, as heat's (observed ≤ 1e-15
                                # factorised; CG + Jacobi to 1e-3: 9e-4, mass off by 0.27 %)


def solve_config(cfg: dict, ctx, md=None):
    """Build the problem of ``cfg`` and solve it with the configured method; return Result
    (unconverged results are returned flagged, not raised).  With ``[output]
    checkpoint_every`` the Newton solve writes checkpoints beside the output folder; with a
    restart (``ctx.restart``) it starts from the checkpoint's mesh and states."""
    from ..checkpoint import newton_checkpoints, restart_mesh, restarted_from
    from ..solvers import solve
    resume, md = restart_mesh(cfg, ctx, md)
    md = md or build_mesh(cfg, ctx.comm)
    problem = ControlProblem.from_config(cfg, md.mesh, md.cell_tags, md.facet_tags)
    s = cfg["solver"]
    method = "cole-hopf" if cfg["run"]["formulation"] == "cole-hopf" else s["method"]
    if resume is not None and method not in ("newton", "auto"):
        # a checkpoint holds a Newton iterate: continuing it by Newton under a config that
        # says picard ran, and recorded, another method than the config's
        raise ConfigError("--restart", "a config with solver.method 'newton' or 'auto' (the "
                          "checkpoint continues a Newton solve)", method)
    with newton_checkpoints(cfg, ctx, problem, resume,
                            method in ("newton", "auto")) as (system, writer):
        ctx.log.info("solving %s: %d dofs x %d steps, method %s", cfg["run"]["formulation"],
                     problem.space.dofmap.index_map.size_global, problem.steps, method)
        try:
            result = solve(problem, method=method, rtol=s["rtol"], atol=s["atol"],
                           max_it=s["max_it"], relaxation=s["relaxation"],
                           picard_max_it=s["picard_max_it"],
                           initial_guess=s["initial_guess"], linear=s["linear"],
                           continuation=s["continuation"], strict=False,
                           step=s["step_solver"], system=system, checkpoint=writer,
                           resume=resume, log=ctx.log)
        except ConfigError as e:
            if cfg["run"]["formulation"] == "cole-hopf" and e.key == "solver.method":
                # the config chose Cole–Hopf by its formulation, not by solver.method
                raise ConfigError("run.formulation", "'hjb-fp' with solver.method "
                                  + e.expected, "cole-hopf") from None
            raise
        if result.method == "cole-hopf":
            # two linear sweeps: no iterations, reason or residual to report (the line said
            # "converged after 0 iterations (), residual 0.000e+00"); what decides the run is
            # how far J is from its value identity and the mass from 1
            ctx.log.info("cole-hopf: two linear sweeps (no iterations); J = %.6g, %.2g %% off "
                         "its value identity, mass error %.2g (at most %g %% accepted), "
                         "largest step residual %.2g", result.J,
                         100 * identity_gap(result.J, result.J_value), result.mass_error,
                         100 * COLE_HOPF_IDENTITY_RTOL, result.residual)
        if result.auto_fallback:
            fb = result.auto_fallback
            ctx.log.info("auto: Cole-Hopf's J was %.3g off its value identity and its mass "
                         "%.3g off 1 on this mesh (tolerance %g); solved by Newton instead",
                         fb["identity_gap"], fb["mass_error"], COLE_HOPF_IDENTITY_RTOL)
        result.restarted_from = restarted_from(resume)
        if writer is not None:
            writer.converged = result.converged
            if writer.every and not writer.written and result.method == "cole-hopf":
                from ..errors import warning
                warning("output.checkpoint_every: solver.method = 'auto' solved this problem "
                        "by Cole-Hopf (two linear sweeps, nothing to restart); no checkpoint "
                        "was written (method = 'newton' writes them)")
    return md, problem, result


def exit_inflow(result, problem) -> float | None:
    """The mass that entered through the exits (kind 'exit': ρ = 0 there, so a solution's
    outflow is ≥ 0 at every step): Σ over exit tags and steps of the negative parts of the
    flux; None without exits.  Measured 0 exactly on the exit tests' rooms, corridors and
    entrances (BE and CN); a door dearer than Φ by 1 (g = 3, Φ = 2, the room demo) made the
    Galerkin steps draw 6.0 — the density stayed ≥ 0 and the run passed every other check."""
    tags = [str(e.tag) for e in getattr(problem, "exits", ()) if e.density is None]
    if not tags or not result.mass_exited:
        return None
    by_tag = result.mass_exited["by_tag"]
    return float(sum(max(-v, 0.0) for t in tags for v in by_tag.get(t, ())))


def checks(result, max_rho: float, identity: bool = True, monotone: str | None = None,
           crank_nicolson: bool = False, mass: bool = True,
           inflow: float | None = None, leak: str | None = None) -> dict:
    """The figures that decide whether a solve is usable: {name: {value, limit, relation, ok,
    hint}}.  ``identity=False``: the problem has manufactured sources, which enter the
    Lagrangian linearly, so J and the value identity differ by them (recorded, not checked).
    ``mass=False``: sources in the FP rows (a manufactured solution) move the discrete mass by
    a discretisation error (5.6e-6 on 8 cells, 4e-11 on 32: recorded, not checked).
    ``monotone``: the settings of the monotone scheme where it can fix a negative density
    (``ControlProblem.monotone_advice``), else None; ``crank_nicolson``: the run's scheme,
    which does not damp the oscillations of large steps — backward Euler is advised where
    the monotone scheme is not (P2, another H; the room with exits, CN, τ = 0.2: min ρ =
    −3.3, backward Euler: exit 0); ``inflow``: :func:`exit_inflow` (None: no exits);
    ``leak``: :func:`leak_advice` (None: no absorbing leaky wall), the remedy of a failed
    mass, identity or density check in place of refining."""
    scale = max(abs(result.J), abs(result.J_value), 1e-300)
    rtol = IDENTITY_RTOL.get(result.method, IDENTITY_RTOL_OTHER)
    # a tolerance the user loosened (-mfc_snes_rtol 1e-4, [solver] rtol): the identity and
    # the mass hold to the residual reached, i.e. to SOLVER_FACTOR × the solve's target
    target = next((h["target"] for h in getattr(result, "history", None) or ()
                   if h.get("target")), 0.0)
    mass_tol = MASS_TOL
    loose = False
    if result.method in IDENTITY_RTOL and target:
        # ... but never beyond the Cole-Hopf paths' 5 %: solver.atol = 1e300 stopped Newton at
        # its initial guess, and a 115 % gap in the identity passed as converged (exit 0)
        loose = SOLVER_FACTOR * target / scale > IDENTITY_RTOL_OTHER
        rtol = min(max(rtol, SOLVER_FACTOR * target / scale), IDENTITY_RTOL_OTHER)
        mass_tol = min(max(MASS_TOL, SOLVER_FACTOR * target), IDENTITY_RTOL_OTHER)
    gap = identity_gap(result.J, result.J_value)
    exact = result.method in IDENTITY_RTOL
    out = {"value_identity": bound(gap, rtol, ("|J - J_value| / |J|: the solve is not a "
                                               "discrete solution" + (
                                                   " (the solver tolerance, [solver] atol / "
                                                   "rtol or the PETSc options, is too loose "
                                                   "for one)" if loose else ""))
                                   if exact else
                                   "|J - J_value| / |J|: the Cole-Hopf discretisation's error "
                                   "is too large here (refine h and tau, or solver.method = "
                                   "'newton')")}
    if not identity:
        out["value_identity"].update(ok=True, applies=False, hint="not an identity: the "
                                     "problem has manufactured sources")
    elif result.method == "cole-hopf-pair":
        # the pair's own discretisation, its fields put into the HJB–FP functionals: the gap
        # is its discretisation error (congested square: 43, 23, 11 % on 16, 32, 64 cells,
        # while its J was nearer the limit than the HJB–FP one) — recorded, as QHD's
        out["value_identity"].update(ok=True, applies=False, hint="the Cole-Hopf pair's "
                                     "discretisation error (first order in h and tau)")
    # the Cole–Hopf paths do not conserve the discrete mass exactly (0.5-1.2 % on coarse
    # 1D meshes, shrinking with h and tau): checked to their tolerance, as their identity
    out["mass"] = bound(result.mass_error, mass_tol if exact else IDENTITY_RTOL_OTHER,
                        "max |mass - 1|" if exact else "max |mass - 1| of the Cole-Hopf "
                        "discretisation (refine h and tau, or solver.method = 'newton')")
    if not mass:
        out["mass"].update(ok=True, applies=False, hint="not conserved: the problem has "
                           "manufactured sources in the FP rows")
    remedy = (f" or use {monotone}" if monotone else
              " or use [discretisation] scheme = \"backward-euler\"" if crank_nicolson else "")
    out["min_rho"] = bound(result.min_rho, -NEGATIVE_RHO * max_rho,
                           "negative density; refine the mesh" + remedy, ">=")
    for name in ("mass", "value_identity", "min_rho"):     # the remedy is the wall's
        if leak and not out[name]["ok"]:
            out[name]["hint"] = out[name]["hint"].split(";")[0] + "; " + leak
    if result.method == "cole-hopf":
        # the sweeps' steps are linear solves: their residual, computed (it was a constant 0)
        out["residual"] = bound(result.residual, STEP_RESIDUAL_TOL, "largest relative residual "
                                "|b - A x|/|b| of a Cole-Hopf sweep step's linear solve")
    if inflow is not None:
        out["exit_inflow"] = bound(inflow, EXIT_INFLOW, "mass entering through an exit, "
                                   "where rho = 0 (a door whose cost is far above Phi makes "
                                   "the Galerkin steps oscillate there); refine the mesh"
                                   + remedy)
    return out


def leak_advice(cfg: dict, h: float) -> str | None:
    """What helps when a leaky wall's rate makes it an absorbing wall (rate·h/ε ≥ ABSORBING)
    on this mesh: the wall of the largest such ratio, named by its table, and the remedy;
    None without one.  (A failed check's hint said nothing of it, or to refine the mesh,
    which lowers rate·h/ε but never by the factor needed.)"""
    eps = 0.5 * float(cfg["problem"]["sigma"]) ** 2
    walls = [(b["rate"] * h / eps, i, b) for i, b in enumerate(cfg.get("boundary") or ())
             if b["kind"] == "robin" and eps > 0 and b["rate"] * h / eps >= ABSORBING]
    if not walls:
        return None
    ratio, i, b = max(walls, key=lambda w: w[0])
    picard = "; solver.method 'newton' or 'auto'" if cfg["solver"]["method"] == "picard" else ""
    return (f"boundary[{i}] (tag {b['tag']}): a leak rate of {b['rate']:g} is an absorbing "
            f"wall on this mesh (rate*h/eps = {ratio:.1e}), whose rows meet round-off, which "
            f"refining does not cure; use kind = 'exit' (its limit: rho = 0 and u = cost "
            f"there{picard}) or a rate below {ABSORBING * eps / h:.1e}")


def run(cfg: dict, ctx) -> dict:
    if cfg.get("population"):             # several populations: their own runner
        from .populations import run as run_populations
        return run_populations(cfg, ctx)
    md, problem, result = solve_config(cfg, ctx)
    V = problem.space
    N = problem.steps
    max_rho = ctx.comm.allreduce(max(float(f.x.array.max()) if f.x.array.size else 0.0
                                     for f in result.rho), op=MPI.MAX)
    summary = {
        "method": result.method, "J": result.J, "J_value_identity": result.J_value,
        "mass_error": result.mass_error, "min_rho": result.min_rho, "max_rho": max_rho,
        "iterations": result.iterations, "converged": result.converged,
        "reason": result.reason, "residual": result.residual,
        "history": list(result.history),
        "ndofs": V.dofmap.index_map.size_global, "nsteps": N, "h": md.h, "h_min": md.h_min,
        "tau": problem.tau, "solve_time_s": result.seconds,
        "checks": checks(result, max_rho, getattr(problem.exact, "sources", None) is None,
                         mass=not getattr(problem.exact, "moves_mass", False),
                         monotone=(problem.monotone_advice()
                                   if cfg["run"]["formulation"] == "hjb-fp" else None),
                         crank_nicolson=problem.theta != 1.0,
                         inflow=exit_inflow(result, problem), leak=leak_advice(cfg, md.h)),
        "H": cfg["problem"].get("H", "quadratic"),
    }
    if result.method != "cole-hopf":      # (its line, in solve_config, has no verdict)
        ctx.log.info("%s", solve_line(result.method, result.converged, result.iterations,
                                      result.reason, result.residual, summary["checks"]))
    if result.mass_exited:                    # exits: mass through each door, per step
        summary["mass_exited"] = result.mass_exited["total"]
        summary["mass_exited_per_step"] = result.mass_exited["per_step"]
        summary["mass_exited_by_tag"] = result.mass_exited["by_tag"]
    if result.path:
        summary["solver_path"] = result.path
    if result.auto_fallback:
        summary["auto_fallback"] = result.auto_fallback
    if result.restarted_from:
        summary["restarted_from"] = result.restarted_from
    if result.continuation:
        summary["continuation"] = result.continuation
        summary.update(result.run_totals())
    if problem.exact is not None:
        from ..exact import ErrorNorms
        errs = ErrorNorms(problem.exact, V)(result)
        summary.update({f"err_{k}_L2" if k != "J" else "err_J": v for k, v in errs.items()})
        if hasattr(problem.exact, "J"):
            summary["J_exact"] = problem.exact.J
    write_fields(problem, result, ctx.series, cfg["output"]["every"])
    if ctx.figures:
        _figures(problem, result, ctx, cfg)
    return summary


def velocity_field(u, name="a"):
    """The control a = −∇u as a Function of a vector Lagrange space of u's degree, and the
    compiled Expression that refreshes it (``a.interpolate(expr)``) whenever u changes."""
    msh = u.function_space.mesh
    deg = u.function_space.element.basix_element.degree
    W = dolfinx.fem.functionspace(msh, ("Lagrange", deg, (msh.geometry.dim,)))
    a = dolfinx.fem.Function(W, name=name)
    expr = dolfinx.fem.Expression(-ufl.grad(u), W.element.interpolation_points())
    return a, expr


def write_fields(problem, result, series, every: int = 1) -> list:
    """ParaView series of an HJB–FP result: ρⁿ at t_n (``rho``); uⁿ and a = −∇uⁿ at the time
    uⁿ approximates (``u``, ``velocity``; problem.u_time), u^N = Φ at T; every ``every``-th
    level and the last.  ``series(name, functions)`` opens one series (an object with
    ``write(t)``); returns the series opened."""
    V = problem.space
    rho = dolfinx.fem.Function(V, name="rho")
    u = dolfinx.fem.Function(V, name="u")
    a, expr = velocity_field(u)
    out = [series("rho", [rho]), series("u", [u]), series("velocity", [a])]
    rho_series, u_series, vel = out
    phi = dolfinx.fem.Expression(problem.Phi, V.element.interpolation_points())
    N = problem.steps
    for n in range(N + 1):
        if n % every and n != N:
            continue
        rho.x.array[:] = result.rho[n].x.array
        rho_series.write(problem.rho_time(n))
        if n < N:
            u.x.array[:] = result.u[n].x.array
            t_u = problem.u_time(n)
        else:
            u.interpolate(phi)
            t_u = problem.T
        a.interpolate(expr)
        u_series.write(t_u)
        vel.write(t_u)
    return out


def write_series(folder, problem, result, every: int = 1) -> list[str]:
    """:func:`write_fields` into ``folder`` outside a run (a demo's own output folder):
    ``rho.bp``, ``u.bp``, ``velocity.bp``; returns their names."""
    from pathlib import Path

    from ..io import TimeSeries
    opened = write_fields(problem, result,
                          lambda name, fs: TimeSeries(Path(folder), name, fs), every)
    for ts in opened:
        ts.close()
    return [f"{ts.name}.bp" for ts in opened]


def _figures(problem, result, ctx, cfg):
    from .. import viz
    N = problem.steps
    layers = snapshot_steps(N)
    viz.plot_snapshots([result.rho[n] for n in layers],
                       [f"layer {n}: t = {problem.rho_time(n):.3g}" for n in layers],
                       ctx.figure("rho_layers.png"), name="rho")
    if ctx.comm.rank == 0 and result.history:
        series = {"residual": [h["residual"] for h in result.history]}
        if "J" in result.history[0]:
            Js = np.array([h["J"] for h in result.history])
            series["|J - J_final|"] = np.abs(Js - result.J) + 1e-300
        viz.line_plot(np.arange(len(result.history)), series, ctx.figure("history.png"),
                      xlabel="iteration", ylabel="residual / cost change", logy=True,
                      markers=True, title=f"{result.method} convergence")
    if ctx.comm.rank == 0 and result.mass_exited:     # exits: mass inside, through each door
        t = problem.tau * np.arange(len(result.mass))
        series = {"inside (int rho)": np.array(result.mass)}
        for tag, flux in result.mass_exited["by_tag"].items():
            series[f"left through tag {tag}"] = np.concatenate([[0.0], np.cumsum(flux)])
        viz.line_plot(t, series, ctx.figure("mass.png"), xlabel="t", ylabel="mass",
                      title=f"mass balance error {result.mass_error:.1e}")
    elif ctx.comm.rank == 0:
        mass = np.array(result.mass) - 1.0
        viz.line_plot(problem.tau * np.arange(len(mass)), {"mass - 1": mass},
                      ctx.figure("mass.png"), xlabel="t", ylabel="mass error")
    if problem.exact is not None:
        exact_rho = dolfinx.fem.Function(problem.space, name="rho_exact")
        exact_rho.interpolate(dolfinx.fem.Expression(problem.exact.rho(problem.T),
                                                     problem.space.element.interpolation_points()))
        viz.plot_snapshots([result.rho[N], exact_rho], ["computed rho(T)", "exact rho(T)"],
                           ctx.figure("rho_exact.png"), name="rho")
        deg = problem.space.element.basix_element.degree
        fine = dolfinx.fem.functionspace(problem.mesh, ("Lagrange", deg + 2))
        exact_fine = dolfinx.fem.Function(fine)       # the exact ρ(T), resolved finer
        exact_fine.interpolate(dolfinx.fem.Expression(problem.exact.rho(problem.T),
                                                      fine.element.interpolation_points()))
        _profile(result.rho[N], exact_fine, ctx.figure("rho_profile.png"))


def _profile(rho, exact_rho, path, samples: int = 400):
    """Computed and exact ρ(T) overlaid along the x0-axis through the exact density's peak."""
    from .. import viz
    from ..pointeval import PointEvaluator
    V = exact_rho.function_space
    msh, comm, d = V.mesh, V.mesh.comm, V.mesh.geometry.dim
    n = V.dofmap.index_map.size_local
    X = V.tabulate_dof_coordinates()[:n, :d]
    peak = X[np.argmax(exact_rho.x.array[:n])] if n else np.zeros(d)
    _, peak = comm.allreduce((float(exact_rho.x.array[:n].max()) if n else -np.inf,
                              tuple(peak)), op=MPI.MAX)
    lo = comm.allreduce(float(X[:, 0].min()) if n else np.inf, op=MPI.MIN)
    hi = comm.allreduce(float(X[:, 0].max()) if n else -np.inf, op=MPI.MAX)
    P = np.tile(np.asarray(peak), (samples, 1))
    P[:, 0] = np.linspace(lo, hi, samples)
    pe = PointEvaluator(msh)
    cell, owner = pe.locate(P)
    inside = owner < comm.size           # the same on every rank
    vals = {name: pe.evaluate(f, P, cell)[inside]
            for name, f in (("computed", rho), ("exact", exact_rho))}
    if comm.rank == 0:
        viz.line_plot(P[inside, 0], vals, path, xlabel="x0", ylabel="rho(T)",
                      title="density at the last layer, through its peak")
