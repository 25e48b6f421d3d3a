"""Item 5 of issue 14: an output folder is always exactly one run.

A small writer process (RunContext only, no solve) is killed with SIGKILL at named points of
``RunContext.create/commit`` (``FEM_MFC_TEST_PAUSE``: the process announces the point in a file
and sleeps there) and at random moments while it writes; after every kill the folder must be
wholly the earlier run or wholly the new one (same file names, summary.json and config.toml of
one run, no file of the other), and the next run must succeed and leave no staging folder.
Also: SIGINT/SIGTERM remove their own staging and exit 130/143, a second concurrent run into
the same folder is refused, a folder of someone else's files is refused, and the CLI.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import REPO, read_summary, run_cli
from helpers import env as child_env

WRITER = textwrap.dedent("""
    import sys, time
    from mpi4py import MPI
    from fem_mfc.errors import UserError
    from fem_mfc.io import RunContext
    out, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        ctx = RunContext.create(out, MPI.COMM_SELF, quiet=True)
    except UserError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    try:
        ctx.path("config.toml").write_text(f"tag = {tag!r}\\n")
        for i in range(n):
            ctx.path(f"{tag}_{i}.dat").write_text(tag * 1000)
            time.sleep(0.01)
        ctx.commit({"tag": tag})
    except BaseException:
        ctx.abort()
        raise
""")

NAMED = ["create:locked", "create:staged", "commit:begin", "commit:summary", "swap:before",
         "swap:exchanged", "swap:previous-moved", "swap:previous-kept", "commit:swapped"]


def _start(script, out, tag, n, pause=None, pause_s=60.0, pause_file=None):
    env = child_env()
    if pause:
        env.update(FEM_MFC_TEST_PAUSE=pause, FEM_MFC_TEST_PAUSE_S=str(pause_s),
                   FEM_MFC_TEST_PAUSE_FILE=str(pause_file))
    return subprocess.Popen([sys.executable, str(script), str(out), tag, str(n)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(pause_file, point, proc, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pause_file.exists() and point in pause_file.read_text().split():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError(f"never reached {point}")


def _state(folder: Path):
    """('A'|'B', names) if the folder is wholly one run, else a description of the mix."""
    names = sorted(os.listdir(folder))
    summary = json.loads((folder / "summary.json").read_text())["tag"]
    conf = (folder / "config.toml").read_text().split("'")[1]
    dats = {n.split("_")[0] for n in names if n.endswith(".dat")}
    assert summary == conf and dats == {summary}, (summary, conf, names)
    return summary, names


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A folder holding run 'A' (with 'Z' as its .previous) and the writer script."""
    d = tmp_path_factory.mktemp("template")
    script = d / "writer.py"
    script.write_text(WRITER)
    out = d / "run"
    for tag in ("Z", "A"):
        p = _start(script, out, tag, 5)
        assert p.wait(60) == 0, p.stderr.read()
    return d, script, _state(out)


def _fresh(template, tmp_path):
    d, script, old = template
    shutil.copytree(d / "run", tmp_path / "run")
    shutil.copytree(d / "run.previous", tmp_path / "run.previous")
    return tmp_path / "run", script, old


def _check_after_kill(out, script, old, new_names):
    state = _state(out)
    assert state == old or (state[0] == "B" and state[1] == new_names), state
    leftovers = [e for e in os.listdir(out.parent) if e.startswith(".staging-")]
    # the next run succeeds, cleans every stale staging folder and is complete
    p = _start(script, out, "C", 3)
    assert p.wait(60) == 0, p.stderr.read()
    assert _state(out)[0] == "C"
    assert not [e for e in os.listdir(out.parent) if e.startswith((".staging-", ".run.lock"))]
    return state[0], leftovers


@pytest.fixture(scope="module")
def new_names(template, tmp_path_factory):
    """The file names of a complete run 'B' (measured once, not assumed)."""
    d, script, _ = template
    tmp = tmp_path_factory.mktemp("complete")
    out = tmp / "run"
    p = _start(script, out, "B", 30)
    assert p.wait(60) == 0, p.stderr.read()
    return _state(out)[1]


FAST_POINTS = ("create:staged", "commit:summary", "swap:exchanged")   # the rest: slow


@pytest.mark.slow
@pytest.mark.parametrize("point", [pytest.param(p, marks=[] if p in FAST_POINTS else
                                                pytest.mark.slow) for p in NAMED])
