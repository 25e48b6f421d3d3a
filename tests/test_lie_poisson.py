"""Lie–Poisson Hamilton–Jacobi integrators on so(3)*, se(3)*, gl(d)*, so(d)*."""
import numpy as np
import pytest
import scipy.linalg
from scipy.integrate import solve_ivp

from fem_mfc.integrators import (
    GL,
    LPHJ,
    SE3,
    SO,
    SO3,
    StochasticLPHJ,
    get_integrator,
    solve_reference,
)
from fem_mfc.integrators import examples as ex
from fem_mfc.integrators.lie_algebras import hat, rotation_matrix
from helpers import observed_orders

INERTIA = (1.0, 2.0, 3.0)
M0 = np.array([1.0, 0.5, -0.3])


def rigid_body_reference(m0, ts, inertia=INERTIA):
    """Π' = Π × I⁻¹Π by DOP853, written independently of the Lie-algebra code."""
    sol = solve_ivp(ex.rigid_body_rhs(inertia), (0, ts[-1]), m0, t_eval=ts, method="DOP853",
                    rtol=1e-13, atol=1e-13)
    return sol.y.T


def order_against(integrator_factory, system, m0, T, ref, ns):
    errs = [np.linalg.norm(integrator_factory(system).run(m0, T / n, n).final - ref) for n in ns]
    return observed_orders(errs, [T / n for n in ns], fit=True)


# -- conventions ------------------------------------------------------------------------------
def random_pairs(alg, rng):
    if isinstance(alg, SO3):
        return rng.normal(size=3), rng.normal(size=3), rng.normal(size=3)
    return rng.normal(size=alg.dim), rng.normal(size=alg.dim), rng.normal(size=alg.dim)


def matrix_rep(alg, xi):
    """The Lie algebra element as a matrix (for an implementation-independent bracket)."""
    if isinstance(alg, SO3):
        return hat(xi)
    if isinstance(alg, SE3):
        X = np.zeros((4, 4))
        X[:3, :3], X[:3, 3] = hat(xi[:3]), xi[3:]
        return X
    return alg._alg(xi)


def pairing(alg, mu, X):
    """⟨μ, ξ⟩ with ξ given as a matrix."""
    if isinstance(alg, SO3):
        return mu @ np.array([X[2, 1], X[0, 2], X[1, 0]])
    if isinstance(alg, SE3):
        return mu[:3] @ np.array([X[2, 1], X[0, 2], X[1, 0]]) + mu[3:] @ X[:3, 3]
    return np.sum(alg._mat(mu) * X)


@pytest.mark.parametrize("alg", [SO3(), SE3(), GL(3), SO(4)], ids=lambda a: a.name)
def test_coadjoint_conventions(alg):
    """⟨ad*_ξ μ, η⟩ = ⟨μ, [ξ, η]⟩ and ⟨Ad*_g μ, η⟩ = ⟨μ, g η g⁻¹⟩ (g = exp ξ and cay ξ), with
    brackets and Ad computed from matrix representations, independently of the closed forms."""
    rng = np.random.default_rng(3)
    for _ in range(3):
        xi, eta, mu = random_pairs(alg, rng)
        if isinstance(alg, SO):
            mu = alg._alg(mu).ravel()
        X, E = matrix_rep(alg, xi), matrix_rep(alg, eta)
        assert np.isclose(pairing(alg, alg.ad_star(xi, mu), E), pairing(alg, mu, X @ E - E @ X),
                          rtol=1e-12, atol=1e-12)
        for act, g in ((alg.coadjoint_exp, scipy.linalg.expm(X)),
                       (alg.coadjoint_cayley, np.linalg.solve(np.eye(len(X)) - X / 2,
                                                              np.eye(len(X)) + X / 2))):
            lhs = pairing(alg, act(xi, mu), E)
            rhs = pairing(alg, mu, g @ E @ np.linalg.inv(g))
            assert np.isclose(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_rotation_matrix_is_expm():
    w = np.array([0.3, -1.2, 0.7])
    assert np.max(np.abs(rotation_matrix(w) - scipy.linalg.expm(hat(w)))) <= 1e-14


# -- sign convention of the Lie–Poisson equation ----------------------------------------------
def test_sign_convention_rigid_body_and_model_formula():
    """LPHJ follows Π' = Π × Ω.  MODEL §6's literal μ_{n+1} = Ad*_{g^{-1}} μ_n, g = exp(τ∂h/∂μ),
    converges to the time-reversed rigid body instead (a sign error in MODEL)."""
    T, n = 2.0, 400
    fwd = rigid_body_reference(M0, [0.0, T])[-1]
    bwd = solve_ivp(lambda t, m: -ex.rigid_body_rhs(INERTIA)(t, m), (0, T), M0,
                    method="DOP853", rtol=1e-13, atol=1e-13).y[:, -1]
    rb = ex.rigid_body(INERTIA)
    ours = get_integrator("lphj2", rb).run(M0, T / n, n).final
    assert np.linalg.norm(ours - fwd) <= 1e-4
    alg, mu = SO3(), M0.copy()
    for _ in range(n):          # Ad*_{exp(τξ)^{-1}} μ = Ad*_{exp(−τξ)} μ, explicit ξ = ∂h/∂μ(μ_n)
        mu = alg.coadjoint_exp(-(T / n) * rb.grad_H(mu), mu)
    assert np.linalg.norm(mu - bwd) <= 1e-2
    assert np.linalg.norm(mu - fwd) >= 0.1
    assert np.linalg.norm(fwd - bwd) >= 0.1


# -- orders ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kw,order", [("lphj1", {}, 1), ("lphj2", {}, 2), ("lphj4", {}, 4),
                                           ("lphj1", {"retraction": "cayley"}, 1),
                                           ("lphj2", {"retraction": "cayley"}, 2),
                                           ("lphj4", {"retraction": "cayley"}, 4),
                                           ("midpoint", {}, 2), ("rk4", {}, 4)])
