"""Discrete duality, one-definition coupling, solver agreement, small noise, bad input."""
import math

from mpi4py import MPI

import dolfinx
import numpy as np
import pytest
import ufl

from fem_mfc import config
from fem_mfc.errors import ConfigError, SolverError, UserError
from fem_mfc.forms import hjb_fp as H
from fem_mfc.problem import ControlProblem
from fem_mfc.solvers import choose_method, cole_hopf_solve, solve
from fem_mfc.solvers.spacetime import SpaceTime
from helpers import kkt_blocks

CN, BE = "crank-nicolson", "backward-euler"


def congested_2d(nx=16, kappa=1.0, coupling="mftc", steps=10, comm=MPI.COMM_SELF):
    mesh = dolfinx.mesh.create_rectangle(comm, [[-1, -1], [1, 1]], [nx, nx])
    x = ufl.SpatialCoordinate(mesh)
    return ControlProblem(mesh=mesh, T=1.0, sigma=0.5, steps=steps, degree=1, scheme=CN,
                          Phi=2 * ((x[0] - 0.5) ** 2 + x[1] ** 2), V=0.3 * x[1] ** 2,
                          G=lambda r: 0.5 * kappa * r ** 2, coupling=coupling,
                          rho0=ufl.exp(-((x[0] + 0.4) ** 2 + x[1] ** 2) / (2 * 0.2 ** 2)))


@pytest.mark.parametrize("scheme", [BE, CN])
@pytest.mark.parametrize("coupling", ["mftc", "mfg"])
def test_fp_matrix_is_transpose_of_linearised_hjb(scheme, coupling):
    p = congested_2d(nx=4, steps=3, coupling=coupling)
    p.scheme = scheme
    M, fp, hjb = kkt_blocks(SpaceTime(p))             # at a generic (non-solution) state
    assert np.abs(fp).max() > 0.1
    assert np.abs(fp - hjb.T).max() < 1e-13 * np.abs(fp).max()
    assert np.abs(M - M.T).max() < 1e-13 * np.abs(M).max()   # symmetric KKT matrix


def test_mftc_coupling_is_the_lagrangian_derivative():
    p = congested_2d(nx=4, steps=2)
    V = p.space
    tm = {k: dolfinx.fem.Function(V) for k in (H.RHO_PREV, H.RHO_CUR, H.U_PREV)}
    rng = np.random.default_rng(0)
    for f in tm.values():
        f.x.array[:] = 1 + 0.2 * rng.random(f.x.array.size)
    q, t, d = ufl.TestFunction(V), dolfinx.fem.Constant(p.mesh, 0.0), p.step_data()
    args = (tm[H.RHO_PREV], tm[H.RHO_CUR], tm[H.U_PREV], t)
    a = dolfinx.fem.assemble_vector(dolfinx.fem.form(
        ufl.derivative(H.step_lagrangian(*args, d), tm[H.RHO_CUR], q))).array
    b = dolfinx.fem.assemble_vector(dolfinx.fem.form(
        H.rho_residual(*args, tm[H.RHO_CUR], q, d))).array
    assert np.abs(a - b).max() < 1e-14 * np.abs(a).max()
    d.coupling = "mfg"
    c = dolfinx.fem.assemble_vector(dolfinx.fem.form(
        H.rho_residual(*args, tm[H.RHO_CUR], q, d))).array
    assert np.abs(a - c).max() > 1e-3 * np.abs(a).max()


@pytest.mark.slow
def test_newton_vs_picard_congested_2d(record_property):
    newton = solve(congested_2d(), "newton")
    picard = solve(congested_2d(), "picard", relaxation=0.5)
    record_property("newton_iterations", newton.iterations)
    record_property("picard_iterations", picard.iterations)
    print(f"\nNewton {newton.iterations} iterations, Picard {picard.iterations}")
    assert newton.iterations <= 8
    assert picard.iterations >= 3 * newton.iterations
    h = [e["residual"] for e in newton.history]
    assert any(b < 10 * a ** 2 and a < 1e-2 for a, b in zip(h, h[1:]))   # quadratic phase
    assert abs(newton.J - picard.J) < 1e-9
    for a, b in zip(newton.rho + newton.u, picard.rho + picard.u):
        assert np.abs(a.x.array - b.x.array).max() < 1e-8
    for r in (newton, picard):
        assert r.mass_error < 1e-12 and abs(r.J - r.J_value) < 1e-9
        assert [x["J"] for x in picard.history][-1] == pytest.approx(picard.J, abs=1e-9)


