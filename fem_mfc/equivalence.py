"""One congested control problem solved three ways (MODEL §7.3): HJB–FP, QHD, Cole–Hopf pair.

Ω = (−1, 1)^d, T = 1, σ = 0.8 (ε = 0.32), V = 0, congestion G = κρ²/2 with κ = 1, terminal
loss Φ = 0.4 sin(πx/2) + 0.2 cos(πx) (∂Φ/∂n = 0: u has no boundary layer at t = T) and
ρ_0 ∝ 1 + ½cos(πx), bounded away from zero as the QHD form needs; in 2D the data are
products.  Each formulation is discretised on its own terms (backward Euler, P1), so the three
discrete solutions differ by discretisation error only.

Used by ``demos/demo_equivalence.py`` (its refinement study), ``tests/test_equivalence.py`` and
``benchmarks/bench_qhd.py``.
"""
from __future__ import annotations

import math
import time

from mpi4py import MPI

import dolfinx
import ufl

from .problem import ControlProblem

KAPPA, SIGMA, T = 1.0, 0.8, 1.0
KEYS = ("rho_hjb_qhd", "rho_hjb_pair", "J_hjb_qhd", "J_hjb_pair")


def congestion(rho):
    """G(ρ) = κρ²/2."""
    return 0.5 * KAPPA * rho ** 2


def data(x, dim: int):
    """(ρ_0 up to its mass, Φ) as UFL expressions in the coordinates ``x``."""
    pi = math.pi
    rho0, Phi = 1.0, 0.0
    for i in range(dim):
        rho0 = rho0 * (1 + 0.5 * ufl.cos(pi * x[i]))
        Phi = Phi + (0.4 if i == 0 else 0.2) * ufl.sin(pi * x[i] / 2) + 0.2 * ufl.cos(pi * x[i])
    return rho0, Phi


def make_problem(cells: int, steps: int, dim: int = 1, comm=MPI.COMM_SELF) -> ControlProblem:
    """The congested problem on (−1, 1)^dim with ``cells`` per axis and ``steps`` layers."""
    if dim == 1:
        msh = dolfinx.mesh.create_interval(comm, cells, [-1.0, 1.0])
    else:
        msh = dolfinx.mesh.create_rectangle(comm, [[-1.0, -1.0], [1.0, 1.0]], [cells, cells],
                                            dolfinx.mesh.CellType.triangle)
    rho0, Phi = data(ufl.SpatialCoordinate(msh), dim)
    return ControlProblem(mesh=msh, T=T, sigma=SIGMA, steps=steps, rho0=rho0, Phi=Phi,
                          G=congestion)


def l2_difference(fa, fb) -> float:
    """‖fa − fb‖_{L²(Ω)}, summed over the ranks."""
    comm = fa.function_space.mesh.comm
    val = dolfinx.fem.assemble_scalar(dolfinx.fem.form((fa - fb) ** 2 * ufl.dx))
    return math.sqrt(max(comm.allreduce(val, op=MPI.SUM), 0.0))


def solve_three(cells: int, steps: int, dim: int = 1, comm=MPI.COMM_SELF) -> dict:
    """Solve the problem as HJB–FP, QHD and Cole–Hopf pair; return the differences (max over
    the time levels of the L² norm in space), the three costs and the solver figures."""
    from .solvers.cole_hopf_pair import solve_pair
    from .solvers.newton import newton
    from .solvers.qhd import solve_control
    p = make_problem(cells, steps, dim, comm)
    t0 = time.perf_counter()
    hjb = newton(p)
    t1 = time.perf_counter()
    qhd, _ = solve_control(p)
    t2 = time.perf_counter()
    pair = solve_pair(p)
    t3 = time.perf_counter()
    levels = range(p.steps + 1)
    return {
        "dim": dim, "cells": cells, "steps": steps, "h": 2.0 / cells, "tau": p.tau,
        "ndofs": p.space.dofmap.index_map.size_global,
        "rho_hjb_qhd": max(l2_difference(hjb.rho[n], qhd.rho[n]) for n in levels),
        "rho_hjb_pair": max(l2_difference(hjb.rho[n], pair.rho[n]) for n in levels),
        "J_hjb_qhd": abs(hjb.J - qhd.J), "J_hjb_pair": abs(hjb.J - pair.J),
        "J_hjb": hjb.J, "J_qhd": qhd.J, "J_pair": pair.J,
        "mass_error": max(hjb.mass_error, qhd.mass_error, pair.mass_error),
        "min_rho": min(hjb.min_rho, qhd.min_rho),
        "iterations": {"hjb": hjb.iterations, "qhd": qhd.iterations, "pair": pair.iterations},
        "seconds": {"hjb": t1 - t0, "qhd": t2 - t1, "pair": t3 - t2},
        "rho_T": {"hjb": hjb.rho[-1], "qhd": qhd.rho[-1], "pair": pair.rho[-1]},
    }
