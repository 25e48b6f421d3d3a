"""Per-layer factorisations distributed by layer (fem_mfc/solvers/layers.py): the same
solutions as the solvers on the distributed matrices, refactorisation after a refill, and
a failing factorisation raising on every rank (no hang).

Serial: ``python3 -m pytest tests/test_layers.py``; the ``mpi`` tests under
``mpirun -n 2 python3 -m pytest --with-mpi -m mpi tests/test_layers.py``."""
from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import dolfinx.fem.petsc
import numpy as np
import pytest
import ufl

from fem_mfc.errors import SolverError
from fem_mfc.solvers.layers import LayerFactors

KEEP = []     # the meshes: a matrix from dolfinx must not outlive its dof maps (MPI)


def matrices(comm, n_layers=3, scale=1.0):
    mesh = dolfinx.mesh.create_unit_square(comm, 8, 8)
    KEEP.append(mesh)
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    out = []
    for n in range(n_layers):     # mass + diffusion + drift: nonsymmetric, one per layer
        a = (u * v + scale * (0.1 + n) * ufl.inner(ufl.grad(u), ufl.grad(v))
             + 0.3 * (n + 1) * u.dx(0) * v) * ufl.dx
        A = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(a))
        A.assemble()
        out.append(A)
    return out


def lu(comm, A):
    ksp = PETSc.KSP().create(comm)
    ksp.setOperators(A)
    ksp.setType("preonly")
    ksp.getPC().setType("lu")
    if comm.size > 1:
        ksp.getPC().setFactorSolverType("mumps")
    return ksp


def compare(mats, mode):
    comm = mats[0].getComm().tompi4py()
    rng = np.random.default_rng(comm.rank)
    rhs = rng.standard_normal(mats[0].getLocalSize()[0])
    a = LayerFactors(mats, "t_layers_", lu, mode=mode)
    b = LayerFactors(mats, "t_layers_", lu, mode="spatial")
    worst = 0.0
    for refill in (1.0, 3.0):
        for A in mats:
            A.scale(refill)
        a.update()
        b.update()
        for t in (False, True):
            items = [(n, (1 + n) * rhs) for n in range(len(mats))] + [(0, -rhs)]
            many = a.solve_many(items, t)                  # owners solve concurrently
            for (n, r), z in zip(items, many):
                x, y = a.solve(n, r, t), b.solve(n, r, t)
                worst = max(worst, np.abs(x - y).max() / np.abs(y).max(),
                            np.abs(z - y).max() / np.abs(y).max())
    modes = a.mode
    a.destroy()
    b.destroy()
    return comm.allreduce(worst, op=MPI.MAX), modes


def test_one_rank_is_the_plain_per_layer_solver():
    worst, mode = compare(matrices(MPI.COMM_SELF), "layers")
    assert mode == "spatial" and worst < 1e-13


def test_a_mumps_work_array_too_small_is_factorised_again_by_spatial_layers():
    """The learning problems' layers on a distributed matrix (spatial mode, ``-{prefix}layers
    spatial``) are MUMPS' LUs: an INFOG(1) = -9 (a work array too small, intermittent on 2
    ranks) failed the sweep's solve.  Forced by a negative relaxation ICNTL(14) (MUMPS on one
    rank here): the factorisation at update() is repeated with more workspace and solves as
    PETSc's LU does, after a refill too."""
    from fem_mfc import options

    def mumps(comm, A):
        ksp = lu(comm, A)
        ksp.setOptionsPrefix("t_mumps_")
        ksp.getPC().setFactorSolverType("mumps")
        ksp.setFromOptions()
        return ksp
    mats = matrices(MPI.COMM_SELF)
    rhs = np.random.default_rng(0).standard_normal(mats[0].getLocalSize()[0])
    with options.inserted(settings={"t_mumps_mat_mumps_icntl_14": -90}):
        layers = LayerFactors(mats, "t_mumps_", mumps, mode="spatial")
        for refill in (1.0, 3.0):
            for A in mats:
                A.scale(refill)
            layers.update()
            for n, A in enumerate(mats):
                assert layers.ksp[n].getPC().getFactorMatrix().getMumpsInfog(1) == 0
                ref = lu(MPI.COMM_SELF, A)
                b, x = A.createVecs()
                b.array[:] = rhs
                ref.solve(b, x)
                assert np.allclose(layers.solve(n, rhs), x.array, rtol=1e-10, atol=1e-12)
                ref.destroy()
        layers.destroy()


@pytest.mark.mpi
def test_layers_on_their_owners_match_the_distributed_factorisations():
    worst, mode = compare(matrices(MPI.COMM_WORLD, n_layers=5), "auto")
    assert mode == "layers" and worst < 1e-11


@pytest.mark.mpi
def test_a_failing_layer_factorisation_raises_on_every_rank():
    mats = matrices(MPI.COMM_WORLD)
    mats[1].zeroEntries()                         # singular: LU fails on its owner only
    mats[1].assemble()
    lf = LayerFactors(mats, "t_layers_", lu, mode="layers")
    with pytest.raises(SolverError):
        lf.update()
    lf.destroy()
