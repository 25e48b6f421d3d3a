"""Checkpoints of the trainers (``formulation = "classifier"`` and ``"generative"``) and restarts
from them.

Every model class and trainer writes ``[output] checkpoint_every`` checkpoints — the control
(one velocity function per layer, or the dictionary weights θ), the trainer's state (L-BFGS
pairs, relaxation θ of the sweeps, counts) and the history — and a restart takes the
uninterrupted run's steps: the same outer iterations, the same J and history.  Two ways to
stop a run: ``max_sweeps`` reached (exit 3, the checkpoint is kept and a restart with more
iterations continues), and SIGKILL right after a checkpoint (written on N ranks, read on M).
"""
from __future__ import annotations

import json
import math

import pytest

from fem_mfc import config
from fem_mfc.errors import ConfigError
from fem_mfc.pipeline import run_config
from helpers import read_summary, run_cli
from test_checkpoint_restart import killed_after_checkpoint

CLASSIFIER = {"run": {"formulation": "classifier"},
              "mesh": {"kind": "disk", "radius": 3.5, "h": 0.5},
              "problem": {"T": 1.0, "sigma": 0.45, "steps": 4},
              "data": {"dataset": "moons", "n_samples": 200, "bandwidth": 0.25},
              "training": {"tol": 1e-8, "baseline": False, "particles": 0}}
GENERATIVE = {"run": {"formulation": "generative"},
              "mesh": {"kind": "disk", "radius": 4.0, "h": 0.5},
              "problem": {"T": 1.0, "sigma": 0.4, "steps": 4},
              "data": {"dataset": "moons", "n_samples": 200, "bandwidth": 0.25},
              "training": {"tol": 1e-8}}
DICTIONARY = {"kind": "dictionary", "dictionary": "random-tanh", "ridges": 4}

# name: (base, [network], [training]) — each model class with its trainer(s)
CASES = {
    "newton": (CLASSIFIER, {"transport": "eafe"}, {"method": "newton"}),
    "lbfgs": (CLASSIFIER, {"transport": "eafe"}, {"method": "lbfgs"}),
    "galerkin-sweeps": (CLASSIFIER, {"transport": "galerkin"},
                        {"method": "sweeps", "tol": 1e-3}),
    "dictionary-newton": (CLASSIFIER, {"transport": "eafe", **DICTIONARY}, {"method": "newton"}),
    "dictionary-sweeps": (CLASSIFIER, {"transport": "galerkin", "kind": "dictionary",
                                       "weight_decay": 0.1}, {"method": "sweeps", "tol": 1e-3}),
    "generative-newton": (GENERATIVE, {"transport": "eafe"}, {"method": "newton"}),
    "generative-sweeps": (GENERATIVE, {"transport": "galerkin"},
                          {"method": "sweeps", "tol": 1e-3}),
}
SLOW = set(CASES) - {"newton"}
CUT = 3                       # outer iterations of the interrupted run


def raw_config(name: str, **training) -> dict:
    base, network, train = CASES[name]
    raw = json.loads(json.dumps(base))
    raw["network"] = dict(network)
    raw["training"].update(train, **training)
    raw["output"] = {"figures": False, "vtx": False, "progress": False, "checkpoint_every": 1}
    return raw


def same_run(a: dict, b: dict, rtol: float = 1e-10):
    """b took a's outer iterations: same count, J and history to ``rtol``."""
    assert b["iterations"] == a["iterations"] and b["converged"] == a["converged"]
    assert len(b["J_history"]) == len(a["J_history"])
    for x, y in zip(a["J_history"], b["J_history"]):
        assert abs(x - y) <= rtol * abs(x), (a["J_history"], b["J_history"])
    assert abs(b["J"] - a["J"]) <= rtol * abs(a["J"])
    assert math.isclose(b["residual"], a["residual"], rel_tol=1e-4, abs_tol=1e-12)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in CASES])
def test_restart_takes_the_uninterrupted_steps(tmp_path, name):
    """A run stopped at max_sweeps = 3 keeps its checkpoint (iteration 3, the trainer's
    state); the restart with the full budget continues it to the uninterrupted run's result."""
    full = run_config(config.from_dict(raw_config(name)), tmp_path / "full", quiet=True)
    assert not (tmp_path / "full.checkpoint").exists()          # removed once converged
    cut = run_config(config.from_dict(raw_config(name, max_sweeps=CUT)), tmp_path / "cut",
                     quiet=True)
    assert cut["converged"] is False and cut["iterations"] == CUT
    ck = tmp_path / "cut.checkpoint"
    meta = json.loads((ck / "meta.json").read_text())
    assert meta["phase"] == "training" and meta["iteration"] == CUT
    if name == "lbfgs":                         # the pairs are part of the state
        assert len(meta["state"]["rho"]) == CUT and "s2" in meta["controls"]
    again = run_config(config.from_dict(raw_config(name)), tmp_path / "again", quiet=True,
                       restart=tmp_path / "cut")
    same_run(full, again)
    assert again["J_history"][:CUT] == cut["J_history"][:CUT]
    # the summary says it continued a checkpoint (only run.log said so)
    assert again["restarted_at_iteration"] == CUT and "restarted_at_iteration" not in full


