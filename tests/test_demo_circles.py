"""demo_circles.py (quick): the 2D run and the run lifted to a 3D ball both complete, and the
3D (augmented) network separates the circles better than the 2D flow of the plane."""
from __future__ import annotations

import json

from conftest import run_demo


def test_demo_circles_quick(tmp_path):
    out = tmp_path / "circles"
    run_demo("demo_circles.py", out, timeout=600)
    both = json.loads((out / "demo_summary.json").read_text())
    s2 = json.loads((out / "circles2d" / "summary.json").read_text())
    s3 = json.loads((out / "circles3d" / "summary.json").read_text())
    assert s2["dim"] == 2 and s3["dim"] == 3
    assert both["circles3d"]["test_accuracy"] == s3["test_accuracy"]
    assert s3["test_accuracy"] >= 0.95
    assert s3["test_accuracy"] > s2["test_accuracy"]
    assert s3["mass_error"] < 1e-12 and s2["mass_error"] < 1e-12
    for d in ("circles2d", "circles3d"):
        assert (out / d / "report.md").is_file()
