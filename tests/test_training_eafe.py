"""The EAFE transport (fem_mfc/learning/eafe.py) and the reduced functional on it
(fem_mfc/learning/reduced.py): Bernoulli function, M-matrix and mass, positivity at large
mesh Péclet numbers, discrete duality, and the gradient and Hessian-vector products against
central finite differences."""
from __future__ import annotations

import math

from mpi4py import MPI

import dolfinx
import numpy as np
import pytest

from fem_mfc import config
from fem_mfc.learning import data
from fem_mfc.learning.eafe import EdgeGraph, bernoulli
from fem_mfc.learning.feedback import anchors_from_config
from fem_mfc.learning.reduced import EdgeClassifier
from fem_mfc.pipeline import build_mesh
from fem_mfc.runs.classifier import build_model


def eafe_cfg(**over):
    raw = {"run": {"formulation": "classifier"},
           "mesh": {"kind": "disk", "radius": 3.5, "h": 0.5},
           "problem": {"T": 1.0, "sigma": 0.45, "steps": 4},
           "data": {"dataset": "moons", "n_samples": 200, "bandwidth": 0.25},
           "network": {"transport": "eafe"},
           "training": {"method": "newton", "max_sweeps": 15, "tol": 1e-8}}
    for s, kv in over.items():
        raw.setdefault(s, {}).update(kv)
    return config.from_dict(raw)


def build_edge(cfg, comm=MPI.COMM_WORLD):
    md = build_mesh(cfg, comm)
    dim = md.mesh.geometry.dim
    ds = data.load(cfg["data"], dim)
    V = dolfinx.fem.functionspace(md.mesh, ("Lagrange", 1))
    rho0, _ = data.class_densities(ds, V, cfg["data"]["bandwidth"])
    anchors = anchors_from_config(cfg["network"], ds.K, dim)
    return md, ds, EdgeClassifier(rho0, anchors, cfg["problem"], cfg["network"])


def test_bernoulli_values_and_derivatives():
    s = np.concatenate([np.linspace(-40, 40, 801), np.linspace(-0.2, 0.2, 401), [0.0]])
    B, B1, B2 = bernoulli(s)
    with np.errstate(invalid="ignore", divide="ignore"):
        exact = np.where(s == 0, 1.0, s / np.expm1(s))
    assert np.allclose(B, exact, rtol=1e-14, atol=1e-300)
    assert np.allclose(bernoulli(-s)[0] - B, s, rtol=0, atol=1e-13)   # B(−s) = B(s) + s
    h = 1e-5
    for f, df in ((lambda x: bernoulli(x)[0], B1), (lambda x: bernoulli(x)[1], B2)):
        fd = (f(s + h) - f(s - h)) / (2 * h)
        assert np.abs(fd - df).max() < 1e-8
    assert np.all(B > 0) and np.all(B1 < 0) and np.all(B2 > 0)


def _step_matrix(g, a, eps, tau):
    beta = g.beta(g.ext_vec(a), eps)
    B, _, _ = bernoulli(beta)
    vals = g.step_values(B, beta, eps, tau)
    A = np.zeros((g.nl, g.nl))
    A[g.rows, g.cols] = vals
    return A


def test_step_matrix_is_an_m_matrix_that_conserves_mass():
    """Serial: off-diagonals ≤ 0, column sums = the lumped masses (mass), for velocities up to
    a mesh Péclet number 200; the Galerkin-free positivity of ρ follows."""
    cfg = eafe_cfg()
    md = build_mesh(cfg, MPI.COMM_SELF)
    V = dolfinx.fem.functionspace(md.mesh, ("Lagrange", 1))
    g = EdgeGraph(V)
    rng = np.random.default_rng(0)
    eps, tau = 0.01, 0.1
    a = 2.0 * rng.normal(size=(g.nl, 2))                    # |a| h / 2ε ≈ 100
    A = _step_matrix(g, a, eps, tau)
    off = A - np.diag(np.diag(A))
    assert off.max() <= 0.0 and np.diag(A).min() > 0
    assert np.allclose(A.sum(axis=0), g.m, rtol=1e-12)      # 1ᵀ(M + τX) = 1ᵀM
    rho = np.linalg.solve(A, g.m * rng.uniform(0, 1, g.nl))
    assert rho.min() >= 0.0
    g.destroy()


@pytest.mark.parametrize("G, network, mesh", [
    ("0", {}, {}), ("0.5*rho**2", {}, {}),
    ("0.5*rho**2", {"kind": "dictionary", "dictionary": "random-tanh", "ridges": 6}, {}),
    ("0", {"kind": "dictionary", "dictionary": "affine"}, {}),
    ("0", {}, {"kind": "ball", "radius": 3.0, "h": 1.0})])       # 3D: GMRES/CG solves
def test_gradient_and_hessian_vector_products_match_finite_differences(G, network, mesh):
    """∇J·v against (J(x+hv) − J(x−hv))/2h and H v against the difference of gradients:
    second-order accurate, so the errors drop 100x from h = 1e-3 to 1e-4 (a wrong term in
    either would leave an O(1) error).  Feedback network (velocities) and dictionary network
    (weights θ)."""
    _, _, _, m = build_model(eafe_cfg(problem={"G": G}, network=network, mesh=mesh),
                             MPI.COMM_WORLD)
    assert type(m).__name__ == ("EdgeDictionaryNetwork" if network else "EdgeClassifier")
    rng = np.random.default_rng(1)
    x = rng.normal(size=m.n_local)
    v = rng.normal(size=m.n_local)
    m.forward(x)
    m.backward()
    g = m.grad.copy()
    gv = m.dot(g, v)
    Hv = m.hessp(v)
    errs = []
    for h in (1e-3, 1e-4):
        Jp = m.forward(x + h * v)
        m.backward()
        gp = m.grad.copy()
        Jm = m.forward(x - h * v)
        m.backward()
        gm = m.grad.copy()
        fd = (Jp - Jm) / (2 * h)
        dH = (gp - gm) / (2 * h) - Hv
        errs.append((abs(fd - gv) / abs(gv), math.sqrt(m.dot(dH, dH) / m.dot(Hv, Hv))))
    (g1, h1), (g2, h2) = errs
    assert g2 < 1e-7 and h2 < 1e-7, errs
    assert g2 < 0.05 * g1 and h2 < 0.05 * h1, errs
    # the Hessian is symmetric: wᵀ(H v) = vᵀ(H w)
    m.forward(x)
    m.backward()
    w = rng.normal(size=m.n_local)
    assert m.dot(w, m.hessp(v)) == pytest.approx(m.dot(v, m.hessp(w)), rel=1e-10)
    m.destroy()


def test_duality_mass_and_positivity_at_large_velocities():
    """For an arbitrary (large) control: masses exact, min ρ ≥ −1e-12 at mesh Péclet ≫ 2, and
    the value identity J = Σ_k ∫u_k^1ρ_k^0 + … (the adjoint is the transposed FP step)."""
    cfg = eafe_cfg(problem={"G": "0.3*rho**2/2", "sigma": 0.2})
    md, ds, m = build_edge(cfg)
    rng = np.random.default_rng(3)
    J = m.forward(3.0 * rng.normal(size=m.n_local))
    m.backward()
    assert m.peclet(md.h) > 10
    assert m.min_rho() >= -1e-12
    M = m.masses()
    assert np.abs(M - ds.proportions[:, None]).max() < 1e-12
    assert abs(m.value_identity() - J) < 1e-12 * abs(J)
    m.destroy()
