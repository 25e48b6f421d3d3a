"""Runner for ``formulation = "nls"``: the real-time NLS / Gross–Pitaevskii equation (MODEL §4).

  iħ ∂_tΨ = −(ħ²/2)ΔΨ + (V + G'(|Ψ|²))Ψ on [mesh], natural boundary conditions, t ∈ [0, T],

with G = ``problem.G`` (a formula in rho) or, when that is "0", G = κρ²/2 (``nls.kappa``).
Initial data ``nls.initial``: a bright soliton (1D, κ < 0), a Gaussian packet, or the ground
state of the imaginary-time flow.  Every step the mass, energy and momentum are assembled;
the summary reports their drifts, Newton iterations and — with ``[exact] solution`` =
"soliton" | "free-gaussian" — the L² errors of Ψ and ρ at t = T.
"""
from __future__ import annotations

import math

import dolfinx
import numpy as np
import ufl

from ..errors import ConfigError, warning
from ..expressions import as_ufl, parse
from ..nls_invariants import (
    PHASE_ERROR_WARN,
    NLSInvariants,
    l2_norm_complex,
    l2_norm_density,
    phase_error,
    relative_drift,
)
from ..pipeline import bound, build_mesh
from ..solvers.nls import MidpointStepper, NLSProblem, ground_state, make_stepper
from . import snapshot_steps


def soliton(x, t, hbar, kappa, eta, v, x0):
    """Bright soliton of iħψ_t = −(ħ²/2)ψ_xx + κ|ψ|²ψ, κ < 0, as (Re ψ, Im ψ).

    ψ = (ħ/√−κ) η sech(η(x − x0 − ħvt)) e^{i(v(x − x0) + ħ(η² − v²)t/2)}: for ħ = 1, κ = −1
    MODEL §7.5's ψ = η sech(η(x − vt)) e^{i(vx + (η² − v²)t/2)} (the general case by scaling
    t → ħt, ψ → ħψ/√−κ; checked with sympy).
    """
    amp = hbar / math.sqrt(-kappa) * eta / ufl.cosh(eta * (x[0] - x0[0] - hbar * v * t))
    ph = v * (x[0] - x0[0]) + hbar * (eta ** 2 - v ** 2) * t / 2
    return amp * ufl.cos(ph), amp * ufl.sin(ph)


def free_gaussian(x, t, hbar, s0, k0, x0):
    """Free Gaussian packet (V = G = 0, whole space) of unit mass, as (Re ψ, Im ψ).

    Per axis: ψ = (2πs0²)^{-1/4} (1 + iat)^{-1/2} exp(−ξ²/(4s0²(1 + iat)) + ik0(x − x0)
    − iħk0²t/2), a = ħ/(2s0²), ξ = x − x0 − ħk0t; |ψ|² is N(x0 + ħk0t, s(t)²) with
    s(t)² = s0² + (ħt/(2s0))².
    """
    a = hbar / (2 * s0 ** 2)
    amp, ph = 1.0, 0.0
    for i in range(len(x)):
        xi = x[i] - x0[i] - hbar * k0[i] * t
        r = 1 + (a * t) ** 2
        amp = amp * (2 * math.pi * s0 ** 2) ** -0.25 * r ** -0.25 \
            * ufl.exp(-xi ** 2 / (4 * s0 ** 2 * r))
        ph = ph + xi ** 2 * a * t / (4 * s0 ** 2 * r) + k0[i] * (x[i] - x0[i]) \
            - hbar * k0[i] ** 2 * t / 2 - ufl.atan(a * t) / 2
    return amp * ufl.cos(ph), amp * ufl.sin(ph)


def free_gaussian_width2(t, hbar, s0):
    """s(t)² = s0² + (ħt/(2s0))² (per-axis variance of the free packet)."""
    return s0 ** 2 + (hbar * t / (2 * s0)) ** 2


