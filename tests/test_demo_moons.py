"""The flagship demo runs end to end in quick mode and writes its summary and report."""
from __future__ import annotations

import json

from conftest import run_demo


def test_demo_moons_quick(tmp_path):
    out = tmp_path / "demo"
    r = run_demo("demo_moons.py", out, timeout=600)
    s = json.loads((out / "summary.json").read_text())
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
    J = s["J_history"]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(J, J[1:]))
    report = (out / "report.md").read_text()
    assert "test accuracy" in report and "torch ResNet" in report
    for f in s["figures"]:
        assert f"]({f})" in report
        assert (out / f).is_file() and (out / f).stat().st_size > 1000, f
    assert {"decision_regions.png", "densities.gif", "trajectories.png"} <= set(s["figures"])
    assert (out / "densities.bp").is_dir()
    assert "test accuracy" in r.stdout
