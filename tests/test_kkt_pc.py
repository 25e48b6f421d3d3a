"""The sweep-preconditioned Krylov Newton step (solvers/kkt.py, kkt_pc.py) against LU, and
the declared structure of the space-time Jacobian against assembly.

Serial: ``python3 -m pytest tests/test_kkt_pc.py``; the ``mpi`` test runs under
``mpirun -n 2 python3 -m pytest --with-mpi -m mpi tests/test_kkt_pc.py``."""
import dataclasses

from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import numpy as np
import pytest
import ufl

from fem_mfc.errors import ConfigError
from fem_mfc.problem import ControlProblem
from fem_mfc.solvers import auto, newton
from fem_mfc.solvers.kkt import KKTOperator, TrapezoidResidual
from fem_mfc.solvers.kkt_pc import PYTHON_TYPE, SweepPC, rel_diff
from fem_mfc.solvers.newton import ETA_MAX, KSP_RTOL, Forcing, linear_mode
from fem_mfc.solvers.spacetime import SpaceTime, hjb_fp, symbolic_quadratic

CN, BE = "crank-nicolson", "backward-euler"


def problem(comm=MPI.COMM_SELF, nx=8, steps=4, scheme=CN, congested=True, coupling="mftc"):
    mesh = dolfinx.mesh.create_rectangle(comm, [[-1, -1], [1, 1]], [nx, nx])
    x = ufl.SpatialCoordinate(mesh)
    return ControlProblem(mesh=mesh, T=1.0, sigma=0.5, steps=steps, scheme=scheme,
                          Phi=2 * ((x[0] - 0.5) ** 2 + x[1] ** 2), V=0.3 * x[1] ** 2,
                          G=(lambda r: 0.5 * r ** 2) if congested else None, coupling=coupling,
                          rho0=ufl.exp(-((x[0] + 0.4) ** 2 + x[1] ** 2) / (2 * 0.2 ** 2)))


def max_diff(a, b):
    return max(np.abs(f.x.array - g.x.array).max() for f, g in zip(a, b))


def assert_same(lu, sw, tol=1e-8):
    assert sw.iterations == lu.iterations
    assert abs(sw.J - lu.J) < 1e-10 and abs(sw.J_value - lu.J_value) < 1e-10
    assert max_diff(sw.rho, lu.rho) < tol and max_diff(sw.u, lu.u) < tol
    assert max(abs(a - b) for a, b in zip(sw.mass, lu.mass)) < 1e-12


def test_sweep_shares_per_step_factors():
    """The guard of the reuse rule (REUSE_RTOL): 2D P1 16² × 20 CN congested, the sweep
    factorises ≤ 55 pivots over its Newton steps (71 with the earlier 0.2 %) for the same
    Newton and Krylov iterations."""
    r = newton(problem(nx=16, steps=20), linear="sweep")
    fac = [h["factorisations"] for h in r.history if "factorisations" in h][-1]
    kry = [h["ksp_its"] for h in r.history if h.get("ksp_its") is not None]
    assert r.converged and r.iterations == 6 and sum(kry) <= 18
    assert fac <= 55, fac


def test_reuse_tolerance_shrinks_with_the_mesh():
    """The default reuse tolerance: REUSE_RTOL up to REUSE_FULL_DOFS dofs per pivot, ∝ n^{-1/2}
    above (at 251k 2D dofs 0.5 % tripled the Krylov iterations), refactorise in 1D; the path
    records the one in use."""
    from fem_mfc.solvers.kkt_pc import REUSE_FULL_DOFS, REUSE_RTOL, reuse_rtol
    assert reuse_rtol(1000, 1) == -1.0
    assert reuse_rtol(REUSE_FULL_DOFS, 2) == REUSE_RTOL == reuse_rtol(289, 3)
    assert reuse_rtol(4 * REUSE_FULL_DOFS, 2) == pytest.approx(REUSE_RTOL / 2)
    assert 2.5e-3 < reuse_rtol(251_001, 2) < 2.6e-3
    r = newton(problem(nx=8, steps=4), linear="sweep")
    assert r.path["reuse_rtol"] == REUSE_RTOL


@pytest.mark.parametrize("scheme,coupling", [(CN, "mftc"), (BE, "mftc"), (CN, "mfg")])
def test_sweep_matches_lu(scheme, coupling):
    lu = newton(problem(scheme=scheme, coupling=coupling), linear="lu")
    sw = newton(problem(scheme=scheme, coupling=coupling), linear="sweep")
    assert_same(lu, sw)
    its = [h["ksp_its"] for h in sw.history[:-1]]
    assert len(its) == sw.iterations and all(1 <= n < 60 for n in its)


class CountingSweepPC(SweepPC):
    """The sweep preconditioner, counting its applications (selected by options below)."""

    applications = 0

    def apply(self, pc, x, y):
        CountingSweepPC.applications += 1
        super().apply(pc, x, y)


def test_sweep_selected_by_petsc_options():
    """-mfc_linear selects the path; inside the sweep path the preconditioner is a PETSc
    python PC that options name (here a subclass from this module: same iterates)."""
    lu = newton(problem(), linear="lu")
    sw = newton(problem(), petsc_options={"linear": "sweep"})
    assert sw.path["linear"] == "sweep" and sw.path["preconditioner"] == PYTHON_TYPE
    assert sw.history[0]["ksp_its"] > 1 and lu.path["linear"] == "lu"
    assert_same(lu, sw)
    mine = f"{__name__}.CountingSweepPC"
    other = newton(problem(), linear="sweep", petsc_options={"pc_python_type": mine})
    assert other.path["preconditioner"] == mine and CountingSweepPC.applications > 0
    assert_same(lu, other)


