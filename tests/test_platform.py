"""Platform: CLI info, the heat smoke problem on every mesh kind (serial and 2 ranks),
outputs (summary, ParaView, figures, log, config copy), refinement rates, Docker/bootstrap."""
from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from helpers import REPO, assert_same_numbers, read_summary, run_cli

MESHES = {
    "interval": 'kind = "interval"\ncells = 32\nlower = [-3.0]\nupper = [3.0]',
    "rectangle": 'kind = "rectangle"\ncells = 12\nlower = [-3.0, -3.0]\nupper = [3.0, 3.0]',
    "box": 'kind = "box"\ncells = 5\nlower = [-3.0, -3.0, -3.0]\nupper = [3.0, 3.0, 3.0]',
    "disk": 'kind = "disk"\nradius = 3.0\nh = 0.5',
    "annulus": 'kind = "annulus"\nradius = 3.0\ninner_radius = 1.0\nh = 0.5',
    "lshape": 'kind = "lshape"\nradius = 3.0\nh = 0.5',
    "ball": 'kind = "ball"\nradius = 3.0\nh = 1.0',
    "file": f'kind = "file"\nfile = "{REPO}/meshes/disk.msh"',
}
MEAN = {"interval": "[0.0]", "box": "[0.0, 0.0, 0.0]", "ball": "[0.0, 0.0, 0.0]",
        "annulus": "[2.0, 0.0]", "lshape": "[-1.5, -1.5]"}


def heat_config(kind: str, figures: bool = True) -> str:
    return textwrap.dedent(f"""
        [run]
        formulation = "heat"
        [mesh]
        {{mesh}}
        [problem]
        T = 0.2
        sigma = 0.6
        steps = 4
        [rho0]
        mean = {MEAN.get(kind, "[0.0, 0.0]")}
        std = 0.6
        [output]
        figures = {str(figures).lower()}
        progress = false
    """).replace("{mesh}", MESHES[kind])


@pytest.mark.parametrize("command", ["schema", "info", "--help"])
def test_output_into_a_closed_pipe_ends_quietly(command):
    """``fem-mfc schema | head -1``: "Exception ignored on flushing sys.stdout:
    BrokenPipeError" and exit status 120.  Now no message and 141 (128 + SIGPIPE), as a
    program killed by SIGPIPE; --help likewise."""
    import os
    import subprocess
    import sys

    from helpers import env
    r, w = os.pipe()
    os.close(r)                                   # the reader is gone before anything is said
    try:
        p = subprocess.run([sys.executable, "-m", "fem_mfc", command], stdout=w,
                           stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO, timeout=120)
    finally:
        os.close(w)
    assert p.stderr == "" and p.returncode == 141, (p.returncode, p.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["schema", "info", "--help"])
def test_output_onto_a_full_disk_or_a_closed_stdout(command):
    """``fem-mfc schema > /dev/full`` ended in a traceback (the disk-full handler asked for
    the config of a command that has none); ``fem-mfc schema >&-`` in one about
    ``sys.stdout.flush``.  Now one line, exit 2, and a quiet exit 0."""
    import subprocess
    import sys

    from helpers import env
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "fem_mfc", command], stdout=full,
                           stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines == ["fem-mfc: error: standard output: cannot write (No space left on "
                     "device)"], p.stderr
    p = subprocess.run([sys.executable, "-c", "import os, runpy, sys; os.close(1); "
                        "sys.stdout = None; sys.argv = ['fem_mfc', sys.argv[1]]; "
                        "runpy.run_module('fem_mfc', run_name='__main__')", command],
                       stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO, timeout=120)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr


def test_info_prints_versions():
    p = run_cli(["info"])
    assert p.returncode == 0, p.stderr
    for name in ("dolfinx", "petsc", "mpi", "pyvista", "ranks"):
        assert re.search(rf"^{name}\s+\S", p.stdout, re.M), p.stdout
    assert re.search(r"^dolfinx\s+0\.9", p.stdout, re.M)


FAST_KINDS = ("interval", "disk", "ball")      # the others are slow (make test runs all)


