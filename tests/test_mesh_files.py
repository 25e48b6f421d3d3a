"""Users' own gmsh meshes: what DOLFINx's reader would get wrong is refused with one line naming
the file (duplicate cells, physical groups without the domain, mixed cells, a surface that is
not flat), what it can read is read (partitioned files, files without physical groups), curved
(order 2) cells keep the discrete value identity, and the units do not matter."""
from __future__ import annotations

import textwrap

from mpi4py import MPI

import numpy as np
import pytest

from fem_mfc import mesh
from fem_mfc.errors import UserError
from helpers import read_summary, run_cli


def rectangle_msh(path, order=1, hole=False, groups=("domain", "walls", "exit"), partitions=0,
                  h=0.25):
    """[0, 2] × [0, 1] (minus a disk), exit tag 2 on x0 = 2, walls tag 1, domain tag 1."""
    scale = 1.0
    import gmsh
    gmsh.initialize(interruptible=False)
    gmsh.option.setNumber("General.Terminal", 0)
    occ = gmsh.model.occ
    s = occ.addRectangle(0, 0, 0, 2 * scale, scale)
    if hole:
        c = occ.addDisk(scale, 0.5 * scale, 0, 0.2 * scale, 0.2 * scale)
        s = occ.cut([(2, s)], [(2, c)])[0][0][1]
    occ.synchronize()
    gmsh.option.setNumber("Mesh.MeshSizeMax", h * scale)
    walls, right = [], []
    for _, c in gmsh.model.getBoundary([(2, s)], oriented=False):
        x = occ.getCenterOfMass(1, c)
        (right if abs(x[0] - 2 * scale) < 1e-9 * scale else walls).append(c)
    if "domain" in groups:
        gmsh.model.addPhysicalGroup(2, [s], 1)
    if "walls" in groups:
        gmsh.model.addPhysicalGroup(1, walls, 1)
    if "exit" in groups:
        gmsh.model.addPhysicalGroup(1, right, 2)
    gmsh.model.mesh.generate(2)
    if order > 1:
        gmsh.model.mesh.setOrder(order)
    if partitions:
        gmsh.model.mesh.partition(partitions)
    gmsh.write(str(path))
    gmsh.finalize()
    return path


def config(path, meshfile, scale=1.0, exit=True):
    s = scale
    path.write_text(textwrap.dedent(f"""
        [run]
        formulation = "hjb-fp"
        [mesh]
        kind = "file"
        file = "{meshfile}"
        [problem]
        T = 1.0
        sigma = {0.5 * s!r}
        steps = 6
        Phi = "(x0 - {2 * s!r})**2"
        [rho0]
        kind = "gaussian"
        mean = [{0.8 * s!r}, {0.5 * s!r}]
        std = {0.25 * s!r}
        [solver]
        method = "newton"
        [output]
        figures = false
        vtx = false
        progress = false
        """) + ('[[boundary]]\ntag = 2\nkind = "exit"\ncost = "0"\n' if exit else ""))
    return path


def run(tmp_path, name, meshfile, **kw):
    r = run_cli(["run", str(config(tmp_path / f"{name}.toml", meshfile, **kw)), "--out",
                 str(tmp_path / name), "--quiet"])
    return r, (read_summary(tmp_path / name) if r.returncode in (0, 3) else None)


def refusal(path) -> str:
    with pytest.raises(UserError) as e:
        mesh.read_file(path, MPI.COMM_SELF)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    return msg


@pytest.mark.slow
def test_curved_cells_keep_the_value_identity(tmp_path):
    """A hole meshed at order 2 (curved cells): every integral takes one quadrature rule, so
    a converged solve meets J = its value identity (it missed it by 2e-5 and exited 3)."""
    f = rectangle_msh(tmp_path / "o2.msh", order=2, hole=True)
    assert mesh.read_file(f, MPI.COMM_SELF).mesh.geometry.cmap.degree == 2
    r, s = run(tmp_path, "o2", f)
    assert r.returncode == 0, r.stderr
    assert abs(s["J"] - s["J_value_identity"]) < 1e-9 * abs(s["J"])


def test_duplicate_cells_are_refused(tmp_path):
    """Duplicate cells made DOLFINx abort the process (malloc error, exit 134)."""
    import meshio
    f = rectangle_msh(tmp_path / "sq.msh")
    m = meshio.read(f)
    cells = [(c.type, np.concatenate([c.data, c.data[:5]]) if c.type == "triangle" else c.data)
             for c in m.cells]
    data = {k: [np.concatenate([v, v[:5]]) if c.type == "triangle" else v
                for c, v in zip(m.cells, vs)] for k, vs in m.cell_data.items()}
    meshio.write(tmp_path / "dup.msh", meshio.Mesh(m.points, cells, cell_data=data),
                 file_format="gmsh22", binary=False)
    assert "5 duplicate cell(s)" in refusal(tmp_path / "dup.msh")


