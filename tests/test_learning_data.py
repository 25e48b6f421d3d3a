"""Data sets, CSV validation, split and the KDE class densities (MODEL §8)."""
from __future__ import annotations

import math

from mpi4py import MPI

import dolfinx
import numpy as np
import pytest

from fem_mfc import config
from fem_mfc.errors import ConfigError, UserError
from fem_mfc.invariants import integrate
from fem_mfc.learning import data


def dcfg(**kw):
    return config.from_dict({"run": {"formulation": "classifier"}, "data": kw})["data"]


BAD = {
    "empty.csv": ("", "empty"),
    "header_only.csv": ("x1,x2,label\n", "no data rows"),
    "columns.csv": ("a,b,c\n1,2,0\n", "columns x1,x2,label"),
    "two_columns.csv": ("x1,x2\n1,2\n", "columns x1,x2,label"),
    "nan.csv": ("x1,x2,label\n0,0,0\nnan,1,1\n", "NaN"),
    "text.csv": ("x1,x2,label\n0,0,0\n1,abc,1\n", "not a number"),
    "float_label.csv": ("x1,x2,label\n0,0,0\n1,1,0.5\n", "integer"),
    "one_class.csv": ("x1,x2,label\n0,0,1\n1,1,1\n2,2,1\n", "only one class"),
    "short_row.csv": ("x1,x2,label\n0,0,0\n1,1\n", "expected 3 values"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_csv_one_line_error(tmp_path, name):
    text, msg = BAD[name]
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(UserError) as e:
        data.load(dcfg(dataset="csv", file=str(f)))
    assert msg in str(e.value) and "\n" not in str(e.value) and name in str(e.value)


def test_missing_csv_is_config_error(tmp_path):
    with pytest.raises(ConfigError):
        dcfg(dataset="csv", file=str(tmp_path / "nope.csv"))


def test_bad_bandwidth_is_config_error():
    for b in ("wide", -1.0, 0, True):
        with pytest.raises(ConfigError):
            dcfg(bandwidth=b)


def test_good_csv_relabels_standardises_and_splits(tmp_path):
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(-1, 0.3, (30, 2)), rng.normal(2, 0.5, (30, 2))]
    y = np.r_[np.full(30, 3), np.full(30, 7)]
    f = tmp_path / "ok.csv"
    f.write_text("x1,x2,label\n" + "".join(f"{a},{b},{c}\n" for (a, b), c in zip(X, y)))
    ds = data.load(dcfg(dataset="csv", file=str(f), test_fraction=0.5), dim=3)
    assert ds.K == 2 and set(np.unique(ds.y_train)) == {0, 1}
    assert ds.X_train.shape == (30, 3) and np.all(ds.X_train[:, 2] == 0)
    assert np.allclose(ds.X_train[:, :2].mean(axis=0), 0, atol=1e-12)
    assert np.allclose(ds.X_train[:, :2].std(axis=0), 1)
    assert np.allclose(ds.proportions, [0.5, 0.5])


def test_csv_with_three_features_on_a_3d_mesh(tmp_path):
    """x1,x2,x3,label: 3 features (it was refused: only x1,x2,label was read); they are
    standardised per axis and kept as the 3 coordinates of a 3D mesh; a 2D mesh is refused
    naming data.file."""
    rng = np.random.default_rng(2)
    X = np.r_[rng.normal(-1, 0.3, (20, 3)), rng.normal(1, 0.5, (20, 3))]
    X[:, 2] *= 4.0
    y = np.repeat(["a", "b"], 20)
    f = tmp_path / "three.csv"
    f.write_text("x1,x2,x3,label\n" + "".join(f"{a},{b},{c},{k}\n" for (a, b, c), k in zip(X, y)))
    Xr, yr = data.read_csv(f)
    assert Xr.shape == (40, 3) and np.allclose(Xr, X)
    ds = data.load(dcfg(dataset="csv", file=str(f)), dim=3)
    assert ds.mean.shape == (3,) and ds.X_train.shape == (20, 3)
    assert np.allclose(ds.X_train.std(axis=0), 1) and ds.K == 2
    with pytest.raises(ConfigError, match="data.file.*3 columns"):
        data.load(dcfg(dataset="csv", file=str(f)), dim=2)
    f.write_text("x1,x2,x3,label\n0,0,0,a\n1,1,b\n")
    with pytest.raises(UserError, match="row 3: expected 4 values"):
        data.read_csv(f)


@pytest.mark.parametrize("kind", ["moons", "circles", "spirals", "gaussians"])
def test_generators_and_seeded_split(kind):
    a = data.load(dcfg(dataset=kind, n_samples=200, seed=3))
    b = data.load(dcfg(dataset=kind, n_samples=200, seed=3))
    c = data.load(dcfg(dataset=kind, n_samples=200, seed=4))
    assert np.array_equal(a.X_train, b.X_train) and not np.array_equal(a.X_train, c.X_train)
    assert len(a.y_train) == len(a.y_test) == 100
    assert a.K == (3 if kind == "gaussians" else 2)


def test_bandwidth_rules():
    X = np.random.default_rng(1).normal(size=(300, 2))
    s = X.std(axis=0).mean()
    assert math.isclose(data.bandwidth(X, "scott"), s * 300 ** (-1 / 6))
    assert math.isclose(data.bandwidth(X, "silverman"), s * (4 / (300 * 4)) ** (1 / 6))
    assert data.bandwidth(X, 0.3) == 0.3


@pytest.mark.parametrize("b", [5e-324, 1e-300, 1e-3, 1e300])
def test_a_bandwidth_the_mesh_cannot_hold_names_the_bandwidth(b):
    """data.bandwidth = 5e-324 or 1e300 gave class densities of no mass on the mesh and the
    advice to enlarge the domain (mesh.radius): the bandwidth is refused by name, with the
    mesh's limits, as rho0.std."""
    msh = dolfinx.mesh.create_rectangle(MPI.COMM_WORLD, [[-4, -4], [4, 4]], [8, 8])
    V = dolfinx.fem.functionspace(msh, ("Lagrange", 1))
    ds = data.load(dcfg(dataset="gaussians", n_samples=60, noise=0.3, classes=2))
    with pytest.raises(ConfigError) as e:
        data.class_densities(ds, V, b)
    assert e.value.key == "data.bandwidth"
    data.class_densities(ds, V, 0.5)


@pytest.mark.parametrize("rows, which", [
    ("0,0,a\n0,0,a\n1,1,b\n1.2,0.8,b\n0.9,1.1,b\n0.8,1.3,b\n", "2 training points, all"),
    (None, "one training point")])
def test_a_class_without_spread_names_the_bandwidth(rows, which, tmp_path):
    """A class whose training points have no spread (one point, or duplicates) has a Scott
    bandwidth of 0: its density had no mass and the run said "class 0: its density has no
    mass on the mesh; enlarge the domain", which does not help.  data.bandwidth is named."""
    msh = dolfinx.mesh.create_rectangle(MPI.COMM_WORLD, [[-4, -4], [4, 4]], [8, 8])
    V = dolfinx.fem.functionspace(msh, ("Lagrange", 1))
    if rows is None:                     # test_fraction 0.97: one training point per class
        ds = data.load(dcfg(dataset="gaussians", n_samples=120, noise=0.3, classes=3,
                            test_fraction=0.97))
    else:
        (tmp_path / "d.csv").write_text("x1,x2,label\n" + rows * 2)
        ds = data.load(dcfg(dataset="csv", file=str(tmp_path / "d.csv"), seed=1))
        assert np.bincount(ds.y_train)[0] == 2
    with pytest.raises(ConfigError, match=which) as e:
        data.class_densities(ds, V, "scott")
    assert e.value.key == "data.bandwidth"
    data.class_densities(ds, V, 0.5)


def test_kde_class_densities_normalised_to_proportions():
    msh = dolfinx.mesh.create_rectangle(MPI.COMM_WORLD, [[-4, -4], [4, 4]], [24, 24])
    V = dolfinx.fem.functionspace(msh, ("Lagrange", 1))
    ds = data.load(dcfg(dataset="gaussians", n_samples=240, noise=0.3, classes=3))
    rhos, hs = data.class_densities(ds, V, "scott")
    assert len(rhos) == 3 and all(h > 0 for h in hs)
    for r, p in zip(rhos, ds.proportions):
        assert abs(integrate(r) - p) < 1e-12
        assert r.x.array.min() >= 0
    # the raw KDE is a probability density: its integral over a wide box is ~1 before scaling
    x = np.stack(np.meshgrid(np.linspace(-6, 6, 241), np.linspace(-6, 6, 241)), -1).reshape(-1, 2)
    k0 = data.kde(ds.X_train[ds.y_train == 0], 0.4, x, 2)
    assert abs(k0.sum() * (12 / 240) ** 2 - 1) < 1e-3


@pytest.mark.parametrize("change,key", [
    ({"mesh": {"kind": "interval", "lower": [-3.0], "upper": [3.0]}}, "mesh.kind"),
    ({"data": {"dataset": "csv"}}, "data.file")])
@pytest.mark.parametrize("formulation", ["classifier", "generative"])
def test_learning_configs_refused_with_one_line(formulation, change, key):
    """A 1D mesh crashed in the data's padding (a traceback, exit 1); dataset = 'csv' without
    a file said ".: data file not found".  Both are refused at load naming the key."""
    from fem_mfc import config
    from fem_mfc.errors import ConfigError
    raw = {"run": {"formulation": formulation}}
    for sec, kv in change.items():
        raw[sec] = dict(kv)
    with pytest.raises(ConfigError, match=key):
        config.from_dict(raw)


def test_a_negative_zero_noise_is_zero():
    """data.noise = -0.0 passed 'a non-negative number' and numpy's normal() refused the scale
    ("scale < 0", exit 1 with a traceback): a number -0.0 is 0.0 once validated."""
    cfg = config.from_dict({"run": {"formulation": "classifier"}, "mesh": {"kind": "disk"},
                            "data": {"dataset": "gaussians", "noise": -0.0, "n_samples": 40}})
    assert math.copysign(1.0, cfg["data"]["noise"]) == 1.0
    data.load(cfg["data"], 2)


@pytest.mark.parametrize("over,key", [({"test_fraction": 1e-12}, "data.test_fraction"),
                                      ({"test_fraction": 0.999}, "data.test_fraction"),
                                      ({"dataset": "csv"}, "data.file")])
def test_a_split_without_every_class_names_the_key(over, key, tmp_path):
    """'too few points to split' named no key (a UserError about the data set): the fraction,
    or the file whose class has a single point, is named now."""
    f = tmp_path / "one.csv"
    f.write_text("x1,x2,label\n" + "".join(f"{i},{i % 3},0\n" for i in range(9)) + "5,5,1\n")
    if over.get("dataset") == "csv":     # a file: no n_samples
        over = {**over, "file": str(f)}
    else:
        over = {"n_samples": 80, **over}
    with pytest.raises(ConfigError) as e:
        data.load(dcfg(**over))
    assert e.value.key == key


@pytest.mark.parametrize("change,key", [
    ({"problem": {"Phi": "x0**2"}}, "problem.Phi"),
    ({"rho0": {"kind": "formula", "formula": "1 + x0"}}, "rho0"),
    ({"discretisation": {"scheme": "crank-nicolson"}}, "discretisation.scheme"),
    ({"discretisation": {"degree": 2}}, "discretisation.degree"),
    ({"discretisation": {"stabilisation": "monotone"}}, "discretisation.stabilisation")])
@pytest.mark.parametrize("formulation", ["classifier", "generative"])
def test_control_problem_keys_the_learning_runs_ignore_are_refused(formulation, change, key):
    """[problem] Phi, a [rho0] section and [discretisation] choices are not read by the
    learning formulations (anchors / KL, the data's KDEs, P1 implicit layers): a classifier
    with Phi = "x0**2", or with Crank-Nicolson, ran and reported the same J as without it,
    exit 0.  They are refused at load naming the key; a written config.toml, with every
    default filled in, still loads."""
    raw = {"run": {"formulation": formulation}}
    for sec, kv in change.items():
        raw[sec] = dict(kv)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config.from_dict(raw)
    full = config.from_dict({"run": {"formulation": formulation}})
    assert config.from_dict(full) == full


@pytest.mark.parametrize("network", [{"kind": "dictionary"}, {"anchors": [[1.0, 0.0]]},
                                     {"loss_weight": 3.0}])
def test_classifier_network_keys_refused_for_the_generative_flow(network):
    """A generative config with network.kind = "dictionary" (or anchors, loss_weight) trained
    the feedback flow all the same and reported its J, exit 0; refused naming the key now,
    and the classifier takes them as before."""
    key = "network." + next(iter(network))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config.from_dict({"run": {"formulation": "generative"}, "network": network})
    config.from_dict({"run": {"formulation": "classifier"}, "network": network})
