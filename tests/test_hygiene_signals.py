"""Item 7 of issue 12 (MPI hygiene) and item 10 of issue 14 (messages): ``bin/fem-env mpirun -n 2
python3 -m fem_mfc run ...`` -- the documented way to run on 2 ranks.

* SIGTERM, SIGINT or SIGHUP to the launcher (or SIGTERM/SIGINT to its process group, as
  ``timeout`` and Ctrl-C do) ends every rank: the launcher returns only when no process of the
  job is left, with status 128 + the signal, the run's staging folder is gone and rank 0's one
  line "fem-mfc: interrupted (SIG...); OUT left as it was" is all of stderr (after a group
  signal through the guard's note file: mpirun drops it).  Before, the
  sandbox (bubblewrap) died of the signal and SIGKILLed mpirun, whose ranks ran on forever,
  re-parented to PID 1.
* SIGKILL to the launcher leaves no rank behind either (mpirun dies with the launcher and
  ends its ranks; the ranks die with mpirun).
* A bad config is exactly one line on stderr and exit 2 -- no Open MPI banner ("prterun
  detected that one or more processes exited with non-zero status...") after it; a program
  that is not fem-mfc keeps its banner.

Every job carries a unique marker (its output folder's name) and has a deadline; a process
left with the marker fails the test (and is killed).  The jobs pause at a named point of
RunContext.create (FEM_MFC_TEST_PAUSE) so that the signal arrives mid-run.

Two launch paths: ``env`` -- inside the environment, where ``bin/fem-env`` runs the command
directly (under its guard for MPI launchers); ``sandbox`` -- from the host through bubblewrap
(``python3 -m pytest tests/test_hygiene_signals.py`` on the host; skipped inside the
environment, like tests/test_reliability_paths.py).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import textwrap
import time

import pytest

from helpers import REPO
from helpers import env as _env
from test_hygiene_mpi_errors import (  # noqa: F401
    HEAT_1D,
    _mpi_deadline,
    assert_none_left,
    finish,
    kill_all,
    launch,
    marker,
    paused_env,
    procs_with,
    wait_for_file,
)

FEM_ENV = REPO / "bin" / "fem-env"
IN_ENV = os.environ.get("FEM_MFC_IN_ENV") == "1"
PATHS = [
    pytest.param("env", marks=pytest.mark.skipif(
        not IN_ENV, reason="bin/fem-env inside the environment (skipped on the host)")),
    pytest.param("sandbox", marks=pytest.mark.skipif(
        IN_ENV or shutil.which("bwrap") is None,
        reason="drives bin/fem-env's bubblewrap sandbox from the host")),
]


def _default_signals():
    """The job starts with default dispositions even if this test runs with SIGINT ignored
    (a test suite started in the background): fem-env keeps ignored signals ignored."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(s, signal.SIG_DFL)


def _fem_env_env(path, pause_file=None, point=None):
    env = _env()
    if path == "sandbox":
        env.pop("FEM_MFC_IN_ENV", None)
        env["FEM_MFC_FORCE_ROOTFS"] = "1"
    if pause_file is not None:
        env = paused_env(pause_file, point, env)
    return env


def _start(path, cfg, out, mark, pause_file, point="create:staged", **kw):
    cmd = [FEM_ENV, "mpirun", "-n", 2, "python3", "-m", "fem_mfc", "run", cfg, "--out", out,
           "--quiet"]
    p = launch(cmd, mark, env=_fem_env_env(path, pause_file, point),
               preexec_fn=_default_signals, **kw)
    wait_for_file(pause_file, p, mark)
    end = time.monotonic() + 30            # both ranks are at the pause point
    while len([ln for ln in pause_file.read_text().splitlines() if ln]) < 2:
        if time.monotonic() > end:
            kill_all(mark)
            pytest.fail("the ranks never both reached the pause point")
        time.sleep(0.05)
    return p


@pytest.fixture
def heat_cfg(tmp_path):
    f = tmp_path / "heat.toml"
    f.write_text(HEAT_1D.format(cells=8))
    return f


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGHUP", "group SIGTERM",
                                 "group SIGINT"])
