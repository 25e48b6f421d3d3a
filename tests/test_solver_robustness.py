"""Problems other people bring: attractive couplings, a zero coupling, an inaccurate solve, an
unreachable inner tolerance, shadowed names, Crank–Nicolson time labels, options that must not
leak between runs.  Each of these failed on 9b9ea59."""
from __future__ import annotations

import textwrap

from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import numpy as np
import pytest
import ufl

from helpers import read_summary, run_cli

ATTRACTIVE = textwrap.dedent("""
    [run]
    formulation = "hjb-fp"
    [mesh]
    kind = "interval"
    cells = {cells}
    lower = [0.0]
    upper = [1.0]
    [problem]
    T = 1.0
    sigma = 0.1
    steps = 20
    Phi = "(x0 - 0.5)**2"
    G = "c*rho**2"
    coupling = "mfg"
    params = {{ c = {c} }}
    [rho0]
    kind = "formula"
    formula = "exp(-50*(x0 - 0.5)**2)"
    [solver]
    method = "{method}"
    [output]
    figures = false
    vtx = false
    progress = false
""")


def congested(comm=MPI.COMM_WORLD, n=4, steps=3, **kw):
    """A small congested problem on the unit square (n × n cells)."""
    from fem_mfc.problem import ControlProblem
    mesh = dolfinx.mesh.create_unit_square(comm, n, n)
    x = ufl.SpatialCoordinate(mesh)
    return ControlProblem(mesh=mesh, T=1.0, sigma=0.5, steps=steps, Phi=(x[0] - 0.5) ** 2,
                          G=lambda r: r ** 2 / 2, rho0=ufl.exp(-10 * ((x[0] - 0.3) ** 2)),
                          **kw)


def write(tmp_path, text, name="c.toml"):
    cfg = tmp_path / name
    cfg.write_text(text)
    return cfg


@pytest.mark.slow
def test_zero_coupling_is_the_uncoupled_problem(tmp_path):
    """G = c*rho**2 with c = 0 runs (it crashed: "missing an integration domain"; a coupling
    check refused its 'mfg' for a G that vanishes) and gives the J of the problem without G."""
    out = {}
    for name, G in (("zero", "c*rho**2"), ("none", "0")):
        text = ATTRACTIVE.format(cells=40, c=0.0, method="newton").replace(
            'G = "c*rho**2"', f'G = "{G}"')
        if G == "0":                  # nothing to couple: 'mfg' is refused
            text = text.replace('coupling = "mfg"\n', "")
        p = run_cli(["run", str(write(tmp_path, text, f"{name}.toml")), "--out",
                     str(tmp_path / name), "--quiet"])
        assert p.returncode == 0, p.stderr
        out[name] = read_summary(tmp_path / name)["J"]
    assert out["zero"] == pytest.approx(out["none"], rel=1e-10)


