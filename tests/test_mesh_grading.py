"""Graded built-in meshes (``[mesh] grading``, ``focus``): the sinh map, the meshes it moves,
their config keys, and what they are for — an attractive game's concentrated density."""
from mpi4py import MPI

import numpy as np
import pytest

from fem_mfc import mesh as meshmod
from fem_mfc.config import validate
from fem_mfc.errors import ConfigError


@pytest.mark.parametrize("lo, hi, c, a", [(0.0, 1.0, 0.5, 6.0), (-1.0, 1.0, 0.3, 3.0),
                                          (0.0, 1.0, 0.0, 2.0), (-2.0, 3.0, 3.0, 1.5)])
def test_grading_map_is_a_graded_bijection(lo, hi, c, a):
    f = meshmod.grading_map(lo, hi, c, a)
    s = np.linspace(lo, hi, 401)
    x = f(s)
    h = np.diff(x)
    assert x[0] == lo and x[-1] == hi                      # the sides stay where they are
    assert np.all(h > 0)
    assert abs(x[np.argmin(h)] - c) <= h.min() * 1.01      # the smallest cells at the focus
    # its size: 2aλ/(hi − lo) of the uniform one, a/sinh(a) for a focus in the middle
    if c == 0.5 * (lo + hi):
        assert h.min() / (s[1] - s[0]) == pytest.approx(a / np.sinh(a), rel=1e-3)
    # neighbours differ by at most e^{2a/n}
    assert np.max(h[1:] / h[:-1]) <= np.exp(2 * a / 400) * (1 + 1e-9)
    assert np.max(h[:-1] / h[1:]) <= np.exp(2 * a / 400) * (1 + 1e-9)


def test_grading_zero_is_the_uniform_mesh():
    md = meshmod.build({"kind": "interval", "cells": 10, "lower": [0.0], "upper": [1.0],
                        "grading": 0.0, "focus": []}, MPI.COMM_SELF)
    assert np.allclose(np.sort(md.mesh.geometry.x[:, 0]), np.linspace(0, 1, 11), atol=1e-15)


@pytest.mark.parametrize("kind, dim", [("interval", 1), ("rectangle", 2), ("box", 3)])
def test_graded_built_in_meshes(kind, dim):
    lo, hi = [0.0, -1.0, 0.0][:dim], [1.0, 1.0, 2.0][:dim]
    base = {"kind": kind, "cells": 8, "lower": lo, "upper": hi, "focus": []}
    uni = meshmod.build(dict(base, grading=0.0), MPI.COMM_SELF)
    focus = [0.25, 0.5, 1.0][:dim]
    gr = meshmod.build(dict(base, grading=3.0, focus=focus), MPI.COMM_SELF)
    xu, xg = uni.mesh.geometry.x[:, :dim], gr.mesh.geometry.x[:, :dim]
    for i in range(dim):                                   # vertex by vertex, axis by axis
        assert np.allclose(xg[:, i], meshmod.grading_map(lo[i], hi[i], focus[i], 3.0)(xu[:, i]),
                           rtol=0, atol=1e-14)
    # the sides' tags find the same facets (the sides did not move)
    assert np.array_equal(uni.facet_tags.values, gr.facet_tags.values)
    assert np.array_equal(uni.facet_tags.indices, gr.facet_tags.indices)
    assert gr.h_min < 0.3 * uni.h_min and gr.h > uni.h
    # the cells tile the same domain: total volume
    import dolfinx.fem
    import ufl
    vol = [dolfinx.fem.assemble_scalar(dolfinx.fem.form(1.0 * ufl.dx(domain=m.mesh)))
           for m in (uni, gr)]
    assert vol[1] == pytest.approx(vol[0], rel=1e-13)


def _raw(**mesh):
    box = {"lower": [0.0], "upper": [1.0]} if mesh.get("kind", "interval") == "interval" else {}
    return {"mesh": {"kind": "interval", **box, **mesh}}


