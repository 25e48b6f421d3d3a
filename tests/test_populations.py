"""Several populations (forms/populations.py, fem_mfc/populations.py): the joint Newton on
K-valued level fields against single-population solves, mirror symmetry, discrete duality and
Newton's quadratic convergence, manufactured convergence orders in h and τ."""
from mpi4py import MPI

import dolfinx
import numpy as np
import pytest
import ufl

from fem_mfc.errors import ConfigError
from fem_mfc.populations import ManufacturedPopulations, Population, PopulationProblem, errors
from fem_mfc.problem import ControlProblem
from fem_mfc.solvers import newton, solve
from fem_mfc.solvers.spacetime import SpaceTime
from helpers import kkt_blocks, observed_orders

BE, CN = "backward-euler", "crank-nicolson"


def square(nx=12, comm=MPI.COMM_SELF, diagonal="right"):
    return dolfinx.mesh.create_rectangle(comm, [[-1, -1], [1, 1]], [nx, nx],
                                         diagonal=getattr(dolfinx.mesh.DiagonalType, diagonal))


def gauss(x, m, s=0.25):
    return ufl.exp(-((x[0] - m[0]) ** 2 + (x[1] - m[1]) ** 2) / (2 * s ** 2))


def two_crowds(mesh):
    """Two different populations: their data as keyword dicts of ControlProblem."""
    x = ufl.SpatialCoordinate(mesh)
    return [dict(rho0=gauss(x, (-0.5, 0.1)), Phi=2 * ((x[0] - 0.5) ** 2 + x[1] ** 2),
                 V=0.3 * x[1] ** 2, sigma=0.5),
            dict(rho0=gauss(x, (0.5, -0.1)), Phi=(x[0] + 0.5) ** 2, sigma=0.7,
                 G=lambda r: r ** 2)]


def fields_diff(pp, joint, k, single):
    return max(np.abs(pp.component(a, k).x.array - b.x.array).max()
               for a, b in zip(joint.rho + joint.u, single.rho + single.u))


@pytest.mark.parametrize("scheme", [BE, CN])
def test_decoupled_equals_single_solves(scheme):
    """C diagonal: population k sees only itself, κ_k ρ_k²/2 on top of its own G_k, so the
    joint solve is two single-population solves with G = G_k + C_kk ρ²/2 (J adds up)."""
    mesh = square()
    data = two_crowds(mesh)
    C = [[1.0, 0.0], [0.0, 2.0]]
    pp = PopulationProblem(mesh=mesh, T=1.0, steps=6, scheme=scheme, interaction=C,
                           populations=[Population(**d) for d in data])
    joint = solve(pp, "newton", rtol=1e-11)
    assert joint.converged and abs(joint.J - joint.J_value) < 1e-9 * abs(joint.J)
    own = [lambda r: 0.5 * r ** 2, lambda r: r ** 2 + r ** 2]    # C_kk ρ²/2 + G_k
    J = 0.0
    for k, d in enumerate(data):
        single = solve(ControlProblem(mesh=mesh, T=1.0, steps=6, scheme=scheme,
                                      **dict(d, G=own[k])), "newton", rtol=1e-11)
        J += single.J
        assert fields_diff(pp, joint, k, single) < 1e-8, k
        m = joint.populations["mass"][k]
        assert np.allclose(m, single.mass, atol=1e-13, rtol=0)
    assert abs(J - joint.J) < 1e-10 * abs(J)
    assert max(joint.populations["mass_error"]) < 1e-12


def test_one_population_equals_the_single_population_system():
    """K = 1, C = [[κ]] is the single-population system with G = κρ²/2 (mftc)."""
    mesh = square(8)
    d = two_crowds(mesh)[0]
    pp = PopulationProblem(mesh=mesh, T=1.0, steps=4, scheme=CN, interaction=[[3.0]],
                           populations=[Population(**d)])
    a = solve(pp, "newton", rtol=1e-12)
    b = solve(ControlProblem(mesh=mesh, T=1.0, steps=4, scheme=CN,
                             G=lambda r: 1.5 * r ** 2, **d), "newton", rtol=1e-12)
    assert abs(a.J - b.J) < 1e-11 and abs(a.J_value - b.J_value) < 1e-11
    assert fields_diff(pp, a, 0, b) < 1e-10


def corridor(nx=24, ny=8, comm=MPI.COMM_SELF):
    """(−2, 2) × (−1, 1), crossed diagonals: the mesh is mirror symmetric in x0 ↦ −x0."""
    return dolfinx.mesh.create_rectangle(comm, [[-2, -1], [2, 1]], [nx, ny],
                                         diagonal=dolfinx.mesh.DiagonalType.crossed)