def test_orders_rigid_body(name, kw, order):
    T = 3.0
    ref = rigid_body_reference(M0, [0.0, T])[-1]
    ns = [40, 80, 160, 320] if order == 1 else [20, 40, 80, 160]
    rate = order_against(lambda s: get_integrator(name, s, **kw), ex.rigid_body(INERTIA), M0, T,
                         ref, ns)
    assert abs(rate - order) <= 0.2


def heavy_top_reference(z0, T, chi=(0.0, 0.0, 1.0)):
    inv, chi = 1 / np.asarray(INERTIA), np.asarray(chi)

    def rhs(_t, z):
        P, G = z[:3], z[3:]
        Om = inv * P
        return np.concatenate([np.cross(P, Om) + np.cross(G, chi), np.cross(G, Om)])
    return solve_ivp(rhs, (0, T), z0, method="DOP853", rtol=1e-13, atol=1e-13).y[:, -1]


@pytest.mark.parametrize("name,order", [("lphj1", 1), ("lphj2", 2), ("lphj4", 4)])
def test_orders_heavy_top_se3(name, order):
    z0, T = np.array([0.3, 1.0, -0.4, 0.2, 0.1, 0.97]), 2.0
    ns = [40, 80, 160] if order == 1 else [20, 40, 80]
    rate = order_against(lambda s: get_integrator(name, s), ex.heavy_top(INERTIA), z0, T,
                         heavy_top_reference(z0, T), ns)
    assert abs(rate - order) <= 0.2


@pytest.mark.parametrize("skew,d", [(False, 3), (True, 4)])
@pytest.mark.parametrize("name,order", [("lphj2", 2), ("lphj4", 4)])
def test_orders_matrix_algebras(skew, d, name, order):
    rng = np.random.default_rng(0)
    A = rng.normal(size=(d, d))
    m0 = 0.3 * ((A - A.T) if skew else A).ravel()
    s = ex.quadratic_matrix_system(d, skew=skew)
    T = 2.0
    ref = solve_reference(s, m0, [T])[0][-1]
    rate = order_against(lambda s_: get_integrator(name, s_), s, m0, T, ref, [20, 40, 80])
    assert abs(rate - order) <= 0.2


# -- invariants ------------------------------------------------------------------------------
def lp_systems():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(4, 4))
    return [("so3", ex.rigid_body(INERTIA), M0, 0.1),
            ("se3", ex.heavy_top(INERTIA), np.array([0.3, 1.0, -0.4, 0.2, 0.1, 0.97]), 0.1),
            ("so4", ex.quadratic_matrix_system(4, skew=True), 0.3 * (A - A.T).ravel(), 0.05),
            ("gl3", ex.quadratic_matrix_system(3), 0.3 * rng.normal(size=9), 0.05)]


@pytest.mark.slow
@pytest.mark.parametrize("case", lp_systems(), ids=lambda c: c[0])
@pytest.mark.parametrize("name", ["lphj1", "lphj2"])
def test_casimirs_to_roundoff_over_1e4_steps(case, name):
    label, system, m0, tau = case
    if label == "gl3" and name == "lphj1":
        pytest.skip("gl(d)* orbits are not compact: explicit Lie–Euler diverges there")
    tr = get_integrator(name, system).run(m0, tau, 10_000, monitors=["casimirs", "energy"],
                                          store_every=50)
    C = tr.monitors["casimirs"]
    rel = np.abs(C - C[0]) / np.maximum(np.abs(C[0]), np.max(np.abs(C[0])))
    assert rel.max() <= 1e-13
    if name == "lphj2":        # quadratic (+ linear) h: the midpoint LPHJ step conserves h too
        assert tr.drift("energy").max() <= 1e-12
    else:
        assert tr.drift("energy").max() >= 1e-6


