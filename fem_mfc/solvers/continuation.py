"""Continuation (homotopy) for problems Newton does not solve from its initial guess.

Attractive (non-monotone) couplings — G = cρ² with c < 0, the aggregation games of the MFG
literature — and very small noise make the space-time system strongly nonlinear: Newton from
the trivial guess ends at a non-zero local minimum of ‖F‖ (DIVERGED_LINE_SEARCH).  Their
solutions are connected to an easy problem by a path: the same problem without the coupling
(s = 0 in s·G), and, if that one is hard too, with a larger noise.  :func:`continue_to`
follows the path λ ∈ [0, 1],

    coupling strength s(λ) = λ,      noise ε(λ) = ε·(ε₀/ε)^{1−λ}   (ε₀ = ε: noise fixed),

with adaptive steps (doubled after an easy stage, halved after a failed one, from the last
solution), a secant predictor from the last two solutions, loose intermediate tolerances and
the full one at λ = 1.  The stages solve every Newton step exactly (no inexact forcing:
near a fold the Jacobian is nearly singular and inexact steps stall) with the
affine-invariant line search of Deuflhard's NLEQ-ERR (``nleqerr``: the natural monotonicity
test ‖J⁻¹F(x + λδ)‖ ≤ (1 − λ/2)‖δ‖), which does not assume that the residual norm — or the
cost, non-convex here — decreases along Newton's direction; the residual-norm backtracking of
the direct attempt rejected full Newton steps near attractive solutions.  Each trial point costs
a Krylov solve; a step gets STAGE_TRIALS of them (one after a Krylov solve that stopped at
its limit), and the solve at the accepted point starts the next Newton step
(:meth:`~fem_mfc.solvers.newton.NewtonSolver._presolve`).  The user's
``-{prefix}snes_linesearch_type`` and ``-{prefix}snes_linesearch_max_it`` are kept.

The stages are recorded (parameter values, Newton iterations, residuals) and returned with the
result; if the path stalls (step below MIN_STEP) the last stage reached is reported and the
best iterate of the final attempt is returned unconverged.
"""
from __future__ import annotations

from mpi4py import MPI

import numpy as np

FIRST_STEP = 0.25
MIN_STEP = 1.0 / 512
EASY_ITERATIONS = 4            # a stage this quick doubles the step
STAGE_RTOL = 1e-6              # intermediate stages: relative to their own first residual
STAGE_MAX_IT = 25
STAGE_TRIALS = 3               # nleqerr trial points per Newton step in a stage (see below)
NOISE_FACTORS = (4.0, 16.0)    # ε₀/ε tried when the uncoupled problem fails too
NEGATIVE_HINT = 1e-3           # min ρ < −this·max ρ at a stall: say what to do about it


def _log(solver, message: str, *args) -> None:
    """A line in the run's log (``solver.log``; none outside a run)."""
    log = getattr(solver, "log", None)
    if log is not None:
        log.info(message, *args)


def _parameters(st) -> str:
    """The continuation parameters now set, in words ("coupling 0.25, sigma 0.6")."""
    out = []
    if "coupling" in st.parameters:
        out.append(f"coupling {st.parameter('coupling'):.4g}")
    if "eps" in st.parameters:
        out.append(f"sigma {(2.0 * st.parameter('eps')) ** 0.5:.4g}")
    return ", ".join(out)


def _set(st, lam: float, eps0: float | None, eps: float):
    if "coupling" in st.parameters:
        st.set_parameter("coupling", lam)
    if eps0 is not None:
        st.set_parameter("eps", eps * (eps0 / eps) ** (1.0 - lam))


