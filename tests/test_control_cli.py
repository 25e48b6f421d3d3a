"""The hjb-fp runner end to end through the CLI: outputs, exact-solution errors, the value
identity, PETSc options from the command line, and serial == 2 ranks."""
from __future__ import annotations

import json
import textwrap
import tomllib

import pytest

from helpers import REPO, assert_same_numbers, read_summary, run_cli, run_python

CONGESTED = textwrap.dedent("""
    [run]
    formulation = "hjb-fp"
    [mesh]
    kind = "disk"
    radius = 2.5
    h = 0.5
    [problem]
    T = 0.5
    sigma = 0.7
    steps = 6
    Phi = "0.5*((x0 - 1)**2 + x1**2)"
    G = "kappa*rho**2/2"
    params = { kappa = 2.0 }
    [rho0]
    mean = [-0.5, 0.0]
    std = 0.5
    [solver]
    method = "newton"
    [output]
    progress = false
""")


@pytest.mark.slow
def test_congested_disk_serial_equals_two_ranks(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONGESTED)
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    p = run_cli(["run", str(cfg), "--out", str(s1), "--quiet"])
    assert p.returncode == 0, p.stderr
    p = run_cli(["run", str(cfg), "--out", str(s2), "--quiet"], ranks=2)
    assert p.returncode == 0, p.stderr
    a, b = read_summary(s1), read_summary(s2)
    assert_same_numbers(a, b, ["J", "J_value_identity", "mass_error", "iterations", "ndofs",
                               "nsteps"], rtol=1e-8, atol=1e-12)
    assert a["mass_error"] < 1e-10 and a["iterations"] <= 8
    # with congestion the value identity has the extra term ∫∫(G − ρG'): J ≠ ∫u(0)ρ_0 alone
    assert abs(a["J"] - a["J_value_identity"]) < 1e-8 * abs(a["J"])
    for f in ("rho.bp", "u.bp", "velocity.bp", "rho_layers.png", "history.png", "config.toml"):
        assert (s1 / f).exists() and (s2 / f).exists(), f


def test_petsc_options_reach_snes(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONGESTED.replace("[output]", "[output]\nfigures = false\nvtx = false"))
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "o"), "-mfc_snes_monitor",
                 "-mfc_snes_linesearch_type", "basic"])
    assert p.returncode == 0, p.stderr
    assert "SNES Function norm" in p.stdout + p.stderr