def test_every_command_line_argument_has_help():
    """``fem-mfc refine --help`` listed config, --levels, --in and --out without a word, and
    ``run --help`` did not say that other -options go to PETSc or what the exit codes are."""
    import argparse

    from fem_mfc.cli import parser
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help, (name, action.dest)
    run = sub.choices["run"].format_help()
    assert "PETSc options" in run and "Exit status" in run and "3 the solve" in run


@pytest.mark.parametrize("argv", [["-h"], ["run", "-h"], ["run", "c.toml", "-h"],
                                  ["refine", "c.toml", "--levels", "2", "-h"], ["--version"]])
def test_h_and_version_answer_without_running_anything(argv, tmp_path, monkeypatch, capsys):
    """``fem-mfc -h`` said "the following arguments are required: command"; ``fem-mfc run
    c.toml -h`` ran the whole run and then warned "PETSc option -h was not used";
    ``--version`` was not known."""
    from fem_mfc import __version__
    from fem_mfc.cli import main
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert (f"fem-mfc {__version__}" in out) if argv == ["--version"] else "usage:" in out
    assert not (tmp_path / "results").exists()


def test_schema_is_printed_by_the_first_rank_only(monkeypatch, capsys):
    """``mpirun -n 2 fem-mfc schema`` printed the reference twice (info, --help and
    --version print once)."""
    from fem_mfc.cli import main
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    assert main(["schema"]) == 0
    assert capsys.readouterr().out.startswith("# Config reference")


@pytest.mark.slow
@pytest.mark.parametrize("kind", [pytest.param(k, marks=[] if k in FAST_KINDS else
                                               pytest.mark.slow) for k in sorted(MESHES)])
def test_heat_smoke_each_mesh_kind(kind, tmp_path):
    cfg = tmp_path / f"{kind}.toml"
    cfg.write_text(heat_config(kind, figures=kind in ("interval", "disk", "ball")))
    out = tmp_path / "out"
    p = run_cli(["run", str(cfg), "--out", str(out), "--quiet"])
    assert p.returncode == 0, p.stderr
    s = read_summary(out)
    assert s["mass_error"] < 1e-12            # the FP step conserves mass exactly
    assert s["min_rho"] > -1e-2             # P1 Galerkin: small undershoots on coarse meshes
    assert s["ndofs"] > 20 and s["nsteps"] == 4
    assert (out / "rho.bp").is_dir() and (out / "run.log").is_file()
    assert (out / "config.toml").read_text().count("[mesh]") == 1
    if kind in ("interval", "disk", "ball"):
        png = out / "rho_snapshots.png"
        assert png.is_file() and png.stat().st_size > 5000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_to_a_file_or_pipe_is_the_log_lines_only(tmp_path):
    """stderr into a file or a pipe (not --quiet) got the progress bar's redraws: lines of
    carriage returns and "it/s" between the log lines.  Bars are for terminals."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(heat_config("interval", figures=False).replace("progress = false", ""))
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "o")])
    assert p.returncode == 0, p.stderr
    assert "\r" not in p.stderr and "it/s" not in p.stderr, repr(p.stderr)
    assert "fem-mfc run:" in p.stderr and "done in" in p.stderr


@pytest.mark.slow
def test_heat_run_that_loses_mass_is_flagged(tmp_path):
    """The heat steps conserve the mass to the linear solver's tolerance: the run's check.
    CG + Jacobi to 1e-3 (`-heat_ksp_type cg -heat_pc_type jacobi -heat_ksp_rtol 1e-3`) lost
    0.33 % of the mass on the heat demo's disk and exited 0; now exit 3, flagged.
    The summary's ``residual`` was a constant 0.0; it is the largest relative residual
    ‖b − Aρ‖/‖b‖ of the steps, computed, and checked."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(heat_config("rectangle", figures=False))
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "good"), "--quiet"])
    s = read_summary(tmp_path / "good")
    assert p.returncode == 0 and s["checks"]["mass"]["ok"] and s["checks"]["residual"]["ok"]
    assert s["residual"] < 1e-12                # a factorisation solves each step
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "bad"), "--quiet", "-heat_ksp_type",
                 "cg", "-heat_pc_type", "jacobi", "-heat_ksp_rtol", "1e-2"])
    s = read_summary(tmp_path / "bad")
    assert p.returncode == 3 and s["converged"] is False, (p.stderr, s["mass_error"])
    assert not s["checks"]["mass"]["ok"]
    assert 1e-4 < s["residual"] < 1e-1 and not s["checks"]["residual"]["ok"], s["residual"]


