"""Unit tests of the platform modules: formulas, config schema, meshes, atomic writes."""
from __future__ import annotations

from mpi4py import MPI

import numpy as np
import pytest
import ufl

from fem_mfc import config, expressions, mesh
from fem_mfc.errors import ConfigError, UserError
from fem_mfc.io import write_json_atomic


def _rect():
    return mesh.build({"kind": "rectangle", "cells": 2, "lower": [0, 0], "upper": [1, 1],
                       "diagonal": "right"}, MPI.COMM_SELF).mesh


@pytest.mark.parametrize("text", ["__import__('os').system('true')", "x0.__class__",
                                  "open('f')", "[1, 2]", "lambda: 1", "x0 if 1 else 2",
                                  "x3", "foo + 1", "exp(1, 2)", "1 +"])
def test_formula_rejects_unsafe_or_invalid(text):
    x = ufl.SpatialCoordinate(_rect())
    with pytest.raises(ConfigError) as e:
        expressions.parse(text, "problem.V", x=x, gdim=2)
    assert "problem.V" in str(e.value) and "\n" not in str(e.value)


def test_formula_values():
    import dolfinx
    msh = _rect()
    x = ufl.SpatialCoordinate(msh)
    e = expressions.parse("k*(x0**2 + y) + exp(0) - pi*0", "problem.V", x=x, gdim=2,
                          params={"k": 3.0})
    val = dolfinx.fem.assemble_scalar(dolfinx.fem.form(e * ufl.dx))
    assert val == pytest.approx(3 * (1 / 3 + 1 / 2) + 1)
    rho = dolfinx.fem.Constant(msh, 2.0)
    g = expressions.parse("kappa*rho**2/2", "problem.G", x=None, variables={"rho": rho},
                          params={"kappa": 0.5})
    assert float(dolfinx.fem.assemble_scalar(dolfinx.fem.form(g * ufl.dx(domain=msh)))) == \
        pytest.approx(1.0)


def test_integer_exponents_keep_exact_quadrature_degrees():
    """rho**3 from a formula is ρ³ with an integer exponent: UFL estimates its degree as 3p
    (exact); with the float 3.0 it took p + 2, too low from P2 on (a P3 solve with
    G = "rho**3/3" missed its value identity by 6.9e-8 and J by 5e-8)."""
    import dolfinx
    msh = _rect()
    V = dolfinx.fem.functionspace(msh, ("Lagrange", 3))
    rho = dolfinx.fem.Function(V)
    g = expressions.parse("rho**3/3 + rho**2.5", "problem.G", variables={"rho": rho})
    assert ufl.algorithms.estimate_total_polynomial_degree(
        expressions.parse("rho**3/3", "problem.G", variables={"rho": rho})) == 9
    assert ufl.algorithms.estimate_total_polynomial_degree(g) == 9    # 2.5: p + 2 = 5 < 9


def test_parameters_are_constants_of_one_compiled_form():
    """``params`` enter V, Φ and G as Constants: two values of κ give forms of one UFL
    signature (one compiled kernel; a new value used to cost 2–2.5 s of compilation), and
    the coupling's structure (affine, polynomial) is read off the Constant's value as off a
    number.  A formula free of x and ρ still folds to a number; exponents stay numbers."""
    import dolfinx

    from fem_mfc.forms import hjb_fp
    from fem_mfc.problem import ControlProblem
    msh = dolfinx.mesh.create_unit_square(MPI.COMM_SELF, 4, 4)
    V = dolfinx.fem.functionspace(msh, ("Lagrange", 1))
    rho = dolfinx.fem.Function(V)
    rho.x.array[:] = 1.5
    forms, values = [], []
    for kappa in (0.3, 0.7):
        cfg = config.from_dict({"mesh": {"kind": "rectangle", "cells": 4}, "rho0": {"mean": []},
                                "problem": {"G": "kappa*rho**q/2", "V": "kappa*x0**2",
                                            "params": {"kappa": kappa, "q": 2}}})
        p = ControlProblem.from_config(cfg, msh)
        form = (p.G(rho) + p.V) * ufl.dx
        forms.append(form.signature())
        values.append(dolfinx.fem.assemble_scalar(dolfinx.fem.form(form)))
        assert any(isinstance(c, ufl.Constant) for c in form.constants())
        assert hjb_fp.coupling_affine(p.G, "mftc")                      # c = κρ: affine
        assert hjb_fp.congestion_degree(p.G, "mftc", V) is None         # a polynomial
    assert forms[0] == forms[1]
    assert np.allclose(values, [0.3 * 1.125 + 0.3 / 3, 0.7 * 1.125 + 0.7 / 3], rtol=1e-13)
    literal = []                                   # the numbers of a formula likewise
    for c in (0.3, 0.7):
        cfg = config.from_dict({"mesh": {"kind": "rectangle", "cells": 4}, "rho0": {"mean": []},
                                "problem": {"G": f"{c}*rho**3/2", "Phi": f"{c}*(x0 - 0.5)**2"}})
        p = ControlProblem.from_config(cfg, msh)
        literal.append(((p.G(rho) + p.Phi) * ufl.dx).signature())
        assert hjb_fp.congestion_degree(p.G, "mftc", V) is None         # ρ³ stays degree 3p
        assert ufl.algorithms.estimate_total_polynomial_degree(p.G(rho)) == 3
    assert literal[0] == literal[1]
    assert expressions.parse("2*kappa", "k", params=expressions.parameter_constants(
        {"kappa": 0.25}, msh)) == 0.5
    from fem_mfc.density import density_ufl
    sig = {(density_ufl({"kind": "gaussian", "mean": [m, 0.5], "std": s}, msh) * ufl.dx)
           .signature() for m, s in ((0.4, 0.3), (0.6, 0.35))}
    assert len(sig) == 1                                    # the same for ρ0's mean, width


