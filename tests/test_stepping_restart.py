"""Checkpoints of the time-stepped runs (``heat``, ``nls``, the QHD quantum signature) and
restarts from them.

With ``[output] checkpoint_every = k`` these runs write, every k time steps, the state, what
the next step reads (the midpoint rule's previous state, for its extrapolated first guess),
the figures' snapshots so far and the invariants' histories.  A restart takes the remaining
steps of the uninterrupted run: the same summary to round-off (the same process: bitwise in
practice), also when the checkpoint was written on another number of ranks.  They were
refused before (exit 2): a killed long NLS run was lost.
"""
from __future__ import annotations

import json
import math

import pytest

from fem_mfc import checkpoint, config
from fem_mfc.errors import ConfigError
from fem_mfc.pipeline import run_config
from helpers import read_summary, run_cli
from test_checkpoint_restart import killed_after_checkpoint

OUTPUT = {"figures": False, "vtx": False, "progress": False, "checkpoint_every": 5}
HEAT = {"run": {"formulation": "heat"},
        "mesh": {"kind": "rectangle", "cells": 8, "lower": [-3.0, -3.0], "upper": [3.0, 3.0]},
        "problem": {"T": 0.5, "sigma": 0.8, "steps": 12},
        "rho0": {"kind": "gaussian", "mean": [0.0, 0.0], "std": 0.7},
        "exact": {"solution": "heat-gaussian"}}
SOLITON = {"run": {"formulation": "nls"},
           "mesh": {"kind": "interval", "cells": 120, "lower": [-15.0], "upper": [15.0]},
           "problem": {"T": 1.2, "steps": 12, "V": "0", "G": "0"},
           "rho0": {"mean": [0.0]},
           "nls": {"hbar": 1.0, "kappa": -1.0, "initial": "soliton", "eta": 1.0,
                   "wavenumber": 1.0, "x0": [-2.0]},
           "solver": {"rtol": 1e-12, "atol": 1e-14},
           "exact": {"solution": "soliton"}}
QUANTUM = {"run": {"formulation": "qhd"},
           "mesh": {"kind": "interval", "cells": 16, "lower": [-1.0], "upper": [1.0]},
           "problem": {"T": 0.2, "steps": 12, "Phi": "0", "V": "0.5*x**2",
                       "G": "rho**2/2"},
           "rho0": {"kind": "formula", "formula": "1 + 0.5*cos(pi*x)"},
           "qhd": {"signature": "quantum", "hbar": 0.5, "S0": "0.3*sin(pi*x/2)"}}
CASES = {
    "heat": HEAT,
    "nls-midpoint": SOLITON,
    "nls-triple-jump": {**SOLITON, "nls": {**SOLITON["nls"], "integrator": "triple-jump"}},
    "nls-ground-state": {**SOLITON, "exact": {"solution": "none"},
                         "problem": {**SOLITON["problem"], "V": "0.5*x0**2"},
                         "nls": {"hbar": 1.0, "kappa": 1.0, "initial": "ground-state",
                                 "gs_tol": 1e-8}},
    "qhd-quantum": QUANTUM,
}
SKIP = {"wall_time_s", "ranks", "converged", "restarted_at_step"}


def raw_config(name: str, **output) -> dict:
    raw = json.loads(json.dumps(CASES[name]))
    raw["output"] = {**OUTPUT, **output}
    return raw


def same_summary(a: dict, b: dict, rel: float) -> None:
    """Every number of summary ``a`` equals ``b``'s to ``rel`` (relative, or absolute below
    1e-12 — drifts of round-off size), also inside its tables (``resolution``, ``checks``:
    a restart's resolution estimate read the wave number at its checkpoint, not at t = 0)."""
    assert b["converged"] is True and a["converged"] is True
    for k, v in a.items():
        if isinstance(v, dict) and k not in SKIP:
            same_summary({**v, "converged": True}, {**b[k], "converged": True}, rel)
        if k in SKIP or isinstance(v, (bool, str, dict)) or v is None:
            continue
        for x, y in zip(*[[u] if not isinstance(u, list) else u for u in (v, b[k])]):
            if isinstance(x, (int, float)):
                assert y == pytest.approx(x, rel=rel, abs=1e-12), k


