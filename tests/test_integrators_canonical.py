"""Canonical generating-function integrators: orders, symplecticity, symmetry, long-time energy."""
import numpy as np
import pytest
import scipy.linalg

from fem_mfc.errors import ConfigError, SolverError
from fem_mfc.integrators import (
    CanonicalSystem,
    GeneratingFunctionIntegrator,
    available_integrators,
    get_integrator,
    solve_reference,
)
from fem_mfc.integrators import examples as ex
from fem_mfc.integrators.systems import HamiltonianSystem, canonical_J
from helpers import observed_orders


def observed_order(name, system, z0, T, exact, ns, **kw):
    errs, taus = [], []
    for n in ns:
        tr = get_integrator(name, system, **kw).run(z0, T / n, n)
        errs.append(np.linalg.norm(tr.final - exact))
        taus.append(T / n)
    return observed_orders(errs, taus, fit=True)


@pytest.mark.parametrize("name,order", [("midpoint", 2), ("gf4", 4), ("triple-jump", 4),
                                        ("suzuki", 4), ("rk4", 4), ("backward-euler", 1)])
def test_orders_harmonic_oscillator_exact_solution(name, order):
    s = ex.harmonic_oscillator(omega=1.3)
    z0, T = np.array([1.0, 0.3]), 2.0
    exact = ex.harmonic_oscillator_exact(z0, T, omega=1.3)
    ns = [40, 80, 160, 320] if order == 1 else [10, 20, 40, 80]
    assert abs(observed_order(name, s, z0, T, exact, ns) - order) <= 0.2


@pytest.mark.parametrize("name,order", [("midpoint", 2), ("gf4", 4), ("triple-jump", 4)])
def test_orders_pendulum_against_dop853(name, order):
    s = ex.pendulum()
    z0, T = np.array([1.5, 0.2]), 3.0
    ref = solve_reference(s, z0, [T])[0][-1]
    assert abs(observed_order(name, s, z0, T, ref, [15, 30, 60, 120]) - order) <= 0.2


def pendulum_from_callables():
    """H = p²/2 − cos q given by callables, with H'''(u, u, ·) = (−sin q · u_q², 0)."""
    return CanonicalSystem(lambda z: 0.5 * z[1] ** 2 - np.cos(z[0]),
                           lambda z: np.array([np.sin(z[0]), z[1]]),
                           lambda z: np.diag([np.cos(z[0]), 1.0]), 1,
                           d3H=lambda z, u: np.array([-np.sin(z[0]) * u[0] ** 2, 0.0]))


def test_gf4_coefficient_is_one_over_24():
    """MODEL §6: ψ = H + (τ²/24)H''(J∇H, J∇H) is order 4; any other coefficient gives order 2.
    Also checks the callables path (∇K from H''', simplified Newton) against the sympy path."""
    s = ex.pendulum()
    z0, T = np.array([1.5, 0.2]), 3.0
    ref = solve_reference(s, z0, [T])[0][-1]
    ns = [15, 30, 60, 120]

    def rate(system, c):
        errs = [np.linalg.norm(GeneratingFunctionIntegrator(system, 4, coefficient=c)
                               .run(z0, T / n, n).final - ref) for n in ns]
        return observed_orders(errs, [T / n for n in ns], fit=True)

    assert abs(rate(s, 1 / 24) - 4) <= 0.2
    assert abs(rate(pendulum_from_callables(), 1 / 24) - 4) <= 0.2
    for wrong in (-1 / 24, 1 / 12, 0.0):
        assert abs(rate(s, wrong) - 2) <= 0.2


def test_callables_and_sympy_agree_step_by_step():
    z0 = np.array([1.2, -0.4])
    a = GeneratingFunctionIntegrator(ex.pendulum(), 4).step(z0, 0.3)
    b = GeneratingFunctionIntegrator(pendulum_from_callables(), 4).step(z0, 0.3)
    assert np.max(np.abs(a - b)) <= 1e-14


def mass_system():
    """M q' = ∇_p H, M p' = −∇_q H with H = |p|²/2 + qᵀKq/2 (exact flow by expm)."""
    import sympy as sp
    q = sp.symbols("q1 q2")
    p = sp.symbols("p1 p2")
    K = np.array([[2.0, -0.5], [-0.5, 1.0]])
    H = sum(pi ** 2 for pi in p) / 2 + sum(K[i, j] * q[i] * q[j] for i in range(2)
                                             for j in range(2)) / 2
    M = np.array([[2.0, 0.3], [0.3, 1.0]])
    return CanonicalSystem.from_sympy(H, q, p, mass=M), K, M


@pytest.mark.parametrize("name,order", [("midpoint", 2), ("gf4", 4), ("triple-jump", 4)])
def test_mass_matrix_orders(name, order):
    s, K, M = mass_system()
    z0, T = np.array([1.0, -0.5, 0.2, 0.4]), 2.0
    A = s.B @ scipy.linalg.block_diag(K, np.eye(2))
    exact = scipy.linalg.expm(T * A) @ z0
    assert abs(observed_order(name, s, z0, T, exact, [10, 20, 40, 80]) - order) <= 0.2


