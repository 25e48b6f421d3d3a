"""Runner for ``formulation = "qhd"``: the quantum-hydrodynamic form (ρ, S) (MODEL §3, §5).

  ∂_tρ + ∇·(ρ∇S) = 0,   ∂_tS + ½|∇S|² + U(x, ρ) + κ_Q Δ√ρ/√ρ = 0

* ``qhd.signature = "control"``: U = −(V + G'(ρ)), κ_Q = σ⁴/2; ρ(0) = ρ_0,
  S(T) = −Φ − ε log ρ(T) — the optimality system of the control problem, solved all-at-once
  in time by Newton (solvers/qhd.py).  J is evaluated with the control a = ∇S + ε∇ρ/ρ.
* ``qhd.signature = "quantum"``: U = V + G'(ρ), κ_Q = −ħ²/2; ρ(0) = ρ_0, S(0) = ``qhd.S0`` —
  the Madelung fluid, stepped by the energy-conserving discrete-gradient midpoint rule.

Summary: mass, mass_error, energy (the Hamiltonian H of MODEL §5 in that signature, at t = 0
and its drift), the Fisher-information term ⅛∫|∇ρ|²/ρ separately, J (control), Newton
iterations, residual, ndofs, nsteps, h, tau, and with ``exact.solution = "lq-gaussian"``
(control) the errors err_rho_L2, err_S_L2 (S up to its constant), err_J.  Outputs: ParaView
series of ρ and S, PNGs of the density and the phase, and an invariants plot (mass, energy,
Fisher term over t).
"""
from __future__ import annotations

import dolfinx
import numpy as np
import ufl

from ..errors import ConfigError
from ..expressions import parse
from ..pipeline import bound, build_mesh, solve_line
from ..problem import ControlProblem, interpolate
from ..solvers.qhd import (
    QuantumStepper,
    bohm_potential,
    check_positive,
    solve_control,
    solve_quantum,
)
from . import snapshot_steps


def check(cfg: dict) -> None:
    """Consistency of [run], [qhd], [problem], [solver], [exact]; ConfigError (one line)."""
    q, p, s = cfg["qhd"], cfg["problem"], cfg["solver"]
    if cfg["run"]["formulation"] != "qhd":
        raise ConfigError("run.formulation", "'qhd' for the QHD runner",
                          cfg["run"]["formulation"])
    if not q["hbar"] > 0:
        raise ConfigError("qhd.hbar", "a positive number", q["hbar"])
    if s["method"] not in ("auto", "newton"):
        raise ConfigError("solver.method", "'auto' or 'newton' for formulation = 'qhd' (use "
                          "formulation = 'hjb-fp' or 'cole-hopf' for the other solvers)",
                          s["method"])
    exact = cfg["exact"]["solution"]
    if exact not in ("none", "lq-gaussian") or (exact != "none" and q["signature"] != "control"):
        raise ConfigError("exact.solution", "'none', or 'lq-gaussian' with qhd.signature = "
                          "'control', for formulation = 'qhd' (compare other problems with the "
                          "hjb-fp formulation, demos/demo_equivalence.py)", exact)
    if q["signature"] == "control" and q["S0"].strip() not in ("0", "0.0"):
        raise ConfigError("qhd.S0", "'0' for signature = 'control' (S(0) is an unknown of the "
                          "two-point problem; S(T) = -Phi - eps log rho(T))", q["S0"])
    if q["signature"] == "quantum":
        if p["Phi"].strip() not in ("0", "0.0"):
            raise ConfigError("problem.Phi", "'0' for signature = 'quantum' (an initial-value "
                              "problem has no terminal loss)", p["Phi"])
        if p["coupling"] != "mftc":
            raise ConfigError("problem.coupling", "'mftc' for signature = 'quantum' (U = V + "
                              "G'(rho), the Hamiltonian coupling)", p["coupling"])


def build_problem(cfg: dict, md) -> ControlProblem:
    """The ControlProblem of the config (ρ_0 may come from a checkpoint file)."""
    return ControlProblem.from_config(cfg, md.mesh, md.cell_tags, md.facet_tags)