def crossing(mesh, C=((1.0, 0.6), (0.6, 1.0)), coupling="mftc", scheme=CN, steps=8):
    """Two crowds crossing the corridor: east-bound from the left, west-bound its mirror."""
    x = ufl.SpatialCoordinate(mesh)
    east = Population(rho0=gauss(x, (-1.2, 0.2), 0.3), Phi=2.0 * (x[0] - 1.2) ** 2,
                      V=0.5 * x[1] ** 2, sigma=0.5, G=lambda r: 0.25 * r ** 2, name="east")
    west = Population(rho0=gauss(x, (1.2, 0.2), 0.3), Phi=2.0 * (x[0] + 1.2) ** 2,
                      V=0.5 * x[1] ** 2, sigma=0.5, G=lambda r: 0.25 * r ** 2, name="west")
    return PopulationProblem(mesh=mesh, T=1.0, steps=steps, scheme=scheme, coupling=coupling,
                             interaction=[list(r) for r in C], populations=[east, west])


def mirror_map(V):
    """The permutation of the scalar dofs of V under x0 ↦ −x0 (owned dofs, serial)."""
    X = V.tabulate_dof_coordinates()
    Y = X.copy()
    Y[:, 0] *= -1
    key = {tuple(np.round(p, 10)): i for i, p in enumerate(X)}
    return np.array([key[tuple(np.round(p, 10))] for p in Y])


@pytest.mark.parametrize("coupling", ["mftc", "mfg"])
def test_symmetric_crossing(coupling):
    """Mirrored ρ_0, Φ and a symmetric C: the solution is mirror symmetric (population east
    at x is west at the mirror of x) to solver tolerance, masses exact, and the crowds do
    interact (the solution differs from the decoupled one)."""
    pp = crossing(corridor(), coupling=coupling)
    r = solve(pp, "newton", rtol=1e-11)
    assert r.converged and abs(r.J - r.J_value) < 1e-9 * abs(r.J)
    perm = mirror_map(pp.scalar_space)
    scale = max(np.abs(f.x.array).max() for f in r.rho + r.u)
    asym = max(np.abs(pp.component(f, 0).x.array[perm] - pp.component(f, 1).x.array).max()
               for f in r.rho + r.u) / scale
    print(f"{coupling}: {r.iterations} Newton steps, {r.seconds:.2f} s, asymmetry {asym:.2e},"
          f" mass errors {r.populations['mass_error']}")
    assert asym < 1e-9, asym
    for ms in r.populations["mass"]:
        assert max(abs(m - 1.0) for m in ms) < 1e-12
    free = solve(crossing(corridor(), C=((1.0, 0.0), (0.0, 1.0)), coupling=coupling),
                 "newton", rtol=1e-11)
    gap = max(np.abs(a.x.array - b.x.array).max() for a, b in zip(r.rho, free.rho))
    assert gap > 1e-2 * max(np.abs(a.x.array).max() for a in r.rho)


@pytest.mark.parametrize("scheme", [BE, CN])
@pytest.mark.parametrize("coupling,C", [("mftc", ((1.0, 0.6), (0.6, 2.0))),
                                        ("mfg", ((1.0, 0.9), (-0.3, 2.0)))])
def test_discrete_duality(scheme, coupling, C):
    """The FP rows' ρ-block is the transpose of the HJB rows' u-block (any C); the whole
    KKT matrix is symmetric for mftc (one Lagrangian) and not for a non-symmetric game."""
    pp = crossing(corridor(6, 4), C=C, coupling=coupling, scheme=scheme, steps=3)
    M, fp, hjb = kkt_blocks(SpaceTime(pp))
    assert np.abs(fp).max() > 0.1
    assert np.abs(fp - hjb.T).max() < 1e-13 * np.abs(fp).max()
    asym = np.abs(M - M.T).max() / np.abs(M).max()
    assert asym < 1e-13 if coupling == "mftc" else asym > 1e-4


def test_newton_converges_quadratically():
    pp = crossing(corridor(16, 6), steps=6)
    r = solve(pp, "newton", rtol=1e-12, linear="lu")
    h = [e["residual"] for e in r.history]
    assert r.iterations <= 8, h
    assert any(b < 10 * a ** 2 and a < 1e-2 for a, b in zip(h, h[1:])), h


def mms(nx, steps, degree, scheme, coupling="mftc", time="affine", space="trig", C=None):
    mesh = dolfinx.mesh.create_unit_square(MPI.COMM_SELF, nx, nx)
    C = C or ([[1.0, 0.5], [0.5, 2.0]] if coupling == "mftc" else [[1.0, 0.8], [-0.4, 2.0]])
    ex = ManufacturedPopulations(mesh, 1.0, [0.5, 0.7], C, Gs=[None, lambda r: r ** 2],
                                 coupling=coupling, time=time, space=space)
    pp = ex.problem(mesh, steps, degree=degree, scheme=scheme)
    r = solve(pp, "newton", rtol=1e-11)
    assert r.converged
    return errors(pp, r)


@pytest.mark.parametrize("coupling", ["mftc", "mfg"])
def test_mms_exact_in_p2_and_time(coupling):
    """Quadratic in x, affine in t: P2 + midpoint reproduce the coupled solution exactly."""
    e = mms(3, 2, 2, CN, coupling, time="affine", space="quadratic")
    assert e["u"] < 1e-10 and e["rho"] < 1e-10, e


