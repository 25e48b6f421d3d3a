"""Order-4 symmetric compositions of the midpoint rule on the NLS (MODEL §6: "reach order 4
by symmetric composition (triple jump) of midpoint steps" for FEM systems with a mass matrix)."""
from __future__ import annotations

import numpy as np
import pytest

from fem_mfc.integrators.composition import triple_jump_coefficients
from fem_mfc.nls_invariants import NLSInvariants
from fem_mfc.solvers.nls import ComposedStepper
from helpers import observed_orders
from test_nls import TIGHT, run_soliton, soliton_problem


def run(integrator, N, T=1.0, cells=400, degree=3):
    return run_soliton(cells, degree, N, T, integrator=integrator)


@pytest.mark.slow
@pytest.mark.parametrize("integrator", ["triple-jump", "suzuki"])
def test_composed_midpoint_is_order_4(integrator):
    """P3 on a fine mesh (spatial error ≪ temporal): composed midpoint error = O(τ⁴)."""
    steps = (4, 8, 16) if integrator == "triple-jump" else (2, 4, 8)
    errs = [run(integrator, N, cells=800) for N in steps]
    r = np.array(observed_orders(errs, [1 / N for N in steps]))
    assert r.min() >= 3.2 and r[-1] >= 3.5, (errs, r)
    # and far more accurate than plain midpoint with the same number of steps
    assert errs[-1] < 0.1 * run("midpoint", steps[-1], cells=800)


def test_composition_conserves_mass_to_roundoff():
    P, z, t, ex = soliton_problem(200, 1)
    st = ComposedStepper(P, z, 0.05, triple_jump_coefficients(2), **TIGHT)
    inv = NLSInvariants(P, z)
    m0, e0 = inv.mass(), inv.energy()
    for _ in range(40):
        st.step()
    assert abs(inv.mass() - m0) <= 1e-12 * m0
    assert abs(inv.energy() - e0) <= 1e-9 * abs(e0)
    st.destroy()
