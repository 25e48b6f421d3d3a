"""Bad configs give a one-line error naming the key, exit code 2, no traceback, and nothing
already written is lost."""
from __future__ import annotations

import textwrap

import pytest

from helpers import REPO, read_summary, run_cli

GOOD = textwrap.dedent("""
    [run]
    formulation = "heat"
    [mesh]
    kind = "interval"
    cells = 16
    lower = [-3.0]
    upper = [3.0]
    [problem]
    T = 0.1
    sigma = 0.5
    steps = 4
    [rho0]
    mean = [0.0]
    std = 0.5
    [output]
    figures = false
    progress = false
""")

BAD = {
    "unknown key": ("[mesh]\nkind", "[mesh]\ncolour = 1\nkind", "mesh.colour"),
    "unknown section": ("[run]", "[nonsense]\na = 1\n[run]", "nonsense"),
    "wrong type": ("cells = 16", "cells = \"sixteen\"", "mesh.cells"),
    "negative cells": ("cells = 16", "cells = -4", "mesh.cells"),
    "zero steps": ("steps = 4", "steps = 0", "problem.steps"),
    "negative sigma": ("sigma = 0.5", "sigma = -0.5", "problem.sigma"),
    "non-positive T": ("T = 0.1", "T = 0.0", "problem.T"),
    "bad choice": ("formulation = \"heat\"", "formulation = \"magic\"", "run.formulation"),
    "missing mesh file": ("kind = \"interval\"", "kind = \"file\"\nfile = \"nope.msh\"",
                          "mesh.file"),
    "mesh file name too long": ("kind = \"interval\"", "kind = \"file\"\nfile = \""
                                + "m" * 300 + ".msh\"", "mesh.file"),
    "rho0 file name too long": ("[rho0]\nmean = [0.0]", "[rho0]\nkind = \"file\"\nfile = \""
                                + "r" * 300 + "\"\nmean = [0.0]", "rho0.file"),
    "unparsable TOML": ("[problem]", "[problem\n", "not valid TOML"),
    "lower >= upper": ("upper = [3.0]", "upper = [-5.0]", "mesh.upper"),
    "interval too short for DOLFINx": ("upper = [3.0]", "upper = [-2.999999999999999]",
                                       "mesh.upper"),
    "mean of wrong length": ("mean = [0.0]", "mean = [0.0, 1.0]", "rho0.mean"),
    "bad formula": ("[rho0]\nmean = [0.0]\nstd = 0.5",
                    "[rho0]\nkind = \"formula\"\nformula = \"__import__('os')\"\nmean = [0.0]",
                    "rho0.formula"),
    "negative rho0": ("[rho0]\nmean = [0.0]\nstd = 0.5",
                      "[rho0]\nkind = \"formula\"\nformula = \"x0\"\nmean = [0.0]", "rho0"),
    "zero-mass rho0": ("[rho0]\nmean = [0.0]\nstd = 0.5",
                       "[rho0]\nkind = \"formula\"\nformula = \"0*x0\"\nmean = [0.0]", "rho0"),
    "bool for int": ("cells = 16", "cells = true", "mesh.cells"),
    "relaxation out of range": ("[output]", "[solver]\nrelaxation = 1.5\n[output]",
                                "solver.relaxation"),
    "old and new name of a key": ("[output]", "[nls]\nwidth = 0.5\ns0 = 0.5\n[output]",
                                  "nls.width"),
    "sigma whose square overflows": ("sigma = 0.5", "sigma = 1e300", "problem.sigma"),
    "sigma whose epsilon underflows": ("sigma = 0.5", "sigma = 1e-300", "problem.sigma"),
    "sigma whose epsilon has no finite inverse": ("sigma = 0.5", "sigma = 1e-160",
                                                  "problem.sigma"),
    "time step that underflows": ("T = 0.1", "T = 5e-324", "problem.T"),
    "max_it beyond a PETSc integer": ("[output]", "[solver]\nmax_it = 9223372036854775807\n"
                                      "[output]", "solver.max_it"),
    "relative tolerance of 1 or more": ("[output]", "[solver]\nrtol = 1.0\n[output]",
                                        "solver.rtol"),
    "heat without noise": ("sigma = 0.5", "sigma = 0.0", "problem.sigma"),
    "game coupling with G(0) != 0": (GOOD[GOOD.index("formulation"):GOOD.index("[rho0]")],
                                     GOOD[GOOD.index("formulation"):GOOD.index("[rho0]")]
                                     .replace('"heat"', '"hjb-fp"') + 'G = "0.2*exp(rho)"\n'
                                     'coupling = "mfg"\n', "problem.G"),
    "heat with a potential it does not read": ("sigma = 0.5", "sigma = 0.5\nV = \"x0**2\"",
                                               "problem.V"),
}


