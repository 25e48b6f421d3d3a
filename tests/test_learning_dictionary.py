"""The dictionary network a = B(x)θ(t) (MODEL §2): successive approximations converge, the adjoint
gradient equals finite differences of the discrete J, the NumPy ResNet reloaded from
``weights.npz`` reproduces the PDE side's inference exactly, accuracy on an easy task."""
from __future__ import annotations

from mpi4py import MPI

import numpy as np
import pytest

from fem_mfc import config
from fem_mfc.learning import infer
from fem_mfc.learning.dictionary import DictionaryFlow
from fem_mfc.learning.numpy_resnet import NumpyResNet, dictionary_matrix, n_weights
from fem_mfc.runs.classifier import build_model


def small_cfg(**over):
    """Rotated blobs: two Gaussian blobs at ±e_1, anchors at ±2e_2 (a quarter turn is needed);
    the Galerkin transport and its sweeps (EAFE + Newton: tests/test_training_*.py)."""
    raw = {"run": {"formulation": "classifier"},
           "mesh": {"kind": "disk", "radius": 3.5, "h": 0.3},
           "problem": {"T": 1.0, "sigma": 0.35, "steps": 8},
           "data": {"dataset": "gaussians", "classes": 2, "noise": 0.4, "n_samples": 400,
                    "bandwidth": 0.2},
           "network": {"kind": "dictionary", "dictionary": "rotation", "weight_decay": 0.1,
                       "anchors": [[0.0, -2.0], [0.0, 2.0]], "transport": "galerkin"}}
    for s, kv in over.items():
        raw.setdefault(s, {}).update(kv)
    return config.from_dict(raw)


def build(cfg, comm=MPI.COMM_WORLD):
    _, ds, _, model = build_model(cfg, comm)
    return ds, model


@pytest.fixture(scope="module")
def trained():
    ds, model = build(small_cfg())
    model.train(12, 0.5, 1e-3)
    return ds, model


def test_dictionary_sizes():
    assert [n_weights(k, 2, 3) for k in ("affine", "rotation", "random-tanh")] == [6, 1, 6]
    assert n_weights("rotation", 3) == 3
    X = np.array([[1.0, 2.0], [-0.5, 0.3]])
    B = dictionary_matrix("rotation", X)
    assert np.allclose(B[:, :, 0], [[2.0, -1.0], [0.3, 0.5]])      # Ωx with Ω = E_01 − E_10
    theta = np.arange(6.0)
    W, c = theta[:4].reshape(2, 2), theta[4:]
    assert np.allclose(dictionary_matrix("affine", X) @ theta, X @ W.T + c)


def test_successive_approximations_converge(trained):
    _, model = trained
    J, r = np.array(model.history.J), np.array(model.history.residual)
    assert np.all(np.diff(J) <= 1e-12 * abs(J[0])) and J[-1] < 0.7 * J[0]
    assert r[0] == pytest.approx(1.0) and r[-1] < 1e-2 and model.converged
    # discrete duality: J = Σ_k∫u_k(0)ρ_k(0) + weight decay (V = G = 0)
    assert abs(model.value_identity() - model.J) < 1e-10 * abs(model.J)
    assert np.abs(model.masses() - model.masses()[:, :1]).max() < 1e-12


def test_accuracy_rotated_blobs(trained):
    ds, model = trained
    flow = DictionaryFlow(model)
    te = infer.evaluate_flow(flow, ds.X_test, ds.y_test)
    assert te["accuracy"] > 0.9
    # the learned map is (nearly) a rotation by a quarter turn: θ integrates to ≈ ±π/2
    total = model.tau * sum(float(t[0]) for t in model.a)
    assert 0.8 < abs(total) < 2.0, total


