"""The sweep-preconditioned Krylov Newton step (solvers/kkt_pc.py) against LU.

Serial: ``python3 -m pytest tests/test_kkt_pc.py``; the ``mpi`` test runs under
``mpirun -n 2 python3 -m pytest --with-mpi -m mpi tests/test_kkt_pc.py``."""
import dolfinx
import numpy as np
import pytest
import ufl
from mpi4py import MPI
from petsc4py import PETSc

from fem_mfc.errors import ConfigError
from fem_mfc.problem import ControlProblem
from fem_mfc.solvers import newton
from fem_mfc.solvers.kkt_pc import KKTOperator, SweepPC
from fem_mfc.solvers.newton import ETA_MAX, KSP_RTOL, Forcing, linear_mode
from fem_mfc.solvers.spacetime import SpaceTime

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


@pytest.mark.parametrize("scheme,coupling", [(CN, "mftc"), (BE, "mftc"), (CN, "mfg")])
def test_sweep_matches_lu(scheme, coupling):
    lu = newton(problem(scheme=scheme, coupling=coupling), linear="lu")
    sw = newton(problem(scheme=scheme, coupling=coupling), linear="sweep")
    assert_same(lu, sw)
    its = [h["ksp_its"] for h in sw.history[:-1]]
    assert len(its) == sw.iterations and all(1 <= n < 60 for n in its)


def test_sweep_selected_by_petsc_options():
    lu = newton(problem(), linear="lu")
    for opts in ({"linear": "sweep"}, {"ksp_type": "fgmres", "pc_type": "shell"}):
        sw = newton(problem(), petsc_options=opts)
        assert sw.history[0]["ksp_its"] > 1          # Krylov, not preonly LU
        assert_same(lu, sw)


def test_auto_chooses_by_size():
    small, big = SpaceTime(problem(nx=4, steps=2)), SpaceTime(problem(nx=40, steps=30))
    assert linear_mode(small, "auto", "t_auto_") == "lu"
    assert linear_mode(big, "auto", "t_auto_") == "sweep"
    assert linear_mode(big, "auto", "t_auto_", hjb_fp=False) == "lu"   # QHD, pair: LU
    assert linear_mode(big, "sweep", "t_auto_", hjb_fp=False) == "sweep"
    with pytest.raises(ConfigError):
        linear_mode(small, "cholesky", "t_auto_")


@pytest.mark.parametrize("mirror", [True, False])
def test_pc_is_exact_without_congestion(mirror):
    """G = 0: the ρ–ρ blocks vanish and one forward–backward sweep inverts the Jacobian."""
    st = SpaceTime(problem(congested=False, steps=3))
    rng = np.random.default_rng(0)
    for f in st.rho[1:] + st.u:                      # a generic (non-solution) state
        f.x.array[:] += 0.1 * rng.standard_normal(f.x.array.size)
    op = KKTOperator(st, mirror=mirror)
    assert bool(op.mirror) == mirror
    pc = PETSc.PC().create(st.comm)
    pc.setType("python")
    ctx = SweepPC(op)
    pc.setPythonContext(ctx)
    pc.setOperators(op.mat)
    pc.setUp()
    x, y, z = st.create_vec(), st.create_vec(), st.create_vec()
    x.setArray(rng.standard_normal(x.getLocalSize()))
    op.mat.mult(x, y)
    pc.apply(y, z)
    z.axpy(-1.0, x)
    assert z.norm() < 1e-10 * x.norm()
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


