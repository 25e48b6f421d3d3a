"""The literate NLS demo runs in quick mode and produces its figures and honest numbers."""
from __future__ import annotations

import json

from conftest import run_demo


def test_demo_nls_soliton_quick(tmp_path):
    out = tmp_path / "demo"
    r = run_demo("demo_nls_soliton.py", out, timeout=300)
    for f in ("soliton.png", "midpoint_vs_rk4.png", "demo_summary.json",
              "packet_disk/summary.json", "packet_disk/invariants.png",
              "packet_disk/rho_snapshots.png", "packet_disk/phase_final.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert (out / "packet_disk" / "rho_phase.bp").is_dir()
    s = json.loads((out / "demo_summary.json").read_text())
    assert abs(s["soliton"]["speed"] - 1.0) < 1e-2
    assert abs(s["soliton"]["peak_final"] - 1.0) < 0.05
    assert s["packet_disk"]["mass_error"] < 1e-12
    assert s["packet_disk"]["energy_error"] < 1e-11
    c = s["contrast"]
    mid, rk4 = c["midpoint (averaged g)"], c["RK4"]
    assert mid["mass_drift"] < 1e-12 and mid["energy_drift"] < 1e-11
    assert rk4["mass_drift"] > 1e3 * max(mid["mass_drift"], 1e-16)
    assert c["midpoint (g at midpoint)"]["energy_drift"] > 1e3 * mid["energy_drift"]
    assert "soliton: speed" in r.stdout
