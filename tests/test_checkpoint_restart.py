"""Checkpoints of the all-at-once Newton solve and restarts from them: a run killed (SIGKILL)
right after a checkpoint, restarted serially and on 2 ranks (a checkpoint written on N ranks
read on M), reaches the J of an uninterrupted run to solver tolerance; a checkpoint of another
problem is refused; a finished run removes its checkpoint."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import REPO, read_summary, run_cli
from helpers import env as _env

CONFIG = textwrap.dedent("""
    [run]
    formulation = "hjb-fp"
    [mesh]
    kind = "rectangle"
    cells = 20
    [problem]
    T = 1.0
    sigma = 0.5
    steps = 12
    G = "{G}"
    coupling = "mfg"
    Phi = "(x0 - 0.5)**2 + x1**2"
    [rho0]
    mean = [-0.4, 0.0]
    std = 0.25
    [solver]
    method = "newton"
    [output]
    figures = false
    vtx = false
    progress = false
    checkpoint_every = 1
""")

# an aggregation game: Newton from the trivial guess fails (in max_it = 10 iterations, to keep
# the test short), the continuation in λ converges
ATTRACTIVE = textwrap.dedent("""
    [run]
    formulation = "hjb-fp"
    [mesh]
    kind = "interval"
    cells = 100
    lower = [0.0]
    upper = [1.0]
    [problem]
    T = 1.0
    sigma = 0.1
    steps = 20
    G = "-0.02*rho**2"
    coupling = "mfg"
    Phi = "(x0 - 0.5)**2"
    [rho0]
    mean = [0.5]
    std = 0.1
    [solver]
    method = "newton"
    max_it = 10
    [output]
    figures = false
    vtx = false
    progress = false
    checkpoint_every = 1000
""")


def kill_marked(marker: str):
    """SIGKILL every process whose command line contains ``marker``; wait until gone."""
    for _ in range(100):
        alive = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd and int(pid) != os.getpid():
                alive.append(int(pid))
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
        if not alive:
            return
        time.sleep(0.1)


def killed_after_checkpoint(cfg, out, ranks, count, phase="", restart=None):
    """Start the run (from checkpoint ``restart``, if given), SIGKILL its whole process group
    after its checkpoint ``count`` (of ``phase`` only, if given)."""
    env = dict(_env(), FEM_MFC_TEST_CHECKPOINT_PAUSE="60" + (":" + phase if phase else ""),
               FEM_MFC_TEST_CHECKPOINT_AT=str(count))
    cmd = [sys.executable, "-m", "fem_mfc", "run", str(cfg), "--out", str(out), "--quiet"]
    if restart is not None:
        cmd += ["--restart", str(restart)]
    if ranks > 1:
        cmd = ["mpirun", "-n", str(ranks)] + cmd
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    deadline = time.monotonic() + 300
    seen = 0
    try:
        for line in p.stderr:
            seen += line.startswith("CHECKPOINT")
            if seen == count:
                break
            assert time.monotonic() < deadline, "no checkpoint"
        else:
            pytest.fail("the run ended before the checkpoint")
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
        kill_marked(str(out))                # ranks an MPI launcher may have left behind
    assert p.returncode != 0
    assert not (out / "summary.json").exists()
    return out.with_name(out.name + ".checkpoint")


def killed_and_restarted(cfg, tmp_path, writer_ranks=1, reader_ranks=2, full=None):
    """(uninterrupted summary, restarted summary): the run of config file ``cfg`` once
    through (unless its summary ``full`` is given), and killed after its second checkpoint on
    ``writer_ranks`` ranks (the checkpoint says so) then restarted on ``reader_ranks``; asserts
    both succeeded, the restart started from the checkpoint, took fewer Newton iterations
    than the whole run, counted with the two before them as many as it, reached the same J
    (1e-9) and removed the checkpoint."""
    if full is None:
        p = run_cli(["run", str(cfg), "--out", str(tmp_path / "full"), "--quiet"])
        assert p.returncode == 0, p.stderr
        full = read_summary(tmp_path / "full")
    ck = killed_after_checkpoint(cfg, tmp_path / "cut", writer_ranks, 2)
    meta = json.loads((ck / "meta.json").read_text())
    assert meta["iteration"] == 2 and meta["ranks"] == writer_ranks
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "cut"), "--quiet", "--restart",
                 str(ck)], ranks=reader_ranks)
    assert p.returncode == 0, p.stderr
    s = read_summary(tmp_path / "cut")
    assert s["history"][0]["guess"].startswith("restart")
    assert s["restarted_from"]["iteration"] == 2 and s["restarted_from"]["leg"] == 2
    assert len(s["history"]) - 1 < full["iterations"]          # this leg's Newton steps
    assert s["iterations"] == 2 + len(s["history"]) - 1 == full["iterations"]   # the run's
    assert abs(s["J"] - full["J"]) <= 1e-9 * abs(full["J"])
    assert not ck.exists()
    return full, s


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The congested run's config and its uninterrupted summary (computed once)."""
    d = tmp_path_factory.mktemp("full")
    cfg = d / "c.toml"
    cfg.write_text(CONFIG.format(G="rho**2/2"))
    p = run_cli(["run", str(cfg), "--out", str(d / "full"), "--quiet"])
    assert p.returncode == 0, p.stderr
    assert not (d / "full.checkpoint").exists()               # removed when complete
    return cfg, read_summary(d / "full")


