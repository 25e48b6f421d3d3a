"""Per-step linear solvers of the time sweeps (Cole–Hopf sweeps, the sweep preconditioner).

A per-step system is a d-dimensional problem (mass + τ(diffusion + drift)).  By default it is
factorised: PETSc's own LU with its nested-dissection ordering on one rank (its triangular
solves are ≈ 3× faster than MUMPS' at 60k P1 dofs); on 2 to REDUNDANT_MAX_RANKS ranks the same
LU on every rank (PCREDUNDANT: 4.8 ms per solve at 60k P1 dofs on 2 ranks against 9–11 ms for
distributed MUMPS); MUMPS on more ranks.  PETSc options under the solver's prefix override
(a user ``pc_type`` or ``pc_factor_mat_solver_type`` keeps plain LU).  No ordering is set
here: an explicit PCFactor ordering reaches MUMPS as a user permutation and made its
factorisation and solves 10–30× slower.
"""
from __future__ import annotations

from petsc4py import PETSc

from .. import options

REDUNDANT_MAX_RANKS = 4  # per-step LU solved redundantly up to this many ranks


def step_solver(A: PETSc.Mat, prefix: str) -> PETSc.KSP:
    """A set-up KSP for the per-step matrix A with options prefix ``prefix`` (see the module
    docstring)."""
    size = A.getComm().getSize()
    user = any(options.get(k, prefix=prefix) is not None
               for k in ("pc_type", "pc_factor_mat_solver_type"))
    ksp = PETSc.KSP().create(A.getComm())
    ksp.setOptionsPrefix(prefix)
    ksp.setOperators(A)
    ksp.setType("preonly")
    pc = ksp.getPC()
    if 1 < size <= REDUNDANT_MAX_RANKS and not user:
        pc.setType("redundant")               # inner: preonly + PETSc LU on a full copy
    else:
        pc.setType("lu")
        pc.setFactorSolverType("petsc" if size == 1 else "mumps")
    ksp.setFromOptions()
    ksp.setUp()
    return ksp


def describe(comm, prefix: str) -> str:
    """What :func:`step_solver` builds under ``prefix`` on ``comm`` (for summaries)."""
    pc = options.get("pc_type", None, prefix)
    if pc is None:
        size = comm.size
        if 1 < size <= REDUNDANT_MAX_RANKS:
            return "lu:petsc (redundant)"
        return "lu:" + ("petsc" if size == 1 else "mumps")
    ksp = options.get("ksp_type", "preonly", prefix)
    if pc in ("lu", "cholesky"):
        return f"{pc}:" + options.get("pc_factor_mat_solver_type", "petsc", prefix)
    return f"{ksp}+{pc}"


__all__ = ["step_solver", "describe", "REDUNDANT_MAX_RANKS"]