def _check_initial_mass(mass: float, n: dict) -> None:
    """The soliton or Gaussian packet must have a positive finite mass on the mesh (a centre
    far off the mesh, or an amplitude that underflows, gave mass 0 and a ZeroDivisionError in
    the invariants: exit 1)."""
    if not (math.isfinite(mass) and mass > 0):
        width = "nls.eta" if n["initial"] == "soliton" else "nls.s0"
        raise ConfigError("nls.x0", f"a centre where the initial {n['initial']} has mass on the "
                          f"mesh (its mass there is {mass:.3g}; check nls.x0, {width} and "
                          "nls.hbar)", n["x0"])


def _vector(key, v, gdim):
    """A point or vector of the mesh's dimension; the default [0.0] is the origin in any
    dimension (it was refused on 2D and 3D meshes)."""
    if isinstance(v, list) and len(v) == 1 and v[0] == 0 and not isinstance(v[0], bool):
        v = [0.0] * gdim
    if not isinstance(v, list) or len(v) != gdim or not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c)
            and abs(c) <= 1e150 for c in v):       # k0^2 enters the phase (1e300: overflow)
        raise ConfigError(key, f"an array of {gdim} finite numbers of size at most 1e150 "
                          "(one per axis)", v)
    return [float(c) for c in v]


def check(cfg: dict, gdim: int) -> dict:
    """Cross-checks of [nls] against [problem], [exact], the mesh dimension; returns the
    parsed options (G formula or None, x0, k0).  Raises ConfigError (one line)."""
    n, p = cfg["nls"], cfg["problem"]
    if not n["hbar"] > 0:
        raise ConfigError("nls.hbar", "a positive number", n["hbar"])
    G_text = p["G"].strip()
    has_G = G_text not in ("0", "0.0", "")
    if has_G and n["kappa"] != 0:
        raise ConfigError("nls.kappa", "0 when problem.G is set (G is either problem.G or "
                          "kappa*rho^2/2, not both)", n["kappa"])
    if has_G and p["coupling"] != "mftc":
        raise ConfigError("problem.coupling", "'mftc' for the NLS (g = G', the Hamiltonian "
                          "coupling)", p["coupling"])
    x0 = (_vector("nls.x0", n["x0"], gdim) if n["initial"] in ("soliton", "gaussian")
          else [0.0] * gdim)                     # the ground state does not read it
    k0 = _vector("nls.k0", n["k0"], gdim) if n["initial"] == "gaussian" else [0.0] * gdim
    if n["initial"] == "soliton":
        if gdim != 1:
            raise ConfigError("nls.initial", "'gaussian' or 'ground-state' in "
                              f"{gdim}D (the bright soliton is 1D)", "soliton")
        if has_G or not n["kappa"] < 0:
            raise ConfigError("nls.kappa", "a negative number (focusing, G = kappa rho^2/2) "
                              "for nls.initial = 'soliton'", n["kappa"])
    exact = cfg["exact"]["solution"]
    if exact not in ("none", "soliton", "free-gaussian"):
        raise ConfigError("exact.solution", "'none', 'soliton' or 'free-gaussian' for the NLS",
                          exact)
    free_V = p["V"].strip() in ("0", "0.0")
    if exact == "soliton" and (n["initial"] != "soliton" or not free_V):
        raise ConfigError("exact.solution", "nls.initial = 'soliton' and problem.V = '0' for "
                          "the exact soliton", exact)
    if exact == "free-gaussian" and (n["initial"] != "gaussian" or not free_V or has_G
                                     or n["kappa"] != 0):
        raise ConfigError("exact.solution", "nls.initial = 'gaussian', problem.V = '0' and no "
                          "nonlinearity (kappa = 0, problem.G = '0') for 'free-gaussian'", exact)
    if n["integrator"] == "rk4" and n["nonlinearity"] != "energy-conserving":
        raise ConfigError("nls.nonlinearity", "the default for integrator = 'rk4' (it only "
                          "selects the midpoint step's g)", n["nonlinearity"])
    return {"G": G_text if has_G else None, "x0": x0, "k0": k0}


