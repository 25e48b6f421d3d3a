"""Manufactured solutions with congestion (mftc and mfg) in 2D: rates and exactness."""
from mpi4py import MPI

import dolfinx
import pytest

from fem_mfc.exact import ErrorNorms, Manufactured
from fem_mfc.problem import ControlProblem
from fem_mfc.solvers import newton
from helpers import observed_orders

BE, CN = "backward-euler", "crank-nicolson"


def G(r):
    return r ** 2          # κρ²/2 with κ = 2


def mms(nx, steps, degree, scheme, coupling, time="affine", space="trig", rtol=1e-10):
    mesh = dolfinx.mesh.create_unit_square(MPI.COMM_SELF, nx, nx)
    ex = Manufactured(mesh, 1.0, 0.5, G, coupling, time=time, space=space)
    p = ControlProblem(mesh=mesh, T=1.0, sigma=0.5, steps=steps, degree=degree, scheme=scheme,
                       V=ex.V, Phi=ex.Phi, G=G, coupling=coupling, rho0=ex.rho(0.0), exact=ex)
    r = newton(p, rtol=rtol)
    return ErrorNorms(ex, p.space)(r)


@pytest.mark.parametrize("coupling", ["mftc", "mfg"])
def test_exact_in_p2_and_time(coupling):
    """Quadratic in x, affine in t: the midpoint/P2 discretisation is exact (solver tolerance)."""
    e = mms(3, 2, 2, CN, coupling, time="affine", space="quadratic", rtol=1e-13)
    assert e["u"] < 1e-11 and e["rho"] < 1e-11


@pytest.mark.parametrize("coupling,degree,levels,rate",
                         [("mftc", 1, (8, 16, 32), 1.8), ("mfg", 1, (8, 16, 32), 1.8),
                          pytest.param("mftc", 2, (4, 8, 16), 2.7, marks=pytest.mark.slow),
                          pytest.param("mfg", 2, (4, 8, 16), 2.7, marks=pytest.mark.slow)])
def test_space_rates(coupling, degree, levels, rate):
    """Affine in t + midpoint: no time error, so 2 steps give pure spatial errors."""
    res = [mms(nx, 2, degree, CN, coupling) for nx in levels]
    for key in ("u", "rho"):
        r = observed_orders([e[key] for e in res], [1 / n for n in levels])
        assert min(r) >= rate, (key, r)


@pytest.mark.slow
@pytest.mark.parametrize("coupling", ["mftc", "mfg"])
def test_time_rates(coupling):
    """Quadratic in x (P2 exact in space), trigonometric in t: pure time errors."""
    for scheme, steps, order in ((BE, (16, 32, 64), 0.8), (CN, (4, 8, 16), 1.8)):
        res = [mms(3, n, 2, scheme, coupling, time="smooth", space="quadratic") for n in steps]
        for key in ("u", "rho"):
            r = observed_orders([e[key] for e in res], [1 / n for n in steps])
            assert min(r) >= order, (scheme, key, r)


def test_manufactured_sources_move_the_mass_and_are_not_a_failure(tmp_path):
    """The manufactured FP sources change the discrete mass by a discretisation error (1.2e-8
    on 16 cells, falling with h); the mass check said "failed" (limit 1e-8) and a correct
    solve exited 3 — a refinement study flagged its coarse levels.  Recorded, not checked."""
    import tomllib

    from fem_mfc import config
    from fem_mfc.pipeline import run_config
    from helpers import REPO
    raw = tomllib.loads((REPO / "demos" / "lq_gaussian_1d.toml").read_text())
    raw["mesh"]["cells"], raw["problem"]["steps"] = 16, 8
    raw["exact"]["solution"] = "manufactured"
    del raw["rho0"]                       # the manufactured solution sets rho0 itself
    raw["output"] = {"figures": False, "vtx": False, "progress": False}
    s = run_config(config.from_dict(raw), tmp_path / "m", quiet=True)
    assert s["mass_error"] > 1e-9                      # it does move
    assert s["checks"]["mass"]["applies"] is False and s["converged"] is True
    raw["exact"]["solution"] = "lq-gaussian"           # no FP sources: checked
    s = run_config(config.from_dict(raw), tmp_path / "lq", quiet=True)
    assert "applies" not in s["checks"]["mass"] and s["checks"]["mass"]["value"] < 1e-12
