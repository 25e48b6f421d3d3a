"""The typed learning problems (fem_mfc/learning/problem.py): built once from a validated
config, frozen, 'auto' resolved, the sections the networks read passed on read-only."""
from __future__ import annotations

import dataclasses

import pytest

from fem_mfc import config
from fem_mfc.learning.problem import (
    TOL_SECOND_ORDER,
    TOL_SWEEPS,
    ClassifierProblem,
    GenerativeProblem,
)


def _cfg(formulation, **sections):
    return config.from_dict({"run": {"formulation": formulation, "title": "t"}, **sections})


def test_classifier_problem_reads_the_config_once():
    cfg = _cfg("classifier", network={"kind": "dictionary"},
               training={"particles": 7, "epochs": 3})
    prob = ClassifierProblem.from_config(cfg)
    assert (prob.title, prob.seed, prob.sigma, prob.every) == (
        cfg["run"]["title"], cfg["data"]["seed"], cfg["problem"]["sigma"],
        cfg["output"]["every"])
    assert prob.dictionary and prob.particles == cfg["training"]["particles"]
    assert (prob.training.transport, prob.training.method) == config.resolve_training(cfg)
    assert "auto" not in (prob.training.transport, prob.training.method)
    t = cfg["training"]
    assert prob.training.args[:2] == (t["max_sweeps"], t["relaxation"])
    assert (prob.baseline.epochs, prob.baseline.lr, prob.baseline.hidden, prob.baseline.node,
            prob.baseline.patience, prob.baseline.seeds, prob.fresh) == (
        t["epochs"], t["lr"], t["hidden"], t["node"], t["patience"], t["seeds"], t["fresh"])
    assert dict(prob.network) == cfg["network"] and dict(prob.equation) == cfg["problem"]
    assert dict(prob.data) == cfg["data"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        prob.sigma = 0.0
    with pytest.raises(TypeError):
        prob.network["kind"] = "feedback"                       # read-only view


def test_classifier_problem_without_baseline():
    prob = ClassifierProblem.from_config(_cfg("classifier", training={"baseline": False}))
    assert prob.baseline is None and not prob.dictionary


def test_generative_problem_options_are_the_section():
    cfg = _cfg("generative", generative={"samples": 11, "score": False})
    prob = GenerativeProblem.from_config(cfg)
    assert prob.generative.options() == cfg["generative"]
    assert prob.generative.samples == cfg["generative"]["samples"]
    assert prob.generative.score is cfg["generative"]["score"]


@pytest.mark.parametrize("transport,method,expected", [
    ("eafe", "auto", TOL_SECOND_ORDER), ("eafe", "lbfgs", TOL_SECOND_ORDER),
    ("galerkin", "auto", TOL_SWEEPS), ("eafe", "sweeps", TOL_SWEEPS)])
def test_default_tolerance_follows_the_trainer(transport, method, expected):
    """[training] tol = 'auto' (the default): 1e-6 where the trainer converges
    superlinearly, 1e-3 for the linearly converging sweeps; a number is kept."""
    cfg = _cfg("classifier", network={"transport": transport}, training={"method": method})
    assert cfg["training"]["tol"] == "auto"
    assert ClassifierProblem.from_config(cfg).training.tol == expected
    cfg = _cfg("classifier", network={"transport": transport},
               training={"method": method, "tol": 2.5e-4})
    assert ClassifierProblem.from_config(cfg).training.tol == 2.5e-4


@pytest.mark.parametrize("bad", ["tight", 0.0, -1e-3, True, 1.0, 1.5])
def test_bad_tolerance_is_bad_input(bad):
    """tol >= 1 too: the relative residual of the untrained network is 1, so a tol of 1.5
    stopped at iteration 0 and reported the untrained network as converged (exit 0)."""
    with pytest.raises(config.ConfigError, match="training.tol"):
        _cfg("classifier", training={"tol": bad})


def test_identical_anchors_are_refused():
    """Two classes sent to one anchor cannot be told apart: `anchors = [[1, 0], [1, 0]]` was
    accepted and trained to accuracy 0.5 (exit 0).  Refused naming network.anchors."""
    from fem_mfc.errors import ConfigError
    from fem_mfc.learning.feedback import anchors_from_config
    ok = anchors_from_config({"anchors": [[1.0, 0.0], [-1.0]]}, 2, 2)
    assert ok.tolist() == [[1.0, 0.0], [-1.0, 0.0]]
    with pytest.raises(ConfigError, match="network.anchors"):
        anchors_from_config({"anchors": [[1.0, 0.0], [1.0]]}, 2, 2)