@pytest.mark.slow
@pytest.mark.parametrize("writer_ranks,reader_ranks", [(1, 2), (2, 1)])
def test_killed_run_restarts_to_the_same_solution(tmp_path, uninterrupted, writer_ranks,
                                                  reader_ranks):
    """Written on N ranks, read on M (1 → 2, 2 → 1)."""
    cfg, full = uninterrupted
    _, s = killed_and_restarted(cfg, tmp_path, writer_ranks, reader_ranks, full=full)
    assert abs(s["J_value_identity"] - full["J_value_identity"]) <= 1e-9 * abs(full["J"])


@pytest.mark.slow
def test_chained_restarts_count_the_whole_run(tmp_path, uninterrupted):
    """Killed after its second checkpoint, restarted, the restart killed after its second,
    restarted again: summary.json counts the whole run — ``iterations`` (Newton, from the
    start of the final attempt) and the Krylov ``ksp_its_total`` equal the uninterrupted
    run's (they counted the last leg only: 2 of 5), ``restarted_from`` says leg 3 from
    iteration 4.  The inexact-Newton (Eisenstat–Walker) state is checkpointed too: the
    restart solves its first step to the uninterrupted run's Krylov tolerance (it was reset
    to 0.03 instead of 2.2e-5, costing a Newton step: 6 in all)."""
    cfg, full = uninterrupted
    out = tmp_path / "cut"
    ck = killed_after_checkpoint(cfg, out, 1, 2)
    ck = killed_after_checkpoint(cfg, out, 1, 2, restart=ck)
    meta = json.loads((ck / "meta.json").read_text())
    assert (meta["iteration"], meta["iterations_run"], meta["legs"]) == (4, 4, 2), meta
    assert meta["ksp_its"] == sum(h["ksp_its"] for h in full["history"][:4])
    p = run_cli(["run", str(cfg), "--out", str(out), "--quiet", "--restart", str(ck)])
    assert p.returncode == 0, p.stderr
    s = read_summary(out)
    assert s["restarted_from"] == {"phase": "newton", "iteration": 4, "iterations_run": 4,
                                   "lambda": 1.0, "leg": 3}
    assert full["iterations"] > 4 and s["iterations"] == full["iterations"]
    assert len(s["history"]) == full["iterations"] - 4 + 1        # this leg's own record
    assert s["history"][-1]["ksp_its_total"] == full["history"][-1]["ksp_its_total"]
    assert s["history"][0]["ksp_rtol"] == pytest.approx(full["history"][4]["ksp_rtol"],
                                                        rel=1e-6)
    assert abs(s["J"] - full["J"]) <= 1e-9 * abs(full["J"])
    assert not ck.exists()