def fd_step_jacobian(integ, z, tau, h=1e-5):
    cols = [(integ.step(z + h * e, tau) - integ.step(z - h * e, tau)) / (2 * h)
            for e in np.eye(len(z))]
    return np.array(cols).T


def symplecticity_defect(Psi, Omega):
    return np.max(np.abs(Psi.T @ Omega @ Psi - Omega))


@pytest.mark.parametrize("order", [2, 4])
def test_symplectic_exact_jacobian(order):
    s = ex.henon_heiles()
    integ = GeneratingFunctionIntegrator(s, order)
    z = np.array([0.3, -0.2, 0.25, 0.4])
    Psi = integ.step_jacobian(z, 0.5)
    J = canonical_J(2)
    assert symplecticity_defect(Psi, J) <= 1e-13
    assert np.max(np.abs(Psi - fd_step_jacobian(integ, z, 0.5))) <= 1e-8


@pytest.mark.parametrize("name", ["midpoint", "gf4", "triple-jump", "suzuki"])
def test_symplectic_finite_differences(name):
    s = ex.henon_heiles()
    z = np.array([0.3, -0.2, 0.25, 0.4])
    Psi = fd_step_jacobian(get_integrator(name, s), z, 0.5)
    assert symplecticity_defect(Psi, canonical_J(2)) <= 1e-9


def test_rk4_is_not_symplectic():
    s = ex.henon_heiles()
    z = np.array([0.3, -0.2, 0.25, 0.4])
    Psi = fd_step_jacobian(get_integrator("rk4", s), z, 0.5)
    assert symplecticity_defect(Psi, canonical_J(2)) >= 1e-4


def test_symplectic_with_mass_matrix():
    s, _, _ = mass_system()
    z = np.array([1.0, -0.5, 0.2, 0.4])
    Omega = np.linalg.inv(s.B)
    for order in (2, 4):
        Psi = GeneratingFunctionIntegrator(s, order).step_jacobian(z, 0.4)
        assert symplecticity_defect(Psi, Omega) <= 1e-13


@pytest.mark.parametrize("name", ["midpoint", "gf4", "triple-jump", "suzuki"])
def test_time_reversibility(name):
    s = ex.henon_heiles()
    integ = get_integrator(name, s)
    z = np.array([0.3, -0.2, 0.25, 0.4])
    back = integ.step(integ.step(z, 0.3), -0.3)
    assert np.max(np.abs(back - z)) <= 1e-14


def test_rk4_is_not_reversible():
    s = ex.henon_heiles()
    integ = get_integrator("rk4", s)
    z = np.array([0.3, -0.2, 0.25, 0.4])
    assert np.max(np.abs(integ.step(integ.step(z, 0.3), -0.3) - z)) >= 1e-6


@pytest.mark.slow
def test_energy_bounded_for_midpoint_while_rk4_drifts():
    """4·10⁴ steps of the pendulum (τ = 0.25, t = 10000): the symplectic midpoint energy error
    oscillates with a constant envelope; RK4's error grows linearly in time."""
    s = ex.pendulum()
    z0, tau, n = np.array([2.0, 0.0]), 0.25, 40_000
    out = {}
    for name in ("midpoint", "rk4"):
        tr = get_integrator(name, s).run(z0, tau, n, monitors=["energy"], store_every=100)
        out[name] = (tr.t, np.abs(tr.monitors["energy"] - tr.monitors["energy"][0]))
    t, e = out["midpoint"]
    k = len(e) // 10
    assert e.max() <= 1e-2
    assert e[-k:].max() <= 1.05 * e[:k].max()
    t, e = out["rk4"]
    slope, intercept = np.polyfit(t, e, 1)
    assert slope > 0
    assert e[-k:].max() >= 5 * e[:k].max()
    assert np.corrcoef(t, e)[0, 1] >= 0.99          # linear growth
    assert e[-1] >= 10 * out["midpoint"][1].max()


def test_run_monitors_and_counts():
    s = ex.harmonic_oscillator()
    integ = get_integrator("midpoint", s)
    tr = integ.run([1.0, 0.0], 0.1, 25, monitors={"H": s.H, "q": lambda z: z[0]}, store_every=10)
    assert tr.z.shape == (4, 2) and np.allclose(tr.t, [0, 1.0, 2.0, 2.5])
    assert set(tr.monitors) == {"H", "q"}
    assert tr.drift("H").max() <= 1e-14          # quadratic invariant: exact for midpoint
    assert tr.nfev > 0 and tr.njev > 0 and tr.nsteps == 25
    assert isinstance(s, HamiltonianSystem)


def test_registry():
    assert {"midpoint", "gf4", "triple-jump", "lphj1", "lphj2", "lphj4", "rk4",
            "backward-euler"} <= set(available_integrators())
    with pytest.raises(ConfigError, match="integrator"):
        get_integrator("leapfrog-9000", ex.pendulum())
    with pytest.raises(ConfigError):
        get_integrator("lphj2", ex.pendulum())


def test_newton_failure_is_reported():
    integ = GeneratingFunctionIntegrator(ex.pendulum(), 2, maxiter=1)
    with pytest.raises(SolverError, match="midpoint"):
        integ.step(np.array([2.0, 0.5]), 0.5)
