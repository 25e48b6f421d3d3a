"""The torch baselines minimise the PDE network's objective *with* its running potential V of
``[problem] V`` (they used to leave V out: the side-by-side comparison of a classifier with
V ≠ 0 compared different objectives).  V reaches torch through
:func:`fem_mfc.expressions.torch_function`, which reads the formula language of
:func:`fem_mfc.expressions.parse`."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from fem_mfc import expressions
from fem_mfc.errors import ConfigError
from fem_mfc.learning import baseline, compare, data
from fem_mfc.learning.feedback import default_anchors

torch = pytest.importorskip("torch")

FORMULAS = [
    ("0.5*(x0**2 + x1**2)", {}, lambda x, y: 0.5 * (x ** 2 + y ** 2)),
    ("c*exp(-x**2/s) + abs(y) - pi", {"c": 2.0, "s": 0.3},
     lambda x, y: 2.0 * np.exp(-x ** 2 / 0.3) + np.abs(y) - math.pi),
    ("max(x0, 0.1) * min(x1, -x0) + erf(x1) + tanh(x0)*atan(x1)", {},
     lambda x, y: np.maximum(x, 0.1) * np.minimum(y, -x) + np.vectorize(math.erf)(y)
     + np.tanh(x) * np.arctan(y)),
    ("sqrt(1 + x0**2) + log(2 + cos(x1)) + sinh(x0)/cosh(x1) + e**x1", {},
     lambda x, y: np.sqrt(1 + x ** 2) + np.log(2 + np.cos(y)) + np.sinh(x) / np.cosh(y)
     + np.e ** y),
    ("3", {}, lambda x, y: np.full_like(x, 3.0)),
]


@pytest.mark.parametrize("text,params,ref", FORMULAS, ids=[f[0][:20] for f in FORMULAS])
def test_torch_function_reads_formulas_as_numpy_does(text, params, ref):
    expressions.parse(text, "problem.V", x=[0, 0], gdim=2, params=params)   # a valid formula
    X = np.random.default_rng(1).uniform(-1.5, 1.5, (40, 2))
    f = expressions.torch_function(text, "problem.V", 2, params)
    Xt = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    v = f(Xt)
    assert v.shape == (40,)
    np.testing.assert_allclose(v.detach().numpy(), ref(X[:, 0], X[:, 1]), rtol=1e-14,
                               atol=1e-14)
    if text != "3":                     # differentiable: training takes its gradient
        v.sum().backward()
        assert Xt.grad is not None


def test_torch_function_refuses_a_coordinate_of_another_dimension():
    with pytest.raises(ConfigError, match="problem.V"):
        expressions.torch_function("x2**2", "problem.V", 2)(torch.zeros((3, 2)))


def _args(n=40):
    ds = data.load({"dataset": "moons", "n_samples": n, "noise": 0.1, "seed": 0,
                    "test_fraction": 0.5}, 2)
    return (ds.X_train, ds.y_train, ds.X_test, ds.y_test, default_anchors(2, 2, 2.0), 1.0,
            1.0, 4, 4, 1, 0.0)          # T = 1, 4 layers, width 4, one epoch at lr 0


def test_resnet_objective_includes_the_potential_as_the_pde_flow_sums_it():
    """At the (unchanged: lr = 0) initial network the objective with V exceeds the one without
    by Σ_n τ V(x_n) averaged over the points, x_n the ResNet's own path — the left sum of the
    PDE network's empirical objective (fem_mfc.learning.infer)."""
    args = _args()
    off = baseline.train_baseline("resnet", *args, seed=3)
    on = baseline.train_baseline("resnet", *args, seed=3, potential=("k*x0**2 + x1", {"k": 2}))
    path = on["train_paths"]
    np.testing.assert_array_equal(path, off["train_paths"])
    tau = 1.0 / 4
    pot = sum(tau * (2 * p[:, 0] ** 2 + p[:, 1]) for p in path[:-1]).mean()
    assert on["train_potential"] == pytest.approx(pot, rel=1e-13)
    assert on["history"][0] - off["history"][0] == pytest.approx(pot, rel=1e-12)
    assert on["train_objective"] == pytest.approx(
        on["train_anchor_loss"] + on["train_kinetic"] + pot, rel=1e-13)
    assert off["train_potential"] == 0.0


@pytest.mark.parametrize("kind", ["resnet", "node"])
def test_a_constant_potential_adds_its_time_integral(kind):
    """V = 2.5: ∫₀ᵀ V dt = 2.5 T whatever the path (RK4's weights sum to the step)."""
    on = baseline.train_baseline(kind, *_args(), seed=0, potential=("2.5", {}))
    assert on["train_potential"] == pytest.approx(2.5 * 1.0, rel=1e-14)


def test_compare_passes_the_run_potential_to_the_baselines():
    import ufl
    prob = SimpleNamespace(equation={"V": "a*x0**2", "params": {"a": 1.5}})
    cell = ufl.Mesh(__import__("basix.ufl").ufl.element("Lagrange", "triangle", 1, shape=(2,)))
    x = ufl.SpatialCoordinate(cell)
    model = SimpleNamespace(Vpot=expressions.parse("a*x0**2", "problem.V", x=x, gdim=2,
                                                   params={"a": 1.5}))
    assert compare.potential(prob, model) == ("a*x0**2", {"a": 1.5})
    for text in ("0", "2.5"):        # constants: out of the empirical objectives of both
        model = SimpleNamespace(Vpot=expressions.parse(text, "problem.V", x=x, gdim=2))
        assert compare.potential(SimpleNamespace(equation={"V": text, "params": {}}),
                                 model) is None
