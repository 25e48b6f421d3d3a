"""Item 7 of issue 12 (MPI hygiene): a mesh that leaves an MPI rank without a cell (a 1D config
with ``cells = 1`` on 2 ranks, ``cells = 2`` on 3 ranks) is refused on every rank with one line
naming ``mesh.cells`` (exit 2) -- it used to end in a traceback on one rank and a hang on the
other.

Serial tests launch ``bin/fem-env mpirun -n N`` with a deadline; the ``mpi`` test builds the
meshes in-process under ``mpirun -n 2 python3 -m pytest --with-mpi -m mpi``.
"""
from __future__ import annotations

import pytest

from helpers import REPO
from test_hygiene_mpi_errors import _mpi_deadline, assert_none_left, finish, launch, marker  # noqa: F401

# the LQ Gaussian in 1D on a single cell (solved serially; on 2 ranks it hung)
ONE_CELL = """\
[run]
formulation = "hjb-fp"
[mesh]
kind = "interval"
cells = {cells}
lower = [-5.0]
upper = [5.0]
[problem]
T = 1.0
sigma = 0.6
steps = 4
params = {{ a = 1.0 }}
[rho0]
kind = "gaussian"
mean = [0.5]
std = 3.0
[discretisation]
scheme = "crank-nicolson"
[solver]
method = "newton"
[exact]
solution = "lq-gaussian"
[output]
figures = false
progress = false
"""


@pytest.mark.parametrize("ranks,cells", [(2, 1), (3, 2)])
def test_rank_without_cells_is_one_line_on_every_rank(tmp_path, ranks, cells):
    cfg = tmp_path / "few.toml"
    cfg.write_text(ONE_CELL.format(cells=cells))
    mark = marker()
    p = launch([REPO / "bin" / "fem-env", "mpirun", "--map-by", ":OVERSUBSCRIBE", "-n", ranks,
                "python3", "-m", "fem_mfc", "run", cfg, "--out", tmp_path / mark, "--quiet"],
               mark)
    rc, _, err = finish(p, mark, timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"fem-mfc: error: {cfg}: config key 'mesh.cells'")
    assert f"each of the {ranks} MPI ranks" in lines[0] and lines[0].endswith(f"got {cells}")
    assert_none_left(mark)
    assert not (tmp_path / mark).exists()


@pytest.mark.mpi
def test_build_refuses_a_mesh_with_an_empty_rank_on_every_rank():
    from mpi4py import MPI

    from fem_mfc import config, mesh
    from fem_mfc.errors import ConfigError
    comm = MPI.COMM_WORLD
    if comm.size < 2:
        pytest.skip("needs 2 ranks")

    def mcfg(**kw):
        m = {"kind": "interval", "lower": [-1.0], "upper": [1.0]}
        m.update(kw)
        return config.from_dict({"mesh": m})["mesh"]

    raised = False
    try:
        mesh.build(mcfg(cells=comm.size - 1), comm)
    except ConfigError as e:
        raised = e.key == "mesh.cells" and "\n" not in str(e)
    assert comm.allgather(raised) == [True] * comm.size
    # one cell per rank is enough; a coarsened level is checked too
    md = mesh.build(mcfg(cells=comm.size), comm)
    assert md.mesh.topology.index_map(1).size_local >= 1
    with pytest.raises(ConfigError, match="refinement level -1"):
        mesh.build(mcfg(cells=comm.size), comm, refine=-1)