@pytest.mark.slow
def test_checkpoint_survives_until_the_results_are_in_place(tmp_path, uninterrupted):
    """Killed after the solve, while it writes its outputs (paused at the start of the
    commit): the checkpoint is still there (it was removed when the solve ended, so the
    run's whole work was lost), and the restart finishes the run with the uninterrupted J."""
    cfg, full = uninterrupted
    out = tmp_path / "late"
    pause = tmp_path / "paused"
    env = dict(_env(), FEM_MFC_TEST_PAUSE="commit:begin", FEM_MFC_TEST_PAUSE_FILE=str(pause),
               FEM_MFC_TEST_PAUSE_S="60")
    p = subprocess.Popen([sys.executable, "-m", "fem_mfc", "run", str(cfg), "--out", str(out),
                          "--quiet"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        end = time.monotonic() + 120
        while not pause.exists():
            assert p.poll() is None and time.monotonic() < end, "never reached the commit"
            time.sleep(0.05)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
    ck = out.with_name(out.name + ".checkpoint")
    assert not (out / "summary.json").exists() and ck.is_dir()
    r = run_cli(["run", str(cfg), "--out", str(out), "--quiet", "--restart", str(ck)])
    assert r.returncode == 0, r.stderr
    s = read_summary(out)
    assert s["iterations"] == full["iterations"] and len(s["history"]) == 1     # no step
    assert abs(s["J"] - full["J"]) <= 1e-12 * abs(full["J"])
    assert not ck.exists()                     # removed once this run's results are in place


def _attractive(comm=None):
    """The ATTRACTIVE problem in-process (its ρ0 unnormalised): Newton from the trivial guess
    stalls in 10 iterations, the continuation in the coupling strength converges."""
    from mpi4py import MPI

    import dolfinx
    import ufl

    from fem_mfc.problem import ControlProblem
    mesh = dolfinx.mesh.create_interval(comm or MPI.COMM_SELF, 100, [0.0, 1.0])
    x = ufl.SpatialCoordinate(mesh)
    return ControlProblem(mesh=mesh, T=1.0, sigma=0.1, steps=20, Phi=(x[0] - 0.5) ** 2,
                          G=lambda r: -0.02 * r ** 2, coupling="mfg",
                          rho0=ufl.exp(-50 * (x[0] - 0.5) ** 2))


def _stages(summary_or_list):
    return [(s["lambda"], s["iterations"], s["converged"]) for s in summary_or_list]


def test_continuation_restart_takes_the_uninterrupted_path(tmp_path, monkeypatch):
    """A continuation restarted from the checkpoint of its third converged stage (λ = 0.375,
    after two failed stages; in-process, the run's checkpoint copied when it is written)
    does not solve that stage again and takes the next step and the secant predictor (the
    previous stage's λ and states) from the checkpoint: the same stages (λ, Newton
    iterations), the same Newton and Krylov totals of the run (37 Newton iterations; the
    restart re-solved the stage from the first step without a predictor: 47) and J to
    round-off (in the middle of a stage, see below: the same stages).  The run's Krylov
    total counts every iteration of the Newton solver's KSP (its steps' and nleqerr's
    line-search solves, which SNES leaves out: 1,291 of 1,544), across the legs."""
    import importlib
    import shutil

    from fem_mfc import checkpoint
    from fem_mfc.solvers.newton import make_system, newton
    nt = importlib.import_module("fem_mfc.solvers.newton")

    counted = []                                # Krylov iterations seen by a KSP monitor
    init = nt.NewtonSolver.__init__

    def counting(self, *a, **kw):
        init(self, *a, **kw)
        counted.append(0)
        k = len(counted) - 1

        def monitor(ksp, its, rnorm):
            counted[k] += its > 0
        self.snes.getKSP().setMonitor(monitor)
    monkeypatch.setattr(nt.NewtonSolver, "__init__", counting)

    class Copying(checkpoint.Writer):
        def write(self, **meta):
            super().write(**meta)
            if meta.get("phase") == "continuation":
                self.stages = getattr(self, "stages", 0) + 1
                if self.stages == 3:
                    shutil.copytree(self.folder, tmp_path / "third")
            elif meta.get("lambda") == 0.5 and not (tmp_path / "mid").exists():
                shutil.copytree(self.folder, tmp_path / "mid")

    p = _attractive()
    st = make_system(p)
    w = Copying(tmp_path / "w.checkpoint", st, {}, 4)    # (and every 4 Newton iterations)
    full = newton(p, system=st, checkpoint=w, linear="sweep", max_it=10)
    assert full.converged and full.iterations_run == 37 and len(full.continuation) == 9

    def restart(name):
        meta = checkpoint.read_meta(tmp_path / name, None)
        q = _attractive()
        st = make_system(q)
        checkpoint.load_states(tmp_path / name, st)
        w = checkpoint.Writer(tmp_path / f"{name}2.checkpoint", st, {}, 4)
        w.restart = tmp_path / name
        return meta, newton(q, system=st, checkpoint=w, resume=meta, linear="sweep",
                            max_it=10)

    meta, again = restart("third")
    assert (meta["lambda_previous"], meta["lambda"], meta["step"]) == (0.25, 0.375, 0.25)
    assert again.converged
    assert _stages(again.continuation) == _stages(full.continuation)
    assert again.iterations_run == full.iterations_run and again.iterations == full.iterations
    assert again.krylov_run == full.krylov_run
    total = full.krylov_run["krylov_iterations_total"]
    assert total == counted[0] and 0 < full.krylov_run["krylov_iterations_line_search"] < total
    assert total == meta["ksp_its_run"] + counted[1]          # the legs add up
    # in the middle of the stage λ = 0.5 (it fails; four Newton iterations in): the path's
    # states and step are in the checkpoint, so the restart solves that stage on and takes
    # the path's next stages; Newton's own memory in the stage (the line search's last
    # solve, reused as the next step) is not, so its iterations may differ (here 37 in all
    # all the same, Krylov 1,626 against 1,544; the restart used to end the path when the
    # stage failed and begin the noise continuation from λ = 0: 56 in all)
    meta, mid = restart("mid")
    assert (meta["phase"], meta["iteration"], meta["lambda_converged"]) == ("newton", 4, 0.25)
    assert [s[::2] for s in _stages(mid.continuation)] == [
        s[::2] for s in _stages(full.continuation)]
    assert mid.converged and abs(mid.iterations_run - full.iterations_run) <= 3
    assert abs(mid.J - full.J) <= 1e-9 * abs(full.J)
    assert abs(again.J - full.J) <= 1e-12 * abs(full.J)


@pytest.mark.parametrize("linear", ["lu", pytest.param("sweep", marks=pytest.mark.slow)])
def test_restart_in_the_first_stage_solves_it_to_its_own_tolerance(tmp_path, linear):
    """A checkpoint in the middle of a continuation's first stage (λ = 0, two Newton
    iterations in, no stage converged yet): the restart solves that stage on to the stage's
    tolerance (STAGE_RTOL of its first residual) and takes the uninterrupted run's stages,
    37 Newton iterations.  It took STAGE_RTOL of the restart's own residual, already 100
    times smaller: one iteration more in that stage (38), with the budget of a whole stage.
    And on the sweep path the Jacobian operator kept the blocks it was built with at the
    checkpoint's states, those of λ = 1, for the stage's first step (λ = 0 set since, the
    states unchanged): its Krylov solve stagnated at 300 iterations, the stage failed and
    the path was given up for the noise (45 Newton iterations).  The checkpoint keeps the
    stages so far: the restart's record of the direct attempt is the run's."""
    import shutil

    from fem_mfc import checkpoint
    from fem_mfc.solvers.newton import make_system, newton

    class Copying(checkpoint.Writer):
        def write(self, **meta):
            super().write(**meta)
            if (meta.get("phase") == "newton" and meta.get("lambda") == 0.0
                    and meta.get("iteration") == 2 and not (tmp_path / "first").exists()):
                shutil.copytree(self.folder, tmp_path / "first")

    p = _attractive()
    st = make_system(p)
    full = newton(p, system=st, checkpoint=Copying(tmp_path / "w.checkpoint", st, {}, 2),
                  linear=linear, max_it=10)
    assert full.converged and full.iterations_run == 37
    meta = checkpoint.read_meta(tmp_path / "first", None)
    assert meta["lambda"] == 0.0 and not meta["last_states"]      # the path's first stage
    q = _attractive()
    st = make_system(q)
    checkpoint.load_states(tmp_path / "first", st)
    again = newton(q, system=st, resume=meta, linear=linear, max_it=10)
    assert again.converged
    assert _stages(again.continuation) == _stages(full.continuation)   # the direct attempt
    assert again.continuation[0]["stage"] == "direct"   # too (was 'restart', 0 iterations)
    assert again.iterations_run == full.iterations_run
    assert abs(again.J - full.J) <= 1e-12 * abs(full.J)


@pytest.mark.slow
def test_restart_resumes_a_continuation(tmp_path):
    """An attractive coupling (1D, c = -0.02, σ = 0.1) needs the continuation in the coupling
    strength.  Killed on 2 ranks right after its second converged stage (λ = 0.25), the
    restart on 1 continues the path exactly: the stage is not solved again, the next step
    (0.5) and the secant predictor (the previous stage's λ = 0 and states) come from the
    checkpoint, so the summary has the uninterrupted run's stages (λ and Newton iterations),
    ``iterations_total`` (37; the restart re-solved the stage from the first step without a
    predictor: 34, on another path) and J.  (Killed after the third, the failed stages on 2
    oversubscribed ranks took 10 s.  The Krylov counts of 2 ranks differ from 1's: a serial
    restart takes the same ones, test_continuation_restart_takes_the_uninterrupted_path.)"""
    cfg = tmp_path / "c.toml"
    cfg.write_text(ATTRACTIVE)
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "full"), "--quiet"])
    assert p.returncode == 0, p.stderr
    full = read_summary(tmp_path / "full")
    assert len(full["continuation"]) > 4, "the case must need the continuation"
    ck = killed_after_checkpoint(cfg, tmp_path / "cut", 2, 2, phase="continuation")
    cut = json.loads((ck / "meta.json").read_text())
    assert cut["phase"] == "continuation" and cut["lambda_previous"] == 0.0
    assert (cut["lambda"], cut["step"]) == (0.25, 0.5)
    assert cut["previous_states"] and cut["iterations_run"] < full["iterations_total"]
    assert cut["ranks"] == 2
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "cut"), "--quiet", "--restart",
                 str(ck)])
    assert p.returncode == 0, p.stderr
    s = read_summary(tmp_path / "cut")
    assert _stages(s["continuation"]) == _stages(full["continuation"])
    assert s["iterations_total"] == full["iterations_total"]
    assert s["iterations"] == full["iterations"]
    assert s["krylov_iterations_total"] > cut["ksp_its_run"] > 0
    assert s["restarted_from"]["lambda"] == cut["lambda"]
    assert abs(s["J"] - full["J"]) <= 1e-9 * abs(full["J"])
    log = (tmp_path / "cut" / "run.log").read_text()
    assert f"stage lambda = {cut['lambda']:g} (coupling" not in log     # not solved again
    assert "secant predictor from lambda = 0)" in log


