"""demo_spirals.py runs end to end in quick mode (the full run's accuracy is in its report)."""
from __future__ import annotations

import json

from conftest import run_demo


def test_demo_spirals_quick(tmp_path):
    out = tmp_path / "spirals"
    run_demo("demo_spirals.py", out, timeout=600)
    s = json.loads((out / "summary.json").read_text())
    assert s["dataset"] == "spirals" and s["K"] == 2
    assert s["mass_error"] < 1e-12
    J = s["J_history"]
    assert J[-1] < J[0] and all(b <= a * (1 + 1e-12) for a, b in zip(J, J[1:]))
    assert (out / "report.md").is_file() and (out / "decision_regions.png").is_file()
