"""Item 7 of issue 14 (disk full): a full disk while a run writes -- its ParaView series
(VTX/ADIOS2), figures, run.log, config.toml, summary.json -- is one line naming the output folder
and "no space left on device", exit 2; the earlier result in the folder stays as it was and no
staging folder is left.  Before: exit 134 with ADIOS2's exception and Open MPI's stack dump (the
failed ADIOS2 engine threw again from its destructor), or a Python traceback, and logging's
"--- Logging error ---" tracebacks for run.log.

* With a real full disk: a small tmpfs mounted (mount(2) through ctypes; needs CAP_SYS_ADMIN,
  which the root user has inside bin/fem-env's sandbox) over a folder of the test, filled up to
  a given number of free bytes; skipped where mounting is not allowed.
* Everywhere: the same code paths with the writers made to fail as ADIOS2 and the OS do
  (monkeypatched in a subprocess), run.log on /dev/full, and the unit pieces.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import sys
import textwrap
from pathlib import Path

import pytest

from test_hygiene_mpi_errors import _mpi_deadline, finish, launch  # noqa: F401

LQ_1D = """\
[run]
formulation = "hjb-fp"
[mesh]
kind = "interval"
cells = 16
lower = [-5.0]
upper = [5.0]
[problem]
T = 1.0
sigma = 0.6
steps = 8
params = {{ a = 1.0 }}
[rho0]
kind = "gaussian"
mean = [0.5]
std = 0.5
[solver]
method = "newton"
[exact]
solution = "lq-gaussian"
[output]
figures = {figures}
vtx = {vtx}
progress = false
"""

EARLIER = {"formulation": "hjb-fp", "tag": "the earlier run"}


def _earlier(out: Path) -> None:
    out.mkdir(parents=True)
    (out / "summary.json").write_text(json.dumps(EARLIER))
    (out / "run.log").write_text("earlier\n")


def _assert_disk_full_line(rc, err, out: Path):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (rc, err[-3000:])
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"fem-mfc: error: {out}: no space left on device"), lines[0]
    assert "Traceback" not in err and "Logging error" not in err
    # the earlier result is untouched, nothing of the failed run is left
    assert json.loads((out / "summary.json").read_text()) == EARLIER
    assert sorted(os.listdir(out)) == ["run.log", "summary.json"]
    left = [e for e in os.listdir(out.parent) if e.startswith(f".staging-{out.name}")]
    assert not left


# -- a real full disk ----------------------------------------------------------------------------
def _mount_tmpfs(path: Path, size: int) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.mount(b"tmpfs", os.fsencode(path), b"tmpfs", 0,
                      f"size={size},mode=0755".encode()) == 0


def _umount(path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(os.fsencode(path), 2)          # MNT_DETACH


def _fill(disk: Path, free: int) -> None:
    """Fill the file system of ``disk`` so that ``free`` bytes (whole pages) stay free."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    os.truncate(filler, max(0, filler.stat().st_size - free))
    st = os.statvfs(disk)
    assert abs(st.f_bavail * st.f_frsize - free) <= 8192, st


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if not sys.platform.startswith("linux") or not _mount_tmpfs(disk, 2 * 1024 * 1024):
        pytest.skip("cannot mount a tmpfs here (needs CAP_SYS_ADMIN)")
    try:
        yield disk
    finally:
        _umount(disk)


@pytest.mark.slow
@pytest.mark.parametrize("figures,vtx,free,says", [
    pytest.param("false", "true", 24 * 1024, r"while writing \w+\.bp ", id="series"),
    pytest.param("true", "false", 48 * 1024, r"device \(the run", id="figures"),
    pytest.param("false", "false", 8 * 1024,
                 r"while writing (config\.toml|summary\.json|run\.log) ", id="small-files"),
    pytest.param("false", "false", 0, r"while writing its lock file \.out\.lock ", id="lock"),
    pytest.param("true", "true", 64 * 1024, r"no space left on device", id="everything"),
])
def test_full_tmpfs_is_one_line_and_keeps_the_earlier_result(tmp_path, small_disk, figures,
                                                             vtx, free, says):
    cfg = tmp_path / "lq.toml"
    cfg.write_text(LQ_1D.format(figures=figures, vtx=vtx))
    out = small_disk / "out"
    _earlier(out)
    _fill(small_disk, free)
    p = launch([sys.executable, "-m", "fem_mfc", "run", cfg, "--out", out, "--quiet"], str(out))
    rc, _, err = finish(p, str(out), timeout=300)
    _assert_disk_full_line(rc, err, out)
    assert re.search(says, err), err


