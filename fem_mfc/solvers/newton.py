"""All-at-once Newton for the space-time optimality system ∂L/∂(ρ, u) = 0 (forms/hjb_fp.py).

petsc4py SNES (``newtonls``) on a :class:`~fem_mfc.solvers.spacetime.SpaceTime`, with one of
two solvers for the Newton step (the *linear path*):

* ``"lu"``: the Jacobian blocks gathered into a MatNest, converted to AIJ and factorised by
  MUMPS.  Exact and robust, but the space-time KKT matrix factorises like a problem of one
  dimension more than the mesh.
* ``"sweep"``: GMRES (FGMRES for iterative per-step solves; ``-{prefix}newton_krylov``) on
  the blocks (:class:`~fem_mfc.solvers.kkt.KKTOperator`, products grouped by matrix),
  right-preconditioned by one backward (linearised HJB) and one forward
  (linearised FP) sweep of per-step solves (:class:`~fem_mfc.solvers.kkt_pc.SweepPC`, a
  PETSc python PC); memory and work grow like N problems of the mesh's dimension.  The Newton
  steps are *inexact* (:class:`Forcing`, Eisenstat–Walker; ``-{prefix}newton_forcing exact``
  solves every step to KSP_RTOL, as does a user ``-{prefix}ksp_rtol`` or ``-{prefix}snes_ksp_ew``).
  For a quadratic residual (``Formulation.quadratic``) the residual after the first one comes
  from the exact trapezoid identity (:class:`~fem_mfc.solvers.kkt.TrapezoidResidual`;
  ``-{prefix}newton_trapezoid false`` assembles every residual).
* ``"auto"`` (default) chooses by the estimated cost of both (:mod:`fem_mfc.solvers.auto`).

Every option is read from PETSc's options database under the prefix (default ``mfc_``), and
the options of one call (``petsc_options``, relative to the prefix) and this module's defaults
are inserted only for the duration of the call (:func:`fem_mfc.options.inserted`): e.g.
``-mfc_snes_monitor``, ``-mfc_snes_linesearch_type``, ``-mfc_ksp_rtol``,
``-mfc_sweep_reuse_rtol δ``, ``-mfc_sweep_pc_type gamg``, ``-mfc_newton_affine_blocks false``,
``-mfc_newton_reuse_trial false`` (solve a Newton step again that nleqerr's line search
solved at its accepted point).

Globalisation: the line search (default ``bt`` on the residual norm) and, when Newton fails
from the initial guess, continuation in the coupling strength and the noise
(:mod:`fem_mfc.solvers.continuation`).  A solve that does not meet its tolerance returns its
best iterate with ``converged = False`` — never a silent success.
"""
from __future__ import annotations

import time

from petsc4py import PETSc

import numpy as np

from .. import compat, options
from ..errors import ConfigError, SolverError, UserError, keeps_cause
from .result import Result
from .spacetime import SpaceTime

LU_DEFAULTS = {"mat_mumps_icntl_14": 100, "mat_mumps_icntl_6": 5}
MUMPS_MEMORY = (-8, -9, -11, -13, -14, -15, -17, -19, -20, -22)   # INFOG(1): out of memory
# a work array too small: factorised again with more relaxation (options.factorise)
MUMPS_WORKSPACE = options.MUMPS_WORKSPACE
WORKSPACE_RETRIES = options.WORKSPACE_RETRIES
# The KKT matrix has zero diagonal blocks (saddle point).  MUMPS' automatic column permutation
# gave inaccurate factors (true residual > right-hand side, P2, 1D); the maximum-product
# transversal with scaling (ICNTL(6) = 5) is accurate without extra fill (ICNTL(6) = 1 tripled
# the fill in 2D); delayed pivots need extra workspace (ICNTL(14)).
DEFAULTS = {"snes_linesearch_type": "bt", "ksp_converged_maxits": "true"}
# ksp_converged_maxits: a Krylov solve that reaches its iteration limit (300) before its
# tolerance ends "converged" (CONVERGED_ITS) with its last iterate, an inexact Newton
# direction the line search judges; PETSc's default ended Newton at the first such solve
# (DIVERGED_LINEAR_SOLVE), and every continuation stage likewise: 2D P1 1,089 × 40, σ = 0.05,
# congested (the sweep a weak preconditioner, 20–300 iterations per step) took 290 s and 53
# continuation stages, each failed one a full 300 iterations — with it 71 s, 5 stages, the
# same J to 4.6e-12 (56 s with the early end of stalling stages, _poor_inexact_step).  Failed
# per-step solves (NaN on every rank), breakdowns and NaN still fail.
REASONS = options.REASONS
LINEAR = ("auto", "lu", "sweep")
KSP_RTOL, KSP_ATOL = 1e-12, 1e-14
KRYLOV_RESTART = 8              # inexact Newton steps take 2–6 Krylov iterations
KRYLOV = ("auto", "gmres", "fgmres")
# The Krylov method of the sweep path (-{prefix}newton_krylov): right-preconditioned GMRES
# where the sweep preconditioner is a fixed linear map (direct per-step solves) and the
# problem has GMRES_FROM DOF·steps or more, FGMRES otherwise.  Same iterates; GMRES keeps no
# preconditioned directions (13 instead of 24 space-time vectors of 16 B per DOF·step at
# restart 8) for one more preconditioner application per Newton step (M⁻¹ of the combined
# directions): 9–10 % more time at 4k–16k 2D dofs × 20 steps, 3–9 % at 60k × 50 — worth it
# where the 11 vectors are large (docs/performance.md, "Where the Newton memory goes").
GMRES_FROM = 5_000_000          # DOF·steps: FGMRES's extra vectors ≥ 0.9 GB
FORCING = ("adaptive", "exact")
GUESSES = ("trivial", "cole-hopf", "coarse")
ETA_MAX, ETA_GAMMA, ETA_ALPHA = 3e-2, 0.9, 2.0   # EW choice 2; 0.3 stalled here
ETA_SAFETY = 0.5                                 # of the tolerance still to be gained
CONVERGED = ("CONVERGED_FNORM_ABS", "CONVERGED_FNORM_RELATIVE")
ROUNDOFF_FACTOR = 1e3           # a residual that stagnates this close to the target ...
STAGNATION = 2                  # ... for this many iterations has reached its round-off floor;
STAGNATION_RATIO = 0.9          # stagnating: each of them gained less than 10 % — not a
                                # steady linear decrease (e.g. 0.7 per step: a wrong Jacobian)
NOISE_FACTOR = 10.0             # ... or stagnates within this factor of the residual's change
                                # under a last-bit change of every unknown (residual_noise)
NOISE_GATE = 1e-4               # ... once it is below this fraction of the first residual
LIMIT_REDUCTION = 1e-2          # a Krylov solve at its limit is a step only below this
LINESEARCH_MAX_IT = 40          # PETSc's (bt, nleqerr)
EXACT_STAGES = ("auto", "sweep", "lu")   # -{prefix}continuation_linear (see exact_stages)
STAGES_LU_RATIO = 4.0           # auto: exact (LU) stages for an attractive coupling where the
                                # LU's estimated step is at most this many sweep steps
STALL_RATIO, STALL_STEPS = 0.95, 2   # a direct attempt whose residual fell by less than 5 %
                                     # in each of 2 steps has stalled: continuation takes over