def build_problem(cfg: dict, msh, opts: dict) -> NLSProblem:
    """The NLSProblem of a validated config (V and G parsed from their formulas)."""
    p, n = cfg["problem"], cfg["nls"]
    x = ufl.SpatialCoordinate(msh)
    gdim = msh.geometry.dim
    V = as_ufl(parse(p["V"], "problem.V", x=x, gdim=gdim, params=p["params"]), msh)
    if opts["G"] is not None:
        parse(opts["G"], "problem.G", variables={"rho": 1.0},
              params=p["params"])                               # fail early on a bad formula

        def G(rho):
            return parse(opts["G"], "problem.G", variables={"rho": rho}, params=p["params"])
    elif n["kappa"] != 0:
        kappa = n["kappa"]

        def G(rho):
            return kappa * rho ** 2 / 2
    else:
        G = None
    return NLSProblem(msh, cfg["discretisation"]["degree"], n["hbar"], V, G)


def run(cfg: dict, ctx) -> dict:
    from ..checkpoint import load_stepping, restart_mesh, snapshot_fields, stepping_checkpoints
    resume, md = restart_mesh(cfg, ctx)
    md = md or build_mesh(cfg, ctx.comm)
    msh = md.mesh
    gdim = msh.geometry.dim
    opts = check(cfg, gdim)
    n, p, s = cfg["nls"], cfg["problem"], cfg["solver"]
    T, N = p["T"], p["steps"]
    tau, hbar = T / N, n["hbar"]
    P = build_problem(cfg, msh, opts)
    z = P.function("psi")
    x = ufl.SpatialCoordinate(msh)
    t_c = dolfinx.fem.Constant(msh, 0.0)
    summary = {}
    if n["initial"] == "soliton":
        exact = soliton(x, t_c, hbar, n["kappa"], n["eta"], n["wavenumber"], opts["x0"])
        P.interpolate(z, *exact)
    elif n["initial"] == "gaussian":
        exact = free_gaussian(x, t_c, hbar, n["s0"], opts["k0"], opts["x0"])
        P.interpolate(z, *exact)
    elif resume is not None:                     # the state comes from the checkpoint
        exact = None
        summary.update(resume["ground_state"])
    else:
        exact = None
        gs, mu, its = ground_state(P, n["mass"], n["gs_tau"], n["gs_tol"], n["gs_max_steps"])
        z.x.array[:] = gs.x.array
        summary.update({"mu": mu, "ground_state_steps": its})
        ctx.log.info("ground state: mu = %.10g after %d imaginary-time steps", mu, its)
    if resume is None and n["initial"] != "ground-state":
        _check_initial_mass(NLSInvariants(P, z).mass(), n)
    if cfg["exact"]["solution"] == "none":
        exact = None

    from .. import madelung
    stepper = make_stepper(n["integrator"], P, z, tau, nonlinearity=n["nonlinearity"],
                           rtol=s["rtol"], atol=s["atol"], max_it=s["max_it"])
    snap_at = snapshot_steps(N)
    start = 0
    if resume is not None:                     # the state, what the next step reads, the
        start = resume["step"]                 # snapshots and the histories so far
        rho_space = madelung.scalar_space(z)
        snaps = {k: dolfinx.fem.Function(rho_space) for k in snap_at if k <= start}
        load_stepping(ctx.restart, resume, {"psi": z, **_previous(stepper),
                                            **snapshot_fields(snaps)})
        _set_counts(stepper, resume, start)
        hist = resume["history"]
    fields = madelung.DensityPhase(z, hbar)
    rho_f, S_f = fields.rho, fields.S
    series = ctx.series("rho_phase", [rho_f, S_f])
    inv = NLSInvariants(P, z)
    k_start = inv.wavenumber()             # the initial state's: a restart's is in the
    if resume is not None:                 # checkpoint (the resolution estimate reads it)
        k_start = resume.get("wavenumber0", k_start)
    series.write(start * tau)              # a restart's series begins at its checkpoint
    if resume is None:
        snaps = {0: rho_f.copy()}
        hist = {"mass": [inv.mass()], "energy": [inv.energy()],
                "momentum": [inv.momentum()], "width2": [inv.width2()],
                "centre": [inv.centre().tolist()]}
    rho0 = snaps[0]
    every = cfg["output"]["every"]
    with stepping_checkpoints(cfg, ctx, msh, resume) as writer:
        for k in ctx.progress(range(start + 1, N + 1), desc="nls", total=N - start):
            stepper.step()
            hist["mass"].append(inv.mass())
            hist["energy"].append(inv.energy())
            hist["momentum"].append(inv.momentum())
            hist["width2"].append(inv.width2())
            hist["centre"].append(inv.centre().tolist())
            if k % every == 0 or k == N or k in snap_at:
                fields.update()
                if k % every == 0 or k == N:
                    series.write(k * tau)
                if k in snap_at:
                    snaps[k] = rho_f.copy()
            if writer is not None and writer.due(k) and k < N:
                writer.write(k, {"psi": z, **_previous(stepper), **snapshot_fields(snaps)},
                             history=hist, wavenumber0=k_start, **_counts(stepper),
                             ground_state={key: summary[key] for key in
                                           ("mu", "ground_state_steps") if key in summary})
        if writer is not None:
            writer.done = True
    stepper.destroy()
    snaps = [snaps[k] for k in snap_at]

    mom = np.array(hist["momentum"])
    summary.update({
        "integrator": n["integrator"], "nonlinearity": n["nonlinearity"],
        "ndofs": P.ndofs, "nsteps": N, "h": md.h, "tau": tau, "hbar": hbar,
        "mass": hist["mass"][-1], "mass_error": relative_drift(hist["mass"]),
        "energy": hist["energy"][-1], "energy_error": relative_drift(hist["energy"]),
        "momentum": mom[-1].tolist(),
        "momentum_error": float(np.max(np.linalg.norm(mom - mom[0], axis=1))),
        "newton_iterations": stepper.newton_iterations,
        "newton_per_step": stepper.newton_iterations / N,
        "width2": hist["width2"][-1], "centre": hist["centre"][-1],
        "rho_change_L2": _rel_change(rho0, rho_f),
    })
    summary["checks"] = conservation_checks(summary)
    res = phase_error(max(k_start, inv.wavenumber()), md.h, cfg["discretisation"]["degree"],
                      tau, T, hbar, n["integrator"])
    summary["resolution"] = res
    if res["phase_error"] > PHASE_ERROR_WARN:
        warning(f"resolution: the wave (rms wavenumber {res['k_rms']:.3g}) is under-resolved: "
                f"its estimated phase error at T is {res['phase_error']:.2g} rad (space "
                f"{res['phase_error_space']:.2g}: {res['points_per_wavelength']:.3g} points per "
                f"wavelength; time {res['phase_error_time']:.2g}: omega*tau = "
                f"{res['omega_tau']:.3g}); refine mesh.h or raise problem.steps")
    if resume is not None:
        summary["restarted_at_step"] = start
    if stepper.residuals is not None:
        r = stepper.residuals
        summary["step_residual_reduction"] = r.worst()
        summary["checks"]["step_solves"] = bound(r.worst(), r.limit(), r.HINT)
    if exact is not None:
        t_c.value = T
        summary["err_psi_L2"] = l2_norm_complex(z, *exact)
        summary["err_rho_L2"] = l2_norm_density(z, exact[0] ** 2 + exact[1] ** 2)
        if cfg["exact"]["solution"] == "free-gaussian":
            summary["width2_exact"] = free_gaussian_width2(T, hbar, n["s0"])
    if ctx.figures:
        _figures(ctx, snaps, sorted(snap_at), T, N, hist, S_f)
    return summary