def test_sigkill_at_named_point(point, template, new_names, tmp_path):
    out, script, old = _fresh(template, tmp_path)
    pf = tmp_path / "pause"
    p = _start(script, out, "B", 30, pause=point, pause_file=pf)
    assert _wait_for(pf, point, p), p.stderr.read()
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    which, leftovers = _check_after_kill(out, script, old, new_names)
    expected_new = NAMED.index(point) >= NAMED.index("swap:exchanged")
    assert which == ("B" if expected_new else "A"), (point, which)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(15))
def test_sigkill_at_random_moment(seed, template, new_names, tmp_path):
    out, script, old = _fresh(template, tmp_path)
    pf = tmp_path / "pause"
    # announce the end of create() without sleeping, then kill 0-0.6 s later (the writes take
    # ~0.3 s, then commit and the swap)
    p = _start(script, out, "B", 30, pause="create:staged", pause_s=0, pause_file=pf)
    _wait_for(pf, "create:staged", p)
    time.sleep(random.Random(seed).uniform(0.0, 0.6))
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    _check_after_kill(out, script, old, new_names)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("point", ["create:staged", "commit:begin"])
def test_sigint_sigterm_remove_their_staging(sig, code, point, template, tmp_path):
    out, script, old = _fresh(template, tmp_path)
    pf = tmp_path / "pause"
    p = _start(script, out, "B", 30, pause=point, pause_file=pf)
    _wait_for(pf, point, p)
    p.send_signal(sig)
    assert p.wait(30) == code
    assert "interrupted" in p.stderr.read()
    assert _state(out) == old
    assert not [e for e in os.listdir(tmp_path) if e.startswith((".staging-", ".run.lock"))]


@pytest.mark.parametrize("point", ["commit:summary", "swap:exchanged",
                                   pytest.param("commit:swapped", marks=pytest.mark.slow)])
def test_a_signal_after_the_summary_is_written_lets_the_run_finish(point, template,
                                                                  new_names, tmp_path):
    """SIGTERM once summary.json is written (the commit point): the run is complete.  It
    ended 143 with the new run in place, or with it not (the old run kept) by where the
    handler ran (signals were blocked during the swap only; the handler removed the staging
    folder, i.e. the earlier run's, and said the folder was "left as it was"): now the run
    finishes, exits with its own status and the new run is in place; before the commit point
    (commit:begin, test_sigint_sigterm_remove_their_staging) the signal wins, 143, nothing
    changed."""
    out, script, old = _fresh(template, tmp_path)
    pf = tmp_path / "pause"
    # the signal must arrive within the pause (SIGTERM's handler returns, the pause runs on):
    # after the commit the script's handlers are the default ones again, and a late one ends it
    p = _start(script, out, "B", 30, pause=point, pause_s=1.0, pause_file=pf)
    assert _wait_for(pf, point, p), p.stderr.read()
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0, p.stderr.read()
    assert _state(out) == ("B", new_names) and _state(tmp_path / "run.previous") == old
    assert not [e for e in os.listdir(tmp_path) if e.startswith((".staging-", ".run.lock"))]


def test_second_concurrent_run_is_refused(template, tmp_path):
    out, script, old = _fresh(template, tmp_path)
    pf = tmp_path / "pause"
    first = _start(script, out, "B", 3, pause="create:staged", pause_file=pf)
    _wait_for(pf, "create:staged", first)
    second = _start(script, out, "C", 3)
    assert second.wait(60) == 2
    err = second.stderr.read()
    assert "another run is writing" in err and str(first.pid) in err
    first.send_signal(signal.SIGTERM)
    assert first.wait(30) == 143
    assert _state(out) == old


def test_folder_of_other_files_is_refused(template, tmp_path):
    _, script, _ = template
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    p = _start(script, out, "B", 3)
    assert p.wait(60) == 2 and "not a fem_mfc output folder" in p.stderr.read()
    assert os.listdir(out) == ["thesis.tex"] and not (tmp_path / "mine.previous").exists()


def test_out_below_a_file_names_the_file(tmp_path):
    """``--out notes.txt/run``: "cannot create output folder (File exists)" of a folder that
    did not exist; the file in the way is named."""
    from fem_mfc.errors import UserError
    from fem_mfc.io import _prepare_run_folder, prepare_outdir
    (tmp_path / "notes.txt").write_text("mine")
    for make in (_prepare_run_folder, prepare_outdir):
        with pytest.raises(UserError) as e:
            make(tmp_path / "notes.txt" / "sub" / "run")
        assert f"({tmp_path / 'notes.txt'} is a file, not a folder)" in str(e.value), e.value
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_previous_run_is_kept_and_stale_files_go(template, tmp_path):
    out, script, old = _fresh(template, tmp_path)
    p = _start(script, out, "B", 2)
    assert p.wait(60) == 0
    assert _state(out)[0] == "B" and _state(tmp_path / "run.previous") == old