def _stage(solver, lam, eps0, eps, rtol, atol, max_it):
    user = getattr(solver, "user_max_it", None)    # -{prefix}snes_max_it binds every stage
    if user is not None:                           # (it was ignored: -mfc_snes_max_it 1 ran
        max_it = min(max_it, user)                 # stages of 2–4 iterations, 12 in all)
    _set(solver.st, lam, eps0, eps)
    solver.parameters_changed()
    solver.stage = {"lambda": lam, "eps0": eps0,
                    "first_residual": solver.stage.get("first_residual")}
    _log(solver, "continuation: stage lambda = %.6g (%s)", lam, _parameters(solver.st))
    # a stage that creeps (Krylov solves stopping at their limit, damped steps) ends early:
    # a shorter step is the better use of the time (2D P1 24 × 24, G = −ρ², mfg: with every
    # failed stage running its STAGE_MAX_IT iterations of 300 Krylov iterations 470 s, with
    # this 55 s — 139 s while a Krylov solve at its limit failed the stage at once)
    return solver.solve(rtol=rtol, atol=atol, max_it=max_it, exact=True, stall_exit=True)


def _checkpoint(solver, out, stages, path, step, lam_p, Xp) -> None:
    """After a converged stage λ < 1: a checkpoint of everything the path reads next — the
    states (λ's solution), the next step, the previous stage's λ and states (the secant
    predictor's other point), which of the paths (``tries``) runs and the stages so far — so
    that a restart takes the uninterrupted run's stages (it re-solved the stage, from
    FIRST_STEP without a predictor: 34 Newton iterations against 37, another path)."""
    ck = getattr(solver, "checkpoint", None)
    if ck is None or ck.every <= 0:
        return
    ck.write(phase="continuation", residual=out["residual"], **solver.counts(),
             **solver.stage, step=step, lambda_previous=lam_p, path=path,
             stages=stages, previous=Xp)


