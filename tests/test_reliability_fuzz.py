"""Item 8 of issue 14: a hypothesis fuzz test of the config and formula checks.

Fast profile (part of the suite, < 60 s, derandomised so that CI is reproducible):
* generated raw configs -- valid and invalid values for every key of ``config.SCHEMA``, unknown
  keys and sections, random formulas from a small grammar including the known failure cases --
  go through ``config.from_dict``, ``config.check_resources`` and ``expressions.parse``: each is
  accepted or raises a UserError/ConfigError with a one-line message, never another exception;
* random formulas through ``checks.check_formulas`` on a small mesh (values at the mesh
  points, G over a range of rho);
* a few generated configs run by ``python3 -m fem_mfc run`` on tiny meshes: exit 0, 2 or 3, no
  traceback, one line on failure, and an earlier result in the same folder is unchanged when
  the run fails.

Longer profile: ``FEM_MFC_FUZZ_LONG=1 python3 -m pytest -m slow tests/test_reliability_fuzz.py``
(random seeds, many more examples).
"""
from __future__ import annotations

import math
import os
import tempfile

from mpi4py import MPI

import dolfinx
import pytest
import ufl
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fem_mfc import checks, config, expressions
from fem_mfc.errors import UserError
from helpers import read_summary, run_cli

try:       # hypothesis caches Unicode tables in ./.hypothesis: keep the work tree clean
    from hypothesis.configuration import set_hypothesis_home_dir
    set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "fem_mfc-hypothesis"))
except ImportError:
    pass

LONG = os.environ.get("FEM_MFC_FUZZ_LONG") == "1"
FAST = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
slow = [pytest.mark.slow, pytest.mark.skipif(not LONG, reason="set FEM_MFC_FUZZ_LONG=1")]

# -- formulas ----------------------------------------------------------------------------------
FAILURES = ["1/0", "10.0**400", "exp(1000)", "log(0)", "sqrt(-1)", "rho/0", "0*x0", "x0**1e6",
            " + ".join(["x0"] * 20000), "", "x0 +", "__import__('os').system('true')",
            "(" * 100 + "x0" + ")" * 100, "x0.real", "[x0]", "lambda: 1", "x0 if x1 else 2",
            "exp(exp(exp(x0)))", "1/x0", "log(x0)", "x3", "nope(x0)", "1e309", "x0 @ x1"]
ATOMS = st.sampled_from(["x0", "x1", "x2", "rho", "1", "0", "2.5", "pi", "e", "kappa", "-1",
                         "1e308", "1e-308", "nope", "x", "y"])
FUNCS = ["exp", "log", "sqrt", "sin", "abs", "tanh", "atan", "erf", "cosh"]
FORMULAS = st.one_of(
    st.sampled_from(FAILURES),
    st.recursive(ATOMS, lambda c: st.one_of(
        st.tuples(c, st.sampled_from(["+", "-", "*", "/"]), c).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(c, st.sampled_from(["2", "0.5", "-1", "3", "1e6", "400", "x0"])).map(
            lambda t: f"({t[0]})**{t[1]}"),
        st.tuples(st.sampled_from(FUNCS), c).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(st.sampled_from(["min", "max"]), c, c).map(lambda t: f"{t[0]}({t[1]}, {t[2]})")),
        max_leaves=8),
    st.text(max_size=12))
FORMULA_KEYS = {("problem", "V"), ("problem", "Phi"), ("problem", "G"), ("rho0", "formula"),
                ("qhd", "S0")}

# -- values for every key of the schema --------------------------------------------------------
ANY = st.one_of(st.booleans(), st.integers(-10, 10), st.floats(), st.text(max_size=4),
                st.lists(st.integers(-2, 2), max_size=3), st.dictionaries(st.text(max_size=2),
                                                                        st.integers(), max_size=2))
FLOATS = st.one_of(st.floats(-5, 5), st.sampled_from([0.0, -1.0, 1e-300, 1e300, math.inf,
                                                      -math.inf, math.nan, 0.5, 1.0, 2.0]))
INTS = st.one_of(st.integers(-3, 40), st.sampled_from([0, 2 ** 63 - 1, 10 ** 9, 10 ** 7, 60]))
NUMBER_LISTS = st.lists(st.one_of(st.floats(-4, 4), st.integers(-3, 3), st.text(max_size=1),
                                  st.just(math.nan)), max_size=4)