def test_run_log_has_the_newton_steps(tmp_path):
    """run.log of a Newton run said "solving …" and "done" only: no residuals.  Now it has a
    line per Newton step (residual, Krylov iterations, line-search step) — the numbers of
    summary.json's history — and the verdict, with --quiet too."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONGESTED.replace("[output]", "[output]\nfigures = false\nvtx = false"))
    out = tmp_path / "o"
    p = run_cli(["run", str(cfg), "--out", str(out), "--quiet"])
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == ""                              # --quiet: nothing on stderr
    s = read_summary(out)
    log = (out / "run.log").read_text().splitlines()
    steps = [ln.split("newton", 1)[1].split() for ln in log if " newton " in ln]
    history = s["history"]
    assert len(steps) == len(history) == s["iterations"] + 1, log
    for k, (words, h) in enumerate(zip(steps, history)):
        assert int(words[0]) == k and words[3] == f"{h['residual']:.3e}", (words, h)
        if k:
            assert words[7] == str(history[k - 1]["ksp_its"]), (words, history[k - 1])
            assert float(words[10]) == pytest.approx(history[k - 1]["step"], rel=1e-2)
    assert any(f"newton: converged after {s['iterations']} iterations" in ln for ln in log)


@pytest.mark.slow
def test_divergent_newton_is_written_flagged_exit_3(tmp_path):
    """A solve that does not meet its tolerance is not a success: exit 3, warning lines
    naming the figures (no traceback), results written with "converged": false."""
    cfg = tmp_path / "c.toml"
    bad = CONGESTED.replace("kappa = 2.0", "kappa = 1e12").replace(
        'method = "newton"', 'method = "newton"\nmax_it = 2')
    cfg.write_text(bad)
    out = tmp_path / "o"
    # (exact LU stages, -mfc_continuation_linear lu, solve this small problem: the default
    # sweep stages, named here, do not)
    p = run_cli(["run", str(cfg), "--out", str(out), "--quiet",
                 "-mfc_continuation_linear", "sweep"])
    assert p.returncode == 3, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in p.stderr and all(ln.startswith("fem-mfc: ") for ln in lines)
    assert any("did not converge" in ln for ln in lines), p.stderr
    s = read_summary(out)
    assert s["converged"] is False and s["flags"] and "continuation" in s


def test_a_flag_is_one_line_on_the_console_and_kept_in_run_log(tmp_path):
    """Without --quiet each flag of a flagged run was printed twice: as the run's log line
    ("HH:MM:SS warning: …") and again as the CLI's "fem-mfc: warning: …" at the end.  Now
    once on the console (the CLI's line), and the log line in run.log."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('''[run]
formulation = "hjb-fp"
[mesh]
kind = "interval"
cells = 16
[problem]
steps = 4
G = "rho**2/2"
[rho0]
kind = "gaussian"
mean = [0.5]
std = 0.1
[solver]
method = "newton"
[output]
figures = false
''')
    out = tmp_path / "o"
    p = run_cli(["run", str(cfg), "--out", str(out), "-mfc_snes_max_it", "1"])
    assert p.returncode == 3, p.stderr
    flags = read_summary(out)["flags"]
    assert flags
    for flag in flags:
        assert p.stderr.count(flag) == 1, p.stderr
        assert f"fem-mfc: warning: {flag}" in p.stderr
        assert f"warning: {flag}" in (out / "run.log").read_text()


@pytest.mark.slow
def test_refine_lq_1d_space_rates(tmp_path):
    out = tmp_path / "conv"
    p = run_cli(["refine", str(REPO / "demos" / "lq_gaussian_1d.toml"), "--levels", "3",
                 "--in", "both", "--out", str(out)])
    assert p.returncode == 0, p.stderr
    conv = json.loads((out / "convergence.json").read_text())
    for name in ("err_u_L2", "err_rho_L2", "err_J"):
        assert conv["rates"][name][-1] > 1.8, (name, conv["rates"])
    # a line per level as it finishes and the orders at the end (the study was silent: the
    # levels run quietly)
    lines = p.stderr.splitlines()
    for k, row in enumerate(conv["levels"]):
        assert any(ln.startswith(f"fem-mfc: level {k + 1}/3 (run): {row['ndofs']} dofs")
                   and f"err_J = {row['err_J']:.3e}" in ln for ln in lines), p.stderr
    assert any(ln.startswith("fem-mfc: observed orders: err_u_L2 ") and str(out) in ln
               for ln in lines), p.stderr


@pytest.mark.slow
@pytest.mark.parametrize("demo,says", [
    ("congested_square", "none applies with problem.Phi = '0.4*sin"),
    ("crowds_crossing", "none applies with [[population]] tables"),
    ("heat_disk", None),
    ("lq_gaussian_1d", "set [exact] solution = 'lq-gaussian' or 'manufactured'")])
def test_refine_advises_only_exact_solutions_the_config_takes(demo, says):
    """Without [exact], fem-mfc refine advised every exact solution of the formulation:
    the congested square was told to set 'lq-gaussian' or 'manufactured', which then refused
    its Phi (both set V, Phi and rho0 themselves), the heat demo with a mixture rho0
    'heat-gaussian' (needs a Gaussian).  It names what leaves none, or the ones that fit."""
    from fem_mfc import config
    from fem_mfc.errors import UserError
    from fem_mfc.refine import refinement_study
    raw = tomllib.loads((REPO / "demos" / f"{demo}.toml").read_text())
    raw.pop("exact", None)
    if demo == "heat_disk":
        raw["rho0"] = {"kind": "mixture", "means": [[0.0, 0.0], [0.3, 0.0]],
                       "stds": [0.3, 0.3], "weights": [1.0, 1.0]}
        says = "none applies with rho0.kind = 'mixture'"
    with pytest.raises(UserError) as e:
        refinement_study(config.validate(raw, source="c.toml"), "unused", levels=2,
                         config_path="c.toml")
    assert says in str(e.value), str(e.value)


def test_refine_quiet_says_nothing_on_success(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text((REPO / "demos" / "lq_gaussian_1d.toml").read_text()
                   .replace("cells = 32", "cells = 16").replace("steps = 64", "steps = 8"))
    p = run_cli(["refine", str(cfg), "--levels", "2", "--in", "both", "--quiet", "--out",
                 str(tmp_path / "conv")])
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert (tmp_path / "conv" / "convergence.json").is_file()


@pytest.mark.slow
def test_refine_in_time_on_a_coarse_mesh_warns(tmp_path):
    """--in time on the 32-cell LQ demo: the spatial error of the fixed mesh dominates, the
    observed orders are ≈ 0 (−3e-4 for J).  One warning line names the norms and the cause;
    convergence.json keeps it.  The study itself succeeds (exit 0)."""
    out = tmp_path / "conv"
    p = run_cli(["refine", str(REPO / "demos" / "lq_gaussian_1d.toml"), "--levels", "3",
                 "--in", "time", "--out", str(out)])
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if "observed orders below" in ln]
    assert len(lines) == 1 and "err_J" in lines[0] and "spatial error" in lines[0], p.stderr
    conv = json.loads((out / "convergence.json").read_text())
    assert conv["warning"] == lines[0].split("warning: ", 1)[1]
    assert max(conv["rates"]["err_J"]) < 0.5


def test_low_orders_are_named_only_where_they_are_low():
    from fem_mfc.refine import low_orders
    assert low_orders({"err_u_L2": [1.98, 2.01], "err_J": [2.0, None]}, "both") is None
    line = low_orders({"err_u_L2": [1.98, 2.01], "err_J": [0.3, -0.1]}, "space")
    assert "err_J 0.3, -0.1" in line and "err_u_L2" not in line and "time error" in line


@pytest.mark.slow
def test_lq_demo_quick(tmp_path):
    p = run_python([REPO / "demos" / "demo_lq_gaussian.py", "--quick", "--out", tmp_path])
    assert p.returncode == 0, p.stderr
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["solve"]["err_J"] < 0.05
    assert min(r for r in s["convergence"]["rates"]["err_rho_L2"] if r) > 1.7
    assert (tmp_path / "solve" / "rho_exact.png").is_file()
    assert (tmp_path / "solve" / "rho_profile.png").stat().st_size > 5000


@pytest.mark.slow
def test_cole_hopf_formulation_with_congestion_uses_the_pair(tmp_path):
    """formulation = 'cole-hopf' with G ≠ 0 solves the cubic Schrödinger pair (MODEL §4);
    its J agrees with the HJB–FP Newton solution to discretisation error."""
    cfg = tmp_path / "c.toml"
    base = textwrap.dedent("""
        [run]
        formulation = "{f}"
        [mesh]
        kind = "interval"
        cells = 64
        lower = [-3.0]
        upper = [3.0]
        [problem]
        T = 0.5
        sigma = 0.8
        steps = 16
        Phi = "0.5*(x0-0.5)**2"
        G = "kappa*rho**2/2"
        params = {{ kappa = 0.5 }}
        [rho0]
        std = 0.4
        [output]
        figures = false
    """)
    out = {}
    for f in ("cole-hopf", "hjb-fp"):
        cfg.write_text(base.format(f=f))
        p = run_cli(["run", str(cfg), "--out", str(tmp_path / f), "--quiet"])
        assert p.returncode == 0, p.stderr
        out[f] = read_summary(tmp_path / f)
    assert out["cole-hopf"]["method"] == "cole-hopf-pair"
    assert out["hjb-fp"]["method"] == "newton"
    assert abs(out["cole-hopf"]["J"] - out["hjb-fp"]["J"]) < 5e-3 * out["hjb-fp"]["J"]
    assert out["cole-hopf"]["mass_error"] < 1e-10


@pytest.mark.slow
def test_cole_hopf_guess_and_inexact_sweep_newton_from_the_cli(tmp_path):
    """`[solver] initial_guess = "cole-hopf"` and the sweep path with adaptive forcing (chosen
    on the command line) reproduce the default run's J; a bad forcing name is one line."""
    plain = CONGESTED.replace("[output]", "[output]\nfigures = false\nvtx = false")
    cfg, cfg_ch = tmp_path / "c.toml", tmp_path / "ch.toml"
    cfg.write_text(plain)
    cfg_ch.write_text(plain.replace('method = "newton"',
                                    'method = "newton"\ninitial_guess = "cole-hopf"'))
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "a"), "--quiet"])
    assert p.returncode == 0, p.stderr
    p = run_cli(["run", str(cfg_ch), "--out", str(tmp_path / "b"), "--quiet", "-mfc_linear",
                 "sweep"])
    assert p.returncode == 0, p.stderr
    a, b = read_summary(tmp_path / "a"), read_summary(tmp_path / "b")
    assert abs(a["J"] - b["J"]) < 1e-9 * abs(a["J"])
    assert a["history"][0]["guess"] == "trivial"
    assert b["history"][0]["guess"] in ("cole-hopf", "trivial (the Cole-Hopf guess had the "
                                        "larger residual)")
    assert all("ksp_rtol" in h for h in b["history"][:-1])
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "c"), "--quiet",
                 "-mfc_newton_forcing", "sloppy", "-mfc_linear", "sweep"])
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "newton_forcing" in lines[0], p.stderr


@pytest.mark.slow
def test_an_interrupted_study_leaves_no_convergence_table_of_another(tmp_path, monkeypatch):
    """Ctrl-C in a study over an earlier one left the earlier convergence.json (other runs'
    numbers) beside the new levels, and Ctrl-C while it plotted left a new convergence.json
    without its figure.  convergence.json is written last and only beside its own levels."""
    from fem_mfc import config, pipeline, refine
    cfg = config.load(REPO / "demos" / "lq_gaussian_1d.toml")
    done = []

    def fake_run(lc, folder, *args, **kw):
        if len(done) == stop_at:
            raise KeyboardInterrupt
        done.append(folder)
        return {"h": 1.0 / (len(done)), "tau": 0.1, "ndofs": 10 * len(done), "nsteps": 4,
                "err_rho_L2": 0.1 / 4 ** len(done), "converged": True}

    monkeypatch.setattr(pipeline, "run_config", fake_run)     # refine imports it per call
    out = tmp_path / "study"
    stop_at = 99
    refine.refinement_study(cfg, out, levels=2)
    tables = ("convergence.json", "convergence.csv", "convergence.png")
    assert all((out / name).is_file() for name in tables)
    done.clear()
    stop_at = 1                                   # the second level is interrupted
    with pytest.raises(KeyboardInterrupt):
        refine.refinement_study(cfg, out, levels=2)
    assert not any((out / name).exists() for name in tables)

    def interrupted_plot(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(refine, "_plot", interrupted_plot)
    done.clear()
    stop_at = 99
    with pytest.raises(KeyboardInterrupt):
        refine.refinement_study(cfg, out, levels=2)
    assert not (out / "convergence.json").exists()


def test_resume_runs_again_a_level_whose_mesh_file_changed(tmp_path):
    """refine --resume reused a converged level whose config.toml names the same mesh file,
    whatever the file holds now: a mesh regenerated between the studies mixed levels of the
    old mesh into the table.  A level older than its mesh file (or rho0 checkpoint) runs."""
    import os
    import shutil

    from fem_mfc import config
    from fem_mfc.pipeline import reproducing, run_settings
    from fem_mfc.refine import finished_level
    msh = tmp_path / "m.msh"
    shutil.copy(REPO / "meshes" / "disk.msh", msh)
    cfg = config.from_dict({"mesh": {"kind": "file", "file": str(msh)},
                            "problem": {"steps": 4}, "exact": {"solution": "lq-gaussian"}})
    level = tmp_path / "level_0"
    level.mkdir()
    (level / "config.toml").write_text(config.dumps(reproducing(cfg, run_settings(cfg))))
    (level / "summary.json").write_text(json.dumps({"converged": True, "J": 1.0}))
    past = (level / "summary.json").stat().st_mtime - 100
    os.utime(msh, (past, past))
    assert finished_level(level, cfg)["J"] == 1.0                    # reused
    shutil.copy(REPO / "meshes" / "lshape.msh", msh)                 # regenerated since
    assert finished_level(level, cfg) is None


def test_resume_compares_the_mesh_files_contents_not_its_time(tmp_path):
    """refine --resume judged a level's mesh file by its time stamp against the level's
    summary.json: a file replaced by an older copy of another mesh (``cp -p``, ``git
    checkout``) reused the level of the old mesh, and a file only touched ran the level
    again.  Each run records the digest of the files it reads (summary ``input_sha256``, the
    digest a checkpoint restart compares) and --resume compares contents."""
    import os
    import shutil

    from fem_mfc import config
    from fem_mfc.checkpoint import file_digest
    from fem_mfc.refine import refinement_study
    msh = tmp_path / "m.msh"
    shutil.copy(REPO / "meshes" / "disk.msh", msh)
    cfg = config.from_dict({"run": {"formulation": "heat"},
                            "mesh": {"kind": "file", "file": str(msh)},
                            "problem": {"T": 0.05, "steps": 2},
                            "exact": {"solution": "heat-gaussian"},
                            "output": {"figures": False, "vtx": False}})
    out = tmp_path / "study"

    def study():
        conv = refinement_study(cfg, out, levels=1, where="time", resume=True)
        return conv["levels"][0]["run"]
    assert study() == "run"
    summary = json.loads((out / "level_0" / "summary.json").read_text())
    assert summary["input_sha256"] == {"mesh": file_digest(msh)}
    later = (out / "level_0" / "summary.json").stat().st_mtime + 100
    os.utime(msh, (later, later))                   # touched: the same mesh
    assert study() == "reused"
    shutil.copy(REPO / "meshes" / "lshape.msh", msh)   # another mesh, with an older time
    past = (out / "level_0" / "summary.json").stat().st_mtime - 100
    os.utime(msh, (past, past))
    assert study() == "run"
    assert json.loads((out / "level_0" / "summary.json").read_text())["input_sha256"] == \
        {"mesh": file_digest(REPO / "meshes" / "lshape.msh")}


@pytest.mark.slow
def test_refinement_study_resumes(tmp_path):
    """``refine --resume`` continues a study: converged levels of the same config are reused,
    a level with a checkpoint restarts from it, the rest run; the table equals the one of a
    study run at once.  Here the first attempt stops every level's Newton after 2 iterations
    (flagged, checkpoints kept), the second adds a level."""
    from fem_mfc import config
    from fem_mfc.refine import refinement_study
    raw = tomllib.loads((REPO / "demos" / "lq_gaussian_1d.toml").read_text())
    raw["problem"]["steps"] = 16
    raw["solver"]["continuation"] = False       # stop at -mfc_snes_max_it 2 (flagged)
    raw["output"] = {"checkpoint_every": 1}
    cfg = config.from_dict(raw)
    fresh = refinement_study(cfg, tmp_path / "fresh", levels=3)
    cut = refinement_study(cfg, tmp_path / "conv", levels=2,
                           petsc_options={"mfc_snes_max_it": "2"})
    assert [r["converged"] for r in cut["levels"]] == [False, False]
    assert (tmp_path / "conv" / "level_1.checkpoint" / "meta.json").is_file()
    again = refinement_study(cfg, tmp_path / "conv", levels=3, resume=True)
    assert [r["run"] for r in again["levels"]] == ["restarted", "restarted", "run"]
    assert all(r["converged"] for r in again["levels"])
    for a, b in zip(again["levels"], fresh["levels"]):
        for k in ("err_u_L2", "err_rho_L2", "err_J"):
            assert a[k] == pytest.approx(b[k], rel=1e-8), k
    assert not (tmp_path / "conv" / "level_1.checkpoint").exists()
    last = refinement_study(cfg, tmp_path / "conv", levels=3, resume=True)
    assert [r["run"] for r in last["levels"]] == ["reused"] * 3
    assert last["rates"] == again["rates"]
    # a study of another problem in the same folder: nothing reused, its checkpoint ignored
    raw["problem"]["sigma"] = 0.7
    refinement_study(config.from_dict(raw), tmp_path / "other", levels=1,
                     petsc_options={"mfc_snes_max_it": "2"})
    (tmp_path / "other" / "level_0.checkpoint").rename(tmp_path / "conv" / "level_0.checkpoint")
    (tmp_path / "conv" / "level_0" / "config.toml").write_text("# edited\n")
    mixed = refinement_study(cfg, tmp_path / "conv", levels=3, resume=True)
    assert [r["run"] for r in mixed["levels"]] == ["run", "reused", "reused"]
    assert mixed["levels"][0]["err_J"] == pytest.approx(fresh["levels"][0]["err_J"], rel=1e-8)


def test_a_study_with_fewer_levels_moves_the_others_aside(tmp_path, monkeypatch):
    """A study (``--resume`` or not) with fewer levels than the one before it in its folder
    left the earlier study's higher levels beside its own, under a convergence.json that does
    not list them.  They are moved aside as ``level_K.previous`` (an older one replaced), as
    ``run`` keeps the run it replaces; their checkpoints stay; a level another run is
    writing is refused with one line."""
    import fcntl
    import os

    from fem_mfc import config, pipeline, refine
    from fem_mfc.errors import UserError
    from fem_mfc.refine import refinement_study

    def fake_run(cfg, folder, *a, **k):          # a level: its folder and summary
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "summary.json").write_text(json.dumps({"steps": cfg["problem"]["steps"]}))
        return {"h": 0.1, "tau": 1.0 / cfg["problem"]["steps"], "ndofs": 10,
                "nsteps": cfg["problem"]["steps"], "err_J": 1.0 / cfg["problem"]["steps"],
                "converged": True}
    monkeypatch.setattr(pipeline, "run_config", fake_run)
    monkeypatch.setattr(refine, "_plot", lambda rows, where, path: path.write_bytes(b""))
    cfg = config.load(REPO / "demos" / "lq_gaussian_1d.toml")
    out = tmp_path / "conv"
    first = refinement_study(cfg, out, levels=4, where="time")
    assert first["moved_aside"] == []
    (out / "level_3.previous").mkdir()               # an older generation of level 3
    (out / "level_3.checkpoint").mkdir()
    again = refinement_study(cfg, out, levels=2, where="time", resume=True)
    assert again["moved_aside"] == ["level_2", "level_3"]
    assert sorted(os.listdir(out)) == ["convergence.csv", "convergence.json",
                                       "convergence.png", "level_0", "level_1",
                                       "level_2.previous", "level_3.checkpoint",
                                       "level_3.previous"]
    kept = json.loads((out / "level_3.previous" / "summary.json").read_text())
    assert kept["steps"] == cfg["problem"]["steps"] * 8              # the earlier level 3
    assert len(json.loads((out / "convergence.json").read_text())["levels"]) == 2
    refinement_study(cfg, out, levels=3, where="time")
    with open(out / ".level_2.lock", "w") as f:      # another run writes level 2
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(UserError, match="level_2: another run is writing"):
            refinement_study(cfg, out, levels=2, where="time")
    assert (out / "level_2" / "summary.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("change,key,words", [
    (('scheme = "crank-nicolson"', 'scheme = "backward-euler"\nstabilisation = "monotone"'),
     "discretisation.stabilisation", "exact solution"),
    (('formulation = "hjb-fp"', 'formulation = "cole-hopf"'), "run.formulation",
     "'hjb-fp' with solver.method")])      # (the demo's method = "newton": see below)
def test_refusals_of_an_exact_solution_name_the_key_set(tmp_path, change, key, words):
    """The monotone scheme and the Cole–Hopf formulation cannot take an exact solution's
    source terms: the message names the key the config set (it named solver.method, unset,
    and quoted a hard-coded "manufactured")."""
    text = (REPO / "demos" / "lq_gaussian_1d.toml").read_text()
    assert change[0] in text
    if "cole-hopf" in change[1]:      # the Cole-Hopf formulation reads no other solver.method
        text = text.replace('method = "newton"', 'method = "auto"')
    cfg = tmp_path / "c.toml"
    cfg.write_text(text.replace(change[0], change[1]))
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet"])
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert f"'{key}'" in lines[0] and words in lines[0] and "manufactured" not in lines[0]


def test_cole_hopf_run_reports_and_checks_its_step_residual(tmp_path):
    """The Cole–Hopf sweeps' summary said "residual": 0.0, a constant: their steps' linear
    solves were never checked.  CG + Jacobi to 1e-3 (-mfc_ch_ksp_type cg ...) moved the mass
    by 0.27 % (the sweeps keep it to 1e-15), within the discretisation's 5 %, and exited 0.
    The residual ‖b − Ax‖/‖b‖ of the steps is now computed and checked (exit 3 here)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(textwrap.dedent("""
        [run]
        formulation = "cole-hopf"
        [mesh]
        kind = "interval"
        cells = 64
        lower = [-4.0]
        upper = [4.0]
        [problem]
        sigma = 0.8
        steps = 20
        Phi = "0.5*(x0-1)**2"
        [output]
        vtx = false
        figures = false
        progress = false
    """))
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "good"), "--quiet"])
    s = read_summary(tmp_path / "good")
    assert p.returncode == 0 and s["checks"]["residual"]["ok"], p.stderr
    assert 0 < s["residual"] < 1e-12                # a factorisation solves each step
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "bad"), "--quiet", "-mfc_ch_step",
                 "ilu", "-mfc_ch_ksp_type", "cg", "-mfc_ch_pc_type", "jacobi",
                 "-mfc_ch_ksp_rtol", "1e-3"])
    s = read_summary(tmp_path / "bad")
    assert p.returncode == 3 and s["converged"] is False, (p.stderr, s["residual"])
    assert s["checks"]["mass"]["ok"] and s["mass_error"] > 1e-3     # what passed before
    assert 1e-5 < s["residual"] < 1e-2 and not s["checks"]["residual"]["ok"], s["residual"]
    assert "check 'residual' failed" in p.stderr


def test_cole_hopf_run_log_says_what_the_sweeps_did(tmp_path):
    """A Cole–Hopf solve (two linear sweeps) said "cole-hopf: converged after 0 iterations (),
    residual 0.000e+00" in run.log: no iterations, an empty reason and a residual nobody
    computed.  The line now gives J, its gap to the value identity and the mass error that
    decide the run, as summary.json has them."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(textwrap.dedent("""
        [mesh]
        kind = "interval"
        cells = 32
        [problem]
        steps = 8
        Phi = "0.5*x0**2"
        [rho0]
        mean = [0.3]
        [solver]
        method = "cole-hopf"
        [output]
        vtx = false
        figures = false
        progress = false
    """))
    out = tmp_path / "o"
    p = run_cli(["run", str(cfg), "--out", str(out), "--quiet"])
    assert p.returncode == 0, p.stderr
    s = read_summary(out)
    log = (out / "run.log").read_text()
    assert "after 0 iterations" not in log and "()" not in log, log
    line = next(ln for ln in log.splitlines() if "cole-hopf:" in ln)
    from fem_mfc.solvers.result import identity_gap
    gap = 100 * identity_gap(s["J"], s["J_value_identity"])
    assert f"J = {s['J']:.6g}, {gap:.2g} % off its value identity" in line, line
    assert f"mass error {s['mass_error']:.2g}" in line, line