def test_auto_follows_the_estimates():
    """auto takes the path with the smaller estimated cost per Newton step (never an LU whose
    factors would not fit), the per-step kind by dimension, and LU for formulations without an
    effective sweep."""
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent.parent / "benchmarks"))
    from bench_matrix import problem as bench_problem
    # the benchmark matrix measured the sweep faster at every point (1D–3D, 300–66k dofs)
    for dim, cells, steps, expect in ((1, 8, 2, "sweep"), (1, 300, 20, "sweep"),
                                      (2, 16, 20, "sweep"), (3, 6, 20, "sweep")):
        st = SpaceTime(bench_problem(dim, 1, cells, steps, "mftc"))
        mode, rule = linear_mode(st, "auto", "t_auto_")
        n = st.V.dofmap.index_map.size_global
        est = auto.estimates(n, steps, dim)
        assert mode == ("lu" if est["lu_s"] < est["sweep_s"] else "sweep") == expect, \
            (dim, cells, rule)
        assert rule["lu_s"] == pytest.approx(est["lu_s"], rel=1e-2)
        assert auto.step_kind(n, dim) == ("ilu" if dim == 3 else "lu")
        assert linear_mode(st, "sweep", "t_auto_")[0] == "sweep"
    big = auto.estimates(10 ** 6, 100, 3)                 # would not fit: never LU
    assert big["lu_bytes"] > auto.LU_MEMORY_FRACTION * auto.memory_bytes()
    p = problem(nx=40, steps=30)
    st = SpaceTime(p, formulation=dataclasses.replace(hjb_fp(p), sweep=False))
    assert linear_mode(st, "auto", "t_auto_")[0] == "lu"
    with pytest.raises(ConfigError):
        linear_mode(st, "cholesky", "t_auto_")


def system(p, mirrored=True, cache=True):
    fm = hjb_fp(p)
    return SpaceTime(p, formulation=dataclasses.replace(fm, mirrored=mirrored), cache=cache)


def sweep_pc(op):
    pc = PETSc.PC().create(op.st.comm)
    pc.setType("python")
    ctx = SweepPC(op)
    pc.setPythonContext(ctx)
    pc.setOperators(op.product.mat, op.product.mat)
    pc.setUp()
    return pc, ctx


@pytest.mark.parametrize("mirrored", [True, False])
def test_pc_is_exact_without_congestion(mirrored):
    """G = 0: the ρ–ρ blocks vanish and one forward–backward sweep inverts the Jacobian (with
    the HJB pivots as transposes of the FP pivots, or factorised on their own)."""
    st = system(problem(congested=False, steps=3), mirrored)
    rng = np.random.default_rng(0)
    for f in st.rho[1:] + st.u:                      # a generic (non-solution) state
        f.x.array[:] += 0.1 * rng.standard_normal(f.x.array.size)
    op = KKTOperator(st)
    assert bool(op.mirror) == mirrored
    pc, ctx = sweep_pc(op)
    x, y, z = st.create_vec(), st.create_vec(), st.create_vec()
    x.setArray(rng.standard_normal(x.getLocalSize()))
    op.product.mat.mult(x, y)
    pc.apply(y, z)
    z.axpy(-1.0, x)
    assert z.norm() < 1e-10 * x.norm()
    ctx.destroy()


def test_factors_no_equation_uses_are_freed():
    """Reuse keeps only the factors in use: pivots that differ get their own factors; once
    the states make them coincide, every equation shares the first one's and the others'
    factors (and snapshots) are freed, not kept for the rest of the solve."""
    st = system(problem(steps=4))
    rng = np.random.default_rng(1)
    for f in st.u:                                   # pivots differ from level to level
        f.x.array[:] = rng.standard_normal(f.x.array.size)
    op = KKTOperator(st)
    pc, ctx = sweep_pc(op)
    assert len(ctx.ksp) == len(st.layout.forward_rows()) > 1
    for f in st.u[1:]:                               # now they coincide
        f.x.array[:] = st.u[0].x.array
    op.update()
    ctx.setUp(pc)
    assert set(ctx.ksp) == set(ctx.owner.values()) == set(ctx.snap)
    assert len(ctx.ksp) == 1
    ctx.destroy()


def test_newton_without_congestion_one_krylov_iteration():
    """With exact per-step factors (no lagging) M = K for G = 0."""
    sw = newton(problem(congested=False), linear="sweep",
                petsc_options={"sweep_reuse_rtol": 1e-13})
    lu = newton(problem(congested=False), linear="lu")
    assert_same(lu, sw)
    assert all(h["ksp_its"] == 1 for h in sw.history[:-1])