def run(cfg: dict, ctx) -> dict:
    from ..checkpoint import restart_mesh
    check(cfg)
    resume, md = restart_mesh(cfg, ctx)
    md = md or build_mesh(cfg, ctx.comm)
    problem = build_problem(cfg, md)
    check_positive(problem.rho0)
    common = {"ndofs": problem.space.dofmap.index_map.size_global, "nsteps": problem.steps,
              "h": md.h, "tau": problem.tau, "signature": cfg["qhd"]["signature"]}
    if cfg["qhd"]["signature"] == "control":
        out = _run_control(cfg, ctx, problem, resume)
    else:
        out = _run_quantum(cfg, ctx, problem, resume)
    return {**common, **out}


ENERGY_TOL = 1e-6               # relative energy drift of the quantum signature (as NLS)
LU_WARN_S = 120.0               # estimated seconds per Newton step above which a run says so


def _solver_args(cfg, ctx):
    s = cfg["solver"]
    opts = dict(s["petsc_options"])
    opts.update(ctx.petsc_options)
    return dict(rtol=s["rtol"], atol=s["atol"], max_it=s["max_it"], petsc_options=opts)


def _run_control(cfg, ctx, problem, resume=None) -> dict:
    ctx.log.info("QHD control signature: all-at-once Newton, %d steps", problem.steps)
    from ..solvers.auto import estimates
    V = problem.space
    est = estimates(V.dofmap.index_map.size_global, problem.steps, problem.mesh.topology.dim,
                    ctx.comm.size)
    if est["lu_s"] > LU_WARN_S:           # no sweep preconditioner here: the LU of the whole
        from ..errors import warning
        warning("the QHD control signature factorises the whole space-time matrix: about "
                f"{est['lu_s'] / 60:.0f} min per Newton step estimated at this size (2D "
                "1,089 dofs x 16 steps: 5 s); fewer cells or steps run much faster")
    from ..checkpoint import newton_checkpoints, restarted_from
    from ..solvers.qhd import QHDControlSystem
    with newton_checkpoints(cfg, ctx, problem, resume, True,
                            make=QHDControlSystem) as (system, writer):
        # an unconverged solve is written and flagged (exit 3), as the HJB-FP runs do: it
        # was raised, nothing written ("newton did not converge: DIVERGED_MAX_IT ...")
        res, st = solve_control(problem, **_solver_args(cfg, ctx), system=system,
                                checkpoint=writer, resume=resume, log=ctx.log, strict=False)
        if writer is not None:
            writer.converged = res.converged
    d = st.diagnostics()
    N, tau = problem.steps, problem.tau
    rho_out = dolfinx.fem.Function(problem.space, name="rho")
    S_out = dolfinx.fem.Function(problem.space, name="S")
    Q_out = dolfinx.fem.Function(problem.space, name="Q")      # the Bohm potential (mixed)
    kappa_Q = 0.5 * problem.sigma ** 4
    series = ctx.series("qhd", [rho_out, S_out, Q_out])
    every = cfg["output"]["every"]
    S_T = interpolate(-problem.Phi - problem.eps * ufl.ln(st.rho[N]) if problem.eps > 0
                      else -problem.Phi, problem.space, "S")
    S_all = st.S + [S_T]                       # Sⁿ at t_n, S^N from the terminal condition
    for n in range(N + 1):
        if n % every == 0 or n == N:
            rho_out.x.array[:] = st.rho[n].x.array
            S_out.x.array[:] = S_all[n].x.array
            bohm_potential(rho_out, kappa_Q, Q_out)
            series.write(n * tau)
    energy = np.asarray(d["energy"])
    summary = {"mass": d["mass"][-1], "mass_error": d["mass_error"], "min_rho": d["min_rho"],
               "energy": float(energy[0]),
               "energy_drift": float(np.max(np.abs(energy - energy[0]))),
               "fisher": float(d["fisher"][0]), "J": d["J"], "J_value_identity": d["J_value"],
               "iterations": res.iterations, "converged": res.converged,
               "reason": res.reason, "residual": res.residual,
               "history": list(res.history),
               **({"restarted_from": restarted_from(resume)} if resume is not None else {}),
               "checks": mass_check(d["mass_error"],
                                    not getattr(problem.exact, "moves_qhd_mass", False))}
    ctx.log.info("%s", solve_line("newton", res.converged, res.iterations, res.reason,
                                  res.residual, summary["checks"]))
    if problem.exact is not None:
        summary.update(errors(problem, st, d["J"]))
    if ctx.figures:
        times = np.arange(N + 1) * tau
        _figures(ctx, st.rho, S_all, times, {"mass - 1": (times, np.asarray(d["mass"]) - 1)},
                 {"H - H(0)": (times[:-1], energy - energy[0]),
                  "Fisher term - F(0)": (times[:-1], np.asarray(d["fisher"]) - d["fisher"][0])})
    return summary