@pytest.mark.parametrize("coupling", ["mftc", "mfg"])
@pytest.mark.parametrize("degree,levels,order", [(1, (8, 16, 32), 1.8), (2, (4, 8, 16), 2.8)])
def test_mms_space_rate(coupling, degree, levels, order):
    """Affine in t + midpoint: pure spatial errors, P1 → order 2, P2 → order 3 in L²."""
    res = [mms(nx, 2, degree, CN, coupling) for nx in levels]
    for key in ("u", "rho"):
        r = observed_orders([e[key] for e in res], [1 / n for n in levels])
        print(coupling, degree, key, [e[key] for e in res], r)
        assert min(r) >= order, (key, r)


@pytest.mark.parametrize("scheme,steps,order", [(BE, (32, 64, 128), 0.9),
                                                (CN, (4, 8, 16), 1.8)])
def test_mms_time_rates(scheme, steps, order):
    """Quadratic in x (P2 exact in space), trigonometric in t: BE order 1, CN order 2."""
    res = [mms(3, n, 2, scheme, "mftc", time="smooth", space="quadratic") for n in steps]
    for key in ("u", "rho"):
        r = observed_orders([e[key] for e in res], [1 / n for n in steps])
        print(scheme, key, r)
        assert min(r) >= order, (scheme, key, r)


def test_bad_input():
    mesh = square(4)
    pops = [Population(rho0=1.0), Population(rho0=1.0)]
    with pytest.raises(ConfigError, match="symmetric") as e:
        PopulationProblem(mesh=mesh, T=1.0, steps=2, populations=pops,
                          interaction=[[1.0, 0.5], [0.2, 1.0]])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="2 x 2"):
        PopulationProblem(mesh=mesh, T=1.0, steps=2, populations=pops, interaction=[[1.0]])
    with pytest.raises(ConfigError, match=r"population\[1\].rho0"):
        PopulationProblem(mesh=mesh, T=1.0, steps=2,
                          populations=[Population(rho0=1.0), Population(rho0=0.0)])
    pp = PopulationProblem(mesh=mesh, T=1.0, steps=2, populations=pops)
    with pytest.raises(ConfigError, match="solver.method"):
        solve(pp, "picard")
    with pytest.raises(ConfigError, match="initial_guess"):
        solve(pp, "newton", initial_guess="cole-hopf")


@pytest.mark.parametrize("coupling,C", [("mftc", ((1.0, 0.6), (0.6, 1.0))),
                                        ("mfg", ((1.0, 0.9), (0.2, 1.0)))])
def test_sweep_path_equals_lu_path(coupling, C):
    """The sweep preconditioner's declared structure (mirror Q = Pᵀ, B_n = αP_n + E) holds
    for the K-valued system, also with a non-symmetric game C (the asymmetry is in the ρ–ρ
    blocks only): the sweep path reaches the LU path's solution."""
    lu = solve(crossing(corridor(16, 6), C, coupling, steps=6), "newton", rtol=1e-12,
               linear="lu")
    sw = solve(crossing(corridor(16, 6), C, coupling, steps=6), "newton", rtol=1e-12,
               linear="sweep")
    assert sw.path["linear"] == "sweep" and lu.path["linear"] == "lu"
    assert abs(lu.J - sw.J) < 1e-10 * abs(lu.J)
    assert max(np.abs(a.x.array - b.x.array).max() for a, b in zip(lu.rho, sw.rho)) < 1e-8


def test_coupling_strength_scales_every_interaction():
    """The continuation parameter s multiplies every G_k and C: at s = 0 the crowds are the
    uncoupled, uncongested problem."""
    from fem_mfc.solvers.newton import newton
    pp = crossing(corridor(12, 4), steps=4)
    st = SpaceTime(pp)
    assert set(st.parameters) == {"coupling"}
    st.set_parameter("coupling", 0.0)
    a = newton(pp, system=st, rtol=1e-12, continuation=False)
    free = crossing(corridor(12, 4), C=((0.0, 0.0), (0.0, 0.0)), steps=4)
    for p in free.populations:
        p.G = None
    b = solve(free, "newton", rtol=1e-12)
    assert "coupling" not in SpaceTime(free).parameters
    assert abs(a.J - b.J) < 1e-10 * abs(b.J)


def test_value_identity_exact_for_a_non_polynomial_self_congestion():
    """G_k = exp(ρ_k) in one population: the populations' forms share one quadrature rule
    (PopulationsData.dx, as StepData.dx for one population), so the discrete value identity
    holds to round-off, not to the quadrature error."""
    pp = crossing(corridor(8, 4), steps=4)
    pp.populations[0].G = lambda r: ufl.exp(r)
    assert pp.step_data().dx != ufl.dx
    r = newton(pp, linear="lu")
    assert r.converged and abs(r.J - r.J_value) < 1e-12 * abs(r.J), abs(r.J - r.J_value)