MASS_TOL = 1e-8       # relative mass drift of the mass-conserving integrators (observed ≤ 2e-14;
                      # with -nls_snes_rtol 1e-4: 5e-10)
ENERGY_TOL = 1e-6     # … and energy drift with the energy-conserving nonlinearity (observed
                      # ≤ 2e-14; with -nls_snes_rtol 1e-4: 2e-8)
RK4_MASS_TOL = 1e-2   # RK4 conserves nothing, but drifts by O(τ⁴) (1D soliton, 200 cells, 46
                      # steps: 1e-8); a step just above its stability limit (44 steps) grows
                      # the mass 7-fold, finite — the run exited 0 with no check at all


def conservation_checks(summary: dict) -> dict:
    """The run's checks (``checks``, as for the other runners): the midpoint rule and its
    compositions conserve the mass (and, with the energy-conserving nonlinearity, the energy)
    to solver tolerance; a larger drift means a broken solve.  RK4 conserves neither: its
    drifts are recorded, and a mass drift above RK4_MASS_TOL (an unstable step that has not
    yet overflowed) fails its check."""
    if summary["integrator"] == "rk4":
        return {"mass": bound(summary["mass_error"], RK4_MASS_TOL, "relative mass drift of "
                              "RK4: explicit and not conservative, a drift this large is a time "
                              "step above its stability limit; raise problem.steps or use a "
                              "conservative integrator")}
    out = {"mass": bound(summary["mass_error"], MASS_TOL,
                         "relative mass drift of a mass-conserving integrator")}
    if summary["nonlinearity"] == "energy-conserving":
        out["energy"] = bound(summary["energy_error"], ENERGY_TOL,
                              "relative energy drift of the energy-conserving scheme")
    return out