@pytest.mark.slow
def test_attractive_coupling_converges_by_continuation_and_matches_picard(tmp_path):
    """An aggregation game (mfg, G = cρ², c < 0): Newton from the trivial guess stalls at a
    non-zero minimum of ‖F‖; the continuation in the coupling strength converges to rtol,
    records its path, and damped fictitious play (an independent iteration) reaches the same
    discrete solution."""
    newton = write(tmp_path, ATTRACTIVE.format(cells=100, c=-0.02, method="newton"), "n.toml")
    p = run_cli(["run", str(newton), "--out", str(tmp_path / "n"), "--quiet"])
    assert p.returncode == 0, p.stderr
    s = read_summary(tmp_path / "n")
    stages = s["continuation"]
    assert stages[0]["stage"] == "direct" and not stages[0]["converged"]
    assert stages[-1]["converged"] and stages[-1]["coupling"] == 1.0
    assert abs(s["J"] - s["J_value_identity"]) <= 1e-9 * abs(s["J"])
    # run.log has the path (it had "solving" and "done" only): the direct attempt, then each
    # stage's λ and verdict, as in summary.json, with the Newton steps between them
    log = (tmp_path / "n" / "run.log").read_text().splitlines()
    assert any("newton did not converge from its start" in ln for ln in log), log
    ends = [ln.split("stage lambda = ", 1)[1] for ln in log
            if "stage lambda = " in ln and "Newton iterations" in ln]
    assert len(ends) == len(stages) - 1, log
    for line, stage in zip(ends, stages[1:]):
        lam, verdict = line.split(" ", 1)
        assert float(lam) == pytest.approx(stage["lambda"], rel=1e-5), (line, stage)
        assert verdict.startswith("converged" if stage["converged"] else "did not"), line
        assert f"after {stage['iterations']} Newton iterations" in verdict, (line, stage)
    assert sum(" newton " in ln for ln in log) >= sum(st["iterations"] for st in stages)
    picard = write(tmp_path, ATTRACTIVE.format(cells=100, c=-0.02, method="picard"), "p.toml")
    run_cli(["run", str(picard), "--out", str(tmp_path / "p"), "--quiet"])
    q = read_summary(tmp_path / "p")
    assert q["iterations"] > 100                     # slow, but heading the same way
    assert q["J"] == pytest.approx(s["J"], rel=1e-8)
    assert q["max_rho"] == pytest.approx(s["max_rho"], rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("c", [-0.1, -0.5])
def test_attractive_coupling_monotone_scheme_matches_fictitious_play(tmp_path, c):
    """Stronger aggregation (c = −0.1, −0.5): the Galerkin density oscillates negative where
    the coupling concentrates it below the mesh scale, and the continuation stalls; on the
    positivity-preserving scheme Newton with continuation converges (ρ ≥ 0, J equal to its
    value identity) and damped fictitious play — an independent iteration, hundreds of
    best-response sweeps — reaches the same discrete J."""
    mono = '[discretisation]\nstabilisation = "monotone"\n[solver]'
    text = ATTRACTIVE.format(cells=50, c=c, method="METHOD").replace(
        "steps = 20", "steps = 10").replace("[solver]", mono)
    n = write(tmp_path, text.replace("METHOD", "newton"), "n.toml")
    p = run_cli(["run", str(n), "--out", str(tmp_path / "n"), "--quiet"])
    assert p.returncode == 0, p.stderr
    s = read_summary(tmp_path / "n")
    stages = s["continuation"]
    assert not stages[0]["converged"] and stages[-1]["converged"]
    assert stages[-1]["coupling"] == 1.0 and len(stages) > 3
    assert s["min_rho"] >= -1e-12 and s["max_rho"] > 20.0        # concentrated, positive
    assert abs(s["J"] - s["J_value_identity"]) <= 1e-9 * abs(s["J"])
    fp = write(tmp_path, text.replace("METHOD", "picard").replace(
        'method = "picard"', 'method = "picard"\nrelaxation = 0.2\npicard_max_it = 1000'),
        "p.toml")
    p = run_cli(["run", str(fp), "--out", str(tmp_path / "p"), "--quiet"])
    assert p.returncode == 0, p.stderr
    q = read_summary(tmp_path / "p")
    assert q["iterations"] > 100 and not q.get("continuation")
    assert q["J"] == pytest.approx(s["J"], rel=1e-9)
    assert q["max_rho"] == pytest.approx(s["max_rho"], rel=1e-8)


@pytest.mark.slow
def test_attractive_coupling_p2_galerkin_converges_and_matches_fictitious_play(tmp_path):
    """c = −0.1 with P2 elements (Galerkin, no stabilisation): on 100 cells the density goes
    negative (−0.16) and the continuation stalls at λ ≈ 0.90 (exit 3); on 200 cells, which
    resolve the concentrated density (max ρ ≈ 268), Newton with continuation converges with
    ρ ≥ 0, and damped fictitious play — 1000 best-response sweeps, stopped there short of its
    tolerance (exit 3) — reaches the same J to 1e-8."""
    text = ATTRACTIVE.format(cells=200, c=-0.1, method="METHOD").replace(
        "steps = 20", "steps = 10").replace("[solver]", "[discretisation]\ndegree = 2\n[solver]")
    n = write(tmp_path, text.replace("METHOD", "newton"), "n.toml")
    p = run_cli(["run", str(n), "--out", str(tmp_path / "n"), "--quiet"])
    assert p.returncode == 0, p.stderr
    s = read_summary(tmp_path / "n")
    assert s["ndofs"] == 401 and s["min_rho"] >= -1e-12 and s["max_rho"] > 200
    assert not s["continuation"][0]["converged"] and s["continuation"][-1]["converged"]
    assert abs(s["J"] - s["J_value_identity"]) <= 1e-9 * abs(s["J"])
    fp = write(tmp_path, text.replace("METHOD", "picard").replace(
        'method = "picard"', 'method = "picard"\nrelaxation = 0.2\npicard_max_it = 1000'),
        "p.toml")
    run_cli(["run", str(fp), "--out", str(tmp_path / "p"), "--quiet"])
    q = read_summary(tmp_path / "p")
    assert q["iterations"] == 1000
    assert q["J"] == pytest.approx(s["J"], rel=1e-8)
    assert q["max_rho"] == pytest.approx(s["max_rho"], rel=1e-8)


def graded_attractive(tmp_path, n, steps, c=-0.1):
    """The vertices x = ½ + sinh(6s)/(2 sinh 6) of n cells (s uniform in [−1, 1]), written as
    a meshio line mesh, and the config of the attractive game on it (monotone scheme)."""
    import meshio
    x = 0.5 + np.sinh(6.0 * np.linspace(-1.0, 1.0, n + 1)) / (2 * np.sinh(6.0))
    meshio.write(tmp_path / "graded.vtu", meshio.Mesh(
        x[:, None], [("line", np.c_[np.arange(n), np.arange(1, n + 1)])]))
    return x, ATTRACTIVE.format(cells=n, c=c, method="newton").replace(
        'kind = "interval"', f'kind = "file"\nfile = "{tmp_path / "graded.vtu"}"').replace(
        f"cells = {n}\nlower = [0.0]\nupper = [1.0]\n", "").replace(
        "steps = 20", f"steps = {steps}").replace(
        "[solver]", '[discretisation]\nstabilisation = "monotone"\n[solver]')


@pytest.mark.slow
def test_attractive_coupling_resolved_on_a_graded_mesh(tmp_path):
    """c = −0.1 on 100 cells graded towards ½ (x = ½ + sinh(6s)/(2 sinh 6), smallest cell
    3.0e-4, a seventh of the width L = 8ε²/|c| = 2e-3 of the stationary profile sech²(x/L)/(2L)),
    a file mesh read through meshio: the monotone scheme converges (ρ ≥ 0, J equal to its value
    identity), the density reaches most of the stationary height |c|/(16ε²) = 250 (214) and J
    most of its limit (−9.79; converged −11.9, docs/performance.md "Graded meshes"), which
    uniform meshes fall far short of (100 cells: max ρ 73, J −4.24; 800 × 160: 175, −8.06)."""
    n = 100
    x, text = graded_attractive(tmp_path, n, steps=10)
    p = run_cli(["run", str(write(tmp_path, text)), "--out", str(tmp_path / "o"), "--quiet"])
    assert p.returncode == 0, p.stderr
    s = read_summary(tmp_path / "o")
    assert s["ndofs"] == n + 1 and s["h"] == pytest.approx(np.diff(x).max())
    assert s["min_rho"] >= -1e-12 and abs(s["J"] - s["J_value_identity"]) <= 1e-9 * abs(s["J"])
    assert 200 < s["max_rho"] < 250
    assert -11.8 < s["J"] < -9.5


def test_continuation_path_rule(monkeypatch):
    """A continuation after a failed direct attempt on the sweep path takes exact (LU) stages
    when ``-mfc_continuation_linear lu`` asks for them, or by default (``auto``) for an
    attractive coupling where the automatic rule chose the sweep and the LU step is
    estimated at ≤ STAGES_LU_RATIO sweep steps *on one rank* (the same choice on every
    number of ranks) — not for a congestion, a dearer LU, a path the user chose, or a
    formulation that is not a Lagrangian's gradient; ``sweep`` keeps the sweep; the LU path
    keeps its own; another value is refused naming the option."""
    from types import SimpleNamespace

    from fem_mfc import options
    from fem_mfc.errors import ConfigError
    from fem_mfc.solvers import auto
    from fem_mfc.solvers.newton import STAGES_LU_RATIO, exact_stages

    def solver(mode="sweep", attractive=True, mirrored=True, ratio=3.06):   # 1D, 1,601 dofs
        return SimpleNamespace(mode=mode, op=SimpleNamespace(attractive=lambda: attractive),
                               st=SimpleNamespace(ratio=ratio, formulation=SimpleNamespace(
                                   mirrored=mirrored)))
    monkeypatch.setattr(auto, "serial_ratio", lambda st: st.ratio)
    chose = {"rule": auto.ESTIMATED, "lu_s": 0.199, "sweep_s": 0.0458}   # (2 ranks: 4.3)
    assert exact_stages(solver(), "mfc_", chose).startswith("attractive coupling")
    assert exact_stages(solver(ratio=STAGES_LU_RATIO * 1.01), "mfc_", chose) is None
    assert exact_stages(solver(ratio=30.7), "mfc_", chose) is None             # 2D 24² × 8
    assert exact_stages(solver(attractive=False), "mfc_", chose) is None
    assert exact_stages(solver(mirrored=False), "mfc_", chose) is None
    assert exact_stages(solver(), "mfc_", {"rule": "requested"}) is None
    assert exact_stages(solver(), "mfc_", dict(chose, rule="LU factors would not fit")) is None
    assert exact_stages(solver(mode="lu"), "mfc_", chose) is None
    with options.inserted(settings={"mfc_continuation_linear": "sweep"}):
        assert exact_stages(solver(), "mfc_", chose) is None
    with options.inserted(settings={"mfc_continuation_linear": "lu"}):
        assert exact_stages(solver(attractive=False, ratio=30.7), "mfc_", chose) == "requested"
        assert exact_stages(solver(mode="lu"), "mfc_") is None
    with options.inserted(settings={"mfc_continuation_linear": "exact"}):
        with pytest.raises(ConfigError) as e:
            exact_stages(solver(), "mfc_")
    assert e.value.key == "-mfc_continuation_linear"


def test_stage_rule_ratio_is_the_serial_estimate():
    """The exact-stage rule's ratio is the one-rank estimate, whatever the ranks: 1D P2 on
    800 cells × 20 steps (1,601 dofs) is 3.06 (the estimates for 2 ranks give 4.3, above
    STAGES_LU_RATIO: that run kept the sweep's stages and ended in exit 3)."""
    from types import SimpleNamespace

    from fem_mfc.solvers import auto
    from fem_mfc.solvers.newton import STAGES_LU_RATIO
    mesh = dolfinx.mesh.create_interval(MPI.COMM_SELF, 800, [0.0, 1.0])
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 2))
    st = SimpleNamespace(V=V, N=20)
    assert auto.sizes(st) == (1601, 20, 1)
    ratio = auto.serial_ratio(st)
    assert ratio == pytest.approx(3.06, abs=0.01) and ratio < STAGES_LU_RATIO
    two = auto.estimates(1601, 20, 1, ranks=2)
    assert two["lu_s"] / two["sweep_s"] > STAGES_LU_RATIO


def test_attractive_couplings_are_told_from_congestions():
    """The sign test behind the automatic exact stages: a ρ–ρ block with a negative diagonal
    for G = cρ² with c < 0 (games and control, Galerkin and monotone), none for
    congestions (cρ², ρ^1.5)."""
    _attractive_signs()


@pytest.mark.mpi
def test_attractive_couplings_are_told_from_congestions_on_two_ranks():
    """The same on 2 ranks (a collective answer: the negative entries may be on one)."""
    _attractive_signs()