def free_1d(nx, steps, sigma=0.6, shift=0.0, L=2.0, amp=1.0):
    mesh = dolfinx.mesh.create_interval(MPI.COMM_SELF, nx, [-L, L])
    x = ufl.SpatialCoordinate(mesh)[0]
    return ControlProblem(mesh=mesh, T=1.0, sigma=sigma, steps=steps, degree=1, scheme=CN,
                          Phi=amp * (x - 0.5) ** 2 + shift, V=0.5 * amp * ufl.sin(2 * x),
                          rho0=ufl.exp(-(x + 0.5) ** 2 / (2 * 0.3 ** 2)))


@pytest.mark.slow
def test_cole_hopf_agrees_with_newton_and_picard():
    assert choose_method(free_1d(8, 2)) == "cole-hopf"
    diffs = []
    for nx, steps in ((32, 8), (64, 16), (128, 32)):
        ch, nw = solve(free_1d(nx, steps), "cole-hopf"), solve(free_1d(nx, steps), "newton")
        diffs.append((abs(ch.J - nw.J), math.sqrt(sum(
            (a.x.array - b.x.array) @ (a.x.array - b.x.array) for a, b in zip(ch.rho, nw.rho))
            / len(ch.rho) * (4.0 / nx))))
    pc = solve(free_1d(32, 8), "picard")
    nw = solve(free_1d(32, 8), "newton")
    assert abs(pc.J - nw.J) < 1e-9
    for k in range(2):
        assert diffs[-1][k] < diffs[0][k] / 3, diffs    # agreement to discretisation error


def test_cole_hopf_small_noise_log_scaling():
    """σ = 0.1: exp(−(Φ + 10)/2ε) = e^{−1000} underflows without the per-step log-scale.

    (The spatial range osc(Φ)/2ε is kept moderate: a scalar scale per step cannot represent
    χ over e^{±700} in space, and the FEM error of χ relative to its maximum is amplified by
    Γ = ρ/χ where χ is tiny — see fem_mfc/solvers/sweeps.py.)"""
    a = solve(free_1d(200, 20, sigma=0.1, L=1.0, amp=0.1), "cole-hopf")
    b = solve(free_1d(200, 20, sigma=0.1, shift=10.0, L=1.0, amp=0.1), "cole-hopf")
    for r in (a, b):
        assert all(np.all(np.isfinite(f.x.array)) for f in r.rho + r.u)
        assert r.mass_error < 1e-2
    for fa, fb in zip(a.rho, b.rho):   # a constant shift of Φ does not move ρ
        assert np.abs(fa.x.array - fb.x.array).max() < 1e-8 * np.abs(fa.x.array).max()
    assert abs((b.u[0].x.array - a.u[0].x.array) - 10.0).max() < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("scheme", [BE, CN])
def test_cole_hopf_does_not_depend_on_the_constant_of_v(scheme):
    """V → V + k changes u by k(T − t) and nothing else (ρ, ∇u): so for the Cole–Hopf sweeps,
    which take the potential's midrange out (their θ-steps are not exact for a constant
    potential: V + 1 moved J by 1.0061 and u non-uniformly, and 'auto' changed method).
    ρ equal to round-off, u⁰ shifted by exactly k(T − t₀), the value identity by kT, and J by
    k times the time integral of the discrete masses; the automatic choice is the same."""
    m = dolfinx.mesh.create_rectangle(MPI.COMM_SELF, [[-1, -1], [1, 1]], [10, 10],
                                      dolfinx.mesh.CellType.triangle,
                                      diagonal=dolfinx.mesh.DiagonalType.crossed)
    x = ufl.SpatialCoordinate(m)

    def problem(k):
        return ControlProblem(
            mesh=m, T=1.0, sigma=0.6, steps=8, scheme=scheme,
            Phi=0.5 * ((x[0] - 0.3) ** 2 + 2 * (x[1] + 0.2) ** 2) + 0.2 * x[0] * x[1],
            V=0.3 * x[0] * x[1] + 0.1 * x[0] + 0.2 * x[1] ** 2 + k,
            rho0=ufl.exp(-((x[0] - 0.2) ** 2 + (x[1] + 0.1) ** 2) / 0.18))
    a, b = (cole_hopf_solve(problem(k)) for k in (0.0, 1.0))
    for fa, fb in zip(a.rho, b.rho):
        assert np.abs(fa.x.array - fb.x.array).max() < 1e-12 * np.abs(fa.x.array).max()
    p = problem(0.0)
    for n, (fa, fb) in enumerate(zip(a.u, b.u)):
        assert np.abs(fb.x.array - fa.x.array - (p.T - p.u_time(n))).max() < 1e-12
    assert abs((b.J_value - a.J_value) - 1.0) < 1e-12
    assert 0.99 < b.J - a.J < 1.0
    assert choose_method(problem(0.0)) == choose_method(problem(1.0)) == "cole-hopf"
    assert solve(problem(1.0), "auto").method == solve(problem(0.0), "auto").method