def test_inexact_newton_same_solution_fewer_krylov_iterations():
    """Adaptive forcing (default on the sweep path): the LU solution and Newton count with far
    fewer Krylov iterations than steps solved to KSP_RTOL; the option selects the mode."""
    lu = newton(problem(steps=6), linear="lu")
    ad = newton(problem(steps=6), linear="sweep")
    ex = newton(problem(steps=6), linear="sweep", forcing="exact")
    by_option = newton(problem(steps=6), linear="sweep",
                       petsc_options={"newton_forcing": "exact"})
    assert_same(lu, ad, tol=1e-9)
    assert_same(lu, ex)
    kry = {name: [h["ksp_its"] for h in r.history[:-1]]
           for name, r in (("ad", ad), ("ex", ex), ("opt", by_option))}
    assert kry["opt"] == kry["ex"]
    assert sum(kry["ad"]) < 0.6 * sum(kry["ex"]), kry
    etas = [h["ksp_rtol"] for h in ad.history if "ksp_rtol" in h]
    assert etas[0] == ETA_MAX and all(KSP_RTOL <= e <= ETA_MAX for e in etas)
    assert ad.history[-1]["residual"] <= 1e-10 * ad.history[0]["residual"]
    assert "ksp_rtol" not in ex.history[0]
    with pytest.raises(ConfigError, match="newton_forcing"):
        newton(problem(), linear="sweep", forcing="sloppy")


def test_forcing_terms():
    """Eisenstat–Walker choice 2 with the cap, the carried safeguard and no oversolving."""
    f = Forcing(rtol=1e-10, atol=1e-30, eta_max=1e-2, gamma=0.9, alpha=2.0)
    assert f.rtol_for(0, 1.0) == 1e-2                        # η₀ = η_max
    assert f.rtol_for(1, 0.5) == 1e-2                        # 0.9·0.25 capped
    assert np.isclose(f.rtol_for(2, 0.005), 0.9 * 1e-4)      # quadratic phase
    assert np.isclose(f.rtol_for(3, 1e-8), 0.5 * 1e-10 / 1e-8)   # only what the target needs
    g = Forcing(rtol=1e-30, atol=1e-30, eta_max=0.9, gamma=0.9, alpha=2.0)
    g.rtol_for(0, 1.0)
    assert np.isclose(g.rtol_for(1, 0.1), 0.9 * 0.9 ** 2)    # safeguard γη² > 0.1 kept
    h = Forcing(rtol=1e-40, atol=1e-40, eta_max=1e-2)
    h.rtol_for(0, 1.0)
    assert h.rtol_for(1, 1e-20) == KSP_RTOL                  # floor


@pytest.mark.mpi
def test_sweep_parallel_matches_serial_lu():
    par = newton(problem(MPI.COMM_WORLD, nx=12, steps=6), linear="sweep")
    ser = newton(problem(MPI.COMM_SELF, nx=12, steps=6), linear="lu")
    assert par.iterations == ser.iterations
    assert abs(par.J - ser.J) < 1e-9 and abs(par.J_value - ser.J_value) < 1e-9
    assert abs(par.min_rho - ser.min_rho) < 1e-9
    assert max(abs(a - b) for a, b in zip(par.mass, ser.mass)) < 1e-12


def perturbed(st, seed=1, scale=0.1):
    rng = np.random.default_rng(seed)
    for f in st.rho[1:] + st.u:
        f.x.array[:] += scale * rng.standard_normal(f.x.array.size)
    X = st.create_vec()
    st.states_to_vec(X)
    return X


def product_error(op, J, rng) -> float:
    """‖(K − J)x‖ / ‖Kx‖ for a random x: the operator's product K against the matrix J."""
    st = op.st
    x = st.create_vec()
    x.setArray(rng.standard_normal(x.getLocalSize()))
    y, z = st.create_vec(), st.create_vec()
    op.product.mat.mult(x, y)
    J.mult(x, z)
    z.axpy(-1.0, y)
    return z.norm() / y.norm()


def assembled_grid(p, X):
    """Every Jacobian block assembled (plain assembler) at the states X."""
    ref = SpaceTime(p, cache=False)
    ref.vec_to_states(X)
    return ref, ref.block_grid()


def block_of(op, r, c):
    """Block (r, c) of the operator from its terms, as a new matrix."""
    terms = op.terms(r, c)
    out = None
    for base, t, a in terms:
        M = base.transpose(PETSc.Mat()) if t else base.copy()
        M.scale(a)
        if out is None:
            out = M
        else:
            out.axpy(1.0, M, structure=PETSc.Mat.Structure.DIFFERENT_NONZERO_PATTERN)
            M.destroy()
    return out


@pytest.mark.parametrize("scheme,coupling", [(CN, "mftc"), (BE, "mftc"), (CN, "mfg")])
def test_declared_structure_equals_assembly(scheme, coupling):
    """The structure facts the HJB–FP formulation declares hold numerically at generic
    states: every block the operator forms from terms (mirrors as transposes, B_n = αP_n + E)
    equals its assembly, the declared dependencies miss no nonzero block, and 'quadratic'
    (every block affine in the states) holds: K((x + y)/2) = (K(x) + K(y))/2."""
    p = problem(scheme=scheme, coupling=coupling, steps=4)
    st = SpaceTime(p)
    assert st.quadratic                              # G = ρ²/2: c = ρ (mftc) or ρ/2 (mfg)
    X, Y, Z = perturbed(st, 7), perturbed(st, 8), st.create_vec()
    Z.axpy(0.5, X), Z.axpy(0.5, Y)
    (rx, gx), (ry, gy), (rz, gz) = (assembled_grid(p, V) for V in (X, Y, Z))
    for r, c in st.block_keys:
        D = gx[r][c].copy()
        D.axpy(1.0, gy[r][c])
        D.axpy(-2.0, gz[r][c])
        assert D.norm() <= 1e-12 * max(gz[r][c].norm(), 1.0), (r, c)
    full = SpaceTime(p, formulation=dataclasses.replace(hjb_fp(p), depends=None))
    assert set(full.jac_ufl) == set(st.jac_ufl)
    op = KKTOperator(st)
    assert op.mirror and bool(op.derived) == (scheme == CN)
    for seed in (1, 2):
        X = perturbed(st, seed)
        op.update(X)
        ref, grid = assembled_grid(p, X)
        for r, c in op.blocks():
            D = block_of(op, r, c)
            D.axpy(-1.0, grid[r][c], structure=PETSc.Mat.Structure.DIFFERENT_NONZERO_PATTERN)
            assert D.norm() <= 1e-12 * max(grid[r][c].norm(), 1.0), (r, c)
            D.destroy()
        ref.destroy()
    op.destroy()


