"""Item 2 of issue 14: formulas are checked before the solve.  Math errors in constant
subexpressions and size/complexity limits are ConfigErrors at parse time; non-finite values at
the mesh's DOF/quadrature points (and of G over a range of rho) are ConfigErrors from
``checks.check_formulas(cfg, mesh)``; every message is one line naming the key."""
from __future__ import annotations

from mpi4py import MPI

import dolfinx
import numpy as np
import pytest
import ufl

from fem_mfc import checks, config, expressions
from fem_mfc.errors import ConfigError

PARSE_FAILURES = ["1/0", "10.0**400", "exp(1000)", "log(0)", "sqrt(-1)", "x0**1e6",
                  "x0**-100", "0**-1", "(-8)**(1/3)", "x0/0", "rho/0", "1/(2-2)",
                  " + ".join(["x0"] * 20000), "(" * 300 + "x0" + ")" * 300,
                  "+".join(f"x0*{i}" for i in range(300)), "-" * 100 + "x0",
                  "exp(exp(exp(exp(10))))", "sqrt(min(-1, 0))"]


@pytest.fixture(scope="module")
def mesh1d():
    return dolfinx.mesh.create_interval(MPI.COMM_SELF, 16, [-3.0, 3.0])


@pytest.mark.parametrize("text", PARSE_FAILURES, ids=[t[:24] for t in PARSE_FAILURES])
def test_parse_failures_are_config_errors(text, mesh1d):
    x = ufl.SpatialCoordinate(mesh1d)
    rho = ufl.variable(dolfinx.fem.Constant(mesh1d, 1.0))
    with pytest.raises(ConfigError) as e:
        expressions.parse(text, "problem.G", x=x, gdim=1, variables={"rho": rho})
    msg = str(e.value)
    assert "problem.G" in msg and "\n" not in msg and len(msg) < 400


@pytest.mark.parametrize("text,where", [("x0**", "it ends before the expression is complete"),
                                        ("x0 + (1", "column 6: '\\(' was never closed"),
                                        ("x0 ** * 2", "syntax error at column 7"),
                                        ("2*x0)", "syntax error at column 5")])
def test_syntax_errors_say_where(text, where, mesh1d):
    """"x0**" was reported as a syntax error "at column 0": Python gives no column when the
    text ends too early."""
    with pytest.raises(ConfigError, match=where):
        expressions.parse(text, "problem.G", x=ufl.SpatialCoordinate(mesh1d), gdim=1)


@pytest.mark.parametrize("text", ["x0**2", "exp(-x0**2/2)", "kappa*rho**2/2", "rho*log(rho)",
                                  "sqrt(1 + x0**2)", "x0**64", "min(x0, 1) + max(rho, 0)"])
def test_reasonable_formulas_parse(text, mesh1d):
    x = ufl.SpatialCoordinate(mesh1d)
    rho = ufl.variable(dolfinx.fem.Constant(mesh1d, 1.0))
    expressions.parse(text, "problem.G", x=x, gdim=1, variables={"rho": rho},
                      params={"kappa": 1.0})


def test_check_finite_on_mesh(mesh1d):
    x = ufl.SpatialCoordinate(mesh1d)
    # the interval [-3, 3] with 16 cells has a vertex at x = 0: 1/x0 is infinite there
    with pytest.raises(ConfigError, match="problem.V"):
        expressions.check_finite_on_mesh(1 / x[0], "problem.V", mesh1d, text="1/x0")
    vals = expressions.check_finite_on_mesh(1 / (x[0] + 10), "problem.V", mesh1d)
    xs = mesh1d.geometry.x[:, 0]
    # the values lie in the range of the exact function over the domain
    assert vals.min() >= 1 / 13 - 1e-12 and vals.max() <= 1 / 7 + 1e-12
    assert (np.isclose(vals.min(), 1 / (xs.max() + 10))
            and np.isclose(vals.max(), 1 / (xs.min() + 10)))


def _cfg(**over):
    raw = {"run": {"formulation": "hjb-fp"},
           "mesh": {"kind": "interval", "cells": 16, "lower": [-3.0], "upper": [3.0]},
           "rho0": {"mean": [0.0], "std": 0.5}}
    if "kind" in over.get("rho0", {}):       # another kind: none of the Gaussian's keys
        raw["rho0"] = {}
    for sec, kv in over.items():
        raw.setdefault(sec, {}).update(kv)
    return config.from_dict(raw)


