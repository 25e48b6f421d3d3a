"""The Cole–Hopf / imaginary-time Schrödinger pair (χ, Γ) with congestion (MODEL §4)."""
from __future__ import annotations

import math

from mpi4py import MPI

import dolfinx
import numpy as np
import pytest
import ufl

from fem_mfc.errors import ConfigError
from fem_mfc.problem import ControlProblem
from fem_mfc.solvers.cole_hopf_pair import PairSystem, solve_pair
from fem_mfc.solvers.newton import newton
from fem_mfc.solvers.sweeps import cole_hopf_solve
from helpers import observed_orders


def problem(cells, steps, G=None, sigma=0.8):
    msh = dolfinx.mesh.create_interval(MPI.COMM_SELF, cells, [-1.0, 1.0])
    x = ufl.SpatialCoordinate(msh)
    return ControlProblem(mesh=msh, T=1.0, sigma=sigma, steps=steps,
                          rho0=1 + 0.5 * ufl.cos(math.pi * x[0]), V=0.3 * x[0] ** 2,
                          Phi=0.4 * ufl.sin(math.pi * x[0] / 2) + 0.2 * ufl.cos(math.pi * x[0]),
                          G=G)


def l2(a, b):
    return math.sqrt(dolfinx.fem.assemble_scalar(dolfinx.fem.form((a - b) ** 2 * ufl.dx)))


@pytest.mark.slow
def test_without_congestion_the_pair_is_the_linear_sweeps():
    """G = 0: the χ-equations are linear and decoupled, only Γ⁰ = ρ_0/χ⁰ couples back, so
    Newton converges in two steps; u equals the existing sweeps' u to round-off, ρ differs
    only through Γ⁰ (weak here, nodal in the sweeps): O(h²)."""
    drho = []
    levels = (16, 32, 64)
    for cells in levels:
        p = problem(cells, 8)
        lin, pair = cole_hopf_solve(p), solve_pair(p)
        assert pair.iterations <= 2
        du = max(l2(a, b) for a, b in zip(lin.u, pair.u))
        assert du < 1e-10
        drho.append(max(l2(a, b) for a, b in zip(lin.rho, pair.rho)))
        assert abs(lin.J - pair.J) < 1e-3
    rates = observed_orders(drho, [1 / c for c in levels])
    assert min(rates) > 1.8, (drho, rates)


def test_congested_pair_conserves_mass_and_solves_its_equations():
    p = problem(32, 16, G=lambda r: 0.5 * r ** 2)
    res = solve_pair(p)
    assert res.mass_error < 1e-9          # the Newton tolerance (rtol 1e-10)
    assert res.min_rho > 0
    assert 2 <= res.iterations <= 16                    # genuinely nonlinear now
    # χ, Γ satisfy the discrete pair: the space-time residual vanishes
    st = PairSystem(p)
    for a, b in zip(st.u + st.rho[1:], res.chi[:-1] + res.gamma[1:]):
        a.x.array[:] = b.x.array
    F = st.create_vec()
    st.residual(None, F)
    assert F.norm() < 1e-9