@pytest.mark.parametrize("comm,scheme", [(MPI.COMM_SELF, CN), (MPI.COMM_SELF, BE),
                                         pytest.param(MPI.COMM_WORLD, CN, marks=pytest.mark.mpi)])
def test_grouped_product_equals_assembled_operator(comm, scheme):
    """KKTProduct (terms grouped by matrix: one product per P_n, P_nᵀ, A_n, shared matrices
    over all their columns at once) multiplies like the MatNest of every assembled block, and
    makes fewer products than the MatNest has blocks."""
    p = problem(comm, steps=5, scheme=scheme)
    st = SpaceTime(p)
    op = KKTOperator(st)
    x, y, z = st.create_vec(), st.create_vec(), st.create_vec()
    x.setRandom()
    for seed in (1, 2):
        X = perturbed(st, seed)
        op.update(X)
        ref, grid = assembled_grid(p, X)
        nest = PETSc.Mat().createNest(grid, comm=comm)
        nest.mult(x, y)
        op.product.mat.mult(x, z)
        z.axpy(-1.0, y)
        assert z.norm() <= 1e-13 * y.norm(), (seed, z.norm())
        nest_blocks = sum(A is not None for row in grid for A in row)
        nest.destroy(), ref.destroy()
    plan = op.product.plan()
    batched = [q for q in plan if q[0] == "batch"]
    # per level at most P_n, P_nᵀ, A_n one product each; the shared matrices (congestion
    # blocks τG''θ²M, τG''θ(1−θ)M and E = M/θ, G = ρ²/2) merged into one batched product
    assert len(batched) == 1 and len(plan) <= 3 * 5 + 1 + 2 < nest_blocks
    op.destroy()


def test_reuse_coinciding_pivots_and_lagging():
    """Exact reuse: the first Newton step (constant guess, all pivots equal) factorises once
    and the Krylov counts are those without reuse; a loose tolerance lags factors (fewer
    factorisations, same solution)."""
    lu = newton(problem(), linear="lu")
    sw = newton(problem(), linear="sweep", petsc_options={"sweep_reuse_rtol": 1e-13,
                                                          "sweep_transpose_factors": True})
    assert_same(lu, sw)
    fac = [h["factorisations"] for h in sw.history if "factorisations" in h]
    assert fac[0] == 2 and fac[-1] == 2 * (1 + (sw.iterations - 1) * 4)   # P_n and P_nᵀ
    full = newton(problem(), linear="sweep", petsc_options={"sweep_reuse_rtol": -1,
                                                            "sweep_transpose_factors": True})
    assert [h["ksp_its"] for h in full.history[:-1]] == [h["ksp_its"] for h in sw.history[:-1]]
    assert full.history[-2]["factorisations"] == full.iterations * 8
    lag = newton(problem(), linear="sweep", petsc_options={"sweep_reuse_rtol": 0.05})
    assert_same(lu, lag)
    assert lag.history[-2]["factorisations"] < sw.history[-2]["factorisations"]


def test_transpose_factors():
    """Explicit factors of P_nᵀ for the HJB sweep or transposed solves with the factors of
    P_n (the default at this size): the same iterates, twice the factorisations."""
    lu = newton(problem(), linear="lu")
    base = {"sweep_reuse_rtol": 1e-13}
    on = newton(problem(), linear="sweep",
                petsc_options={**base, "sweep_transpose_factors": True})
    off = newton(problem(), linear="sweep",
                 petsc_options={**base, "sweep_transpose_factors": False})
    assert_same(lu, on) and assert_same(lu, off)
    f_on, f_off = on.history[-2]["factorisations"], off.history[-2]["factorisations"]
    assert f_on == 2 * f_off
    default = newton(problem(), linear="sweep", petsc_options=base)
    assert default.history[-2]["factorisations"] == f_off


@pytest.mark.mpi
def test_sweep_parallel_reuse_matches_serial_lu():
    opts = {"sweep_reuse_rtol": 0.05, "sweep_transpose_factors": True}
    par = newton(problem(MPI.COMM_WORLD, nx=12, steps=6), linear="sweep", petsc_options=opts)
    ser = newton(problem(MPI.COMM_SELF, nx=12, steps=6), linear="lu")
    assert par.iterations == ser.iterations
    assert abs(par.J - ser.J) < 1e-9 and abs(par.J_value - ser.J_value) < 1e-9


