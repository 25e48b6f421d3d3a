"""Damped Picard iteration (fictitious play) on the space-time residual of forms/hjb_fp.py.

One iteration is a block Gauss–Seidel sweep over the same level residuals as Newton:
  1. backward HJB sweep given ρ: for k = N, …, 1 solve row "rho" of level k for u^{k−1}
     (nonlinear through ½|∇u|²: Newton on that step, Jacobian block ∂F/∂u^{k−1});
  2. forward FP sweep given u: for k = 0, …, N−1 solve row "u" of level k for ρ^{k+1}
     (linear: one solve with ∂F/∂ρ^{k+1});
  3. relaxation ρ ← ρ + ω(ρ̂ − ρ).
The residual of the full system and the cost J are recorded after every HJB sweep.
"""
from __future__ import annotations

import math
import time

from mpi4py import MPI

import numpy as np

from .. import options
from ..errors import SolverError
from ..forms import hjb_fp as H
from .result import Result
from .spacetime import SpaceTime
from .steps import step_solver


class _StepSolver:
    """LU solves of one per-step Jacobian block each, with PETSc options ``prefix``: the
    sweeps' per-step LU (:func:`.steps.step_solver`), PETSc's own on one rank and on every
    rank of 2–4 for pivots below REDUNDANT_MAX_DOFS, MUMPS otherwise.  (It was MUMPS on any
    number of ranks, whose analysis and set-up cost ≈ 0.2 ms per solve, more than a small
    pivot's whole factorisation: the Picard run of tests/test_solver_robustness.py's P2 case,
    401 dofs × 10 steps, spent 1.27 against 0.29 s in 4,566 solves on one rank, and on two
    ranks 3.8 ms per solve.)"""

    def __init__(self, prefix):
        self.prefix = prefix            # (the communicator is the blocks')
        self.ksp = self.x = self.b = None

    def solve(self, A, rhs: np.ndarray) -> np.ndarray:
        if self.ksp is None:            # on the first block: the zero pivot relative to it
            self.ksp = step_solver(A, self.prefix, "lu", solves=1)
            self.x, self.b = A.createVecs()
        self.ksp.setOperators(A)
        options.factorise(self.ksp)     # MUMPS: with more workspace where it asks for it
        self.b.getArray()[:] = rhs
        self.ksp.solve(self.b, self.x)
        if self.ksp.getConvergedReason() < 0:
            raise SolverError("Picard: a per-step linear solve failed "
                              f"(KSP reason {self.ksp.getConvergedReason()})")
        return self.x.getArray(readonly=True)


def _norm(comm, a):
    return math.sqrt(comm.allreduce(float(a @ a), op=MPI.SUM))


ROUNDOFF = 1e-13                 # a Newton correction this small (relative to u) is round-off


def hjb_sweep(st: SpaceTime, lin: _StepSolver, tol=1e-12, max_it=30):
    """Backward sweep: u^{k−1} from row "rho" of level k, k = N…1, given ρ and u^k.  Each step
    is solved by Newton to ``tol`` relative to its first residual, or until the correction is
    at round-off level (a residual floor above ``tol`` is then the assembly's round-off)."""
    N, nl = st.N, st.nl
    for k in range(N, 0, -1):
        row = "rho" if k < N else "rho_last"
        if k < N:
            st.u[k - 1].x.array[:] = st.u[k].x.array      # initial guess
        st.load(k)
        ref, step = None, np.inf
        for it in range(max_it):
            F = st.assembler.row(row)
            r = _norm(st.comm, F)
            ref = r if ref is None else ref
            u = st.u[k - 1]
            if r <= tol * max(1.0, ref) or (it > 0 and r <= 1e-14) \
                    or step <= ROUNDOFF * max(1.0, _norm(st.comm, u.x.array[:nl])):
                break
            A = st.assembler.block((row, H.U_PREV), k)
            du = lin.solve(A, F)
            step = _norm(st.comm, du)
            u.x.array[:nl] -= du
            u.x.scatter_forward()
            st.tm[H.U_PREV].x.array[:] = u.x.array
        else:
            raise SolverError(f"Picard: the HJB step for u^{k - 1} did not converge in "
                              f"{max_it} Newton iterations (residual {r:.3e})")