def test_config_defaults_roundtrip(tmp_path):
    cfg = config.from_dict({"mesh": {"kind": "rectangle"}})
    assert cfg["problem"]["T"] == 1.0 and cfg["solver"]["method"] == "auto"
    p = tmp_path / "c.toml"
    p.write_text(config.dumps(cfg))
    assert config.load(p) == cfg


def test_corners_default_to_the_mesh_dimension():
    """A box or an interval without corners is (−1, 1)^d (the defaults were the 2D ones:
    "expected an array of 3 numbers" for keys the user did not write); given ones are kept
    and still checked."""
    for kind, d in (("interval", 1), ("rectangle", 2), ("box", 3)):
        m = config.validate({"mesh": {"kind": kind}})["mesh"]
        assert m["lower"] == [-1.0] * d and m["upper"] == [1.0] * d, kind
    m = config.validate({"mesh": {"kind": "box", "upper": [2.0, 2.0, 3.0]}})["mesh"]
    assert m["lower"] == [-1.0] * 3 and m["upper"] == [2.0, 2.0, 3.0]
    with pytest.raises(ConfigError, match="mesh.lower"):
        config.validate({"mesh": {"kind": "box", "lower": [0.0, 0.0]}})


def test_schema_markdown_lists_every_key():
    md = config.schema_markdown()
    for section, keys in config.SCHEMA.items():
        assert f"## [{section}]" in md
        for k in keys:
            assert f"| `{k}` |" in md


def test_schema_defaults_are_written_as_toml():
    """The reference showed Python's defaults (`True`, `'auto'`): a user who copied
    ``continuation = True`` got a TOML parse error.  Every default cell is TOML now."""
    import re
    import tomllib
    rows = re.findall(r"^\| `([a-z_0-9]+)` \| [^|]+ \| `([^`]*)` \|", config.schema_markdown(),
                      re.M)
    assert len(rows) > 100
    for key, default in rows:
        if default == "required" or default.startswith("[problem] "):
            continue
        tomllib.loads(f"{key} = {default}")                 # raises if it is not TOML


def test_refined_gmsh_levels_shrink_h_and_keep_tags():
    hs = []
    for level in (0, 1):
        md = mesh.build({"kind": "annulus", "h": 0.4, "radius": 1.0, "inner_radius": 0.4,
                         "refine": level}, MPI.COMM_WORLD)
        hs.append(md.h)
        assert set(np.unique(md.facet_tags.values)) <= {1, 2}
        ntags = MPI.COMM_WORLD.allreduce(len(md.facet_tags.values))
        assert ntags > 0 and md.cell_tags is not None
    assert hs[1] < 0.7 * hs[0]


def test_msh_and_meshio_files_keep_tags(tmp_path, repo):
    import meshio
    md = mesh.read_file(repo / "meshes" / "annulus.msh", MPI.COMM_SELF)
    assert set(np.unique(md.facet_tags.values)) == {1, 2}
    assert set(np.unique(md.cell_tags.values)) == {1}
    m = meshio.read(repo / "meshes" / "disk.msh")
    tri = [c for c in m.cells if c.type == "triangle"]
    out = tmp_path / "disk.vtu"
    meshio.write(out, meshio.Mesh(m.points[:, :2], tri))
    md2 = mesh.read_file(out, MPI.COMM_SELF)
    assert md2.mesh.topology.index_map(2).size_global == sum(len(c.data) for c in tri)


def test_unreadable_mesh_file(tmp_path):
    bad = tmp_path / "bad.msh"
    bad.write_text("this is not a mesh")
    with pytest.raises(UserError) as e:
        mesh.read_file(bad, MPI.COMM_SELF)
    assert "bad.msh" in str(e.value)


def test_atomic_json_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "summary.json"
    write_json_atomic(p, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(p, {"a": object()})
    assert p.read_text().strip().startswith("{") and '"a": 1' in p.read_text()
    assert [q.name for q in tmp_path.iterdir()] == ["summary.json"]
    write_json_atomic(p, {"nan": float("nan")})
    assert "null" in p.read_text()


def test_docs_config_reference_is_current(repo):
    """docs/config.md is generated from the schema (`python3 -m fem_mfc schema`)."""
    assert (repo / "docs" / "config.md").read_text().strip() == config.schema_markdown().strip()


def test_every_example_config_validates(repo):
    tomls = sorted((repo / "demos").glob("*.toml"))
    assert len(tomls) >= 5
    for t in tomls:
        cfg = config.load(t)
        assert cfg["run"]["formulation"] in config.FORMULATIONS, t.name