def _attractive_signs():
    from fem_mfc.problem import ControlProblem
    from fem_mfc.solvers.kkt import KKTOperator
    from fem_mfc.solvers.newton import make_system
    mesh = dolfinx.mesh.create_interval(MPI.COMM_WORLD, 16, [0.0, 1.0])
    x = ufl.SpatialCoordinate(mesh)
    for kw, expected in ((dict(G=lambda r: -0.05 * r ** 2, coupling="mfg"), True),
                         (dict(G=lambda r: -0.5 * r ** 2), True),
                         (dict(G=lambda r: -0.05 * r ** 2, coupling="mfg",
                               stabilisation="monotone"), True),
                         (dict(G=lambda r: 0.05 * r ** 2, coupling="mfg"), False),
                         (dict(G=lambda r: r ** 1.5), False),
                         (dict(G=lambda r: 0.5 * r ** 2, stabilisation="monotone"), False)):
        p = ControlProblem(mesh=mesh, T=1.0, sigma=0.3, steps=4, Phi=(x[0] - 0.5) ** 2,
                           rho0=ufl.exp(-10 * (x[0] - 0.5) ** 2), **kw)
        op = KKTOperator(make_system(p))
        try:
            assert op.attractive() is expected, kw
        finally:
            op.destroy()


@pytest.mark.slow
def test_continuation_on_exact_steps_reaches_the_sweeps_solution(tmp_path):
    """The 1D aggregation game (c = −0.1, 50 graded cells × 10 steps, monotone): the direct
    attempt on the sweep path fails; by default (an attractive coupling, a cheap LU) the
    continuation takes exact LU steps, recorded in ``solver_path`` and run.log, and
    converges to the J of a continuation on the sweep path (``-mfc_continuation_linear
    sweep``)."""
    text = ATTRACTIVE.format(cells=50, c=-0.1, method="newton").replace(
        "upper = [1.0]", "upper = [1.0]\ngrading = 6.0").replace(
        "steps = 20", "steps = 10").replace(
        "[solver]", '[discretisation]\nstabilisation = "monotone"\n[solver]')
    cfg = write(tmp_path, text)
    out = {}
    for name, extra in (("lu", []), ("sweep", ["-mfc_continuation_linear", "sweep"])):
        p = run_cli(["run", str(cfg), "--out", str(tmp_path / name), "--quiet", *extra])
        assert p.returncode == 0, p.stderr
        out[name] = read_summary(tmp_path / name)
    a, b = out["lu"], out["sweep"]
    assert a["converged"] and b["converged"]
    assert a["solver_path"]["linear"] == "lu" and b["solver_path"]["linear"] == "sweep"
    assert a["solver_path"]["auto"]["continuation"].startswith("LU: attractive coupling")
    assert "continuation" not in b["solver_path"]["auto"]
    assert a["continuation"][0]["stage"] == "direct" and not a["continuation"][0]["converged"]
    assert a["J"] == pytest.approx(b["J"], rel=1e-9)
    assert abs(a["J"] - a["J_value_identity"]) <= 1e-9 * abs(a["J"]) and a["min_rho"] >= -1e-12
    assert a["continuation"][-1]["coupling"] == 1.0 and a["continuation"][-1]["converged"]
    log = (tmp_path / "lu" / "run.log").read_text()
    assert "continuation with exact (LU) Newton steps" in log


@pytest.mark.slow
def test_stalled_exact_stages_hand_over_to_the_sweep(monkeypatch):
    """Where the continuation's exact (LU) stages stall, the sweep's stages follow from the
    start (a huge leak rate's wall rows once failed nleqerr's test with the exact steps):
    the LU leg is recorded (its stages ``linear = "lu"``), the sweep's solve the problem —
    when the LU stages were asked for (or the problem has leaky walls).  Taken
    automatically for an attractive game without walls, their stall is the answer (the
    sweep's stages stalled at the same λ, for 40–70 % more time)."""
    from fem_mfc.problem import ControlProblem
    from fem_mfc.solvers import continuation
    from fem_mfc.solvers.newton import newton
    real, legs = continuation.continue_to, []

    def stalling_lu(solver, direct, X0, start=None):
        legs.append(solver.mode)
        if solver.mode == "lu":               # the exact leg: one failed stage, no solve
            rec = {"lambda": 1.0, "stage": "direct", "converged": False, "iterations": 0}
            return dict(direct), [rec, {"lambda": 0.25, "converged": False, "iterations": 3}]
        return real(solver, direct, X0, start)
    monkeypatch.setattr(continuation, "continue_to", stalling_lu)
    mesh = dolfinx.mesh.create_interval(MPI.COMM_SELF, 40, [0.0, 1.0])
    x = ufl.SpatialCoordinate(mesh)
    p = ControlProblem(mesh=mesh, T=1.0, sigma=0.1, steps=10, Phi=(x[0] - 0.5) ** 2,
                       G=lambda r: -0.05 * r ** 2, coupling="mfg", stabilisation="monotone",
                       rho0=ufl.exp(-50 * (x[0] - 0.5) ** 2))
    from fem_mfc import options
    with options.inserted(settings={"mfc_continuation_linear": "lu"}):
        r = newton(p)
    assert legs == ["lu", "sweep"]
    assert r.converged and r.path["linear"] == "sweep"
    assert r.path["auto"]["continuation"].startswith("sweep, after LU stages that stalled")
    assert r.continuation[1] == {"lambda": 0.25, "converged": False, "iterations": 3,
                                 "linear": "lu"}
    assert r.continuation[-1]["converged"] and r.continuation[-1]["coupling"] == 1.0
    legs.clear()
    r = newton(p)                             # the automatic choice: no hand-over
    assert legs == ["lu"]
    assert not r.converged and r.path["linear"] == "lu"
    assert r.path["auto"]["continuation"].startswith("LU: attractive coupling")


@pytest.mark.slow
def test_newton_accepts_a_round_off_floor_far_above_its_target(tmp_path):
    """400 graded cells (smallest 7.4e-5) × 5 steps, c = −0.1: near the concentrated density
    rows of terms ~1e7 cancel, and Newton stagnates at ≈ 3e-9 against a target of 2.4e-12 —
    beyond the former floor rule (10³ × target): the continuation retried λ = 1 until it
    stalled, exit 3 at λ ≈ 0.998, for a solution good to the last bit.  The residual's own
    round-off, measured (a last-bit change of every unknown moves it by ≈ 2e-9), is the
    floor now: converged, J equal to its value identity to round-off."""
    _, text = graded_attractive(tmp_path, 400, steps=5)
    p = run_cli(["run", str(write(tmp_path, text)), "--out", str(tmp_path / "o"), "--quiet"])
    assert p.returncode == 0, p.stderr
    s = read_summary(tmp_path / "o")
    assert s["converged"] and s["reason"] == "CONVERGED_ROUNDOFF_FLOOR"
    assert s["residual"] > 1e3 * s["history"][0]["target"]      # beyond the former rule
    assert abs(s["J"] - s["J_value_identity"]) <= 1e-12 * abs(s["J"])
    assert s["min_rho"] >= -1e-12 and s["max_rho"] > 200


@pytest.mark.slow
def test_inaccurate_solve_is_flagged_exit_3(tmp_path):
    """σ = 1e-4, T = 50, two steps, G = 100ρ⁴: SNES stops 'converged' relative to a huge
    first residual while J and its value identity disagree: exit 3, results written and
    flagged, the failed figure named."""
    text = textwrap.dedent("""
        [run]
        formulation = "hjb-fp"
        [mesh]
        kind = "interval"
        cells = 16
        lower = [-2.0]
        upper = [2.0]
        [problem]
        T = 50.0
        sigma = 1e-4
        steps = 2
        G = "100*rho**4"
        Phi = "100*x0**4"
        [solver]
        method = "newton"
        [output]
        figures = false
        vtx = false
    """)
    p = run_cli(["run", str(write(tmp_path, text)), "--out", str(tmp_path / "o"), "--quiet"])
    assert p.returncode == 3, p.stderr
    assert "value_identity" in p.stderr and "Traceback" not in p.stderr
    s = read_summary(tmp_path / "o")
    assert s["converged"] is False and not s["checks"]["value_identity"]["ok"]