def petsc_failure(e: Exception) -> str:
    """A PETSc error that ended a Newton attempt, in PETSc's own words where it has them (the
    verdict said "ERROR (error code 92)" for -mfc_pc_type lu on 2 ranks, a factorisation
    PETSc's own LU cannot do in parallel)."""
    ierr = getattr(e, "ierr", None)
    words = compat.petsc_error_message(ierr) if isinstance(ierr, int) else None
    if words:
        return f"PETSc error {ierr}: {words}"
    return str(e).splitlines()[0] if str(e) else "PETSc error"


def check_cole_hopf_guess(p):
    """The Cole–Hopf guess drops the congestion; it needs the rest of the linear path."""
    from .sweeps import cole_hopf_obstacles
    if getattr(p, "populations", None):
        raise ConfigError("solver.initial_guess", "'trivial' with [[population]] tables",
                          "cole-hopf")
    obstacles = cole_hopf_obstacles(p)
    if "exits" in obstacles:
        raise ConfigError("solver.initial_guess", "'trivial' or 'coarse' for a problem with "
                          "exits", "cole-hopf")
    if "hamiltonian" in obstacles:
        raise ConfigError("problem.H", "'quadratic' for solver.initial_guess = 'cole-hopf' "
                          "(use 'trivial' or 'coarse')", "non-quadratic H")
    if set(obstacles) - {"congestion"}:
        raise ConfigError("solver.initial_guess", "'trivial' (the Cole–Hopf guess needs σ > 0 "
                          "and no source terms)", "cole-hopf")


def cole_hopf_guess(st: SpaceTime, residual=None, before: float | None = None) -> bool:
    """States of ``st`` ← the Cole–Hopf solution (two linear sweeps, MODEL §4) of its problem
    without congestion — a continuation start for congested problems — if its residual is
    smaller than that of the current states (on coarse meshes with Crank–Nicolson, χ can turn
    negative and the guess is useless); returns whether it was taken.  ``residual(x, f)``
    evaluates F (default: assembly; Newton passes its trapezoid residual); ``before``: ‖F‖ at
    the current states, if known."""
    import dataclasses

    from .sweeps import cole_hopf_fields
    p = st.problem
    check_cole_hopf_guess(p)
    residual = residual or st.residual
    X0, X1, F = st.create_vec(), st.create_vec(), st.create_vec()
    st.states_to_vec(X0)
    if before is None:
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

    def state(self) -> dict:
        """What the next :meth:`rtol_for` reads (a checkpoint stores it: a restart reset it,
        and its first Newton step, solved to η_max, cost 1–3 more steps)."""
        return {"f0": self.f0, "prev": self.prev, "eta": self.eta}

    def restore(self, state: dict):
        self.f0, self.prev, self.eta = state["f0"], state["prev"], state["eta"]

    def rtol_for(self, k: int, fnorm: float) -> float:
        if self.prev is None:                 # the first call of a solve (k = 0)
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


def make_system(problem) -> SpaceTime:
    """The space-time system of ``problem``'s discretisation (Galerkin, or the monotone P1
    scheme of :mod:`fem_mfc.solvers.monotone`)."""
    if getattr(problem, "stabilisation", "none") == "monotone":
        from .monotone import MonotoneSpaceTime
        return MonotoneSpaceTime(problem)
    return SpaceTime(problem)


def linear_mode(st: SpaceTime, linear: str, prefix: str) -> tuple[str, dict]:
    """("lu" | "sweep", the auto rule's record): the keyword, else ``-{prefix}linear``, else
    the cheaper path by the estimates of :func:`fem_mfc.solvers.auto.choose`."""
    from . import auto
    if linear == "auto":
        linear = options.get("linear", "auto", prefix=prefix)
    if linear not in LINEAR:
        raise ConfigError("solver.linear", "one of " + ", ".join(LINEAR), linear)
    if linear != "auto":
        return linear, {"rule": "requested"}
    return auto.choose(st)


