"""The monotone P1 scheme (forms/monotone.py, solvers/monotone.py): positivity where the
Galerkin scheme goes negative, exact mass, the Jacobian is the derivative of the residual and
the KKT matrix is symmetric (discrete duality: FP = adjoint of the linearised HJB), first
order in h against the LQ Gaussian, serial = 2 ranks."""
from __future__ import annotations

import math

from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import numpy as np
import pytest
import ufl

from fem_mfc import config
from fem_mfc.errors import ConfigError
from fem_mfc.exact import LQGaussian
from fem_mfc.problem import ControlProblem
from fem_mfc.solvers import solve
from fem_mfc.solvers.monotone import MonotoneSpaceTime

BE = "backward-euler"


def coarse_2d(stab, comm=MPI.COMM_SELF, n=15, G=lambda r: 0.5 * r ** 2, coupling="mftc"):
    """A drift-dominated coarse problem: a narrow Gaussian pushed across a 15 × 15 mesh."""
    mesh = dolfinx.mesh.create_rectangle(comm, [[-1, -1], [1, 1]], [n, n])
    x = ufl.SpatialCoordinate(mesh)
    return ControlProblem(mesh=mesh, T=1.0, sigma=0.3, steps=20, scheme=BE,
                          Phi=4 * ((x[0] - 0.5) ** 2 + x[1] ** 2), G=G, coupling=coupling,
                          rho0=ufl.exp(-((x[0] + 0.4) ** 2 + x[1] ** 2) / 0.02),
                          stabilisation=stab)


@pytest.mark.parametrize("comm", [MPI.COMM_SELF, pytest.param(MPI.COMM_WORLD,
                                                               marks=pytest.mark.mpi)])
@pytest.mark.slow
def test_monotone_density_stays_nonnegative_and_conserves_mass(comm):
    galerkin = solve(coarse_2d("none", comm), "newton", linear="sweep")
    assert galerkin.min_rho < -0.05                      # the case the scheme is for
    r = solve(coarse_2d("monotone", comm), "newton", linear="sweep")
    assert r.min_rho >= -1e-12 and r.mass_error < 1e-12
    assert abs(r.J - r.J_value) < 1e-10 * abs(r.J)
    if comm.size == 1:
        lu = solve(coarse_2d("monotone", comm), "newton", linear="lu")
        assert abs(lu.J - r.J) < 1e-10 * abs(r.J)
    else:                                                # serial = 2 ranks
        ser = solve(coarse_2d("monotone", MPI.COMM_SELF), "newton", linear="sweep")
        assert abs(ser.J - r.J) < 1e-10 * abs(r.J) and abs(ser.min_rho - r.min_rho) < 1e-12


@pytest.mark.parametrize("coupling", ["mftc", "mfg"])
def test_jacobian_is_the_derivative_of_the_residual_and_symmetric(coupling):
    """At generic states (every edge direction present): J v equals the central difference of
    the residual along v (exact for a residual that is piecewise quadratic, up to round-off),
    and the assembled KKT matrix equals its transpose — the FP blocks are the transposes of
    the linearised HJB blocks."""
    st = MonotoneSpaceTime(coarse_2d("monotone", n=6, coupling=coupling,
                                     G=lambda r: 0.5 * r ** 2))
    rng = np.random.default_rng(3)
    for f in st.rho[1:] + st.u:
        f.x.array[:] += 0.05 * rng.standard_normal(f.x.array.size)
    X = st.create_vec()
    st.states_to_vec(X)
    A = st.jacobian(X).copy()
    v = st.create_vec()
    v.setArray(rng.standard_normal(v.getLocalSize()))
    Jv = st.create_vec()
    A.mult(v, Jv)
    h = 1e-7
    Fp, Fm, Y = st.create_vec(), st.create_vec(), st.create_vec()
    for s, F in ((h, Fp), (-h, Fm)):
        X.copy(Y)
        Y.axpy(s, v)
        st.residual(Y, F)
    Fp.axpy(-1.0, Fm)
    Fp.scale(1 / (2 * h))
    Fp.axpy(-1.0, Jv)
    assert Fp.norm() <= 1e-6 * Jv.norm()
    T = A.transpose(PETSc.Mat())
    T.axpy(-1.0, A)
    assert T.norm() <= 1e-14 * A.norm()


def lq_errors(n, steps, sigma=0.5):
    """‖ρ(T) − ρ_exact(T)‖ (L²) and |J − J_exact| of the monotone scheme on the 1D LQ problem
    (V = G = 0, Φ = x²/2) on a box much wider than the Gaussian."""
    mesh = dolfinx.mesh.create_interval(MPI.COMM_SELF, n, [-6.0, 6.0])
    ex = LQGaussian(mesh, 1.0, sigma, a=1.0, mean=[0.8], std=0.5)
    p = ControlProblem(mesh=mesh, T=1.0, sigma=sigma, steps=steps, scheme=BE, V=0.0,
                       Phi=ex.Phi, rho0=ex.rho(0.0), stabilisation="monotone")
    r = solve(p, "newton", linear="sweep")
    err = dolfinx.fem.form((r.rho[-1] - ex.rho(1.0)) ** 2 * ufl.dx(degree=6))
    return math.sqrt(dolfinx.fem.assemble_scalar(err)), abs(r.J - ex.J)


def test_first_order_in_h_and_tau():
    errs = [lq_errors(n, n // 4) for n in (96, 192, 384)]
    rates = [(math.log(a[i] / b[i]) / math.log(2)) for a, b in zip(errs, errs[1:])
             for i in (0, 1)]
    assert min(rates) >= 0.9, (errs, rates)


def test_refused_where_it_does_not_apply():
    with pytest.raises(ConfigError, match="backward-euler"):
        p = coarse_2d("monotone")
        p.scheme = "crank-nicolson"
        MonotoneSpaceTime(p)
    with pytest.raises(ConfigError, match="stabilisation"):
        coarse_2d("upwind")
    with pytest.raises(ConfigError, match="solver.method"):
        solve(coarse_2d("monotone", G=None), "cole-hopf")
    # a congestion H: the one line names the way out, not the settings the run already has
    raw = {"mesh": {"kind": "rectangle", "cells": 4}, "problem": {"H": "congestion"},
           "discretisation": {"stabilisation": "monotone"}, "solver": {"method": "newton"}}
    with pytest.raises(ConfigError, match="stabilisation 'none'") as e:
        config.from_dict(raw)
    assert "use formulation" not in str(e.value)


@pytest.mark.parametrize("over,key", [
    ({"discretisation": {"scheme": "crank-nicolson"}}, "discretisation.scheme"),
    ({"discretisation": {"degree": 2}}, "discretisation.degree"),
    ({"solver": {"method": "cole-hopf"}}, "solver.method")])
def test_refused_when_the_config_is_loaded(over, key):
    """Crank–Nicolson, P2 or Cole–Hopf with the monotone scheme were refused only once the
    mesh was built and the problem set up; now when the config is read (exit 2 at once)."""
    from fem_mfc import config
    raw = {"problem": {"T": 0.5, "sigma": 0.6, "steps": 4, "Phi": "x0**2"},
           "mesh": {"kind": "interval", "cells": 16, "lower": [-1.0], "upper": [1.0]},
           "rho0": {"mean": [0.1], "std": 0.3},
           "discretisation": {"stabilisation": "monotone"}}
    config.from_dict(raw)
    for section, values in over.items():
        raw.setdefault(section, {}).update(values)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        config.from_dict(raw)
    assert "monotone" in str(e.value) and "\n" not in str(e.value)