def test_a_solve_that_breaks_down_exits_3_not_2(tmp_path):
    """Damped fictitious play on a strongly attractive Galerkin problem: its inner HJB step
    diverges.  That is a solve that ran and failed (exit 3, one line), not bad input (2)."""
    text = ATTRACTIVE.format(cells=20, c=-0.5, method="picard").replace("steps = 20",
                                                                       "steps = 6")
    p = run_cli(["run", str(write(tmp_path, text)), "--out", str(tmp_path / "o"), "--quiet"])
    assert p.returncode == 3, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Picard" in lines[0] and "Traceback" not in p.stderr


def test_picard_logs_every_outer_iteration(tmp_path):
    """run.log has a line per Picard iteration, as per Newton step (it had the verdict only):
    the residual of the full system and, from the second on, the change of ρ by the relaxed
    FP update before it and that update's relaxation — the summary's history, line for
    line."""
    import re
    text = ATTRACTIVE.format(cells=20, c=0.1, method="picard").replace("steps = 20",
                                                                       "steps = 6")
    p = run_cli(["run", str(write(tmp_path, text)), "--out", str(tmp_path / "o"), "--quiet"])
    assert p.returncode == 0, p.stderr
    s = read_summary(tmp_path / "o")
    log = (tmp_path / "o" / "run.log").read_text()
    lines = re.findall(r"picard +(\d+)  residual = (\S+)(?:  change = (\S+)  relaxation = "
                       r"(\S+))?$", log, re.M)
    assert s["method"] == "picard" and s["iterations"] > 5
    assert [int(k) for k, *_ in lines] == list(range(s["iterations"] + 1)), log
    for (_, res, change, omega), h in zip(lines, s["history"]):
        assert float(res) == pytest.approx(h["residual"], rel=1e-3)
        assert (change == "") == ("change" not in h)
        if change:
            assert float(change) == pytest.approx(h["change"], rel=1e-3) and float(omega) > 0
    assert "picard: converged after" in log


def test_picard_log_does_not_say_converged_before_a_failed_check(tmp_path):
    """A Picard solve stopped by a loose [solver] rtol failed the value identity check (exit
    3, flagged), yet run.log said "picard: converged after 11 iterations" before the checks.
    The solve's line comes after the checks and names the failed one."""
    text = ATTRACTIVE.format(cells=20, c=0.1, method="picard").replace(
        "steps = 20", "steps = 6").replace('method = "picard"', 'method = "picard"\nrtol = 1e-3')
    p = run_cli(["run", str(write(tmp_path, text)), "--out", str(tmp_path / "o"), "--quiet"])
    assert p.returncode == 3, p.stderr
    s = read_summary(tmp_path / "o")
    assert s["converged"] is False and not s["checks"]["value_identity"]["ok"]
    log = (tmp_path / "o" / "run.log").read_text()
    assert "converged after" not in log, log
    line = next(ln for ln in log.splitlines() if "picard: " in ln)
    assert "met its tolerance" in line and "value_identity: not converged" in line, line


def test_params_may_not_shadow_coordinates(tmp_path):
    text = ATTRACTIVE.format(cells=10, c=0.1, method="newton").replace(
        "params = { c = 0.1 }", "params = { c = 0.1, x0 = 5 }")
    p = run_cli(["run", str(write(tmp_path, text)), "--out", str(tmp_path / "o")])
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "problem.params.x0" in lines[0], p.stderr


def test_crank_nicolson_u_is_labelled_with_its_midpoint_time(tmp_path):
    """uⁿ of the midpoint scheme approximates u(t_{n+½}): the ParaView series of u carries
    those times (ρⁿ: t_n)."""
    from fem_mfc.compat import adios2
    adios2 = adios2()
    text = ATTRACTIVE.format(cells=10, c=0.1, method="newton").replace(
        "vtx = false", "vtx = true").replace("[solver]",
                                             '[discretisation]\nscheme = "crank-nicolson"'
                                             "\n[solver]")
    p = run_cli(["run", str(write(tmp_path, text)), "--out", str(tmp_path / "o"), "--quiet"])
    assert p.returncode == 0, p.stderr
    tau = 1.0 / 20

    def times(name):
        out = []
        with adios2.FileReader(str(tmp_path / "o" / name)) as f:
            for step in range(f.num_steps()):
                out.append(float(f.read("step", step_selection=[step, 1])[0]))
        return np.array(out)
    assert np.allclose(times("u.bp")[:-1], (np.arange(20) + 0.5) * tau)
    assert times("u.bp")[-1] == pytest.approx(1.0)
    assert np.allclose(times("rho.bp"), np.arange(21) * tau)


def test_picard_inner_newton_stops_at_round_off():
    """An inner tolerance below round-off (the HJB step's residual floor) ends the inner
    Newton when its correction is at round-off level instead of failing the solve."""
    from fem_mfc.problem import ControlProblem
    from fem_mfc.solvers.picard import _StepSolver, hjb_sweep
    from fem_mfc.solvers.spacetime import SpaceTime
    mesh = dolfinx.mesh.create_interval(MPI.COMM_SELF, 40, [0.0, 1.0])
    x = ufl.SpatialCoordinate(mesh)
    p = ControlProblem(mesh=mesh, T=1.0, sigma=0.1, steps=8, Phi=(x[0] - 0.5) ** 2,
                       G=lambda r: 0.5 * r ** 2, coupling="mfg",
                       rho0=ufl.exp(-50 * (x[0] - 0.5) ** 2))
    st = SpaceTime(p)
    hjb_sweep(st, _StepSolver("t_picard_"), tol=1e-30, max_it=30)
    assert st.finite()


def test_a_second_run_does_not_inherit_the_first_runs_options(tmp_path):
    """PETSc options of a run (config and command line) live only as long as the run."""
    from petsc4py import PETSc

    from fem_mfc import config
    from fem_mfc.pipeline import run_config
    cfg = config.from_dict({"run": {"formulation": "hjb-fp"},
                            "mesh": {"kind": "interval", "cells": 12, "lower": [0.0],
                                     "upper": [1.0]},
                            "problem": {"T": 0.5, "sigma": 0.3, "steps": 4, "G": "rho**2/2",
                                        "Phi": "(x0 - 0.5)**2"},
                            "rho0": {"mean": [0.5], "std": 0.15},
                            "solver": {"method": "newton",
                                       "petsc_options": {"mfc_snes_linesearch_type": "basic"}},
                            "output": {"figures": False, "vtx": False, "progress": False}})
    before = set(PETSc.Options().getAll())
    a = run_config(cfg, tmp_path / "a", {"mfc_newton_forcing": "exact"}, quiet=True)
    assert set(PETSc.Options().getAll()) == before
    cfg["solver"]["petsc_options"] = {}
    b = run_config(cfg, tmp_path / "b", quiet=True)
    assert a["solver_path"]["line_search"] == "basic"
    assert b["solver_path"]["line_search"] == "bt"
    assert a["J"] == pytest.approx(b["J"], rel=1e-10)


@pytest.mark.slow
def test_misspelt_options_are_reported_and_help_reaches_petsc(tmp_path):
    text = ATTRACTIVE.format(cells=10, c=0.1, method="newton")
    cfg = write(tmp_path, text)
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet",
                 "-mfc_snes_monitr"])
    assert p.returncode == 0, p.stderr
    assert "-mfc_snes_monitr was not used" in p.stderr
    # the config's own options were not reported (`snes_rtol` without its solver's prefix)
    cfg.write_text(text.replace("[solver]", "[solver]\npetsc_options = { snes_rtol = 1e-3, "
                                "mfc_snes_max_it = 40 }", 1))
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "c"), "--quiet"])
    assert p.returncode == 0, p.stderr
    assert "petsc_options: snes_rtol was not used" in p.stderr
    assert "mfc_snes_max_it was not used" not in p.stderr
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "h"), "--quiet", "-help"])
    assert p.returncode == 0, p.stderr
    assert "-mfc_snes_type" in p.stdout + p.stderr          # PETSc's help for our SNES


