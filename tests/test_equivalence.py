"""MODEL §7.3: one congested control problem solved as HJB–FP, QHD and Cole–Hopf pair; the
three discrete solutions differ by discretisation error, O(τ + h²) with τ ∝ h here."""
from __future__ import annotations

import math

import pytest

from fem_mfc.equivalence import solve_three
from helpers import observed_orders

pytestmark = pytest.mark.slow          # a refinement study


@pytest.fixture(scope="module")
def study_1d():
    return [solve_three(c, c // 2, dim=1) for c in (32, 64, 128)]


@pytest.mark.parametrize("key", ["rho_hjb_qhd", "rho_hjb_pair", "J_hjb_qhd", "J_hjb_pair"])
def test_differences_converge_at_first_order_1d(study_1d, key):
    e = [row[key] for row in study_1d]
    r = observed_orders(e, [row["h"] for row in study_1d])
    assert e[-1] < e[0]
    assert min(r) >= 0.75 and r[-1] >= 0.8, (key, e, r)


def test_three_solvers_are_consistent_1d(study_1d):
    fine = study_1d[-1]
    assert fine["mass_error"] < 1e-10
    assert fine["min_rho"] > 0.1
    assert fine["rho_hjb_qhd"] < 1e-2 and fine["rho_hjb_pair"] < 1e-2
    its = fine["iterations"]
    assert its["hjb"] <= 8 and its["qhd"] <= 8 and its["pair"] <= 16   # pair: inexact Newton


def test_differences_decrease_2d():
    """A small 2D check (unstructured-free rectangle, P1): the differences shrink at about
    first order from 8 to 16 cells per axis (τ = h/2·…)."""
    rows = [solve_three(c, c // 2, dim=2) for c in (8, 16)]
    for key in ("rho_hjb_qhd", "rho_hjb_pair"):
        r = observed_orders([row[key] for row in rows], [row["h"] for row in rows])[0]
        assert r >= 0.5, (key, [row[key] for row in rows], r)
        assert math.isfinite(rows[-1][key])