@pytest.mark.parametrize("kind", ["random-tanh", "affine"])
def test_adjoint_gradient_matches_finite_differences(kind):
    ds, model = build(small_cfg(mesh={"h": 0.6}, problem={"steps": 3},
                                network={"dictionary": kind,
                                         **({"ridges": 2} if kind == "random-tanh" else {})}))
    rng = np.random.default_rng(1)
    theta = [0.2 * rng.standard_normal(model.m) for _ in range(model.N)]
    d = [rng.standard_normal(model.m) for _ in range(model.N)]
    model.forward(theta)
    model.backward()
    dJ = sum(float(g @ v) for g, v in zip(model.gradient(), d))
    h = 1e-5
    fd = (model.forward([t + h * v for t, v in zip(theta, d)])
          - model.forward([t - h * v for t, v in zip(theta, d)])) / (2 * h)
    assert abs(fd - dJ) < 1e-6 * abs(fd), (fd, dJ)
    model.destroy()


def test_numpy_resnet_reproduces_pde_inference(trained, tmp_path):
    ds, model = trained
    path = tmp_path / "weights.npz"
    model.save_weights(path)
    assert [p.name for p in tmp_path.iterdir()] == ["weights.npz"]       # atomic: no leftovers
    net = NumpyResNet.load(path)
    flow = DictionaryFlow(model)
    X = np.vstack([ds.X_test, [[5.0, -4.0]]])            # also a point outside the mesh
    assert np.array_equal(net.push(X), flow.push(X).X)
    assert np.array_equal(net.predict(X), flow.predict(X))
    # the UFL dictionary inside the PDE forms is the NumPy one: Bθⁿ at the mesh nodes
    x = model.Va.tabulate_dof_coordinates()[:, :2]
    for n in (0, model.N - 1):
        v = model.velocity_function(n).x.array.reshape(-1, 2)
        assert np.allclose(v, net.velocity(n, x), atol=1e-13)


def test_weights_classify_new_raw_points(trained, tmp_path):
    """weights.npz applies to new points in the data's own units: it keeps the training
    standardisation and the class labels (it kept neither, so a user could not apply the
    network without regenerating the data set from the config)."""
    ds, model = trained
    path = tmp_path / "weights.npz"
    model.save_weights(path, ds)
    net = NumpyResNet.load(path)
    X_raw = ds.X_test[:, :2] * ds.scale + ds.mean          # the held-out points, raw units
    assert np.allclose(net.standardise(X_raw), ds.X_test, atol=1e-12)
    labels = net.classify(X_raw)
    assert list(labels) == [ds.classes[k] for k in DictionaryFlow(model).predict(ds.X_test)]


def test_empirical_objective_includes_the_running_potential():
    """With [problem] V the empirical objective of a dictionary network (summary.json's
    empirical_objective and test_objective) left out Σ_n τ V(x_n), which the feedback flow
    counts: it was anchor loss + kinetic energy only."""
    ds, model = build(small_cfg(problem={"V": "0.5*(x0**2 + x1**2)"}))
    rng = np.random.default_rng(3)
    model.a = [0.3 * rng.standard_normal(model.m) for _ in range(model.N)]
    flow = DictionaryFlow(model)
    got = infer.evaluate_flow(flow, ds.X_test, ds.y_test)
    X, path = flow.net.push(ds.X_test, record=True)
    pot = sum(model.tau * 0.5 * (P ** 2).sum(axis=1) for P in path[:-1])
    loss = infer.anchor_loss(X, ds.y_test, model.anchors, model.beta)
    kin = got["kinetic"]
    assert abs(got["objective"] - (loss.mean() + kin + pot.mean())) < 1e-2 * pot.mean()
    model.destroy()


def test_ufl_random_tanh_dictionary_matches_numpy():
    _, model = build(small_cfg(mesh={"h": 0.6}, problem={"steps": 2},
                               network={"dictionary": "random-tanh", "ridges": 3}))
    rng = np.random.default_rng(4)
    model.a = [rng.standard_normal(model.m) for _ in range(model.N)]
    net = model.numpy_resnet()
    x = model.Va.tabulate_dof_coordinates()[:, :2]
    v = model.velocity_function(1).x.array.reshape(-1, 2)
    assert np.allclose(v, net.velocity(1, x), atol=1e-12)
    model.destroy()
