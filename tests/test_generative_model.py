"""A generative run's trained flow saved with it (``model/``, kind "generative") and used after
the run: ``fem-mfc sample RUN N`` draws new points (base samples pulled back through the flow,
which was trained from the data to the base) and ``fem-mfc predict RUN POINTS.csv`` transports
points forward (their log-density and image in the base).

One tiny EAFE/Newton run (a coarse disk, 4 layers; ~1 s once imported) is shared by the serial
tests; the MPI test trains its own on 2 ranks.
Run the MPI part: bin/fem-env mpirun -n 2 python3 -m pytest --with-mpi -m mpi
tests/test_generative_model.py
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from mpi4py import MPI

import numpy as np
import pytest

from fem_mfc import config
from fem_mfc.learning import data, saved
from test_predict import (
    assert_bad_input,
    fake_run,
    predict,
    train_on_all_ranks,
    write_points,
)

RAW = {"run": {"formulation": "generative"},
       "mesh": {"kind": "disk", "radius": 3.5, "h": 0.35},
       "problem": {"T": 1.0, "sigma": 0.4, "steps": 4},
       "data": {"dataset": "moons", "n_samples": 200, "bandwidth": 0.25},
       "training": {"method": "newton", "max_sweeps": 8, "tol": 1e-6},
       "generative": {"kl_weight": 5.0, "samples": 150},
       "output": {"figures": False, "vtx": False, "progress": False}}


def train(out, comm=MPI.COMM_WORLD):
    """Run the tiny config into ``out``; (summary, raw test points of its data)."""
    from fem_mfc.pipeline import run_config
    cfg = config.from_dict(RAW)
    s = run_config(cfg, out, quiet=True, comm=comm)
    return s, data.split(cfg["data"])[1]


def read_csv(path: Path) -> tuple[list, np.ndarray]:
    rows = list(csv.reader(path.read_text().splitlines()))
    return rows[0], np.array([[float(v) for v in r] for r in rows[1:]])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("genmodel")
    s, Xte = train(base / "run")
    return base, s, Xte


def sample(argv, capsys) -> tuple[int, str]:
    from fem_mfc.cli import main
    capsys.readouterr()
    rc = main(["sample", *map(str, argv)])
    return rc, capsys.readouterr().err


def test_the_saved_flow_redraws_the_runs_samples(tiny, capsys):
    """model/ read back and sampled with the run's seed and number of samples gives the run's
    own samples.csv (its backward samples) to round-off; another seed other samples."""
    base, s, _ = tiny
    run = base / "run"
    assert s["model"] == "model"
    assert sorted(p.name for p in (run / "model").iterdir()) == ["mesh.bp", "model.json",
                                                                 "velocity.npz"]
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["kind"] == "generative" and meta["steps"] == s["nsteps"]
    assert meta["target_mass_on_mesh"] == s["target_mass_on_mesh"]
    head, ran = read_csv(run / "samples.csv")
    out = base / "drawn.csv"
    rc, err = sample([run, len(ran), "--out", out], capsys)
    assert rc == 0, err
    assert err.strip().splitlines() == [
        f"fem-mfc: {len(ran)} samples drawn from the generative flow of {run} "
        f"({s['nsteps']} layers, seed {meta['seed']}) into {out}"]
    h, drawn = read_csv(out)
    assert h == head == ["x1", "x2"]
    assert np.allclose(drawn, ran, rtol=0, atol=1e-12 * np.abs(ran).max())
    m = saved.load(run)
    Z = m.standardise(drawn)
    assert np.allclose(Z.mean(axis=0), s["sample_mean"], rtol=0, atol=1e-12)
    # standard output, another seed: other samples of the same flow
    capsys.readouterr()
    from fem_mfc.cli import main
    assert main(["sample", str(run / "model"), "7", "--seed", str(meta["seed"] + 1),
                 "--quiet"]) == 0
    cap = capsys.readouterr()
    assert cap.err == "" and cap.out.startswith("x1,x2\n")
    other = np.array([[float(v) for v in r.split(",")] for r in cap.out.splitlines()[1:]])
    assert other.shape == (7, 2) and not np.allclose(other, drawn[:7])
    assert np.array_equal(other, m.sample(7, meta["seed"] + 1))


def test_predict_transports_points_to_the_runs_log_likelihood(tiny, capsys):
    """``fem-mfc predict`` on a generative run: the held-out points' log-densities are the
    run's held-out log-likelihood (standardised coordinates) less Σ log scale, and their
    images pulled back are the points again."""
    base, s, Xte = tiny
    run = base / "run"
    pts = write_points(base / "test.csv", Xte, header="x1,x2")
    out = base / "test_out.csv"
    rc, err = predict([run, pts, "--out", out], capsys)
    assert rc == 0, err
    head, rows = read_csv(out)
    assert head == ["log_density", "final_x1", "final_x2"] and len(rows) == s["n_test"]
    m = saved.load(run)
    shift = np.log(m.scale).sum()
    assert rows[:, 0].mean() + shift == pytest.approx(s["loglik_flow"], rel=1e-12)
    assert f"{s['n_test']} points transported by the generative flow of {run}" in err
    assert f"mean log-density {rows[:, 0].mean():.6g} nats" in err
    X0, _ = m.flow.inverse(rows[:, 1:])
    assert np.allclose(X0, m.standardise(Xte), rtol=0, atol=1e-9)


def _cases(base: Path, run: Path):
    """(command and arguments, the expected words of the error line) of bad inputs."""
    clf = fake_run(base / "clf", {"model/model.json": '{"kind": "feedback"}'})
    odd = fake_run(base / "odd", {"model/model.json": '{"kind": "teapot"}'})
    cut = fake_run(base / "cut", {"model/model.json": '{"kind": "generative", "steps": 4}'})
    old = fake_run(base / "old", {"summary.json": '{"formulation": "generative"}'})
    lq = fake_run(base / "lq", {"summary.json": '{"formulation": "lq"}'})
    good = base / "good.csv"
    good.write_text("0.1,0.2\n")
    ragged = base / "ragged.csv"
    ragged.write_text("0.1,0.2,0.3,0.4\n")
    return [(["sample", base / "missing", 5], "missing: run folder not found (expected the "
              "output folder of fem-mfc run with a generative config)"),
            (["sample", base, 5], "not a fem-mfc run folder"),
            (["sample", clf, 5], "a 'classifier' run has no trained model to sample "
                                 "(expected the output folder of a run with formulation = "
                                 "\"generative\")"),
            (["sample", lq, 5], "a 'lq' run has no trained model to sample"),
            (["predict", lq, good], "a 'lq' run has no trained model to apply"),
            (["sample", old, 5], "a generative run without a saved model (model/: "),
            (["sample", odd, 5], "odd/model: the saved model cannot be read (model.json: "
                                 "unknown kind 'teapot')"),
            (["sample", cut, 5], "cut/model: the saved model cannot be read (model.json: "),
            (["sample", run, 0], "N: expected a positive integer (the number of samples), "
                                 "got '0'"),
            (["sample", run, -3], "N: expected a positive integer (the number of samples), "
                                  "got '-3'"),
            (["sample", run, "many"], "N: expected a positive integer (the number of "
                                      "samples), got 'many'"),
            (["sample", run, "2.5"], "N: expected a positive integer"),
            (["sample", run, 10 ** 15], "N: expected a number of samples that fits in memory"),
            (["sample", run, 5, "--seed", -1], "--seed: expected a non-negative integer, "
                                               "got '-1'"),
            (["sample", run, 5, "--seed", "x"], "--seed: expected a non-negative integer"),
            (["sample", run, 5, "--out", ""], "--out: expected a file name"),
            (["sample", run, 5, "--out", good / "o.csv"], "o.csv: cannot write the samples"),
            (["predict", run, base / "none.csv"], "none.csv: points file not found"),
            (["predict", run, ragged], "ragged.csv: row 1: expected 2 values")]


def test_bad_input_is_one_line_and_exit_2(tiny, tmp_path, capsys):
    run = tiny[0] / "run"
    for argv, words in _cases(tmp_path, run):
        assert_bad_input(argv, words, capsys)


@pytest.mark.slow
def test_two_ranks_sample_what_one_rank_samples(tiny, capsys):
    """A flow written on 1 rank, sampled on 2 (``mpirun -n 2 fem-mfc sample``): the file of
    the serial command, byte for byte, and the same line (printed once)."""
    from helpers import run_cli
    base = tiny[0]
    ser, par = base / "ser.csv", base / "par.csv"
    rc, err = sample([base / "run", 40, "--seed", 3, "--out", ser], capsys)
    p2 = run_cli(["sample", base / "run", 40, "--seed", 3, "--out", par], ranks=2)
    assert rc == 0 and p2.returncode == 0, p2.stderr
    assert par.read_bytes() == ser.read_bytes()
    assert p2.stderr.replace(str(par), str(ser)) == err


@pytest.mark.mpi
def test_a_flow_written_on_two_ranks_is_sampled_on_one(tmp_path_factory):
    """Trained and saved on 2 ranks; read on both ranks together and on each rank alone
    (MPI.COMM_SELF): the run's samples.csv and the run's held-out log-likelihood."""
    comm = MPI.COMM_WORLD
    base, (s, Xte) = train_on_all_ranks(tmp_path_factory, "genmodel2", train)
    _, ran = read_csv(base / "run" / "samples.csv")
    for c in (comm, MPI.COMM_SELF):
        m = saved.load(base / "run", c)
        drawn = m.sample(len(ran))
        assert np.allclose(drawn, ran, rtol=0, atol=1e-12 * np.abs(ran).max())
        ll = m.predict(Xte).log_density.mean() + np.log(m.scale).sum()
        assert ll == pytest.approx(s["loglik_flow"], rel=1e-12)
    assert comm.allgather(drawn.tolist()) == [drawn.tolist()] * comm.size
