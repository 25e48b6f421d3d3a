"""The generative-flow demo runs end to end in quick mode and writes summary and figures."""
from __future__ import annotations

import json

from conftest import run_demo


def test_demo_generative_quick(tmp_path):
    out = tmp_path / "demo"
    r = run_demo("demo_generative.py", out, timeout=600)
    s = json.loads((out / "summary.json").read_text())
    for k in ("KL_final", "loglik_flow", "loglik_kde", "loglik_gaussian", "sweeps",
              "mass_error", "ndofs", "nsteps"):
        assert k in s, k
    assert s["formulation"] == "generative"
    assert s["KL_final"] < 0.5 * s["KL_initial"]
    KL = s["KL_history"]
    assert KL[-1] < KL[0]
    assert s["mass_error"] < 1e-12
    assert s["loglik_flow"] > s["loglik_gaussian"]
    assert s["sample_roundtrip_error"] < 1e-8
    for f in s["figures"]:
        assert (out / f).is_file() and (out / f).stat().st_size > 1000, f
    assert {"densities.png", "densities.gif", "samples.png", "history_KL.png"} <= set(s["figures"])
    assert "log-likelihood" in r.stdout