PETSC_NAMES = st.sampled_from(["ksp_type", "snes_monitor", "mfc_snes_view", "log_view",
                               "options_file", "pc_python_type", "bad name", "ksp_rtol", "info",
                               "history", "-ksp_view", "mat_view"])
PETSC_VALUES = st.one_of(st.sampled_from(["", "gmres", "ascii:/tmp/x", ":f", "draw", "binary",
                                          "::ascii_info", "os.system", "fem_mfc.x.Y", "../a",
                                          "hdf5:x.h5"]), st.floats(), st.booleans(),
                         st.lists(st.integers(), max_size=2))


def _value(section, key, spec):
    if (section, key) in FORMULA_KEYS:
        return st.one_of(FORMULAS, ANY)
    if key == "petsc_options":
        return st.one_of(st.dictionaries(PETSC_NAMES, PETSC_VALUES, max_size=3), ANY)
    if key == "params":
        return st.one_of(st.dictionaries(st.sampled_from(["kappa", "a", "x0", "rho", "pi"]),
                                         st.one_of(FLOATS, st.text(max_size=2), st.booleans()),
                                         max_size=3), ANY)
    if spec.path:
        return st.one_of(st.sampled_from(["", "nope.msh", "tests", "README.md",
                                          "meshes/disk.msh", "meshes/disk.geo"]), ANY)
    if spec.choices:
        return st.one_of(st.sampled_from(spec.choices), st.text(max_size=4), ANY)
    t = spec.type
    if t is float:
        return st.one_of(FLOATS, ANY)
    if t is int:
        return st.one_of(INTS, ANY)
    if t is bool:
        return st.one_of(st.booleans(), ANY)
    if t is list:
        return st.one_of(NUMBER_LISTS, st.lists(NUMBER_LISTS, max_size=3), ANY)
    if t is dict:
        return st.one_of(st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), ANY)
    return ANY


def _section(section):
    keys = config.SCHEMA[section]
    optional = {k: _value(section, k, spec) for k, spec in keys.items()}
    optional["colour"] = ANY                                       # an unknown key
    return st.fixed_dictionaries({}, optional=optional)


RAW = st.fixed_dictionaries({}, optional={**{s: _section(s) for s in config.SCHEMA},
                                          "nonsense": st.just({"a": 1})})


def _one_line(e: BaseException):
    msg = str(e)
    assert msg.strip() and "\n" not in msg and len(msg) < 2000, repr(msg)


_MESHES = {}


def _mesh(gdim):
    if gdim not in _MESHES:
        make = {1: lambda: dolfinx.mesh.create_interval(MPI.COMM_SELF, 8, [-2.0, 2.0]),
                2: lambda: dolfinx.mesh.create_rectangle(MPI.COMM_SELF, [[-2.0, -2.0],
                                                                         [2.0, 2.0]], [4, 4]),
                3: lambda: dolfinx.mesh.create_box(MPI.COMM_SELF, [[-2.0] * 3, [2.0] * 3],
                                                   [2, 2, 2])}
        _MESHES[gdim] = make[gdim]()
    return _MESHES[gdim]


def _validate_and_parse(raw):
    try:
        cfg = config.from_dict(raw)
        config.check_resources(cfg, limit_bytes=4 << 30)
        gdim = min(max(config.gdim(cfg), 1), 3)
        m = _mesh(gdim)
        x = ufl.SpatialCoordinate(m)
        rho = ufl.variable(dolfinx.fem.Constant(m, 1.0))
        for section, key in sorted(FORMULA_KEYS):
            text = cfg[section][key]
            if text or key != "formula":
                expressions.parse(text, f"{section}.{key}", x=x, gdim=gdim,
                                  variables={"rho": rho} if key == "G" else None,
                                  params=cfg["problem"]["params"])
    except UserError as e:
        _one_line(e)


@FAST
@given(RAW)
def test_fuzz_config_load_and_formulas(raw):
    _validate_and_parse(raw)


@settings(max_examples=2000, deadline=None, database=None)
@given(RAW)
@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="set FEM_MFC_FUZZ_LONG=1")
def test_fuzz_config_load_and_formulas_long(raw):
    _validate_and_parse(raw)


# -- formulas on the mesh ----------------------------------------------------------------------
ON_MESH = st.tuples(st.sampled_from([("problem", "V"), ("problem", "Phi"), ("problem", "G"),
                                     ("rho0", "formula")]), FORMULAS)