@pytest.mark.slow
def test_pair_matches_hjb_fp_with_congestion():
    """ρ = χΓ and u = −2ε log χ against the HJB–FP Newton solution: O(τ + h²) differences."""
    G = lambda r: 0.5 * r ** 2                                    # noqa: E731
    d = []
    for cells in (32, 64):
        p = problem(cells, cells // 2, G=G)
        a, b = newton(p), solve_pair(p)
        d.append((max(l2(x, y) for x, y in zip(a.rho, b.rho)),
                  max(l2(x, y) for x, y in zip(a.u, b.u))))
    for i in range(2):
        assert d[1][i] < 0.65 * d[0][i], d
    assert d[1][0] < 2e-2


def test_congested_pair_continues_in_the_coupling_strength():
    """The 2D congested benchmark problem (G = ρ²/2 on a cut Gaussian, χ(T) down to e⁻⁹):
    Newton from the G = 0 guess stalls; the continuation in the coupling strength (λ = 0 is
    the linear pair, two Newton steps) reaches λ = 1, recorded, and the result solves the
    pair's own equations at full strength and conserves mass."""
    msh = dolfinx.mesh.create_rectangle(MPI.COMM_SELF, [[-1, -1], [1, 1]], [8, 8])
    x = ufl.SpatialCoordinate(msh)
    p = ControlProblem(mesh=msh, T=1.0, sigma=0.6, steps=4, Phi=(x[0] - 0.5) ** 2 + x[1] ** 2,
                       V=0.2 * x[1] ** 2, G=lambda r: 0.5 * r ** 2,
                       rho0=ufl.exp(-((x[0] + 0.4) ** 2 + x[1] ** 2) / (2 * 0.28 ** 2)))
    res = solve_pair(p)
    assert res.path["linear"] == "sweep"      # the sweep preconditioner serves the pair too
    stages = res.continuation
    assert stages[0]["stage"] == "direct" and not stages[0]["converged"]
    assert stages[1]["lambda"] == 0.0 and stages[1]["iterations"] <= 2
    assert stages[-1]["lambda"] == 1.0 and stages[-1]["converged"]
    assert res.mass_error < 1e-9 and res.min_rho > 0
    st = PairSystem(p)
    assert st.parameter("coupling") == 1.0
    for a, b in zip(st.u + st.rho[1:], res.chi[:-1] + res.gamma[1:]):
        a.x.array[:] = b.x.array
    F = st.create_vec()
    st.residual(None, F)
    assert F.norm() < 1e-9


def test_zero_noise_is_a_config_error():
    with pytest.raises(ConfigError, match="problem.sigma"):
        solve_pair(problem(8, 4, sigma=0.0))


def test_large_terminal_loss_does_not_overflow():
    """Φ shifted by Φ_min: exp(−Φ/2ε) with Φ/2ε ~ 800 would underflow without it."""
    msh = dolfinx.mesh.create_interval(MPI.COMM_SELF, 16, [-1.0, 1.0])
    x = ufl.SpatialCoordinate(msh)
    p = ControlProblem(mesh=msh, T=1.0, sigma=0.8, steps=8, rho0=1 + 0.5 * ufl.cos(math.pi * x[0]),
                       Phi=250.0 + 0.2 * ufl.cos(math.pi * x[0]), G=lambda r: 0.5 * r ** 2)
    res = solve_pair(p)
    assert all(np.isfinite(f.x.array).all() for f in res.rho + res.u)
    assert res.mass_error < 1e-9          # the Newton tolerance (rtol 1e-10)


def test_pair_reports_min_rho_of_rho():
    """The pair's min_rho is min ρ = χΓ over the levels (it was min(χ, Γ): 0.166 where ρ's
    own minimum was 0.25)."""
    p = problem(32, 8, G=lambda r: 0.5 * r ** 2)
    res = solve_pair(p)
    lowest = min(f.x.array.min() for f in res.rho[1:])
    assert res.min_rho == pytest.approx(lowest, rel=1e-12)
    assert res.min_rho > min(min(f.x.array.min() for f in res.chi),
                             min(f.x.array.min() for f in res.gamma[1:]))


@pytest.mark.slow
def test_cole_hopf_runs_check_mass_and_record_the_pair_identity(tmp_path):
    """Through the CLI: the Cole–Hopf sweeps' mass is checked, to their tolerance (it was
    not checked: 1.2 % off exited 0 unnoticed); the pair's J against the HJB–FP value
    identity is its discretisation error (11–43 % on the congested square, shrinking at
    first order): recorded, not a failed check (it exited 3 with "not a discrete
    solution")."""
    import textwrap

    from fem_mfc.solvers import COLE_HOPF_IDENTITY_RTOL
    from helpers import read_summary, run_cli
    base = textwrap.dedent("""
        [run]
        formulation = "cole-hopf"
        [mesh]
        kind = "interval"
        cells = 128
        lower = [-1.0]
        upper = [1.0]
        [problem]
        T = 1.0
        sigma = 0.8
        steps = 48
        Phi = "0.4*sin(pi*x0/2) + 0.2*cos(pi*x0)"
        G = "G_TEXT"
        [rho0]
        kind = "formula"
        formula = "1 + 0.5*cos(pi*x0)"
        [output]
        figures = false
        vtx = false
        """)
    out = {}
    for name, G in (("sweeps", "0"), ("pair", "rho**2")):
        (tmp_path / f"{name}.toml").write_text(base.replace("G_TEXT", G))
        r = run_cli(["run", str(tmp_path / f"{name}.toml"), "--out", str(tmp_path / name),
                     "--quiet"])
        assert r.returncode == 0, r.stderr
        out[name] = read_summary(tmp_path / name)
    sweeps, pair = out["sweeps"]["checks"], out["pair"]["checks"]
    assert out["sweeps"]["method"] == "cole-hopf" and out["pair"]["method"] == "cole-hopf-pair"
    assert sweeps["mass"]["limit"] == COLE_HOPF_IDENTITY_RTOL and sweeps["mass"]["ok"]
    assert pair["value_identity"]["applies"] is False and pair["value_identity"]["ok"]
    assert pair["value_identity"]["value"] > 1e-3          # a discretisation error, recorded
    assert pair["mass"]["value"] < 1e-8
    # the pair's Newton steps are in its run.log, as hjb-fp's (it had "solving" and "done")
    log = (tmp_path / "pair" / "run.log").read_text()
    assert log.count(" newton ") == out["pair"]["iterations"] + 1, log
    assert f"cole-hopf-pair: converged after {out['pair']['iterations']} iterations" in log