@pytest.mark.slow
def test_manufactured_solution_runs_and_refines_with_exit_0(tmp_path):
    """Manufactured sources enter the Lagrangian linearly, so J and the value identity differ
    by them: the check is recorded as not applicable instead of flagging the run (``fem-mfc
    refine`` on such a config exited 3 before)."""
    text = textwrap.dedent("""
        [run]
        formulation = "hjb-fp"
        [mesh]
        kind = "rectangle"
        cells = 4
        lower = [0.0, 0.0]
        upper = [1.0, 1.0]
        [problem]
        T = 1.0
        sigma = 1.0
        steps = 2
        G = "rho**2/2"
        [exact]
        solution = "manufactured"
        [solver]
        method = "newton"
        [output]
        figures = false
        vtx = false
        progress = false
    """)
    cfg = write(tmp_path, text)
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"])
    assert p.returncode == 0, p.stderr
    s = read_summary(tmp_path / "r")
    vi = s["checks"]["value_identity"]
    assert vi["applies"] is False and vi["value"] > 1e-6 and s["converged"]
    p = run_cli(["refine", str(cfg), "--levels", "2", "--in", "space", "--out",
                 str(tmp_path / "conv"), "--quiet"])
    assert p.returncode == 0, p.stderr


def test_newton_solves_again_after_a_callback_error():
    """An error raised inside SNES (here: the residual callback, once, in the middle of the
    solve) unwinds without popping PETSc's read lock on the solution vector; the next solve
    (a continuation stage) then failed with "Vec is locked read only".  It must run and
    converge."""
    from fem_mfc import options
    from fem_mfc.errors import SolverError
    from fem_mfc.problem import ControlProblem
    from fem_mfc.solvers.newton import NewtonSolver, linear_mode, make_system
    mesh = dolfinx.mesh.create_unit_square(MPI.COMM_SELF, 6, 6)
    x = ufl.SpatialCoordinate(mesh)
    p = ControlProblem(mesh=mesh, T=1.0, sigma=0.5, steps=4, Phi=(x[0] - 0.5) ** 2,
                       G=lambda r: r ** 2 / 2, rho0=ufl.exp(-10 * ((x[0] - 0.3) ** 2)))
    with options.inserted(settings={}):
        st = make_system(p)
        mode, _ = linear_mode(st, "auto", "mfc_")
        solver = NewtonSolver(st, mode, "mfc_", 1e-10, 1e-12, 50, "adaptive", None)
        calls = {"n": 0}
        original = solver._residual

        def failing(snes, x, f):
            calls["n"] += 1
            if calls["n"] == 3:
                raise SolverError("injected failure")
            original(snes, x, f)

        solver._residual = failing
        solver.snes.setFunction(failing, solver.F)
        first = solver.solve()
        assert not first["converged"] and first["reason"].startswith("ERROR")
        solver._residual = original
        solver.snes.setFunction(original, solver.F)
        second = solver.solve()
        solver.destroy()
    assert second["converged"], second


def test_stalled_continuation_with_negative_density_says_what_to_do():
    """When the converged stages' densities went negative (the Galerkin density of an
    attractive coupling oscillating below the mesh scale), the unconverged reason says so and
    names the remedies; on the monotone scheme it only suggests refining."""
    import dataclasses
    import types

    from fem_mfc.problem import ControlProblem
    from fem_mfc.solvers.continuation import _negative_hint
    from fem_mfc.solvers.spacetime import SpaceTime
    mesh = dolfinx.mesh.create_interval(MPI.COMM_WORLD, 8, [0.0, 1.0])
    x = ufl.SpatialCoordinate(mesh)
    p = ControlProblem(mesh=mesh, T=1.0, sigma=0.3, steps=3, Phi=x[0] ** 2,
                       rho0=ufl.exp(-(x[0] - 0.5) ** 2))
    st = SpaceTime(p)
    st.rho[2].x.array[:] = 50.0
    direct = {"lambda": 1.0, "stage": "direct", "converged": False}
    ok = [direct, {"lambda": 0.5, "converged": True, "min_rho": -1e-14}]
    assert _negative_hint(st, ok) == ""
    bad = [direct, {"lambda": 0.5, "converged": True, "min_rho": -3.2},
           {"lambda": 0.75, "converged": False, "min_rho": -9.0}]
    hint = _negative_hint(st, bad)
    assert "min rho = -3.2" in hint and "max 50" in hint and "monotone" in hint
    mono = SpaceTime(dataclasses.replace(p, stabilisation="monotone"))
    assert "monotone" not in _negative_hint(mono, bad) and "refine" in _negative_hint(mono, bad)
    # where the monotone scheme does not apply (P2) it is not advised (the run's min_rho
    # check says the same); it takes every kind of side
    st.problem = dataclasses.replace(p, degree=2)
    assert "monotone" not in _negative_hint(st, bad) and "refine" in _negative_hint(st, bad)
    from fem_mfc.runs.control import checks
    r = types.SimpleNamespace(J=1.0, J_value=1.0, method="newton", mass_error=0.0,
                              min_rho=-30.0)
    for monotone in (p.monotone_advice(), st.problem.monotone_advice()):
        c = checks(r, 50.0, monotone=monotone)["min_rho"]
        assert not c["ok"] and "refine" in c["hint"]
        assert ("monotone" in c["hint"]) is (monotone is not None)
    # no monotone scheme for the sides, Crank–Nicolson: backward Euler is the advice
    c = checks(r, 50.0, monotone=None, crank_nicolson=True)["min_rho"]
    assert "backward-euler" in c["hint"] and "monotone" not in c["hint"]
    assert "backward-euler" not in checks(r, 50.0, monotone=None)["min_rho"]["hint"]
    # P2, a Crank–Nicolson step (advised to switch), populations (no such attribute)
    assert dataclasses.replace(p, degree=2).monotone_advice() is None
    assert "backward-euler" in dataclasses.replace(p, scheme="crank-nicolson").monotone_advice()
    assert "backward-euler" not in p.monotone_advice()
    st.problem = types.SimpleNamespace(stabilisation="none")
    assert "monotone" not in _negative_hint(st, bad)


def test_a_krylov_solve_that_stops_short_still_gives_a_newton_step():
    """A Krylov solve of the sweep path that reaches its iteration limit before its tolerance
    (small noise makes the sweep a weak preconditioner: hundreds of iterations) returns an
    inexact Newton direction, which the line search judges (``ksp_converged_maxits``).
    PETSc's default ended Newton at the first such solve (DIVERGED_LINEAR_SOLVE) and every
    continuation stage likewise.  With the limit forced down to 2 iterations the solve must
    converge directly to the J of an unrestricted solve and say which steps were inexact;
    PETSc's behaviour stays one option away."""
    from fem_mfc.problem import ControlProblem
    from fem_mfc.solvers import solve
    mesh = dolfinx.mesh.create_rectangle(MPI.COMM_WORLD, [[-1, -1], [1, 1]], [12, 12])
    x = ufl.SpatialCoordinate(mesh)
    p = ControlProblem(mesh=mesh, T=1.0, sigma=0.6, steps=10, scheme="crank-nicolson",
                       Phi=(x[0] - 0.5) ** 2 + x[1] ** 2, G=lambda r: 0.5 * r ** 2,
                       rho0=ufl.exp(-((x[0] + 0.4) ** 2 + x[1] ** 2) / (2 * 0.28 ** 2)))
    ref = solve(p, "newton", linear="sweep", strict=False)
    short = solve(p, "newton", linear="sweep", strict=False, petsc_options={"ksp_max_it": 4})
    assert ref.converged and short.converged, short.reason
    assert not short.continuation                       # the direct attempt converged
    assert "CONVERGED_ITS" in [h.get("ksp_reason") for h in short.history]
    assert abs(short.J - ref.J) <= 1e-9 * abs(ref.J)
    petsc = solve(p, "newton", linear="sweep", strict=False,
                  petsc_options={"ksp_max_it": 4, "ksp_converged_maxits": "false"})
    assert not petsc.converged and "DIVERGED_LINEAR_SOLVE" in petsc.reason


