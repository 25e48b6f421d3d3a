"""LQ Gaussian oracle (MODEL §7.1): convergence rates, mass, value identity of the HJB–FP solver."""
import math

from mpi4py import MPI

import dolfinx
import pytest

from fem_mfc.exact import ErrorNorms, LQGaussian
from fem_mfc.problem import ControlProblem
from fem_mfc.solvers import newton
from helpers import observed_orders

SIGMA, BE, CN = math.sqrt(0.1), "backward-euler", "crank-nicolson"


def lq_run(nx, steps, degree, scheme, d=1, L=4.0, table=False):
    if d == 1:
        mesh = dolfinx.mesh.create_interval(MPI.COMM_SELF, nx, [-L, L])
    else:
        mesh = dolfinx.mesh.create_rectangle(MPI.COMM_SELF, [[-L, -L], [L, L]], [nx, nx])
    theta = 1.0 if scheme == BE else 0.5
    ex = LQGaussian(mesh, 1.0, SIGMA, a=1.0, mean=[0.5] * d, std=0.5,
                    discrete_time=(steps, theta) if table else None)
    p = ControlProblem(mesh=mesh, T=1.0, sigma=SIGMA, steps=steps, degree=degree, scheme=scheme,
                       V=ex.V, Phi=ex.Phi, rho0=ex.rho(0.0), exact=ex)
    r = newton(p)
    norms = ErrorNorms(ex, p.space)
    e = norms(r)
    e["u_space"] = norms(r, ex.time_discrete_u(steps, theta))["u"]   # time error removed
    return r, e, ex


def test_space_rates_p1_1d():
    cells = (40, 80, 160)
    res = [lq_run(nx, 40, 1, CN)[1] for nx in cells]
    for key in ("u_space", "rho", "J"):
        r = observed_orders([e[key] for e in res], [1 / c for c in cells])
        assert min(r) >= 1.8, (key, r)


@pytest.mark.slow
def test_space_rates_p2_1d():
    """P2 contains the (quadratic) time-discrete u: it is reproduced to round-off; ρ → h³."""
    cells = (24, 48, 96)
    res = [lq_run(nx, 80, 2, CN, table=True)[1] for nx in cells]
    assert max(e["u_space"] for e in res) < 1e-10
    r = observed_orders([e["rho"] for e in res], [1 / c for c in cells])
    assert min(r) >= 2.7, r


@pytest.mark.slow
def test_time_rates_1d():
    for scheme, steps, order in ((BE, (4, 8, 16), 0.8), (CN, (8, 16, 32), 1.75)):
        res = [lq_run(160, n, 2, scheme)[1] for n in steps]
        for key in ("u", "rho", "J"):
            r = observed_orders([e[key] for e in res], [1 / n for n in steps])
            assert min(r) >= order, (scheme, key, r)


def test_space_rates_p1_2d():
    cells = (12, 24)
    res = [lq_run(nx, 8, 1, CN, d=2, L=3.0)[1] for nx in cells]
    for key in ("u_space", "rho", "J"):
        assert observed_orders([e[key] for e in res], [1 / c for c in cells])[0] >= 1.8, key


@pytest.mark.slow
@pytest.mark.parametrize("scheme", [BE, CN])
def test_mass_and_value_identity(scheme):
    gaps, naive = [], []
    for nx, steps in ((40, 10), (80, 20), (160, 40)):
        r, e, ex = lq_run(nx, steps, 1, scheme)
        assert r.mass_error < 1e-10 * len(r.mass)
        assert max(abs(m - 1.0) for m in r.mass) < 1e-10
        # discrete value identity: exact at the discrete solution (solver tolerance)
        assert abs(r.J - r.J_value) < 1e-9
        # the continuous identity with ∫u⁰ρ_0 (no discrete correction) converges
        import ufl
        u0rho0 = dolfinx.fem.assemble_scalar(dolfinx.fem.form(r.u[0] * r.rho[0] * ufl.dx))
        naive.append(abs(u0rho0 - ex.J))
        gaps.append(e["J"])
    assert naive[-1] < naive[0] / 3 and gaps[-1] < gaps[0] / 3


@pytest.mark.parametrize("section,key,value,name", [
    ("problem", "Phi", "10*x0**4", "problem.Phi"), ("problem", "V", "t*x0", "problem.V"),
    ("rho0", "kind", "formula", "rho0.kind")])
@pytest.mark.parametrize("solution", ["lq-gaussian", "manufactured"])
def test_exact_solution_refuses_a_problem_it_would_replace(solution, section, key, value,
                                                           name, tmp_path):
    """An exact solution sets V, Φ and ρ_0 itself.  A config that gives others was solved as the
    exact solution's problem and reported success (the same J for Phi = 10 x⁴ as for 0, and a
    `config.toml` that did not reproduce the run); now refused with one line naming the key."""
    import tomllib

    from fem_mfc import config
    from fem_mfc.errors import ConfigError
    from fem_mfc.pipeline import run_config
    from helpers import REPO
    raw = tomllib.loads((REPO / "demos" / "lq_gaussian_1d.toml").read_text())
    raw["exact"]["solution"] = solution
    raw["output"] = {"figures": False, "vtx": False, "progress": False}
    raw[section][key] = value
    if key == "kind":                   # (a formula's density: no Gaussian's mean and std)
        raw["rho0"] = {"kind": "formula", "formula": "4 + x0"}
    elif solution == "manufactured":    # it sets rho0 itself: the demo's mean and std go
        del raw["rho0"]
    with pytest.raises(ConfigError, match=name):
        run_config(config.from_dict(raw), tmp_path / "out", quiet=True)


def test_deterministic_lq_with_its_exact_solution():
    """sigma = 0 (no noise) with the LQ oracle: ε = 0 made the Neumann datum b_H = ε∇u·n UFL's
    Zero and the form crashed ("This integral is missing an integration domain", exit 1 from
    ``fem-mfc run`` with exact.solution = 'lq-gaussian'); zero sources are now left out."""
    mesh = dolfinx.mesh.create_interval(MPI.COMM_SELF, 80, [-4.0, 4.0])
    ex = LQGaussian(mesh, 1.0, 0.0, a=1.0, mean=[0.5], std=0.5)
    p = ControlProblem(mesh=mesh, T=1.0, sigma=0.0, steps=16, degree=1, scheme=BE,
                       V=ex.V, Phi=ex.Phi, rho0=ex.rho(0.0), exact=ex)
    r = newton(p)
    assert r.converged
    assert ErrorNorms(ex, p.space)(r)["J"] < 0.05