@pytest.fixture(scope="module")
def earlier_result(tmp_path_factory):
    """One good run for all the cases: every bad run into its folder must leave it intact."""
    tmp = tmp_path_factory.mktemp("earlier")
    cfg = tmp / "good.toml"
    cfg.write_text(GOOD)
    out = tmp / "out"
    p = run_cli(["run", str(cfg), "--out", str(out), "--quiet"])
    assert p.returncode == 0, p.stderr
    return out, read_summary(out)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_one_line_exit_2(case, tmp_path, earlier_result):
    old, new, key = BAD[case]
    assert old in GOOD, case
    cfg = tmp_path / "bad.toml"
    cfg.write_text(GOOD.replace(old, new, 1))
    out, before = earlier_result
    p = run_cli(["run", str(cfg), "--out", str(out), "--quiet"])
    assert p.returncode == 2, (case, p.returncode, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert key in lines[0], lines[0]
    # the earlier result in the same folder is intact
    assert read_summary(out) == before
    assert not [q for q in out.iterdir() if q.name.startswith(".staging")]


@pytest.mark.slow
def test_errors_found_while_running_name_the_config_file(tmp_path):
    """A formula refused only when the problem is built (x1 in 1D) named the key but not the
    file, which the errors found when loading it name; an error about a command-line option
    (not in the file) names no file."""
    cfg = tmp_path / "late.toml"
    cfg.write_text(textwrap.dedent("""
        [run]
        formulation = "hjb-fp"
        [mesh]
        kind = "interval"
        cells = 8
        [problem]
        T = 1.0
        sigma = 0.5
        steps = 2
        Phi = "x0 + x1"
        [output]
        figures = false
        progress = false
    """))
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet"])
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert lines[0].startswith(f"fem-mfc: error: {cfg}: config key 'problem.Phi'"), lines[0]
    cfg.write_text(cfg.read_text().replace("x0 + x1", "x0"))
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet",
                 "-mfc_newton_forcing", "bogus"])
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert lines[0].startswith("fem-mfc: error: config key '-mfc_newton_forcing'"), lines[0]


def test_missing_config_file(tmp_path):
    p = run_cli(["run", str(tmp_path / "nope.toml")])
    assert p.returncode == 2 and "nope.toml" in p.stderr and "Traceback" not in p.stderr


def test_config_file_name_too_long(tmp_path):
    """A config path the file system cannot hold (ENAMETOOLONG) was a traceback."""
    p = run_cli(["run", str(tmp_path / ("c" * 300 + ".toml")), "--out", str(tmp_path / "o")])
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "too long" in lines[0] and not (tmp_path / "o").exists()


