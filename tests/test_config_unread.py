"""Keys the configured run does not read are refused at load, naming the key (each was
ignored: a copied config ran "successfully" with a key that had no effect).  A key equal to
its default stays accepted, as in the config.toml a run writes (it holds every key)."""
from __future__ import annotations

import pytest

from fem_mfc import config
from fem_mfc.errors import ConfigError


def refused(raw: dict, key: str) -> str:
    with pytest.raises(ConfigError) as e:
        config.from_dict(raw)
    assert e.value.key == key, str(e.value)
    assert "\n" not in str(e.value)
    return str(e.value)


def reloads(raw: dict) -> dict:
    """The config loads, and so does its full copy (every default filled in)."""
    full = config.from_dict(raw)
    assert config.from_dict(full) == full
    return full


HEAT = {"run": {"formulation": "heat"}}


@pytest.mark.parametrize("section,key,value", [
    ("problem", "V", "x0**2"), ("problem", "G", "rho**2"), ("problem", "Phi", "x0**2"),
    ("problem", "coupling", "mfg"), ("discretisation", "stabilisation", "monotone")])
def test_heat_refuses_the_control_problem_keys(section, key, value):
    """formulation 'heat' with [problem] V or G ran the uncontrolled flow all the same."""
    msg = refused({**HEAT, section: {key: value}}, f"{section}.{key}")
    assert "'heat'" in msg
    reloads({"run": {"formulation": "hjb-fp"}, section: {key: value, "G": "rho**2"}}
            if section == "problem" else {section: {key: value}})
    reloads({**HEAT, "problem": {"V": "0", "G": "0", "Phi": "0", "coupling": "mftc"}})


NLS = {"run": {"formulation": "nls"}, "mesh": {"kind": "interval", "lower": [-10.0],
                                               "upper": [10.0]}}


@pytest.mark.parametrize("initial,key,value", [
    ("soliton", "mass", 2.0), ("soliton", "gs_tol", 1e-6), ("soliton", "s0", 0.3),
    ("soliton", "k0", [1.0]), ("gaussian", "eta", 2.0), ("gaussian", "mass", 2.0),
    ("ground-state", "wavenumber", 1.0), ("ground-state", "x0", [1.0])])
def test_nls_refuses_the_keys_of_another_initial_state(initial, key, value):
    """An NLS soliton with nls.mass set ran the soliton of amplitude eta all the same."""
    kappa = -1.0 if initial == "soliton" else 0.0
    refused({**NLS, "nls": {"initial": initial, "kappa": kappa, key: value}}, f"nls.{key}")
    own = next(i for i, keys in config.NLS_INITIAL_KEYS.items() if key in keys)
    reloads({**NLS, "nls": {"initial": own, "kappa": -1.0 if own == "soliton" else 0.0,
                            key: value}})


@pytest.mark.parametrize("section,key,value", [
    ("problem", "sigma", 0.1), ("problem", "Phi", "x0**2"), ("rho0", "std", 0.1),
    ("discretisation", "scheme", "crank-nicolson")])
def test_nls_refuses_the_control_problem_keys(section, key, value):
    raw = {**NLS, "nls": {"initial": "gaussian"}}
    refused({**raw, section: {key: value}}, f"{section}.{key}")
    # the origin as the mean (an old demo's workaround), zero vectors and written defaults load
    reloads({**raw, "rho0": {"mean": [0.0]}, "nls": {"initial": "ground-state", "x0": [0.0],
                                                     "k0": [0.0, 0.0]}})


@pytest.mark.parametrize("kind,key,value", [
    ("disk", "lower", [-2.0, -2.0]), ("disk", "upper", [2.0, 2.0]), ("ball", "cells", 8),
    ("lshape", "diagonal", "crossed"), ("disk", "inner_radius", 0.2),
    ("rectangle", "radius", 2.0), ("interval", "h", 0.1)])
def test_mesh_keys_of_another_kind_are_refused(kind, key, value):
    """A disk mesh with rectangle corners ran on the unit disk all the same."""
    refused({"mesh": {"kind": kind, key: value}}, f"mesh.{key}")
    own = next(k for k in ("rectangle", "annulus") if key in config.MESH_KIND_KEYS[k])
    reloads({"mesh": {"kind": own, key: value}})
    reloads({"mesh": {"kind": kind}})      # the disk's copy holds the default corners


@pytest.mark.parametrize("H,key,value", [
    ("weighted", "q", 3.0), ("power", "weight", "2"), ("congestion", "A", [["1"]]),
    ("anisotropic", "alpha", 2.0), ("quadratic", "weight", "2"), ("|p|**4/4", "alpha", 2.0)])