def _previous(stepper) -> dict:
    """What the next step reads besides the state: the midpoint rule's previous state (its
    extrapolated first guess); nothing for the compositions (no extrapolation across their
    sub-steps) and RK4."""
    return {"psi_previous": stepper.z_old} if isinstance(stepper, MidpointStepper) else {}


def _counts(stepper) -> dict:
    """The stepper's counts a checkpoint keeps: Newton iterations and the steps' residuals."""
    r = stepper.residuals
    return {"newton_iterations": stepper.newton_iterations,
            "step_residuals": r.pairs if r is not None else []}


def _set_counts(stepper, meta: dict, step: int) -> None:
    """The stepper as after ``step`` steps of the run whose checkpoint ``meta`` is."""
    base = getattr(stepper, "base", stepper)
    base.newton_iterations = meta["newton_iterations"]
    if isinstance(stepper, MidpointStepper):
        stepper.steps = step                 # extrapolate from the stored previous state
    if stepper.residuals is not None:
        stepper.residuals.restore(meta["step_residuals"])


def _rel_change(a, b) -> float:
    """‖b − a‖_{L²} / ‖a‖_{L²} for two functions of one space."""
    from ..invariants import assemble
    num = assemble((b - a) ** 2 * ufl.dx, a.function_space.mesh.comm)
    den = assemble(a ** 2 * ufl.dx, a.function_space.mesh.comm)
    return math.sqrt(max(num, 0.0) / den) if den > 0 else 0.0


def _figures(ctx, snaps, steps, T, N, hist, S_f):
    from .. import viz
    viz.plot_snapshots(snaps, [f"t = {T * k / N:.3g}" for k in steps],
                       ctx.figure("rho_snapshots.png"), name="rho")
    # one-panel plot_snapshots (viz.plot_field uses ndarray.ptp, removed in NumPy 2)
    viz.plot_snapshots([snaps[-1]], [f"|Psi|^2 at t = {T:.3g}"], ctx.figure("rho_final.png"),
                       name="rho")
    viz.plot_snapshots([S_f], [f"phase S at t = {T:.3g}"], ctx.figure("phase_final.png"),
                       name="S")
    if ctx.comm.rank == 0:
        t = np.linspace(0, T, N + 1)
        floor = 1e-17
        viz.line_plot(t, {"|M - M0|/M0": np.abs(np.array(hist["mass"]) / hist["mass"][0] - 1)
                          + floor,
                          "|E - E0|/|E0|": np.abs(np.array(hist["energy"]) - hist["energy"][0])
                          / max(abs(hist["energy"][0]), 1e-300) + floor},
                      ctx.figure("invariants.png"), xlabel="t", ylabel="relative drift",
                      title="NLS invariants", logy=True)
        mom = np.array(hist["momentum"])
        viz.line_plot(t, {f"P_{i}": mom[:, i] for i in range(mom.shape[1])},
                      ctx.figure("momentum.png"), xlabel="t", ylabel="momentum")