def test_refine_without_exact_solution(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(GOOD)
    p = run_cli(["refine", str(cfg), "--levels", "2", "--out", str(tmp_path / "r")])
    assert p.returncode == 2 and "exact" in p.stderr and "Traceback" not in p.stderr


def test_config_copy_reproduces_run(tmp_path, earlier_result):
    out, first = earlier_result
    again = tmp_path / "again"
    p = run_cli(["run", str(out / "config.toml"), "--out", str(again), "--quiet"])
    assert p.returncode == 0, p.stderr
    second = read_summary(again)
    for k in ("mass", "min_rho", "ndofs", "nsteps", "h", "tau"):
        assert second[k] == first[k], k


@pytest.mark.parametrize("run,solver", [("cole-hopf", {}),
                                        ("hjb-fp", {"method": "picard"}),
                                        ("hjb-fp", {"method": "cole-hopf"})])
def test_checkpoints_where_none_are_written_are_refused(run, solver):
    """``checkpoint_every`` where the run writes no checkpoint (it was ignored silently: a
    killed run then had nothing to restart from); the HJB-FP Newton, the QHD solves, the
    trainers and the time steppers take it."""
    from fem_mfc import config
    from fem_mfc.errors import ConfigError
    raw = {"run": {"formulation": run}, "solver": solver, "output": {"checkpoint_every": 2}}
    with pytest.raises(ConfigError, match="output.checkpoint_every"):
        config.from_dict(raw)
    for ok in ("hjb-fp", "classifier", "generative", "qhd", "heat", "nls"):
        config.from_dict({"run": {"formulation": ok}, "output": {"checkpoint_every": 2}})
    config.from_dict({"run": {"formulation": "qhd"}, "qhd": {"signature": "quantum"},
                      "problem": {"Phi": "0"}, "output": {"checkpoint_every": 2}})


@pytest.mark.parametrize("argv", [["run", "c.toml", "--out"], ["bogus"], [],
                                  ["refine", "c.toml", "--in", "bogus"]])
def test_command_line_errors_are_one_line(argv, tmp_path):
    """Bad command-line input printed argparse's usage text before the error (three lines);
    now one line naming the problem and --help, exit 2."""
    p = run_cli(argv)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "--help" in lines[0], p.stderr


@pytest.mark.parametrize("argv", [["run", "-heat_ksp_type", "cg", "c.toml"],
                                  ["refine", "-heat_ksp_rtol", "1e-8", "c.toml"]])
def test_a_petsc_option_before_the_config_is_explained(argv, tmp_path):
    """``run -heat_ksp_type cg c.toml`` said "cg: config file not found": argparse took the
    option's value for the config."""
    (tmp_path / "c.toml").write_text(GOOD)
    p = run_cli(argv, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"follows the PETSc option {argv[1]}" in lines[0], lines
    assert "give the config first" in lines[0] and not (tmp_path / "results").exists()


@pytest.mark.parametrize("value,shown", [
    (True, "got true"), ("twenty", 'got "twenty"'), ([1, "x"], 'got [1, "x"]'),
    (float("inf"), "got inf"), ({"a": False}, "got { a = false }")])
def test_values_in_messages_are_spelt_as_in_toml(value, shown):
    """The value a message quotes is the one the user wrote, in TOML (``true``, not
    Python's ``True``; double-quoted strings)."""
    from fem_mfc.errors import ConfigError
    assert str(ConfigError("problem.steps", "a positive integer", value)).endswith(shown)


def test_a_boolean_for_a_number_is_quoted_as_written(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(GOOD.replace("T = 0.1", "T = true", 1))
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "out"), "--quiet"])
    assert p.returncode == 2 and "problem.T" in p.stderr and p.stderr.rstrip().endswith(
        "got true"), p.stderr