def test_physical_groups_without_the_domain_are_refused(tmp_path):
    """Only the boundary curves have physical groups: DOLFINx read the outline as a 1D mesh
    and the run 'converged' on it."""
    f = rectangle_msh(tmp_path / "edges.msh", groups=("walls", "exit"))
    assert "Physical Surface" in refusal(f)


def test_facet_groups_that_share_facets_are_refused(tmp_path):
    """Walls (group 1) on the bottom, right and left sides, exits (group 2) on the right and
    top sides: DOLFINx keeps one tag per facet, the right side's went to the walls, and the
    run exited through the top alone (exit 0, J and mass_exited of a mesh whose exit is the
    top side only).  Refused, naming both groups and the facets they share."""
    import gmsh
    gmsh.initialize(interruptible=False)
    gmsh.option.setNumber("General.Terminal", 0)
    s = gmsh.model.occ.addRectangle(0, 0, 0, 2, 1)
    gmsh.model.occ.synchronize()
    gmsh.option.setNumber("Mesh.MeshSizeMax", 0.5)
    side = {}
    for _, c in gmsh.model.getBoundary([(2, s)], oriented=False):
        x, y, _ = gmsh.model.occ.getCenterOfMass(1, abs(c))
        side["bottom" if y < 1e-9 else "top" if y > 1 - 1e-9 else
             "left" if x < 1e-9 else "right"] = abs(c)
    gmsh.model.addPhysicalGroup(2, [s], 1)
    gmsh.model.addPhysicalGroup(1, [side[k] for k in ("bottom", "right", "left")], 1)
    gmsh.model.addPhysicalGroup(1, [side["right"], side["top"]], 2)
    gmsh.model.mesh.generate(2)
    gmsh.write(str(tmp_path / "shared.msh"))
    gmsh.finalize()
    msg = refusal(tmp_path / "shared.msh")
    import re
    assert re.search(r"physical groups 1 and 2 share \d+ facet\(s\) \(on curve\(s\) "
                     rf"{side['right']}\)", msg) and "disjoint" in msg, msg
    for name in ("room", "corridor", "annulus"):         # the shipped meshes still read
        assert mesh.read_file(mesh.MESH_DIR / f"{name}.msh", MPI.COMM_SELF).facet_tags


def test_mixed_cells_are_refused(tmp_path):
    """Triangles and quadrilaterals: an MPI abort (invalid rank) instead of the message."""
    import gmsh
    gmsh.initialize(interruptible=False)
    gmsh.option.setNumber("General.Terminal", 0)
    occ = gmsh.model.occ
    a, b = occ.addRectangle(0, 0, 0, 1, 1), occ.addRectangle(1, 0, 0, 1, 1)
    occ.fragment([(2, a)], [(2, b)])
    occ.synchronize()
    gmsh.model.mesh.setRecombine(2, b)
    gmsh.model.addPhysicalGroup(2, [a, b], 1)
    gmsh.model.mesh.generate(2)
    gmsh.write(str(tmp_path / "mixed.msh"))
    gmsh.finalize()
    assert "cells of 2 types" in refusal(tmp_path / "mixed.msh")


@pytest.mark.parametrize("kind", ["tilted", "xz"])
def test_surfaces_off_the_plane_are_refused(tmp_path, kind):
    """A 2D mesh with a varying x2 was flattened onto the x0-x1 plane (a tilted square solved
    as its shadow, exit 0; one in the x0-x2 plane collapsed to zero area)."""
    import meshio
    m = meshio.read(rectangle_msh(tmp_path / "sq.msh"))
    p = m.points.copy()
    if kind == "tilted":
        p[:, 2] = 0.75 * p[:, 0]
    else:
        p[:, 1], p[:, 2] = 0.0, m.points[:, 1]
    meshio.write(tmp_path / f"{kind}.msh", meshio.Mesh(p, m.cells, cell_data=m.cell_data),
                 file_format="gmsh22", binary=False)
    assert "coordinate x2 varies" in refusal(tmp_path / f"{kind}.msh")


@pytest.mark.slow
def test_partitioned_and_group_free_files_read_like_the_plain_one(tmp_path):
    """A file saved partitioned gave a traceback, one without physical groups a cryptic
    error; both now read, and solve to the plain file's J (without groups: no exit tag)."""
    plain = rectangle_msh(tmp_path / "plain.msh")
    part = rectangle_msh(tmp_path / "part.msh", partitions=2)
    bare = rectangle_msh(tmp_path / "bare.msh", groups=())
    r0, s0 = run(tmp_path, "plain", plain)
    r1, s1 = run(tmp_path, "part", part)
    assert r0.returncode == 0 and r1.returncode == 0, (r0.stderr, r1.stderr)
    assert s1["ndofs"] == s0["ndofs"] and abs(s1["J"] - s0["J"]) < 1e-10 * abs(s0["J"])
    r2, s2 = run(tmp_path, "bare", bare, exit=False)
    r3, s3 = run(tmp_path, "walls", plain, exit=False)
    assert r2.returncode == 0 and r3.returncode == 0, (r2.stderr, r3.stderr)
    assert abs(s2["J"] - s3["J"]) < 1e-10 * abs(s3["J"])
    assert mesh.read_file(bare, MPI.COMM_SELF).facet_tags.values.size == 0