@pytest.mark.parametrize("name", list(CASES))
def test_restart_takes_the_uninterrupted_steps(name, tmp_path, monkeypatch):
    """Checkpoints after steps 5 and 10 of 12 (the finished run keeps its last one here);
    the restart from step 10 ends with the uninterrupted run's summary and figures."""
    figures = name == "heat"
    cfg = config.from_dict(raw_config(name, figures=figures, vtx=True))
    monkeypatch.setattr(checkpoint, "remove", lambda *a, **k: None)
    full = run_config(cfg, tmp_path / "full", quiet=True)
    monkeypatch.undo()
    ck = tmp_path / "full.checkpoint"
    meta = json.loads((ck / "meta.json").read_text())
    assert meta["phase"] == "stepping" and meta["step"] == 10
    again = run_config(cfg, tmp_path / "again", quiet=True, restart=ck)
    assert again["restarted_at_step"] == 10 and "restarted_at_step" not in full
    same_summary(full, again, 1e-13)
    if figures:                     # the snapshots before the checkpoint came from it
        assert (tmp_path / "again" / "rho_snapshots.png").is_file()
    # the restart's series begins at the checkpoint's time (it began a step later), and its
    # steps are the uninterrupted series' from there
    from fem_mfc.compat import adios2
    series = {"heat": "rho.bp", "qhd-quantum": "qhd.bp"}.get(name, "rho_phase.bp")

    def times(run):
        with adios2().FileReader(str(tmp_path / run / series)) as f:
            return [float(f.read("step", step_selection=[k, 1])[0]) for k in range(f.num_steps())]
    tau = cfg["problem"]["T"] / cfg["problem"]["steps"]
    assert times("again") == pytest.approx(times("full")[10:]) and times("again")[0] == \
        pytest.approx(10 * tau)
    # a finished run removes its checkpoint
    run_config(cfg, tmp_path / "once", quiet=True)
    assert not (tmp_path / "once.checkpoint").exists()


def test_checkpoint_of_another_kind_is_refused(tmp_path, monkeypatch):
    """A time-stepping checkpoint of another problem (hash) is refused with one line."""
    cfg = config.from_dict(raw_config("heat"))
    monkeypatch.setattr(checkpoint, "remove", lambda *a, **k: None)
    run_config(cfg, tmp_path / "full", quiet=True)
    other = raw_config("heat")
    other["problem"]["sigma"] = 0.7
    with pytest.raises(ConfigError, match="--restart"):
        run_config(config.from_dict(other), tmp_path / "b", quiet=True,
                   restart=tmp_path / "full.checkpoint")