def test_a_poor_step_from_a_stopped_short_krylov_solve_ends_a_stalling_attempt():
    """Where a stalled attempt may end early (the direct attempt before a continuation, every
    continuation stage), a Krylov solve that stopped at its limit and gave a step that did
    not halve the residual ends it at once: a shorter continuation step is cheaper than more
    300-iteration solves (1D attractive Galerkin, 100 cells: 117 s against 42 s).  A good
    stopped-short step, or any step of a converged Krylov solve, does not.  A solve at its
    limit that did not reduce its residual by 1e-2 fails at once (before a line search)."""
    from fem_mfc import options
    from fem_mfc.solvers.newton import NewtonSolver, make_system
    p = congested()
    R, K = PETSc.SNES.ConvergedReason, PETSc.KSP.ConvergedReason
    with options.inserted(settings={}):
        solver = NewtonSolver(make_system(p), "sweep", "mfc_", 1e-10, 1e-12, 50, "adaptive")
        snes, ksp = solver.snes, solver.snes.getKSP()
        solver.history = [{"residual": 1.0}]
        solver._converged(snes, 0, (1.0, 0.0, 1.0))
        solver.stall_exit = True
        short, converged = {"its": 300, "short": True}, {"its": 300, "short": False}
        solver._step = short
        assert solver._converged(snes, 1, (1.0, 1.0, 0.4)) == R.ITERATING     # halved
        assert solver._converged(snes, 2, (1.0, 1.0, 0.3)) == R.DIVERGED_LINE_SEARCH
        solver._converged(snes, 0, (1.0, 0.0, 1.0))
        solver._step = converged
        ksp.setConvergedReason(K.CONVERGED_ITS)     # (a line search's solve: not the step's)
        assert solver._converged(snes, 1, (1.0, 1.0, 0.9)) == R.ITERATING     # not short
        solver.stall_exit = False
        solver._converged(snes, 0, (1.0, 0.0, 1.0))
        solver._step = short
        assert solver._converged(snes, 1, (1.0, 1.0, 0.9)) == R.ITERATING     # no early end
        # at the Krylov limit: a step only if the residual fell by LIMIT_REDUCTION (1e-2)
        ksp.setTolerances(max_it=5)
        assert solver._krylov_limit(ksp, 0, 1.0) is None
        assert solver._krylov_limit(ksp, 3, 0.5) is None                       # PETSc's test
        assert solver._krylov_limit(ksp, 5, 0.5) == K.DIVERGED_MAX_IT
        assert solver._krylov_limit(ksp, 5, 1e-3) == K.CONVERGED_ITS
        ksp.setTolerances(rtol=1e-2, max_it=5)
        assert solver._krylov_limit(ksp, 5, 1e-3) is None          # met rtol: PETSc's name
        solver.destroy()


def test_a_stopped_short_step_gets_one_line_search_trial_in_a_stage():
    """In a continuation stage nleqerr judges a step by solving for its trial points, each
    solve as long as the step's own.  After a step whose Krylov solve stopped at its limit
    only the first trial is solved: a second one (the first failed the monotonicity test)
    is skipped (x = 0, no iterations) and the stage ends stalled — the periodic attractive
    channel spent 8 × 300 Krylov iterations per such step.  Outside stages, or after a step
    from a converged Krylov solve, the line search runs as before."""
    from fem_mfc import options
    from fem_mfc.solvers.newton import NewtonSolver, make_system
    p = congested()
    R, K = PETSc.SNES.ConvergedReason, PETSc.KSP.ConvergedReason
    with options.inserted(settings={}):
        solver = NewtonSolver(make_system(p), "sweep", "mfc_", 1e-10, 1e-12, 50, "adaptive")
        snes, ksp = solver.snes, solver.snes.getKSP()
        b, y = solver.X.duplicate(), solver.X.duplicate()

        def trials(stall_exit, short):
            solver.history = [{"residual": 1.0}]
            solver._converged(snes, 0, (1.0, 0.0, 1.0))
            solver.stall_exit, solver._abandon = stall_exit, False
            solver._step, solver._step_next = {"its": 300, "short": short}, False
            skipped = []
            for _ in range(2):                          # two line-search solves
                solver._presolve(ksp, b, y)
                skipped.append(solver._krylov_limit(ksp, 0, 1.0) == K.CONVERGED_ITS)
            return skipped, solver._converged(snes, 1, (1.0, 1.0, 0.1))

        assert trials(True, True) == ([False, True], R.DIVERGED_LINE_SEARCH)
        assert trials(True, False) == ([False, False], R.ITERATING)
        assert trials(False, True) == ([False, False], R.ITERATING)
        for v in (b, y):
            v.destroy()
        solver.destroy()


@pytest.mark.parametrize("comm", [MPI.COMM_SELF, pytest.param(MPI.COMM_WORLD,
                                                               marks=pytest.mark.mpi)])
def test_the_line_search_solve_at_the_accepted_point_is_the_next_newton_step(comm):
    """With the trapezoid residual the blocks are assembled at every point whose residual
    is evaluated, so nleqerr's simplified Newton correction at the point it accepts solves
    K(y)δ = F(y): the next Newton step.  That step starts from it and is converged at once
    (no Krylov iterations); the iterates and J are those of solving it again, which
    ``-mfc_newton_reuse_trial false`` does."""
    from fem_mfc import options
    from fem_mfc.solvers.newton import NewtonSolver, make_system
    p = congested(comm, 6, steps=6, scheme="crank-nicolson")
    runs = {}
    for reuse in ("true", "false"):
        with options.inserted(settings={"newton_reuse_trial": reuse}, prefix="mfc_"):
            st = make_system(p)
            solver = NewtonSolver(st, "sweep", "mfc_", 1e-10, 1e-12, 50, "adaptive")
            solver.set_linesearch("nleqerr")
            out = solver.solve(exact=True)
            X = st.create_vec()
            st.states_to_vec(X)
            runs[reuse] = (out, X)
            solver.destroy()
    (new, X), (old, X_old) = runs["true"], runs["false"]
    assert new["converged"] and old["converged"]
    assert new["iterations"] == old["iterations"] >= 3
    its = [h["ksp_its"] for h in new["history"][1:-1]]
    assert its and all(k == 0 for k in its), its            # every later step: reused
    assert all(h.get("step_from_line_search") for h in new["history"][1:-1])
    assert all(h["ksp_its"] > 0 for h in old["history"][:-1])
    X.axpy(-1.0, X_old)
    assert X.norm() <= 1e-8 * X_old.norm()
    for v in (X, X_old):
        v.destroy()


def test_a_failed_continuation_stage_is_not_tried_again_unchanged(monkeypatch):
    """A failed stage halves the step that failed.  A step doubled past 1 − λ is clipped to
    the final stage; halving the unclipped step tried that same stage again, with the same
    start and the same outcome (the periodic attractive channel: λ = 1 three times in a
    row)."""
    import types

    from fem_mfc.solvers import continuation

    def stage(solver, lam, *args):
        tried.append(lam)
        return {"converged": lam <= 0.8, "iterations": 2, "residual": 1.0}

    def vec():
        v = PETSc.Vec().createSeq(1, comm=PETSc.COMM_SELF)
        v.set(0.0)
        return v

    st = types.SimpleNamespace(create_vec=vec, states_to_vec=lambda v: None,
                               vec_to_states=lambda v: None)
    monkeypatch.setattr(continuation, "_stage", stage)
    monkeypatch.setattr(continuation, "_record",
                        lambda lam, eps0, eps, out, st: {"lambda": lam, **out})
    tried, stages = [], []
    out = continuation._path(types.SimpleNamespace(st=st), None, None, 0.1, 1.0, 1e-10,
                             1e-12, stages)
    assert out["converged"] is False and 0.79 < out["stalled_at"] <= 0.8
    assert tried[:4] == [0.0, 0.25, 0.75, 1.0] and tried[4] == 0.875
    assert all(a != b for a, b in zip(tried, tried[1:])), tried


