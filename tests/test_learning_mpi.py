"""The classifier under MPI: 2 ranks give the same J, residual and accuracies as a serial
(MPI.COMM_SELF) computation of the same problem inside the same test.

Run: bin/fem-env mpirun -n 2 python3 -m pytest --with-mpi -m mpi tests/test_learning_mpi.py
"""
from __future__ import annotations

from mpi4py import MPI

import numpy as np
import pytest

from fem_mfc.learning import infer
from test_learning_classifier import build, small_cfg


def train_and_score(comm):
    cfg = small_cfg(mesh={"h": 0.3}, problem={"steps": 6}, training={"max_sweeps": 5})
    md, ds, hs, model = build(cfg, comm)
    model.train(5, 0.5, 1e-12)
    flow = infer.TrainedFlow(model)
    tr = infer.evaluate_flow(flow, ds.X_train, ds.y_train)
    te = infer.evaluate_flow(flow, ds.X_test, ds.y_test)
    grid = np.stack(np.meshgrid(np.linspace(-4, 4, 15), np.linspace(-4, 4, 15)), -1).reshape(-1, 2)
    pred = flow.predict(grid)            # includes points outside the disk (projected)
    out = {"J": model.J, "residual": model.residual, "train": tr["accuracy"],
           "test": te["accuracy"], "objective": tr["objective"], "pred": pred,
           "mass": model.masses(), "value": model.value_identity()}
    model.destroy()
    return out


@pytest.mark.mpi
def test_two_ranks_match_serial():
    comm = MPI.COMM_WORLD
    par = train_and_score(comm)
    ser = train_and_score(MPI.COMM_SELF)
    assert comm.size >= 1
    for k in ("J", "residual", "objective", "value"):
        assert abs(par[k] - ser[k]) <= 1e-8 * abs(ser[k]), (k, par[k], ser[k])
    assert par["train"] == ser["train"] and par["test"] == ser["test"]
    assert np.array_equal(par["pred"], ser["pred"])
    assert np.allclose(par["mass"], ser["mass"], atol=1e-12)
    # every rank holds the same global numbers
    assert comm.allgather(par["J"]) == [par["J"]] * comm.size
    assert par["test"] > 0.8


@pytest.mark.mpi(min_size=2)
def test_baselines_dealt_to_the_ranks(monkeypatch):
    """Under MPI the baseline runs (kind × seed) are dealt round-robin to the ranks, each
    trained once, and every rank gets all the results in order (they ran in turn on rank 0:
    41 s of a 2-rank moons run)."""
    from fem_mfc.learning import baseline
    comm = MPI.COMM_WORLD
    trained = []

    def stub(kind, *args, seed=0, **kw):
        trained.append((kind, seed))
        return {"kind": kind, "seed": seed, "train_objective": float(seed), "converged": True,
                "rank": comm.rank}
    monkeypatch.setattr(baseline, "train_baseline", stub)
    res = baseline.train_all(["resnet", "node"], [0, 1, 2], comm=comm)
    counts = comm.allgather(len(trained))
    assert sum(counts) == 6 and max(counts) == -(-6 // comm.size)
    for kind in ("resnet", "node"):
        assert [r["seed"] for r in res[kind]["runs"]] == [0, 1, 2]
        assert res[kind]["best_seed"] == 0
    assert {r["rank"] for k in res for r in res[k]["runs"]} == set(range(comm.size))