def test_hamiltonian_keys_of_another_H_are_refused(H, key, value):
    """[hamiltonian] q set with [problem] H = 'weighted' solved the weighted H all the same."""
    def raw(h, table):
        table = {"A": [["2"]], **table} if h == "anisotropic" else table
        return {"mesh": {"kind": "interval"}, "problem": {"H": h}, "hamiltonian": table}
    refused(raw(H, {key: value}), f"hamiltonian.{key}")
    own = next(h for h, keys in config.HAMILTONIAN_KEYS.items() if key in keys)
    reloads(raw(own, {key: value}))
    reloads(raw(H, {}))


def test_power_2_does_not_read_delta():
    refused({"problem": {"H": "power"}, "hamiltonian": {"q": 2.0, "delta": 0.1}},
            "hamiltonian.delta")
    reloads({"problem": {"H": "power"}, "hamiltonian": {"q": 2.0}})


CLASSIFIER = {"run": {"formulation": "classifier"}}


@pytest.mark.parametrize("network,key", [
    ({"ridges": 4}, "ridges"), ({"weight_decay": 0.1}, "weight_decay"),
    ({"dictionary": "rotation"}, "dictionary"), ({"dictionary_seed": 3}, "dictionary_seed"),
    ({"kind": "dictionary", "smoothing": 0.1}, "smoothing"),
    ({"kind": "dictionary", "transport": "galerkin", "velocity": "DG0"}, "velocity"),
    ({"kind": "dictionary", "dictionary": "affine", "ridges": 16}, "ridges"),
    ({"kind": "dictionary", "dictionary": "rotation", "ridge_scale": 2.0}, "ridge_scale")])
def test_network_keys_of_another_network_class_are_refused(network, key):
    """A feedback classifier with [network] ridges or weight_decay trained the feedback
    network all the same; so did a dictionary network with a velocity smoothing."""
    refused({**CLASSIFIER, "network": network}, f"network.{key}")
    if key in config.DICTIONARY_KEYS:
        reloads({**CLASSIFIER, "network": {**network, "kind": "dictionary",
                                           "dictionary": "random-tanh"}})
    else:
        reloads({**CLASSIFIER, "network": {**network, "kind": "feedback"}})


def test_the_generative_flow_refuses_the_dictionary_keys():
    refused({"run": {"formulation": "generative"}, "network": {"weight_decay": 0.1}},
            "network.weight_decay")


@pytest.mark.parametrize("key,value", [("epochs", 50), ("hidden", 8), ("seeds", 2),
                                       ("node", False), ("lr", 0.1), ("patience", 10),
                                       ("fresh", 0), ("particles", 100)])
def test_generative_refuses_the_classifier_training_keys(key, value):
    """A generative config with the torch baselines' epochs (or hidden, seeds, ...) trained
    the flow and reported success: it trains no baseline, has no fresh sample or particles."""
    refused({"run": {"formulation": "generative"}, "training": {key: value}}, f"training.{key}")
    reloads({**CLASSIFIER, "training": {key: value}})
    # baseline = false says what the flow does: accepted, and so are the written defaults
    reloads({"run": {"formulation": "generative"}, "training": {"baseline": False}})


def test_the_memory_estimate_of_a_generative_run_counts_no_baseline():
    gen = config.from_dict({"run": {"formulation": "generative"}})
    assert set(config.estimate_resources(gen)["learning"]) == {"data.n_samples",
                                                               "generative.samples"}


@pytest.mark.parametrize("formulation,section,key,value", [
    ("hjb-fp", "data", "n_samples", 50), ("hjb-fp", "nls", "hbar", 2.0),
    ("cole-hopf", "qhd", "hbar", 2.0), ("heat", "network", "delta", 0.1),
    ("qhd", "training", "max_sweeps", 5), ("classifier", "generative", "kl_weight", 1.0),
    ("generative", "nls", "kappa", -1.0), ("nls", "data", "dataset", "circles")])
def test_sections_of_other_formulations_are_refused(formulation, section, key, value):
    """[data] in an HJB-FP config, [nls] hbar in a QHD one...: the run read none of them."""
    msg = refused({"run": {"formulation": formulation}, "mesh": {"kind": "interval"} if
                   formulation == "nls" else {}, section: {key: value}}, f"{section}.{key}")
    assert f"no [{section}] section" in msg
    reloads({"run": {"formulation": formulation}, "mesh": {"kind": "interval"} if
             formulation == "nls" else {}, section: {key: config.SCHEMA[section][key].default}})


QHD = {"run": {"formulation": "qhd"}}


@pytest.mark.parametrize("signature,section,key,value", [
    ("control", "qhd", "hbar", 2.0), ("quantum", "problem", "sigma", 0.8),
    ("quantum", "discretisation", "scheme", "crank-nicolson"),
    ("control", "discretisation", "stabilisation", "monotone")])