def test_a_checkpoint_of_another_network_is_refused(tmp_path):
    """The hash covers [data], [network] and the training method: a restart of another
    network, or from a checkpoint of an HJB-FP solve, is refused before anything runs."""
    run_config(config.from_dict(raw_config("newton", max_sweeps=1)), tmp_path / "cut",
               quiet=True)
    other = raw_config("newton")
    other["network"]["delta"] = 0.5
    with pytest.raises(ConfigError, match="--restart") as e:
        run_config(config.from_dict(other), tmp_path / "x", quiet=True,
                   restart=tmp_path / "cut")
    # the refusal names what differs (it named "the mesh, problem, rho0, discretisation and
    # exact sections", none of which had changed)
    msg = str(e.value)
    assert "network.delta:" in msg and "0.5 here" in msg and "rho0" not in msg, msg
    lbfgs = raw_config("lbfgs")
    with pytest.raises(ConfigError, match="training.method: \"newton\" in the checkpoint, "
                                          "\"lbfgs\" here"):
        run_config(config.from_dict(lbfgs), tmp_path / "y", quiet=True,
                   restart=tmp_path / "cut")
    data = raw_config("newton")
    data["data"]["n_samples"] = 300
    with pytest.raises(ConfigError, match="data.n_samples: 200 in the checkpoint, 300 here"):
        run_config(config.from_dict(data), tmp_path / "z", quiet=True,
                   restart=tmp_path / "cut")
    # a checkpoint written before meta.json kept its config: the sections of a classifier
    meta = tmp_path / "cut.checkpoint" / "meta.json"
    old = json.loads(meta.read_text())
    del old["config"]
    meta.write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="--restart") as e:
        run_config(config.from_dict(data), tmp_path / "z", quiet=True,
                   restart=tmp_path / "cut")
    assert "data, network" in str(e.value) and "training.method sections" in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("name,writer_ranks,reader_ranks", [("newton", 1, 2),
                                                             ("generative-sweeps", 2, 1)])
def test_killed_training_restarts_on_other_ranks(tmp_path, name, writer_ranks, reader_ranks):
    """SIGKILL right after the second checkpoint (written on N ranks), restart on M ranks:
    the uninterrupted run's J and outer iterations."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(config.dumps(config.from_dict(raw_config(name))))
    full = run_config(config.from_dict(raw_config(name)), tmp_path / "full", quiet=True)
    ck = killed_after_checkpoint(cfg, tmp_path / "cut", writer_ranks, 2, "training")
    meta = json.loads((ck / "meta.json").read_text())
    assert meta["iteration"] == 2 and meta["ranks"] == writer_ranks
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "cut"), "--quiet", "--restart",
                 str(ck)], ranks=reader_ranks)
    assert p.returncode == 0, p.stderr
    same_run(full, read_summary(tmp_path / "cut"), rtol=1e-9)
    assert not ck.exists()                      # the finished run removed it


@pytest.mark.slow
def test_restart_past_max_sweeps_reports_its_iterate(tmp_path):
    """A restart whose max_sweeps is below the checkpoint's iteration takes no step and reports
    the checkpoint's iterate (flagged: maximum iterations), its J in the history too."""
    cut = run_config(config.from_dict(raw_config("newton", max_sweeps=CUT)), tmp_path / "cut",
                     quiet=True)
    again = run_config(config.from_dict(raw_config("newton", max_sweeps=1)),
                       tmp_path / "again", quiet=True, restart=tmp_path / "cut")
    assert again["converged"] is False and again["iterations"] == CUT
    assert again["J_history"] == pytest.approx(cut["J_history"], rel=1e-12)
    assert again["J"] == pytest.approx(cut["J"], rel=1e-12)


def test_a_checkpoint_of_other_csv_data_is_refused(tmp_path):
    """[data] names a CSV file, not the points: a restart after the file was edited (same
    path, other points) continued the checkpoint's training on other data; the checkpoint
    keeps the file's digest, and a restart from it on changed contents is refused."""
    import numpy as np
    rng = np.random.default_rng(0)
    f = tmp_path / "pts.csv"
    def write(shift):
        X = np.r_[rng.normal(-1, 0.4, (40, 2)), rng.normal(1 + shift, 0.4, (40, 2))]
        f.write_text("x1,x2,label\n" + "".join(f"{a},{b},{k}\n" for (a, b), k
                                                  in zip(X, np.repeat([0, 1], 40))))
    write(0.0)
    raw = raw_config("newton", max_sweeps=1)
    raw["data"] = {"dataset": "csv", "file": str(f), "bandwidth": 0.3}
    run_config(config.from_dict(raw), tmp_path / "cut", quiet=True)
    write(0.5)
    raw["training"]["max_sweeps"] = 60
    with pytest.raises(ConfigError, match="data.file_sha256: .* in the checkpoint, .* here"):
        run_config(config.from_dict(raw), tmp_path / "x", quiet=True, restart=tmp_path / "cut")
