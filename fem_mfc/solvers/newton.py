"""All-at-once Newton for the space-time optimality system ∂L/∂(ρ, u) = 0 (forms/hjb_fp.py).

petsc4py SNES with backtracking line search (``bt``).  Two linear solvers for the Newton step:

* ``linear="lu"``: the Jacobian blocks gathered into a MatNest, converted to AIJ and factorised
  by MUMPS.  Exact and robust, but the space-time KKT matrix factorises like a 3D problem.
* ``linear="sweep"``: FGMRES on the blocks (products grouped by matrix,
  :mod:`fem_mfc.solvers.kkt_product`), preconditioned by one backward (linearised HJB) and
  one forward (linearised FP) sweep with per-step LU factors (:mod:`fem_mfc.solvers.kkt_pc`;
  redundant PETSc LU on 2–4 ranks, :func:`fem_mfc.solvers.sweeps.step_solver`); memory and
  work grow like N 2D problems.
* ``linear="auto"`` (default): "sweep" for the HJB–FP system from AUTO_SWEEP_UNKNOWNS
  space-time unknowns on, else "lu" (other formulations passed as ``system`` keep LU).

On the sweep path the Newton steps are *inexact* by default (``-mfc_newton_forcing
adaptive``, :class:`Forcing`): FGMRES stops at ‖F + Jδ‖ ≤ ηₖ‖F‖ with the Eisenstat–Walker
forcing term (choice 2) capped at ETA_MAX (``-mfc_newton_eta_max``) and never below what the
Newton tolerance still needs; ``-mfc_newton_forcing exact`` solves every step to KSP_RTOL
(1e-12: the iterates of the LU path to solver tolerance), as does a user ``-mfc_ksp_rtol`` or
PETSc's own ``-mfc_snes_ksp_ew``.  60k P1 dofs × 50 CN steps, congested: Krylov 2/2/3/4/6
instead of 15/14/13/11/7, the same Newton residuals to 2 digits, J to 1e-12 (ETA_MAX = 1e-2
gave 3/3/3/4/5, one sweep more; 0.3 stalled: 8 Newton steps).

When the residual is quadratic in the unknowns (``SpaceTime.quadratic``, e.g. G = κρ²/2) the
sweep path evaluates it after the first one by the exact trapezoid identity of
:class:`~fem_mfc.solvers.kkt_pc.TrapezoidResidual` from the Jacobian blocks, which it then
reuses for the Jacobian at that point (``-mfc_newton_trapezoid false``: assemble every
residual), and its state-dependent Jacobian blocks, affine in the states, are evaluated as
d₀ + Σ Tᵢwᵢ once each form has been assembled a few times (:mod:`fem_mfc.solvers.affine`;
``-mfc_newton_affine_blocks false``: assemble every block).  The sweep path multiplies with
the Jacobian through :class:`~fem_mfc.solvers.kkt_product.KKTProduct` (terms grouped by
matrix).

The choice can also be made with PETSc options: ``-mfc_linear sweep`` or ``-mfc_pc_type shell``
select the sweep path.  Every PETSc option can be overridden through the options prefix
(default ``mfc_``), e.g. ``-mfc_snes_monitor``, ``-mfc_ksp_rtol``, ``-mfc_snes_lag_preconditioner
2`` (reuse the sweep factors for two Newton steps), ``-mfc_sweep_pc_factor_mat_solver_type
mumps`` (per-step LU of the sweep), ``-mfc_pc_factor_mat_solver_type superlu_dist`` (LU path).
Sweep-path options (kkt_pc.py): ``-mfc_sweep_reuse_rtol δ`` (reuse per-step factors of pivots
within δ, across Newton steps and time steps), ``-mfc_sweep_pc_type gamg`` (inexact per-step
solves), ``-mfc_kkt_derive false`` (assemble every block).  The history records the Krylov
iterations and, on the sweep path, the cumulative per-step factorisations.
"""
from __future__ import annotations

import time

from petsc4py import PETSc

