"""ρ_0 from a field file: an adios4dolfinx checkpoint written by fem_mfc, read back onto the
same or a different mesh (non-matching interpolation), serial and through the CLI."""
from __future__ import annotations

import textwrap

from mpi4py import MPI

import dolfinx
import numpy as np
import pytest
import ufl

from fem_mfc import mesh
from fem_mfc.density import initial_density
from fem_mfc.io import save_checkpoint
from helpers import read_summary, run_cli


def _write(path):
    msh = dolfinx.mesh.create_rectangle(MPI.COMM_SELF, [[-3, -3], [3, 3]], [24, 24])
    V = dolfinx.fem.functionspace(msh, ("Lagrange", 1))
    f = dolfinx.fem.Function(V, name="rho0")
    f.interpolate(lambda x: np.exp(-((x[0] - 0.5) ** 2 + x[1] ** 2)))
    save_checkpoint(path, msh, {"rho0": f})
    return f


def test_rho0_from_checkpoint_on_another_mesh(tmp_path):
    path = tmp_path / "rho0.bp"
    _write(path)
    md = mesh.build({"kind": "disk", "radius": 2.5, "h": 0.3, "refine": 0}, MPI.COMM_SELF)
    V = dolfinx.fem.functionspace(md.mesh, ("Lagrange", 1))
    rho = initial_density({"kind": "file", "file": str(path)}, V)
    mass = dolfinx.fem.assemble_scalar(dolfinx.fem.form(rho * ufl.dx))
    assert mass == pytest.approx(1.0, rel=1e-12)
    x = ufl.SpatialCoordinate(md.mesh)
    mean_x = dolfinx.fem.assemble_scalar(dolfinx.fem.form(x[0] * rho * ufl.dx))
    assert mean_x == pytest.approx(0.5, abs=0.03)      # the Gaussian's centre survives


def test_cli_heat_from_checkpoint(tmp_path):
    path = tmp_path / "rho0.bp"
    _write(path)
    cfg = tmp_path / "c.toml"
    cfg.write_text(textwrap.dedent(f"""
        [run]
        formulation = "heat"
        [mesh]
        kind = "disk"
        radius = 2.5
        h = 0.4
        [problem]
        T = 0.1
        steps = 2
        [rho0]
        kind = "file"
        file = "{path}"
        [output]
        figures = false
    """))
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet"])
    assert p.returncode == 0, p.stderr
    assert read_summary(tmp_path / "o")["mass"] == pytest.approx(1.0, rel=1e-12)
    cfg.write_text(cfg.read_text().replace(str(path), str(tmp_path / "missing.bp")))
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "o2"), "--quiet"])
    assert p.returncode == 2 and "rho0.file" in p.stderr


def test_a_paraview_series_is_named_as_such(tmp_path):
    """`rho0.file` pointed at a run's rho.bp (a ParaView VTX series, the file a user tries
    first) said "holds no readable mesh (expected an adios4dolfinx checkpoint folder (.bp)
    written by fem_mfc; 'Mesh topology not found …')" — and fem_mfc had written that file.
    The line now says it is a ParaView series, not a checkpoint, and how to write one."""
    from fem_mfc.errors import ConfigError
    msh = dolfinx.mesh.create_unit_square(MPI.COMM_SELF, 4, 4)
    V = dolfinx.fem.functionspace(msh, ("Lagrange", 1))
    f = dolfinx.fem.Function(V, name="rho")
    f.x.array[:] = 1.0
    path = tmp_path / "rho.bp"
    with dolfinx.io.VTXWriter(MPI.COMM_SELF, str(path), [f], engine="BP4") as w:
        w.write(0.0)
    with pytest.raises(ConfigError) as e:
        initial_density({"kind": "file", "file": str(path)}, V)
    msg = str(e.value)
    assert "rho0.file" in msg and "ParaView" in msg and "not a checkpoint" in msg, msg
    assert "save_checkpoint(path, mesh, {'rho0': f})" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("converged,words", [
    (True, "holds a finished run (converged), whose checkpoint was removed"),
    (False, "wrote no checkpoint ([output] checkpoint_every = k"),
])
def test_restart_from_a_run_without_a_checkpoint_says_why(tmp_path, converged, words):
    """`run … --restart DIR` on the output folder of a finished run said only "expected a
    fem_mfc checkpoint folder …, or an output folder with one beside it": the user could not
    tell that the run had converged (its checkpoint removed, nothing to continue) or had
    written none.  The line now says which."""
    import json

    from fem_mfc import checkpoint
    from fem_mfc.errors import ConfigError
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"converged": converged}))
    with pytest.raises(ConfigError) as e:
        checkpoint.resolve(run)
    msg = str(e.value)
    assert "'--restart'" in msg and words in msg and "\n" not in msg, msg
    with pytest.raises(ConfigError) as e:                # not a run folder: as before
        checkpoint.resolve(tmp_path / "nothing")
    assert "finished" not in str(e.value) and "wrote no" not in str(e.value)
