"""Every literate demo of ``demos/`` runs end to end with ``--quick`` and passes its checks:
serially, and under ``mpirun -n 2`` for the demos that run in parallel.

A demo is a script: the test runs it in a child process (from its output folder's parent, so
that it finds its own files wherever it is started) and checks the files it wrote with the
demo's ``check_*`` function below.  No test imports a demo.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, check_comparison_table, read_summary, run_demo


def nonempty(out: Path, *names, min_size: int = 1):
    for name in names:
        f = out / name
        assert f.exists(), name
        if f.is_file():
            assert f.stat().st_size >= min_size, name


def comparison(out: Path):
    """The fair comparison of a classifier run (issue 13): the report's table has every column
    for the PDE network, the ResNet and the neural ODE (best and mean ± std over the seeds)
    and the Bayes ceiling; the summary has the fresh-sample accuracies."""
    s = read_summary(out)
    c = s["comparison"]
    check_comparison_table((out / "report.md").read_text(), seeds=c["seeds"])
    assert c["fresh_n"] > 0 and 0 < c["bayes_ceiling"] <= 1
    for r in c["rows"][:-1]:
        assert r["fresh_accuracy"] is not None, r["model"]


def monotone(J):
    return all(b <= a * (1 + 1e-12) for a, b in zip(J, J[1:]))


# -- the checks of each demo -----------------------------------------------------------------
def check_lq_gaussian(out: Path, stdout: str):
    """The demo's own solve (UFL Lagrangian, one SNES per layer) and ``fem-mfc run`` reach the
    same discrete solution; the errors against the closed form are small and shrink under
    refinement."""
    s = read_summary(out)
    J, a = s["J"], s["agreement"]
    assert a["J_diff"] <= 1e-8 * abs(J) and a["J_value_diff"] <= 1e-8 * abs(J), a
    for key in ("err_rho_L2", "err_u_L2", "err_J"):
        assert a[f"{key}_diff"] <= 1e-6 * s[key] + 1e-12, (key, a)
    assert abs(J - s["J_value_identity"]) <= 1e-8 * abs(J)
    assert s["mass_error"] < 1e-12
    assert s["err_J"] < 0.05 * s["J_exact"] and s["err_rho_L2"] < 0.1
    rows, rates = s["convergence"]["levels"], s["convergence"]["rates"]
    assert len(rows) == 2 and rows[1]["h"] < rows[0]["h"]
    for key in ("err_rho_L2", "err_u_L2", "err_J"):
        assert rows[-1][key] < rows[0][key], (key, rows)
    assert rates["err_rho_L2"][-1] > 1.0, rates
    nonempty(out, "rho.png", min_size=1000)
    nonempty(out, "rho.bp", "u.bp", "solve/summary.json", "refine/convergence.json")
    assert read_summary(out / "solve")["J"] == s["solve"]["J"] == a["J_run"]
    assert "fem-mfc run: J =" in stdout


def check_equivalence(out: Path, stdout: str):
    nonempty(out, "table.md", "convergence.png", "densities.png", "summary.json", "rho.bp",
             "u.bp", "run/summary.json")
    nonempty(out, "rho.png", min_size=1000)
    s = read_summary(out)
    assert s["quick"] is True
    one = s["part1"]
    J = one["J"]
    assert one["J_library_diff"] <= 1e-8 * abs(J) and one["J_run_diff"] <= 1e-8 * abs(J), one
    assert abs(J - one["J_value_identity"]) <= 1e-8 * abs(J)
    assert one["mass_error"] < 1e-12 and one["min_rho"] > 0
    rows = s["1"]["rows"]
    assert len(rows) == 3 and len(s["2"]["rows"]) == 2
    for key in ("rho_hjb_qhd", "rho_hjb_pair", "J_hjb_pair"):
        assert rows[-1][key] < rows[0][key], key
        assert s["1"]["rates"][key][-1] > 0.6, (key, s["1"]["rates"][key])
    assert "‖ρ_HJB−ρ_QHD‖" in (out / "table.md").read_text()


def check_moons(out: Path, stdout: str):
    s = read_summary(out)
    for k in ("train_accuracy", "test_accuracy", "J", "control_energy", "empirical_objective",
              "sweeps", "residual", "ndofs", "nsteps", "baseline", "particles"):
        assert k in s, k
    assert s["formulation"] == "classifier" and s["dataset"] == "moons"
    assert s["test_accuracy"] > 0.8 and s["baseline"]["test_accuracy"] > 0.6
    assert s["mass_error"] < 1e-12 and s["value_identity_gap"] < 1e-10 * abs(s["J"])
    # the flagship is trained to convergence by Newton on the EAFE transport (issue 13)
    assert s["method"] == "newton" and s["transport"] == "eafe"
    assert s["converged"] is True and s["residual"] <= 1e-6 and s["iterations"] <= 15
    assert s["min_rho"] >= -1e-12
    assert "mesh Péclet number" not in (out / "run.log").read_text()
    assert monotone(s["J_history"])
    report = (out / "report.md").read_text()
    assert "test accuracy" in report and "torch ResNet" in report
    comparison(out)
    for f in s["figures"]:
        assert f"]({f})" in report
        nonempty(out, f, min_size=1000)
    assert {"decision_regions.png", "densities.gif", "trajectories.png"} <= set(s["figures"])
    assert (out / "densities.bp").is_dir()
    assert "test accuracy" in stdout
    # the saved model applied to a fresh sample (demo's last cell)
    assert s["model"] == "model" and (out / "model" / "model.json").is_file()
    acc = float(stdout.split("saved model on 500 new points: accuracy ")[1].split()[0])
    assert acc > 0.8


def check_spirals(out: Path, stdout: str):
    s = read_summary(out)
    assert s["dataset"] == "spirals" and s["K"] == 2
    assert s["mass_error"] < 1e-12
    J = s["J_history"]
    assert J[-1] < J[0] and monotone(J)
    nonempty(out, "report.md", "decision_regions.png")
    comparison(out)


def check_circles(out: Path, stdout: str):
    """The 2D run and the run lifted to a 3D ball both complete, and the lifted (augmented)
    network separates the circles better than the flow of the plane."""
    both = read_summary(out, "demo_summary.json")
    s2, s3 = read_summary(out / "circles2d"), read_summary(out / "circles3d")
    assert s2["dim"] == 2 and s3["dim"] == 3
    assert both["circles3d"]["test_accuracy"] == s3["test_accuracy"]
    assert s3["test_accuracy"] >= 0.95
    assert s3["test_accuracy"] > s2["test_accuracy"]
    assert s3["mass_error"] < 1e-12 and s2["mass_error"] < 1e-12
    nonempty(out, "circles2d/report.md", "circles3d/report.md")
    comparison(out / "circles2d")
    comparison(out / "circles3d")


def check_dictionary(out: Path, stdout: str):
    """Three dictionaries; the weights are saved and reloaded as a NumPy ResNet with the PDE
    side's accuracy."""
    for name, m in (("tanh", 32), ("affine", 6), ("rotation", 1)):
        s = read_summary(out / name)
        assert s["dictionary"] in name or name == "tanh"
        assert s["weights_per_layer"] == m and np.shape(s["theta"]) == (s["nsteps"], m)
        J = s["J_history"]
        assert monotone(J) and J[-1] < J[0]
        assert s["mass_error"] < 1e-12 and s["value_identity_gap"] < 1e-10 * abs(s["J"])
        with np.load(out / name / "weights.npz") as z:
            assert z["theta"].shape == (s["nsteps"], m)
        nonempty(out / name, "report.md")
    acc = dict(re.findall(r"^(\w+)\s+\(.*test accuracy ([\d.]+)", stdout, re.M))
    reloaded = dict(re.findall(r"^(\w+)\s+\(.*weights.npz: ([\d.]+)\)", stdout, re.M))
    assert set(acc) == {"tanh", "affine", "rotation"} and acc == reloaded
    assert float(acc["rotation"]) > 0.9 and float(acc["tanh"]) > 0.8