@pytest.mark.parametrize("ranks", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_heat_run_with_a_negative_density_is_flagged(tmp_path, ranks):
    """The heat summary reported min_rho without checking it: one Crank–Nicolson step of a
    narrow Gaussian (40 cells, std 0.15, tau = 2) gave min rho = -0.64, 24 % of its maximum,
    and exited 0 (the HJB-FP runs flag below -0.1 max rho).  Backward Euler stays >= 0."""
    cfg = tmp_path / "c.toml"
    text = textwrap.dedent("""
        [run]
        formulation = "heat"
        [mesh]
        kind = "interval"
        cells = 40
        lower = [-5.0]
        upper = [5.0]
        [problem]
        T = 2.0
        sigma = 0.5
        steps = 1
        [rho0]
        mean = [0.0]
        std = 0.15
        [discretisation]
        scheme = "crank-nicolson"
        [output]
        figures = false
        progress = false
    """)
    cfg.write_text(text)
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "cn"), "--quiet"], ranks=ranks)
    s = read_summary(tmp_path / "cn")
    assert p.returncode == 3 and s["converged"] is False, p.stderr
    assert s["checks"]["mass"]["ok"] and not s["checks"]["min_rho"]["ok"], s["checks"]
    assert s["min_rho"] < -0.5 and "backward-euler" in s["checks"]["min_rho"]["hint"]
    cfg.write_text(text.replace("crank-nicolson", "backward-euler"))
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "be"), "--quiet"], ranks=ranks)
    s = read_summary(tmp_path / "be")
    assert p.returncode == 0 and s["checks"]["min_rho"]["ok"], p.stderr


@pytest.mark.parametrize("kind", [
    pytest.param(k, marks=[] if k == "rectangle" else pytest.mark.slow)
    for k in sorted(MESHES)])
def test_heat_serial_equals_two_ranks(kind, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(heat_config(kind, figures=kind == "disk"))
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    assert run_cli(["run", str(cfg), "--out", str(s1), "--quiet"]).returncode == 0
    p = run_cli(["run", str(cfg), "--out", str(s2), "--quiet"], ranks=2)
    assert p.returncode == 0, p.stderr
    a, b = read_summary(s1), read_summary(s2)
    assert a["ranks"] == 1 and b["ranks"] == 2
    assert_same_numbers(a, b, ["mass", "mass_error", "min_rho", "ndofs", "nsteps", "h"],
                        rtol=1e-9, atol=1e-13)
    if kind == "disk":
        assert (s2 / "rho_snapshots.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("formulation,advice", [("heat", "'heat-gaussian' for formulation "
                                                             "'heat'"),
                                                 ("hjb-fp", "'lq-gaussian' or 'manufactured'")])
def test_refine_without_an_exact_solution_names_the_formulations_own(formulation, advice):
    """A heat config without [exact] was told to set 'lq-gaussian' or 'manufactured', which
    heat refuses; the advice is the formulation's own exact solutions."""
    from fem_mfc import config
    from fem_mfc.errors import UserError
    from fem_mfc.refine import refinement_study
    cfg = config.from_dict({"run": {"formulation": formulation},
                            "mesh": {"kind": "interval", "lower": [-1.0], "upper": [1.0]}})
    with pytest.raises(UserError, match="no exact solution") as e:
        refinement_study(cfg, "unused", levels=2, config_path="c.toml")
    assert advice in str(e.value), e.value