def test_signal_to_launcher_ends_every_rank(tmp_path, heat_cfg, path, sig):
    mark = marker()
    out = tmp_path / mark
    group = sig.startswith("group")
    signum = getattr(signal, sig.split()[-1])
    p = _start(path, heat_cfg, out, mark, tmp_path / "paused", start_new_session=group)
    try:
        assert len(procs_with(mark)) >= 4      # launcher, mpirun, 2 ranks (and the sandbox)
        if group:
            os.killpg(p.pid, signum)           # what `timeout` and a terminal's Ctrl-C do
        else:
            p.send_signal(signum)
        rc, _, err = finish(p, mark, timeout=60)
        # the launcher is done: so is every process of the job
        assert_none_left(mark, timeout=3)
        assert rc == 128 + signum, (rc, err[-3000:])
        assert "Traceback" not in err
        # the ranks' one line: mpirun drops it when it gets the signal itself -- the guard
        # signals the ranks first, and prints what rank 0 also wrote to its note file (a
        # signal to the group reaches mpirun at once: the line used to be lost then)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        name = sig.split()[-1]
        assert lines == [f"fem-mfc: interrupted ({name}); {out} left as it was"], lines
        assert not out.exists()
        assert not [e for e in os.listdir(tmp_path) if e.startswith(f".staging-{mark}")]
    finally:
        kill_all(mark)


def _rank_pids(mark):
    """{rank: pid} of the job's Python ranks (Open MPI puts the rank in their environment)."""
    ranks = {}
    for pid in procs_with(mark):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"fem_mfc" in cmd and b"OMPI_COMM_WORLD_RANK" in env and b"mpirun" not in cmd:
            ranks[int(env[b"OMPI_COMM_WORLD_RANK"])] = pid
    return ranks


@pytest.mark.skipif(not IN_ENV, reason="reads the ranks' environment inside the environment")
@pytest.mark.parametrize("point,sig", [("create:staged", "SIGHUP"), ("run:loaded", "SIGTERM"),
                                       ("run:loaded", "SIGHUP")])
def test_rank_zero_line_survives_another_rank_ending_first(tmp_path, heat_cfg, point, sig):
    """The signal reaches rank 1 before rank 0 (the order /proc lists them in, or the
    scheduler's): the launcher ends the job as soon as one rank exits, so rank 1 must not exit
    before rank 0 has written its line.  CI once lost it this way (SIGHUP: only Open MPI's
    banner "... Exit code: 129" came out).  The same before the run's handlers (run:loaded:
    the config read, every rank in Python): the CLI's early handler ended rank 1 at once and
    "fem-mfc: interrupted (SIGTERM); nothing was written" was lost (3 of 3 here)."""
    mark = marker()
    out = tmp_path / mark
    signum = getattr(signal, sig)
    said = f"{out} left as it was" if point == "create:staged" else "nothing was written"
    p = _start("env", heat_cfg, out, mark, tmp_path / "paused", point=point)
    try:
        ranks = _rank_pids(mark)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signum)
        time.sleep(0.3)
        try:
            os.kill(ranks[0], signum)
        except ProcessLookupError:      # (before: the launcher had already ended it)
            pass
        rc, _, err = finish(p, mark, timeout=60)
        assert_none_left(mark, timeout=3)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert lines == [f"fem-mfc: interrupted ({sig}); {said}"], lines
        assert rc == 128 + signum, (rc, err[-3000:])
        assert not out.exists()
        assert not [e for e in os.listdir(tmp_path) if mark in e], os.listdir(tmp_path)
    finally:
        kill_all(mark)


@pytest.mark.parametrize("path", PATHS)
def test_sigkill_to_launcher_leaves_no_rank(tmp_path, heat_cfg, path):
    mark = marker()
    # rank 0 sleeps holding the folder lock; rank 1 waits for it in an MPI broadcast
    p = launch([FEM_ENV, "mpirun", "-n", 2, "python3", "-m", "fem_mfc", "run", heat_cfg,
                "--out", tmp_path / mark, "--quiet"], mark,
               env=_fem_env_env(path, tmp_path / "paused", "create:locked"),
               preexec_fn=_default_signals)
    try:
        wait_for_file(tmp_path / "paused", p, mark)
        time.sleep(0.3)
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=30)
        assert_none_left(mark, timeout=10)
    finally:
        kill_all(mark)