@pytest.mark.mpi
def test_sweep_owned_factors_match_the_redundant_lu():
    """On 2–4 ranks every per-step LU of the sweeps is factorised and stored by one rank, the
    ranks in turn (steps.OwnedLU, the default there): the iterates of the redundant LU on
    every rank (``-mfc_sweep_owned_factors 0``) and of the serial LU path."""
    comm = MPI.COMM_WORLD
    owned = newton(problem(comm, nx=12, steps=6), linear="sweep")
    red = newton(problem(comm, nx=12, steps=6), linear="sweep",
                 petsc_options={"sweep_owned_factors": False})
    ser = newton(problem(MPI.COMM_SELF, nx=12, steps=6), linear="lu")
    assert owned.path["owned_factors"] is (comm.size > 1)
    assert red.path["owned_factors"] is False
    for r in (owned, red):
        assert r.iterations == ser.iterations
        assert abs(r.J - ser.J) < 1e-9 and abs(r.J_value - ser.J_value) < 1e-9
    assert [h.get("ksp_its") for h in owned.history] == [h.get("ksp_its") for h in red.history]
    # owned: explicit transpose factors (on another rank) for the HJB sweep
    assert owned.history[-2]["factorisations"] == 2 * red.history[-2]["factorisations"]


def test_cole_hopf_initial_guess():
    """Newton from the Cole–Hopf solution without congestion: the same discrete solution as
    from the trivial guess, a smaller initial residual, no more Newton steps; a useless guess
    (Crank–Nicolson χ < 0 on a coarse mesh) is rejected; refused where it does not exist."""
    fine = dict(nx=32, steps=16)
    triv = newton(problem(**fine), linear="sweep")
    ch = newton(problem(**fine), linear="sweep", guess="cole-hopf")
    assert ch.history[0]["guess"] == "cole-hopf" and triv.history[0]["guess"] == "trivial"
    assert abs(ch.J - triv.J) < 1e-10 and max_diff(ch.rho, triv.rho) < 1e-8
    assert ch.history[0]["residual"] < 0.2 * triv.history[0]["residual"]
    assert ch.iterations <= triv.iterations
    assert ch.history[0]["target"] == pytest.approx(triv.history[0]["target"], rel=1e-8)
    bad = newton(problem(steps=6), linear="lu", guess="cole-hopf")
    assert bad.history[0]["guess"].startswith("trivial")
    ref = newton(problem(steps=6), linear="lu")
    assert bad.iterations == ref.iterations and abs(bad.J - ref.J) < 1e-12
    with pytest.raises(ConfigError, match="initial_guess"):
        newton(problem(), guess="picard")
    from fem_mfc.exact import Manufactured
    mesh = dolfinx.mesh.create_unit_square(MPI.COMM_SELF, 4, 4)
    ex = Manufactured(mesh, 1.0, 0.5, lambda r: 0.5 * r ** 2, "mftc")
    mms = ControlProblem(mesh=mesh, T=1.0, sigma=0.5, steps=2, rho0=ex.rho(0.0), V=ex.V,
                         Phi=ex.Phi, G=ex.G, exact=ex)
    with pytest.raises(ConfigError, match="initial_guess"):
        newton(mms, guess="cole-hopf")


def test_trapezoid_residual_is_exact_for_quadratic_systems():
    """F(y) = F(x) + ½(K(x) + K(y))(y − x) reproduces the assembled residual at unrelated states
    when the residual is quadratic (G = ρ²/2, mftc; both schemes).  The declared fact agrees
    with the symbolic check: G = ρ³/3 (c = ρ²) is quadratic, G = ρ⁴/4 is not."""
    assert SpaceTime(problem(steps=2, coupling="mfg")).quadratic       # c = G/ρ = ρ/2
    for scheme in (CN, BE):
        st = SpaceTime(problem(steps=4, scheme=scheme))
        assert st.quadratic
        op = KKTOperator(st)
        trap = TrapezoidResidual(op)
        X, F, R = st.create_vec(), st.create_vec(), st.create_vec()
        for seed in range(4):
            st.states_to_vec(X) if seed == 0 else X.setArray(perturbed(st, seed).getArray())
            trap(X, F)
            st.residual(X, R)                          # direct assembly at the same state
            R.axpy(-1.0, F)
            assert R.norm() <= 1e-13 * max(F.norm(), 1e-3), (scheme, seed, R.norm())
        assert (trap.assembled, trap.derived) == (1, 3)
        trap.destroy(), op.destroy()
    mesh = dolfinx.mesh.create_unit_square(MPI.COMM_SELF, 3, 3)
    for power, quadratic in ((3, True), (4, False)):
        p = ControlProblem(mesh=mesh, T=1.0, sigma=0.5, steps=2, rho0=1.0,
                           G=lambda r, k=power: r ** k / k)
        st = SpaceTime(p)
        assert st.quadratic == quadratic == symbolic_quadratic(st.jac_ufl, st.tm)


def test_newton_with_trapezoid_residuals_matches_assembled_residuals():
    a = newton(problem(steps=6), linear="sweep")
    b = newton(problem(steps=6), linear="sweep", petsc_options={"newton_trapezoid": False})
    assert_same(b, a, tol=1e-9)
    assert a.history[-1]["residuals"]["trapezoid"] == a.iterations
    assert "residuals" not in b.history[-1]


@pytest.mark.parametrize("comm", [MPI.COMM_SELF, pytest.param(MPI.COMM_WORLD,
                                                               marks=pytest.mark.mpi)])