@pytest.mark.slow
def test_checkpoint_of_another_problem_is_refused(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG.format(G="rho**2/2"))
    ck = killed_after_checkpoint(cfg, tmp_path / "cut", 1, 1)
    other = tmp_path / "o.toml"
    other.write_text(CONFIG.format(G="rho**2").replace("steps = 12", "steps = 12"))
    p = run_cli(["run", str(other), "--out", str(tmp_path / "o"), "--restart", str(ck)])
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "--restart" in p.stderr, p.stderr
    p = run_cli(["run", str(other), "--out", str(tmp_path / "o"), "--restart",
                 str(tmp_path / "nothing")])
    assert p.returncode == 2 and "checkpoint" in p.stderr
    # the same problem solved by Picard: a Newton checkpoint is not its iterate (it was
    # continued by Newton under a config that says picard, exit 0)
    picard = tmp_path / "p.toml"
    picard.write_text(CONFIG.format(G="rho**2/2").replace(
        'method = "newton"', 'method = "picard"').replace("checkpoint_every = 1",
                                                          "checkpoint_every = 0"))
    p = run_cli(["run", str(picard), "--out", str(tmp_path / "p"), "--quiet", "--restart",
                 str(ck)])
    assert p.returncode == 2 and "'--restart'" in p.stderr and "picard" in p.stderr, p.stderr
    # a misspelt --restart is not a PETSc option: refused before anything runs (it ran from
    # scratch and deleted the checkpoint)
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "cut"), "--quiet", "--restrat",
                 str(ck)])
    assert p.returncode == 2 and "'--restrat'" in p.stderr and ck.is_dir(), p.stderr


