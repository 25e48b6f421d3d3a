"""The CSR fast path of block assembly (solvers/assembly.py) equals dolfinx's PETSc assembly.

Serial: ``python3 -m pytest tests/test_assembly.py``; the ``mpi`` test runs under
``mpirun -n 2 python3 -m pytest --with-mpi -m mpi tests/test_assembly.py``."""
from mpi4py import MPI

import dolfinx
import dolfinx.fem.petsc
import numpy as np
import pytest
import ufl

from fem_mfc.solvers.assembly import CSRAssembler, pattern_key


def forms(comm, degree=1):
    mesh = dolfinx.mesh.create_unit_square(comm, 9, 7, dolfinx.mesh.CellType.triangle)
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", degree))
    u, v, x = ufl.TrialFunction(V), ufl.TestFunction(V), ufl.SpatialCoordinate(mesh)
    w = dolfinx.fem.Function(V)
    w.interpolate(lambda y: 1.0 + y[0] ** 2 - y[1])
    # a state-dependent, non-symmetric form with a boundary term, and a plain mass matrix
    a1 = (w * ufl.inner(ufl.grad(u), ufl.grad(v)) + u * ufl.inner(ufl.grad(w), ufl.grad(v))
          + ufl.sin(x[0]) * u * v) * ufl.dx + w * u * v * ufl.ds
    a0 = u * v * ufl.dx
    return w, dolfinx.fem.form(a1), dolfinx.fem.form(a0)


def reference(a):
    A = dolfinx.fem.petsc.assemble_matrix(a)
    A.assemble()
    return A


def max_diff(A, B):
    D = A.copy()
    D.axpy(-1.0, B)
    return D.norm(), B.norm()


def check(comm, degree):
    w, a1, a0 = forms(comm, degree)
    asm = CSRAssembler()
    assert pattern_key(a1) != pattern_key(a0)          # ds term: its own pattern
    A1, A0 = asm.create(a1), asm.create(a0)
    for _ in range(2):                                 # re-assembly overwrites every entry
        asm.assemble(A1, a1)
        asm.assemble(A0, a0)
        for A, a in ((A1, a1), (A0, a0)):
            d, n = max_diff(A, reference(a))
            assert d <= 1e-14 * n, (d, n)
        w.x.array[:] *= -2.0                           # a new state
    asm.destroy()


@pytest.mark.parametrize("degree", [1, 2])
def test_csr_assembly_equals_petsc_assembly(degree):
    check(MPI.COMM_SELF, degree)


@pytest.mark.mpi
def test_csr_assembly_equals_petsc_assembly_parallel():
    check(MPI.COMM_WORLD, 1)
    check(MPI.COMM_WORLD, 2)


def test_blocked_spaces_fall_back():
    mesh = dolfinx.mesh.create_unit_square(MPI.COMM_SELF, 4, 4)
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1, (2,)))
    a = dolfinx.fem.form(ufl.inner(ufl.TrialFunction(V), ufl.TestFunction(V)) * ufl.dx)
    asm = CSRAssembler()
    A = asm.assemble(asm.create(a), a)
    d, n = max_diff(A, reference(a))
    assert d <= 1e-14 * n and n > 0


def test_serial_matrices_share_structure_and_own_values():
    """On one rank the matrices of a pattern are created on arrays: one structure, separate
    values, and operations that factorise, copy or combine them see the assembled values."""
    w, a1, a0 = forms(MPI.COMM_SELF)
    asm = CSRAssembler()
    A, B = asm.create(a1), asm.create(a1)
    asm.assemble(A, a1)
    w.x.array[:] += 1.0
    asm.assemble(B, a1)
    d, n = max_diff(B, reference(a1))
    assert d <= 1e-14 * n
    assert max_diff(A, B)[0] > 1e-3 * n                      # A kept its own values
    C = A.copy()
    C.axpy(-1.0, B, structure=C.Structure.SAME_NONZERO_PATTERN)
    assert np.isclose(C.norm(), max_diff(A, B)[0])
    from petsc4py import PETSc
    ksp = PETSc.KSP().create(MPI.COMM_SELF)
    ksp.setOperators(B)
    ksp.setType("preonly")
    ksp.getPC().setType("lu")
    x, b = B.createVecs()
    b.set(1.0)
    ksp.solve(b, x)
    r = b.duplicate()
    B.mult(x, r)
    r.axpy(-1.0, b)
    assert r.norm() < 1e-10 * b.norm()