class NewtonSolver:
    """A SNES on ``st`` with the linear path ``mode``; :meth:`solve` may be called repeatedly
    (continuation stages).  Build and use it inside :func:`fem_mfc.options.inserted`."""

    def __init__(self, st: SpaceTime, mode: str, prefix: str, rtol: float, atol: float,
                 max_it: int, forcing: str = "adaptive", user_linesearch: bool = False):
        from .kkt import KKTOperator, TrapezoidResidual
        from .kkt_pc import PYTHON_TYPE
        self.st, self.mode, self.prefix = st, mode, prefix
        self.rtol, self.atol, self.max_it = rtol, atol, max_it
        self.user_linesearch = user_linesearch
        self.stall_exit = False               # end a stalled attempt early (see _stalled)
        self.checkpoint = None                # a fem_mfc.checkpoint.Writer, or None
        self.stage = {"lambda": 1.0, "eps0": None}   # continuation stage being solved
        self.path = None              # the continuation's path around that stage: its meta
                                      # data and states, for a checkpoint in the stage
        self.log = None                       # a logging.Logger for the Newton steps
        # a restart: the counts and the forcing state of the checkpointed attempt, which the
        # next solve continues (see :meth:`resume_from`); the run's Newton iterations of the
        # earlier legs and of this one's finished solves
        self.resumed = None
        self.iterations_before, self.iterations_done = 0, 0
        # the run's Krylov iterations likewise: of the Newton steps' solves (as SNES counts
        # them) and of the line search's solves (nleqerr's trial points, sweep path), which
        # SNES does not count
        self.ksp_before = {"steps": 0, "line_search": 0}
        self.ksp_done = {"steps": 0, "line_search": 0}
        self._offset = self._ksp_offset = 0
        self.X, self.F = st.create_vec(), st.create_vec()
        self.best = None
        self._noise = None               # residual_noise at the best iterate (once per solve)
        self.trap = self.op = None
        self._step = {"its": 0, "short": False}   # the Newton-step Krylov solve (see _presolve)
        self._step_next = self._skip = self._abandon = False
        self._ls_solves = self._ls_its = 0
        self._reused = self._cache = self._warm = None
        self.history = []
        self.seconds = {"residual": 0.0, "jacobian": 0.0}
        if hasattr(st.assembler, "affine_blocks"):
            st.assembler.affine_blocks = options.get_bool("newton_affine_blocks", True, prefix)
        forcing = options.get("newton_forcing", forcing, prefix)
        if forcing not in FORCING:
            raise ConfigError(f"-{prefix}newton_forcing", "one of " + ", ".join(FORCING),
                              forcing)
        if options.get("ksp_rtol", None, prefix) is not None \
                or options.get_bool("snes_ksp_ew", False, prefix):
            forcing = "exact"                 # the user's Krylov tolerance wins
        self.forcing = (Forcing(rtol, atol, options.get_real("newton_eta_max", ETA_MAX, prefix))
                        if mode == "sweep" and forcing == "adaptive" else None)
        snes = self.snes = options.make_snes(st.comm, prefix, rtol, atol, max_it)
        snes.setFunction(self._residual, self.F)
        snes.setMonitor(self._monitor)
        snes.setConvergenceTest(self._converged)
        ksp = snes.getKSP()
        if mode == "lu":
            A = st.jacobian(None)
            self.lu_retries = []          # the factorisations repeated with more workspace
            self._jac = (self._lu_jacobian, A, A)
            snes.setJacobian(*self._jac)
            ksp.setType("preonly")
            ksp.getPC().setType("lu")
            ksp.getPC().setFactorSolverType("mumps")
            self._lu_defaults = options.inserted(defaults=LU_DEFAULTS, prefix=prefix)
            self._lu_defaults.__enter__()
        else:
            self._lu_defaults = None
            op = self.op = KKTOperator(st)
            if st.quadratic and options.get_bool("newton_trapezoid", True, prefix):
                self.trap = TrapezoidResidual(op)
            self._jac = (self._jacobian, op.product.mat, op.product.mat)
            snes.setJacobian(*self._jac)
            ksp.setType(self._krylov(op, prefix))
            ksp.setPCSide(PETSc.PC.Side.RIGHT)
            ksp.setTolerances(rtol=KSP_RTOL, atol=KSP_ATOL, max_it=300)
            ksp.setGMRESRestart(KRYLOV_RESTART)
            # (a python test replaces PETSc's default context: ksp_converged_maxits is ours)
            self._limit_is_step = options.get_bool("ksp_converged_maxits", True, prefix)
            ksp.addConvergenceTest(self._krylov_limit, prepend=True)
            self._reuse_trial = options.get_bool("newton_reuse_trial", True, prefix)
            ksp.setPreSolve(self._presolve)
            ksp.setPostSolve(self._postsolve)
            pc = ksp.getPC()
            pc.setType("python")
            pc.setPythonType(PYTHON_TYPE)
        snes.setFromOptions()
        if snes.getType() != "newtonls":      # (newtontr: "error code -1" at its first step)
            raise ConfigError(f"-{prefix}snes_type", "'newtonls' (the Newton of fem_mfc: its "
                              "line searches, inexact forcing and continuation are built on "
                              "it; choose the line search with "
                              f"-{prefix}snes_linesearch_type)", snes.getType())
        # -{prefix}snes_rtol / _atol / _max_it given by the user set the solve's tolerances
        # (every solve sets them again from these: they were silently overridden)
        rt, at, _, mi = snes.getTolerances()
        for name in ("snes_rtol", "snes_atol", "snes_max_it"):   # PETSc reads a negative
            given = options.get(name, None, prefix)                # value as "its default"
            try:
                bad = given is not None and float(given) < 0
            except ValueError:
                bad = False                                        # PETSc's own error
            if bad:
                raise ConfigError(f"-{prefix}{name}", "a non-negative number (a negative one "
                                  "silently meant PETSc's default)", given)
        if options.get("snes_rtol", None, prefix) is not None:
            self.rtol = rt
        if options.get("snes_atol", None, prefix) is not None:
            self.atol = at
        self.user_max_it = None                 # the user's own limit binds the stages too
        if options.get("snes_max_it", None, prefix) is not None:
            self.max_it = self.user_max_it = mi

    def _krylov(self, op, prefix: str) -> str:
        """The Krylov method of the sweep path (see KRYLOV): ``-{prefix}newton_krylov``, else
        GMRES for direct per-step solves on problems of GMRES_FROM DOF·steps or more and
        FGMRES otherwise."""
        from .steps import step_kind
        krylov = options.get("newton_krylov", "auto", prefix)
        if krylov not in KRYLOV:
            raise ConfigError(f"-{prefix}newton_krylov", "one of " + ", ".join(KRYLOV), krylov)
        if krylov != "auto":
            return krylov
        st, sweep = self.st, prefix + "sweep_"
        pivot = op.pivot_matrix(st.layout.forward_rows()[0])[0]
        kind = step_kind(pivot, sweep, st.V.mesh.topology.dim)
        direct = (kind == "lu"            # a user's per-step Krylov method may vary per solve
                  and options.get("ksp_type", "preonly", sweep) == "preonly"
                  and options.get("pc_type", "lu", sweep) in ("lu", "cholesky", "redundant"))
        V = st.V
        dof_steps = V.dofmap.index_map.size_global * V.dofmap.index_map_bs * st.N
        return "gmres" if direct and dof_steps >= GMRES_FROM else "fgmres"

    def describe(self) -> dict:
        """The resolved solver path (after a solve: the per-step solver is known)."""
        ksp = self.snes.getKSP()
        path = {"method": "newton", "linear": self.mode, "krylov": ksp.getType(),
                "preconditioner": (ksp.getPC().getType() if self.mode == "lu"
                                   else ksp.getPC().getPythonType()
                                   if ksp.getPC().getType() == "python"
                                   else ksp.getPC().getType()),
                "line_search": options.get("snes_linesearch_type", "bt", self.prefix),
                "forcing": "adaptive" if self.forcing is not None else "exact",
                "ranks": self.st.comm.size}
        if self.mode == "lu":
            path["factorisation"] = ksp.getPC().getFactorSolverType()
            if self.lu_retries:
                path["factorisation_retries"] = list(self.lu_retries)
        else:
            from .steps import describe
            pc = self._pc_context()
            kind = getattr(pc, "kind", None) or "lu"
            V = self.st.V
            owned = bool(getattr(pc, "owned", False))
            path["step_solver"] = describe(self.st.comm, self.prefix + "sweep_", kind,
                                           V.dofmap.index_map.size_global * V.dofmap.index_map_bs,
                                           owned=owned)
            path["step_kind"] = kind
            path["owned_factors"] = owned
            path["trapezoid_residual"] = self.trap is not None
            path["affine_blocks"] = bool(getattr(self.st.assembler, "affine_blocks", False)
                                         and self.st.quadratic)
            path["reuse_rtol"] = getattr(pc, "reuse_rtol", None)   # None: no sweep ran
        return path

    # -- SNES callbacks ------------------------------------------------------------------------
    @keeps_cause
    def _residual(self, snes, x, f):
        t0 = time.perf_counter()
        if self.trap is not None:
            self.trap(x, f)
        else:
            self.st.residual(x, f)
        self.seconds["residual"] += time.perf_counter() - t0

    @keeps_cause
    def _jacobian(self, snes, x, J, P):
        t0 = time.perf_counter()
        if self.trap is None or not self.trap.current(x):   # else: assembled with F(x)
            self.op.update(x)
        self.seconds["jacobian"] += time.perf_counter() - t0

    @keeps_cause
    def _lu_jacobian(self, snes, x, J, P):
        """The LU path's Jacobian, factorised here rather than in the KSP's set-up, where a
        failed factorisation could only end the Newton step (see :meth:`_factorise`)."""
        self.st.jacobian(x)
        self._factorise(snes.getKSP(), J, P)

    def _factorise(self, ksp, J, P):
        """Factorise ``P`` by the LU of ``ksp``'s PC, by MUMPS with more relaxation where a
        work array proved too small (:func:`fem_mfc.options.factorise`; the retries recorded
        in ``lu_retries``).  The KSP's own set-up then finds the factors current; a failure
        that remains is reported by :meth:`_lu_failure`.  Another factorisation or
        preconditioner the user chose (``-{prefix}pc_factor_mat_solver_type``,
        ``-{prefix}pc_type``) is left to the KSP."""
        ksp.setOperators(J, P)
        options.factorise(ksp, retries=self.lu_retries, log=self.log,
                          attempts=WORKSPACE_RETRIES)

    def _cause(self) -> str | None:
        """The message of the exception that unwound through SNES from one of our callbacks
        (``keeps_cause``: PETSc reports "error code -1" only), or None; cleared."""
        pc = self._pc_context()
        cause = getattr(self, "error", None) or getattr(pc, "error", None)
        self.error = None
        if pc is not None:
            pc.error = None
        return cause.splitlines()[0] if cause else None

    def _lu_failure(self) -> str | None:
        """Why the LU path's MUMPS factorisation failed (INFOG(1) < 0), in words, or None:
        PETSc only reports DIVERGED_LINEAR_SOLVE (2D QHD, 16,641 dofs × 50 steps: INFOG(1) =
        −13, an allocation of 10 GB refused)."""
        if self.mode != "lu":
            return None
        try:
            F = self.snes.getKSP().getPC().getFactorMatrix()
            code, extra = F.getMumpsInfog(1), F.getMumpsInfog(2)
        except PETSc.Error:
            return None
        if code >= 0:
            return None
        if code in MUMPS_WORKSPACE:
            return (f"MUMPS' LU factorisation of the space-time matrix failed: a work array "
                    f"too small (INFOG(1) = {code}, INFOG(2) = {extra}) with its relaxation "
                    f"ICNTL(14) = {F.getMumpsIcntl(14)} % after {WORKSPACE_RETRIES} retries "
                    f"with more; use fewer cells or steps"
                    + (" or [solver] linear = 'sweep'" if self.st.formulation.sweep else ""))
        if code not in MUMPS_MEMORY:
            return f"MUMPS failed: INFOG(1) = {code}, INFOG(2) = {extra} (see its users' guide)"
        return (f"the LU of the space-time matrix needs more memory than this machine gives it "
                f"(MUMPS INFOG(1) = {code}, INFOG(2) = {extra}); use fewer cells or steps"
                + (" or [solver] linear = 'sweep'" if self.st.formulation.sweep else ""))

    @keeps_cause
    def _monitor(self, snes, it, fnorm):
        h = self.history
        if h:
            ksp = snes.getKSP()
            h[-1]["ksp_its"] = (self._step["its"] if self.mode == "sweep"
                                else ksp.getIterationNumber())
            if self._stopped_short():
                h[-1]["ksp_reason"] = "CONVERGED_ITS"  # stopped short: an inexact direction
            if self._ls_solves:
                h[-1]["ksp_its_line_search"] = self._ls_its
            step = compat.linesearch_step(snes)   # the step length the line search took
            if step is not None:
                h[-1]["step"] = step
            if self._reused is not None:
                h[-1]["step_from_line_search"] = True
            pc = self._pc_context()
            if pc is not None:                    # cumulative per-step factorisations
                h[-1]["factorisations"] = pc.factorisations
                h[-1]["pc_seconds"] = {k: round(v, 4) for k, v in pc.seconds.items()}
            h[-1]["callback_seconds"] = {k: round(v, 4) for k, v in self.seconds.items()}
        self._step_next, self._reused = True, None    # the next Krylov solve: the step's
        self._ls_solves = self._ls_its = 0
        now = time.perf_counter()
        h.append({"residual": fnorm, "seconds": now - self._t_last})
        self._t_last = now
        if self.log is not None:
            if len(h) == 1:
                self.log.info("newton %3d  residual = %.3e", it, fnorm)
            else:
                last = h[-2]
                self.log.info("newton %3d  residual = %.3e  ksp its = %d  step = %s", it,
                              fnorm, last.get("ksp_its", 0),
                              f"{last['step']:.3g}" if "step" in last else "?")
        if np.isfinite(fnorm) and (self._best_f is None or fnorm < self._best_f):
            self._best_f = fnorm
            if self.best is None:
                self.best = self.X.duplicate()
            snes.getSolution().copy(self.best)
        forcing = None
        if self.forcing is not None:
            forcing = self.forcing.state()        # before this step's term (a restart's)
            eta = self.forcing.rtol_for(it, fnorm)
            snes.getKSP().setTolerances(rtol=eta)
            h[-1]["ksp_rtol"] = eta
        if it == 0 and "first_residual" not in self.stage:
            self.stage["first_residual"] = fnorm      # the target of the whole solve
        if self.checkpoint is not None and self.checkpoint.due(it):
            self.st.vec_to_states(snes.getSolution())
            path = self.path or {}              # in a continuation stage: the path too
            try:
                self.checkpoint.write(phase="newton", residual=fnorm, forcing=forcing,
                                      solve_first_residual=h[0]["residual"],
                                      **self.counts(it), **self.stage,
                                      **path.get("meta", {}), **path.get("vectors", {}))
            except UserError as e:          # not the solve's failure: re-raised after it
                self.fatal = e
                raise

    @keeps_cause
    def _converged(self, snes, it, norms):
        """PETSc's default test (absolute, relative to the first residual, step length,
        iteration count, NaN) plus the round-off floor: a residual stagnating within
        ROUNDOFF_FACTOR of the target for STAGNATION steps ends the solve at once."""
        R = PETSc.SNES.ConvergedReason
        xnorm, ynorm, fnorm = norms
        rtol, atol, stol, max_it = snes.getTolerances()
        if it == 0:
            self._f0_test = fnorm
            self._floor = False
            self._last_fnorm = None
        if not np.isfinite(fnorm):
            return R.DIVERGED_FNORM_NAN
        if fnorm <= atol:
            return R.CONVERGED_FNORM_ABS
        if fnorm <= rtol * self._f0_test:
            return R.CONVERGED_FNORM_RELATIVE
        if it > 0 and ynorm <= stol * xnorm:
            return R.CONVERGED_SNORM_RELATIVE
        if it > 0 and self._at_roundoff_floor(max(atol, rtol * self._f0_test)):
            self._floor = True
            return R.CONVERGED_ITS
        if it >= max_it:
            return R.DIVERGED_MAX_IT
        prev, self._last_fnorm = self._last_fnorm, fnorm
        if self.stall_exit and (self._abandon or self._stalled()
                                or self._poor_inexact_step(it, prev, fnorm)):
            self._stall = True
            return R.DIVERGED_LINE_SEARCH
        return R.ITERATING

    @keeps_cause
    def _krylov_limit(self, ksp, its, rnorm, *args):
        """Runs before PETSc's test: at the iteration limit, a Krylov solve that reduced its
        residual by less than LIMIT_REDUCTION fails (DIVERGED_MAX_IT) instead of ending as an
        inexact step (``ksp_converged_maxits``): its direction is poor, and a continuation's
        nleqerr line search would spend more limit-long solves judging it.  (σ = 0.05,
        1,089 × 40: the solves at the limit that the solve needs reached 2e-3 to 1e-11; one
        reached 0.14.  Requiring 1e-4 instead took 182 s against 56 s.)"""
        if its == 0:
            self._r0 = rnorm if self._warm is None else self._warm   # (warm: ‖b‖)
            if self._skip:                    # an abandoned step's line search: x = 0
                return PETSc.KSP.ConvergedReason.CONVERGED_ITS
            return None
        rtol, atol, _, max_it = ksp.getTolerances()
        if its < max_it or not self._limit_is_step or rnorm <= max(rtol * self._r0, atol):
            return None                       # PETSc's test (converged at the limit: its name)
        if rnorm > LIMIT_REDUCTION * self._r0 or not np.isfinite(rnorm):
            return PETSc.KSP.ConvergedReason.DIVERGED_MAX_IT
        return PETSc.KSP.ConvergedReason.CONVERGED_ITS

    def _poor_inexact_step(self, it: int, prev: float | None, fnorm: float) -> bool:
        """Did a Krylov solve that stopped at its limit (``ksp_converged_maxits``) give a
        step that did not halve the residual?  Such a direction can still be good (small
        noise: 300 iterations, then quadratic convergence); a poor one means the problem at
        this coupling is too hard from here, and another 300 iterations per step would be
        spent creeping (1D attractive G = −0.1ρ², 100 cells: 117 s against 37 s when the
        stage fails at once)."""
        return it > 0 and prev is not None and self._stopped_short() and fnorm > 0.5 * prev

    def _stopped_short(self) -> bool:
        """Did the last Newton step's Krylov solve on the sweep path end at its limit (an
        inexact step, :meth:`_krylov_limit`)?  (Not the KSP's last solve: nleqerr's line
        search solves for its trial points after it.)"""
        return self.mode == "sweep" and self._step["short"]

    @keeps_cause
    def _presolve(self, ksp, b, x):
        """Before each Krylov solve of the sweep path.  The first after the SNES monitor is
        the Newton step's; it starts from the solution of the line search's last solve if
        that one had the same right-hand side and operator: with the trapezoid residual a
        trial point's residual assembles the blocks there, so nleqerr's simplified Newton
        correction at the accepted point *is* the next Newton step (K(y)⁻¹F(y)), and its
        solve was repeated in full (periodic channel, G = −0.5ρ², 1,089 × 16: a quarter of
        all Krylov iterations).  Later solves are the line search's; after a step that
        stopped short (``stall_exit``: a continuation stage) only one is made: if that trial
        fails nleqerr's monotonicity test the direction is abandoned at once (x = 0 for the
        line search, the stage ends stalled) instead of judging it again and again with
        solves as long as its own (8 × 300 Krylov iterations there)."""
        self._skip, self._warm = False, None
        if self._step_next:
            self._step_next, self._reused = False, None
            c = self._cache
            if (c is not None and c["valid"] and self._reuse_trial and self.trap is not None
                    and self.trap.current(self.snes.getSolution()) and b.equal(c["b"])):
                c["x"].copy(x)
                ksp.setInitialGuessNonzero(True)
                self._reused, self._warm = c["short"], b.norm()
            if c is not None:
                c["valid"] = False
            return
        self._ls_solves += 1                  # (0 until the step's solve has ended)
        if self.stall_exit and self._step["short"] and self._ls_solves > 1:
            self._skip = self._abandon = True

    @keeps_cause
    def _postsolve(self, ksp, b, x):
        its = ksp.getIterationNumber()
        if self._ls_solves == 0:              # the Newton step's solve
            ksp.setInitialGuessNonzero(False)
            short = (ksp.getConvergedReason() == PETSc.KSP.ConvergedReason.CONVERGED_ITS
                     or (self._reused is True and its == 0))
            self._step = {"its": its, "short": bool(short)}
            return
        self._ls_its += its
        self.ksp_done["line_search"] += its
        if self.trap is None or self._skip:
            return                            # (the Jacobian is not assembled at the trial)
        c = self._cache
        if c is None:
            c = self._cache = {"b": b.duplicate(), "x": x.duplicate()}
        b.copy(c["b"])
        x.copy(c["x"])
        c["valid"] = True
        c["short"] = ksp.getConvergedReason() == PETSc.KSP.ConvergedReason.CONVERGED_ITS

    def _stalled(self) -> bool:
        """Has the residual fallen by less than 1 − STALL_RATIO in each of the last
        STALL_STEPS steps?  Newton far from a solution it cannot reach (an attractive
        coupling, a running cost that bends the paths, small noise) creeps along with damped
        steps while its Krylov solves grow to hundreds of iterations; the continuation,
        which follows the solution from an easy problem, is the better use of the time."""
        r = [h["residual"] for h in self.history]
        if len(r) < STALL_STEPS + 1:
            return False
        last = r[-(STALL_STEPS + 1):]
        return all(b > STALL_RATIO * a for a, b in zip(last, last[1:]))

    def _pc_context(self):
        if self.mode != "sweep":
            return None
        pc = self.snes.getKSP().getPC()
        return pc.getPythonContext() if pc.getType() == "python" else None

    # -- solve ---------------------------------------------------------------------------------
    def residual_norm(self) -> float:
        """‖F‖ at the current states."""
        self.st.states_to_vec(self.X)
        self._residual(None, self.X, self.F)
        return self.F.norm()

    def set_linesearch(self, kind: str | None, max_it: int = LINESEARCH_MAX_IT):
        """Use line search ``kind`` from now on (None: the one of the options database) with
        at most ``max_it`` − 1 trial points (unless ``-{prefix}snes_linesearch_max_it``)."""
        with options.inserted(settings={"snes_linesearch_type": kind} if kind else None,
                              defaults={"snes_linesearch_max_it": max_it},
                              prefix=self.prefix):
            self.snes.setFromOptions()

    def parameters_changed(self):
        """The system changed (a continuation parameter): drop the residual memory."""
        if self.trap is not None:
            self.trap.reset()
        if self.op is not None:
            self.op.parameters_changed()
        if self._cache is not None:
            self._cache["valid"] = False

    def counts(self, it: int | None = None) -> dict:
        """A checkpoint's counts: ``iteration``, the Newton iterations of the attempt being
        solved (from its start, across restarts); ``ksp_its``, its Krylov iterations;
        ``iterations_run``, every Newton iteration of the run so far (all attempts,
        continuation stages and legs).  ``it``: the current solve's iteration (None: after
        it)."""
        snes = self.snes
        its = snes.getIterationNumber() if it is None else it
        done = self.iterations_done + (its if it is not None else 0)
        krylov = self.krylov_run(snes.getLinearSolveIterations() if it is not None else 0)
        return {"iteration": int(its + self._offset), "linear": self.mode,
                "ksp_its": int(snes.getLinearSolveIterations() + self._ksp_offset),
                "iterations_run": int(self.iterations_before + done),
                "ksp_its_run": krylov["krylov_iterations_total"],
                "ksp_its_line_search_run": krylov["krylov_iterations_line_search"]}

    def krylov_run(self, current: int = 0) -> dict:
        """Every Krylov iteration of the run so far (all attempts, continuation stages and
        legs; ``current``: those of the Newton steps of the solve running now), and of them
        those of the line search's solves."""
        steps = self.ksp_before["steps"] + self.ksp_done["steps"] + int(current)
        ls = self.ksp_before["line_search"] + self.ksp_done["line_search"]
        return {"krylov_iterations_total": int(steps + ls),
                "krylov_iterations_line_search": int(ls)}

    def resume_from(self, meta: dict):
        """Continue the attempt of checkpoint meta data ``meta``: the next solve counts its
        iterations from the checkpoint's, and its inexact Newton steps from the stored
        Eisenstat–Walker state; the run's count goes on from the checkpoint's."""
        self.resumed = meta
        self.iterations_before = int(meta.get("iterations_run", meta.get("iteration")) or 0)
        ls = int(meta.get("ksp_its_line_search_run") or 0)     # (older checkpoints: the
        self.ksp_before = {"line_search": ls,                    # attempt's Krylov count)
                           "steps": int(meta.get("ksp_its_run", meta.get("ksp_its")) or 0) - ls}

    @property
    def iterations_run(self) -> int:
        """Every Newton iteration of the run (all attempts, stages and legs) so far."""
        return self.iterations_before + self.iterations_done

    def solve(self, rtol: float | None = None, atol: float | None = None,
              max_it: int | None = None, exact: bool = False,
              stall_exit: bool = False) -> dict:
        """Newton from the current states of ``st``; the states end at the solution or, if
        the tolerance was not met, at the best iterate (``exact``: every Newton step solved to
        KSP_RTOL, no inexact forcing; ``stall_exit``: a stalled attempt ends early, see
        :meth:`_stalled` and :meth:`_poor_inexact_step`).  Returns {converged, reason,
        iterations, residual, first_residual, target, history}."""
        forcing = self.forcing
        if exact and forcing is not None:
            self.forcing = None
            self.snes.getKSP().setTolerances(rtol=KSP_RTOL)
        self.stall_exit = stall_exit
        try:
            return self._solve(rtol, atol, max_it)
        finally:
            self.forcing = forcing
            self.stall_exit = False

    def _solve(self, rtol, atol, max_it) -> dict:
        snes, st = self.snes, self.st
        rtol = self.rtol if rtol is None else rtol
        atol = self.atol if atol is None else atol
        snes.setTolerances(rtol=rtol, atol=atol, stol=1e-14,
                           max_it=self.max_it if max_it is None else max_it)
        if self.forcing is not None:
            self.forcing.rtol, self.forcing.atol = rtol, atol
            self.forcing.prev = None
        resumed, self.resumed = self.resumed or {}, None     # the first solve of a restart
        self._offset = int(resumed.get("iteration") or 0)    # continues its attempt
        self._ksp_offset = int(resumed.get("ksp_its") or 0)
        if self.forcing is not None and resumed.get("forcing"):
            self.forcing.restore(resumed["forcing"])
        self.history = []
        self._cause()                         # drop a cause left by an earlier solve
        self._best_f = self._noise = None
        self._floor = self._stall = self._abandon = False
        self._step = {"its": 0, "short": False}
        if self._cache is not None:
            self._cache["valid"] = False
        if self.mode == "sweep":              # (a warm start cut short by an error)
            snes.getKSP().setInitialGuessNonzero(False)
        self._t_last = time.perf_counter()
        st.states_to_vec(self.X)
        try:
            snes.solve(None, self.X)
            failed = ((self._cause() or self._lu_failure()) if snes.getConvergedReason()
                      == PETSc.SNES.ConvergedReason.DIVERGED_LINEAR_SOLVE else None)
        except (PETSc.Error, SolverError) as e:      # PETSc error or a failed callback
            missing = options.missing_value(e)   # an option without its number: bad input
            if missing is not None:
                self._cause()
                raise missing from None
            fatal, self.fatal = getattr(self, "fatal", None), None
            if fatal is not None:               # a checkpoint that could not be written
                self._cause()
                raise fatal from None
            failed = self._cause() or petsc_failure(e)
            self._fresh_vectors()
        reason = snes.getConvergedReason()
        its = snes.getIterationNumber()
        fnorm = snes.getFunctionNorm()
        if reason == PETSc.SNES.ConvergedReason.DIVERGED_FNORM_NAN:
            fnorm = float("nan")     # SNES keeps its last finite norm (0 before the first)
        if self.history:
            self.history[-1]["ksp_its_total"] = (snes.getLinearSolveIterations()
                                                 + self._ksp_offset)
        self.iterations_done += its
        self.ksp_done["steps"] += snes.getLinearSolveIterations()
        f0 = self.history[0]["residual"] if self.history else fnorm
        target = max(atol, rtol * f0)
        name = REASONS.get(reason, str(reason)) if failed is None else f"ERROR ({failed})"
        if failed is None and self._stall:
            name = "DIVERGED_STALLED"
        converged = failed is None and np.isfinite(fnorm) and (
            name in CONVERGED or (reason > 0 and fnorm <= 10 * target))
        if failed is None and (getattr(self, "_floor", False)
                               or (not converged and self._at_roundoff_floor(target))
                               # a line search may give up at the floor before
                               # _at_roundoff_floor has seen STAGNATION steps (1D congested
                               # 30,001 dofs × 20 on 2 ranks: bt failed at 3.3e-11 against a
                               # 1.4e-11 target; a 5-stage continuation followed, 3.7× the
                               # serial run's time, to the same solution)
                               or (not converged and reason ==
                                   PETSc.SNES.ConvergedReason.DIVERGED_LINE_SEARCH
                                   and self._best_at_floor(target, f0))):
            converged, name = True, "CONVERGED_ROUNDOFF_FLOOR"
        if converged:
            st.vec_to_states(self.X)
        elif self.best is not None and self._best_f is not None:
            st.vec_to_states(self.best)            # the best iterate reached
            fnorm = self._best_f
        return {"converged": bool(converged), "reason": name,
                "iterations": its + self._offset,
                "residual": float(fnorm), "first_residual": float(f0), "target": target,
                "history": self.history}

    def _fresh_vectors(self):
        """After an error unwound through SNES the solution, residual and line-search work
        vectors may still carry PETSc's read locks (pushed by the interrupted function
        evaluation or line search; petsc4py cannot pop them): continue with unlocked copies
        and a line search that allocates new work vectors."""
        X, F = self.X.duplicate(), self.F.duplicate()
        self.X.copy(X)
        for v in (self.X, self.F):
            v.destroy()
        self.X, self.F = X, F
        self.snes.reset()               # frees the line search's and SNES' work vectors
        self.snes.setFunction(self._residual, self.F)
        self.snes.setJacobian(*self._jac)

    def _at_roundoff_floor(self, target: float) -> bool:
        """Has the residual stagnated within ROUNDOFF_FACTOR of the target?  Near a steep or
        badly scaled solution ‖F‖ cannot fall below the round-off of its terms; Newton then
        stops reducing it (the value identity check of the runner still verifies the
        solution).  Monotone 1D, 1,600 cells, attractive: 4.5e-8, 8.0e-11, 9.1e-11, 8.9e-11
        against a 1.2e-12 target.  A residual still falling steadily is not at its floor:
        Newton with a wrong Jacobian (fixed on 2026-12-07) fell 0.6–0.75× per step and was
        accepted at 1.1e-7 against 1.9e-10 by the former threshold 0.5.

        The floor can lie further above the target: on meshes graded to a concentrated
        density (attractive game, c = −0.1, 400 cells, h_min = 7e-5) rows of terms ~1e7
        cancel, and Newton stagnated at 2.9e-9 against a 2.4e-12 target — 75 continuation
        stages, then exit 3 for a solution good to the last bit.  A residual that stagnates
        within NOISE_FACTOR of :func:`residual_noise` (2.3e-9 there; 1e-13 – 2e-12 at the
        iterates before) is at its floor too; measured once per solve, and only below
        NOISE_GATE × the first residual (stalls far from a solution: 0.7 – 1 of it)."""
        r = [h["residual"] for h in self.history]
        if len(r) < STAGNATION + 1 or self._best_f is None:
            return False
        last = r[-(STAGNATION + 1):]
        if not all(b > STAGNATION_RATIO * a for a, b in zip(last, last[1:])):
            return False
        return self._best_at_floor(target, r[0])

    def _best_at_floor(self, target: float, f0: float) -> bool:
        """Is the best residual at its round-off floor: within ROUNDOFF_FACTOR of the target,
        or within NOISE_FACTOR of :func:`residual_noise` (measured once per solve) below
        NOISE_GATE × the first residual ``f0`` (stalls far from a solution: 0.7 – 1 of it)?"""
        b = self._best_f
        if b is None or self.best is None:
            return False
        if b <= ROUNDOFF_FACTOR * target:
            return True
        if b > NOISE_GATE * f0:                   # far from a solution: not a floor
            return False
        if self._noise is None:
            self._noise = residual_noise(self.st, self.best)
        return b <= NOISE_FACTOR * self._noise

    def destroy(self):
        self.snes.destroy()
        for o in (self.trap, self.op):
            if o is not None:
                o.destroy()
        for v in (self.X, self.F, self.best, *(self._cache or {}).values()):
            if isinstance(v, PETSc.Vec):
                v.destroy()
        if self._lu_defaults is not None:
            self._lu_defaults.__exit__(None, None, None)
            self._lu_defaults = None