def test_a_population_that_differs_is_named_by_its_index():
    """A checkpoint of a run with [[population]] tables refused under another population mass
    showed both whole arrays of tables (a line of 900 characters); the entry that differs is
    named now, as a key of a table is."""
    from fem_mfc import config
    from fem_mfc.checkpoint import _mismatch, problem_sections

    def cfg(mass):
        return config.from_dict({
            "mesh": {"kind": "rectangle", "cells": 4},
            "problem": {"steps": 2},
            "population": [{"name": "a", "rho0": {"mean": [-0.3, 0.0]}, "mass": mass},
                           {"name": "b", "rho0": {"mean": [0.3, 0.0]}}]})
    meta = {"config": json.loads(json.dumps(problem_sections(cfg(2.0)), default=str))}
    assert _mismatch(meta, cfg(3.0)) == ("a checkpoint of this config's problem; they differ "
                                         "in population[0].mass: 2.0 in the checkpoint, 3.0 "
                                         "here")


def test_a_mesh_file_changed_since_the_checkpoint_is_refused(tmp_path):
    """A restart reads the checkpoint's mesh: with [mesh] kind = 'file' a mesh file replaced
    since (the disk by the L-shape, same name, same tags) restarted on the old disk, exit 0
    with the disk's J (0.5801 against the L-shape's 0.6375).  The checkpoint keeps the
    file's digest and a changed file is refused, naming mesh.file_sha256."""
    import shutil

    from fem_mfc import config
    from fem_mfc.checkpoint import config_hash, problem_sections, read_meta
    msh = tmp_path / "m.msh"
    shutil.copy(REPO / "meshes" / "disk.msh", msh)
    cfg = config.from_dict({"mesh": {"kind": "file", "file": str(msh)},
                            "problem": {"steps": 2}})
    ck = tmp_path / "c.checkpoint"
    ck.mkdir()
    (ck / "meta.json").write_text(json.dumps({
        "config_hash": config_hash(cfg), "steps": 2,
        "config": json.loads(json.dumps(problem_sections(cfg), default=str))}))
    assert read_meta(ck, cfg)["steps"] == 2                  # the same file: accepted
    shutil.copy(REPO / "meshes" / "lshape.msh", msh)
    from fem_mfc.errors import ConfigError
    with pytest.raises(ConfigError, match=r"mesh.file_sha256: .* in the checkpoint, .* here"):
        read_meta(ck, cfg)


@pytest.mark.slow
def test_restart_keeps_the_tags_of_a_gmsh_mesh(tmp_path):
    """Exits on a gmsh room (physical groups): the checkpoint keeps the mesh's facet and cell
    tags, so the restart (on 2 ranks) finds its doors and reaches the uninterrupted J and
    exited mass (before: 'a mesh with tagged boundary facets' expected, exit 2)."""
    text = (REPO / "demos" / "room_evacuation.toml").read_text()
    text = text.replace('file = "../meshes/room.msh"', f'file = "{REPO / "meshes" / "room.msh"}"')
    assert str(REPO / "meshes") in text and "[output]" not in text
    cfg = tmp_path / "room.toml"
    cfg.write_text(text + "\n[output]\nfigures = false\nvtx = false\nprogress = false\n"
                   "checkpoint_every = 1\n")
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "full"), "--quiet"])
    assert p.returncode == 0, p.stderr
    full = read_summary(tmp_path / "full")
    ck = killed_after_checkpoint(cfg, tmp_path / "cut", 1, 1)
    assert json.loads((ck / "meta.json").read_text())["tags"] == ["cell_tags", "facet_tags"]
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "cut"), "--quiet", "--restart",
                 str(ck)], ranks=2)
    assert p.returncode == 0, p.stderr
    s = read_summary(tmp_path / "cut")
    assert abs(s["J"] - full["J"]) <= 1e-9 * abs(full["J"])
    assert abs(s["mass_exited"] - full["mass_exited"]) <= 1e-9


@pytest.mark.slow
def test_killed_population_run_restarts_on_two_ranks(tmp_path):
    """Several populations (the crossing crowds, coarser): the states of both crowds are
    checkpointed (one blocked function per level) and a run killed on 1 rank after its second
    checkpoint continues on 2 ranks to the uninterrupted J."""
    import tomllib
    raw = tomllib.loads((REPO / "demos" / "crowds_crossing.toml").read_text())
    raw["mesh"]["cells"] = 20
    raw["problem"]["steps"] = 8
    raw["output"] = {"figures": False, "vtx": False, "progress": False, "checkpoint_every": 1}
    from fem_mfc import config
    cfg = tmp_path / "c.toml"
    cfg.write_text(config.dumps(config.from_dict(raw)))
    _, s = killed_and_restarted(cfg, tmp_path)
    assert [q["name"] for q in s["populations"]] == ["east", "west"]
    assert all(q["mass_error"] < 1e-12 for q in s["populations"])