from ..errors import ConfigError, SolverError
from .kkt_pc import KKTOperator, TrapezoidResidual, sweep_ksp
from .result import Result
from .spacetime import SpaceTime
from .sweeps import cole_hopf_fields, cole_hopf_obstacles

# The KKT matrix has zero diagonal blocks (saddle point).  MUMPS' automatic column permutation
# gave inaccurate factors (true residual > right-hand side, P2, 1D); the maximum-product
# transversal with scaling (ICNTL(6) = 5) is accurate without extra fill (ICNTL(6) = 1 tripled
# the fill in 2D); delayed pivots need extra workspace (ICNTL(14)).
DEFAULTS = {"snes_linesearch_type": "bt", "mat_mumps_icntl_14": 100, "mat_mumps_icntl_6": 5}
REASONS = {v: k for k, v in PETSc.SNES.ConvergedReason.__dict__.items() if not k.startswith("_")}
LINEAR = ("auto", "lu", "sweep")
AUTO_SWEEP_UNKNOWNS = 100_000      # LU of the space-time matrix is fine below (≈ 2 s, < 1 GB)
KSP_RTOL, KSP_ATOL = 1e-12, 1e-14
FORCING = ("adaptive", "exact")
GUESSES = ("trivial", "cole-hopf")
ETA_MAX, ETA_GAMMA, ETA_ALPHA = 3e-2, 0.9, 2.0   # EW choice 2; 0.3 stalled here
ETA_SAFETY = 0.5                                 # of the tolerance still to be gained


def check_cole_hopf_guess(p):
    """The Cole–Hopf guess drops the congestion; it needs the rest of the linear path."""
    if set(cole_hopf_obstacles(p)) - {"congestion"}:
        raise ConfigError("solver.initial_guess", "'trivial' (the Cole–Hopf guess needs σ > 0 "
                          "and no source terms)", "cole-hopf")


def cole_hopf_guess(st: SpaceTime, residual=None) -> bool:
    """States of ``st`` ← the Cole–Hopf solution (two linear sweeps, MODEL §4) of its problem
    without congestion — a continuation start for congested problems — if its residual is
    smaller than that of the current states (on coarse meshes with Crank–Nicolson, χ can turn
    negative and the guess is useless); returns whether it was taken.  ``residual(x, f)``
    evaluates F (default: assembly; Newton passes its trapezoid residual, for which the
    comparison is one assembly plus two operator products).  60k P1 dofs × 50 CN steps,
    G = ρ²/2: the initial residual is 19× smaller and Newton needs 4 steps instead of 5."""
    import dataclasses

    p = st.problem
    check_cole_hopf_guess(p)
    residual = residual or st.residual
    X0, X1, F = st.create_vec(), st.create_vec(), st.create_vec()
    st.states_to_vec(X0)
    residual(X0, F)
    before = F.norm()
    cole_hopf_fields(dataclasses.replace(p, G=None, rho0=p.rho0), st.rho, st.u)
    st.states_to_vec(X1)
    residual(X1, F)
    taken = F.norm() < before               # NaN compares False: rejected
    if not taken:
        st.vec_to_states(X0)
    for v in (X0, X1, F):
        v.destroy()
    return taken


class Forcing:
    """Eisenstat–Walker forcing terms for an inexact Newton method (choice 2):

      η₀ = η_max,  ηₖ = min(η_max, max(γ(‖Fₖ‖/‖Fₖ₋₁‖)^α, γηₖ₋₁^α if γηₖ₋₁^α > 0.1)),

    then ηₖ ≥ s·target/‖Fₖ‖ (no oversolving: the last step only has to reach the SNES
    tolerance target = max(atol, rtol‖F₀‖)) and ηₖ ≥ KSP_RTOL.  ``rtol_for(k, fnorm)`` is
    called before the k-th linear solve (from the SNES monitor)."""

    def __init__(self, rtol: float, atol: float, eta_max: float = ETA_MAX,
                 gamma: float = ETA_GAMMA, alpha: float = ETA_ALPHA):
        self.rtol, self.atol = rtol, atol
        self.eta_max, self.gamma, self.alpha = eta_max, gamma, alpha
        self.f0 = self.prev = self.eta = None

    def rtol_for(self, k: int, fnorm: float) -> float:
        if k == 0 or self.prev is None:
            self.f0, eta = fnorm, self.eta_max
        else:
            eta = self.gamma * (fnorm / self.prev) ** self.alpha
            carry = self.gamma * self.eta ** self.alpha
            if carry > 0.1:
                eta = max(eta, carry)
            eta = min(eta, self.eta_max)
        target = max(self.atol, self.rtol * self.f0)
        if fnorm > 0:
            eta = max(eta, ETA_SAFETY * target / fnorm)
        self.prev, self.eta = fnorm, min(max(eta, KSP_RTOL), self.eta_max)
        return self.eta


