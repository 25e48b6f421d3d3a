"""Shared test helpers: run the CLI or a script serially or under ``mpirun -n 2``.

Tests run inside the fem_mfc environment (``bin/fem-env``), so ``sys.executable`` has DOLFINx.
MPI tests come in two kinds: ``@pytest.mark.mpi`` tests run *inside* ``mpirun -n 2 python3 -m
pytest --with-mpi -m mpi``, and serial tests that launch ``mpirun -n 2`` as a subprocess (via
:func:`run_cli` with ``ranks=2``) and compare the numbers with a serial run.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("OMPI_MCA_btl_tcp_if_include", "lo")
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # a child mpirun must not inherit the parent's MPI singleton state
    for k in list(env):
        if k.startswith(("OMPI_COMM_WORLD", "PMIX_", "OMPI_MCA_ess", "OMPI_MCA_orte")):
            env.pop(k)
    return env


def run_python(args: list[str], ranks: int = 1, cwd=None, timeout=600, check=False):
    """Run ``python3 ARGS`` (optionally under ``mpirun -n ranks``); return CompletedProcess."""
    cmd = [sys.executable, *map(str, args)]
    if ranks > 1:
        cmd = [shutil.which("mpirun") or "mpirun", "-n", str(ranks), *cmd]
    p = subprocess.run(cmd, cwd=cwd or REPO, env=_env(), capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def run_cli(args: list[str], ranks: int = 1, **kw):
    """Run ``python3 -m fem_mfc ARGS``."""
    return run_python(["-m", "fem_mfc", *args], ranks=ranks, **kw)


def read_summary(folder) -> dict:
    return json.loads((Path(folder) / "summary.json").read_text())


def assert_same_numbers(a: dict, b: dict, keys, rtol=1e-8, atol=1e-12):
    """Serial and parallel summaries agree on ``keys`` to solver tolerance."""
    for k in keys:
        va, vb = a[k], b[k]
        if isinstance(va, (int, str)) and not isinstance(va, bool) and isinstance(vb, type(va)):
            assert va == vb, f"{k}: {va} != {vb}"
        else:
            assert abs(va - vb) <= atol + rtol * abs(va), f"{k}: {va} != {vb}"


@pytest.fixture
def repo():
    return REPO


def run_demo(name: str, out, timeout=600):
    """Run ``demos/<name> --quick --out OUT`` (from OUT's parent); assert it succeeded."""
    out = Path(out)
    p = run_python([REPO / "demos" / name, "--quick", "--out", out], cwd=out.parent,
                   timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


# Under mpirun a test that fails on one rank only (or hangs in a collective) must not hang the
# whole run: every test gets a deadline after which the process dumps its stack and exits
# (mpirun then ends the other ranks).
MPI_TEST_DEADLINE = 600


@pytest.fixture(autouse=True)
def _mpi_deadline():
    import faulthandler
    from mpi4py import MPI
    if MPI.COMM_WORLD.size > 1:
        faulthandler.dump_traceback_later(MPI_TEST_DEADLINE, exit=True)
        yield
        faulthandler.cancel_dump_traceback_later()
    else:
        yield