ON_MESH_FAILURES = [
    ({"problem": {"V": "1/x0"}}, "problem.V"),
    ({"problem": {"Phi": "log(x0**2)"}}, "problem.Phi"),
    ({"problem": {"Phi": "exp(100*x0**2)"}}, "problem.Phi"),
    ({"problem": {"G": "1/(rho - 1)"}}, "problem.G"),               # rho = 1
    ({"problem": {"G": "exp(rho**8)"}}, "problem.G"),               # overflows at rho = 100
    ({"problem": {"G": "rho**2/x0"}}, "problem.G"),                 # x0 = 0
    ({"problem": {"G": "sqrt(rho - 1e-3)", "coupling": "mfg"}}, "problem.G"),  # rho = 1e-6
    ({"rho0": {"kind": "formula", "formula": "0*x0"}}, "rho0.formula"),
    ({"rho0": {"kind": "formula", "formula": "-exp(-x0**2)"}}, "rho0.formula"),
    ({"rho0": {"kind": "formula", "formula": "1/(x0*x0)"}}, "rho0.formula"),
    ({"run": {"formulation": "qhd"}, "qhd": {"signature": "quantum", "S0": "1/x0"}}, "qhd.S0"),
    ({"rho0": {"std": 1e-300}}, "rho0.std"),
    ({"rho0": {"std": 1e300}}, "rho0.std"),
]


@pytest.mark.parametrize("over,key", ON_MESH_FAILURES, ids=[k + str(i) for i, (_, k) in
                                                            enumerate(ON_MESH_FAILURES)])
def test_check_formulas_refuses(over, key, mesh1d):
    cfg = _cfg(**over)
    with pytest.raises(ConfigError) as e:
        checks.check_formulas(cfg, mesh1d)
    msg = str(e.value)
    assert f"'{key}'" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("over", [{}, {"problem": {"V": "0.5*x0**2", "Phi": "abs(x0)",
                                                   "G": "rho*log(rho)"}},
                                  {"problem": {"G": "kappa*rho**2/2", "params": {"kappa": 2.0},
                                               "coupling": "mfg"}},
                                  {"rho0": {"kind": "formula", "formula": "exp(-x0**2)"}},
                                  {"rho0": {"std": 0.05}},
                                  {"problem": {"V": "min(1, 1)", "Phi": "max(x0, 0)"}},
                                  {"problem": {"G": "x0**2"}}])          # G without rho
def test_check_formulas_accepts(over, mesh1d):
    checks.check_formulas(_cfg(**over), mesh1d)


def test_rho0_std_message_has_the_numbers(mesh1d):
    h = 6.0 / 16                 # cell size of the mesh, computed here from its definition
    with pytest.raises(ConfigError) as e:
        checks.check_formulas(_cfg(rho0={"std": h / 1000}), mesh1d)
    msg = str(e.value)
    assert "rho0.std" in msg and f"{h:.3g}" in msg and f"{h / 1000!r}" in msg



@pytest.mark.parametrize("rho0,key", [
    ({"mean": [5.0]}, "rho0.mean"),                          # off the mesh [-3, 3]: ran, exit 0
    ({"mean": [-4.5]}, "rho0.mean"),                         # 3 std outside: 0.13 % on it
    ({"kind": "mixture", "means": [[0.0], [9.0]], "stds": [0.5, 0.5], "weights": [1.0, 1.0]},
     "rho0.means[1]"),                                       # a component silently dropped
])
def test_a_gaussian_off_the_mesh_is_refused(rho0, key, mesh1d):
    """A Gaussian mean off the mesh (other coordinates, a sign) left a tail of e^-88 of the
    Gaussian on it, which normalising blew up into another initial density, squashed against
    a wall — and the run reported success.  Refused, naming the key, the fraction and the
    mesh's extent; a Gaussian at a wall (half on the mesh), just outside, or outside along a
    periodic direction (wrapped onto the mesh) is kept."""
    from fem_mfc.density import density_ufl
    r = {"kind": "gaussian", "std": 0.5, **rho0}
    with pytest.raises(ConfigError) as e:
        density_ufl(r, mesh1d)
    msg = str(e.value)
    assert f"'{key}'" in msg and "-3..3" in msg and "\n" not in msg, msg
    density_ufl(r, mesh1d, periods={0: 6.0})
    for mean in ([3.0], [4.0]):                              # 50 %, 2.3 % on the mesh
        density_ufl({"kind": "gaussian", "std": 0.5, "mean": mean}, mesh1d)