@pytest.mark.parametrize("mesh, key", [
    ({"focus": [0.5]}, "mesh.focus"),                      # a uniform mesh has no focus
    ({"grading": 6.0, "focus": [1.5]}, "mesh.focus"),     # outside the mesh
    ({"grading": 6.0, "focus": [0.2, 0.3]}, "mesh.focus"),  # another dimension
    ({"grading": -1.0}, "mesh.grading"),
    ({"grading": 50.0}, "mesh.grading"),
    ({"kind": "disk", "grading": 2.0}, "mesh.grading"),    # a gmsh kind does not read it
])
def test_grading_keys_refused(mesh, key):
    with pytest.raises(ConfigError) as e:
        validate(_raw(**mesh))
    assert e.value.key == key


def test_grading_keys_accepted():
    cfg = validate(_raw(grading=6.0, focus=[0.4]))
    assert cfg["mesh"]["grading"] == 6.0 and cfg["mesh"]["focus"] == [0.4]


@pytest.mark.slow
def test_graded_mesh_resolves_an_attractive_game(tmp_path):
    """The purpose: an aggregation game (G/ρ = cρ, c = −0.02) concentrates into
    sech²(x/L)/(2L), L = 8ε²/|c| = 0.01, ρ_max = 50 (docs/performance.md).  100 cells graded
    towards ½ (h_min = L/34) come within 10 % of ρ_max and 20 % of the converged J
    (−0.3944), twice as close as 100 uniform ones (h = L)."""
    from helpers import read_summary, run_cli
    cfg = """[mesh]
kind = "interval"
cells = 100
lower = [0.0]
upper = [1.0]
{grading}
[problem]
sigma = 0.1
steps = 20
Phi = "(x0 - 0.5)**2"
G = "c*rho**2"
coupling = "mfg"
params = {{ c = -0.02 }}
[rho0]
kind = "formula"
formula = "exp(-50*(x0 - 0.5)**2)"
[discretisation]
stabilisation = "monotone"
[output]
figures = false
vtx = false
progress = false
"""
    out = {}
    for name, g in (("uniform", ""), ("graded", "grading = 6.0")):
        (tmp_path / f"{name}.toml").write_text(cfg.format(grading=g))
        p = run_cli(["run", str(tmp_path / f"{name}.toml"), "--out", str(tmp_path / name),
                     "--quiet"])
        assert p.returncode == 0, p.stderr
        out[name] = read_summary(tmp_path / name)
    g, u = out["graded"], out["uniform"]
    assert g["converged"] and u["converged"]
    assert g["h_min"] == pytest.approx(0.0298 / 100, rel=0.02)
    assert u["h_min"] == pytest.approx(0.01)
    assert g["max_rho"] > 45 and 50 - g["max_rho"] < 0.5 * (50 - u["max_rho"])
    assert abs(g["J"] + 0.3944) < 0.2 * 0.3944
    assert abs(g["J"] + 0.3944) < 0.5 * abs(u["J"] + 0.3944)
    assert g["min_rho"] >= -1e-12 and abs(g["J"] - g["J_value_identity"]) < 1e-8


@pytest.mark.mpi
def test_graded_mesh_on_two_ranks_matches_serial():
    """Every rank moves its own vertices and ghosts by the same map: J of a congested solve on
    a graded rectangle is the serial one."""
    import ufl

    from fem_mfc.problem import ControlProblem
    from fem_mfc.solvers import solve

    def problem(comm):
        md = meshmod.build({"kind": "rectangle", "cells": 10, "lower": [-1.0, -1.0],
                            "upper": [1.0, 1.0], "grading": 2.0, "focus": [0.2, 0.0]}, comm)
        x = ufl.SpatialCoordinate(md.mesh)
        return md, ControlProblem(mesh=md.mesh, T=1.0, sigma=0.5, steps=4, degree=1,
                                  Phi=(x[0] - 0.2) ** 2 + x[1] ** 2, G=lambda r: 0.5 * r ** 2,
                                  rho0=ufl.exp(-((x[0] + 0.4) ** 2 + x[1] ** 2) / 0.08))
    (mp, par), (ms, ser) = problem(MPI.COMM_WORLD), problem(MPI.COMM_SELF)
    assert mp.h_min == pytest.approx(ms.h_min, rel=1e-14)
    rp, rs = solve(par, "newton"), solve(ser, "newton")
    assert rp.converged and rs.converged
    assert abs(rp.J - rs.J) < 1e-9 and abs(rp.mass_error - rs.mass_error) < 1e-12
