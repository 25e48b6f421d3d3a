"""Under ``mpirun -n 2 python3 -m pytest --with-mpi -m mpi``: the checks of issue 14 are
collective and agree on every rank (mesh scales, formula checks, the run folder swap)."""
from __future__ import annotations

import json
from pathlib import Path

from mpi4py import MPI

import dolfinx
import pytest

from fem_mfc import checks, config
from fem_mfc.density import mesh_scales
from fem_mfc.errors import ConfigError


@pytest.mark.mpi
def test_checks_are_collective(tmp_path_factory):
    comm = MPI.COMM_WORLD
    m = dolfinx.mesh.create_rectangle(comm, [[-3.0, -2.0], [3.0, 2.0]], [12, 8])
    h, diam = mesh_scales(m)
    assert diam == pytest.approx((6.0 ** 2 + 4.0 ** 2) ** 0.5)
    assert h == pytest.approx((0.5 ** 2 + 0.5 ** 2) ** 0.5)
    raw = {"run": {"formulation": "hjb-fp"},
           "mesh": {"kind": "rectangle", "lower": [-3.0, -2.0], "upper": [3.0, 2.0]},
           "rho0": {"mean": [0.0, 0.0]}, "problem": {"V": "1/(x0 - 3)"}}
    with pytest.raises(ConfigError, match="problem.V"):      # infinite only on one boundary
        checks.check_formulas(config.from_dict(raw), m)
    raw["problem"]["V"] = "x0**2"
    checks.check_formulas(config.from_dict(raw), m)


@pytest.mark.mpi
def test_run_folder_swap_on_two_ranks(tmp_path_factory):
    from fem_mfc.io import RunContext
    comm = MPI.COMM_WORLD
    base = comm.bcast(str(tmp_path_factory.mktemp("mpi")) if comm.rank == 0 else None, root=0)
    out = Path(base) / "run"
    for tag in ("A", "B"):
        ctx = RunContext.create(out, comm, quiet=True)
        ctx.path(f"{tag}_rank{comm.rank}.txt").write_text(tag)   # every rank writes
        ctx.commit({"tag": tag} if comm.rank == 0 else None)
    comm.barrier()
    names = sorted(p.name for p in out.iterdir())
    assert names == ["B_rank0.txt", "B_rank1.txt", "run.log", "summary.json"]
    assert json.loads((out / "summary.json").read_text())["tag"] == "B"
    assert (out.parent / "run.previous" / "A_rank1.txt").exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith((".staging-", ".run.lock"))]


@pytest.mark.mpi
def test_a_number_option_without_its_value_is_refused_on_every_rank(tmp_path_factory):
    """-mfc_snes_max_it without a value: every rank refuses it alike (one line, exit 2 from
    the CLI), nothing written."""
    from fem_mfc.errors import UserError
    from fem_mfc.pipeline import run_config
    comm = MPI.COMM_WORLD
    base = comm.bcast(str(tmp_path_factory.mktemp("bare")) if comm.rank == 0 else None, root=0)
    raw = {"run": {"formulation": "hjb-fp"}, "mesh": {"kind": "rectangle", "cells": 6},
           "problem": {"steps": 3, "G": "rho**2/2"}, "rho0": {"mean": [0.0, 0.0]},
           "solver": {"method": "newton"},
           "output": {"figures": False, "vtx": False, "progress": False}}
    with pytest.raises(UserError, match="-mfc_snes_max_it: expected a value"):
        run_config(config.from_dict(raw), Path(base) / "o", quiet=True,
                   petsc_options={"mfc_snes_converged_reason": "", "mfc_snes_max_it": ""})
    comm.barrier()
    assert not (Path(base) / "o").exists()
