"""The Lie–Poisson demo runs in --quick mode and its summary.json holds the expected figures."""
import json

from conftest import run_demo


def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    run_demo("demo_lie_poisson.py", out, timeout=300)
    s = json.loads((out / "summary.json").read_text())
    for png in s["figures"]:
        assert (out / png).stat().st_size > 1000
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
    orders = s["observed_orders"]
    for name, p in (("lphj1", 1), ("lphj2", 2), ("lphj4", 4), ("midpoint", 2), ("rk4", 4)):
        assert abs(orders[name] - p) <= 0.25
    assert {"RK45", "DOP853", "lphj2"} <= set(s["work_precision"])