def _system(cells=8, steps=4, mesh_from=None):
    """A small congested problem's space-time system (on the mesh of checkpoint
    ``mesh_from``, if given)."""
    import tomllib

    from mpi4py import MPI

    from fem_mfc import checkpoint, config
    from fem_mfc.pipeline import build_mesh
    from fem_mfc.problem import ControlProblem
    from fem_mfc.solvers.newton import make_system
    raw = tomllib.loads(CONFIG.format(G="rho**2/2"))
    raw["mesh"]["cells"], raw["problem"]["steps"] = cells, steps
    cfg = config.from_dict(raw)
    md = (build_mesh(cfg, MPI.COMM_WORLD) if mesh_from is None
          else checkpoint.mesh_data(mesh_from, cfg, MPI.COMM_WORLD))
    return cfg, make_system(ControlProblem.from_config(cfg, md.mesh, md.cell_tags,
                                                       md.facet_tags))


def test_states_are_stored_at_the_nodes_and_older_checkpoints_still_load(tmp_path):
    """A checkpoint holds the states as nodal values with the nodes' coordinates (nodal.npz):
    read back exactly, on a mesh of other nodes refused; a checkpoint of the earlier format
    (one adios4dolfinx function per state) still loads."""
    import adios4dolfinx
    import numpy as np

    from fem_mfc import checkpoint
    from fem_mfc.errors import ConfigError
    cfg, st = _system()
    rng = np.random.default_rng(0)
    for f in checkpoint._states(st):
        f.x.array[:] = rng.normal(size=f.x.array.size)
        f.x.scatter_forward()
    w = checkpoint.Writer(tmp_path / "new", st, cfg, 1)
    w.write(phase="newton", iteration=1)
    assert (tmp_path / "new" / checkpoint.ARRAYS).is_file()
    _, back = _system()
    checkpoint.load_states(tmp_path / "new", back)
    for a, b in zip(checkpoint._states(st), checkpoint._states(back)):
        assert np.array_equal(a.x.array, b.x.array)
    _, finer = _system(cells=9)
    with pytest.raises(ConfigError, match="--restart"):
        checkpoint.load_states(tmp_path / "new", finer)
    old = tmp_path / "old"                                   # the format before nodal.npz
    old.mkdir()
    bp = old / checkpoint.STATE
    adios4dolfinx.write_mesh(bp, st.problem.mesh)
    for n in range(1, st.N + 1):
        adios4dolfinx.write_function(bp, st.rho[n], name=f"rho_{n}")
    for n in range(st.N):
        adios4dolfinx.write_function(bp, st.u[n], name=f"u_{n}")
    _, legacy = _system(mesh_from=old)                     # as a restart builds it
    checkpoint.load_states(old, legacy)
    rows = checkpoint._match_nodes(st.V.tabulate_dof_coordinates(),
                                   legacy.V.tabulate_dof_coordinates(), old)
    for a, b in zip(checkpoint._states(st), checkpoint._states(legacy)):
        assert np.array_equal(a.x.array[rows], b.x.array)


@pytest.mark.slow
def test_killed_qhd_control_run_restarts_on_two_ranks(tmp_path):
    """The QHD control signature (all-at-once Newton on (ρ, S)) checkpoints like the HJB–FP
    solve: killed on 1 rank after its second checkpoint, it continues on 2 ranks to the
    uninterrupted J."""
    text = (REPO / "demos" / "qhd_control_1d.toml").read_text().replace(
        "cells = 64", "cells = 32").replace("steps = 32", "steps = 16")
    cfg = tmp_path / "c.toml"
    cfg.write_text(text + "\n[output]\nfigures = false\nvtx = false\nprogress = false\n"
                   "checkpoint_every = 1\n")
    _, s = killed_and_restarted(cfg, tmp_path)
    assert s["mass_error"] < 1e-12 and s["checks"]["mass"]["ok"]


def test_coincident_nodes_are_refused_not_mismatched(tmp_path):
    """Values are matched to nodes by coordinates; a stored mesh with two nodes at one point
    (a slit) cannot be matched — refused with one line instead of one value taken twice."""
    import numpy as np

    from fem_mfc import checkpoint
    from fem_mfc.errors import ConfigError
    stored = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])
    mine = stored[[2, 0, 1]]
    assert list(checkpoint._match_nodes(stored[:3], mine, tmp_path)) == [2, 0, 1]
    with pytest.raises(ConfigError, match="coincident"):
        checkpoint._match_nodes(stored, mine, tmp_path)
    with pytest.raises(ConfigError, match="the same mesh"):
        checkpoint._match_nodes(stored[:3], mine + 0.1, tmp_path)