def mass_check(error: float, applies: bool = True) -> dict:
    """The run's check (``checks``, as for the HJB-FP runs): both signatures conserve the mass
    exactly (observed ≤ 2e-15); a drift above MASS_TOL means a broken solve.  (The control
    signature's value identity holds to the discretisation error only — 1.3 % on the 1D
    demo — and is recorded, not checked.)  ``applies=False``: an exact solution's boundary
    data move the mass (the continuity flux b_C of the LQ Gaussian: 4.2e-6 on its refinement
    study's coarse level) — recorded, not checked."""
    from .control import MASS_TOL
    out = bound(error, MASS_TOL, "relative mass drift")
    if not applies:
        out.update(ok=True, applies=False, hint="not conserved: the exact solution's boundary "
                   "flux moves the mass")
    return {"mass": out}


def errors(problem, st, J: float) -> dict:
    """Errors against the exact solution (MODEL §7.1): err_rho_L2 = max_n ‖ρⁿ − ρ(t_n)‖,
    err_S_L2 = max_n ‖Sⁿ − S(t)‖ up to an additive constant (Sⁿ at the time of the HJB–FP uⁿ,
    S = −u − ε log ρ), err_J = |J − J*|."""
    from ..exact import ErrorNorms
    norms = ErrorNorms(problem.exact, problem.space)
    return {"err_rho_L2": max(norms.l2("rho", f, problem.rho_time(n))
                              for n, f in enumerate(st.rho)),
            "err_S_L2": max(norms.l2_mean_free("S", f, problem.u_time(n))
                            for n, f in enumerate(st.S)),
            "err_J": abs(J - problem.exact.J), "J_exact": problem.exact.J}


