"""Rotation network: particle optimality system ↔ Lie–Poisson (rigid body) reduction, training."""
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from fem_mfc.integrators import examples as ex
from fem_mfc.integrators import solve_reference
from fem_mfc.integrators.lie_algebras import hat
from fem_mfc.integrators.weight_space import RotationNetwork, make_point_cloud


@pytest.fixture(scope="module")
def net():
    x0, labels, anchors = make_point_cloud(n_per_class=10, seed=0)
    return RotationNetwork(x0, anchors[labels], lam=(0.05, 0.1, 0.2), T=1.0)


@pytest.fixture(scope="module")
def costates(net):
    """Costates of the size a real terminal condition gives (w_i ∇Φ, w_i = 1/N)."""
    return np.random.default_rng(1).normal(size=(net.N, 3)) / net.N


def split(net, z):
    return z[:3 * net.N].reshape(-1, 3), z[3 * net.N:].reshape(-1, 3)


def test_particle_hamiltonian_derivatives(net):
    s = net.particle_system()
    z = np.random.default_rng(2).normal(size=s.dim)
    h, eye = 1e-6, np.eye(s.dim)
    g_fd = np.array([(s.H(z + h * e) - s.H(z - h * e)) / (2 * h) for e in eye])
    H_fd = np.array([(s.grad_H(z + h * e) - s.grad_H(z - h * e)) / (2 * h) for e in eye]).T
    assert np.max(np.abs(g_fd - s.grad_H(z))) <= 1e-7 * max(1, np.abs(g_fd).max())
    assert np.max(np.abs(H_fd - s.hess_H(z))) <= 1e-6 * max(1, np.abs(H_fd).max())


def test_vector_field_is_the_optimality_system(net, costates):
    """x_i' = θ × x_i, p_i' = θ × p_i (= −θ̂ᵀp_i) with θ = −Λ⁻¹ Σ_i x_i × p_i."""
    s = net.particle_system()
    z = np.concatenate([net.x0.ravel(), costates.ravel()])
    theta = net.control(net.momentum(net.x0, costates))
    xdot, pdot = split(net, s.vector_field(z))
    assert np.allclose(xdot, np.cross(theta, net.x0), atol=1e-15)
    assert np.allclose(pdot, -costates @ hat(theta), atol=1e-15)     # rows: −θ̂ᵀ p_i


def test_continuous_particles_match_rigid_body(net, costates):
    """μ(t) = Σ p_i x_iᵀ along the particle solution: its so(3)* part M = Σ x_i × p_i equals the
    rigid body M' = M × Λ⁻¹M from M(0) (reference and LPHJ4), |M|² is conserved, and the full
    matrix μ obeys MODEL §5's μ' = μθᵀ − θᵀμ."""
    s = net.particle_system()
    z0 = np.concatenate([net.x0.ravel(), costates.ravel()])
    ts = np.linspace(0.0, net.T, 21)
    Z = solve_reference(s, z0, ts)[0]
    M = np.array([net.momentum(*split(net, z)) for z in Z])
    ref = solve_ivp(ex.rigid_body_rhs(net.lam), (0, net.T), M[0], t_eval=ts, method="DOP853",
                    rtol=1e-13, atol=1e-14).y.T
    scale = np.abs(M).max()
    assert np.max(np.abs(M - ref)) <= 1e-9 * scale
    lp = net.forward(M[0], 200, "lphj4").M[::10]
    assert np.max(np.abs(lp - ref)) <= 1e-7 * scale
    C = np.sum(M ** 2, axis=1)
    assert np.ptp(C) <= 1e-10 * C[0]
    # the matrix equation of MODEL §5 at t = 0, by the vector field of the particle system
    x, p = split(net, Z[0])
    xd, pd = split(net, s.vector_field(Z[0]))
    mu_dot = pd.T @ x + p.T @ xd
    th = hat(net.control(M[0]))
    mu = p.T @ x
    assert np.allclose(mu_dot, mu @ th.T - th.T @ mu, atol=1e-14)


@pytest.mark.parametrize("integrator", ["lphj1", "lphj2", "lphj4"])
def test_discrete_particles_match_lphj_to_roundoff(net, costates, integrator):
    M0 = net.momentum(net.x0, costates)
    fw = net.forward(M0, 50, integrator, with_costates=costates)
    assert np.max(np.abs(net.momentum(fw.x, fw.p) - fw.M)) <= 1e-14
    C = np.sum(fw.M ** 2, axis=1)
    assert np.max(np.abs(C - C[0])) <= 1e-14 * C[0]


def test_training_by_shooting_reduces_loss_and_is_stationary(net):
    res = net.train(nsteps=40, integrator="lphj2")
    assert res.residual <= 1e-10
    assert res.loss_after <= 0.3 * res.loss_before
    assert res.terminal_after <= 0.2 * res.terminal_before
    # θ_n = −Λ⁻¹M at the step midpoints is a stationary point of the discrete training loss
    M = res.forward.M
    theta = net.control(0.5 * (M[1:] + M[:-1]))
    d = np.random.default_rng(4).normal(size=theta.shape)

    def slope(th, h=1e-5):
        return (net.discrete_cost(th + h * d) - net.discrete_cost(th - h * d)) / (2 * h)
    assert abs(slope(theta)) <= 1e-4 * abs(slope(np.zeros_like(theta)))
    assert net.discrete_cost(theta) <= net.discrete_cost(theta + 0.05 * d)
    # the learned control cost equals T·h(M0) (energy conserved along the reduced dynamics)
    assert np.isclose(net.discrete_cost(theta) - net.terminal_loss(res.forward.x[-1]),
                      net.control_cost(res.M0), rtol=1e-2)