CFG = textwrap.dedent("""
    [run]
    formulation = "heat"
    [mesh]
    kind = "interval"
    cells = 8
    lower = [-3.0]
    upper = [3.0]
    [problem]
    T = 0.1
    steps = {steps}
    [rho0]
    mean = [0.0]
    [output]
    figures = false
""")


@pytest.mark.parametrize("point,sig", [
    pytest.param("commit:summary", signal.SIGTERM, marks=pytest.mark.slow),
    pytest.param("run:finished", signal.SIGTERM, marks=pytest.mark.slow),
    ("run:finished", signal.SIGINT)],
    ids=lambda v: v.name if isinstance(v, signal.Signals) else v)
def test_cli_signalled_after_the_summary_ends_with_the_runs_status(point, sig, tmp_path):
    """``fem-mfc run`` sent SIGTERM once its summary.json is written — in the commit, or after
    it, with the CLI's own handler back — ended 143 with the run complete in its folder:
    it ends with the run's status (0) now, saying so in one line.  SIGINT after the run
    (Python's KeyboardInterrupt by then) said "earlier results left intact" and ended 130."""
    cfg = tmp_path / "c.toml"
    out = tmp_path / "out"
    cfg.write_text(CFG.format(steps=2))
    env = child_env()
    pf = tmp_path / "pause"
    # the signal must arrive within the pause (after it, the process ignores signals while it
    # exits: status 0, no line); SIGTERM's handler returns and the pause runs to its end,
    # SIGINT's KeyboardInterrupt ends it at once.  SIGINT as at a terminal: make runs a shard
    # in the background, whose children start with SIGINT ignored (then Python has no
    # KeyboardInterrupt, and the run rightly finishes as if nothing came)
    env.update(FEM_MFC_TEST_PAUSE=point, FEM_MFC_TEST_PAUSE_FILE=str(pf),
               FEM_MFC_TEST_PAUSE_S="2" if sig == signal.SIGTERM else "30")
    p = subprocess.Popen([sys.executable, "-m", "fem_mfc", "run", str(cfg), "--out", str(out),
                          "--quiet"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for(pf, point, p, timeout=120)
    p.send_signal(sig)
    assert p.wait(60) == 0, p.stderr.read()
    lines = p.stderr.read().strip().splitlines()
    assert len(lines) == 1 and f"{sig.name} after the run" in lines[0], lines
    assert read_summary(out)["converged"] is True
    assert not [e for e in os.listdir(tmp_path) if e.startswith((".staging-", ".out.lock"))]


@pytest.mark.slow
def test_cli_killed_during_the_swap_and_terminated(tmp_path):
    cfg = tmp_path / "c.toml"
    out = tmp_path / "out"
    cfg.write_text(CFG.format(steps=2))
    assert run_cli(["run", str(cfg), "--out", str(out), "--quiet"]).returncode == 0
    before = read_summary(out), (out / "config.toml").read_text()
    cfg.write_text(CFG.format(steps=3))
    env = child_env()
    pf = tmp_path / "pause"
    for point, sig, code in (("swap:before", signal.SIGKILL, -9),
                             ("create:staged", signal.SIGTERM, 143)):
        env.update(FEM_MFC_TEST_PAUSE=point, FEM_MFC_TEST_PAUSE_FILE=str(pf))
        p = subprocess.Popen([sys.executable, "-m", "fem_mfc", "run", str(cfg), "--out",
                              str(out), "--quiet"], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for(pf, point, p, timeout=120)
        p.send_signal(sig)
        assert p.wait(60) == code
        assert (read_summary(out), (out / "config.toml").read_text()) == before
        assert "Traceback" not in p.stderr.read()
        stale = [e for e in os.listdir(tmp_path) if e.startswith(".staging-")]
        assert bool(stale) == (sig == signal.SIGKILL)   # SIGTERM removed its own
    assert run_cli(["run", str(cfg), "--out", str(out), "--quiet"]).returncode == 0
    assert read_summary(out)["nsteps"] == 3
    assert read_summary(tmp_path / "out.previous") == before[0]
    assert not [e for e in os.listdir(tmp_path) if e.startswith((".staging-", ".out.lock"))]
