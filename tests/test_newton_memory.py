"""Memory of the Newton sweep path (issue 12 item 1): what it keeps, with the same iterates.

The space-time vectors (16 B per DOF·step) are the largest part: the Krylov basis (GMRES for
direct per-step solves keeps no preconditioned directions), SNES' vectors and ours.  The
resident-memory test runs the solve in a fresh process (benchmarks/bench_memory.py's child)
so that memory freed by earlier tests cannot hide an allocation.
"""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

from mpi4py import MPI
from petsc4py import PETSc

import numpy as np
import pytest

from fem_mfc.errors import ConfigError
from fem_mfc.solvers import newton
from fem_mfc.solvers.kkt import KKTOperator, TrapezoidResidual
from fem_mfc.solvers.spacetime import SpaceTime
from test_kkt_pc import assert_same, perturbed, problem

newton_module = importlib.import_module("fem_mfc.solvers.newton")

ROOT = Path(__file__).resolve().parent.parent


def krylov_its(r):
    return [h["ksp_its"] for h in r.history if "ksp_its" in h]


def test_gmres_for_direct_per_step_solves_same_iterates_as_fgmres(monkeypatch):
    """Right-preconditioned GMRES (the default with per-step LU on large problems: the sweep
    is a fixed linear map) gives FGMRES' Newton and Krylov iterations and solution; smaller
    problems and iterative per-step solves keep FGMRES; the option chooses."""
    small = newton(problem(nx=8, steps=4), linear="sweep")
    assert small.path["krylov"] == "fgmres"          # 81 dofs × 4 steps < GMRES_FROM
    monkeypatch.setattr(newton_module, "GMRES_FROM", 0)
    g = newton(problem(nx=12, steps=8), linear="sweep")
    f = newton(problem(nx=12, steps=8), linear="sweep",
               petsc_options={"newton_krylov": "fgmres"})
    assert g.path["krylov"] == "gmres" and f.path["krylov"] == "fgmres"
    assert krylov_its(g) == krylov_its(f) and sum(krylov_its(g)) > g.iterations
    assert_same(f, g, tol=1e-9)
    it = newton(problem(nx=8, steps=4), linear="sweep", petsc_options={"sweep_step": "ilu"})
    assert it.path["krylov"] == "fgmres"
    user = newton(problem(nx=8, steps=4), linear="sweep",
                  petsc_options={"sweep_ksp_type": "gmres", "sweep_pc_type": "ilu"})
    assert user.path["krylov"] == "fgmres"
    with pytest.raises(ConfigError, match="newton_krylov"):
        newton(problem(), linear="sweep", petsc_options={"newton_krylov": "cg"})


def test_product_mult_add_equals_mult_plus_vector():
    st = SpaceTime(problem(steps=3))
    op = KKTOperator(st)
    K = op.product.mat
    x, v, y, ref = (st.create_vec() for _ in range(4))
    x.setArray(perturbed(st, 2).getArray())
    v.setArray(perturbed(st, 3).getArray())
    K.mult(x, ref)
    ref.axpy(1.0, v)
    K.multAdd(x, v, y)
    assert np.abs(y.getArray() - ref.getArray()).max() <= 1e-14 * ref.norm(PETSc.NormType.INFINITY)
    K.multAdd(x, v, v)                        # in place
    assert np.abs(v.getArray() - ref.getArray()).max() <= 1e-14 * ref.norm(PETSc.NormType.INFINITY)
    for o in (x, v, y, ref):
        o.destroy()
    op.destroy()


def test_trapezoid_residual_keeps_two_vectors():
    """The identity is evaluated in the output vector: the residual object holds the last
    point and its residual only (it had two more work vectors)."""
    st = SpaceTime(problem(steps=3))
    op = KKTOperator(st)
    X, F = st.create_vec(), st.create_vec()
    st.states_to_vec(X)
    Y = perturbed(st, 1)
    made = []
    create = st.create_vec
    st.create_vec = lambda: made.append(1) or create()
    trap = TrapezoidResidual(op)
    trap(X, F)
    trap(Y, F)
    assert not made and trap.derived == 1
    held = [v for v in vars(trap).values() if isinstance(v, PETSc.Vec)]
    assert len(held) == 2
    trap.destroy(), op.destroy()


def attractive(cells=100, steps=20, c=-0.02):
    """1D aggregation game: Newton from the trivial guess stalls, the continuation converges."""
    import dolfinx
    import ufl

    from fem_mfc.problem import ControlProblem
    mesh = dolfinx.mesh.create_interval(MPI.COMM_SELF, cells, [0.0, 1.0])
    x = ufl.SpatialCoordinate(mesh)
    return ControlProblem(mesh=mesh, T=1.0, sigma=0.1, steps=steps, Phi=(x[0] - 0.5) ** 2,
                          G=lambda r: c * r ** 2, coupling="mfg",
                          rho0=ufl.exp(-50 * (x[0] - 0.5) ** 2))


@pytest.mark.slow
def test_trivial_guess_is_regenerated_for_the_continuation(monkeypatch):
    """The start of the continuation after a failed direct attempt from the trivial guess is
    set again instead of kept during the attempt (one space-time vector less): the same
    stages and solution as from a system given at the trivial guess (whose start is kept)."""
    import importlib
    nt = importlib.import_module("fem_mfc.solvers.newton")
    made = []
    real = nt.initial_states
    monkeypatch.setattr(nt, "initial_states",
                        lambda st, trivial=False: made.append(trivial) or real(st, trivial))
    a = newton(attractive(), linear="sweep")
    assert made == [True]
    p = attractive()
    b = newton(p, linear="sweep", system=nt.make_system(p))
    assert made == [True, False]
    assert a.converged and b.converged and len(a.continuation) > 2
    assert [s["lambda"] for s in a.continuation[1:]] == [s["lambda"] for s in b.continuation[1:]]
    assert [s["iterations"] for s in a.continuation] == [s["iterations"] for s in b.continuation]
    assert abs(a.J - b.J) < 1e-12


@pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="one process")
def test_sweep_path_holds_few_space_time_vectors():
    """Resident memory of a 2D P1 Newton solve (48² cells × 30 CN steps, trivial guess) in a
    fresh process: what is not blocks, factors, assembly or states — the Krylov, SNES and our
    vectors — is ≤ 22 space-time vectors with GMRES (the default from GMRES_FROM DOF·steps;
    20.6; it was 33.7: FGMRES(8) alone kept 24)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_memory.py"),
                          "--child", "--cells", "48", "--steps", "30", "--krylov", "gmres"],
                         env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads([s for s in out.stdout.splitlines() if s.startswith("RESULT ")][-1][7:])
    vectors = r["charged"]["vectors"] / (16 * r["dofs"] * r["steps"])
    assert vectors <= 22, r
