"""Several populations, serial = 2 ranks: ``mpirun -n 2 python3 -m pytest --with-mpi -m mpi
tests/test_populations_mpi.py``.  The crossing crowds of tests/test_populations.py solved on
MPI.COMM_WORLD and, on every rank, on MPI.COMM_SELF agree to solver tolerance (J, value
identity, iterations, per-population masses and min ρ), on both linear paths."""
from mpi4py import MPI

import pytest

from fem_mfc.solvers import solve
from test_populations import corridor, crossing


@pytest.mark.mpi
@pytest.mark.parametrize("linear", ["lu", "sweep"])
def test_parallel_matches_serial(linear):
    par = solve(crossing(corridor(16, 6, comm=MPI.COMM_WORLD), steps=6), "newton",
                linear=linear)
    ser = solve(crossing(corridor(16, 6, comm=MPI.COMM_SELF), steps=6), "newton",
                linear=linear)
    assert par.converged and ser.converged
    assert abs(par.J - ser.J) < 1e-9 and abs(par.J_value - ser.J_value) < 1e-9
    assert par.iterations == ser.iterations
    for key in ("mass_error", "min_rho"):
        for a, b in zip(par.populations[key], ser.populations[key]):
            assert abs(a - b) < 1e-9, key
    for ma, mb in zip(par.populations["mass"], ser.populations["mass"]):
        assert max(abs(a - b) for a, b in zip(ma, mb)) < 1e-12
    assert max(par.populations["mass_error"]) < 1e-12