@pytest.mark.slow
def test_refine_heat_rates(tmp_path):
    """Crank–Nicolson + P1 refined in space and time together: order 2."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(textwrap.dedent("""
        [run]
        formulation = "heat"
        [mesh]
        kind = "rectangle"
        cells = 8
        lower = [-3.0, -3.0]
        upper = [3.0, 3.0]
        [problem]
        T = 0.2
        sigma = 0.8
        steps = 4
        [discretisation]
        scheme = "crank-nicolson"
        [rho0]
        std = 0.5
        [exact]
        solution = "heat-gaussian"
    """))
    out = tmp_path / "ref"
    p = run_cli(["refine", str(cfg), "--levels", "4", "--in", "both", "--out", str(out)])
    assert p.returncode == 0, p.stderr
    conv = json.loads((out / "convergence.json").read_text())
    assert len(conv["levels"]) == 4
    for lev in conv["levels"]:
        assert {"h", "tau", "ndofs", "nsteps", "err_rho_L2"} <= set(lev)
    assert conv["rates"]["err_rho_L2"][-1] > 1.85
    assert (out / "convergence.csv").read_text().startswith("level,h,tau")
    import csv
    with open(out / "convergence.csv", newline="") as f:   # plain cells: run, not 'run'
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == ["run"] * 4 and table[0]["converged"] == "True"
    assert float(table[-1]["err_rho_L2"]) == conv["levels"][-1]["err_rho_L2"]
    assert (out / "convergence.png").stat().st_size > 5000


def test_dockerfile_and_bootstrap_share_the_package_list():
    docker = (REPO / "Dockerfile").read_text()
    boot = (REPO / "bin" / "fem-env").read_text()
    assert re.search(r"^FROM debian:trixie-slim", docker, re.M)
    assert "COPY env/packages.txt" in docker
    assert 'PKGLIST="$REPO/env/packages.txt"' in boot
    # the same filter (strip comments and blanks) in both
    filt = "sed -e 's/#.*//' -e 's/[[:space:]]//g'"
    assert filt in docker and filt in boot
    pkgs = [ln.split("#")[0].strip() for ln in (REPO / "env/packages.txt").read_text().splitlines()]
    pkgs = [p for p in pkgs if p]
    for needed in ("python3-dolfinx-real", "python3-petsc4py-real", "python3-mpi4py",
                   "python3-pyvista", "python3-meshio", "python3-gmsh", "python3-adios4dolfinx",
                   "python3-sklearn", "python3-torch", "python3-pytest-mpi", "openmpi-bin",
                   "xvfb"):
        assert needed in pkgs
    assert "trixie" in boot


def test_readme_commands_are_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make demo" in readme and "make test" in readme
    assert re.search(r"^make test\b", ci, re.M)


def test_package_imports_from_any_folder(tmp_path):
    """A script in a folder outside the repository imports fem_mfc (bin/fem-env puts the
    repository on PYTHONPATH, the Docker image installs it with pip install -e): run with this
    environment as it is, not with the test helpers' PYTHONPATH."""
    import os
    import subprocess
    import sys
    script = tmp_path / "where.py"
    script.write_text("import fem_mfc\nprint(fem_mfc.__file__)\n")
    p = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=dict(os.environ),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert Path(p.stdout.strip()).resolve().parent == REPO / "fem_mfc"


def test_scripts_leave_sys_path_alone_and_tests_import_no_demo():
    """Demos, benchmarks and mesh scripts import the installed package (no sys.path edits);
    demos share only demos/_common.py; no test imports a demo module."""
    scripts = [*(REPO / "demos").glob("*.py"), *(REPO / "benchmarks").glob("*.py"),
               *(REPO / "meshes").glob("*.py")]
    assert len(scripts) > 10
    for f in scripts:
        assert "sys.path" not in f.read_text(), f.name
    demos = {f.stem for f in (REPO / "demos").glob("*.py")}
    for f in (REPO / "tests").glob("*.py"):
        imported = set(re.findall(r"^\s*(?:from|import)\s+([\w.]+)", f.read_text(), re.M))
        assert not imported & demos, (f.name, imported & demos)
    assert not (REPO / "fem_mfc" / "learning" / "demo.py").exists()


