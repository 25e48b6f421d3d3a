"""The literate NLS demo runs in quick mode and produces its figures and honest numbers."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_nls_soliton_quick(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, str(REPO / "demos" / "demo_nls_soliton.py"), "--quick",
                        "--out", str(out)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
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