def test_qhd_refuses_the_keys_of_the_other_signature(signature, section, key, value):
    """The control signature's Bohm coefficient is sigma^4/2 (qhd.hbar had no effect), the
    quantum one's -hbar^2/2 (sigma had none: the same energy for sigma = 0.5, 0.8 and 0)."""
    raw = {**QHD, "qhd": {"signature": signature}}
    refused({**raw, section: {**raw.get(section, {}), key: value}}, f"{section}.{key}")
    if key != "stabilisation":
        other = "quantum" if signature == "control" else "control"
        raw = {**QHD, "qhd": {"signature": other}}
        reloads({**raw, section: {**raw.get(section, {}), key: value}})


@pytest.mark.parametrize("kind,key,value", [
    ("formula", "std", 0.5), ("formula", "mean", [0.5, 0.0]), ("gaussian", "formula", "1 + x0"),
    ("gaussian", "weights", [1.0]), ("formula", "means", [[0.0, 0.0]])])
def test_rho0_keys_of_another_kind_are_refused(kind, key, value):
    """rho0.kind = 'formula' with a Gaussian's std ran the formula's density all the same."""
    extra = {"formula": "1 + 0.1*x0"} if kind == "formula" else {}
    refused({"rho0": {"kind": kind, **extra, key: value}}, f"rho0.{key}")
    reloads({"rho0": {"kind": kind, **extra, "mean": [0.0, 0.0]}})    # the origin: the default


def test_a_population_rho0_refuses_the_keys_of_another_kind():
    pops = [{"rho0": {"kind": "formula", "formula": "1", "std": 0.2}},
            {"rho0": {"kind": "gaussian", "mean": [0.5, 0.0]}}]
    refused({"solver": {"method": "newton"}, "population": pops}, "population[0].rho0.std")


@pytest.mark.parametrize("dataset,key,value", [
    ("moons", "factor", 0.3), ("circles", "turns", 2.0), ("spirals", "classes", 4),
    ("gaussians", "factor", 0.3), ("csv", "n_samples", 200), ("csv", "noise", 0.3)])
def test_data_keys_of_another_data_set_are_refused(dataset, key, value, tmp_path):
    """Moons with a circles' factor drew the moons all the same."""
    f = tmp_path / "d.csv"
    f.write_text("x1,x2,label\n0,0,0\n1,1,1\n")
    extra = {"file": str(f)} if dataset == "csv" else {}
    refused({**CLASSIFIER, "data": {"dataset": dataset, **extra, key: value}}, f"data.{key}")
    own = next(d for d, keys in config.DATASET_KEYS.items() if key in keys)
    reloads({**CLASSIFIER, "data": {"dataset": own, key: value}})


