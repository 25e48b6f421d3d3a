"""Per-step solvers (fem_mfc.solvers.steps): the Cholesky factorisation of the symmetric
Cole–Hopf step matrix gives the LU's solution, serially (PETSc) and on 2 ranks (MUMPS)."""
from mpi4py import MPI
from petsc4py import PETSc

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


def test_a_mumps_work_array_too_small_is_factorised_again_by_the_step_solver():
    """The per-step solvers (LinearStepper, the sweeps, Picard, the NLS steps, Madelung's
    projection) are MUMPS' on more ranks: an INFOG(1) = -9 (a work array too small,
    intermittent on 2 ranks) failed their solves (KSP reason DIVERGED_PC_FAILED).  Forced by
    a negative relaxation ICNTL(14) (MUMPS chosen by the user here, on one rank): the first
    factorisation and a refactorisation after new values are repeated with more workspace
    and solve as PETSc's LU does."""
    p = free(MPI.COMM_SELF)
    A = step_matrix(p)
    ref = steps.step_solver(A, "test_ref_")
    b, x0 = A.createVecs()
    x1 = x0.duplicate()
    b.setArray(np.random.default_rng(0).standard_normal(b.getLocalSize()))
    forced = {"test_mumps_pc_factor_mat_solver_type": "mumps",
              "test_mumps_mat_mumps_icntl_14": -90}
    with options.inserted(settings=forced):
        ksp = steps.step_solver(A, "test_mumps_")
        assert ksp.getPC().getFactorSolverType() == "mumps"
        for scale in (1.0, 2.0):                 # then refactorised, as Picard's blocks are
            if scale != 1.0:
                A.scale(scale)
                ref.setOperators(A)
                ksp.setOperators(A)
                options.factorise(ksp)
            assert ksp.getPC().getFactorMatrix().getMumpsInfog(1) == 0
            ref.solve(b, x0)
            ksp.solve(b, x1)
            assert ksp.getConvergedReason() > 0, ksp.getConvergedReason()
            x1.axpy(-1.0, x0)
            assert x1.norm() <= 1e-10 * x0.norm()


def drift_matrix(comm, cells=12):
    """A non-symmetric per-step matrix: mass + τ(diffusion + drift), and its mesh (dolfinx's
    matrix needs its mesh alive: A.createVecRight() crashes on 2 ranks after the mesh went)."""
    mesh = dolfinx.mesh.create_rectangle(comm, [[-1, -1], [1, 1]], [cells, cells])
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    x = ufl.SpatialCoordinate(mesh)
    b = ufl.as_vector((1.0 + x[1], -x[0]))
    a = (u * v + 0.05 * (0.3 * ufl.inner(ufl.grad(u), ufl.grad(v))
                         + ufl.dot(b, ufl.grad(u)) * v)) * ufl.dx
    A = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(a))
    A.assemble()
    return A, mesh


def transfer(A, owner):
    return steps.OwnerTransfer(A.getComm(), A.getLocalSize()[0], A.getSize()[0], owner)


@pytest.mark.mpi
@pytest.mark.parametrize("owner", [0, 1])
def test_owned_factors_solve_like_the_redundant_lu(owner):
    """OwnedLU (the sweeps' per-step LU on 2–4 ranks): the factors of A — or of Aᵀ — held by
    one rank only give the redundant LU's solutions, A⁻¹b and A⁻ᵀb, on every rank."""
    comm = MPI.COMM_WORLD
    owner = owner % comm.size
    A, mesh = drift_matrix(comm)
    assert not A.isSymmetric(1e-10)
    ref = steps.step_solver(A, "test_ref_")
    assert comm.size == 1 or ref.getPC().getType() == "redundant"
    io = [transfer(A, o) for o in range(comm.size)]
    own = steps.OwnedLU(A, "test_own_", io[owner])
    ownT = steps.OwnedLU(A, "test_own_", io[(owner + 1) % comm.size], transpose=True)
    for f in (own, ownT):
        f.factor()
        assert f.check() and steps.is_direct(f)
    # the factors are stored on the owner only
    assert (own.ksp is not None) == (comm.rank == owner)
    b, x_ref = A.createVecs()
    b.setArray(np.random.default_rng(comm.rank).standard_normal(b.getLocalSize()))
    x = x_ref.duplicate()
    for solve_ref, solvers in ((ref.solve, (own.solve,)),
                               (ref.solveTranspose, (own.solveTranspose, ownT.solve))):
        solve_ref(b, x_ref)
        for s in solvers:
            x.zeroEntries()
            s(b, x)
            x.axpy(-1.0, x_ref)
            assert x.norm() <= 1e-12 * x_ref.norm()
    # refactorisation with a new owner, after the matrix changed
    A.shift(1.0)
    own.gather(A, io[(owner + 1) % comm.size])
    own.factor()
    assert own.check()
    ref.setOperators(A)
    ref.solve(b, x_ref)
    own.solve(b, x)
    x.axpy(-1.0, x_ref)
    assert x.norm() <= 1e-12 * x_ref.norm()
    for k in (ref, own, ownT, *io):
        k.destroy()