def _check_on_mesh(case):
    (section, key), text = case
    raw = {"run": {"formulation": "hjb-fp"},
           "mesh": {"kind": "rectangle", "lower": [-2.0, -2.0], "upper": [2.0, 2.0]},
           "problem": {"params": {"kappa": 1.5}}, "rho0": {"mean": [0.0, 0.0]}}
    raw.setdefault(section, {})[key] = text
    if key == "formula":
        raw["rho0"]["kind"] = "formula"
    try:
        checks.check_formulas(config.from_dict(raw), _mesh(2))
    except UserError as e:
        _one_line(e)


@settings(max_examples=12, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(ON_MESH)
def test_fuzz_formulas_on_the_mesh(case):
    _check_on_mesh(case)


@settings(max_examples=200, deadline=None, database=None)
@given(ON_MESH)
@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="set FEM_MFC_FUZZ_LONG=1")
def test_fuzz_formulas_on_the_mesh_long(case):
    _check_on_mesh(case)


# -- whole runs ----------------------------------------------------------------------------------
BASE = {"run": {"formulation": "heat"},
        "mesh": {"kind": "interval", "cells": 8, "lower": [-3.0], "upper": [3.0]},
        "problem": {"T": 0.1, "steps": 2, "sigma": 0.5},
        "rho0": {"mean": [0.0], "std": 0.5},
        "output": {"figures": False, "progress": False}}
MUTABLE = [("run", "formulation"), ("mesh", "cells"), ("mesh", "upper"), ("mesh", "refine"),
           ("problem", "T"), ("problem", "sigma"), ("problem", "steps"), ("problem", "V"),
           ("problem", "Phi"), ("problem", "G"), ("rho0", "std"), ("rho0", "mean"),
           ("rho0", "kind"), ("rho0", "formula"), ("discretisation", "degree"),
           ("solver", "petsc_options"), ("solver", "method")]


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf
                                            else repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f'"{k}" = {_toml_value(x)}' for k, x in v.items()) + "}"
    raise TypeError(v)


def _toml(raw):
    out = []
    for s, kv in raw.items():
        out.append(f"[{s}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in kv.items()]
    return "\n".join(out) + "\n"


def _mutation(st_):
    return st.lists(st.sampled_from(MUTABLE).flatmap(
        lambda sk: st.tuples(st.just(sk), _value(sk[0], sk[1], config.SCHEMA[sk[0]][sk[1]]))),
        min_size=1, max_size=2)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz_runs")
    cfg = d / "base.toml"
    cfg.write_text(_toml(BASE))
    out = d / "out"
    p = run_cli(["run", str(cfg), "--out", str(out), "--quiet"])
    assert p.returncode == 0, p.stderr
    return d, out


def _run_mutated(mutations, earlier):
    d, out = earlier
    raw = {s: dict(kv) for s, kv in BASE.items()}
    for (s, k), v in mutations:
        raw.setdefault(s, {})[k] = v
    try:
        text = _toml(raw)
    except TypeError:
        return
    cfg = d / "fuzz.toml"
    cfg.write_text(text)
    before = read_summary(out)
    p = run_cli(["run", str(cfg), "--out", str(out), "--quiet"], timeout=300)
    assert p.returncode in (0, 2, 3), (text, p.returncode, p.stderr[-3000:])
    assert "Traceback" not in p.stderr, (text, p.stderr[-3000:])
    if p.returncode == 0:
        assert read_summary(out)["nsteps"] >= 1
    else:
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, (text, p.stderr)
        assert read_summary(out) == before, text
    assert not [q for q in d.iterdir() if q.name.startswith(".staging-")]


@pytest.mark.slow
@settings(max_examples=5, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(_mutation(st))
@example([(("problem", "V"), "1/0")])                  # explicit cases of issue 14 that
@example([(("rho0", "std"), 1e-300)])                  # were tracebacks (exit 1) on main
@example([(("problem", "Phi"), "exp(1000)"), (("mesh", "refine"), 60)])
def test_fuzz_cli_runs(earlier, mutations):
    _run_mutated(mutations, earlier)


@settings(max_examples=60, deadline=None, database=None)
@given(_mutation(st))
@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="set FEM_MFC_FUZZ_LONG=1")
def test_fuzz_cli_runs_long(earlier, mutations):
    _run_mutated(mutations, earlier)