def _path(solver, X0, eps0, eps, f0, rtol, atol, stages, lam0=0.0, path=0,
          resume: dict | None = None, first: dict | None = None) -> dict | None:
    """Follow λ: λ0 → 1 from the states X0 (None: the current states, e.g. a restart in the
    middle of the stage λ0, which is solved on), or, on a restart, from the checkpoint of
    meta data ``resume`` (states current): after its converged stage (not solved again), or
    in the middle of a later stage (solved on from its iterate, to that stage's tolerance),
    with the path's step, previous λ and, from ``solver.checkpoint``, the previous and last
    converged stages' states; the final stage's result, or None if it stalls.  ``path``: the
    index of this path among the tries; ``first``: the meta data of a checkpoint in the
    middle of the stage λ0 (the path's first), which is solved on to its own tolerance."""
    st = solver.st
    if X0 is not None:
        st.vec_to_states(X0)
    final_target = max(atol, rtol * f0)        # what the direct attempt had to reach
    Xl, Xp, lam_p = st.create_vec(), None, None
    pred = st.create_vec()
    within = None                  # a restart in the middle of a stage: {trial, atol, max_it}
    if resume is not None and resume.get("phase") != "continuation":
        last = solver.checkpoint.read_states(st, "last") if solver.checkpoint else None
        if last is None:                       # (a checkpoint without the path's states)
            resume = None
        else:
            Xl.destroy()
            Xl = last
            lam, step = resume["lambda_converged"], resume["step"]
            lam_p = resume.get("lambda_previous")
            done = int(resume.get("iteration") or 0)
            f_stage = resume.get("solve_first_residual") or 0.0
            within = {"trial": resume["lambda"], "max_it": max(1, STAGE_MAX_IT - done),
                      "atol": max(final_target, (STAGE_RTOL if resume["lambda"] < 1.0
                                                 else 0.0) * f_stage)}
    if resume is None:
        # a restart in the middle of this first stage (no converged stage yet): on from the
        # checkpoint's iterate to the stage's own tolerance, with the iterations it has left
        # (STAGE_RTOL of the restart's residual, already small: one Newton iteration more,
        # 38 against 37 on the LU path of the attractive case)
        rtol, target, max_it = STAGE_RTOL, final_target, STAGE_MAX_IT
        if first is not None and first.get("solve_first_residual"):
            rtol, max_it = 0.0, max(1, STAGE_MAX_IT - int(first.get("iteration") or 0))
            target = max(final_target, STAGE_RTOL * first["solve_first_residual"])
        # a checkpoint in this stage keeps the stages so far and the path's index, so that a
        # restart's record is the uninterrupted run's (it showed a 'restart' stage of 0
        # iterations for the direct attempt)
        solver.path = {"meta": {"stages": stages, "path": path}, "vectors": {}}
        try:
            out = _stage(solver, lam0, eps0, eps, rtol, target, max_it)
        finally:
            solver.path = None
        stages.append(_record(lam0, eps0, eps, out, st))
        _ended(solver, lam0, out)
        if not out["converged"]:
            for v in (Xl, pred):
                v.destroy()
            return None
        lam, step = lam0, FIRST_STEP
        st.states_to_vec(Xl)
        _checkpoint(solver, out, stages, path, step, lam_p, Xp)
    else:
        if within is None:                     # the checkpointed stage, converged
            lam, step = resume["lambda"], resume.get("step", FIRST_STEP)
            lam_p = resume.get("lambda_previous")
            solver.resumed = None              # the next solve is a new stage's
            _set(st, lam, eps0, eps)
            solver.stage = {"lambda": lam, "eps0": eps0,
                            "first_residual": solver.stage.get("first_residual")}
            st.states_to_vec(Xl)
        if lam_p is not None:
            Xp = solver.checkpoint.read_states(st) if solver.checkpoint is not None else None
            if Xp is None:                     # (no previous states: no secant predictor)
                lam_p = None
        _log(solver, "continuation: resuming %s the converged stage lambda = %.6g (step "
             "%.6g, %s)", "after" if within is None else
             f"the stage lambda = {within['trial']:.6g} from its iterate, after", lam, step,
             "no predictor" if lam_p is None
             else f"secant predictor from lambda = {lam_p:.6g}")
        out = {"converged": True}
    try:
        while lam < 1.0:
            trial = min(1.0, lam + step)
            if within is not None:
                trial = within["trial"]        # (lam + step: the same sum, stored)
            final = trial >= 1.0
            solver.path = {"meta": {"lambda_converged": lam, "step": step,
                                    "lambda_previous": lam_p, "path": path,
                                    "stages": stages},
                           "vectors": {"last": Xl, "previous": Xp}}
            if within is not None:             # the iterate of the stage, its counts on
                out = _stage(solver, trial, eps0, eps, 0.0, within["atol"], within["max_it"])
                within = None
            else:
                if Xp is not None:            # secant predictor Xl + r(Xl − Xp)
                    ratio = (trial - lam) / (lam - lam_p)
                    Xl.copy(pred)
                    pred.scale(1.0 + ratio)
                    pred.axpy(-ratio, Xp)
                    st.vec_to_states(pred)
                else:
                    st.vec_to_states(Xl)
                out = _stage(solver, trial, eps0, eps, 0.0 if final else STAGE_RTOL,
                             final_target, STAGE_MAX_IT)
            solver.path = None
            stages.append(_record(trial, eps0, eps, out, st))
            _ended(solver, trial, out)
            if out["converged"]:
                if Xp is None:
                    Xp = Xl.duplicate()
                Xl.copy(Xp)
                lam_p, lam = lam, trial
                st.states_to_vec(Xl)
                if out["iterations"] <= EASY_ITERATIONS:
                    step = min(2.0 * step, 1.0)
                if final:
                    return out
                _checkpoint(solver, out, stages, path, step, lam_p, Xp)
            else:
                # half the step that failed: a step doubled past 1 − λ was clipped to the
                # final stage, and halving it alone repeated that same failed stage (the
                # periodic attractive channel ran λ = 1 three times in a row, 1,000 Krylov
                # iterations each, the same residuals every time)
                step = (trial - lam) / 2.0
                if step < MIN_STEP:
                    _log(solver, "continuation: stalled at lambda = %.6g (step below %.3g)",
                         lam, MIN_STEP)
                    st.vec_to_states(Xl)
                    out["stalled_at"] = lam
                    return dict(out, converged=False)
    finally:
        solver.path = None
        for v in (Xl, Xp, pred):
            if v is not None:
                v.destroy()
    return out