def exact_stages(solver: NewtonSolver, prefix: str, rule: dict | None = None) -> str | None:
    """Why the continuation after a failed direct attempt on the sweep path should take
    exact (LU) Newton steps instead, or None (the stages keep the direct attempt's path).
    ``-{prefix}continuation_linear``: ``lu`` asks for them, ``sweep`` refuses them, ``auto``
    (the default) takes them for an **attractive coupling** (a ρ–ρ block with a negative
    diagonal, :meth:`~fem_mfc.solvers.kkt.KKTOperator.attractive`) where the automatic rule
    chose the sweep by its estimates (``rule``, :func:`fem_mfc.solvers.auto.choose`) and the
    LU's estimated Newton step is at most STAGES_LU_RATIO of the sweep's on one rank
    (:func:`~fem_mfc.solvers.auto.serial_ratio`: the same choice on every number of ranks —
    by the estimates for 2 ranks, 4.3, the P2 case below kept the sweep there and ended in
    exit 3).

    A problem that needs a continuation is not the monotone one the sweep estimate assumes:
    its stages solve every Newton step to KSP_RTOL, and for C < 0 the sweep is weak (the
    eigenvalues of M⁻¹K move towards 0): 60–300 Krylov iterations per Newton step, solves
    stopping at their limit.  The LU's cost does not depend on that.  Measured (1D
    aggregation game, σ = 0.1, 20 steps, graded, monotone; estimated LU/sweep step ratio in
    brackets): c = −0.1 on 101 / 401 / 1,601 dofs (1.4 / 1.9 / 3.1) LU stages 0.67–0.98× the
    sweep's time, 6,401 (4.4) 1.21×; P2, c = −0.5, 1,601 dofs (3.1) converged (24 s) where
    the sweep's stages end in exit 3 (41 s); 2D 24² attractive, 8 steps (31): the LU path 6×
    slower.
    Attractive only, because for the congested problems that need a continuation (a leaky-wall
    room, G = ρ^1.5) the LU stages were 2–6× slower (their stages stalled, or nleqerr kept PETSc's
    40 trials per step); by estimates and the blocks' signs, not by measured times, so that a
    run and its restart take the same path.  If stages asked for (or those of a problem with
    leaky walls) stall, the sweep's follow from the start; automatic ones stop there (the
    sweep's stalled at the same λ)."""
    choice = options.get("continuation_linear", "auto", prefix)
    if choice not in EXACT_STAGES:
        raise ConfigError(f"-{prefix}continuation_linear", "one of " + ", ".join(EXACT_STAGES),
                          choice)
    if solver.mode != "sweep" or choice == "sweep":
        return None
    if choice == "lu":
        return "requested"
    from . import auto
    if (rule or {}).get("rule") != auto.ESTIMATED:
        return None
    ratio = auto.serial_ratio(solver.st)
    if ratio > STAGES_LU_RATIO:
        return None
    if not solver.st.formulation.mirrored or solver.op is None or not solver.op.attractive():
        return None
    return (f"attractive coupling, LU step estimated at {ratio:.2g} sweep steps on one rank "
            f"(<= {STAGES_LU_RATIO:g})")


