"""Shared plumbing of the literate classifier demos (``demos/demo_*.py``), not part of the
fem_mfc package: a demo imports it as ``_common`` from its own folder.

``--out DIR`` chooses the output folder, ``--quick`` applies a demo's small overrides (coarse
mesh, few layers and sweeps) so that tests can run the demo end to end in seconds.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path


def parse_args(default_out: str, argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=default_out, help=f"output folder (default {default_out})")
    p.add_argument("--quick", action="store_true", help="a small, fast version (for tests)")
    args, _ = p.parse_known_args(argv)   # tolerate Jupyter's own arguments
    return args


def load_config(toml: str | Path, overrides: dict | None = None) -> dict:
    """Read a demo config and apply ``{section: {key: value}}`` overrides, then validate (a
    value None removes the key: the run takes its default)."""
    import tomllib

    from fem_mfc import config
    toml = Path(toml)
    raw = tomllib.loads(toml.read_text())
    raw = copy.deepcopy(raw)
    for section, keys in (overrides or {}).items():
        table = raw.setdefault(section, {})
        table.update(keys)
        for k in [k for k, v in keys.items() if v is None]:
            del table[k]
    return config.validate(raw, source=str(toml), base_dir=toml.resolve().parent)


def run(cfg: dict, out: str | Path, name: str) -> dict:
    """Run a validated classifier config into ``out`` and print the headline numbers."""
    from mpi4py import MPI

    from fem_mfc.pipeline import run_config
    s = run_config(cfg, out, config_path=name)
    if MPI.COMM_WORLD.rank == 0:
        b = s.get("baseline", {})
        print(f"{name}: train accuracy {s['train_accuracy']:.3f}, test accuracy "
              f"{s['test_accuracy']:.3f}, J = {s['J']:.4g}, {s.get('method', 'sweeps')} "
              f"iterations {s['sweeps']}, residual {s['residual']:.2e}, converged "
              f"{s['converged']}, wall {s['wall_time_s']:.1f} s"
              + (f"; torch baseline test accuracy {b['test_accuracy']:.3f}" if b else ""))
        print(f"report: {Path(out).absolute() / 'report.md'}")
    return s


# --quick: Newton still converges (~10 steps); two baseline seeds, a 4000-point fresh sample
QUICK = {"mesh": {"h": 0.35}, "problem": {"steps": 6},
         "training": {"max_sweeps": 15, "epochs": 50, "seeds": 2, "particles": 200,
                      "fresh": 4000}}
