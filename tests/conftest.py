"""pytest configuration: fixtures and the MPI deadline.  The helpers (observed orders, CLI and
demo runs, summary comparisons) live in ``tests/helpers.py``; tests import them from there."""
from __future__ import annotations

import pytest

from helpers import REPO


@pytest.fixture
def repo():
    return REPO


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


def pytest_collection_modifyitems(config, items):
    """``FEM_MFC_SHARD=i/n``: keep the tests whose node id hashes to shard i of n (``make
    test`` runs the serial suite as two shards side by side, one per core)."""
    shard = __import__("os").environ.get("FEM_MFC_SHARD")
    if not shard:
        return
    import zlib
    i, n = map(int, shard.split("/"))
    keep, drop = [], []
    for item in items:
        (keep if zlib.crc32(item.nodeid.encode()) % n == i else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
