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


def _ksp(prefix="bare_"):
    from petsc4py import PETSc
    A = PETSc.Mat().createAIJ([4, 4], comm=PETSc.COMM_SELF)
    A.setUp()
    for i in range(4):
        A[i, i] = 1.0
    A.assemble()
    ksp = PETSc.KSP().create(PETSc.COMM_SELF)
    ksp.setOptionsPrefix(prefix)
    ksp.setOperators(A)
    ksp.setType("gmres")
    return ksp


@pytest.mark.parametrize("name", ["bare_ksp_max_it", "bare_ksp_rtol"])
def test_a_number_option_without_its_value_is_refused(name):
    """``-ksp_max_it`` with nothing after it (or another option after it) was skipped by
    PETSc's number readers without a word, and the run went on with the default.  Now the
    solver's set-up fails with one line naming the option."""
    from fem_mfc import options
    from fem_mfc.errors import UserError
    ksp = _ksp()
    with pytest.raises(UserError) as e:
        with options.inserted(settings={name: "", "bare_ksp_monitor": ""}):
            ksp.setFromOptions()
    msg = str(e.value)
    assert f"-{name}:" in msg and "expected a value" in msg and "bare_ksp_monitor" not in msg
    assert options.missing_value() is None               # nothing left behind


def test_flags_booleans_and_viewers_without_a_value_still_work():
    from fem_mfc import options
    ksp = _ksp()
    with options.inserted(settings={"bare_ksp_initial_guess_nonzero": "",
                                    "bare_ksp_converged_reason": "", "bare_ksp_view": ""}):
        ksp.setFromOptions()
        assert options.missing_value() is None
    assert ksp.getInitialGuessNonzero()


def test_a_swallowed_missing_value_is_still_found():
    """A solver that catches PETSc's error (a factorisation inside a Newton step) reported a
    failed solve (exit 3); the pipeline asks :func:`missing_value` for the cause."""
    from petsc4py import PETSc

    from fem_mfc import options
    ksp = _ksp()
    with options.inserted(settings={"bare_ksp_max_it": ""}):
        with options.inserted(settings={"bare_ksp_max_it": ""}):     # nested: kept empty
            pass
        try:
            ksp.setFromOptions()
        except PETSc.Error:
            pass
        error = options.missing_value()
    assert error is not None and "-bare_ksp_max_it" in str(error)


@pytest.mark.slow
def test_cli_number_option_without_value_exits_2(tmp_path):
    """The command line's ``-heat_pc_factor_fill -heat_ksp_converged_reason``: the fill
    factor has no value; exit 2 naming it, nothing written, the earlier result untouched; the
    bare viewer alone runs."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(GOOD)
    out = tmp_path / "o"
    ok = run_cli(["run", str(cfg), "--out", str(out), "--quiet",
                  "-heat_ksp_converged_reason"])
    assert ok.returncode == 0, ok.stderr
    assert "converged due to" in ok.stdout
    before = read_summary(out)
    p = run_cli(["run", str(cfg), "--out", str(out), "--quiet", "-heat_pc_factor_fill",
                 "-heat_ksp_converged_reason"])
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "-heat_pc_factor_fill: expected a value" in lines[0], p.stderr
    assert read_summary(out) == before


NEWTON = textwrap.dedent("""
    [run]
    formulation = "hjb-fp"
    [mesh]
    kind = "rectangle"
    cells = 6
    lower = [-1.0, -1.0]
    upper = [1.0, 1.0]
    [problem]
    T = 1.0
    sigma = 0.8
    steps = 4
    Phi = "0.4*sin(pi*x0/2) + 0.2*cos(pi*x1)"
    G = "rho**2/2"
    [rho0]
    kind = "formula"
    formula = "(1 + 0.5*cos(pi*x0))*(1 + 0.5*cos(pi*x1))"
    [solver]
    method = "newton"
    linear = "lu"
    [output]
    figures = false
""")


def test_cli_missing_value_read_inside_a_newton_step_exits_2(tmp_path):
    """MUMPS reads its ICNTL values when it factorises, inside the Newton step, where the
    solver catches PETSc's error: the run ended as a solve that did not converge (exit 3,
    "error code 62").  Now it is the input error it is."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(NEWTON)
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet",
                 "-mfc_mat_mumps_icntl_14", "-mfc_snes_converged_reason"])
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "-mfc_mat_mumps_icntl_14: expected a value" in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_a_petsc_error_inside_a_newton_step_is_said_in_petscs_words(tmp_path):
    """-mfc_pc_type lu on the sweep path (a matrix-free operator): the run was flagged with
    "ERROR (error code 92)" only.  The verdict now carries PETSc's message."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(NEWTON.replace('linear = "lu"', 'linear = "sweep"\ncontinuation = false'))
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet",
                 "-mfc_pc_type", "lu"])
    assert p.returncode == 3, p.stderr
    assert "ERROR (PETSc error 92: Could not locate a solver type" in p.stderr, p.stderr


@pytest.mark.parametrize("args,words", [
    (["-heat_ksp_type=cg"], ["'-heat_ksp_type=cg'", "(-heat_ksp_type cg)"]),
    (["--out", ""], ["--out: expected a folder"])])
def test_cli_option_spelling_refused_before_running(args, words, tmp_path):
    """``-heat_ksp_type=cg`` ran the default solver (PETSc reads a name "heat_ksp_type=cg")
    and exited 0 after a warning; ``--out ""`` (an unset variable) wrote to results/."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(GOOD)
    p = run_cli(["run", str(cfg), "--quiet", *args, *([] if "--out" in args else
                                                        ["--out", str(tmp_path / "o")])],
                cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and all(w in lines[0] for w in words), lines
    assert not (tmp_path / "o").exists() and not (tmp_path / "results").exists()


def test_a_failed_inner_insertion_keeps_the_outer_options(monkeypatch):
    """An inner block whose insertion failed half-way dropped the outer block's record of its
    options without a value: the outer solver's error was then PETSc's bare error 62."""
    from fem_mfc import compat, options
    from fem_mfc.errors import UserError
    real = compat.require_value

    def failing(name):
        if name == "inner_b":
            raise RuntimeError("insertion failed")
        return real(name)

    ksp = _ksp()
    with pytest.raises(UserError, match="-bare_ksp_max_it"):
        with options.inserted(settings={"bare_ksp_max_it": ""}):
            monkeypatch.setattr(compat, "require_value", failing)
            with pytest.raises(RuntimeError):
                with options.inserted(settings={"inner_a": "", "inner_b": ""}):
                    pass
            monkeypatch.setattr(compat, "require_value", real)
            ksp.setFromOptions()