def trivial_residual(st: SpaceTime) -> float:
    """‖F‖ at the current states — the trivial guess when called before any other — by
    assembly (the trapezoid residual would assemble every Jacobian block for it), without
    the rows of the leaky walls' dofs: they hold κ(g − u) and κρ, as large as the rate κ,
    and a tolerance relative to them as loose (κ = 1e8: Newton stopped at a residual of
    8e-4, ρ down to −1e-3 on the monotone scheme, mass off by 3e-4, and passed)."""
    F = st.create_vec()
    try:
        st.residual(None, F)
        _drop_walls(st, F)
        return F.norm()
    finally:
        F.destroy()


def _drop_walls(st: SpaceTime, F: PETSc.Vec) -> None:
    walls = leaky_wall_dofs(st.problem, st.nl)
    if walls.size:
        a = F.getArray()
        for f in range(st.nfields):
            a[st.layout.slice(f)][walls] = 0.0


def residual_noise(st: SpaceTime, X: PETSc.Vec) -> float:
    """‖F(X ⊙ (1 + uξ)) − F(X)‖ by assembly, u the unit round-off and ξ = ±1 by dof: how much
    the residual changes when every unknown moves by its last bit — the floor below which no
    floating-point iterate can bring it, whatever the solver (terms of size |F_i|/u cancel in
    each row).  Without the leaky walls' rows, as :func:`trivial_residual`.  The states are
    left as they were."""
    S, Xp, F0, F1 = st.create_vec(), X.duplicate(), st.create_vec(), st.create_vec()
    try:
        st.states_to_vec(S)
        lo, hi = X.getOwnershipRange()
        sign = np.where(np.sin(np.arange(lo, hi) * 12.9898) > 0, 1.0, -1.0)
        Xp.getArray()[:] = X.getArray(readonly=True) * (1.0 + np.finfo(float).eps / 2 * sign)
        st.residual(Xp, F1)
        st.residual(X, F0)
        F1.axpy(-1.0, F0)
        _drop_walls(st, F1)
        return F1.norm()
    finally:
        st.vec_to_states(S)
        for v in (S, Xp, F0, F1):
            v.destroy()


