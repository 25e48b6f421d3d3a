"""Item 1 of issue 14: PETSc options from a config file cannot write files, open windows,
start debuggers or load modules outside fem_mfc; plain monitors and views to stdout stay."""
from __future__ import annotations

import textwrap

import pytest

from fem_mfc import config
from fem_mfc.errors import ConfigError
from helpers import read_summary, run_cli

BASE = {"run": {"formulation": "heat"},
        "mesh": {"kind": "interval", "lower": [-3.0], "upper": [3.0]},
        "rho0": {"mean": [0.0]}}


def _cfg(opts):
    raw = {k: dict(v) for k, v in BASE.items()}
    raw["solver"] = {"petsc_options": opts}
    return config.from_dict(raw)


REFUSED = [
    ("mfc_snes_monitor", "ascii:/any/path"),
    ("mfc_snes_monitor", ":file.txt"),
    ("ksp_view", "ascii:out.txt"),
    ("ksp_view", "ascii:out.txt:ascii_info"),
    ("mat_view", "binary:/tmp/m.bin"),
    ("mat_view", "binary"),
    ("snes_monitor", "draw"),
    ("snes_monitor", "draw::draw_lg"),
    ("vec_view", "hdf5:v.h5"),
    ("vec_view", "vtk:v.vtk"),
    ("ksp_monitor", "socket"),
    ("ksp_monitor", "../escape"),
    ("log_view", ""),
    ("log_view", ":log.txt"),
    ("log_trace", ""),
    ("log_all", True),
    ("options_monitor", ""),
    ("history", "h.txt"),
    ("malloc_dump", ""),
    ("on_error_attach_debugger", ""),
    ("start_in_debugger", "gdb"),
    ("viewer_binary_filename", "x.bin"),
    ("options_file", "other.opts"),
    ("info", "info.txt"),
    ("ksp_monitor_lg_residualnorm", ""),
    ("pc_python_type", "os.system"),
    ("snes_python_type", "mymodule.Solver"),
    ("bad name", "1"),
]


@pytest.mark.parametrize("name,value", REFUSED, ids=[f"{n}={v}" for n, v in REFUSED])
def test_refused_in_config(name, value):
    with pytest.raises(ConfigError) as e:
        _cfg({name: value})
    msg = str(e.value)
    assert f"solver.petsc_options.{name}" in msg
    assert "\n" not in msg


ALLOWED = [("mfc_snes_monitor", ""), ("ksp_view", "::ascii_info"), ("ksp_view", "ascii"),
           ("snes_converged_reason", ""), ("ksp_type", "gmres"), ("ksp_rtol", 1e-8),
           ("pc_factor_mat_solver_type", "mumps"), ("snes_linesearch_type", "basic"),
           ("mfc_newton_affine_blocks", False), ("snes_max_it", 30), ("info", ""),
           ("pc_python_type", "fem_mfc.solvers.kkt_pc.SweepPC")]


@pytest.mark.parametrize("name,value", ALLOWED, ids=[f"{n}={v}" for n, v in ALLOWED])
def test_allowed_in_config(name, value):
    assert _cfg({name: value})["solver"]["petsc_options"][name] == value


GOOD = textwrap.dedent("""
    [run]
    formulation = "heat"
    [mesh]
    kind = "interval"
    cells = 8
    lower = [-3.0]
    upper = [3.0]
    [problem]
    T = 0.1
    steps = 2
    [rho0]
    mean = [0.0]
    [output]
    figures = false
""")


def test_cli_refuses_file_target_and_writes_nothing(tmp_path):
    target = tmp_path / "escaped.txt"
    out = tmp_path / "out"
    cfg = tmp_path / "c.toml"
    cfg.write_text(GOOD)
    assert run_cli(["run", str(cfg), "--out", str(out), "--quiet"]).returncode == 0
    before = read_summary(out)
    cfg.write_text(GOOD + textwrap.dedent(f"""
        [solver]
        petsc_options = {{ heat_ksp_view = "ascii:{target}", log_view = ":{target}.log" }}
    """))
    p = run_cli(["run", str(cfg), "--out", str(out), "--quiet"])
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "solver.petsc_options." in lines[0], p.stderr
    assert not target.exists() and not (tmp_path / "escaped.txt.log").exists()
    assert read_summary(out) == before


def test_cli_options_from_the_command_line_stay_free(tmp_path):
    """The user's own command line may name files (a PETSc log written at exit)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(GOOD)
    target = tmp_path / "log.txt"
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet",
                 "-log_view", f":{target}"])
    assert "solver.petsc_options" not in p.stderr
    assert target.exists()


@pytest.mark.parametrize("args,words", [
    (["-heat_ksp_type", "notakspt"], ["notakspt", "from -heat_ksp_type notakspt"]),
    (["-heat_ksp_type", "cg", "-heat_ksp_rtol", "abc"], ["abc", "from -heat_ksp_rtol abc"]),
    (["-heat_ksp_type"], ["KSP type", "-heat_ksp_type (no value)"])])
def test_a_petsc_error_names_the_option(args, words, tmp_path):
    """A bad value for a PETSc option ended the run with "PETSc error 86 (check the PETSc
    options ...)": which option, PETSc did not say.  Now the line carries PETSc's own message
    and the option that gave the value (one line, exit 2)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(GOOD)
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet", *args])
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "PETSc error" in lines[0], p.stderr
    for w in words:
        assert w in lines[0], lines[0]
