"""Per-step solvers (fem_mfc.solvers.steps): the Cholesky factorisation of the symmetric
Cole–Hopf step matrix gives the LU's solution, serially (PETSc) and on 2 ranks (MUMPS)."""
from mpi4py import MPI

import dolfinx
import dolfinx.fem.petsc
import numpy as np
import pytest
import ufl

from fem_mfc import options
from fem_mfc.forms import cole_hopf
from fem_mfc.problem import ControlProblem
from fem_mfc.solvers import solve, steps


def free(comm, cells=12):
    mesh = dolfinx.mesh.create_rectangle(comm, [[-1, -1], [1, 1]], [cells, cells])
    x = ufl.SpatialCoordinate(mesh)
    return ControlProblem(mesh=mesh, T=1.0, sigma=0.6, steps=6, scheme="crank-nicolson",
                          Phi=(x[0] - 0.5) ** 2, V=0.2 * x[1] ** 2,
                          rho0=ufl.exp(-((x[0] + 0.4) ** 2 + x[1] ** 2) / 0.08))


def step_matrix(p):
    a, _ = cole_hopf.step_matrices(p.space, p.tau, p.eps, p.V, p.theta)
    A = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(a))
    A.assemble()
    return A


@pytest.fixture
def distributed(monkeypatch):
    """Per-step LUs distributed over the ranks (MUMPS) whatever their size."""
    monkeypatch.setattr(steps, "REDUNDANT_MAX_DOFS", 0)
    monkeypatch.setattr(steps, "REDUNDANT_SOLVES_MAX_DOFS", 0)


def _check_cholesky_equals_lu():
    p = free(MPI.COMM_WORLD)
    A = step_matrix(p)
    assert A.isSymmetric(1e-13)
    chol = steps.step_solver(A, "test_chol_", symmetric=True)
    lu = steps.step_solver(A, "test_lu_")
    assert chol.getPC().getType() == "cholesky" and lu.getPC().getType() == "lu"
    want = "petsc" if MPI.COMM_WORLD.size == 1 else "mumps"
    assert chol.getPC().getFactorSolverType() == want
    b, x1 = A.createVecs()
    x2 = x1.duplicate()
    b.setArray(np.random.default_rng(MPI.COMM_WORLD.rank).standard_normal(b.getLocalSize()))
    chol.solve(b, x1)
    lu.solve(b, x2)
    x2.axpy(-1.0, x1)
    assert x2.norm() <= 1e-12 * x1.norm()


def _check_cole_hopf_cholesky_equals_lu():
    p = free(MPI.COMM_WORLD)             # one mesh: its partition (and dof layout) for both
    default = solve(p, "cole-hopf")
    with options.inserted(settings={"mfc_ch_pc_type": "lu"}):
        lu = solve(p, "cole-hopf")
    assert abs(default.J - lu.J) <= 1e-12 * abs(lu.J)
    for a, b in zip(default.rho[1:] + default.u, lu.rho[1:] + lu.u):
        assert np.abs(a.x.array - b.x.array).max() <= 1e-11, np.abs(a.x.array - b.x.array).max()


def test_cholesky_equals_lu():
    _check_cholesky_equals_lu()


def test_cole_hopf_cholesky_equals_lu():
    _check_cole_hopf_cholesky_equals_lu()


@pytest.mark.mpi
def test_cholesky_equals_lu_mumps(distributed):
    _check_cholesky_equals_lu()


@pytest.mark.mpi
def test_cole_hopf_cholesky_equals_lu_mumps(distributed):
    _check_cole_hopf_cholesky_equals_lu()
