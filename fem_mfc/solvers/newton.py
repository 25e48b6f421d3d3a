"""All-at-once Newton for the space-time optimality system ∂L/∂(ρ, u) = 0 (forms/hjb_fp.py).

petsc4py SNES with backtracking line search (``bt``), Jacobian assembled block by block,
gathered into a block-tridiagonal-in-time MatNest and converted to AIJ, solved by LU (MUMPS)
by default.  Every PETSc option can be overridden through the options prefix (default
``mfc_``), e.g. ``-mfc_snes_monitor``, ``-mfc_snes_linesearch_type basic``,
``-mfc_pc_factor_mat_solver_type superlu_dist``.
"""
from __future__ import annotations

import time

from petsc4py import PETSc

from ..errors import SolverError
from .result import Result
from .spacetime import SpaceTime

# The KKT matrix has zero diagonal blocks (saddle point).  MUMPS' automatic column permutation
# gave inaccurate factors (true residual > right-hand side, P2, 1D); the maximum-product
# transversal with scaling (ICNTL(6) = 5) is accurate without extra fill (ICNTL(6) = 1 tripled
# the fill in 2D); delayed pivots need extra workspace (ICNTL(14)).
DEFAULTS = {"snes_linesearch_type": "bt", "mat_mumps_icntl_14": 100, "mat_mumps_icntl_6": 5}
REASONS = {v: k for k, v in PETSc.SNES.ConvergedReason.__dict__.items() if not k.startswith("_")}


def newton(problem, rtol=1e-10, atol=1e-12, max_it=50, prefix="mfc_", petsc_options=None,
           system: SpaceTime | None = None) -> Result:
    """Solve the discrete HJB–FP system by Newton from the trivial guess ρⁿ = ρ_0, uⁿ = Φ
    (or from the states already in ``system``)."""
    t0 = time.perf_counter()
    st = system or SpaceTime(problem)
    opts = PETSc.Options()
    for k, v in (petsc_options or {}).items():
        opts[f"{prefix}{k.lstrip('-')}"] = v
    X, F = st.create_vec(), st.create_vec()
    st.states_to_vec(X)
    A = st.jacobian(None)
    history = []

    def residual(snes, x, f):
        st.residual(x, f)

    def jacobian(snes, x, J, P):
        st.jacobian(x)

    def monitor(snes, it, fnorm):
        history.append(fnorm)

    snes = PETSc.SNES().create(st.comm)
    snes.setOptionsPrefix(prefix)
    snes.setFunction(residual, F)
    snes.setJacobian(jacobian, A, A)
    snes.setTolerances(rtol=rtol, atol=atol, stol=1e-14, max_it=max_it)
    snes.setMonitor(monitor)
    for k, v in DEFAULTS.items():                         # defaults; the user's choice wins
        if not opts.hasName(prefix + k):
            opts[prefix + k] = v
    ksp = snes.getKSP()
    ksp.setType("preonly")
    pc = ksp.getPC()
    pc.setType("lu")
    pc.setFactorSolverType("mumps")
    snes.setFromOptions()
    try:
        snes.solve(None, X)
    except ImportError as e:
        raise SolverError(f"Newton (SNES): PETSc error {e.ierr} during the solve "
                          "(singular Jacobian or NaN)") from None
    reason, its = snes.getConvergedReason(), snes.getIterationNumber()
    fnorm = snes.getFunctionNorm()
    st.vec_to_states(X)
    if reason < 0 or fnorm != fnorm:
        raise SolverError(f"Newton (SNES) did not converge: {REASONS.get(reason, reason)} after "
                          f"{its} iterations (residual {fnorm:.3e})")
    st.check_finite("Newton")
    snes.destroy()
    return Result.from_system(st, method="newton", iterations=its,
                              history=[{"residual": r} for r in history],
                              seconds=time.perf_counter() - t0)