def _ended(solver, lam, out) -> None:
    """The stage's verdict in the log."""
    _log(solver, "continuation: stage lambda = %.6g %s after %d Newton iterations, residual "
         "%.3e", lam, "converged" if out["converged"] else
         f"did not converge ({out.get('reason')})", out["iterations"], out["residual"])


def _record(lam, eps0, eps, out, st) -> dict:
    r = {"lambda": lam, "converged": out["converged"], "iterations": out["iterations"],
         "residual": out["residual"], "min_rho": st.min_of(st.rho[1:])}
    if not out["converged"]:
        r["reason"] = out["reason"]
    if "coupling" in st.parameters:
        r["coupling"] = st.parameter("coupling")
    if eps0 is not None:
        r["sigma"] = (2.0 * st.parameter("eps")) ** 0.5
    return r


def continue_to(solver, direct: dict, X0, start: dict | None = None) -> tuple[dict, list]:
    """Continuation after the unconverged ``direct`` attempt of ``solver`` (a
    :class:`~fem_mfc.solvers.newton.NewtonSolver`) from the initial states X0: first in the
    coupling strength alone, then together with the noise from NOISE_FACTORS × ε.  ``start``
    (a restart: the checkpoint's meta data, states current) resumes the path that was
    running, with the stored step, predictor and stage records: after the converged stage
    of a ``continuation`` checkpoint (:func:`_checkpoint`), or in the middle of the stage λ
    of a ``newton`` checkpoint, whose path states (``solver.path``, written with it) say
    where the path goes after that stage (it is solved on from the checkpoint's iterate).  A
    checkpoint in the middle of a path's first stage, or older than these records, continues
    that stage and follows λ from FIRST_STEP without a predictor.  Returns (the final
    attempt's result, the recorded stages); the states end at the solution or at the last
    converged stage."""
    st = solver.st
    stages = [{"lambda": 1.0, "stage": "direct", "converged": False,
               "iterations": direct["iterations"], "residual": direct["residual"],
               "reason": direct["reason"]}]
    after_stage = start is not None and start.get("phase") == "continuation"
    on_path = start is not None and (after_stage or bool(start.get("last_states")))
    if start is not None:
        if start.get("stages"):
            stages = [dict(r) for r in start["stages"]]       # the earlier legs' stages
        else:
            stages[0].update(stage="restart", lam=start["lambda"])
    if not ("coupling" in st.parameters or "eps" in st.parameters):
        return direct, stages
    what = " and the ".join(n for n, k in (("coupling strength", "coupling"), ("noise", "eps"))
                            if k in st.parameters)
    if on_path:
        _log(solver, "continuation in the %s: restarted %s the stage lambda = %.6g", what,
             "after" if after_stage else "in", start["lambda"])
    else:
        _log(solver, "newton did not converge from its start (%s, residual %.3e): "
             "continuation in the %s", direct["reason"], direct["residual"], what)
    direct_reason = stages[0].get("reason", direct["reason"])
    f0, rtol, atol = direct["first_residual"], solver.rtol, solver.atol
    eps = st.parameter("eps") if "eps" in st.parameters else 0.0
    user_ls = solver.user_linesearch
    if not user_ls:
        # A Newton step of a stage that converges passes nleqerr's test at its first trial
        # point (λ = 1: 80 of 80 steps on the periodic attractive channel); the stages that
        # fail spent up to 36 trials per step, each a Krylov solve as long as the step's.
        # A step that fails STAGE_TRIALS trials fails its stage; the path shortens its step.
        # (On the LU path a trial is one more solve with the step's factors: PETSc's limit.)
        solver.set_linesearch("nleqerr", **({"max_it": STAGE_TRIALS + 1}
                                            if solver.mode == "sweep" else {}))
    tries = ([None] if "coupling" in st.parameters else []) \
        + ([eps * k for k in NOISE_FACTORS] if eps > 0 and "eps" in st.parameters else [])
    first = 0
    if start is not None:                  # resume the path that was running
        i = start.get("path")
        if isinstance(i, int) and 0 <= i < len(tries) and tries[i] == start.get("eps0"):
            first = i                      # ... and the ones after it, as the run would
        else:
            tries = [start.get("eps0")] + [e for e in tries if e != start.get("eps0")]
    out = direct
    try:
        for i in range(first, len(tries)):
            eps0 = tries[i]
            resume = start is not None and i == first
            result = _path(solver, None if resume else X0, eps0, eps, f0, rtol, atol, stages,
                           lam0=start["lambda"] if resume else 0.0, path=i,
                           resume=start if resume and on_path else None,
                           first=start if resume and not on_path else None)
            if result is not None and result["converged"]:
                return dict(result, reason=result["reason"]), stages
            if result is not None:
                out = result
    finally:
        if not user_ls:
            solver.set_linesearch(None)
        _set(st, 1.0, eps if "eps" in st.parameters and eps > 0 else None, eps)
        solver.parameters_changed()
    reached = max((s["lambda"] for s in stages[1:] if s["converged"]), default=None)
    what = ("no stage converged" if reached is None
            else f"the continuation reached lambda = {reached:.4g} of 1")
    _log(solver, "continuation: %s", what)
    return dict(out, converged=False, reason=f"{direct_reason}; {what}"
                + _hints(st, stages)), stages


