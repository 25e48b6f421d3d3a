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
    try:
        from mpi4py import MPI
    except ImportError:       # the host, outside the environment (tests/test_reliability_paths.py)
        yield
        return
    if MPI.COMM_WORLD.size > 1:
        faulthandler.dump_traceback_later(MPI_TEST_DEADLINE, exit=True)
        yield
        faulthandler.cancel_dump_traceback_later()
    else:
        yield


DURATIONS = REPO / "tests" / "durations.json"
UNKNOWN_DURATION = 0.3           # s: a test without a measured duration (new, or < 0.05 s)


@pytest.hookimpl(trylast=True)          # after -m and -k have deselected theirs
def pytest_collection_modifyitems(config, items):
    """``FEM_MFC_SHARD=i/n``: keep shard i of n of the tests (``make test`` runs the serial suite
    as two shards side by side, one per core).  Every shard collects the same tests and deals
    them out alike: longest first, each to the shard with the least time so far, by the
    durations measured in ``tests/durations.json`` (setup + call + teardown of a whole
    ``make test``; regenerate it with ``--durations=0`` when the suite changes much).  Dealt by
    a hash of the node id instead, the two shards of ``make test`` differed by 33 s of 7 min."""
    import json
    import os
    shard = os.environ.get("FEM_MFC_SHARD")
    if not shard:
        return
    i, n = map(int, shard.split("/"))
    try:
        measured = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        measured = {}
    load, owner = [0.0] * n, {}
    for item in sorted(items, key=lambda t: (-measured.get(t.nodeid, UNKNOWN_DURATION),
                                             t.nodeid)):
        k = min(range(n), key=lambda j: (load[j], j))
        load[k] += measured.get(item.nodeid, UNKNOWN_DURATION)
        owner[item.nodeid] = k
    keep = [t for t in items if owner[t.nodeid] == i]
    drop = [t for t in items if owner[t.nodeid] != i]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
