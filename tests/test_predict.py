"""A trained classifier applied to new points: the run's saved model (``model/`` of a feedback
network, ``weights.npz`` of a dictionary network) and ``fem-mfc predict RUN POINTS.csv``.

One tiny feedback run (a coarse disk, 4 layers, a running potential V, no baseline, fresh
sample or figures; ~1 s once imported) is shared by the serial tests that need a trained
model; the bad-input cases use a dictionary network's weights.npz written without training;
the MPI test trains its own on 2 ranks.
Run the MPI part: bin/fem-env mpirun -n 2 python3 -m pytest --with-mpi -m mpi
tests/test_predict.py
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from mpi4py import MPI

import numpy as np
import pytest

from fem_mfc import config
from fem_mfc.learning import data, infer, saved

RAW = {"run": {"formulation": "classifier"},
       "mesh": {"kind": "disk", "radius": 3.5, "h": 0.5},
       "problem": {"T": 1.0, "sigma": 0.45, "steps": 4, "V": "0.05*x0**2"},
       "data": {"dataset": "moons", "n_samples": 200, "bandwidth": 0.25},
       "training": {"baseline": False, "particles": 0, "max_sweeps": 8, "fresh": 0},
       "output": {"figures": False, "vtx": False, "progress": False}}


def write_points(path: Path, X, labels=None, header: str | None = None) -> Path:
    """Rows of X (full precision) with an optional label column."""
    lines = [header] if header else []
    for i, x in enumerate(X):
        cells = [repr(float(v)) for v in x] + ([str(labels[i])] if labels is not None else [])
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def train(out, comm=MPI.COMM_WORLD) -> tuple[dict, dict]:
    """Run the tiny config into ``out``; (summary, raw split of its data)."""
    from fem_mfc.pipeline import run_config
    cfg = config.from_dict(RAW)
    s = run_config(cfg, out, quiet=True, comm=comm)
    Xtr, Xte, ytr, yte, classes, _ = data.split(cfg["data"])
    return s, {"train": (Xtr, ytr), "test": (Xte, yte), "classes": np.array(classes)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("predict")
    s, split = train(base / "run")
    Xtr, ytr = split["train"]
    pts = write_points(base / "train.csv", Xtr, split["classes"][ytr], header="x1,x2,label")
    return base, s, split, pts


def predict(argv, capsys) -> tuple[int, str]:
    from fem_mfc.cli import main
    capsys.readouterr()
    rc = main(["predict", *map(str, argv)])
    return rc, capsys.readouterr().err


def test_the_saved_model_reproduces_the_runs_accuracies(tiny, capsys):
    """The model/ of the run, read back, gives the run's own train and test accuracies and
    empirical objective (with the running potential V) exactly; ``fem-mfc predict`` on the
    training points says the train accuracy and writes the labels and final features."""
    base, s, split, pts = tiny
    run = base / "run"
    assert s["model"] == "model" and s["converged"] is True
    assert sorted(p.name for p in (run / "model").iterdir()) == ["mesh.bp", "model.json",
                                                                 "velocity.npz"]
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["steps"] == 4 and meta["V"] == "0.05*x0**2" and meta["classes"] == ["0", "1"]
    assert np.array_equal(meta["feature_mean"], s["feature_mean"])
    assert np.array_equal(meta["anchors"], s["anchors"])
    m = saved.load(run)
    for part in ("train", "test"):
        X, y = split[part]
        r = infer.evaluate_flow(m.flow, m.standardise(X), y)
        assert r["accuracy"] == s[f"{part}_accuracy"], part
        if part == "train":
            assert r["objective"] == pytest.approx(s["empirical_objective"], rel=1e-12)
            assert r["kinetic"] == pytest.approx(s["train_kinetic"], rel=1e-12)
    out = base / "train_pred.csv"
    rc, err = predict([run, pts, "--out", out], capsys)
    assert rc == 0, err
    n = s["n_train"]
    right = round(s["train_accuracy"] * n)
    assert err.strip().splitlines() == [
        f"fem-mfc: {n} points labelled by the feedback network of {run} (4 layers) into "
        f"{out}; accuracy {right / n:.4g} ({right}/{n}) against the label column"]
    rows = list(csv.reader(out.read_text().splitlines()))
    assert rows[0] == ["label", "final_x1", "final_x2"] and len(rows) == n + 1
    labels = np.array([r[0] for r in rows[1:]])
    Xtr, ytr = split["train"]
    assert np.count_nonzero(labels == split["classes"][ytr]) == right
    p = m.predict(Xtr)
    assert np.array_equal(labels, p.labels)
    assert np.array_equal(np.array([[float(v) for v in r[1:]] for r in rows[1:]]), p.final)
    # without a label column or header, into standard output: the same labels
    bare = write_points(base / "bare.csv", Xtr)
    capsys.readouterr()
    from fem_mfc.cli import main
    assert main(["predict", str(run / "model"), str(bare), "--out", "-", "--quiet"]) == 0
    cap = capsys.readouterr()
    assert cap.err == "" and cap.out == out.read_text()
    # a point outside the mesh is moved onto it, and said so ("1 ... and were")
    far = write_points(base / "far.csv", np.array([[50.0, 50.0]]))
    rc, err = predict([run, far, "--out", base / "far_pred.csv"], capsys)
    assert rc == 0 and "; 1 started outside the mesh and was moved onto it" in err, err


def dictionary_run(folder: Path) -> Path:
    """A run folder with the weights.npz of an affine dictionary network a = c = (1, 0)
    (x_N = x_0 + (1, 0)) for features standardised by mean (10, 0), scale (2, 1)."""
    from fem_mfc.learning.numpy_resnet import NumpyResNet
    folder.mkdir()
    theta = np.zeros((3, 6))
    theta[:, 4] = 1.0
    NumpyResNet("affine", theta, 1.0 / 3, np.array([[-1.0, 0.0], [1.0, 0.0]]),
                mean=np.array([10.0, 0.0]), scale=np.array([2.0, 1.0]),
                classes=("cat", "dog")).save(folder / "weights.npz")
    return folder


def test_a_dictionary_run_is_predicted_from_its_weights(tmp_path, capsys):
    """A dictionary network's weights.npz (NumPy only): labels in the data's own units."""
    run = dictionary_run(tmp_path / "dict")
    pts = write_points(tmp_path / "p.csv", [[5.0, 0.3], [7.0, 1.0], [13.0, -2.0]],
                       ["cat", "dog", "bird"])
    rc, err = predict([run, pts], capsys)
    assert rc == 0, err
    rows = list(csv.reader((tmp_path / "p.predicted.csv").read_text().splitlines()))
    # (x1 − 10)/2 + 1 = -1.5, -0.5, 2.5: cat, cat, dog
    assert [r[0] for r in rows[1:]] == ["cat", "cat", "dog"]
    assert [float(r[1]) for r in rows[1:]] == pytest.approx([-1.5, -0.5, 2.5])
    assert "dictionary network" in err and "accuracy 0.3333 (1/3)" in err
    assert "labels bird are not classes of the model (its classes: cat, dog)" in err


def fake_run(folder: Path, files: dict) -> Path:
    """A folder holding ``files`` {path inside it: text}."""
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def _cases(base: Path, run: Path):
    """(argv, the expected words of the error line) of bad inputs."""
    other = fake_run(base / "no_model", {"summary.json": '{"formulation": "classifier"}'})
    broken = fake_run(base / "broken", {"model/model.json": "{ not json"})
    gen = fake_run(base / "gen", {"summary.json": '{"formulation": "generative"}'})
    f = {name: base / f"{name}.csv" for name in ("three", "word", "empty", "header", "nan",
                                                 "ragged", "bare_header", "good",
                                                 "feature3")}
    f["three"].write_text("0.1,0.2,1\n0.3,0.4,0.5,1\n")
    f["word"].write_text("x1,x2\n0.1,0.2\n0.3,abc\n")
    f["empty"].write_text("\n \n")
    f["header"].write_text("a,b,c\n0.1,0.2,1\n")
    f["nan"].write_text("0.1,nan\n")
    f["ragged"].write_text("0.1,0.2,0.3,0.4\n")
    f["bare_header"].write_text("x1,x2,label\n")
    f["good"].write_text("0.1,0.2\n")
    f["feature3"].write_text("0.1,0.2,1\n0.3,0.4,0.37\n")
    good = f["good"]
    return [([base / "missing", good], "missing: run folder not found"),
            ([base, good], "not a fem-mfc run folder"),
            ([other, good], "a classifier run without a saved model"),
            ([gen, good], "a generative run without a saved model (model/: "),
            ([broken, good], "broken/model: the saved model cannot be read (model.json: "),
            ([run, base / "none.csv"], "none.csv: points file not found"),
            ([run, f["three"]], "three.csv: row 2: expected 3 values (x1,x2,label), got 4"),
            ([run, f["ragged"]], "ragged.csv: row 1: expected 2 values (x1,x2: the model was "
                                 "trained on 2 features) or 3 (x1,x2,label), got 4"),
            ([run, f["word"]], "word.csv: row 3, column x2: expected a number, got 'abc'"),
            ([run, f["nan"]], "nan.csv: row 1, column x2: expected a finite number"),
            ([run, f["feature3"]], "feature3.csv: row 2, column label: expected an integer "
                                   "or a word, got '0.37' (a feature? the model was trained "
                                   "on 2 features, x1,x2)"),
            ([run, f["empty"]], "empty.csv: the file is empty"),
            ([run, f["header"]], "header.csv: expected the columns x1,x2 (or x1,x2,label)"),
            ([run, f["bare_header"]], "bare_header.csv: no data rows after the header"),
            ([run, good, "--out", good], "--out: expected a file other than the points"),
            ([run, good, "--out", good / "o.csv"], "o.csv: cannot write the predictions")]


def assert_bad_input(argv, words: str, capsys) -> None:
    """``fem-mfc ARGV`` exits 2 with one line on stderr that holds ``words``."""
    from fem_mfc.cli import main
    capsys.readouterr()
    rc = main(list(map(str, argv)))
    err = capsys.readouterr().err
    assert rc == 2, (argv, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("fem-mfc: error: "), err
    assert words in err, (words, err)
    assert "Traceback" not in err


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    run = dictionary_run(tmp_path / "run")
    (tmp_path / "bad").mkdir()
    for argv, words in _cases(tmp_path / "bad", run):
        assert_bad_input(["predict", *argv], words, capsys)


@pytest.mark.slow
def test_two_ranks_write_what_one_rank_writes(tiny, capsys):
    """A model written on 1 rank, read on 2 (``mpirun -n 2 fem-mfc predict``): the same
    file, byte for byte, and the same line (printed once)."""
    from helpers import run_cli
    base, _, _, pts = tiny
    ser, par = base / "ser.csv", base / "par.csv"
    rc, err = predict([base / "run", pts, "--out", ser], capsys)
    p2 = run_cli(["predict", base / "run", pts, "--out", par], ranks=2)
    assert rc == 0 and p2.returncode == 0, p2.stderr
    assert par.read_bytes() == ser.read_bytes()
    assert p2.stderr.replace(str(par), str(ser)) == err


def train_on_all_ranks(tmp_path_factory, name: str, train):
    """``train(BASE/run, COMM_WORLD)`` into a folder BASE shared by the ranks, whose saved
    model says it was written on all of them; (BASE, what ``train`` returned)."""
    comm = MPI.COMM_WORLD
    base = Path(comm.bcast(str(tmp_path_factory.mktemp(name)) if comm.rank == 0 else None,
                           root=0))
    out = train(base / "run", comm)
    assert json.loads((base / "run" / "model" / "model.json").read_text())["ranks"] \
        == comm.size
    return base, out


@pytest.mark.mpi
def test_a_model_written_on_two_ranks_is_read_on_one(tmp_path_factory):
    """Trained and saved on 2 ranks; read on both ranks together and on each rank alone
    (MPI.COMM_SELF): the run's train accuracy and the same labels and final features."""
    comm = MPI.COMM_WORLD
    base, (s, split) = train_on_all_ranks(tmp_path_factory, "predict2", train)
    X, y = split["train"]
    both = saved.load(base / "run", comm).predict(X)
    alone = saved.load(base / "run", MPI.COMM_SELF).predict(X)
    assert np.count_nonzero(both.k == y) == round(s["train_accuracy"] * len(y))
    assert np.array_equal(both.labels, alone.labels)
    assert np.allclose(both.final, alone.final, rtol=0, atol=1e-12)
    assert comm.allgather(both.labels.tolist()) == [both.labels.tolist()] * comm.size