# -- a checkpoint on a full disk -----------------------------------------------------------------
# free space that passes the check before a checkpoint is written: ADIOS2 itself meets the full
# disk (the disk filled meanwhile), as before the check existed
NO_SPACE_CHECK = """
    from fem_mfc import checkpoint
    checkpoint._free_bytes = lambda path: None
"""


@pytest.mark.slow
@pytest.mark.parametrize("ranks,prelude", [
    pytest.param(1, "", id="checked"),
    pytest.param(1, NO_SPACE_CHECK, id="adios2-fails"),
    pytest.param(2, NO_SPACE_CHECK, id="adios2-fails-2-ranks"),
])
def test_checkpoint_on_a_full_tmpfs_is_one_line_on_every_rank(tmp_path, small_disk, ranks,
                                                              prelude):
    """``checkpoint_every = 1`` with 4 kB left: the first checkpoint cannot be written.  One
    line naming the checkpoint folder, exit 2, no staging or ``.tmp-PID`` folder left, the
    earlier result kept — also when the free-space check before the write is passed and
    ADIOS2 meets the full disk itself (it aborted the process from the failed engine's
    destructor, exit 134; on 2 ranks the collective write left rank 1 waiting for ever)."""
    cfg = tmp_path / "lq.toml"
    cfg.write_text(LQ_1D.format(figures="false", vtx="false") + "checkpoint_every = 1\n")
    out = small_disk / "out"
    _earlier(out)
    script = tmp_path / "wrapped.py"
    script.write_text(textwrap.dedent(prelude) + textwrap.dedent("""
        import sys
        from fem_mfc import cli
        sys.exit(cli.main(sys.argv[1:]))
    """))
    _fill(small_disk, 4096)
    cmd = [sys.executable, script, "run", cfg, "--out", out, "--quiet"]
    if ranks > 1:
        cmd = ["mpirun", "-n", str(ranks)] + cmd
    p = launch(cmd, str(out))
    rc, _, err = finish(p, str(out), timeout=300)
    ours = [ln for ln in err.splitlines() if ln.startswith("fem-mfc")]   # (a plain mpirun
    assert rc == 2, (rc, err[-3000:])                                  # adds its banner)
    assert ours == [f"fem-mfc: error: {out}.checkpoint: no space left on device while "
                    "writing a checkpoint (the run was discarded; an earlier result in this "
                    "folder is unchanged)"], err[-3000:]
    assert "Traceback" not in err and "terminate called" not in err
    assert json.loads((out / "summary.json").read_text()) == EARLIER
    assert sorted(os.listdir(small_disk)) == ["filler", "out"]     # no .tmp-PID, no staging


# -- the same paths without a mount: writers that fail as a full disk makes them fail ------------
FAIL_VTX = """
    import dolfinx.io
    class FullVTX:
        def __init__(self, comm, path, functions, engine=None):
            self.path, self.n = path, 0
        def write(self, t):
            self.n += 1
            if self.n > 2:
                raise RuntimeError("[ADIOS2 EXCEPTION] <Toolkit> <transport::file::FilePOSIX> "
                                   "<Write> : couldn't write to file " + self.path
                                   + "/data.0 : errno = 28: No space left on device")
        def close(self):
            raise RuntimeError("[ADIOS2 EXCEPTION] <Close> : couldn't close file : errno = 9: "
                               "Bad file descriptor")
        def __del__(self):
            # ADIOS2's engine calls Close from its destructor, which throws: std::terminate
            import os
            os.write(2, b"terminate called (destructor of a failed ADIOS2 engine)\\n")
            os._exit(134)
    dolfinx.io.VTXWriter = FullVTX
"""

FAIL_FIGURE = """
    import errno, matplotlib.figure
    def savefig(self, fname, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    matplotlib.figure.Figure.savefig = savefig
"""

