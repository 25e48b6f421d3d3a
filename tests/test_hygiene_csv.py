"""Item 10 of issue 14 (messages): CSV labels that are words (``cat``, ``dog``) are classes --
the sorted distinct labels are classes 0..K-1 -- instead of being refused; the mapping is in the
data set's name (summary.json's ``dataset``: ``csv (classes: 0 = cat, 1 = dog)``) and in
``Dataset.classes``.  Numbers and words mixed as labels, or an empty label, are one line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fem_mfc import config
from fem_mfc.errors import UserError
from fem_mfc.learning import data
from fem_mfc.pipeline import run_config


def _csv(path, labels, rng):
    centre = {lab: (2.0 * i - 1.0, 0.5 * i) for i, lab in enumerate(sorted(set(labels)))}
    rows = [f"{centre[lab][0] + 0.3 * rng.standard_normal():.6f},"
            f"{centre[lab][1] + 0.3 * rng.standard_normal():.6f},{lab}" for lab in labels]
    path.write_text("x1,x2,label\n" + "\n".join(rows) + "\n")
    return path


def dcfg(**kw):
    return config.from_dict({"run": {"formulation": "classifier"}, "data": kw})["data"]


def test_word_labels_are_classes_in_sorted_order(tmp_path):
    rng = np.random.default_rng(0)
    labels = ["dog", "cat", " bird"] * 20          # spaces around a label do not count
    f = _csv(tmp_path / "pets.csv", labels, rng)
    ds = data.load(dcfg(dataset="csv", file=str(f), test_fraction=0.25))
    assert ds.K == 3 and ds.classes == ("bird", "cat", "dog")
    assert ds.name == "csv (classes: 0 = bird, 1 = cat, 2 = dog)"
    X, y = data.read_csv(f)
    assert sorted(set(y)) == ["bird", "cat", "dog"] and len(y) == 60
    assert list(np.bincount(np.r_[ds.y_train, ds.y_test])) == [20, 20, 20]
    # class k is the points labelled classes[k]: their raw means are the centres of _csv
    Xall = np.r_[ds.X_train, ds.X_test][:, :2] * ds.scale + ds.mean
    yall = np.r_[ds.y_train, ds.y_test]
    for k in range(3):
        assert abs(Xall[yall == k, 0].mean() - (2.0 * k - 1.0)) < 0.3


def test_integer_labels_keep_the_plain_name(tmp_path):
    f = _csv(tmp_path / "ints.csv", [3, 7] * 10, np.random.default_rng(1))
    ds = data.load(dcfg(dataset="csv", file=str(f)))
    assert ds.name == "csv" and ds.classes == ("3", "7") and ds.K == 2


@pytest.mark.parametrize("text,msg", [
    ("x1,x2,label\n0,0,cat\n1,1,1\n", "not both"),
    ("x1,x2,label\n0,0,1\n1,1,dog\n", "not both"),
    ("x1,x2,label\n0,0,cat\n1,1, \n", "empty label"),
    ("x1,x2,label\n0,0,cat\n1,1,cat\n", "only one class"),
    ("x1,x2,label\n0,0,0\n1,1,0.5\n", "integer or a word"),
])
def test_bad_labels_one_line(tmp_path, text, msg):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(UserError, match=msg) as e:
        data.load(dcfg(dataset="csv", file=str(f)))
    assert "\n" not in str(e.value) and str(f) in str(e.value)


def _classify(f, tmp_path, particles: int):
    """(config, summary) of a short classifier run on the CSV file ``f``."""
    cfg = config.from_dict({
        "run": {"formulation": "classifier"},
        "data": {"dataset": "csv", "file": str(f), "test_fraction": 0.25},
        "mesh": {"kind": "rectangle", "cells": 8, "lower": [-3.0, -3.0], "upper": [3.0, 3.0]},
        "problem": {"steps": 3, "sigma": 0.5},
        "training": {"max_sweeps": 2, "baseline": False, "particles": particles},
        "output": {"figures": False, "progress": False, "vtx": False}})
    return cfg, run_config(cfg, tmp_path / "out", quiet=True)


def test_word_label_mapping_in_the_summary(tmp_path):
    rng = np.random.default_rng(2)
    f = _csv(tmp_path / "animals.csv", ["dog", "cat"] * 40, rng)
    cfg, s = _classify(f, tmp_path, particles=50)
    assert s["K"] == 2 and s["dataset"] == "csv (classes: 0 = cat, 1 = dog)"
    assert s["classes"] == ["cat", "dog"]


def test_integer_label_mapping_and_standardisation_in_the_summary(tmp_path):
    """Integer labels 3 and 7 are classes 0 and 1: the summary said neither that nor the
    training mean/std the network's coordinates are standardised with, so its anchors,
    figures and series could not be read back in the data's terms.  It has both now."""
    f = _csv(tmp_path / "ints.csv", [7, 3] * 40, np.random.default_rng(5))
    cfg, s = _classify(f, tmp_path, particles=0)
    ds = data.load(cfg["data"], 2)
    assert s["classes"] == ["3", "7"] and s["dataset"] == "csv"
    assert np.allclose(s["feature_mean"], ds.mean) and np.allclose(s["feature_scale"], ds.scale)