@pytest.mark.parametrize("path", PATHS)
def test_bad_config_under_mpirun_is_one_line(tmp_path, path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[mesh]\nkind = "interval"\ncells = "many"\n')
    mark = marker()
    p = launch([FEM_ENV, "mpirun", "-n", 2, "python3", "-m", "fem_mfc", "run", bad, "--out",
                tmp_path / mark], mark, env=_fem_env_env(path))
    rc, out, err = finish(p, mark, timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("fem-mfc: error: ") and "mesh.cells" in lines[0]
    assert_none_left(mark)
    # a program that is not fem-mfc keeps Open MPI's account of its failure (rank 1 fails
    # first: with both ranks exiting 3 at once prterun once printed nothing, 1 run of 7)
    mark = marker()
    prog = ("import os, sys, time; "
            "time.sleep(0 if os.environ.get('OMPI_COMM_WORLD_RANK') == '1' else 20); sys.exit(3)")
    p = launch([FEM_ENV, "mpirun", "-n", 2, "python3", "-c", prog, mark],
               mark, env=_fem_env_env(path))
    rc, out, err = finish(p, mark, timeout=120)
    assert rc == 3 and "non-zero status" in err, err[-3000:]
    assert_none_left(mark)                   # rank 0 ended by mpirun, not after its 20 s


@pytest.mark.skipif(not IN_ENV, reason="bin/fem-env inside the environment")
def test_a_banner_cut_short_after_the_error_line_is_dropped(tmp_path):
    """Under load prterun once printed only the opening rule of its banner after fem-mfc's
    error line and exited: the guard held the rule for the line that would say whether a
    banner follows, got end of file instead and wrote it — two lines where the contract says
    one (tests/test_hygiene_empty_rank.py failed in CI).  A rule held at the end is dropped;
    a rule before fem-mfc's line is the program's own and kept."""
    import subprocess
    rule = "-" * 74
    fake = tmp_path / "mpirun"                      # the guard acts on launchers by name
    fake.write_text("#!/bin/sh\n"
                    f"echo '{rule}' >&2\n"
                    "echo \"fem-mfc: error: config key 'mesh.cells': expected more\" >&2\n"
                    f"echo '{rule}' >&2\n"
                    "exit 2\n")
    fake.chmod(0o755)
    p = subprocess.run([str(FEM_ENV), str(fake)], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2
    assert lines == [rule, "fem-mfc: error: config key 'mesh.cells': expected more"], p.stderr


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_signal_inside_a_call_that_holds_the_gil(tmp_path, heat_cfg, ranks):
    """SIGTERM while every rank is inside a C call that holds the GIL (a dense LU that takes
    ≈ 8 s here, as a long factorisation does): Python's handler cannot run until the call
    returns, so the run used to go on until then.  The run's watchdog process, woken by the
    signal through the wakeup fd, deletes the staging folder and ends the rank after
    SIGNAL_GRACE_S; nothing of the job is left."""
    if not IN_ENV:
        pytest.skip("inside the environment")
    from fem_mfc.io import SIGNAL_GRACE_S
    mark = marker()
    out = tmp_path / mark
    pause = tmp_path / "paused"
    env = dict(paused_env(pause, "create:staged", _fem_env_env("env")),
               FEM_MFC_TEST_PAUSE_DEAF="4000")
    mpi = [FEM_ENV, "mpirun", "-n", 2] if ranks == 2 else [FEM_ENV]
    p = launch(mpi + ["python3", "-m", "fem_mfc", "run", heat_cfg, "--out", out, "--quiet"],
               mark, env=env, preexec_fn=_default_signals)
    try:
        wait_for_file(pause, p, mark)
        end = time.monotonic() + 30
        while len([ln for ln in pause.read_text().splitlines() if ln]) < ranks:
            assert time.monotonic() < end, "the ranks never reached the pause point"
            time.sleep(0.05)
        time.sleep(0.3)                        # inside the LU (set up before the point)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rc, _, err = finish(p, mark, timeout=60)
        took = time.monotonic() - t0
        assert_none_left(mark, timeout=3)
        assert took < SIGNAL_GRACE_S + 2.5, (took, err[-2000:])
        if ranks == 1:                         # ended by the watchdog
            assert rc in (-signal.SIGKILL, 128 + signal.SIGKILL), (rc, err[-2000:])
            assert "cannot be interrupted" in err, err[-2000:]
        else:                                  # by the watchdogs, or mpirun's own SIGKILL
            assert rc != 0, err[-2000:]
        assert not out.exists()
        assert not [e for e in os.listdir(tmp_path) if e.startswith(f".staging-{mark}")]
    finally:
        kill_all(mark)


def test_the_watchdog_ends_with_its_run(tmp_path, heat_cfg):
    """A run that ends normally leaves no watchdog process behind (end of file on its pipe)."""
    mark = marker()
    p = launch([FEM_ENV, "python3", "-m", "fem_mfc", "run", heat_cfg, "--out", tmp_path / mark,
                "--quiet"], mark, preexec_fn=_default_signals)
    rc, _, err = finish(p, mark, timeout=120)
    assert rc == 0, err
    assert_none_left(mark, timeout=3)


def _sigterm_before_writing(tmp_path, cfg, ranks, point="create:locked", sig=signal.SIGTERM):
    """``sig`` to ``bin/fem-env [mpirun -n 2] python3 -m fem_mfc run`` before the run's
    handlers and staging folder, by default while rank 0 holds the output folder's lock
    (create:locked; rank 1 waits for it in a broadcast): (status, stderr's non-empty lines);
    nothing of the job, the folder, its lock or a staging folder is left."""
    mark = marker()
    out = tmp_path / mark
    pause = tmp_path / "paused"
    mpi = [FEM_ENV, "mpirun", "-n", 2] if ranks == 2 else [FEM_ENV]
    p = launch(mpi + ["python3", "-m", "fem_mfc", "run", cfg, "--out", out, "--quiet"], mark,
               env=paused_env(pause, point, _fem_env_env("env")),
               preexec_fn=_default_signals)
    try:
        wait_for_file(pause, p, mark)
        p.send_signal(sig)
        rc, _, err = finish(p, mark, timeout=60)
        assert_none_left(mark, timeout=5)
        assert not out.exists()
        assert not [e for e in os.listdir(tmp_path) if mark in e], os.listdir(tmp_path)
        return rc, [ln for ln in err.splitlines() if ln.strip()]
    finally:
        kill_all(mark)


@pytest.mark.skipif(not IN_ENV, reason="bin/fem-env inside the environment")
def test_sigterm_before_the_run_writes_is_one_line(tmp_path, heat_cfg):
    """SIGTERM before the run has installed its handlers (here: rank 0 holds the lock) ended
    it with 143 and no word, leaving the lock file; now one line names the signal and says
    that nothing was written, the status is still 143 and the lock is gone."""
    rc, lines = _sigterm_before_writing(tmp_path, heat_cfg, 1)
    assert rc == 143 and lines == ["fem-mfc: interrupted (SIGTERM); nothing was written"], \
        (rc, lines)


@pytest.mark.slow
@pytest.mark.skipif(not IN_ENV, reason="bin/fem-env inside the environment")
def test_sigterm_before_the_run_writes_under_mpirun(tmp_path, heat_cfg):
    """The same under ``mpirun -n 2``: rank 0 prints the line and exits, mpirun ends rank 1
    (waiting in a broadcast, its handler cannot run), the launcher returns 143 within the
    timeout and no rank is left."""
    rc, lines = _sigterm_before_writing(tmp_path, heat_cfg, 2)
    assert rc == 143 and lines == ["fem-mfc: interrupted (SIGTERM); nothing was written"], \
        (rc, lines)


@pytest.mark.skipif(not IN_ENV, reason="bin/fem-env inside the environment")
def test_sighup_before_the_run_writes_is_one_line(tmp_path, heat_cfg):
    """SIGHUP after PETSc's initialisation and before the run's handlers (run:loaded, the
    config read): PETSc had put its own handler under the CLI's, and the run ignored the
    signal, went on and exited 0.  Now one line, 129, nothing written."""
    rc, lines = _sigterm_before_writing(tmp_path, heat_cfg, 1, "run:loaded", signal.SIGHUP)
    assert rc == 129 and lines == ["fem-mfc: interrupted (SIGHUP); nothing was written"], \
        (rc, lines)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="no Xvfb (figures use a display)")
def test_the_figures_x_server_ends_with_an_interrupted_run():
    """The private Xvfb of the figures (viz.ensure_display) is stopped at exit, but a run
    ended by its signal handler exits with os._exit (no atexit) and one the watchdog ends is
    SIGKILLed: each interrupted run that had drawn a figure left an Xvfb running, re-parented
    to PID 1.  It now gets SIGTERM when the process that started it dies."""
    import subprocess
    import sys
    env = _env()
    env.pop("DISPLAY", None)
    code = ("import os; from fem_mfc import viz; viz.ensure_display(); "
            "print(viz._XVFB.pid, flush=True); os._exit(143)")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 143, p.stderr
    xvfb = int(p.stdout.split()[0])
    end = time.monotonic() + 10
    while _alive(xvfb) and time.monotonic() < end:
        time.sleep(0.05)
    left = _alive(xvfb)
    if left:
        os.kill(xvfb, signal.SIGTERM)
    assert not left, f"Xvfb {xvfb} outlived the run that started it"


# a RunContext of both ranks, no solve: each rank writes its pid, then they commit
COMMIT_WRITER = textwrap.dedent("""
    import os, sys
    from mpi4py import MPI
    from fem_mfc.io import RunContext
    out, pids = sys.argv[1], sys.argv[2]
    comm = MPI.COMM_WORLD
    ctx = RunContext.create(out, comm, quiet=True)
    with open(f"{pids}.{comm.rank}", "w") as f:
        f.write(str(os.getpid()))
    try:
        if comm.rank == 0:
            ctx.path("config.toml").write_text("tag = 'B'\\n")
        ctx.commit({"converged": True})
    except BaseException:
        ctx.abort()
        raise
""")


@pytest.mark.slow
@pytest.mark.skipif(not IN_ENV, reason="signals the ranks by their pids inside the environment")
def test_a_signal_after_the_commit_point_lets_every_rank_finish(tmp_path):
    """SIGTERM to both ranks of a 2-rank run once rank 0 has written summary.json (the commit
    point) while rank 0 is still swapping the run in (paused longer than SIGNAL_GRACE_S):
    the run finishes with its own status (0) and is in place.  Rank 0 stood its watchdog down
    at the commit point, rank 1 did not: rank 1's watchdog SIGKILLed it SIGNAL_GRACE_S after
    the signal and the job ended with mpirun's failure, not the run's status."""
    from fem_mfc.io import SIGNAL_GRACE_S
    mark = marker()
    out = tmp_path / mark
    script = tmp_path / "writer.py"
    script.write_text(COMMIT_WRITER)
    pause = tmp_path / "paused"
    env = dict(paused_env(pause, "commit:summary", _fem_env_env("env")),
               FEM_MFC_TEST_PAUSE_S=str(SIGNAL_GRACE_S + 3.0))
    p = launch([FEM_ENV, "mpirun", "-n", 2, "python3", script, out, tmp_path / "pid"], mark,
               env=env, preexec_fn=_default_signals)
    try:
        wait_for_file(pause, p, mark)           # rank 0 past its commit point, rank 1 waiting
        pids = [int((tmp_path / f"pid.{rank}").read_text()) for rank in (0, 1)]
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        rc, _, err = finish(p, mark, timeout=60)
        assert_none_left(mark, timeout=3)
        assert rc == 0, (rc, err[-3000:])
        assert "cannot be interrupted" not in err and "Traceback" not in err, err[-3000:]
        assert "SIGTERM after the run's summary was written" in err, err[-3000:]
        assert json.loads((out / "summary.json").read_text())["converged"] is True
        assert not [e for e in os.listdir(tmp_path) if e.startswith(f".staging-{mark}")]
    finally:
        kill_all(mark)