@pytest.mark.mpi
def test_owned_factorisation_failure_is_seen_on_every_rank():
    """A singular pivot fails on its owner only; check() is False on every rank (the sweep
    preconditioner then raises everywhere: no rank waits for the others)."""
    comm = MPI.COMM_WORLD
    A, mesh = drift_matrix(comm)
    A.zeroRows(A.getOwnershipRange()[0] + np.arange(2, dtype=PETSc.IntType) if comm.rank == 0
               else np.zeros(0, dtype=PETSc.IntType), diag=0.0)
    io = transfer(A, comm.size - 1)
    f = steps.OwnedLU(A, "test_fail_", io)
    f.factor()
    assert not f.check()
    f.destroy()
    io.destroy()


@pytest.mark.mpi
def test_owned_factorisation_exception_is_seen_on_every_rank(monkeypatch):
    """Any exception of the owner's local factorisation (here from building its solver: an
    out-of-memory stands for them) is a failure check() reports on every rank — the other
    ranks are waiting in that collective and must not hang."""
    comm = MPI.COMM_WORLD
    A, mesh = drift_matrix(comm)

    def broken(prefix):
        raise RuntimeError("no memory for the factors")

    monkeypatch.setattr(steps, "owner_lu", broken)
    io = transfer(A, 0)
    f = steps.OwnedLU(A, "test_broken_", io)
    f.factor()
    assert not f.check()
    f.destroy()
    io.destroy()


def _check_linear_steppers_take_the_per_step_solver():
    """The linear steppers (heat runs, NLS mass matrices, projections) factorise with the
    sweeps' per-step solver: PETSc's LU on one rank (its triangular solves take a third of
    MUMPS' time), the same LU on every rank of 2–4 for their many solves (MUMPS, which they
    took before, stepped a heat run of 82k dofs 5× slower on 2 ranks than on 1), GMRES +
    ILU(0) in 3D; Picard's per-step blocks the same LU (on 2 ranks MUMPS took 3.8 ms per
    solve of a 401-dof block, 6.7× the redundant LU), equal to MUMPS' solves."""
    from fem_mfc.solvers.linear import LinearStepper
    from fem_mfc.solvers.picard import _StepSolver
    comm = MPI.COMM_WORLD
    p = free(comm, cells=6)
    u, v = ufl.TrialFunction(p.space), ufl.TestFunction(p.space)
    a = u * v * ufl.dx + ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx
    stepper = LinearStepper(a, v * ufl.dx, "test_stepper_", steps=100, symmetric=True)
    pc = stepper.ksp.getPC()
    if comm.size == 1:
        assert (pc.getType(), pc.getFactorSolverType()) == ("cholesky", "petsc")
    else:
        assert pc.getType() == "redundant"
    stepper.destroy()
    box = dolfinx.mesh.create_unit_cube(comm, 3, 3, 3)
    V3 = dolfinx.fem.functionspace(box, ("Lagrange", 1))
    u, v = ufl.TrialFunction(V3), ufl.TestFunction(V3)
    stepper = LinearStepper(u * v * ufl.dx, v * ufl.dx, "test_stepper3_", steps=100)
    assert stepper.ksp.getType() == "gmres"
    target = dolfinx.fem.Function(V3)
    stepper.step(target)
    n = V3.dofmap.index_map.size_local
    assert np.abs(target.x.array[:n] - 1.0).max() <= 1e-12      # M x = M 1
    stepper.destroy()
    A = step_matrix(p)
    rhs = np.random.default_rng(comm.rank).standard_normal(A.getLocalSize()[0])
    lin = _StepSolver("test_picard_")
    x = lin.solve(A, rhs).copy()
    pc = lin.ksp.getPC()
    assert (pc.getFactorSolverType() == "petsc" if comm.size == 1
            else pc.getType() == "redundant")
    ref = options.make_ksp(comm, "test_picard_ref_", A, factor="mumps")
    b, y = A.createVecs()
    b.getArray()[:] = rhs
    ref.solve(b, y)
    assert np.abs(y.getArray() - x).max() <= 1e-12 * np.abs(x).max()


def test_linear_steppers_take_the_per_step_solver():
    _check_linear_steppers_take_the_per_step_solver()


@pytest.mark.mpi
def test_linear_steppers_take_the_per_step_solver_on_two_ranks():
    _check_linear_steppers_take_the_per_step_solver()