def leaky_wall_dofs(problem, nl: int) -> np.ndarray:
    """The owned dofs (below ``nl``) on the facets of the problem's leaky walls."""
    robins = getattr(problem, "robins", None)
    if not robins:
        return np.zeros(0, dtype=np.int32)
    from .exits import tagged_dofs
    d = np.unique(np.concatenate(list(tagged_dofs(problem, [r.tag for r in robins]).values())))
    return d[d < nl]


def initial_states(st: SpaceTime, trivial: bool = False) -> PETSc.Vec:
    """A new vector of the current states of ``st`` (``trivial``: of its trivial guess; the
    states are left there)."""
    if trivial:
        st.set_guess()
    X0 = st.create_vec()
    st.states_to_vec(X0)
    return X0


def _replace(solver: NewtonSolver, mode: str, rtol, atol, max_it, forcing,
             user_ls) -> NewtonSolver:
    """A Newton solver on the linear path ``mode`` in place of ``solver`` (destroyed),
    continuing its run's counts, stage, checkpoint writer and log."""
    new = NewtonSolver(solver.st, mode, solver.prefix, rtol, atol, max_it, forcing, user_ls)
    new.checkpoint, new.log = solver.checkpoint, solver.log
    new.stage = dict(solver.stage)
    new.iterations_before = solver.iterations_run
    krylov = solver.krylov_run()
    ls = krylov["krylov_iterations_line_search"]
    new.ksp_before = {"steps": krylov["krylov_iterations_total"] - ls, "line_search": ls}
    solver.destroy()
    return new