def linear_mode(st: SpaceTime, linear: str, prefix: str, hjb_fp: bool = True) -> str:
    """"lu" or "sweep": the keyword, else ``-{prefix}linear``, else ``-{prefix}pc_type shell``,
    else by the number of space-time unknowns — for the HJB–FP system only (``hjb_fp``); other
    formulations (QHD, the Cole–Hopf pair) keep LU unless asked for the sweep."""
    opts = PETSc.Options()
    if linear == "auto" and opts.hasName(prefix + "linear"):
        linear = opts.getString(prefix + "linear")
    if linear not in LINEAR:
        raise ConfigError("solver.linear", "one of " + ", ".join(LINEAR), linear)
    if linear != "auto":
        return linear
    if opts.getString(prefix + "pc_type", "") in ("shell", "python"):
        return "sweep"
    size = st.nfields * st.V.dofmap.index_map.size_global * st.V.dofmap.index_map_bs
    return "sweep" if hjb_fp and size >= AUTO_SWEEP_UNKNOWNS else "lu"


def newton(problem, rtol=1e-10, atol=1e-12, max_it=50, prefix="mfc_", petsc_options=None,
           system: SpaceTime | None = None, linear: str = "auto",
           forcing: str = "adaptive", guess: str = "trivial") -> Result:
    """Solve the discrete system by Newton from the trivial guess ρⁿ = ρ_0, uⁿ = Φ, from the
    Cole–Hopf solution of the problem without congestion (``guess="cole-hopf"``,
    :func:`cole_hopf_guess`), or from the states already in ``system``; ``linear`` chooses
    the Newton-step solver and ``forcing`` the Krylov tolerance of the sweep path (see above;
    ``-{prefix}newton_forcing`` overrides).  ``history`` holds the residual and the Krylov iterations (and their
    tolerance ``ksp_rtol``) of the step that followed."""
    t0 = time.perf_counter()
    if guess not in GUESSES:
        raise ConfigError("solver.initial_guess", "one of " + ", ".join(GUESSES), guess)
    st = system or SpaceTime(problem)
    if system is not None:
        guess = "the given states"
    elif guess == "cole-hopf":
        check_cole_hopf_guess(problem)
    hjb_fp = system is None or type(system) is SpaceTime
    opts = PETSc.Options()
    ours = [f"{prefix}{k.lstrip('-')}" for k in (petsc_options or {})]
    for name, v in zip(ours, (petsc_options or {}).values()):
        opts[name] = v
    try:
        st.affine_blocks = opts.getBool(prefix + "newton_affine_blocks", True)
        mode = linear_mode(st, linear, prefix, hjb_fp)
        forcing = opts.getString(prefix + "newton_forcing", forcing)
        if forcing not in FORCING:
            raise ConfigError(f"-{prefix}newton_forcing", "one of " + ", ".join(FORCING), forcing)
        if opts.hasName(prefix + "ksp_rtol") or opts.getBool(prefix + "snes_ksp_ew", False):
            forcing = "exact"                 # the user's Krylov tolerance wins
        return _solve(st, mode, rtol, atol, max_it, prefix, opts, ours, t0,
                      Forcing(rtol, atol, opts.getReal(prefix + "newton_eta_max", ETA_MAX))
                      if mode == "sweep" and forcing == "adaptive" else None, guess)
    finally:                      # options of this call only: later solves start clean
        for name in ours:
            opts.delValue(name)