def check_generative(out: Path, stdout: str):
    s = read_summary(out)
    for k in ("KL_final", "loglik_flow", "loglik_kde", "loglik_gaussian", "sweeps",
              "mass_error", "ndofs", "nsteps"):
        assert k in s, k
    assert s["formulation"] == "generative"
    assert s["KL_final"] < 0.5 * s["KL_initial"]
    assert s["KL_history"][-1] < s["KL_history"][0]
    assert s["mass_error"] < 1e-12
    assert s["loglik_flow"] > s["loglik_gaussian"]
    assert s["sample_roundtrip_error"] < 1e-8
    for f in s["figures"]:
        nonempty(out, f, min_size=1000)
    assert {"densities.png", "densities.gif", "samples.png", "history_KL.png"} <= set(s["figures"])
    assert "log-likelihood" in stdout
    # the saved flow's new samples, in the data's units: their mean near the data's
    meta = read_summary(out / "model", "model.json")
    assert s["model"] == "model" and meta["kind"] == "generative"
    mean = np.array(re.search(r"400 new samples .* mean \[([-\d. ]+)\]", stdout).group(1)
                    .split(), float)
    assert np.all(np.abs(mean - meta["feature_mean"]) < 0.25 * np.array(meta["feature_scale"]))


def check_nls_soliton(out: Path, stdout: str):
    """Soliton shape and speed, the packet's invariants, midpoint vs RK4."""
    nonempty(out, "soliton.png", "midpoint_vs_rk4.png", "demo_summary.json",
             "packet_disk/summary.json", "packet_disk/invariants.png",
             "packet_disk/rho_snapshots.png", "packet_disk/phase_final.png")
    assert (out / "packet_disk" / "rho_phase.bp").is_dir()
    s = read_summary(out, "demo_summary.json")
    assert abs(s["soliton"]["speed"] - 1.0) < 1e-2
    assert abs(s["soliton"]["peak_final"] - 1.0) < 0.05
    assert s["packet_disk"]["mass_error"] < 1e-12
    assert s["packet_disk"]["energy_error"] < 1e-11
    c = s["contrast"]
    mid, rk4 = c["midpoint (averaged g)"], c["RK4"]
    assert mid["mass_drift"] < 1e-12 and mid["energy_drift"] < 1e-11
    assert rk4["mass_drift"] > 1e3 * max(mid["mass_drift"], 1e-16)
    assert c["midpoint (g at midpoint)"]["energy_drift"] > 1e3 * mid["energy_drift"]
    assert "soliton: speed" in stdout