def newton(problem, rtol=1e-10, atol=1e-12, max_it=50, prefix="mfc_", petsc_options=None,
           system: SpaceTime | None = None, linear: str = "auto",
           forcing: str = "adaptive", guess: str = "trivial",
           continuation: bool = True, checkpoint=None, resume: dict | None = None,
           log=None) -> Result:
    """Solve the discrete system by Newton from the trivial guess ρⁿ = ρ_0, uⁿ = Φ, from the
    Cole–Hopf solution of the problem without congestion (``guess="cole-hopf"``), from the
    solution on a coarser grid (``guess="coarse"``, :mod:`fem_mfc.solvers.nested`), or from
    the states already in ``system``; ``linear`` chooses the linear path and ``forcing`` the
    Krylov tolerance of the sweep path (see the module docstring).  If Newton does not
    converge from there and ``continuation`` is on, a continuation in the coupling strength
    (and the noise) is tried.  ``checkpoint`` (a :class:`fem_mfc.checkpoint.Writer`) writes
    the state every few Newton iterations and after every continuation stage; ``resume`` (a
    checkpoint's meta data, states already in ``system``) continues where it stopped;
    ``log`` (a logging.Logger, e.g. the run's) gets a line per Newton step (residual, Krylov
    iterations, line-search step) and per continuation stage.
    Returns a :class:`Result` (``converged`` False: the best iterate reached)."""
    t0 = time.perf_counter()
    if guess not in GUESSES:
        raise ConfigError("solver.initial_guess", "one of " + ", ".join(GUESSES), guess)
    user_ls = (options.get("snes_linesearch_type", None, prefix) is not None
               or prefix + "snes_linesearch_type" in options.normalise(petsc_options, prefix))
    with options.inserted(settings=petsc_options, defaults=DEFAULTS, prefix=prefix):
        st = system or make_system(problem)
        # a system given with a checkpoint writer and no restart is the runner's own, made to
        # be checkpointed, holding the trivial guess: the guess still applies (it was ignored:
        # ``initial_guess = "cole-hopf"`` or "coarse" and ``checkpoint_every > 0`` started
        # from the trivial guess, one Newton iteration more)
        given = system is not None and not (checkpoint is not None and resume is None)
        if given:
            guess = "the given states"
        elif guess == "cole-hopf":
            check_cole_hopf_guess(st.problem)
        mode, rule = linear_mode(st, linear, prefix)
        if resume is not None and resume.get("linear") in LINEAR and rule.get("rule") \
                != "requested" and resume.get("lambda", 1.0) < 1.0:
            mode = resume["linear"]           # the continuation's path (see exact_stages)
        solver = NewtonSolver(st, mode, prefix, rtol, atol, max_it, forcing, user_ls)
        solver.checkpoint = checkpoint
        solver.log = log
        if resume is not None:
            solver.resume_from(resume)
            guess = f"restart (iteration {resume.get('iteration')}, lambda " \
                    f"{resume.get('lambda', 1.0):g})"
        X0 = None
        try:
            # the tolerance is relative to the residual of the trivial guess whatever the
            # start: a better guess must not tighten it (nor cost Krylov iterations for it)
            # (leaky walls: without their rows, whose size is the rate's)
            f_trivial = (trivial_residual(st) if not given and resume is None
                         and (guess in ("cole-hopf", "coarse")
                              or getattr(st.problem, "robins", None)) else None)
            if guess == "cole-hopf" and not cole_hopf_guess(st, solver.trap, f_trivial):
                guess = "trivial (the Cole-Hopf guess had the larger residual)"
            elif guess == "coarse":
                from .nested import coarse_guess
                guess = coarse_guess(st, newton, rtol=rtol, atol=atol, max_it=max_it,
                                     prefix=prefix)
            if st.constraints is not None:
                st.constraints.impose()       # exits: Newton starts on the constraints
            # the start of a continuation: kept unless it is the trivial guess, which is
            # set again when needed (one space-time vector less during the direct attempt)
            regenerate = (system is None and resume is None and guess == "trivial"
                          and st.constraints is None)
            if not regenerate:
                X0 = initial_states(st)
            stages = []
            if resume is not None and resume.get("lambda", 1.0) < 1.0 and continuation:
                from .continuation import continue_to
                # the start of the paths after the resumed one (if it stalls): the states of
                # a new system, as in the run that wrote the checkpoint (it had a system of
                # its own to checkpoint, and started from its states)
                here, X0 = X0, initial_states(st, trivial=True)
                if st.constraints is not None:
                    st.constraints.impose()
                    st.states_to_vec(X0)
                st.vec_to_states(here)                 # the checkpoint's states again
                here.destroy()
                f0 = resume.get("first_residual") or solver.residual_norm()
                start = {"iterations": 0, "residual": float("nan"), "first_residual": f0,
                         "reason": "restart", "history": []}
                out, stages = continue_to(solver, start, X0, start=resume)
            else:
                f0 = (resume.get("first_residual") if resume is not None   # the original
                      else f_trivial)                                       # run's target
                tolerance = {}
                if f0:
                    solver.stage["first_residual"] = f0
                    # (the solver's: -mfc_snes_rtol / _atol, were ignored here)
                    tolerance = {"rtol": 0.0, "atol": max(solver.atol, solver.rtol * f0)}
                # a stalled attempt ends early when a continuation can take over (not on a
                # restart at its original target)
                out = solver.solve(**tolerance, stall_exit=(
                    continuation and bool(st.parameters) and not (resume is not None and f0)))
                if f0:                      # the continuation's target is the solve's
                    out["first_residual"] = f0
                if not out["converged"] and continuation:
                    from .continuation import continue_to
                    why = exact_stages(solver, prefix, rule)
                    if why is not None:
                        solver = _replace(solver, "lu", rtol, atol, max_it, forcing, user_ls)
                        rule = dict(rule, continuation=f"LU: {why}")
                        if log is not None:
                            log.info("continuation with exact (LU) Newton steps: %s", why)
                    if X0 is None:
                        X0 = initial_states(st, trivial=True)
                    direct = dict(out)
                    out, stages = continue_to(solver, direct, X0)
                    if why is not None and not out["converged"] and (
                            why == "requested" or getattr(st.problem, "robins", None)):
                        # the LU's path stalled (a huge leak rate's rows: its exact steps
                        # failed nleqerr's test where the sweep's passed): the sweep's path.
                        # Not for the automatic choice without leaky walls: its attractive
                        # games stalled at the λ where the sweep's stages stall too (1D
                        # Galerkin c = −0.1 on 200 uniform cells λ = 0.8652, G = −0.02ρ³
                        # graded λ = 0.4531), and the sweep's leg added 40–70 % to the run
                        reached = max((r.get("lambda", 0.0) for r in stages[1:]
                                       if r.get("converged")), default=0.0)
                        if log is not None:
                            log.info("the exact (LU) stages stalled (lambda %.4g reached): "
                                     "continuation on the sweep path", reached)
                        for r in stages[1:]:
                            r["linear"] = "lu"
                        solver = _replace(solver, "sweep", rtol, atol, max_it, forcing,
                                          user_ls)
                        rule = dict(rule, continuation=f"sweep, after LU stages that "
                                    f"stalled at lambda {reached:.4g} ({why})")
                        out, more = continue_to(solver, direct, X0)
                        stages += more[1:]
            history = out["history"]
            if history:
                history[0]["guess"] = guess
                history[0]["target"] = out.get("target")
            if solver.trap is not None and history:
                history[-1]["residuals"] = {"assembled": solver.trap.assembled,
                                            "trapezoid": solver.trap.derived}
            path = dict(solver.describe(), auto=rule)
            iterations_run = solver.iterations_run
            krylov_run = solver.krylov_run()
        finally:
            solver.destroy()
            if X0 is not None:
                X0.destroy()
        if not st.finite():
            raise SolverError("Newton: the solution contains NaN or inf (diverged)")
        return Result.from_system(st, method="newton", iterations=out["iterations"],
                                  history=history, seconds=time.perf_counter() - t0,
                                  converged=out["converged"], reason=out["reason"],
                                  residual=out["residual"], path=path, continuation=stages,
                                  iterations_run=iterations_run, krylov_run=krylov_run)


__all__ = ["newton", "NewtonSolver", "Forcing", "linear_mode", "cole_hopf_guess"]