def fp_sweep(st: SpaceTime, lin: _StepSolver):
    """Forward sweep: ρ^{k+1} from row "u" of level k (linear in ρ^{k+1}), k = 0…N−1."""
    nl = st.nl
    for k in range(st.N):
        st.load(k)
        F = st.assembler.row("u")
        d = lin.solve(st.assembler.block(("u", H.RHO_NEXT), k), F)
        r = st.rho[k + 1]
        r.x.array[:nl] -= d
        r.x.scatter_forward()


MIN_RELAXATION = 1.0 / 64
ATTRACTIVE_HINT = ("; the coupling is attractive (G'' < 0 where the density is): fictitious "
                   "play need not converge for it - method = 'newton' follows the coupling "
                   "strength from 0 (continuation)")


def picard(problem, rtol=1e-10, atol=1e-12, max_it=500, relaxation=0.5, prefix="mfc_picard_",
           system: SpaceTime | None = None, log=None) -> Result:
    """Fictitious play with relaxation ω on ρ from ρⁿ = ρ_0, uⁿ = Φ; stops when the residual of
    the full system ≤ max(atol, rtol·(first residual)).  ω is halved whenever the residual
    grows (down to MIN_RELAXATION) and grows back by 5/4 while it falls (up to
    ``relaxation``).  A run that does not reach the tolerance in ``max_it`` iterations returns
    its last iterate with ``converged`` False.  ``log`` (a logging.Logger, e.g. the run's)
    gets a line per outer iteration: the residual, the change of ρ by the relaxed FP update
    before it (‖ρ_new − ρ_old‖ over all levels; also ``history[k]["change"]``) and the
    relaxation ω of that update, as Newton logs its steps."""
    t0 = time.perf_counter()
    from .newton import make_system
    st = system or make_system(problem)
    lin = _StepSolver(prefix)
    F = st.create_vec()
    history, first, prev, omega = [], None, None, relaxation
    converged, change = False, None
    for it in range(max_it + 1):
        hjb_sweep(st, lin)
        st.residual(None, F)
        res = F.norm()
        d = st.diagnostics()
        history.append({"residual": res, "J": d["J"], "relaxation": omega})
        if change is not None:
            history[-1]["change"] = change
        if log is not None:
            if change is None:
                log.info("picard %3d  residual = %.3e", it, res)
            else:
                log.info("picard %3d  residual = %.3e  change = %.3e  relaxation = %.3g", it,
                         res, change, omega)
        if not np.isfinite(res):
            raise SolverError(f"Picard diverged: residual {res} at iteration {it}")
        first = res if first is None else first
        if res <= max(atol, rtol * first):
            converged = True
            break
        if it == max_it:
            break
        if prev is not None:
            omega = (max(omega / 2, MIN_RELAXATION) if res > prev
                     else min(1.25 * omega, relaxation))
        prev = res
        old = [r.x.array.copy() for r in st.rho[1:]]
        fp_sweep(st, lin)
        sq = 0.0
        for r, o in zip(st.rho[1:], old):
            r.x.array[:] = o + omega * (r.x.array - o)
            sq += float(np.sum((r.x.array[:st.nl] - o[:st.nl]) ** 2))
        change = math.sqrt(st.comm.allreduce(sq, op=MPI.SUM))
    st.check_finite("Picard")
    target = max(atol, rtol * first)
    reason = "CONVERGED" if converged else f"DIVERGED_MAX_IT (target {target:.1e})"
    if not converged and getattr(st.formulation, "mirrored", False):
        from .kkt import attractive_coupling
        if attractive_coupling(st):
            reason += ATTRACTIVE_HINT
    return Result.from_system(st, method="picard", iterations=it, history=history,
                              seconds=time.perf_counter() - t0, converged=converged,
                              reason=reason,
                              residual=res, path={"method": "picard", "relaxation": relaxation,
                                                  "ranks": st.comm.size})
