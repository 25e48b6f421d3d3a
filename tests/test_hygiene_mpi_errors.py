"""Item 7 of issue 12 (MPI hygiene), the fem_mfc side, under ``mpirun -n 2`` launched from a
serial test (each with a deadline, so that a hang fails the test instead of hanging it):

* an exception on one rank only (a bug) prints its traceback and aborts every rank (MPI_Abort),
  instead of leaving the other rank waiting in a collective and the failed one in
  MPI_Finalize;
* a user error on one rank only is printed once and ends the job with status 2;
* killing mpirun itself with SIGKILL (as bubblewrap's --die-with-parent did when the launcher
  got a signal) leaves no rank behind: every fem-mfc rank asked the kernel to kill it when its
  launcher dies (PR_SET_PDEATHSIG) -- here rank 0 sleeps in Python while rank 1 waits for it in
  an MPI broadcast.

Helpers here (``procs_with``, ``launch``, ...) are also used by the other test_hygiene_* files.
This module imports neither mpi4py nor fem_mfc, so that those can run it on the host too.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from helpers import REPO
from helpers import env as _env

DEADLINE = 120          # seconds a launched job may take before the test fails as a hang
MPIRUN = shutil.which("mpirun") or "mpirun"

HEAT_1D = """\
[run]
formulation = "heat"
[mesh]
kind = "interval"
cells = {cells}
lower = [-1.0]
upper = [1.0]
[problem]
T = 0.1
steps = 2
[rho0]
std = 0.4
[output]
figures = false
vtx = false
progress = false
"""


@pytest.fixture(autouse=True)
def _mpi_deadline():
    """conftest's fixture imports mpi4py; these tests only launch processes (and set their own
    deadlines), and some run on the host, where mpi4py may be missing."""
    yield


def marker() -> str:
    """A unique word to put on a job's command line (its output folder name)."""
    return f"hyg{uuid.uuid4().hex[:12]}"


def procs_with(mark: str) -> list[int]:
    """Live processes (not zombies) whose command line contains ``mark``."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{d}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if mark.encode() in cmd and state != "Z":
            found.append(int(d))
    return found


def wait_gone(mark: str, timeout: float = 10.0) -> list[int]:
    """Wait until no process carries ``mark``; return those still alive after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        left = procs_with(mark)
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.1)


def kill_all(mark: str) -> None:
    for pid in procs_with(mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def launch(cmd, mark: str, env=None, **kw) -> subprocess.Popen:
    """Start ``cmd`` (which carries ``mark``) with stdout/stderr captured."""
    assert any(mark in str(c) for c in cmd)
    return subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env or _env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(p: subprocess.Popen, mark: str, timeout: float = DEADLINE):
    """Wait for ``p``; on a hang kill everything carrying ``mark`` and fail.  Returns
    (returncode, stdout, stderr)."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_all(mark)
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"hang: still running after {timeout} s\n{err[-3000:]}")
    return p.returncode, out, err


def assert_none_left(mark: str, timeout: float = 10.0) -> None:
    left = wait_gone(mark, timeout)
    if left:
        cmds = []
        for pid in left:
            try:
                cmds.append(open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ")
                            .decode(errors="replace")[:160])
            except OSError:
                pass
        kill_all(mark)
        pytest.fail(f"{len(left)} process(es) still alive: {cmds}")


def wait_for_file(path: Path, p: subprocess.Popen, mark: str, timeout: float = DEADLINE):
    """Wait until ``path`` exists (a FEM_MFC_TEST_PAUSE announcement) while ``p`` runs."""
    end = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size):
        if p.poll() is not None:
            out, err = p.communicate()
            pytest.fail(f"the job ended ({p.returncode}) before its pause point:\n{err[-3000:]}")
        if time.monotonic() > end:
            kill_all(mark)
            pytest.fail("the job never reached its pause point")
        time.sleep(0.05)


def paused_env(pause_file: Path, point: str, env=None) -> dict:
    env = dict(env or _env())
    env.update(FEM_MFC_TEST_PAUSE=point, FEM_MFC_TEST_PAUSE_FILE=str(pause_file),
               FEM_MFC_TEST_PAUSE_S="300")
    return env


# one rank fails on its own; rank 0 then waits for rank 1 in a barrier that never comes
ONE_RANK = textwrap.dedent("""
    import sys
    from fem_mfc import cli, config
    from fem_mfc.errors import UserError
    kind, cfg_path, out = sys.argv[1:4]
    load = config.load
    def failing_load(path):
        from mpi4py import MPI
        cfg = load(path)
        if MPI.COMM_WORLD.rank == 1:
            if kind == "bug":
                raise RuntimeError("a bug on rank 1 only")
            raise UserError("a user error on rank 1 only")
        MPI.COMM_WORLD.barrier()
        return cfg
    config.load = failing_load
    sys.exit(cli.main(["run", cfg_path, "--out", out, "--quiet"]))
""")


@pytest.fixture
def heat_cfg(tmp_path):
    f = tmp_path / "heat.toml"
    f.write_text(HEAT_1D.format(cells=8))
    return f


@pytest.mark.parametrize("kind", ["bug", "user"])
def test_error_on_one_rank_ends_every_rank(tmp_path, heat_cfg, kind):
    script = tmp_path / "one_rank.py"
    script.write_text(ONE_RANK)
    mark = marker()
    env = _env()
    env["FEM_MFC_ERROR_WAIT_S"] = "2"
    p = launch([MPIRUN, "-n", 2, sys.executable, script, kind, heat_cfg, tmp_path / mark],
               mark, env=env)
    rc, out, err = finish(p, mark, timeout=90)
    if kind == "bug":
        assert rc != 0 and "Traceback" in err and "a bug on rank 1 only" in err, err[-3000:]
    else:
        assert rc == 2, err[-3000:]
        assert err.count("fem-mfc: error: a user error on rank 1 only") == 1, err[-3000:]
        assert "Traceback" not in err
    assert_none_left(mark)
    assert not (tmp_path / mark).exists()


def test_sigkill_to_mpirun_leaves_no_rank(tmp_path, heat_cfg):
    mark = marker()
    pause = tmp_path / "paused"
    # rank 0 sleeps while holding the folder lock; rank 1 waits for it in an MPI broadcast
    p = launch([MPIRUN, "-n", 2, sys.executable, "-m", "fem_mfc", "run", heat_cfg, "--out",
                tmp_path / mark, "--quiet"], mark, env=paused_env(pause, "create:locked"))
    try:
        wait_for_file(pause, p, mark)
        time.sleep(0.3)
        assert len(procs_with(mark)) >= 3          # mpirun and its two ranks
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=30)
        assert_none_left(mark, timeout=10)
    finally:
        kill_all(mark)