def test_auto_taking_cole_hopf_says_no_checkpoint_was_written(tmp_path, capsys):
    """``checkpoint_every`` with method 'auto' on a problem without congestion: auto solves it
    by Cole–Hopf, which writes no checkpoint.  That was silent (the README says such settings
    are refused, not ignored); now one warning line says so."""
    from fem_mfc import config
    from fem_mfc.pipeline import run_config
    raw = {"run": {"formulation": "hjb-fp"},
           "mesh": {"kind": "interval", "cells": 16, "lower": [-2.0], "upper": [2.0]},
           "problem": {"T": 0.5, "sigma": 0.6, "steps": 8, "Phi": "x0**2/2"},
           "solver": {"method": "auto"},
           "output": {"figures": False, "vtx": False, "progress": False,
                      "checkpoint_every": 2}}
    s = run_config(config.from_dict(raw), tmp_path / "o", quiet=True)
    assert s["method"] == "cole-hopf" and s["converged"] is True
    err = capsys.readouterr().err
    assert "checkpoint_every" in err and "Cole-Hopf" in err
    assert not (tmp_path / "o.checkpoint").exists()


@pytest.mark.parametrize("code,words", [("EBUSY", "Device or resource busy"),
                                        ("ENOSPC", "no space left on device")])
def test_a_checkpoint_that_cannot_be_written_is_an_input_error(tmp_path, monkeypatch, code,
                                                                words):
    """A checkpoint folder that cannot be written (read-only, busy, full): one error naming
    it (UserError: exit 2), raised on every rank; it was a failed Newton step — the run tried
    its whole continuation and exited 3 with a 'not a discrete solution' flag."""
    import errno

    from fem_mfc import checkpoint, config
    from fem_mfc.errors import SolverError, UserError
    from fem_mfc.pipeline import run_config
    real = os.replace

    def busy(a, b):
        if ".checkpoint" in str(b):
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(b))
        return real(a, b)
    monkeypatch.setattr(checkpoint.os, "replace", busy)
    cfg = config.load(_config_file(tmp_path))
    with pytest.raises(UserError) as e:
        run_config(cfg, tmp_path / "o", quiet=True)
    assert not isinstance(e.value, SolverError)
    msg = str(e.value)
    assert "o.checkpoint" in msg and words in msg and "\n" not in msg
    assert not (tmp_path / "o" / "summary.json").exists()


def _config_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(CONFIG.format(G="rho**2/2"))
    return f



def test_a_checkpoint_that_does_not_fit_is_refused_before_adios2_writes(tmp_path,
                                                                        monkeypatch):
    """Free space is checked against the checkpoint's size before ADIOS2 writes (a full
    disk inside ADIOS2 aborted the process, exit 134): less free than needed is the
    DiskFullError of every other output, and no ``.tmp-PID`` folder is left; the estimate
    covers what a checkpoint takes, the first (from the arrays) and the later ones (from the
    checkpoint before)."""
    from fem_mfc import checkpoint, config
    from fem_mfc.errors import DiskFullError
    from fem_mfc.pipeline import run_config
    cfg = config.load(_config_file(tmp_path))
    cfg["solver"]["max_it"] = 2                 # stops (flagged), keeps its checkpoint
    cfg["solver"]["continuation"] = False
    sizes = []
    real = checkpoint._needed

    def needed(*args):
        sizes.append(real(*args))
        return sizes[-1]
    monkeypatch.setattr(checkpoint, "_needed", needed)
    first = []
    real_replace = checkpoint._replace

    def replace(tmp, folder):
        if not first:
            first.append(_du(tmp))
        return real_replace(tmp, folder)
    monkeypatch.setattr(checkpoint, "_replace", replace)
    s = run_config(cfg, tmp_path / "a", quiet=True)
    assert s["converged"] is False and len(sizes) == 2, sizes
    assert sizes[0] >= first[0] and sizes[-1] >= _du(tmp_path / "a.checkpoint"), (sizes, first)
    monkeypatch.setattr(checkpoint, "_free_bytes", lambda path: sizes[0] - 1)
    with pytest.raises(DiskFullError) as e:
        run_config(cfg, tmp_path / "b", quiet=True)
    assert str(e.value).startswith(f"{tmp_path / 'b.checkpoint'}: no space left on device")
    assert not [p for p in os.listdir(tmp_path) if p.startswith("b.")]


def test_free_space_of_a_file_system_without_sizes_is_unknown(tmp_path, monkeypatch):
    """A file system that reports no sizes (f_blocks = 0, as some FUSE ones) must not refuse
    every checkpoint as not fitting: its free space is unknown, the write goes ahead."""
    from types import SimpleNamespace

    from fem_mfc import checkpoint
    assert checkpoint._free_bytes(tmp_path) > 0
    monkeypatch.setattr(checkpoint.os, "statvfs", lambda p: SimpleNamespace(
        f_blocks=0, f_bavail=0, f_frsize=4096))
    assert checkpoint._free_bytes(tmp_path) is None
    monkeypatch.setattr(checkpoint.os, "statvfs", lambda p: SimpleNamespace(
        f_blocks=100, f_bavail=3, f_frsize=4096))
    assert checkpoint._free_bytes(tmp_path) == 3 * 4096