@pytest.mark.slow
@pytest.mark.parametrize("name,writer,reader", [("nls-midpoint", 1, 2), ("qhd-quantum", 2, 1)])
def test_killed_run_restarts_on_other_ranks(name, writer, reader, tmp_path):
    """SIGKILL right after the second checkpoint (step 4 of 12, every 2 steps) on N ranks,
    restarted on M: the uninterrupted run's summary to solver tolerance."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(config.dumps(config.from_dict(raw_config(name, checkpoint_every=2))))
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "full"), "--quiet"])
    assert p.returncode == 0, p.stderr
    full = read_summary(tmp_path / "full")
    ck = killed_after_checkpoint(cfg, tmp_path / "cut", writer, 2, phase="stepping")
    meta = json.loads((ck / "meta.json").read_text())
    assert meta["step"] == 4 and meta["ranks"] == writer
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "cut"), "--quiet", "--restart",
                 str(ck)], ranks=reader)
    assert p.returncode == 0, p.stderr
    cut = read_summary(tmp_path / "cut")
    assert cut["restarted_at_step"] == 4
    same_summary(full, cut, 1e-9)
    assert not ck.exists() and math.isfinite(full["energy"])


@pytest.mark.parametrize("damage", ["meta.json", "nodal.npz", "state.bp", "state.bp-older"])
def test_a_damaged_checkpoint_is_refused_with_one_line(damage, tmp_path, monkeypatch):
    """A checkpoint cut short (garbage meta.json, a truncated nodal.npz, an emptied ADIOS2
    file) gave a traceback (JSONDecodeError, BadZipFile, RuntimeError; exit 1) — or, for the
    emptied ADIOS2 file, waited in ADIOS2 for ever, deaf to SIGTERM.  Now a ConfigError naming
    --restart and the part (exit 2), also for a checkpoint written before meta.json recorded
    the ADIOS2 files' sizes ("older")."""
    import shutil
    cfg = config.from_dict(raw_config("heat"))
    monkeypatch.setattr(checkpoint, "remove", lambda *a, **k: None)
    run_config(cfg, tmp_path / "full", quiet=True)
    ck = tmp_path / "full.checkpoint"
    if damage == "state.bp-older":
        meta = json.loads((ck / "meta.json").read_text())
        del meta["state_files"]
        (ck / "meta.json").write_text(json.dumps(meta))
        damage = "state.bp"
    part = ck / damage
    if damage == "meta.json":
        part.write_text("{ not json")
    elif damage == "nodal.npz":
        part.write_bytes(part.read_bytes()[:100])
    else:
        for f in part.iterdir():
            if f.is_file():
                f.write_bytes(b"")
            else:
                shutil.rmtree(f)
    with pytest.raises(ConfigError, match=r"--restart.*intact checkpoint \(" + damage):
        run_config(cfg, tmp_path / "again", quiet=True, restart=ck)



def test_a_restart_that_writes_no_checkpoint_removes_the_one_it_read(tmp_path, monkeypatch):
    """A restart from OUT.checkpoint that finished before writing a checkpoint of its own
    (here from step 10 of 12 with one every 5 steps; a Newton restart that converged in 0
    iterations likewise) left the 8 MB checkpoint behind, and the `.old-PID` copy a killed
    write leaves beside it stayed too.  Both go when the run is complete."""
    cfg = config.from_dict(raw_config("heat"))
    monkeypatch.setattr(checkpoint, "remove", lambda *a, **k: None)
    run_config(cfg, tmp_path / "out", quiet=True)
    monkeypatch.undo()
    ck = tmp_path / "out.checkpoint"
    import subprocess
    dead = subprocess.Popen(["true"])     # the killed writer: a process that has ended
    dead.wait()
    stale = tmp_path / f"out.checkpoint.old-{dead.pid}"
    stale.mkdir()
    s = run_config(cfg, tmp_path / "out", quiet=True, restart=ck)
    assert s["restarted_at_step"] == 10 and s["converged"] is True
    assert not ck.exists() and not stale.exists()
    elsewhere = tmp_path / "copy.checkpoint"          # a checkpoint of another folder stays
    run_config(cfg, tmp_path / "copy", quiet=True)
    monkeypatch.setattr(checkpoint, "remove", lambda *a, **k: None)
    run_config(cfg, tmp_path / "copy", quiet=True)
    monkeypatch.undo()
    run_config(cfg, tmp_path / "third", quiet=True, restart=elsewhere)
    assert elsewhere.exists()
    # a restart whose config writes no checkpoints (checkpoint_every = 0, not part of the
    # problem) removes the one it read all the same (it stayed)
    monkeypatch.setattr(checkpoint, "remove", lambda *a, **k: None)
    run_config(cfg, tmp_path / "out", quiet=True)
    monkeypatch.undo()
    assert ck.is_dir()
    off = config.from_dict(dict(raw_config("heat"), output=dict(
        raw_config("heat")["output"], checkpoint_every=0)))
    s = run_config(off, tmp_path / "out", quiet=True, restart=ck)
    assert s["restarted_at_step"] == 10 and not ck.exists()
