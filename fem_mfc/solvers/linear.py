"""Linear solves shared by every time stepper: a PETSc KSP (LU with MUMPS unless the user's
options say otherwise) whose factorisation is reused across steps, and a checked solve that
assembles the right-hand side, solves, updates ghosts and rejects NaN or a failed KSP.
"""
from __future__ import annotations

from petsc4py import PETSc

import dolfinx
import dolfinx.fem.petsc
import numpy as np

from .. import options
from ..errors import SolverError


def make_ksp(comm, A, prefix: str, ksp_type: str = "preonly", pc_type: str = "lu"):
    """A KSP on operator A with options prefix ``prefix`` (user options override defaults;
    :func:`fem_mfc.options.make_ksp`)."""
    return options.make_ksp(comm, prefix, A, ksp_type=ksp_type, pc_type=pc_type)


def assemble_rhs(b, L_form) -> None:
    """b ← assembled linear form (zeroed first, ghost contributions accumulated)."""
    with b.localForm() as loc:
        loc.set(0.0)
    dolfinx.fem.petsc.assemble_vector(b, L_form)
    b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)


def solve_checked(ksp, b, target, what: str) -> None:
    """Solve ``ksp`` x = b into the Function ``target``; SolverError on failure or NaN."""
    ksp.solve(b, target.x.petsc_vec)
    reason = ksp.getConvergedReason()
    if reason < 0:
        raise SolverError(f"{what}: linear solve failed (KSP reason {reason})")
    target.x.scatter_forward()
    if not np.isfinite(target.x.array).all():
        raise SolverError(f"{what}: the solution became NaN/inf")


class LinearStepper:
    """x^{n+1} from A x^{n+1} = b(xⁿ) with a constant matrix A, factorised once."""

    def __init__(self, a, L, prefix: str):
        self.a_form, self.L_form = dolfinx.fem.form(a), dolfinx.fem.form(L)
        self.A = dolfinx.fem.petsc.assemble_matrix(self.a_form)
        self.A.assemble()
        self.b = dolfinx.fem.petsc.create_vector(self.L_form)
        self.ksp = make_ksp(self.A.getComm(), self.A, prefix)

    def step(self, target, what: str = "step") -> None:
        assemble_rhs(self.b, self.L_form)
        solve_checked(self.ksp, self.b, target, what)

    def destroy(self) -> None:
        self.ksp.destroy()
        self.A.destroy()
        self.b.destroy()