def _solve(st, mode, rtol, atol, max_it, prefix, opts, ours, t0, forcing=None,
           guess="trivial") -> Result:
    """SNES on ``st`` with the Newton-step solver ``mode`` (inexact steps with ``forcing``)
    from ``guess``; appends the option names it sets to ``ours``."""
    X, F = st.create_vec(), st.create_vec()
    history = []
    ctx = {}                                      # the sweep PC, for its counters

    trap = None                                   # the trapezoid residual (sweep path)

    def residual(snes, x, f):
        if trap is not None:
            trap(x, f)
        else:
            st.residual(x, f)

    def monitor(snes, it, fnorm):
        if history:
            history[-1]["ksp_its"] = snes.getKSP().getIterationNumber()
            if "pc" in ctx:                       # cumulative per-step factorisations
                history[-1]["factorisations"] = ctx["pc"].factorisations
        history.append({"residual": fnorm})
        if forcing is not None:
            eta = forcing.rtol_for(it, fnorm)
            snes.getKSP().setTolerances(rtol=eta)
            history[-1]["ksp_rtol"] = eta

    snes = PETSc.SNES().create(st.comm)
    snes.setOptionsPrefix(prefix)
    snes.setFunction(residual, F)
    snes.setTolerances(rtol=rtol, atol=atol, stol=1e-14, max_it=max_it)
    snes.setMonitor(monitor)
    for k, v in DEFAULTS.items():                         # defaults; the user's choice wins
        if not opts.hasName(prefix + k) and (mode == "lu" or "mumps" not in k):
            opts[prefix + k] = v
            ours.append(prefix + k)
    ksp = snes.getKSP()
    pc_ctx = None
    if mode == "lu":
        A = st.jacobian(None)
        snes.setJacobian(lambda snes, x, J, P: st.jacobian(x), A, A)
        ksp.setType("preonly")
        ksp.getPC().setType("lu")
        ksp.getPC().setFactorSolverType("mumps")
    else:
        op = KKTOperator(st, prefix=prefix)
        if st.quadratic and opts.getBool(prefix + "newton_trapezoid", True):
            trap = TrapezoidResidual(op)

        def jacobian(snes, x, J, P):
            if trap is None or not trap.current(x):   # else: assembled with F(x)
                op.update(x)
        snes.setJacobian(jacobian, op.product.mat, op.mat)
        pc_ctx = ctx["pc"] = sweep_ksp(ksp, op, KSP_RTOL, KSP_ATOL, prefix)
        if opts.getString(prefix + "pc_type", "") == "shell":
            opts.delValue(prefix + "pc_type")             # "shell" names the sweep PC here
    snes.setFromOptions()
    if guess == "cole-hopf" and not cole_hopf_guess(st, trap):
        guess = "trivial (the Cole-Hopf guess had the larger residual)"
    st.states_to_vec(X)
    try:
        snes.solve(None, X)
    except ImportError as e:
        raise SolverError(f"Newton (SNES): PETSc error {e.ierr} during the solve "
                          "(singular Jacobian or NaN)") from None
    reason, its = snes.getConvergedReason(), snes.getIterationNumber()
    fnorm = snes.getFunctionNorm()
    st.vec_to_states(X)
    snes.destroy()
    if history:
        history[0]["guess"] = guess
    if trap is not None:
        history[-1]["residuals"] = {"assembled": trap.assembled, "trapezoid": trap.derived}
        trap.destroy()
    if pc_ctx is not None:
        pc_ctx.destroy()
        op.destroy()
    if reason < 0 or fnorm != fnorm:
        raise SolverError(f"Newton (SNES) did not converge: {REASONS.get(reason, reason)} after "
                          f"{its} iterations (residual {fnorm:.3e})")
    st.check_finite("Newton")
    return Result.from_system(st, method="newton", iterations=its, history=history,
                              seconds=time.perf_counter() - t0)
