"""The decision-region figure of a classifier with more than two features is a slice of the
feature space through the training mean with the test points projected onto (x1, x2); it was
drawn unlabelled, as if it were the data's plane.  Now the figure carries the slice as its
title, the axes are named, and the report's caption and summary.json say it."""
from __future__ import annotations

import numpy as np

from fem_mfc.learning import report
from fem_mfc.learning.data import Dataset


def _ds(d, dim=3, n=40):
    rng = np.random.default_rng(0)
    X = np.zeros((n, dim))
    X[:, :d] = rng.standard_normal((n, d))
    y = np.repeat([0, 1], n // 2)
    return Dataset(X, y, X, y, np.zeros(d), np.ones(d), "t", ("a", "b"))


def test_slice_note_names_the_other_features():
    assert report.slice_note(_ds(2)) is None            # padded to 3D: the plane is the data's
    assert "x3 = training mean" in report.slice_note(_ds(3))
    assert "x3, …, x5" in report.slice_note(_ds(5, dim=5))


def test_figure_and_caption_carry_the_slice(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ds = _ds(3)
    gx, gy, P = report.grid(ds, 3, n=20)
    made = []
    real = plt.Figure.savefig

    def keep(fig, *a, **k):             # the figure as it is written
        made.append((fig._suptitle.get_text() if fig._suptitle else None,
                     [ax.get_xlabel() for ax in fig.axes]))
        return real(fig, *a, **k)
    plt.Figure.savefig = keep
    try:
        report.decision_regions(tmp_path / "d.png", gx, gy, {"m": (P[:, 0] > 0) * 1}, ds, 2)
    finally:
        plt.Figure.savefig = real
    assert (tmp_path / "d.png").stat().st_size > 0
    assert made == [(report.slice_note(ds), ["x1 (standardised)"])]
    cap = report.figure_captions({"decision_regions_slice": report.slice_note(ds)})
    assert "x3 = training mean" in cap["decision_regions.png"]
    assert "slice" not in report.figure_captions({})["decision_regions.png"]