def test_blocks_of_levels_with_equal_states_are_copied_not_reassembled(comm):
    """At the constant initial guess every level has the same states: one assembly per form;
    the copies equal assemblies, and a memoised matrix changed since is not copied (the
    decision is collective)."""
    st = SpaceTime(problem(comm, steps=5))
    asm = st.assembler
    grid = st.block_grid()
    n_blocks = sum(A is not None for row in grid for A in row)
    assert asm.assemblies < n_blocks // 3
    ref = SpaceTime(problem(comm, steps=5), cache=False)
    for (r, c), (key, k) in st.block_keys.items():
        ref.load(k)
        B = ref.assembler.fresh(ref.jac[key])
        D = grid[r][c].copy()
        D.axpy(-1.0, B)
        assert D.norm() <= 1e-14 * max(B.norm(), 1.0), (r, c)
    key = ("u", "rho_next")                            # P_n, one matrix per level
    assert asm._memo[key][1] is not asm._mats[(key, 3)]
    asm._memo[key][1].scale(2.0)                       # changed since it was memoised
    st.load(3)
    A = asm.block(key, 3)
    B = asm.fresh(st.jac[key])
    D = A.copy()
    D.axpy(-1.0, B)
    assert D.norm() <= 1e-14 * B.norm()


@pytest.mark.parametrize("comm", [MPI.COMM_SELF, pytest.param(MPI.COMM_WORLD,
                                                               marks=pytest.mark.mpi)])
def test_residual_rows_of_equal_levels_are_reused(comm):
    """At the constant initial guess the residual rows of the interior levels coincide: a few
    assemblies, the same residual as the plain assembler's; at other states every row is
    assembled."""
    st = SpaceTime(problem(comm, steps=6))
    calls = []
    asm = dolfinx.fem.assemble_vector

    def counting(*args):
        calls.append(1)
        return asm(*args)

    F, R = st.create_vec(), st.create_vec()
    dolfinx.fem.assemble_vector = counting
    try:
        st.residual(None, F)
        few = len(calls)
        calls.clear()
        X = perturbed(st, 4)
        st.residual(X, R)
        assert len(calls) == sum(len(st.rows(k)) for k in range(st.N + 1))
    finally:
        dolfinx.fem.assemble_vector = asm
    assert few <= 4
    ref = SpaceTime(problem(comm, steps=6), cache=False)
    G = ref.create_vec()
    ref.residual(None, G)
    G.axpy(-1.0, F)
    assert G.norm() == 0.0


@pytest.mark.parametrize("comm", [MPI.COMM_SELF, pytest.param(MPI.COMM_WORLD,
                                                               marks=pytest.mark.mpi)])
def test_parameter_change_drops_cached_evaluations(comm):
    """A continuation parameter (the coupling strength s in s·G) changes the residual and
    the blocks: the caching assembler gives what the plain one gives after the change."""
    st = SpaceTime(problem(comm, steps=4))
    ref = SpaceTime(problem(comm, steps=4), cache=False)
    X = perturbed(st, 5)
    F, R = st.create_vec(), st.create_vec()
    st.residual(X, F)
    st.block_grid()
    for s in (0.3, 0.0):
        st.set_parameter("coupling", s)
        ref.set_parameter("coupling", s)
        st.residual(X, F)
        ref.residual(X, R)
        R.axpy(-1.0, F)
        assert R.norm() <= 1e-14 * F.norm()
        grid, rgrid = st.block_grid(), ref.block_grid()
        for (r, c) in st.block_keys:
            D = grid[r][c].copy()
            D.axpy(-1.0, rgrid[r][c])
            assert D.norm() <= 1e-14 * max(rgrid[r][c].norm(), 1.0), (s, r, c)


@pytest.mark.parametrize("comm", [MPI.COMM_SELF, pytest.param(MPI.COMM_WORLD,
                                                               marks=pytest.mark.mpi)])
@pytest.mark.parametrize("step", ["ilu", "amg"])
def test_iterative_per_step_solvers_give_the_lu_solution(comm, step):
    """GMRES + ILU(0) / BoomerAMG per-step solves in the sweep preconditioner and in the
    Cole–Hopf sweeps: the same discrete solution as with per-step LU."""
    from fem_mfc.solvers import solve
    lu = newton(problem(comm, nx=12, steps=6), linear="sweep")
    it = newton(problem(comm, nx=12, steps=6), linear="sweep",
                petsc_options={"sweep_step": step})
    assert it.path["step_kind"] == step and lu.path["step_kind"] == "lu"
    assert it.iterations == lu.iterations
    assert abs(it.J - lu.J) < 1e-10 and abs(it.J_value - lu.J_value) < 1e-10
    assert max(abs(a - b) for a, b in zip(it.mass, lu.mass)) < 1e-12
    a = solve(problem(comm, nx=12, steps=6, congested=False), "cole-hopf")
    b = solve(problem(comm, nx=12, steps=6, congested=False), "cole-hopf", step=step)
    assert abs(a.J - b.J) < 1e-8 * abs(a.J)


