"""Under ``mpirun -n 2 python3 -m pytest --with-mpi -m mpi``: a run on all ranks gives the same
numbers as the same run on one rank (COMM_SELF), and outputs are written once, atomically."""
from __future__ import annotations

from pathlib import Path

from mpi4py import MPI

import pytest

from fem_mfc import config
from fem_mfc.pipeline import run_config

CFG = {
    "run": {"formulation": "heat"},
    "mesh": {"kind": "disk", "radius": 3.0, "h": 0.4},
    "problem": {"T": 0.2, "sigma": 0.6, "steps": 5},
    "rho0": {"mean": [0.5, 0.0], "std": 0.5},
    "exact": {"solution": "heat-gaussian"},
    "output": {"figures": True, "progress": False},
}


@pytest.mark.mpi
def test_heat_world_equals_self(tmp_path_factory):
    comm = MPI.COMM_WORLD
    cfg = config.from_dict(CFG)
    base = comm.bcast(str(tmp_path_factory.mktemp("mpi")) if comm.rank == 0 else None, root=0)
    world = run_config(cfg, Path(base) / "world", quiet=True, comm=comm)
    serial = None
    if comm.rank == 0:
        serial = run_config(cfg, Path(base) / "self", quiet=True, comm=MPI.COMM_SELF)
    serial = comm.bcast(serial, root=0)
    assert world["ranks"] == comm.size
    for k in ("mass", "mass_error", "min_rho", "err_rho_L2", "ndofs"):
        assert world[k] == pytest.approx(serial[k], rel=1e-9, abs=1e-13), k
    comm.barrier()
    out = Path(base) / "world"
    assert (out / "summary.json").is_file() and (out / "rho.bp").is_dir()
    assert (out / "rho_snapshots.png").is_file()
    assert not list(out.glob(".staging-*"))