def _hints(st, stages) -> str:
    said = _negative_hint(st, stages) + _nan_hint(st, stages)
    return said + _inviscid_hint(st, advise=not said)    # (the advice once)


def _inviscid_hint(st, advise: bool = True) -> str:
    """Advice when a problem without noise (σ = 0) failed on the Galerkin scheme: nothing
    damps the oscillations of its transport (an annulus with an exit on the hole, σ = 0: no
    stage converged, and the line named no cause; the monotone scheme solves it)."""
    p = getattr(st, "problem", None)
    if getattr(p, "eps", None) != 0 or not hasattr(p, "monotone_advice") \
            or st.formulation.names != ("rho", "u"):
        return ""
    advice = p.monotone_advice() if advise else None
    return ("; with sigma = 0 no diffusion damps the Galerkin transport's oscillations"
            + (f" — use the positivity-preserving scheme ({advice})" if advice else ""))


def _nan_hint(st, stages) -> str:
    """Advice when stages failed on a residual that was not a number: G (or H) is undefined
    at some state the steps reached — ρ**1.5 or log ρ where the Galerkin density dips below
    0 (those stages were recorded with residual 0 and no word of why)."""
    nan = [s["lambda"] for s in stages[1:] if not s.get("converged")
           and s.get("reason") == "DIVERGED_FNORM_NAN"]
    if not nan:
        return ""
    advice = (st.problem.monotone_advice() if st.formulation.names == ("rho", "u")
              and hasattr(st.problem, "monotone_advice") else None)
    return (f"; {len(nan)} stage(s) failed on a residual that is not a number (first at "
            f"lambda = {nan[0]:.4g}): the congestion or Hamiltonian is undefined at states the "
            "steps reached (e.g. rho**1.5 or log(rho) at rho < 0)"
            + (f" — use the positivity-preserving scheme ({advice})" if advice else ""))


def _negative_hint(st, stages) -> str:
    """Advice when the converged stages' densities went negative: an attractive coupling
    concentrates the density below the mesh scale, where the Galerkin scheme oscillates."""
    lows = [s["min_rho"] for s in stages[1:] if s.get("converged") and "min_rho" in s]
    if not lows:
        return ""
    top = st.comm.allreduce(max((f.x.array[: st.nl].max() if st.nl else -np.inf)
                                for f in st.rho[1:]), op=MPI.MAX)
    low = min(lows)
    if low >= -NEGATIVE_HINT * max(top, 1.0):
        return ""
    advice = (st.problem.monotone_advice() if st.formulation.names == ("rho", "u")
              and hasattr(st.problem, "monotone_advice") else None)
    fix = ("refine the mesh" if advice is None
           else f"refine the mesh or use the positivity-preserving scheme ({advice})")
    return (f"; the density went negative on the way (min rho = {low:.3g}, max {top:.3g}): "
            f"it concentrates below the mesh scale — {fix}")


__all__ = ["continue_to"]