def test_per_step_lu_is_redundant_only_for_small_pivots_on_few_ranks():
    """The rule of fem_mfc.solvers.steps: one rank: PETSc LU; 2–4 ranks: the same LU on every
    rank below REDUNDANT_MAX_DOFS, and up to REDUNDANT_SOLVES_MAX_DOFS for factors serving
    many solves (the sweeps' factors); MUMPS distributed otherwise (faster at 251k 2D dofs on
    2 ranks for Cole–Hopf with 20 steps, slower for Newton, benchmarks/bench_scaling.py);
    more ranks: MUMPS."""
    from fem_mfc.solvers.steps import (
        REDUNDANT_MAX_DOFS,
        REDUNDANT_SOLVES,
        REDUNDANT_SOLVES_MAX_DOFS,
        redundant,
    )
    assert not redundant(1000, 1)
    assert redundant(1000, 2) and redundant(REDUNDANT_MAX_DOFS - 1, 4, solves=2)
    assert not redundant(REDUNDANT_MAX_DOFS, 2, solves=REDUNDANT_SOLVES - 1)
    assert not redundant(1000, 5)
    assert redundant(REDUNDANT_MAX_DOFS, 2) and redundant(251_001, 2, REDUNDANT_SOLVES)
    assert not redundant(REDUNDANT_SOLVES_MAX_DOFS, 2)


def test_ilu_steps_solve_1d_p2():
    """Per-step GMRES + ILU(0) on 1D P2 (3001 dofs): in dolfinx's dof numbering ILU(0) drops
    the fill it needs and GMRES stagnated (500 iterations, the Newton solve failed); in the
    RCM ordering the sweep reaches the LU path's solution."""
    mesh = dolfinx.mesh.create_interval(MPI.COMM_SELF, 1500, [-1.0, 1.0])
    x = ufl.SpatialCoordinate(mesh)
    p = ControlProblem(mesh=mesh, T=1.0, sigma=0.6, steps=20, degree=2, Phi=(x[0] - 0.5) ** 2,
                       G=lambda r: 0.5 * r ** 2, rho0=ufl.exp(-((x[0] + 0.4) ** 2) / 0.16))
    ilu = newton(p, linear="sweep", petsc_options={"sweep_step": "ilu"})
    lu = newton(dataclasses.replace(p), linear="sweep", petsc_options={"sweep_step": "lu"})
    assert ilu.converged and ilu.path["step_kind"] == "ilu"
    assert abs(ilu.J - lu.J) < 1e-9 * abs(lu.J)


@pytest.mark.slow
def test_sweep_preconditioned_spectrum():
    """The theory of kkt_pc's docstring, on a dense small system: M⁻¹K = I + M⁻¹[0 0; 0 C] has
    real eigenvalues ≥ 1 (mftc, C ≥ 0), a spread of them above 1 (a continuum of the
    congestion's scales, not a few outliers: why the Krylov count is what it is), and a
    Galerkin coarse space-time correction after the sweep narrows it without collapsing it,
    and so does a linearised-Riccati feedback δu = Σδρ + w: both make the stationary
    iteration 2-3x faster, and neither saves GMRES a single iteration — GMRES already
    exploits the real interval the sweep's spectrum lies in (benchmarks/bench_spectrum.py;
    docs/performance.md, "Where the Newton time goes")."""
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent.parent / "benchmarks"))
    from bench_spectrum import spectra
    out = spectra(8, 4)
    ev, rate, its = out["sweep M"]
    # (1 is a multiple, defective eigenvalue: computed to ≈ √ε)
    assert np.abs(ev.imag).max() < 1e-6 and ev.real.min() > 1 - 1e-4
    spread = np.abs(ev - 1)
    assert spread.max() > 0.1 and (spread > 1e-2).sum() >= 10
    ev2, rate2, its2 = out["sweep + coarse B"]
    assert np.abs(ev2 - 1).max() < 0.8 * spread.max() and rate2 < rate
    assert (np.abs(ev2 - 1) > 1e-2).sum() >= 5
    ev3, rate3, its3 = out["feedback s=1.2"]
    assert np.abs(ev3 - 1).max() < 0.35 * spread.max() and rate3 < 0.4 * rate
    assert its3 >= its - 1 and its2 >= its - 1 and 8 <= its <= 12


@pytest.mark.parametrize("coupling", ["mftc", "mfg", "attractive"])
def test_midpoint_coupling_blocks_are_sums_of_one_per_interval(coupling):
    """Crank–Nicolson couplings of ρ̄ = (ρⁿ + ρⁿ⁺¹)/2 (Formulation.midpoint_coupling): the
    KKT operator stores C(n, n+1) and C(1, 1) only, and with the others as sums of them its
    product equals the assembled Jacobian's at random states; backward Euler has no such
    blocks."""
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent.parent / "benchmarks"))
    from bench_matrix import problem as bench_problem

    from fem_mfc.solvers.kkt import KKTOperator
    st = SpaceTime(bench_problem(2, 1, 8, 5, coupling))
    assert st.formulation.midpoint_coupling
    rng = np.random.default_rng(3)
    for f in st.rho[1:] + st.u:
        f.x.array[:] = 1 + 0.3 * rng.random(f.x.array.size)
    op = KKTOperator(st)
    L, N = st.layout, st.N
    rho = set(L.forward_fields())
    stored_rr = {(r, c) for (r, c) in op.stored if r in rho and c in rho}
    assert len(stored_rr) == N and len(op.combined) == 2 * N - 2
    assert product_error(op, st.jacobian(None), rng) <= 1e-13
    be = SpaceTime(dataclasses.replace(bench_problem(2, 1, 8, 5, coupling),
                                       scheme="backward-euler"))
    assert not be.formulation.midpoint_coupling