FAIL_SUMMARY = """
    import errno, os
    from fem_mfc import io
    real = io.write_text_atomic
    def write_text_atomic(path, text):
        if os.path.basename(str(path)) == "summary.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)
    io.write_text_atomic = write_text_atomic
"""


@pytest.mark.slow
@pytest.mark.parametrize("prelude,figures,vtx,name", [
    pytest.param(FAIL_VTX, "false", "true", "while writing", id="series"),
    pytest.param(FAIL_FIGURE, "true", "false", "no space left on device", id="figure"),
    pytest.param(FAIL_SUMMARY, "false", "false", "while writing summary.json", id="summary"),
])
def test_writer_failing_for_want_of_space_is_one_line(tmp_path, prelude, figures, vtx, name):
    cfg = tmp_path / "lq.toml"
    cfg.write_text(LQ_1D.format(figures=figures, vtx=vtx))
    out = tmp_path / "out"
    _earlier(out)
    script = tmp_path / "wrapped.py"
    script.write_text(textwrap.dedent(prelude) + textwrap.dedent("""
        import sys
        from fem_mfc import cli
        sys.exit(cli.main(sys.argv[1:]))
    """))
    p = launch([sys.executable, script, "run", cfg, "--out", out, "--quiet"], str(out))
    rc, _, err = finish(p, str(out), timeout=300)
    _assert_disk_full_line(rc, err, out)
    assert name in err


def test_run_log_on_a_full_device_is_remembered_not_printed(capfd):
    from fem_mfc import io
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    log = io.make_logger("full", Path("/dev/full"), quiet=True)
    log.info("a line that cannot be written")
    log.info("and another")
    h = next(h for h in log.handlers if isinstance(h, io._RunLogHandler))
    assert io.is_disk_full(h.failure)
    assert "Logging error" not in capfd.readouterr().err
    h.close()


def test_is_disk_full():
    from fem_mfc import io
    from fem_mfc.errors import DiskFullError
    assert io.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert io.is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert io.is_disk_full(RuntimeError("couldn't write to file x : errno = 28: No space left "
                                        "on device"))
    assert io.is_disk_full(DiskFullError("/x"))
    try:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError:
            raise ValueError("while saving")  # noqa: B904 (tests the implicit __context__ chain)
    except ValueError as e:
        assert io.is_disk_full(e)
    assert not io.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not io.is_disk_full(RuntimeError("errno = 9: Bad file descriptor"))
    msg = str(DiskFullError("/data/out", "u.bp"))
    assert msg.startswith("/data/out: no space left on device while writing u.bp")
    assert "\n" not in msg


@pytest.mark.mpi
def test_full_disk_on_every_rank_is_a_disk_full_error(tmp_path_factory, monkeypatch):
    """In process on 2 ranks: a ParaView series that cannot be written (as ADIOS2 fails) is a
    DiskFullError naming the output folder on every rank; the earlier result stays."""
    from mpi4py import MPI

    import dolfinx.io

    from fem_mfc import config
    from fem_mfc.errors import DiskFullError
    from fem_mfc.pipeline import run_config
    comm = MPI.COMM_WORLD

    class FullVTX:
        def __init__(self, comm, path, functions, engine=None):
            self.path = path

        def write(self, t):
            raise RuntimeError(f"couldn't write to file {self.path}/data.0 : errno = 28: "
                               "No space left on device")

        def close(self):
            raise RuntimeError("couldn't close file : errno = 9: Bad file descriptor")

    monkeypatch.setattr(dolfinx.io, "VTXWriter", FullVTX)
    d = tmp_path_factory.mktemp("full") if comm.rank == 0 else None
    out = Path(comm.bcast(str(d) if d else None, root=0)) / "out"
    if comm.rank == 0:
        _earlier(out)
    comm.barrier()
    import tomllib
    cfg = config.from_dict(tomllib.loads(LQ_1D.format(figures="false", vtx="true")))
    err = None
    try:
        run_config(cfg, out, quiet=True)
    except DiskFullError as e:
        err = str(e)
    errs = comm.allgather(err)
    assert all(e is not None and e.startswith(f"{out}: no space left on device while writing")
               for e in errs), errs
    if comm.rank == 0:
        assert json.loads((out / "summary.json").read_text()) == EARLIER
        assert not [e for e in os.listdir(out.parent) if e.startswith(".staging-")]