@pytest.mark.parametrize("scheme", [CN, BE])
def test_derived_blocks_equal_assembled(scheme):
    """B_n = ∂FP_n/∂ρⁿ formed as αP_n + E equals its assembly at new states."""
    st = SpaceTime(problem(scheme=scheme, steps=4))
    op = KKTOperator(st, derive=True)
    X0 = st.create_vec()
    st.states_to_vec(X0)
    assert op.update(X0) is op.mat and op.assemblies == 1     # unchanged: no reassembly
    op.update(perturbed(st, 1))                                # verification at a new state
    assert bool(op.derived) == (scheme == CN)                  # BE: ∂FP/∂ρⁿ = M is constant
    X = perturbed(st, 2)
    op.update(X)
    ref = KKTOperator(SpaceTime(problem(scheme=scheme, steps=4)), derive=False)
    ref.update(X)
    for r, row in enumerate(op.grid):
        for c, A in enumerate(row):
            if A is not None and (r, c) not in op.mirror:
                D = A.copy()
                D.axpy(-1.0, ref.grid[r][c])
                assert D.norm() <= 1e-12 * max(A.norm(), 1.0), (r, c)
    op.destroy(), ref.destroy()


@pytest.mark.parametrize("comm,scheme", [(MPI.COMM_SELF, CN), (MPI.COMM_SELF, BE),
                                         pytest.param(MPI.COMM_WORLD, CN, marks=pytest.mark.mpi)])
def test_grouped_product_equals_matnest(comm, scheme):
    """KKTProduct (terms grouped by matrix: one product per P_n, P_nᵀ, A_n, shared matrices
    over all their columns at once) multiplies like the MatNest, before and after the B_n
    are derived, and makes fewer products than the MatNest has blocks."""
    st = SpaceTime(problem(comm, steps=5, scheme=scheme))
    op = KKTOperator(st)
    x, y, z = st.create_vec(), st.create_vec(), st.create_vec()
    x.setRandom()
    nest_blocks = sum(A is not None for row in op.grid for A in row)
    for seed in (1, 2):                                # states of the construction, then new
        op.update(perturbed(st, seed))
        op.mat.mult(x, y)
        op.product.mat.mult(x, z)
        z.axpy(-1.0, y)
        assert z.norm() <= 1e-14 * y.norm(), (seed, z.norm())
    assert bool(op.derived) == (scheme == CN)
    plan = op.product.plan()
    batched = [p for p in plan if p[0] == "batch"]
    # per level at most P_n, P_nᵀ, A_n one product each; the shared matrices (congestion
    # blocks τG''θ²M, τG''θ(1−θ)M and E = M/θ, G = ρ²/2) merged into one batched product
    assert len(batched) == 1 and len(plan) <= 3 * 5 + 1 + 2 < nest_blocks
    op.destroy()


def test_failed_derivation_check_assembles_every_block(monkeypatch):
    """If B_n = αP_n + E does not hold at the first new state, the B_n skipped for the check
    are assembled (and nothing else twice) and the operator equals a fully assembled one."""
    from fem_mfc.solvers import kkt_pc
    st = SpaceTime(problem(steps=5))
    op = KKTOperator(st, derive=True)
    assert len(op._candidates) > 2
    monkeypatch.setattr(kkt_pc, "DERIVE_RTOL", -1.0)          # the check at X fails
    X = perturbed(st, 3)
    calls = []
    asm = st._assembler.assemble
    st._assembler.assemble = lambda A, a, ev=None: calls.append(A.handle) or asm(A, a, ev)
    op.update(X)
    assert not op.derived
    assert len(calls) == len(set(calls))                       # no block assembled twice
    ref = KKTOperator(SpaceTime(problem(steps=5)), derive=False)
    ref.update(X)
    for r, c in op._candidates:
        D = op.grid[r][c].copy()
        D.axpy(-1.0, ref.grid[r][c])
        assert D.norm() <= 1e-12 * ref.grid[r][c].norm(), (r, c)
    op.destroy(), ref.destroy()


