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



def _mesh(comm, dim):
    if dim == 1:
        return dolfinx.mesh.create_interval(comm, 400, [-10.0, 10.0])
    return dolfinx.mesh.create_rectangle(comm, [[-4.0, -4.0], [4.0, 4.0]], [12, 12])


def _pc(pc):
    return (pc.getType(), pc.getFactorSolverType() if pc.getType() == "lu" else None)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("dim, linear, expected", [
    (1, False, ("redundant", None)), (1, True, ("redundant", None)),
    (2, False, ("lu", "mumps")), (2, True, ("redundant", None))])
def test_midpoint_factorisation_choice(dim, linear, expected):
    """The midpoint step's Jacobian: PETSc's LU on one rank; on 2 ranks the same on every
    rank (PCREDUNDANT) for a small pivot, except a nonlinear Jacobian in 2D (refactorised at
    each Newton iteration: MUMPS factorises it faster).  MUMPS refactorising a 40k-dof 1D
    Jacobian made a soliton run 2.4× slower on 2 ranks than on 1 (24 s against 10 s; 8.2 s
    redundant)."""
    kinds = {}
    for comm in (MPI.COMM_SELF, MPI.COMM_WORLD):
        msh = _mesh(comm, dim)
        P = NLSProblem(msh, 1, 1.0, 0.0, None if linear else (lambda r: -0.5 * r ** 2))
        z = P.function()
        x = ufl.SpatialCoordinate(msh)
        P.interpolate(z, *free_gaussian(x, 0.0, 1.0, 0.7, [1.0] * dim, [0.0] * dim))
        st = MidpointStepper(P, z, 0.02, rtol=1e-13, atol=1e-15)
        st.step()
        kinds[comm.size] = _pc(st.snes.getKSP().getPC())
        st.destroy()
    assert kinds[1] == ("lu", "petsc")
    assert kinds[MPI.COMM_WORLD.size] == expected


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("dim, linear, expected", [
    (1, False, ("redundant", None)), (2, False, ("lu", "mumps")),
    (2, True, ("redundant", None))])
def test_ground_state_factorisation_choice(monkeypatch, dim, linear, expected):
    """The imaginary-time step matrix: refactorised at every step when nonlinear, so MUMPS on
    2 ranks in 2D (53k dofs, 28 steps: 3.9 against 6.9 s redundant), PETSc's LU on every rank
    in 1D or when linear (factorised once)."""
    import fem_mfc.solvers.nls as nls
    made = []
    build = nls.step_solver

    def spy(*a, **kw):
        ksp = build(*a, **kw)
        made.append(_pc(ksp.getPC()))            # set up: the ground state destroys it
        return ksp
    monkeypatch.setattr(nls, "step_solver", spy)
    kinds = []
    for comm in (MPI.COMM_SELF, MPI.COMM_WORLD):
        msh = _mesh(comm, dim)
        x = ufl.SpatialCoordinate(msh)
        P = NLSProblem(msh, 1, 1.0, 0.5 * ufl.inner(x, x),
                       None if linear else (lambda r: r ** 2))
        ground_state(P, 1.0, 0.5, 1e-6, 200)
        kinds.append(made[-1])
    assert kinds[0] == ("lu", "petsc")
    assert kinds[1] == expected


@pytest.mark.mpi(min_size=2)
def test_rk4_mass_solver_choice():
    """RK4's mass matrix: Cholesky factors on one rank, CG + Jacobi on more (no redundant
    factorisation: 105k dofs × 100 steps on 2 ranks 18.4 → 11.8 s, 1 rank 19.4 s)."""
    kinds = {}
    for comm in (MPI.COMM_SELF, MPI.COMM_WORLD):
        P = NLSProblem(_mesh(comm, 2), 1, 1.0)
        st = RK4Stepper(P, P.function(), 0.001)
        kinds[comm.size] = (st.ksp.getType(), st.ksp.getPC().getType())
        st.destroy()
    assert kinds[1] == ("preonly", "cholesky")
    assert kinds[MPI.COMM_WORLD.size] == ("cg", "jacobi")


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("comm", [MPI.COMM_WORLD, MPI.COMM_SELF], ids=["world", "self"])
def test_an_unstable_rk4_step_says_so_on_every_rank_count(comm):
    """RK4 with a step far above its stability limit: one rank said "the solution blew up
    (explicit RK4 needs τ ≲ …: reduce the time step)", two ranks "the mass-matrix solve
    failed (KSP reason -9)" — their CG saw the NaN first.  Both now say what to change."""
    from fem_mfc.errors import SolverError
    msh = dolfinx.mesh.create_interval(comm, 100, [-10.0, 10.0])
    x = ufl.SpatialCoordinate(msh)
    P = NLSProblem(msh, 1, 1.0, 0.0 * x[0], lambda r: -0.5 * r ** 2)
    z = P.function()
    P.interpolate(z, *free_gaussian(x, 0.0, 1.0, 1.0, [1.0], [0.0]))
    st = RK4Stepper(P, z, 0.5)
    with pytest.raises(SolverError, match="the solution blew up .* reduce the time step"):
        for _ in range(200):
            st.step()
    st.destroy()