@pytest.mark.mpi
def test_word_labels_on_every_rank(tmp_path_factory):
    """Under MPI every rank reads the file and maps the labels alike (run_config on 2 ranks)."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    d = tmp_path_factory.mktemp("csv") if comm.rank == 0 else None
    d = Path(comm.bcast(str(d) if d else None, root=0))
    f = d / "animals.csv"
    if comm.rank == 0:
        _csv(f, ["dog", "cat"] * 40, np.random.default_rng(2))
    comm.barrier()
    cfg = config.from_dict({
        "run": {"formulation": "classifier"},
        "data": {"dataset": "csv", "file": str(f), "test_fraction": 0.25},
        "mesh": {"kind": "rectangle", "cells": 8, "lower": [-3.0, -3.0], "upper": [3.0, 3.0]},
        "problem": {"steps": 3, "sigma": 0.5},
        "training": {"max_sweeps": 2, "baseline": False, "particles": 50},
        "output": {"figures": False, "progress": False, "vtx": False}})
    s = run_config(cfg, d / "out", quiet=True)
    assert comm.allgather(s["dataset"]) == ["csv (classes: 0 = cat, 1 = dog)"] * comm.size


def test_excel_csv_with_byte_order_mark_and_crlf(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark and ends lines with CRLF: the header
    read as '\\ufeffx1' and the file was refused; it reads as the same data now."""
    rng = np.random.default_rng(3)
    plain = _csv(tmp_path / "plain.csv", ["cat", "dog"] * 10, rng)
    excel = tmp_path / "excel.csv"
    excel.write_bytes(b"\xef\xbb\xbf" + plain.read_text().replace("\n", "\r\n").encode())
    X, y = data.read_csv(excel)
    X0, y0 = data.read_csv(plain)
    assert np.array_equal(X, X0) and list(y) == list(y0)


def test_csv_without_a_header_row(tmp_path):
    """A file of points without the header (numbers in the first row's feature columns) was
    refused for its header; it reads as the same data, word or integer labels alike.  A
    header that is neither x1,…,xd,label nor a point is still refused."""
    rng = np.random.default_rng(4)
    for labels in (["cat", "dog"] * 10, [0, 1, 2] * 7):
        plain = _csv(tmp_path / "plain.csv", labels, rng)
        bare = tmp_path / "bare.csv"
        bare.write_text(plain.read_text().split("\n", 1)[1])
        X, y = data.read_csv(bare)
        X0, y0 = data.read_csv(plain)
        assert np.array_equal(X, X0) and list(y) == list(y0)
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y,label\n0,0,a\n1,1,b\n")
    with pytest.raises(UserError, match="x1,x2,label in the header"):
        data.read_csv(bad)
    bad.write_text("0,0,a\n1,b\n")
    with pytest.raises(UserError, match="row 2: expected 3 values"):
        data.read_csv(bad)