def interval(n=8):
    return dolfinx.mesh.create_interval(MPI.COMM_SELF, n, [-1, 1])


@pytest.mark.parametrize("kw,key", [({"sigma": -0.1}, "problem.sigma"), ({"T": 0.0}, "problem.T"),
                                     ({"T": -1.0}, "problem.T"), ({"steps": 0}, "problem.steps")])
def test_bad_parameters(kw, key):
    args = dict(mesh=interval(), T=1.0, sigma=0.5, steps=4, rho0=1.0)
    args.update(kw)
    with pytest.raises(ConfigError) as e:
        ControlProblem(**args)
    assert key in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("rho0,what", [(lambda x: x[0], "non-negative"), (0.0, "positive mass")])
def test_bad_rho0(rho0, what):
    mesh = interval()
    r = rho0(ufl.SpatialCoordinate(mesh)) if callable(rho0) else rho0
    with pytest.raises(ConfigError) as e:
        ControlProblem(mesh=mesh, T=1.0, sigma=0.5, steps=4, rho0=r)
    assert "rho0" in str(e.value) and what in str(e.value) and "\n" not in str(e.value)


def test_divergent_solve_raises():
    p = congested_2d(nx=4, steps=2, kappa=1e8)
    with pytest.raises(SolverError) as e:
        solve(p, "newton", max_it=2, continuation=False)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        cole_hopf_solve(p)            # the linear path needs a congestion-free problem
    with pytest.raises(SolverError):
        solve(p, "cole-hopf", max_it=2)   # with congestion: the cubic pair, divergent here
    r = solve(p, "newton", max_it=2, strict=False, continuation=False)
    assert not r.converged and r.reason.startswith("DIVERGED")


def test_from_config():
    cfg = config.from_dict({"problem": {"T": 0.5, "sigma": 0.6, "steps": 4, "G": "kappa*rho**2/2",
                                        "Phi": "x0**2", "params": {"kappa": 2.0}},
                            "mesh": {"kind": "interval", "lower": [-1.0], "upper": [1.0]},
                            "rho0": {"mean": [0.1], "std": 0.3},
                            "discretisation": {"degree": 2, "scheme": "crank-nicolson"}})
    p = ControlProblem.from_config(cfg, interval(6))
    assert p.congested and p.degree == 2 and p.eps == pytest.approx(0.18)
    r = solve(p)
    assert r.method == "newton" and r.mass_error < 1e-12
    cfg["rho0"] = dict(cfg["rho0"], kind="formula", formula="x0 - 2")
    with pytest.raises(UserError, match="rho0"):
        ControlProblem.from_config(cfg, interval(6))


def test_value_identity_needs_the_coupling_for_mfg():
    """MODEL §2 states J* = ∫u(0)ρ_0 + ∫∫(G − ρG') (mftc).  For the game coupling c = G/ρ the
    correct identity is J* = ∫u(0)ρ_0 + ∫∫(G − ρc(ρ)) = ∫u(0)ρ_0: the spec's G' term is wrong
    there by −∫∫κρ²/2 ≠ 0 for G = κρ²/2."""
    p = congested_2d(nx=8, steps=6, kappa=2.0, coupling="mfg")
    r = solve(p, "newton")
    st = SpaceTime(p)
    st.assign(r.rho, r.u)
    d = st.diagnostics()
    assert abs(r.J - r.J_value) < 1e-10 * abs(r.J)
    # the integral ∫∫(G − ρG') that MODEL §2 would add: −τ Σ ∫κρ̄²/2, with ρ̄ the midpoint
    rb = [(a.x.array + b.x.array) / 2 for a, b in zip(r.rho[:-1], r.rho[1:])]
    V = p.space
    g = dolfinx.fem.Function(V)
    form = dolfinx.fem.form(g * g * ufl.dx)
    extra = 0.0
    for a in rb:
        g.x.array[:] = a
        extra -= p.tau * 0.5 * 2.0 * dolfinx.fem.assemble_scalar(form)
    assert abs(extra) > 1e3 * abs(r.J - r.J_value)     # the spec's formula would be off
    assert d["J"] == pytest.approx(r.J, rel=1e-12)