@pytest.mark.parametrize("mode, max_it", [("sweep", 4), ("lu", None)])
def test_continuation_stages_bound_the_line_search_trials_on_the_sweep_path(monkeypatch, mode,
                                                                            max_it):
    """On the sweep path each nleqerr trial point is a Krylov solve as long as the step's: a
    stage's step gets STAGE_TRIALS of them (the line search's max_it = trials + 1).  On the
    LU path a trial is one more solve with the step's factors: PETSc's limit."""
    import types

    from fem_mfc.solvers import continuation
    calls = []

    class Solver:
        user_linesearch, rtol, atol = False, 1e-10, 1e-12
        st = types.SimpleNamespace(parameters={"coupling": 1.0}, set_parameter=lambda *a: None,
                                   parameter=lambda name: 1.0)

        def set_linesearch(self, kind, **kw):
            calls.append((kind, kw.get("max_it")))

        def parameters_changed(self):
            pass

    solver = Solver()
    solver.mode = mode
    monkeypatch.setattr(continuation, "_path", lambda *a, **k: None)
    monkeypatch.setattr(continuation, "_negative_hint", lambda st, stages: "")
    direct = {"iterations": 3, "residual": 1.0, "reason": "DIVERGED_LINE_SEARCH",
              "first_residual": 1.0}
    out, stages = continuation.continue_to(solver, direct, None)
    assert not out["converged"] and calls[0] == ("nleqerr", max_it) and calls[-1][0] is None
    assert continuation.STAGE_TRIALS + 1 == 4


def test_continuation_stages_may_end_early_when_they_stall():
    """Every continuation stage runs with the early end of a stalled attempt switched on
    (a failed stage halves the step instead of creeping), and the solver switches it off
    again after any solve."""
    import types

    from fem_mfc.solvers import continuation
    seen = []

    class Solver:
        checkpoint, stage = None, {}
        st = types.SimpleNamespace(parameters={})

        def parameters_changed(self):
            pass

        def solve(self, **kw):
            seen.append(kw.get("stall_exit"))
            return {"converged": False}

    continuation._stage(Solver(), 0.5, None, 0.1, 1e-6, 1e-12, 25)
    assert seen == [True]


def test_round_off_floor_is_stagnation_not_slow_convergence():
    """Newton ends at its round-off floor only when the residual stops falling near the
    target (the monotone 1D attractive case on 1,600 cells: 8.0e-11, 9.1e-11, 8.9e-11 for a
    target 1.2e-12), not while it falls steadily 0.6–0.75× per step — the history of the
    wrong Jacobian fixed on 2026-12-07, which the former rule accepted at 1.1e-7 against a
    1.9e-10 target and reported converged."""
    import types

    from fem_mfc.solvers.newton import NewtonSolver

    def at_floor(history, target, noise=1e-14):
        # noise: residual_noise at the best iterate (1e-14: far below every residual here)
        stub = types.SimpleNamespace(history=[{"residual": r} for r in history],
                                     _best_f=min(history), _noise=noise, best=object())
        stub._best_at_floor = lambda t, f0: NewtonSolver._best_at_floor(stub, t, f0)
        return NewtonSolver._at_roundoff_floor(stub, target)

    assert at_floor([20.94, 2.184, 0.1794, 1.175e-3, 4.503e-8, 7.96e-11, 9.146e-11, 8.915e-11],
                    1.237e-12)
    slow = [1.9, 0.52, 0.33, 7.3e-2, 2.4e-2, 9.5e-3, 9.4e-3, 8.7e-3, 4.4e-3, 7.4e-4, 5.7e-5,
            2.1e-5, 1.4e-5, 1.3e-5, 1.2e-5, 7.0e-7, 4.3e-7, 2.8e-7, 2.0e-7, 1.5e-7, 1.1e-7]
    assert not any(at_floor(slow[:k], 1.9e-10) for k in range(3, len(slow) + 1))
    assert not at_floor([1.0, 1e-3, 1e-3, 1e-3], 1e-10)     # stagnating far from the target
    # ... or far above the target but within 10× the residual's own round-off (graded mesh,
    # test_newton_accepts_a_round_off_floor_far_above_its_target) — not far from a solution
    graded = [3.424e-2, 3.034e-6, 3.341e-9, 2.967e-9, 3.161e-9, 2.868e-9]
    assert at_floor(graded, 2.4e-12, noise=2.3e-9)
    assert not at_floor(graded, 2.4e-12, noise=1e-13)
    assert not at_floor([1.0, 0.5, 0.49, 0.48], 1e-10, noise=0.1)


def test_command_line_snes_tolerances_are_the_solves():
    """-mfc_snes_rtol / _max_it set Newton's tolerance (every solve set its own again, so the
    user's were silently ignored: 6 iterations to 1.7e-12 with -mfc_snes_rtol 1e-4), and the
    run's checks hold the value identity and the mass to that tolerance, not to the
    default's: a loosened solve is converged, not flagged."""
    from fem_mfc.problem import ControlProblem
    from fem_mfc.runs.control import checks
    from fem_mfc.solvers.newton import newton
    msh = dolfinx.mesh.create_rectangle(MPI.COMM_SELF, [[0, 0], [1, 1]], [8, 8])
    x = ufl.SpatialCoordinate(msh)

    def solve(continuation=True, **opts):
        p = ControlProblem(mesh=msh, T=1.0, sigma=0.5, steps=8, Phi=(x[0] - 0.5) ** 2,
                           G=lambda r: 0.5 * r ** 2,
                           rho0=ufl.exp(-((x[0] - 0.4) ** 2 + (x[1] - 0.5) ** 2) / 0.08))
        return newton(p, petsc_options=opts, continuation=continuation)
    tight, loose = solve(), solve(mfc_snes_rtol=1e-4)
    h0, h1 = tight.history[0], loose.history[0]
    assert h1["target"] == pytest.approx(1e-4 * h1["residual"], rel=1e-12)
    assert h0["target"] == pytest.approx(1e-10 * h0["residual"], rel=1e-12)
    assert loose.converged and loose.iterations < tight.iterations
    assert loose.residual > 1e-9                      # stopped at its own target
    assert all(c["ok"] for c in checks(loose, 1.0).values())
    short = solve(continuation=False, mfc_snes_max_it=2)
    assert short.iterations == 2 and not short.converged
    from fem_mfc.errors import ConfigError
    with pytest.raises(ConfigError, match="-mfc_snes_type"):   # another SNES type: refused by
        solve(mfc_snes_type="newtontr")                       # name ("error code -1" before)


def test_a_tolerance_too_loose_for_a_solution_is_not_converged():
    """[solver] atol = 1e300 stopped Newton at its initial guess (0 iterations) and the
    identity check, loosened to 10 x the residual target, passed a 115 % gap: converged,
    exit 0.  The loosening stops at the Cole-Hopf paths' 5 %, with a hint."""
    import types

    from fem_mfc.runs.control import checks

    def result(gap, target):
        return types.SimpleNamespace(J=1.0, J_value=1.0 + gap, method="newton", mass_error=0.0,
                                     min_rho=0.1, history=[{"target": target}])
    c = checks(result(1.15, 1e300), 1.0)["value_identity"]
    assert not c["ok"] and c["limit"] == 0.05 and "too loose" in c["hint"]
    assert checks(result(1e-4, 1e-4), 1.0)["value_identity"]["ok"]    # a loosened solve


def test_stages_that_fail_on_nan_say_so(tmp_path):
    """G = ρ^1.5 is undefined where the Galerkin density dips below 0: every stage failed on
    a residual that is not a number, recorded as residual 0 with no word of why ("no stage
    converged"; residual 0).  Now the stages carry the reason and the message says what
    happened and what to do; the monotone scheme then solves it (exit 0)."""
    from fem_mfc import config
    from fem_mfc.pipeline import run_config
    raw = {"run": {"formulation": "hjb-fp"},
           "mesh": {"kind": "interval", "cells": 16, "lower": [-2.0], "upper": [2.0]},
           "problem": {"T": 1.0, "sigma": 0.3, "steps": 8, "Phi": "2*(x0 - 1)**2",
                       "G": "rho**1.5"},
           "rho0": {"kind": "gaussian", "mean": [-0.8], "std": 0.25},
           "solver": {"method": "newton"},
           "output": {"figures": False, "vtx": False, "progress": False}}
    s = run_config(config.from_dict(raw), tmp_path / "g", quiet=True)
    assert s["converged"] is False and "not a number" in s["reason"]
    assert "monotone" in s["reason"]
    nan = [st for st in s["continuation"] if st.get("reason") == "DIVERGED_FNORM_NAN"]
    assert nan and all(st["residual"] is None or st["residual"] != 0.0 for st in nan)
    raw["discretisation"] = {"stabilisation": "monotone"}
    assert run_config(config.from_dict(raw), tmp_path / "m", quiet=True)["converged"] is True