def test_reuse_coinciding_pivots_and_lagging():
    """Exact reuse: the first Newton step (constant guess, all pivots equal) factorises once
    and the Krylov counts are those without reuse; a loose tolerance lags factors (fewer
    factorisations, same solution)."""
    lu = newton(problem(), linear="lu")
    sw = newton(problem(), linear="sweep", petsc_options={"sweep_reuse_rtol": 1e-13})
    assert_same(lu, sw)
    fac = [h["factorisations"] for h in sw.history if "factorisations" in h]
    assert fac[0] == 2 and fac[-1] == 2 * (1 + (sw.iterations - 1) * 4)   # P_n and P_nᵀ
    full = newton(problem(), linear="sweep", petsc_options={"sweep_reuse_rtol": -1})
    assert [h["ksp_its"] for h in full.history[:-1]] == [h["ksp_its"] for h in sw.history[:-1]]
    assert full.history[-2]["factorisations"] == full.iterations * 8
    lag = newton(problem(), linear="sweep", petsc_options={"sweep_reuse_rtol": 0.05})
    assert_same(lu, lag)
    assert lag.history[-2]["factorisations"] < sw.history[-2]["factorisations"]


def test_transpose_factors():
    """Explicit factors of P_nᵀ for the HJB sweep (with lagged factors): same iterates."""
    lu = newton(problem(), linear="lu")
    opts = {"sweep_reuse_rtol": 0.01, "sweep_transpose_factors": True}
    assert_same(lu, newton(problem(), linear="sweep", petsc_options=opts))


@pytest.mark.mpi
def test_sweep_parallel_reuse_matches_serial_lu():
    opts = {"sweep_reuse_rtol": 0.05, "sweep_transpose_factors": True}
    par = newton(problem(MPI.COMM_WORLD, nx=12, steps=6), linear="sweep", petsc_options=opts)
    ser = newton(problem(MPI.COMM_SELF, nx=12, steps=6), linear="lu")
    assert par.iterations == ser.iterations
    assert abs(par.J - ser.J) < 1e-9 and abs(par.J_value - ser.J_value) < 1e-9


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
    when the residual is quadratic (G = ρ²/2, mftc; both schemes).  The check is symbolic and
    conservative (mfg's c = G/ρ as UFL writes it is not recognised); G = ρ³/3 (c = ρ²) is
    quadratic, G = ρ⁴/4 is not."""
    from fem_mfc.solvers.kkt_pc import TrapezoidResidual
    assert not SpaceTime(problem(steps=2, coupling="mfg")).quadratic
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
        assert SpaceTime(p).quadratic == quadratic


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
    calls = []
    asm = st._assembler.assemble
    st._assembler.assemble = lambda A, a, ev=None: calls.append(1) or asm(A, a, ev)
    grid = st.block_grid()
    n_blocks = sum(A is not None for row in grid for A in row)
    assert len(calls) < n_blocks // 3
    ref = SpaceTime(problem(comm, steps=5))
    for (r, c), (key, k) in st.block_keys.items():
        ref.load(k)
        B = ref._assembler.create(ref.jac[key])
        ref._assembler.assemble(B, ref.jac[key])
        D = grid[r][c].copy()
        D.axpy(-1.0, B)
        assert D.norm() <= 1e-14 * max(B.norm(), 1.0), (r, c)
    key = ("u", "rho_next")                            # P_n, one matrix per level
    assert st._memo[key][1] is not st._mats[(key, 3)]
    st._memo[key][1].scale(2.0)                        # changed since it was memoised
    st.load(3)
    A = st.block(key, 3)
    st._assembler.assemble(B := A.duplicate(), st.jac[key])
    D = A.copy()
    D.axpy(-1.0, B)
    assert D.norm() <= 1e-14 * B.norm()


@pytest.mark.parametrize("comm", [MPI.COMM_SELF, pytest.param(MPI.COMM_WORLD,
                                                               marks=pytest.mark.mpi)])
def test_residual_rows_of_equal_levels_are_reused(comm):
    """At the constant initial guess the residual rows of the interior levels coincide: a few
    assemblies, the same residual as assembling every row; at other states every row is
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
    ref = SpaceTime(problem(comm, steps=6))

    class Forgetful(dict):                             # remembers nothing: always assemble
        def __setitem__(self, key, value):
            pass

    ref._row_memo = Forgetful()
    G = ref.create_vec()
    ref.residual(None, G)
    G.axpy(-1.0, F)
    assert G.norm() == 0.0