def test_rk4_leaves_the_orbit():
    tr = get_integrator("rk4", ex.rigid_body(INERTIA)).run(M0, 0.1, 10_000,
                                                            monitors=["casimirs"], store_every=100)
    d = tr.drift("casimirs")[:, 0]
    assert d[-1] >= 1e-7 and d[-1] >= 5 * d[len(d) // 10]
    assert np.corrcoef(tr.t, d)[0, 1] >= 0.99        # linear drift


@pytest.mark.slow
def test_lphj4_casimir_and_energy_long_run():
    tr = get_integrator("lphj4", ex.rigid_body(INERTIA)).run(M0, 0.1, 10_000,
                                                             monitors=["casimirs", "energy"],
                                                             store_every=100)
    assert tr.drift("casimirs").max() <= 1e-13
    assert tr.drift("energy").max() <= 1e-12


@pytest.mark.parametrize("name,kw",
                         [("lphj2", {}), ("lphj4", {}), ("lphj2", {"retraction": "cayley"})])
def test_time_reversibility(name, kw):
    for system, m0 in [(ex.rigid_body(INERTIA), M0),
                       (ex.heavy_top(INERTIA), np.array([0.3, 1.0, -0.4, 0.2, 0.1, 0.97]))]:
        integ = get_integrator(name, system, **kw)
        back = integ.step(integ.step(m0, 0.2), -0.2)
        assert np.max(np.abs(back - m0)) <= 1e-14


def test_lphj1_is_not_reversible():
    integ = get_integrator("lphj1", ex.rigid_body(INERTIA))
    assert np.max(np.abs(integ.step(integ.step(M0, 0.2), -0.2) - M0)) >= 1e-4


def test_batched_paths_match_single_paths():
    rb = ex.rigid_body(INERTIA)
    batch = np.array([M0, 2 * M0, [0.1, -1.0, 0.4]])
    integ = get_integrator("lphj2", rb)
    together = integ.run(batch, 0.1, 20).final
    apart = np.array([integ.run(m, 0.1, 20).final for m in batch])
    assert np.max(np.abs(together - apart)) <= 1e-14


# -- stochastic ------------------------------------------------------------------------------
@pytest.mark.slow
def test_stochastic_casimirs_path_by_path_and_seeding():
    rb = ex.rigid_body(INERTIA)
    noise = [0.3 * np.eye(3)[i] for i in range(3)] + [lambda m: 0.1 * m]
    paths = np.tile(M0, (20, 1))
    tr = StochasticLPHJ(rb, noise, rng=7).run(paths, 0.01, 10_000, monitors=["casimirs"],
                                              store_every=100)
    C = tr.monitors["casimirs"][..., 0]
    assert np.max(np.abs(C - C[0]) / C[0]) <= 1e-13
    assert np.std(tr.final[:, 0]) >= 0.05                  # the paths really are random
    again = StochasticLPHJ(rb, noise, rng=np.random.default_rng(7)).run(paths, 0.01, 100).final
    first = StochasticLPHJ(rb, noise, rng=7).run(paths, 0.01, 100).final
    other = StochasticLPHJ(rb, noise, rng=8).run(paths, 0.01, 100).final
    assert np.array_equal(again, first) and not np.allclose(first, other)


def test_stochastic_is_stratonovich():
    """h = 0, dμ = μ × σ∘dW (isotropic): the Itô form has drift −σ²μ, so E μ(t) = e^{−σ²t} μ0
    (an Itô reading of the noise would keep E μ = μ0)."""
    zero = ex.rigid_body(INERTIA)
    zero._grad = lambda m: np.zeros_like(m)
    sigma, t, n, paths = 1.0, 1.0, 100, 20_000
    integ = StochasticLPHJ(zero, [sigma * e for e in np.eye(3)], rng=11)
    final = integ.run(np.tile(M0, (paths, 1)), t / n, n).final
    mean, se = final.mean(axis=0), final.std(axis=0) / np.sqrt(paths)
    expected = np.exp(-sigma ** 2 * t) * M0
    assert np.all(np.abs(mean - expected) <= 4 * se + 0.01)
    assert np.linalg.norm(mean - M0) >= 0.3


def test_lphj_requires_lie_poisson_order():
    with pytest.raises(ValueError):
        LPHJ(ex.rigid_body(INERTIA), order=3)


def test_newton_and_fixed_point_solvers_agree():
    for system, m0 in [(ex.rigid_body(INERTIA), np.array([M0, 2 * M0])),
                       (ex.heavy_top(INERTIA), np.array([0.3, 1.0, -0.4, 0.2, 0.1, 0.97]))]:
        a = LPHJ(system, 2, solver="fixed-point").step(m0, 0.3)
        b = LPHJ(system, 2, solver="newton").step(m0, 0.3)
        assert np.max(np.abs(a - b)) <= 1e-14