@pytest.mark.parametrize("coupling, G", [("mftc", lambda r: r ** 3 / 3),
                                         ("mfg", lambda r: r ** 3)])
def test_state_dependent_shared_blocks_follow_the_states(coupling, G):
    """A non-quadratic G under Crank–Nicolson: each stored C(n, n+1) serves four blocks and
    changes with the states.  At the constant initial guess all of them are equal, so the
    product must not merge them for good (as it does the state-independent ones): after an
    update away from the guess it still equals the assembled Jacobian, and Newton on the
    sweep path reaches the LU path's solution (it converged to another point before, with a
    small trapezoid residual: the value identity was off by 4 %)."""
    p = dataclasses.replace(problem(steps=4, coupling=coupling), G=G)
    st = SpaceTime(p)
    assert st.formulation.midpoint_coupling and st.quadratic
    op = KKTOperator(st)                      # at the trivial guess: every level alike
    ref = SpaceTime(p, cache=False)
    rng = np.random.default_rng(0)
    for seed in (1, 2):
        X = perturbed(st, seed)
        op.update(X)
        assert product_error(op, ref.jacobian(X), rng) <= 1e-13, seed
    op.destroy()
    lu = newton(dataclasses.replace(problem(steps=6, coupling=coupling), G=G), linear="lu")
    sw = newton(dataclasses.replace(problem(steps=6, coupling=coupling), G=G),
                linear="sweep")
    assert lu.converged and sw.converged and sw.reason == "CONVERGED_FNORM_RELATIVE"
    assert abs(sw.J - lu.J) < 1e-10 and abs(sw.J - sw.J_value) < 1e-9 * abs(sw.J)
    assert max_diff(sw.rho, lu.rho) < 1e-8 and max_diff(sw.u, lu.u) < 1e-8


@pytest.mark.parametrize("scheme, coupling", [(CN, "mftc"), (BE, "mftc"), (CN, "mfg")])
def test_product_follows_a_change_of_the_coupling_strength(scheme, coupling):
    """The product merges state-independent matrices that are multiples of each other (the
    congestion blocks and E = M/θ) with factors computed once; a continuation in the
    coupling strength scales some of them and not others, so the factors are computed again
    (they were not: the Jacobian of every stage with λ ≠ the first one's was off by 2–11 %).
    Also the declared fact behind merging the game's blocks: with c affine in ρ the ρ–ρ
    blocks do not change with the states (constant_coupling), with G = ρ³/3 they do."""
    p = problem(steps=4, scheme=scheme, coupling=coupling)
    st = SpaceTime(p)
    assert st.formulation.constant_coupling
    op = KKTOperator(st)
    rng = np.random.default_rng(0)
    assert product_error(op, st.jacobian(None), rng) <= 1e-13      # plan at λ = 1
    X = perturbed(st, 1)
    st.set_parameter("coupling", 0.3)
    op.update(X)
    ref = SpaceTime(p, cache=False)
    ref.set_parameter("coupling", 0.3)
    assert product_error(op, ref.jacobian(X), rng) <= 1e-13
    op.destroy()
    rho = set(st.layout.forward_fields())
    for G, constant in ((p.G, True), (lambda r: r ** 3 / 3, False)):
        q = dataclasses.replace(p, G=G)
        a, b = (SpaceTime(q, cache=False) for _ in range(2))
        assert a.formulation.constant_coupling == constant
        b.vec_to_states(perturbed(b, 2, scale=0.3))
        diffs = [rel_diff(a.assemble_block(r, c), b.assemble_block(r, c),
                          a.assemble_block(r, c))
                 for (r, c) in a.block_keys if r in rho and c in rho]
        assert diffs and (max(diffs) < 1e-13 if constant else min(diffs) > 1e-3), diffs


def test_time_parallel_sweep_variants_cost_krylov_iterations():
    """benchmarks/bench_time_parallel.py (the README's "Scaling"): the time-parallel variants
    of the sweep preconditioner — time chunks without their couplings, the two sweeps
    independent — stay valid preconditioners (same J) but need more Krylov iterations, the
    more the more chunks: the measurement behind "time-parallel sweeps do not pay on 2
    ranks"."""
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent.parent / "benchmarks"))
    from bench_time_parallel import rows

    from fem_mfc.solvers import layout
    before = layout.SpaceTimeLayout.before_in_forward_sweep
    out = {o["label"]: o for o in rows(12, 8, chunks=(2, 4))}
    assert layout.SpaceTimeLayout.before_in_forward_sweep is before      # restored
    k = {label: sum(o["krylov"]) for label, o in out.items()}
    ref = out["sweep (reference)"]
    assert all(o["converged"] and abs(o["J"] - ref["J"]) < 1e-9 for o in out.values())
    assert k["sweep (reference)"] < k["2 time chunks"] < k["4 time chunks"]
    assert k["concurrent sweeps"] > k["sweep (reference)"]


def test_a_failed_per_step_solve_is_named_in_the_result():
    """An exception in the sweep preconditioner reaches PETSc as an error code only; the
    result names its cause (here per-step GMRES limited to one iteration) instead of
    "error code -1", and the run is flagged unconverged."""
    r = newton(problem(), linear="sweep",
               petsc_options={"sweep_step": "ilu", "sweep_ksp_max_it": 1})
    assert not r.converged
    assert "per-step solve of equation" in r.reason and "KSP reason -3" in r.reason
