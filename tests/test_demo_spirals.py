"""demo_spirals.py runs end to end in quick mode (the full run's accuracy is in its report)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_spirals_quick(tmp_path):
    out = tmp_path / "spirals"
    r = subprocess.run([sys.executable, str(REPO / "demos" / "demo_spirals.py"), "--quick",
                        "--out", str(out)], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["dataset"] == "spirals" and s["K"] == 2
    assert s["mass_error"] < 1e-12
    J = s["J_history"]
    assert J[-1] < J[0] and all(b <= a * (1 + 1e-12) for a, b in zip(J, J[1:]))
    assert (out / "report.md").is_file() and (out / "decision_regions.png").is_file()