def check_lie_poisson(out: Path, stdout: str):
    s = read_summary(out)
    for png in s["figures"]:
        nonempty(out, png, min_size=1000)
    assert not list(out.glob("*.tmp"))                       # atomic write left no temp file
    tr = s["training"]
    assert tr["shooting_residual"] <= 1e-10 and tr["loss_after"] <= 0.3 * tr["loss_before"]
    gaps = s["particles_vs_lie_poisson"]
    assert gaps["discrete_max_gap"] <= 1e-14 and gaps["continuous_max_gap"] <= 1e-9
    m = s["long_time"]["methods"]
    for name in ("lphj1", "lphj2", "lphj4", "midpoint"):
        assert m[name]["max_casimir_rel_error"] <= 1e-13
    assert m["rk4"]["max_casimir_rel_error"] >= 1e-8
    assert m["lphj2"]["max_energy_rel_error"] <= 1e-10
    for name, p in (("lphj1", 1), ("lphj2", 2), ("lphj4", 4), ("midpoint", 2), ("rk4", 4)):
        assert abs(s["observed_orders"][name] - p) <= 0.25
    assert {"RK45", "DOP853", "lphj2"} <= set(s["work_precision"])


def check_aggregation(out: Path, stdout: str):
    """An attractive game on graded and uniform intervals: every solve converged (by
    continuation), J equals its value identity, ρ ≥ 0 (monotone scheme); the graded meshes
    come closer to the soliton's height |c|/(16ε²) with more cells, and much closer than the
    uniform mesh of as many cells; figures and the printed table exist."""
    s = read_summary(out)
    assert s["quick"] is True and s["converged"] is True
    assert s["rho_max_soliton"] == pytest.approx(250.0) and s["L"] == pytest.approx(0.002)
    rows, uni = s["graded"], s["uniform"]
    for q in rows + [uni]:
        assert q["converged"] and q["stages"] >= 2                 # continuation in c
        assert abs(q["J"] - q["J_value_identity"]) <= 1e-8 * abs(q["J"])
        assert q["min_rho"] >= -1e-12 and q["mass_error"] < 1e-10
    assert rows[-1]["h_min"] == pytest.approx(rows[0]["h_min"] / 2, rel=0.02)
    tops = [q["max_rho"] for q in rows]
    assert tops == sorted(tops) and tops[-1] < 250 and tops[-1] > 2.5 * uni["max_rho"]
    assert rows[-1]["J"] < rows[0]["J"] < uni["J"]                  # J decreases to its limit
    for f in s["figures"]:
        nonempty(out, f, min_size=1000)
    assert set(s["figures"]) == {"profile.png", "spacetime.png", "cells.png"}
    assert "| graded | 100 |" in stdout and "| uniform | 100 |" in stdout