def test_the_users_newton_limit_binds_the_continuation_stages(tmp_path):
    """-mfc_snes_max_it 1: the direct attempt stopped after 1 iteration, then the continuation
    stages ran 2–4 iterations each under their own limit and the run ended `converged` with
    `iterations: 2` of 12 in all.  Now every stage keeps the user's limit, and
    `iterations_total` counts every Newton iteration of the run."""
    from fem_mfc import config
    from fem_mfc.pipeline import run_config
    raw = {"run": {"formulation": "hjb-fp"},
           "mesh": {"kind": "rectangle", "cells": 8, "lower": [-2.0, -2.0],
                    "upper": [2.0, 2.0]},
           "problem": {"T": 1.0, "sigma": 0.6, "steps": 6, "Phi": "0.5*(x0**2 + x1**2)",
                       "G": "rho**2/2"},
           "rho0": {"kind": "gaussian", "mean": [0.6, -0.3], "std": 0.45},
           "solver": {"method": "newton"},
           "output": {"figures": False, "vtx": False, "progress": False}}
    cfg = config.from_dict(raw)
    s = run_config(cfg, tmp_path / "one", {"mfc_snes_max_it": "1"}, quiet=True)
    stages = s["continuation"]
    assert len(stages) > 1 and all(st["iterations"] <= 1 for st in stages)
    assert s["iterations_total"] == sum(st["iterations"] for st in stages)
    free = run_config(cfg, tmp_path / "free", quiet=True)
    assert free["converged"] is True and "continuation" not in free


@pytest.mark.parametrize("name", ["mfc_snes_rtol", "mfc_snes_atol", "mfc_snes_max_it"])
def test_a_negative_newton_tolerance_is_refused(name, tmp_path):
    """PETSc reads a negative tolerance as "its default": -mfc_snes_rtol -1 ran with PETSc's
    1e-8 instead of the 1e-10 asked for by the config, without a word.  Refused, one line."""
    from fem_mfc import config
    from fem_mfc.errors import ConfigError
    from fem_mfc.pipeline import run_config
    raw = {"run": {"formulation": "hjb-fp"},
           "mesh": {"kind": "interval", "cells": 8, "lower": [-2.0], "upper": [2.0]},
           "problem": {"T": 0.5, "sigma": 0.6, "steps": 4, "G": "rho**2/2"},
           "solver": {"method": "newton"},
           "output": {"figures": False, "vtx": False, "progress": False}}
    with pytest.raises(ConfigError, match=name):
        run_config(config.from_dict(raw), tmp_path / "o", {name: "-1"}, quiet=True)


def test_a_mumps_work_array_too_small_is_factorised_again(monkeypatch):
    """MUMPS' INFOG(1) = −9 (a work array too small; seen intermittently on 2 ranks for a tiny
    problem) ended the LU path's Newton solve.  A negative relaxation ICNTL(14) forces it: the
    factorisation is repeated with more relaxation and gives the same solution; with no retries
    left the error names MUMPS' code and the relaxation.  Also under ``mpirun -n 2``."""
    import sys

    from fem_mfc.solvers.newton import newton
    nw = sys.modules[newton.__module__]

    def solve(**opts):
        return nw.newton(congested(), petsc_options={"mfc_linear": "lu", **opts},
                         continuation=False)
    base = solve()
    forced = solve(mfc_mat_mumps_icntl_14=-50)
    assert base.converged and forced.converged and forced.iterations == base.iterations
    assert "factorisation_retries" not in base.path
    retries = forced.path["factorisation_retries"]
    assert retries[0]["infog1"] == -9 and retries[0]["icntl_14"] == 100
    for a, b in zip(base.rho + base.u, forced.rho + forced.u):
        assert np.allclose(a.x.array, b.x.array, rtol=1e-10, atol=1e-12)
    monkeypatch.setattr(nw, "WORKSPACE_RETRIES", 0)
    failed = solve(mfc_mat_mumps_icntl_14=-50)
    assert not failed.converged
    assert "INFOG(1) = -9" in failed.reason and "ICNTL(14) = -50 %" in failed.reason, \
        failed.reason
    if MPI.COMM_WORLD.size == 1:              # another LU the user chose is still used
        other = solve(mfc_pc_factor_mat_solver_type="petsc")
        assert other.converged and other.path["factorisation"] == "petsc"


@pytest.mark.slow
def test_a_failed_solve_without_noise_is_advised_the_monotone_scheme(tmp_path):
    """σ = 0 on an annulus with an exit on the hole (Galerkin P1): no continuation stage
    converges, and the warning named no cause; it says now that nothing damps the
    transport and advises the monotone scheme, which solves the same problem."""
    text = textwrap.dedent("""
        [run]
        formulation = "hjb-fp"
        [mesh]
        kind = "annulus"
        radius = 2.0
        inner_radius = 0.5
        h = 0.3
        [problem]
        T = 1.0
        sigma = 0.0
        steps = 8
        Phi = "1"
        G = "0.5*rho**2"
        [rho0]
        mean = [1.2, 0.0]
        std = 0.3
        [solver]
        method = "newton"
        [output]
        figures = false
        vtx = false
        [[boundary]]
        tag = 2
        kind = "exit"
    """)
    p = run_cli(["run", str(write(tmp_path, text)), "--out", str(tmp_path / "g"), "--quiet"])
    assert p.returncode == 3 and "Traceback" not in p.stderr
    first = p.stderr.splitlines()[0]
    assert "sigma = 0" in first and 'stabilisation = "monotone"' in first, first
    mono = text.replace("[solver]", '[discretisation]\nstabilisation = "monotone"\n[solver]')
    p = run_cli(["run", str(write(tmp_path, mono, "m.toml")), "--out", str(tmp_path / "m"),
                 "--quiet"])
    assert p.returncode == 0, p.stderr
    assert read_summary(tmp_path / "m")["min_rho"] >= -1e-12


def test_picard_that_fails_on_an_attractive_coupling_says_so():
    """Fictitious play on an aggregation game (1D, G = −0.05ρ², mfg) ran its 500 iterations
    and ended "DIVERGED_MAX_IT" without a word on why; now the reason says the coupling is
    attractive and names Newton's continuation.  A congestion cut short gets no such hint."""
    from fem_mfc.problem import ControlProblem
    from fem_mfc.solvers.picard import ATTRACTIVE_HINT, picard
    mesh = dolfinx.mesh.create_interval(MPI.COMM_SELF, 20, [0.0, 1.0])
    x = ufl.SpatialCoordinate(mesh)
    common = dict(mesh=mesh, T=1.0, sigma=0.1, steps=5, Phi=(x[0] - 0.5) ** 2,
                  stabilisation="monotone", rho0=ufl.exp(-50 * (x[0] - 0.5) ** 2))
    r = picard(ControlProblem(G=lambda r: -0.05 * r ** 2, coupling="mfg", **common), max_it=2)
    assert not r.converged and r.reason.startswith("DIVERGED_MAX_IT")
    assert r.reason.endswith(ATTRACTIVE_HINT) and "method = 'newton'" in r.reason
    r = picard(ControlProblem(G=lambda r: 0.05 * r ** 2, coupling="mfg", **common), max_it=2)
    assert not r.converged and ATTRACTIVE_HINT not in r.reason
    common.pop("stabilisation")                                     # the Galerkin scheme
    r = picard(ControlProblem(G=lambda r: -0.5 * r ** 2, **common), max_it=2)
    assert not r.converged and r.reason.endswith(ATTRACTIVE_HINT)