@pytest.mark.slow
@pytest.mark.parametrize("s", [1e-5, 1e-6])
def test_units_do_not_matter(tmp_path, s):
    """The same run on a domain s times smaller (lengths, σ, ρ0 scaled): J scales as s²
    and the exited mass is the same.  At 1e-5 ρ0 was refused with 'mass 0.952' (a test of ∫ρ
    against max ρ that depended on the units), at 1e-6 every per-step LU failed on a "zero
    pivot" (PETSc's absolute 100ε against mass-matrix entries of 1e-15)."""
    import meshio
    unit = rectangle_msh(tmp_path / "unit.msh")
    m = meshio.read(unit)
    meshio.write(tmp_path / "small.msh", meshio.Mesh(s * m.points, m.cells,
                                                     cell_data=m.cell_data),
                 file_format="gmsh22", binary=False)
    r1, s1 = run(tmp_path, "unit", unit)
    r2, s2 = run(tmp_path, "small", tmp_path / "small.msh", scale=s)
    assert r1.returncode == 0 and r2.returncode == 0, (r1.stderr, r2.stderr)
    assert s2["J"] == pytest.approx(s * s * s1["J"], rel=1e-8)
    assert s2["mass_exited"] == pytest.approx(s1["mass_exited"], rel=1e-8)


@pytest.mark.slow
def test_xdmf_written_by_dolfinx_reads(tmp_path):
    """An .xdmf mesh (DOLFINx's own, HDF5 heavy data) is read through meshio, which needs
    h5py: it was not in the environment, and every .xdmf that README offers was refused."""
    import dolfinx
    from dolfinx.io import XDMFFile
    m = dolfinx.mesh.create_rectangle(MPI.COMM_SELF, [[0.0, 0.0], [2.0, 1.0]], [8, 4])
    with XDMFFile(MPI.COMM_SELF, tmp_path / "rect.xdmf", "w") as f:
        f.write_mesh(m)
    md = mesh.read_file(tmp_path / "rect.xdmf", MPI.COMM_SELF)
    assert md.mesh.topology.index_map(2).size_global == 64
    assert md.mesh.geometry.x.shape[0] == 45
    r, s = run(tmp_path, "xdmf", tmp_path / "rect.xdmf", exit=False)
    assert r.returncode == 0 and s["ndofs"] == 45, r.stderr


@pytest.mark.parametrize("mcfg,key", [
    ({"kind": "disk", "radius": 1e-300, "h": 0.5}, "mesh.h"),        # gmsh made no cells
    ({"kind": "disk", "radius": 5e-324, "h": 0.5}, "mesh.h"),        # OpenCASCADE raised
    ({"kind": "file", "file": str(mesh.MESH_DIR / "room.msh"), "refine": 10 ** 9},
     "mesh.refine")])                                                # 2.0**1e9 overflowed
def test_sizes_that_cannot_be_meshed_are_config_errors(mcfg, key):
    """Mesh sizes gmsh cannot mesh were a traceback from gmsh or DOLFINx's gmsh reader (exit
    1), and a huge mesh.refine on a file mesh an OverflowError; now a ConfigError naming the
    key."""
    from fem_mfc import config
    from fem_mfc.errors import ConfigError
    m = config.from_dict({"run": {"formulation": "heat"}, "mesh": mcfg})["mesh"]
    with pytest.raises(ConfigError, match=key):
        mesh.build(m, MPI.COMM_SELF)


@pytest.mark.parametrize("columns", [1, 2])
def test_line_meshes_with_fewer_coordinates_read(tmp_path, columns):
    """A 1D mesh (a graded line) written by meshio with points of one or two columns: meshio's
    gmsh 2.2 writer, through which such files are read, indexed a third coordinate and the file
    was refused ('not a readable mesh file ... IndexError'); the points are padded now and the
    cells keep their (non-uniform) vertices."""
    import meshio
    x = 0.5 + np.sinh(4 * np.linspace(-1, 1, 11)) / (2 * np.sinh(4))
    pts = np.zeros((11, columns))
    pts[:, 0] = x
    meshio.write(tmp_path / "line.vtu", meshio.Mesh(pts, [("line", np.c_[np.arange(10),
                                                                          np.arange(1, 11)])]))
    md = mesh.read_file(tmp_path / "line.vtu", MPI.COMM_SELF)
    assert md.mesh.topology.dim == 1 and md.mesh.geometry.dim == 1
    assert md.mesh.topology.index_map(1).size_global == 10
    assert np.allclose(np.sort(md.mesh.geometry.x[:, 0]), x, rtol=0, atol=1e-12)
