"""Item 4 of issue 14: every mesh, checkpoint or data-file error is one line naming the file
and what was expected; a checkpoint of another dimension or another domain is refused."""
from __future__ import annotations

import textwrap

from mpi4py import MPI

import dolfinx
import numpy as np
import pytest

from fem_mfc import mesh
from fem_mfc.density import initial_density
from fem_mfc.errors import ConfigError, UserError
from fem_mfc.io import load_checkpoint, save_checkpoint
from helpers import read_summary, run_cli


def _garbage(path, n=3000, seed=0):
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    f = {"garbage.msh": _garbage(d / "garbage.msh"), "garbage.vtu": _garbage(d / "garbage.vtu"),
         "garbage.xdmf": _garbage(d / "garbage.xdmf")}
    (d / "tags.vtu").write_text('<?xml version="1.0"?><VTKFile type="UnstructuredGrid">'
                                "<junk/></VTKFile>")
    f["tags.vtu"] = d / "tags.vtu"
    (d / "empty.msh").write_text("")
    f["empty.msh"] = d / "empty.msh"
    m1 = dolfinx.mesh.create_interval(MPI.COMM_SELF, 20, [-3.0, 3.0])
    g1 = dolfinx.fem.Function(dolfinx.fem.functionspace(m1, ("Lagrange", 1)))
    g1.interpolate(lambda x: np.exp(-x[0] ** 2))
    save_checkpoint(d / "c1d.bp", m1, {"rho0": g1})
    save_checkpoint(d / "named.bp", m1, {"density": g1})
    m2 = dolfinx.mesh.create_rectangle(MPI.COMM_SELF, [[-2.0, -2.0], [2.0, 2.0]], [8, 8])
    g2 = dolfinx.fem.Function(dolfinx.fem.functionspace(m2, ("Lagrange", 1)))
    g2.interpolate(lambda x: np.exp(-x[0] ** 2 - x[1] ** 2))
    save_checkpoint(d / "c2d.bp", m2, {"rho0": g2})
    f.update({k: d / k for k in ("c1d.bp", "named.bp", "c2d.bp")})
    return f


@pytest.mark.parametrize("name", ["garbage.msh", "garbage.vtu", "garbage.xdmf", "tags.vtu",
                                  "empty.msh", "c2d.bp"])
def test_bad_mesh_files(name, files, capfd):
    with pytest.raises(UserError) as e:
        mesh.read_file(files[name], MPI.COMM_SELF)
    msg = str(e.value)
    assert str(files[name]) in msg and "\n" not in msg
    assert "expected" in msg or "not a readable" in msg or "no mesh" in msg
    out, err = capfd.readouterr()
    assert "Error" not in out + err       # meshio's own chatter is swallowed


def _V(lo, hi, n=8, d=2):
    m = (dolfinx.mesh.create_rectangle(MPI.COMM_SELF, [lo, hi], [n, n]) if d == 2 else
         dolfinx.mesh.create_interval(MPI.COMM_SELF, n, [lo[0], hi[0]]))
    return dolfinx.fem.functionspace(m, ("Lagrange", 1))


@pytest.mark.parametrize("name,V,words", [
    ("c1d.bp", lambda: _V([-1.0, -1.0], [1.0, 1.0]), "1D"),          # silently accepted before
    ("named.bp", lambda: _V([-1.0], [1.0], d=1), "'density'"),        # a KeyError before
    ("c2d.bp", lambda: _V([-3.0, -3.0], [3.0, 3.0]), "covers"),       # another domain
    ("garbage.msh", lambda: _V([-1.0], [1.0], d=1), "not a checkpoint"),
])
def test_bad_checkpoints(name, V, words, files):
    with pytest.raises(ConfigError) as e:
        initial_density({"kind": "file", "file": str(files[name])}, V())
    msg = str(e.value)
    assert "rho0.file" in msg and str(files[name]) in msg and words in msg and "\n" not in msg


def test_good_checkpoint_on_a_covered_mesh(files):
    rho = initial_density({"kind": "file", "file": str(files["c2d.bp"])},
                          _V([-1.0, -1.0], [1.0, 1.0]))
    assert rho.x.array.min() >= 0


def test_load_checkpoint_names_the_file(files, tmp_path):
    with pytest.raises(UserError, match="no function named 'rho0'"):
        load_checkpoint(files["named.bp"], MPI.COMM_SELF, "rho0")
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.bp", MPI.COMM_SELF, "rho0")


CFG = textwrap.dedent("""
    [run]
    formulation = "heat"
    [mesh]
    kind = "{kind}"
    {mesh}
    [problem]
    T = 0.1
    steps = 2
    [rho0]
    {rho0}
    [output]
    figures = false
""")


@pytest.mark.slow
def test_cli_bad_files_exit_2_one_line(files, tmp_path):
    out = tmp_path / "out"
    good = tmp_path / "good.toml"
    good.write_text(CFG.format(kind="rectangle", mesh="cells = 4", rho0="std = 0.5"))
    assert run_cli(["run", str(good), "--out", str(out), "--quiet"]).returncode == 0
    before = read_summary(out)
    cases = [("file", f'file = "{files["garbage.vtu"]}"', "std = 0.5", "garbage.vtu"),
             ("file", f'file = "{files["c2d.bp"]}"', "std = 0.5", "c2d.bp"),
             ("rectangle", "cells = 4", f'kind = "file"\nfile = "{files["c1d.bp"]}"', "c1d.bp")]
    for kind, m, r, name in cases:
        cfg = tmp_path / "bad.toml"
        cfg.write_text(CFG.format(kind=kind, mesh=m, rho0=r))
        p = run_cli(["run", str(cfg), "--out", str(out), "--quiet"])
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == 2 and len(lines) == 1 and name in lines[0], (name, p.stderr)
        assert read_summary(out) == before