def test_a_csv_data_set_has_no_fresh_sample(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("x1,x2,label\n0,0,0\n1,1,1\n")
    data = {"dataset": "csv", "file": str(f)}
    refused({**CLASSIFIER, "data": data, "training": {"fresh": 100}}, "training.fresh")
    reloads({**CLASSIFIER, "data": data, "training": {"fresh": 0}})    # 0: none, as it is
    reloads({**CLASSIFIER, "data": data})


@pytest.mark.parametrize("raw,key", [
    ({**HEAT, "solver": {"rtol": 1e-6}}, "solver.rtol"),
    ({**HEAT, "solver": {"method": "newton"}}, "solver.method"),
    ({**CLASSIFIER, "solver": {"max_it": 5}}, "solver.max_it"),
    ({**NLS, "solver": {"linear": "lu"}}, "solver.linear"),
    ({**QHD, "solver": {"continuation": False}}, "solver.continuation"),
    ({"run": {"formulation": "cole-hopf"}, "solver": {"method": "newton"}}, "solver.method"),
    ({"run": {"formulation": "cole-hopf"}, "solver": {"initial_guess": "coarse"}},
     "solver.initial_guess"),
    ({"solver": {"method": "newton", "relaxation": 0.2}}, "solver.relaxation"),
    ({"solver": {"method": "picard", "max_it": 5}}, "solver.max_it"),
    ({"solver": {"method": "picard", "linear": "lu"}}, "solver.linear"),
    ({"solver": {"method": "cole-hopf", "continuation": False}}, "solver.continuation"),
    ({"solver": {"picard_max_it": 100}}, "solver.picard_max_it")])     # 'auto': never Picard
def test_solver_keys_the_solve_does_not_read_are_refused(raw, key):
    """The heat steps read no Newton tolerance; Newton no Picard damping; Picard no Newton
    iteration count; formulation 'cole-hopf' no other method."""
    refused(raw, key)


@pytest.mark.parametrize("raw", [
    {"solver": {"method": "picard", "relaxation": 0.2, "picard_max_it": 9, "rtol": 1e-8}},
    {"solver": {"method": "newton", "linear": "lu", "continuation": False, "max_it": 9,
                "initial_guess": "coarse", "step_solver": "ilu"}},
    {"run": {"formulation": "cole-hopf"}, "solver": {"method": "cole-hopf", "max_it": 9,
                                                     "step_solver": "lu"}},
    {**NLS, "solver": {"rtol": 1e-12, "atol": 1e-14, "max_it": 9}},
    {**QHD, "solver": {"method": "newton", "rtol": 1e-8}},
    {**HEAT, "solver": {"petsc_options": {"heat_ksp_type": "cg"}}}])
def test_solver_keys_the_solve_reads_load(raw):
    reloads(raw)


@pytest.mark.parametrize("key,value", [("mean", [0.5, 0.0]), ("std", 0.5)])
def test_the_manufactured_solution_refuses_a_gaussian_it_replaces(key, value):
    """exact.solution = 'manufactured' sets rho0 itself: a Gaussian's mean or std had no
    effect (the LQ solution reads them)."""
    refused({"exact": {"solution": "manufactured"}, "rho0": {key: value}}, f"rho0.{key}")
    reloads({"exact": {"solution": "lq-gaussian"}, "rho0": {key: value}})
    reloads({"exact": {"solution": "manufactured"}})


@pytest.mark.parametrize("raw,key", [
    ({**CLASSIFIER, "network": {"anchors": [[1.0, 0.0], [-1.0, 0.0]], "anchor_radius": 3.0}},
     "network.anchor_radius"),
    ({"run": {"formulation": "generative"}, "network": {"anchor_radius": 3.0}},
     "network.anchor_radius"),
    ({**CLASSIFIER, "training": {"relaxation": 0.2}}, "training.relaxation"),     # Newton-CG
    ({**CLASSIFIER, "training": {"method": "lbfgs", "relaxation": 0.2}}, "training.relaxation"),
    ({**CLASSIFIER, "network": {"transport": "galerkin", "velocity": "DG0", "smoothing": 0.1}},
     "network.smoothing")])
def test_learning_keys_the_configured_training_does_not_read(raw, key):
    """Anchors given make anchor_radius moot; Newton-CG and L-BFGS take no relaxation; a DG0
    velocity has no gradient to smooth."""
    refused(raw, key)


def test_the_sweeps_read_their_relaxation_and_p1_velocities_their_smoothing():
    reloads({**CLASSIFIER, "network": {"transport": "galerkin", "smoothing": 0.1},
             "training": {"relaxation": 0.2}})
    reloads({**CLASSIFIER, "network": {"anchor_radius": 3.0}})


@pytest.mark.parametrize("raw", [
    {"problem": {"coupling": "mfg"}}, {"problem": {"coupling": "mfg", "G": "0"}},
    {"problem": {"coupling": "mfg", "G": "0*rho"}},
    {"problem": {"coupling": "mfg", "H": "weighted"}},
    {**QHD, "problem": {"coupling": "mfg"}},
    {**NLS, "nls": {"kappa": -1.0}, "problem": {"coupling": "mfg"}}])
def test_a_coupling_with_nothing_to_couple_is_refused(raw):
    """coupling = 'mfg' without a congestion (and an H free of rho) solved the same problem
    as 'mftc'; the NLS's g is G' whatever the coupling."""
    refused(raw, "problem.coupling")


@pytest.mark.parametrize("problem", [{"G": "rho**2/2"}, {"H": "congestion"},
                                     {"H": "|p|**2/(2*(1 + rho))"},
                                     {"G": "c*rho**2", "params": {"c": 0.0}}])
def test_a_coupling_of_a_congestion_loads(problem):
    """... also one that vanishes for the parameters of one run of a study (c = 0)."""
    reloads({"problem": {**problem, "coupling": "mfg"}})


@pytest.mark.parametrize("table,key", [
    ({"kind": "no-flux", "cost": "1"}, "cost"), ({"kind": "exit", "rate": 2.0}, "rate"),
    ({"kind": "robin", "density": "0.5"}, "density"), ({"kind": "exit", "to": 1}, "to"),
    ({"cost": "2"}, "cost")])                      # kind: no-flux by default
def test_boundary_keys_of_another_kind_are_refused(table, key):
    """An exit with a leak rate, a wall with a cost: the side was what its kind says."""
    refused({"solver": {"method": "newton"}, "boundary": [{"tag": 2, **table}]},
            f"boundary[0].{key}")


def test_boundary_keys_of_their_own_kind_load():
    reloads({"solver": {"method": "newton"}, "boundary": [
        {"tag": 1, "kind": "robin", "cost": "1", "rate": 2.0},
        {"tag": 2, "kind": "dirichlet", "cost": "1", "density": "0.5"}]})
