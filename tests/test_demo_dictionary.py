"""The dictionary-network demo runs end to end in quick mode: three dictionaries, weights saved
and reloaded as a NumPy ResNet with the PDE side's accuracy."""
from __future__ import annotations

import json
import re

import numpy as np

from conftest import run_demo


def test_demo_dictionary_quick(tmp_path):
    out = tmp_path / "demo"
    r = run_demo("demo_dictionary.py", out, timeout=600)
    for name, m in (("tanh", 32), ("affine", 6), ("rotation", 1)):
        s = json.loads((out / name / "summary.json").read_text())
        assert s["dictionary"] in name or name == "tanh"
        assert s["weights_per_layer"] == m and np.shape(s["theta"]) == (s["nsteps"], m)
        J = s["J_history"]
        assert all(b <= a * (1 + 1e-12) for a, b in zip(J, J[1:])) and J[-1] < J[0]
        assert s["mass_error"] < 1e-12 and s["value_identity_gap"] < 1e-10 * abs(s["J"])
        with np.load(out / name / "weights.npz") as z:
            assert z["theta"].shape == (s["nsteps"], m)
        assert (out / name / "report.md").is_file()
    acc = dict(re.findall(r"^(\w+)\s+\(.*test accuracy ([\d.]+)", r.stdout, re.M))
    reloaded = dict(re.findall(r"^(\w+)\s+\(.*weights.npz: ([\d.]+)\)", r.stdout, re.M))
    assert set(acc) == {"tanh", "affine", "rotation"} and acc == reloaded
    assert float(acc["rotation"]) > 0.9 and float(acc["tanh"]) > 0.8