@pytest.mark.slow
def test_config_copy_keeps_command_line_options_and_any_title(tmp_path):
    """config.toml reproduces the run: PETSc options given on the command line are kept in
    its [solver] petsc_options (they were lost: a run with -mfc_snes_rtol 1e-3 stored the
    config of rtol 1e-10), and a title with a newline is escaped (the copy was not TOML)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(GOOD.replace("[run]", '[run]\ntitle = """two\nlines\t"quoted" """'))
    opts = ["-heat_ksp_type", "cg", "-heat_pc_type", "jacobi", "-heat_ksp_rtol", "1e-4"]
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "a"), "--quiet"] + opts)
    assert p.returncode in (0, 3), p.stderr
    first = read_summary(tmp_path / "a")
    assert first["petsc_options"] == {"heat_ksp_type": "cg", "heat_pc_type": "jacobi",
                                      "heat_ksp_rtol": "1e-4"}
    p = run_cli(["run", str(tmp_path / "a" / "config.toml"), "--out", str(tmp_path / "b"),
                 "--quiet"])
    assert p.returncode in (0, 3), p.stderr
    again = read_summary(tmp_path / "b")
    assert again["title"] == 'two\nlines\t"quoted" '
    assert again["mass"] == first["mass"] and again["petsc_options"] == first["petsc_options"]
    # which code ran: a hash of the package's files (and the git commit in a checkout)
    src = first["versions"]["fem_mfc_source"]
    assert len(src) == 16 and int(src, 16) >= 0 and again["versions"]["fem_mfc_source"] == src
    p = run_cli(["run", str(cfg), "--out", str(tmp_path / "c"), "--quiet"])
    assert read_summary(tmp_path / "c")["mass"] != first["mass"]      # the options mattered


@pytest.mark.parametrize("raw,key,meant", [
    ({"problm": {"T": 1.0}}, "problm", "problem"),
    ({"run": {"formulaton": "heat"}}, "run.formulaton", "formulation"),
    ({"rho0": {"maen": [0.0]}}, "rho0.maen", "mean"),
    ({"population": [{"sigam": 0.5}]}, "population[0].sigam", "sigma")])
def test_a_misspelt_name_gets_the_likeliest_one(raw, key, meant):
    """An unknown key or section listed every known name; the one meant is now named first
    ("did you mean 'problem'?"), the list stays."""
    from fem_mfc import config
    from fem_mfc.errors import ConfigError
    with pytest.raises(ConfigError) as e:
        config.from_dict(raw)
    assert e.value.key == key and f"(did you mean '{meant}'?)" in str(e.value), e.value


@pytest.mark.parametrize("mean", [["a", "b"], [True, 0.0], [[1.0], 0.0], [float("nan"), 0.0]])
def test_gaussian_mean_on_a_mesh_file_is_checked(mean):
    """On a mesh file (dimension unknown at load) rho0.mean was not checked at all: strings or
    nested arrays were a traceback in the run (exit 1), a boolean ran as the number 1.  Its
    entries are checked at load now (its length once the mesh is read)."""
    from fem_mfc import config
    from fem_mfc.errors import ConfigError
    mesh = {"kind": "file", "file": "meshes/room.msh"}
    with pytest.raises(ConfigError, match=r"rho0\.mean"):
        config.validate({"mesh": mesh, "rho0": {"mean": mean}}, base_dir=REPO)
    pop = [{"rho0": {"kind": "gaussian", "mean": mean}}, {"rho0": {"kind": "gaussian"}}]
    with pytest.raises(ConfigError, match=r"population\[0\]\.rho0\.mean"):
        config.validate({"mesh": mesh, "solver": {"method": "newton"}, "population": pop},
                        base_dir=REPO)


@pytest.mark.parametrize("anchors", [[["a", "b"], [1.0, 2.0]], [[True, 0], [0, 1]],
                                     [[float("inf"), 0.0], [0.0, 0.0]], [1.0, 2.0]])
def test_anchors_are_points_of_finite_numbers(anchors):
    """network.anchors with strings was a traceback in the run (exit 1), true ran as 1 and an
    infinite anchor trained for minutes before NaN; refused at load now."""
    from fem_mfc import config
    from fem_mfc.errors import ConfigError
    with pytest.raises(ConfigError, match=r"network\.anchors\[\d\]"):
        config.from_dict({"run": {"formulation": "classifier"}, "mesh": {"kind": "disk"},
                          "network": {"anchors": anchors}})


@pytest.mark.parametrize("line,key", [
    ("[problem]\nT = 1" + "0" * 400, "problem.T"),
    ("[mesh]\ncells = 1" + "0" * 400, "mesh.cells"),
    ("[problem]\nparams = { a = -1" + "0" * 400 + " }", "problem.params.a"),
    ("[mesh]\nkind = \"interval\"\nlower = [-1" + "0" * 30 + "]", "mesh.lower[0]")])
def test_integers_beyond_64_bits_are_refused(line, key, tmp_path):
    """TOML integers are 64-bit but tomllib reads any size: T = 1 followed by 400 zeros was an
    OverflowError in float() (exit 1 with a traceback)."""
    from fem_mfc import config
    from fem_mfc.errors import ConfigError
    f = tmp_path / "big.toml"
    f.write_text(line + "\n")
    with pytest.raises(ConfigError) as e:
        config.load(f)
    assert e.value.key == key and "64-bit" in str(e.value)


def test_an_integer_tolerance_is_a_number():
    """training.tol = 1 (a TOML integer) was refused as "expected a string or a number, got 1";
    it is read as the number 1.0 like every integer given for a number — and then refused for
    its value (a tol of 1 or more stopped training at once), not for its type."""
    from fem_mfc import config
    from fem_mfc.errors import ConfigError
    with pytest.raises(ConfigError) as e:
        config.from_dict({"run": {"formulation": "classifier"}, "mesh": {"kind": "disk"},
                          "training": {"tol": 1}})
    assert e.value.key == "training.tol" and "a number in (0, 1)" in str(e.value), e.value
    assert "a string or a number" not in str(e.value)


@pytest.mark.parametrize("data,key", [
    ({"seed": 2 ** 32}, "data.seed"),                  # scikit-learn: InvalidParameterError
    ({"seed": 2 ** 63 - 1}, "data.seed"),
    ({"dataset": "gaussians", "classes": 81, "n_samples": 80}, "data.classes"),
    ({"dataset": "gaussians", "classes": 2 ** 62, "n_samples": 80}, "data.classes")])
def test_data_sizes_and_seeds_the_generators_take(data, key):
    """A data seed of 2^32 or more was a traceback from scikit-learn's generators (exit 1);
    more 'gaussians' classes than points drew empty classes (a ValueError, exit 1)."""
    from fem_mfc import config
    from fem_mfc.errors import ConfigError
    with pytest.raises(ConfigError) as e:
        config.from_dict({"run": {"formulation": "classifier"}, "mesh": {"kind": "disk"},
                          "data": data})
    assert e.value.key == key
    config.from_dict({"run": {"formulation": "classifier"}, "mesh": {"kind": "disk"},
                      "data": {"seed": 2 ** 32 - 1, "dataset": "gaussians", "classes": 40,
                               "n_samples": 80}})


@pytest.mark.parametrize("std", [5e-324, 1e-160, 1e300])
def test_target_std_whose_square_is_not_a_number(std):
    """generative.target_std = 5e-324 was a ZeroDivisionError in the KL form and 1e300 an
    infinite constant the form compiler failed on (exit 1, traceback)."""
    from fem_mfc import config
    from fem_mfc.errors import ConfigError
    with pytest.raises(ConfigError, match=r"generative\.target_std"):
        config.from_dict({"run": {"formulation": "generative"}, "mesh": {"kind": "disk"},
                          "generative": {"target_std": std}})


# -- a derandomised property over the validation layer (no mesh, no solve) ---------------------
def _bad_values(spec):
    """Values ``spec`` must refuse: of another type, out of its range, not one of its
    choices, an integer beyond 64 bits, a path that cannot exist."""
    import math
    types = spec.type if isinstance(spec.type, tuple) else (spec.type,)

    def typed(v):
        if isinstance(v, bool):
            return bool in types
        if isinstance(v, int) and float in types:
            return True
        return isinstance(v, types)

    out = [v for v in ("text", 3, 2.5, True, [1.0], {"a": 1}) if not typed(v)]
    numbers = [math.nan, math.inf, -math.inf, -1.0, 0.0, 0.5, 1.0, 2.0, 1e-300, 1e300, 5e-324,
               -1, 0, 1, 2, 2 ** 62]
    if spec.check is not None:
        out += [v for v in numbers if typed(v) and (
            isinstance(v, float) and not math.isfinite(v) or not spec.check(v))]
    elif float in types:
        out += [math.nan, math.inf]
    if spec.choices:
        out += ["", "nonsense", spec.choices[0].upper() + "!"]
    if int in types or float in types:
        out.append(2 ** 64)
    if spec.path:
        out += ["x" * 300, "no/such/file.msh"]
    return out


def _bad_cases():
    from fem_mfc import config
    cases = []
    for section, keys in config.SCHEMA.items():
        for key, spec in keys.items():
            cases += [((section, key), v) for v in _bad_values(spec)]
    for key, spec in config.BOUNDARY.items():
        cases += [(("boundary", key), v) for v in _bad_values(spec)]
    for key, spec in config.POPULATION.items():
        cases += [(("population", key), v) for v in _bad_values(spec)]
    return cases


BAD_CASES = _bad_cases()


def _raw(where, value):
    section, key = where
    if section == "boundary":
        return {"boundary": [{"tag": 1, key: value}]}, f"boundary[0].{key}"
    if section == "population":
        pops = [{"rho0": {"kind": "gaussian", "mean": [-0.5, 0.0]}, key: value},
                {"rho0": {"kind": "gaussian", "mean": [0.5, 0.0]}}]
        return {"solver": {"method": "newton"}, "population": pops}, f"population[0].{key}"
    return {section: {key: value}}, f"{section}.{key}"


def test_every_key_refuses_bad_values_by_name_property():
    """Every key of the schema, [[boundary]] and [[population]]: a value of another type, out
    of range, not a choice, an integer beyond 64 bits or a path that cannot exist is a
    ConfigError naming that key in one line -- never another exception (derandomised)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from fem_mfc import config
    from fem_mfc.errors import ConfigError

    @settings(derandomize=True, max_examples=1000, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(BAD_CASES))
    def check(case):
        raw, key = _raw(*case)
        with pytest.raises(ConfigError) as e:
            config.validate(raw, source="fuzz.toml", base_dir=REPO)
        assert e.value.key == key, (case, str(e.value))
        assert "\n" not in str(e.value)

    check()


@pytest.mark.parametrize("section,key", [("solver", "picard_max_it"), ("training", "max_sweeps"),
                                         ("training", "epochs"), ("training", "seeds"),
                                         ("nls", "gs_max_steps")])
def test_iteration_counts_are_integers_the_loops_take(section, key):
    """training.max_sweeps = 2^63 - 1 was an OverflowError in the progress bar's len(range())
    (exit 1); every iteration count is now at most 2^31 - 1, like solver.max_it."""
    from fem_mfc import config
    from fem_mfc.errors import ConfigError
    reads = {"training": {"run": {"formulation": "classifier"}},     # a run that reads the key
             "nls": {"run": {"formulation": "nls"}, "mesh": {"kind": "interval"},
                     "nls": {"initial": "ground-state"}},
             "solver": {"solver": {"method": "picard" if key == "picard_max_it"
                                   else "newton"}}}.get(section, {})
    with pytest.raises(ConfigError) as e:
        config.from_dict({**reads, section: {**reads.get(section, {}), key: 2 ** 63 - 1}})
    assert e.value.key == f"{section}.{key}"
    config.from_dict({**reads, section: {**reads.get(section, {}), key: 2 ** 31 - 1}})
