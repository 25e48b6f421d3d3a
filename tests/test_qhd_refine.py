"""`fem-mfc refine` for formulation = "qhd" (control signature) against the LQ Gaussian of
MODEL §7.1: S = −u − ε log ρ in closed form (fem_mfc/exact.py), compared up to its additive
constant.  The box is small (ρ ≳ 1e-7 at its edge keeps the Fisher term well conditioned): the
exact continuity and Bernoulli boundary fluxes enter the discrete action as data."""
from __future__ import annotations

import math

from mpi4py import MPI

import pytest

from fem_mfc import config
from fem_mfc.refine import refinement_study

NORMS = ("err_rho_L2", "err_S_L2", "err_J")

pytestmark = pytest.mark.slow          # a refinement study


def lq_qhd(scheme: str, cells: int, steps: int) -> dict:
    return config.from_dict({
        "run": {"formulation": "qhd"},
        "mesh": {"kind": "interval", "cells": cells, "lower": [-2.5], "upper": [2.5]},
        "problem": {"T": 1.0, "sigma": math.sqrt(0.2), "steps": steps, "params": {"a": 0.5}},
        "rho0": {"kind": "gaussian", "mean": [0.3], "std": 0.5},
        "discretisation": {"degree": 1, "scheme": scheme},
        "qhd": {"signature": "control"},
        "exact": {"solution": "lq-gaussian"},
        "output": {"progress": False}})


@pytest.mark.parametrize("scheme,cells,steps,order", [("backward-euler", 40, 8, 0.8),
                                                      ("crank-nicolson", 80, 16, 1.8)])
def test_qhd_lq_errors_converge(scheme, cells, steps, order, tmp_path):
    """h and τ halved together: backward Euler O(τ + h²) → order ≥ 0.8 in h; the staggered
    midpoint action O(τ² + h²) → order ≥ 1.8 on the last level (ρ, J from the first)."""
    conv = refinement_study(lq_qhd(scheme, cells, steps), tmp_path / "conv", levels=3,
                            where="both", comm=MPI.COMM_SELF)
    rows, rates = conv["levels"], conv["rates"]
    for row in rows:
        assert {"h", "tau", "ndofs", "nsteps"} <= set(row)
    for name in NORMS:
        assert rows[-1][name] < rows[0][name], (name, rows)
        assert rates[name][-1] >= order, (name, rates)
    if scheme == "crank-nicolson":
        assert min(rates["err_rho_L2"] + rates["err_J"]) >= order, rates
    assert (tmp_path / "conv" / "convergence.json").is_file()