def _du(folder) -> int:
    """Bytes in the files under ``folder``."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)


def test_stale_checkpoint_writes_are_deleted_when_a_run_starts(tmp_path):
    """A run killed or ended by a full disk while it wrote a checkpoint leaves
    ``OUT.checkpoint.tmp-PID``; they were deleted only when a later run converged, and a run
    that could not finish left one every time.  A run into OUT (or a restart) now deletes
    those of processes that no longer exist at its start, and nothing else: not a live
    process's, not a name of another form, not another folder's."""
    import subprocess

    from fem_mfc import checkpoint, config
    from fem_mfc.pipeline import run_config
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = os.getppid()                    # another process, alive
    names = [f"o.checkpoint.tmp-{dead.pid}", f"o.checkpoint.old-{dead.pid}",
             f"o.checkpoint.tmp-{alive}", "o.checkpoint.tmp-x1", f"p.checkpoint.tmp-{dead.pid}"]
    for n in names:
        (tmp_path / n).mkdir()
        (tmp_path / n / "nodal.npz").write_bytes(b"0" * 1000)
    raw = {"run": {"formulation": "hjb-fp"},
           "mesh": {"kind": "interval", "cells": 8, "lower": [-2.0], "upper": [2.0]},
           "problem": {"T": 0.5, "sigma": 0.6, "steps": 4, "Phi": "x0**2/2",
                       "G": "rho**2/2"},
           "solver": {"method": "newton"},
           "output": {"figures": False, "vtx": False, "progress": False}}
    s = run_config(config.from_dict(raw), tmp_path / "o", quiet=True)
    assert s["converged"] is True
    left = sorted(p for p in os.listdir(tmp_path) if ".checkpoint" in p)
    assert left == sorted(names[2:]), left
    assert "a checkpoint write of a process that ended" in (tmp_path / "o" / "run.log").read_text()
    # a finished run's checkpoint goes with this process's copies, not a live one's
    (tmp_path / f"o.checkpoint.tmp-{os.getpid()}").mkdir()
    checkpoint.remove(tmp_path / "o.checkpoint")
    left = sorted(p for p in os.listdir(tmp_path) if ".checkpoint" in p)
    assert left == sorted(names[2:]), left
    # killed between the two renames of a write (no RENAME_EXCHANGE): the checkpoint is missing,
    # its new copy complete (meta.json is written last) -- put back, not deleted
    ck = tmp_path / "q.checkpoint"
    for kind, tag in ((".tmp-", "new"), (".old-", "old")):
        d = tmp_path / f"q.checkpoint{kind}{dead.pid}"
        d.mkdir()
        (d / checkpoint.META).write_text(json.dumps({"tag": tag}))
    checkpoint.remove_stale(ck)
    assert json.loads((ck / checkpoint.META).read_text()) == {"tag": "new"}
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("q.")) == ["q.checkpoint"]


def test_a_restart_without_checkpoint_every_removes_the_checkpoint_it_read(tmp_path):
    """``checkpoint_every`` is not part of the problem: a restart may turn it off.  The
    checkpoint it read stayed beside the finished run (a later ``refine --resume`` would
    restart that level from it); now it goes once the results are in place."""
    from fem_mfc import config
    from fem_mfc.pipeline import run_config
    cfg = config.load(_config_file(tmp_path))
    cfg["solver"]["max_it"] = 2                 # stops (flagged), keeps its checkpoint
    cfg["solver"]["continuation"] = False
    assert run_config(cfg, tmp_path / "o", quiet=True)["converged"] is False
    ck = tmp_path / "o.checkpoint"
    assert ck.is_dir()
    cfg["solver"]["max_it"] = 50
    cfg["output"]["checkpoint_every"] = 0
    s = run_config(cfg, tmp_path / "o", quiet=True, restart=ck)
    assert s["converged"] is True and s["restarted_from"]["iteration"] == 2
    assert not ck.exists()


@pytest.mark.parametrize("guess", ["cole-hopf", "coarse"])
def test_a_checkpointed_run_starts_from_its_initial_guess(tmp_path, guess):
    """With ``checkpoint_every > 0`` the runner hands Newton a system of its own to
    checkpoint; ``initial_guess`` still applies to it (it was ignored: the Cole–Hopf guess's
    run started from the trivial guess and took 5 Newton iterations instead of 4): the same
    start, iterations and J as without the checkpoint."""
    from fem_mfc import checkpoint
    from fem_mfc.solvers.newton import newton
    _, st = _system(cells=12, steps=6)
    ref = newton(st.problem, guess=guess)
    _, st2 = _system(cells=12, steps=6)
    w = checkpoint.Writer(tmp_path / "w.checkpoint", st2, {}, 1)
    r = newton(st2.problem, guess=guess, system=st2, checkpoint=w)
    assert ref.converged and r.converged
    assert r.history[0]["guess"] == ref.history[0]["guess"], (r.history[0], ref.history[0])
    assert r.history[0]["guess"].startswith(guess)
    assert r.iterations == ref.iterations
    assert r.J == pytest.approx(ref.J, rel=1e-12)