def check_crowd_3d(out: Path, stdout: str):
    """Congested crowd in a 3D room with a pillar: Newton converges on the sweep path with the
    per-step ILU that the automatic choice takes in 3D; J equals its value identity, mass is
    conserved, the monotone scheme keeps rho >= 0, the crowd gets past the pillar; figures,
    ParaView series and the printed table exist (serially and on 2 ranks: the full size is
    meant for ``mpirun -n 2``)."""
    s = read_summary(out)
    assert s["quick"] is True and s["ranks"] in (1, 2)
    assert s["converged"] is True and s["method"] == "newton", s["reason"]
    assert 1 <= s["iterations"] <= 15 and s["residual"] < 1e-8
    assert s["solver_path"]["linear"] == "sweep" and s["solver_path"]["step_kind"] == "ilu"
    assert 1000 <= s["ndofs"] <= 10000 and s["nsteps"] >= 5
    J = s["J"]
    assert J > 0 and abs(J - s["J_value_identity"]) <= 1e-8 * abs(J)
    assert s["mass_error"] < 1e-10
    assert s["min_rho"] >= -1e-3 * s["max_rho"]
    assert s["mass_beyond_pillar_T"] > 0.5                  # the crowd reached the far side
    assert s["peak_memory_bytes"] > 0 and s["wall_time_s"] > 0
    for f in s["figures"]:
        nonempty(out, f, min_size=1000)
    assert set(s["figures"]) == {"rho_slices.png", "rho_isosurfaces.png"}
    for series in ("rho.bp", "u.bp"):
        assert (out / series).is_dir() and any((out / series).iterdir()), series
    assert "Newton iterations" in stdout and "peak memory" in stdout


# demo -> (check, runs under mpirun -n 2, slow: the longest quick runs, out of test-fast)
def check_evacuation(out: Path, stdout: str):
    """A crowd leaves a room through two doors: every level converges with J equal to its
    value identity and the mass balance ∫ρ + exited = 1 to round-off; both doors are used;
    the differences between levels are recorded; figures, GIF and ParaView series exist."""
    s = read_summary(out)
    rows = s["levels"]
    assert s["converged"] and len(rows) == 2 and rows[1]["h"] < rows[0]["h"]
    for r in rows:
        assert abs(r["J"] - r["J_value_identity"]) <= 1e-8 * abs(r["J"]), r
        assert r["mass_error"] < 1e-10 and r["min_rho"] > -0.05, r
        assert 0.3 < r["exited"] < 1.0 and min(r["by_door"].values()) > 0.05, r
        assert abs(sum(r["by_door"].values()) - r["exited"]) < 1e-12
        assert 0.0 < r["t_half"] < 3.0
    assert len(s["rates"]["J"]["differences"]) == 1
    for f in s["figures"]:
        nonempty(out, f, min_size=1000)
    nonempty(out, "rho.bp", "u.bp")
    assert "| h | steps |" in stdout


DEMOS = {
    "demo_lq_gaussian.py": (check_lq_gaussian, True, False),
    "demo_equivalence.py": (check_equivalence, False, True),   # 2 ranks: test_qhd_mpi, hjb_fp_mpi
    "demo_moons.py": (check_moons, False, True),   # 2 ranks: test_learning_mpi, training
    "demo_spirals.py": (check_spirals, False, True),
    "demo_circles.py": (check_circles, False, True),
    "demo_dictionary.py": (check_dictionary, False, True),
    "demo_generative.py": (check_generative, False, True),
    "demo_nls_soliton.py": (check_nls_soliton, False, True),
    "demo_lie_poisson.py": (check_lie_poisson, False, True),
    "demo_crowd_3d.py": (check_crowd_3d, True, True),
    "demo_evacuation.py": (check_evacuation, False, True),    # 2 ranks: test_exits
    "demo_aggregation.py": (check_aggregation, False, True),  # 2 ranks: test_mesh_grading
}


def cases(ranks: int):
    out = []
    for name, (_, parallel, slow) in DEMOS.items():
        if ranks > 1 and not parallel:
            continue
        marks = [pytest.mark.slow] if slow or ranks > 1 else []
        out.append(pytest.param(name, marks=marks, id=name[:-3]))
    return out


def test_every_demo_is_tested():
    assert {p.name for p in (REPO / "demos").glob("demo_*.py")} == set(DEMOS)


@pytest.mark.parametrize("name", cases(1))
def test_demo(name, tmp_path):
    out = tmp_path / name[:-3]
    p = run_demo(name, out, timeout=900)
    DEMOS[name][0](out, p.stdout)


@pytest.mark.parametrize("name", cases(2))
def test_demo_two_ranks(name, tmp_path):
    """The same demo under ``mpirun -n 2`` (a serial test that launches mpirun): the same
    checks; the figures are drawn on rank 0 from the gathered fields."""
    out = tmp_path / name[:-3]
    p = run_demo(name, out, ranks=2, timeout=900)
    DEMOS[name][0](out, p.stdout)

