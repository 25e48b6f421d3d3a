"""Serial (MPI.COMM_SELF) and parallel (COMM_WORLD) QHD, Cole–Hopf pair and quantum runs give
the same numbers.  Run: ``bin/fem-env mpirun -n 2 python3 -m pytest --with-mpi -m mpi
tests/test_qhd_mpi.py``."""
from __future__ import annotations

import math

from mpi4py import MPI

import dolfinx
import pytest
import ufl

from fem_mfc.problem import ControlProblem
from fem_mfc.solvers.cole_hopf_pair import solve_pair
from fem_mfc.solvers.qhd import QuantumStepper, solve_control, solve_quantum


def control_problem(comm, dim):
    if dim == 1:
        msh = dolfinx.mesh.create_interval(comm, 32, [-1.0, 1.0])
    else:
        msh = dolfinx.mesh.create_rectangle(comm, [[-1.0, -1.0], [1.0, 1.0]], [8, 8])
    x = ufl.SpatialCoordinate(msh)
    return ControlProblem(mesh=msh, T=1.0, sigma=0.8, steps=8,
                          rho0=1 + 0.5 * ufl.cos(math.pi * x[0]),
                          Phi=0.4 * ufl.sin(math.pi * x[0] / 2) + 0.2 * ufl.cos(math.pi * x[0]),
                          G=lambda r: 0.5 * r ** 2)


def norm2(f):
    comm = f.function_space.mesh.comm
    return comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(f * f * ufl.dx)),
                          op=MPI.SUM)


def control_numbers(comm, dim):
    p = control_problem(comm, dim)
    q, st = solve_control(p, prefix=f"qhdmpi{dim}_")
    d = st.diagnostics()
    pr = solve_pair(p, prefix=f"chpmpi{dim}_")
    return {"J_qhd": q.J, "energy": d["energy"][0], "fisher": d["fisher"][-1],
            "rhoT_qhd": norm2(q.rho[-1]), "S0": norm2(st.S[0]),
            "J_pair": pr.J, "rhoT_pair": norm2(pr.rho[-1]), "mass_pair": pr.mass[-1]}


def quantum_numbers(comm):
    msh = dolfinx.mesh.create_interval(comm, 32, [-1.0, 1.0])
    x = ufl.SpatialCoordinate(msh)
    st = QuantumStepper(msh, 1, hbar=0.5, tau=0.02, V=0.5 * x[0] ** 2,
                        G=lambda r: 0.5 * r ** 2, prefix="qhdqmpi_")
    st.set_initial(1 + 0.5 * ufl.cos(math.pi * x[0]), 0.3 * ufl.sin(math.pi * x[0] / 2))
    r = solve_quantum(st, 0.2, 10)
    return {"energy": r.energy[-1], "fisher": r.fisher[-1], "mass": r.mass[-1],
            "rhoT": norm2(st.rho()), "ST": norm2(st.S())}


def same(a, b, rtol=1e-8):
    for k in a:
        assert abs(a[k] - b[k]) <= 1e-12 + rtol * abs(a[k]), (k, a[k], b[k])


@pytest.mark.mpi
@pytest.mark.parametrize("dim", [1, 2])
def test_control_qhd_and_pair_serial_vs_parallel(dim):
    assert MPI.COMM_WORLD.size >= 2
    same(control_numbers(MPI.COMM_SELF, dim), control_numbers(MPI.COMM_WORLD, dim))


@pytest.mark.mpi
def test_quantum_serial_vs_parallel():
    assert MPI.COMM_WORLD.size >= 2
    same(quantum_numbers(MPI.COMM_SELF), quantum_numbers(MPI.COMM_WORLD))