def test_form_lookup_reads_the_cached_module_without_listing_the_cache(monkeypatch):
    """compat.fast_jit_lookup: a form compiled before is found by its path (FFCx 0.9 lists
    the whole JIT cache folder per form), and assembles to the same value."""
    import importlib.machinery

    from mpi4py import MPI

    import dolfinx
    import ufl

    from fem_mfc import compat
    assert compat.fast_jit_lookup()
    mesh = dolfinx.mesh.create_unit_square(MPI.COMM_SELF, 3, 3)
    x = ufl.SpatialCoordinate(mesh)
    form = (x[0] ** 2 + 7.25 * x[1]) * ufl.dx          # compiled (or found) once here
    first = dolfinx.fem.assemble_scalar(dolfinx.fem.form(form))

    def no_listing(*args, **kwargs):
        raise AssertionError("the JIT cache folder was listed")
    monkeypatch.setattr(importlib.machinery, "FileFinder", no_listing)
    mesh2 = dolfinx.mesh.create_unit_square(MPI.COMM_SELF, 5, 2)
    x2 = ufl.SpatialCoordinate(mesh2)
    again = dolfinx.fem.assemble_scalar(dolfinx.fem.form((x2[0] ** 2 + 7.25 * x2[1]) * ufl.dx))
    assert abs(first - (1 / 3 + 7.25 / 2)) < 1e-12
    assert abs(again - first) < 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("formulation,mesh", [
    ("heat", {"kind": "rectangle", "cells": 6, "lower": [-2.0, -2.0], "upper": [2.0, 2.0]}),
    ("hjb-fp", {"kind": "interval", "cells": 16, "lower": [-2.0], "upper": [2.0]})])
def test_animation_writes_a_gif_of_the_density(formulation, mesh, tmp_path):
    """``[output] animation = true`` was read by nothing: no GIF and no word.  Now every run
    with a density series writes ``<series>.gif`` (2D: the field; 1D: curves), listed in
    summary.json, also with figures off."""
    import imageio.v2 as imageio
    import numpy as np

    from fem_mfc import config
    from fem_mfc.pipeline import run_config
    raw = {"run": {"formulation": formulation}, "mesh": mesh,
           "problem": {"T": 0.3, "sigma": 0.6, "steps": 6},
           "rho0": {"kind": "gaussian", "mean": [0.0] * len(mesh["lower"]), "std": 0.5},
           "output": {"animation": True, "figures": False, "vtx": False, "progress": False}}
    s = run_config(config.from_dict(raw), tmp_path / "o", quiet=True)
    assert s["animations"] == ["rho.gif"]
    frames = imageio.mimread(tmp_path / "o" / "rho.gif")
    assert len(frames) == 7 and frames[0].ndim == 3
    assert not np.array_equal(frames[0], frames[-1])          # the density moved


def test_animation_keeps_a_bounded_number_of_frames(tmp_path):
    """A series of 1000 writes keeps at most 2·MAX_FRAMES copies of the density for its GIF
    (it kept all of them: 500 copies for a 500-step NLS run), evenly spaced, and the last
    write's, so the animation still ends at the final time."""
    from mpi4py import MPI

    import dolfinx
    import numpy as np

    from fem_mfc.io import MAX_FRAMES, TimeSeries
    m = dolfinx.mesh.create_interval(MPI.COMM_SELF, 4, [0.0, 1.0])
    rho = dolfinx.fem.Function(dolfinx.fem.functionspace(m, ("Lagrange", 1)), name="rho")
    ts = TimeSeries(tmp_path, "rho", [rho], vtx=False, movie=True)
    for k in range(1000):
        rho.x.array[:] = k
        ts.write(0.01 * k)
    movie = ts.movie_frames()
    assert MAX_FRAMES <= len(ts.frames) <= 2 * MAX_FRAMES
    times = [t for t, _ in movie]
    assert times[0] == 0.0 and times[-1] == pytest.approx(9.99) and np.all(np.diff(times) > 0)
    assert len(set(np.round(np.diff(times[:-1]), 12))) == 1        # evenly spaced
    assert all(np.all(f.x.array == round(t / 0.01)) for t, f in movie)


@pytest.mark.slow
def test_animation_of_several_populations_shows_the_total_density(tmp_path):
    """With [[population]] the density series holds one rho_k per population: no GIF was
    written (and nothing said).  Now the GIF shows their sum."""
    import tomllib

    from fem_mfc import config
    from fem_mfc.pipeline import run_config
    raw = tomllib.loads((REPO / "demos" / "crowds_crossing.toml").read_text())
    raw["mesh"]["cells"], raw["problem"]["steps"] = 16, 6
    raw["discretisation"] = {**raw.get("discretisation", {}), "scheme": "backward-euler"}
    raw["output"] = {"animation": True, "figures": False, "vtx": False, "progress": False}
    s = run_config(config.from_dict(raw), tmp_path / "o", quiet=True)
    assert s["animations"] == ["rho.gif"] and (tmp_path / "o" / "rho.gif").is_file()