def _run_quantum(cfg, ctx, problem, resume=None) -> dict:
    from ..checkpoint import load_stepping, snapshot_fields, stepping_checkpoints
    from ..solvers.qhd import HISTORY
    q = cfg["qhd"]
    x = ufl.SpatialCoordinate(problem.mesh)
    S0 = parse(q["S0"], "qhd.S0", x=x, gdim=problem.mesh.geometry.dim,
               params=cfg["problem"]["params"])
    stepper = QuantumStepper(problem.mesh, problem.degree, q["hbar"], problem.tau, problem.V,
                             problem.G, problem.coupling, **_solver_args(cfg, ctx))
    every, N = cfg["output"]["every"], problem.steps
    snap_at = set(snapshot_steps(N))
    snaps, history = {}, None
    if resume is not None:                 # the state, the snapshots and the histories so far
        V0 = stepper.scalar_space
        fields = {"rho": dolfinx.fem.Function(V0), "S": dolfinx.fem.Function(V0)}
        for k in sorted(j for j in snap_at if j <= resume["step"]):
            snaps[k] = (dolfinx.fem.Function(V0, name="rho"), dolfinx.fem.Function(V0, name="S"))
        load_stepping(ctx.restart, resume, {**fields, **snapshot_fields(snaps)})
        stepper.set_initial(fields["rho"], fields["S"])
        stepper.residuals.restore(resume["step_residuals"])
        history = resume["history"]
    else:
        stepper.set_initial(problem.rho0, S0)
    rho_out, S_out = stepper.rho(), stepper.S()
    series = ctx.series("qhd", [rho_out, S_out])
    if resume is not None:                 # a restart's series begins at its checkpoint
        series.write(resume["step"] * problem.tau)

    with stepping_checkpoints(cfg, ctx, problem.mesh, resume) as writer:
        def record(n, t, result):
            due = writer is not None and writer.due(n) and n < N
            if n % every == 0 or n == N or n in snap_at or due:
                rho_out.x.array[:] = stepper.rho().x.array
                S_out.x.array[:] = stepper.S().x.array
                if n % every == 0 or n == N:
                    series.write(t)
                if n in snap_at:
                    snaps[n] = (rho_out.copy(), S_out.copy())
            if due:
                writer.write(n, {"rho": rho_out, "S": S_out, **snapshot_fields(snaps)},
                             history={k: getattr(result, k) for k in HISTORY},
                             step_residuals=stepper.residuals.pairs)

        ctx.log.info("QHD quantum signature: %d discrete-gradient steps, hbar = %g", N,
                     q["hbar"])
        r = solve_quantum(stepper, problem.T, N, callback=record, history=history)
        if writer is not None:
            writer.done = True
    summary = {"mass": r.mass[-1], "mass_error": r.drift("mass"), "min_rho": min(r.min_rho),
               "energy": r.energy[0], "energy_drift": r.drift("energy"),
               "fisher": r.fisher[0], "fisher_final": r.fisher[-1],
               "iterations": int(sum(r.iterations)),
               "max_iterations_per_step": int(max(r.iterations)),
               "residual": float(max(r.residuals)),
               "checks": mass_check(r.drift("mass") / max(abs(r.mass[0]), 1e-300))}
    if resume is not None:
        summary["restarted_at_step"] = resume["step"]
    if stepper.factorisation_retries:       # MUMPS asked for more workspace (options.factorise)
        summary["factorisation_retries"] = list(stepper.factorisation_retries)
    # the discrete-gradient step conserves the energy H to solver tolerance (observed 3e-14
    # on the disk demo), as the NLS runs' energy-conserving scheme
    e = r.drift("energy") / max(abs(r.energy[0]), 1e-300)
    summary["checks"]["energy"] = bound(e, ENERGY_TOL,
                                        "relative energy drift of the discrete gradient")
    steps = stepper.residuals
    summary["step_residual_reduction"] = steps.worst()
    summary["checks"]["step_solves"] = bound(steps.worst(), steps.limit(), steps.HINT)
    if ctx.figures:
        keys = sorted(snaps)
        t = np.asarray(r.times)
        _figures(ctx, [snaps[k][0] for k in keys], [snaps[k][1] for k in keys], t[keys],
                 {"mass - M(0)": (t, np.asarray(r.mass) - r.mass[0])},
                 {"H - H(0)": (t, np.asarray(r.energy) - r.energy[0]),
                  "Fisher term - F(0)": (t, np.asarray(r.fisher) - r.fisher[0])})
    return summary


def _figures(ctx, rhos, Ss, times, mass: dict, energies: dict):
    """density.png, phase.png (up to 5 snapshots at ``times``) and invariants.png; ``mass``
    and ``energies`` map a label to (t, values)."""
    from .. import viz
    idx = sorted(set(np.linspace(0, len(rhos) - 1, min(5, len(rhos))).round().astype(int)))
    labels = [f"t = {times[i]:.3g}" for i in idx]
    viz.plot_snapshots([rhos[i] for i in idx], labels, ctx.figure("density.png"), name="rho")
    viz.plot_snapshots([Ss[i] for i in idx], labels, ctx.figure("phase.png"), name="S",
                       shared_clim=False)
    if ctx.comm.rank != 0:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, curves, title in zip(axes, (mass, energies),
                                 ("mass", "Hamiltonian and Fisher term (change from t = 0)")):
        for label, (t, v) in curves.items():
            ax.plot(t, v, label=label)
        ax.set_xlabel("t")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(ctx.figure("invariants.png"), dpi=110)
    plt.close(fig)
