"""The equivalence demo runs in quick mode and writes its table, figures and summary."""
from __future__ import annotations

import json

from conftest import run_demo


def test_demo_equivalence_quick(tmp_path):
    out = tmp_path / "demo"
    run_demo("demo_equivalence.py", out, timeout=300)
    for f in ("table.md", "convergence.png", "densities.png", "summary.json"):
        assert (out / f).stat().st_size > 0, f
    s = json.loads((out / "summary.json").read_text())
    assert s["quick"] is True
    rows = s["1"]["rows"]
    assert len(rows) == 3 and len(s["2"]["rows"]) == 2
    for key in ("rho_hjb_qhd", "rho_hjb_pair", "J_hjb_pair"):
        assert rows[-1][key] < rows[0][key], key
        assert s["1"]["rates"][key][-1] > 0.6, (key, s["1"]["rates"][key])
    assert "‖ρ_HJB−ρ_QHD‖" in (out / "table.md").read_text()