@pytest.mark.parametrize("scheme", [BE, CN])
def test_value_identity_exact_for_a_non_polynomial_coupling(scheme):
    """G = exp(ρ): UFL estimates a different quadrature degree for each form with G (the
    residual's c(ρ̄)q, the cost's G(ρ̄) among other terms, the identity's G − ρ̄c), so the
    discrete value identity held only to the quadrature error — 1e-4 on 4 × 4 cells, and a
    converged run exited 3 as "not a discrete solution".  One rule for every cell integral
    (StepData.dx) makes it exact, as it is for polynomials."""
    from fem_mfc.solvers import newton
    p = congested_2d(nx=4, steps=6)
    p.scheme, p.G = scheme, (lambda r: ufl.exp(r))
    d = p.step_data()
    assert d.congestion_degree is not None
    r = newton(p, linear="lu")
    assert r.converged and abs(r.J - r.J_value) < 1e-12 * abs(r.J)
    poly = congested_2d(nx=4, steps=2).step_data()
    assert poly.congestion_degree is None and poly.dx == ufl.dx      # polynomials: unchanged


@pytest.mark.parametrize("coupling", ["mftc", "mfg"])
def test_value_identity_exact_for_non_polynomial_data(coupling, monkeypatch):
    """Φ = cos πx₀ + cos πx₁ with the polynomial G = 3ρ³: UFL's per-form estimates integrated
    the residual's Φq and the cost's ∫Φρ^N (each summed with other terms) by different rules,
    and a converged solve's value identity was 1e-7–6e-6 off (exit 3, "not a discrete
    solution").  Non-polynomial data now take one rule for every integral, like a
    non-polynomial G."""
    import fem_mfc.problem
    from fem_mfc.solvers import newton

    def make():
        p = congested_2d(nx=8, steps=6, coupling=coupling)
        x = ufl.SpatialCoordinate(p.mesh)
        p.Phi, p.G = ufl.cos(math.pi * x[0]) + ufl.cos(math.pi * x[1]), (lambda r: 3 * r ** 3)
        return p

    p = make()
    assert p.step_data().congestion_degree is not None
    r = newton(p, linear="lu")
    assert r.converged and abs(r.J - r.J_value) < 1e-10 * abs(r.J)
    assert H.polynomial_in_x(congested_2d(nx=2, steps=2).Phi)    # the usual data: unchanged
    monkeypatch.setattr(fem_mfc.problem, "data_degree",            # per-form rules, as before
                        lambda G, c, V, data: H.congestion_degree(G, c, V))
    if coupling == "mfg":                   # where the per-form rules were seen to differ
        old = newton(make(), linear="lu")
        assert old.converged and abs(old.J - old.J_value) > 1e-9 * abs(old.J)


def test_every_functional_has_one_quadrature_rule():
    """DOLFINx 0.9's form compiler evaluates a functional whose cell integrals carry
    different quadrature rules with one rule for all (∫r dx + ∫r² dx(degree 4) as if both
    were of degree 1), so with a non-polynomial G (whose integrals need a rule of their
    own) no functional of the HJB–FP forms may mix rules: every cell integral gets one."""
    from fem_mfc import hamiltonian as ham
    for G, H_ in ((lambda r: ufl.exp(r), None), (lambda r: ufl.exp(r), ham.power(1.5))):
        p = congested_2d(nx=2, steps=2)
        p.G, p.hamiltonian = G, H_
        st = SpaceTime(p)
        for name, form in st.func_ufl.items():
            rules = {itg.metadata().get("quadrature_degree") for itg in form.integrals()
                     if itg.integral_type() == "cell"}
            assert len(rules) <= 1, (name, rules)
    mesh = dolfinx.mesh.create_unit_square(MPI.COMM_SELF, 4, 4)
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    r = dolfinx.fem.Function(V)
    r.interpolate(lambda x: 1 + x[0])
    one = dolfinx.fem.assemble_scalar(dolfinx.fem.form(r * r * ufl.dx))
    mixed = dolfinx.fem.assemble_scalar(dolfinx.fem.form(
        r * ufl.dx + r * r * ufl.dx(metadata={"quadrature_degree": 4})))
    alone = dolfinx.fem.assemble_scalar(dolfinx.fem.form(r * ufl.dx))
    if abs(mixed - alone - one) > 1e-12:
        print(f"\nthis DOLFINx still mixes the rules: {mixed - alone:.6f} against {one:.6f}")
