"""NLS under MPI: a distributed run equals a COMM_SELF run computed inside the test.

Run with  bin/fem-env mpirun -n 2 python3 -m pytest --with-mpi -m mpi tests/test_nls_mpi.py
(pytest-mpi skips ``mpi``-marked tests without ``--with-mpi``).
"""
from __future__ import annotations

from mpi4py import MPI

import dolfinx
import numpy as np
import pytest
import ufl

from fem_mfc.madelung import density, phase_from_gradient, phase_gradient
from fem_mfc.nls_invariants import NLSInvariants, l2_norm_complex
from fem_mfc.runs.nls import free_gaussian
from fem_mfc.solvers.nls import MidpointStepper, NLSProblem, RK4Stepper, ground_state


def _run(comm, integrator):
    """2D packet, focusing cubic term, 10 steps; returns invariants, Newton count, norms."""
    msh = dolfinx.mesh.create_rectangle(comm, [[-4.0, -4.0], [4.0, 4.0]], [24, 24])
    x = ufl.SpatialCoordinate(msh)
    P = NLSProblem(msh, 1, 1.0, 0.1 * ufl.inner(x, x), lambda r: -0.5 * r ** 2)
    z = P.function()
    P.interpolate(z, *free_gaussian(x, 0.0, 1.0, 0.7, [1.0, 0.5], [0.0, 0.0]))
    if integrator == "midpoint":
        st = MidpointStepper(P, z, 0.02, rtol=1e-13, atol=1e-15)
    else:
        st = RK4Stepper(P, z, 0.002)
    its = sum(st.step() for _ in range(10))
    st.destroy()
    inv = NLSInvariants(P, z)
    zero = dolfinx.fem.Constant(msh, 0.0)
    gS = phase_gradient(z, 1.0)
    S = phase_from_gradient(gS, density(z).function_space)
    s_norm = msh.comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(S * S * ufl.dx)),
                                op=MPI.SUM)
    return {"mass": inv.mass(), "energy": inv.energy(), "momentum": inv.momentum(),
            "width2": inv.width2(), "norm": l2_norm_complex(z, zero, zero), "its": its,
            "S_norm": s_norm}


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("integrator", ["midpoint", "rk4"])
def test_parallel_equals_serial(integrator):
    par = _run(MPI.COMM_WORLD, integrator)
    ser = _run(MPI.COMM_SELF, integrator)
    assert par["its"] == ser["its"]
    for k in ("mass", "energy", "width2", "norm", "S_norm"):
        assert par[k] == pytest.approx(ser[k], rel=1e-10, abs=1e-13), k
    assert np.allclose(par["momentum"], ser["momentum"], rtol=1e-10, atol=1e-13)


@pytest.mark.mpi(min_size=2)
def test_parallel_ground_state():
    def gs(comm):
        msh = dolfinx.mesh.create_rectangle(comm, [[-5.0, -5.0], [5.0, 5.0]], [20, 20])
        x = ufl.SpatialCoordinate(msh)
        P = NLSProblem(msh, 1, 1.0, 0.5 * ufl.inner(x, x), lambda r: 2.0 * r ** 2)
        z, mu, steps = ground_state(P, mass=1.0, tau=0.5, tol=1e-11)
        return mu, steps, NLSInvariants(P, z).energy()
    assert gs(MPI.COMM_WORLD) == pytest.approx(gs(MPI.COMM_SELF), rel=1e-9)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("linear", [False, True])
def test_midpoint_factorisation_choice(linear):
    """The midpoint step's Jacobian is factorised by PETSc's LU: on one rank, and on 2 ranks
    on every rank (PCREDUNDANT) for a small pivot, not by MUMPS — whose distributed
    refactorisation at each Newton iteration made a 40k-dof 1D soliton run 2.4× slower on
    2 ranks than on 1 (24 s against 10 s; 8.2 s redundant)."""
    kinds = {}
    for comm in (MPI.COMM_SELF, MPI.COMM_WORLD):
        msh = dolfinx.mesh.create_interval(comm, 400, [-10.0, 10.0])
        P = NLSProblem(msh, 1, 1.0, 0.0, None if linear else (lambda r: -0.5 * r ** 2))
        z = P.function()
        P.interpolate(z, *free_gaussian(ufl.SpatialCoordinate(msh), 0.0, 1.0, 0.7, [1.0],
                                        [0.0]))
        st = MidpointStepper(P, z, 0.02, rtol=1e-13, atol=1e-15)
        st.step()
        pc = st.snes.getKSP().getPC()
        kinds[comm.size] = (pc.getType(), pc.getFactorSolverType()
                            if pc.getType() == "lu" else None)
        st.destroy()
    assert kinds[1] == ("lu", "petsc")
    assert kinds[MPI.COMM_WORLD.size] == ("redundant", None)
