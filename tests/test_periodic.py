"""Periodic boundaries (``[[boundary]] kind = "periodic"``, fem_mfc/solvers/periodic.py):
manufactured solutions periodic in x (orders in h for P1/P2, in τ for BE/CN), translation
symmetry on a periodic strip, discrete duality and the consistency of the transformed
Jacobian, mass and the value identity, sweep = LU, the Cole–Hopf sweeps, serial = 2 ranks,
config refusals.

MPI: ``mpirun -n 2 python3 -m pytest --with-mpi -m mpi tests/test_periodic.py``."""
import math

from mpi4py import MPI

import dolfinx
import numpy as np
import pytest
import ufl

from fem_mfc import config
from fem_mfc.errors import ConfigError
from fem_mfc.exact import ErrorNorms, PeriodicManufactured
from fem_mfc.mesh import side_tags
from fem_mfc.problem import ControlProblem, Periodic
from fem_mfc.solvers import newton
from fem_mfc.solvers.spacetime import SpaceTime
from helpers import kkt_blocks, observed_orders

BE, CN = "backward-euler", "crank-nicolson"
L = 2.0                                     # the period (x0 ∈ [0, 2])


def G(r):
    return r ** 2


def mms(mesh, lower, upper, steps, degree, scheme, time, periodic=True):
    """The periodic manufactured problem (exact.PeriodicManufactured) on ``mesh``, periodic
    in x0 (tag 2 → 1), walls elsewhere; returns the L² errors (max over the levels)."""
    ex = PeriodicManufactured(mesh, 1.0, 0.5, G, "mftc", time=time)
    shift = (L,) + (0.0,) * (len(lower) - 1)
    p = ControlProblem(mesh=mesh, T=1.0, sigma=0.5, steps=steps, degree=degree, scheme=scheme,
                       V=ex.V, Phi=ex.Phi, G=G, rho0=ex.rho(0.0), exact=ex,
                       facet_tags=side_tags(mesh, lower, upper),
                       periodic=[Periodic(2, 1, shift)] if periodic else [])
    r = newton(p, rtol=1e-11)
    assert r.converged
    return ErrorNorms(ex, p.space)(r)


def rect(nx, **kw):
    mesh = dolfinx.mesh.create_rectangle(MPI.COMM_SELF, [[0, 0], [L, 1]], [nx, nx])
    return mms(mesh, [0.0, 0.0], [L, 1.0], **kw)


@pytest.mark.parametrize("degree,levels,rate", [
    (1, (8, 16, 32), 1.9), (2, (8, 16, 32), 2.8)])
def test_space_rates_periodic_rectangle(degree, levels, rate):
    """[0, 2] × [0, 1] periodic in x0, walls at x1 = 0, 1; affine in t + midpoint: no time
    error, so the L² errors of u and ρ converge at order p + 1 in h."""
    res = [rect(n, steps=2, degree=degree, scheme=CN, time="affine") for n in levels]
    for key in ("u", "rho"):
        r = observed_orders([e[key] for e in res], [1 / n for n in levels])
        print(degree, key, [e[key] for e in res], r)
        assert min(r) >= rate, (key, r)


def test_walls_instead_of_periodic_sides_miss_the_solution():
    """The manufactured fields cross the glued sides: with walls there (no periodic map) the
    discrete solution does not approach them — the rates above test the periodic map."""
    e = rect(16, steps=2, degree=1, scheme=CN, time="affine", periodic=False)
    assert e["u"] > 0.1 and e["rho"] > 0.1


@pytest.mark.parametrize("scheme,steps,rate", [(BE, (16, 32, 64), 0.85),
                                               (CN, (4, 8, 16), 1.9)])
def test_time_rates_periodic_interval(scheme, steps, rate):
    """The periodic interval [0, 2], P2 on 128 cells (spatial error ≪ the time error),
    trigonometric in t: order 1 (backward Euler) and 2 (Crank–Nicolson) in τ."""
    def run(n):
        mesh = dolfinx.mesh.create_interval(MPI.COMM_SELF, 128, [0, L])
        return mms(mesh, [0.0], [L], steps=n, degree=2, scheme=scheme, time="smooth")
    res = [run(n) for n in steps]
    for key in ("u", "rho"):
        r = observed_orders([e[key] for e in res], [1 / n for n in steps])
        print(scheme, key, [e[key] for e in res], r)
        assert min(r) >= rate, (key, r)


# -- a crowd on a periodic strip ------------------------------------------------------------
NX = 16                       # cells per axis: nodes every L/NX in x0


def wrapped_gaussian(x, c, s):
    """A Gaussian in x0 wrapped onto the period (periodic to round-off)."""
    return sum(ufl.exp(-(x[0] - c - k * L) ** 2 / (2 * s ** 2)) for k in (-1, 0, 1))


def strip(shift=0.0, nx=NX, steps=8, scheme=CN, comm=MPI.COMM_SELF, periodic=True):
    """A crowd near the left side (x0 ≈ 0.25), drawn to x0 = 1.6 by the periodic Φ: the
    shorter way runs through the glued sides.  ``shift`` moves every datum by shift in x0."""
    mesh = dolfinx.mesh.create_rectangle(comm, [[0, 0], [L, 1]], [nx, nx])
    x = ufl.SpatialCoordinate(mesh)
    a = 2 * math.pi / L
    return ControlProblem(
        mesh=mesh, T=1.0, sigma=0.5, steps=steps, scheme=scheme,
        Phi=2.0 * (1 - ufl.cos(a * (x[0] - 1.6 - shift))) + 0.5 * (x[1] - 0.5) ** 2,
        V=0.3 * (x[1] - 0.5) ** 2 + 0.2 * ufl.sin(a * (x[0] - shift)),
        G=lambda r: 0.5 * r ** 2,
        rho0=wrapped_gaussian(x, 0.25 + shift, 0.15)
        * ufl.exp(-(x[1] - 0.5) ** 2 / (2 * 0.2 ** 2)),
        facet_tags=side_tags(mesh, [0.0, 0.0], [L, 1.0]),
        periodic=[Periodic(2, 1, (L, 0.0))] if periodic else [])


def values_by_point(f):
    X = f.function_space.tabulate_dof_coordinates()
    return {(round(x % L, 9) % L, round(y, 9)): v for (x, y, _), v in zip(X, f.x.array)}


def mass_where(f, cond):
    x = ufl.SpatialCoordinate(f.function_space.mesh)
    return dolfinx.fem.assemble_scalar(dolfinx.fem.form(
        ufl.conditional(cond(x), 1.0, 0.0) * f * ufl.dx))


def test_translation_symmetry_and_flow_through_the_side():
    """Every datum shifted by 5 mesh cells along the period gives the shifted solution (to
    solver tolerance: the mesh maps onto itself), the slave values equal their masters'
    exactly, the crowd flows through the glued sides, and mass and J hold."""
    base = newton(strip())
    shift = 5 * L / NX
    moved = newton(strip(shift))
    for r in (base, moved):
        assert r.converged and r.mass_error < 1e-12
        assert abs(r.J - r.J_value) < 1e-9 * abs(r.J)
    assert abs(base.J - moved.J) < 1e-9 * abs(base.J)
    err = 0.0
    for fa, fb in zip(base.rho + base.u, moved.rho + moved.u):
        a, b = values_by_point(fa), values_by_point(fb)
        for (x, y), v in b.items():
            err = max(err, abs(v - a[(round((x - shift) % L, 9) % L, y)]))
    print("translation error", err)
    assert err < 1e-8
    pm = base.problem.periodic_map()
    assert pm.nslaves == NX + 1
    assert max(pm.max_mismatch(f) for f in base.rho + base.u) < 1e-15
    # the crowd went left through x0 = 0 (re-entering at x0 = 2), not through the middle
    mid = base.rho[len(base.rho) // 2]
    through_side = mass_where(mid, lambda x: ufl.gt(x[0], 1.6))
    middle = mass_where(mid, lambda x: ufl.And(ufl.gt(x[0], 0.6), ufl.lt(x[0], 1.0)))
    print("mass beyond the glued side", through_side, "in the middle", middle)
    walls = newton(strip(periodic=False))        # with walls it must take the long way
    blocked = mass_where(walls.rho[len(walls.rho) // 2], lambda x: ufl.gt(x[0], 1.6))
    print("with walls", blocked)
    assert through_side > 0.25 and through_side > 2 * middle and through_side > 3 * blocked


@pytest.mark.parametrize("scheme", [BE, CN])
def test_duality_and_consistent_jacobian(scheme):
    """The transformed KKT matrix is symmetric (FP block = transpose of the linearised HJB
    block) at a generic periodic state, and it is the derivative of the transformed
    residual (central differences in a direction with zero slave entries)."""
    st = SpaceTime(strip(nx=4, steps=3, scheme=scheme))
    M, fp, hjb = kkt_blocks(st)                       # perturbed, back on the constraints
    nl, nf = st.nl, st.nfields
    rng = np.random.default_rng(2)
    assert np.abs(fp).max() > 0.1
    sym = (np.abs(fp - hjb.T).max() / np.abs(fp).max(), np.abs(M - M.T).max() / np.abs(M).max())
    print("symmetry errors", sym)
    assert max(sym) < 1e-13
    slaves = st.constraints.map.slaves
    assert slaves.size == 5
    X, F1, F2 = st.create_vec(), st.create_vec(), st.create_vec()
    st.states_to_vec(X)
    x0 = X.getArray().copy()
    d = rng.standard_normal(x0.size)
    for f in range(nf):
        d[f * nl:(f + 1) * nl][slaves] = 0.0
    h = 1e-6
    X.setArray(x0 + h * d)
    st.residual(X, F1)
    X.setArray(x0 - h * d)
    st.residual(X, F2)
    fd = (F1.getArray() - F2.getArray()) / (2 * h)
    jd = M @ d
    print("Jacobian vs differences", np.abs(fd - jd).max() / np.abs(jd).max())
    assert np.abs(fd - jd).max() < 1e-7 * np.abs(jd).max()
    # slave rows: the constraint z_s = 0 of the pivot field (1 on its diagonal), nothing else
    for f in range(nf):
        rows = f * nl + slaves
        assert np.abs(np.abs(M[rows]).sum(axis=1) - 1.0).max() == 0.0
    for v in (X, F1, F2):
        v.destroy()
    st.destroy()


@pytest.mark.slow
@pytest.mark.parametrize("scheme", [BE, CN])
def test_sweep_matches_lu_mass_and_identity(scheme):
    """The sweep path (with the slave rows in its pivots) solves what LU solves; ∫ρ = 1 to
    1e-12 at every level and J = the value identity."""
    lu = newton(strip(scheme=scheme), linear="lu")
    sw = newton(strip(scheme=scheme), linear="sweep", forcing="exact")
    print(scheme, "Newton iterations", lu.iterations, sw.iterations, "mass errors",
          lu.mass_error, sw.mass_error, "J - J_value", lu.J - lu.J_value)
    assert lu.iterations == sw.iterations and abs(lu.J - sw.J) < 1e-10
    for a, b in zip(lu.rho + lu.u, sw.rho + sw.u):
        assert np.abs(a.x.array - b.x.array).max() < 1e-8
    for r in (lu, sw):
        assert r.converged and r.mass_error < 1e-12
        assert max(abs(m - 1.0) for m in r.mass) < 1e-12
        assert abs(r.J - r.J_value) < 1e-9 * abs(r.J)


def test_box_periodic_in_two_directions_resolves_corners():
    """A box periodic in x0 and x1 (walls in x2): every slave maps to one master that is no
    slave (the edge and corner chains resolved), coefficient 1; mass and identity hold."""
    mesh = dolfinx.mesh.create_box(MPI.COMM_SELF, [[0, 0, 0], [1, 1, 1]], [3, 3, 3])
    x = ufl.SpatialCoordinate(mesh)
    p = ControlProblem(mesh=mesh, T=0.5, sigma=0.5, steps=2, scheme=CN,
                       Phi=ufl.sin(2 * math.pi * x[0]) + ufl.cos(2 * math.pi * x[1]),
                       G=lambda r: 0.5 * r ** 2, rho0=1.0 + 0.5 * ufl.cos(2 * math.pi * x[0]),
                       facet_tags=side_tags(mesh, [0.0] * 3, [1.0] * 3),
                       periodic=[Periodic(2, 1, (1.0, 0.0, 0.0)),
                                 Periodic(4, 3, (0.0, 1.0, 0.0))])
    pm = p.periodic_map()
    assert pm.nslaves == 4 * 4 + 3 * 4                    # x0 = 1 side, x1 = 1 side minus
    X = p.space.tabulate_dof_coordinates()                 # their shared edge
    for s, ms in pm.pairs.items():
        (m, c), = ms.items()
        assert m not in pm.pairs and abs(c - 1.0) < 1e-12
        d = X[s] - X[m]
        assert np.allclose(d[2], 0.0) and set(np.round(d[:2], 12)) <= {0.0, 1.0}
    r = newton(p)
    assert r.converged and r.mass_error < 1e-12 and abs(r.J - r.J_value) < 1e-9 * abs(r.J)
    assert max(pm.max_mismatch(f) for f in r.rho + r.u) < 1e-15


@pytest.mark.slow
def test_cole_hopf_periodic_heat_sweeps_agree_with_newton():
    """Without congestion the Cole–Hopf sweeps (per-step matrices R A Rᵀ + I_s, R B Rᵀ, the
    sweeps' fields extended by Rᵀ) solve the periodic problem: 'auto' picks them, their
    fields are periodic, and they approach Newton's discrete solution at order 2 in J (h and
    τ halved together; the two discretisations differ at O(h² + τ²))."""
    import dataclasses

    from fem_mfc.solvers import choose_method, solve
    diffs = []
    for nx, steps in ((16, 8), (32, 16), (64, 32)):
        p = dataclasses.replace(strip(nx=nx, steps=steps), G=None)
        assert choose_method(p) == "cole-hopf"
        ch = solve(p, "cole-hopf")
        nw = solve(dataclasses.replace(strip(nx=nx, steps=steps), G=None), "newton")
        pm = ch.problem.periodic_map()
        assert max(pm.max_mismatch(f) for f in ch.rho + ch.u) < 1e-13
        diffs.append(abs(ch.J - nw.J))
    rates = observed_orders(diffs, [1, 0.5, 0.25])
    print("|J_CH - J_Newton|", diffs, rates)
    assert min(rates) > 1.8 and diffs[-1] < 0.02


def test_cole_hopf_guess_with_periodic_sides():
    """The congestion-free Cole–Hopf solution as Newton's start on the congested strip: the
    same solution in fewer iterations."""
    a, b = newton(strip(), guess="trivial"), newton(strip(), guess="cole-hopf")
    assert b.history[0]["guess"] == "cole-hopf" and b.iterations < a.iterations
    assert abs(a.J - b.J) < 1e-10


@pytest.mark.mpi
def test_parallel_matches_serial():
    par = newton(strip(comm=MPI.COMM_WORLD), linear="lu")
    ser = newton(strip(comm=MPI.COMM_SELF), linear="lu")
    assert par.iterations == ser.iterations
    assert abs(par.J - ser.J) < 1e-10 and abs(par.J_value - ser.J_value) < 1e-10
    assert par.mass_error < 1e-12 and abs(par.min_rho - ser.min_rho) < 1e-10
    pm = par.problem.periodic_map()
    assert max(pm.max_mismatch(f) for f in par.rho + par.u) < 1e-15
    mine = {}
    for f in (par.rho[-1], par.u[0]):
        mine.update({(f.name, k): v for k, v in values_by_point(f).items()})
    full = {}
    for part in MPI.COMM_WORLD.allgather(mine):
        full.update(part)
    ref = {}
    for f in (ser.rho[-1], ser.u[0]):
        ref.update({(f.name, k): v for k, v in values_by_point(f).items()})
    assert set(full) == set(ref)
    assert max(abs(full[k] - ref[k]) for k in ref) < 1e-9
    sw = newton(strip(comm=MPI.COMM_WORLD), linear="sweep", forcing="exact")
    assert abs(sw.J - ser.J) < 1e-10


def test_monotone_scheme_with_periodic_sides():
    """The monotone scheme on the periodic strip (the slave rows added into their masters:
    R X Rᵀ keeps the M-matrix property): symmetric KKT matrix, periodic states, ρ ≥ 0 where
    Galerkin's goes to −0.29 (8 × 8), mass and identity; its J tends to the Galerkin one at
    first order (differences 0.26, 0.12, 0.055 on 8², 16², 32²)."""
    import dataclasses

    from fem_mfc.solvers.monotone import MonotoneSpaceTime

    def mono(nx, comm=MPI.COMM_SELF):
        return dataclasses.replace(strip(nx=nx, scheme=BE, comm=comm),
                                   stabilisation="monotone")
    M, fp, hjb = kkt_blocks(MonotoneSpaceTime(mono(4)))
    assert np.abs(fp).max() > 0.1 and np.abs(fp - hjb.T).max() < 1e-13 * np.abs(fp).max()
    gaps = []
    for nx in (8, 16, 32):
        r = newton(mono(nx))
        assert r.converged and r.min_rho >= 0.0 and r.mass_error < 1e-12
        assert abs(r.J - r.J_value) < 1e-9 * abs(r.J)
        pm = r.problem.periodic_map()
        assert max(pm.max_mismatch(f) for f in r.rho + r.u) < 1e-15
        g = newton(strip(nx=nx, scheme=BE))
        if nx == 8:
            assert g.min_rho < -0.1
        gaps.append(abs(r.J - g.J))
    assert all(a / b > 1.8 for a, b in zip(gaps, gaps[1:])), gaps


@pytest.mark.mpi
def test_monotone_periodic_parallel_matches_serial():
    import dataclasses
    par, ser = (newton(dataclasses.replace(strip(comm=c, scheme=BE), stabilisation="monotone"))
                for c in (MPI.COMM_WORLD, MPI.COMM_SELF))
    assert par.converged and par.min_rho >= 0.0 and par.mass_error < 1e-12
    assert abs(par.J - ser.J) < 1e-10 and abs(par.J_value - ser.J_value) < 1e-10
    pm = par.problem.periodic_map()
    assert max(pm.max_mismatch(f) for f in par.rho + par.u) < 1e-15


# -- config ----------------------------------------------------------------------------------
def cfg(boundary, mesh=None, **over):
    raw = {"problem": {"T": 0.5, "sigma": 0.6, "steps": 4, "Phi": "x0**2"},
           "mesh": mesh or {"kind": "rectangle", "cells": 8, "lower": [0.0, 0.0],
                            "upper": [2.0, 1.0]},
           "rho0": {"mean": [0.3, 0.5], "std": 0.3}, "boundary": boundary}
    for k, v in over.items():
        raw.setdefault(k, {}).update(v)
    return config.from_dict(raw)


P = {"tag": 2, "kind": "periodic"}


@pytest.mark.parametrize("boundary,mesh,over,key", [
    ([P], {"kind": "disk"}, {}, "boundary[0].kind"),
    ([{"tag": 5, "kind": "periodic"}], None, {}, "boundary[0].tag"),
    ([dict(P, to=3)], None, {}, "boundary[0].to"),
    ([P, {"tag": 1, "kind": "no-flux"}], None, {}, "boundary[0].to"),
    ([P, {"tag": 1, "kind": "periodic"}], None, {}, "boundary[0].to"),
    ([P, {"tag": 3, "kind": "exit"}], None, {}, "boundary[1].kind"),
    ([P], None, {"solver": {"method": "picard"}}, "solver.method"),
    ([P], None, {"solver": {"method": "cole-hopf"}, "problem": {"G": "rho**2"}},
     "solver.method"),
    ([P], None, {"run": {"formulation": "qhd"}}, "run.formulation"),
    ([P], None, {"exact": {"solution": "manufactured"}}, "exact.solution"),
    ([P], None, {"problem": {"G": "rho**2"}, "solver": {"method": "picard"}},
     "solver.method")])
def test_config_refusals(boundary, mesh, over, key):
    with pytest.raises(ConfigError) as e:
        cfg(boundary, mesh, **over)
    assert key in str(e.value) and "\n" not in str(e.value)


def test_an_exit_beside_periodic_sides_is_named_by_its_table():
    """The refusal of an exit or Dirichlet side beside periodic ones said "boundary.kind ...
    got exit/dirichlet": which table, with which tag, is named now."""
    for kind in ("exit", "dirichlet"):
        with pytest.raises(ConfigError) as e:
            cfg([P, {"tag": 3, "kind": "no-flux"}, {"tag": 4, "kind": kind}])
        msg = str(e.value)
        assert "'boundary[2].kind'" in msg and "tag 4" in msg, msg
        assert "boundary[0] (tag 2)" in msg and msg.endswith(f'got "{kind}"'), msg


def test_config_refuses_periodic_sides_with_populations():
    raw = {"mesh": {"kind": "rectangle", "cells": 8, "lower": [0.0, 0.0], "upper": [2.0, 1.0]},
           "problem": {"params": {"kappa": 1.0}},
           "population": [{"rho0": {"kind": "gaussian", "mean": [0.5, 0.5], "std": 0.2},
                           "interaction": [0.0, 1.0]},
                          {"rho0": {"kind": "gaussian", "mean": [1.5, 0.5], "std": 0.2},
                           "interaction": [1.0, 0.0]}],
           "boundary": [P]}
    with pytest.raises(ConfigError) as e:
        config.from_dict(raw)
    assert "boundary.kind" in str(e.value) and "\n" not in str(e.value)


def test_config_fills_in_the_opposite_side_and_builds_the_pair():
    c = cfg([P, {"tag": 3, "kind": "robin", "rate": 0.5}])
    assert c["boundary"][0]["to"] == 1
    from fem_mfc.problem import periodic_from_config
    assert periodic_from_config(c) == [Periodic(2, 1, (2.0, 0.0))]
    c = cfg([{"tag": 1, "kind": "periodic"}])
    assert periodic_from_config(c) == [Periodic(1, 2, (-2.0, 0.0))]


def test_cli_exit_status_2_for_a_bad_periodic_side(tmp_path):
    from helpers import run_cli
    f = tmp_path / "bad.toml"
    f.write_text('[mesh]\nkind = "disk"\n[[boundary]]\ntag = 1\nkind = "periodic"\n')
    r = run_cli(["run", str(f), "--out", str(tmp_path / "out"), "--quiet"])
    assert r.returncode == 2 and "boundary[0].kind" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


# -- ρ0 on a periodic domain -----------------------------------------------------------------
@pytest.mark.parametrize("std", [0.05, 0.3, 0.6, 1.5, 8.0])
def test_gaussian_rho0_is_wrapped_around_the_period(std):
    """A Gaussian ρ0 on a domain periodic in x0 is the density of x0 mod L: the image sum
    (narrow) or its Poisson series (wide) equals a brute-force sum over 401 images to
    round-off, and its values at x0 = 0 and x0 = L agree."""
    from fem_mfc.density import gaussian_ufl
    from fem_mfc.problem import interpolate
    msh = dolfinx.mesh.create_interval(MPI.COMM_SELF, 64, [0.0, L])
    V = dolfinx.fem.functionspace(msh, ("Lagrange", 1))
    m = 1.7
    f = interpolate(gaussian_ufl(ufl.SpatialCoordinate(msh), [m], std, {0: L}), V)
    xs = V.tabulate_dof_coordinates()[:, 0]
    k = np.arange(-200, 201)[:, None]
    ref = (np.exp(-(xs[None, :] - m - k * L) ** 2 / (2 * std ** 2)).sum(axis=0)
           / math.sqrt(2 * math.pi * std ** 2))
    assert np.abs(f.x.array - ref).max() < 1e-13 * ref.max()
    ends = f.x.array[np.argsort(xs)[[0, -1]]]
    assert abs(ends[0] - ends[1]) < 1e-13 * ref.max()


@pytest.mark.slow
def test_rho0_that_is_not_periodic_is_reported(tmp_path):
    """A ρ0 whose values differ on the two glued sides is overwritten on the slave side: the
    run says so in one warning line (it used to be silent); the channel demo's Gaussian,
    wrapped around the period, is periodic and gives no warning."""
    from helpers import REPO, run_cli
    demo = (REPO / "demos" / "periodic_channel.toml").read_text()
    short = (demo.replace("steps = 16", "steps = 4").replace("cells = 32", "cells = 16")
             .replace('"crank-nicolson"', '"backward-euler"'))
    ok = tmp_path / "ok.toml"
    ok.write_text(short)
    r = run_cli(["run", str(ok), "--out", str(tmp_path / "ok"), "--quiet"])
    assert r.returncode == 0 and "not periodic" not in r.stderr, r.stderr
    bad = tmp_path / "bad.toml"
    gaussian = 'kind = "gaussian"\nmean = [3.2, 0.5]\nstd = 0.25'
    assert gaussian in short
    bad.write_text(short.replace(gaussian, 'kind = "formula"\nformula = "1 + x0"'))
    r = run_cli(["run", str(bad), "--out", str(tmp_path / "bad"), "--quiet"])
    lines = [ln for ln in r.stderr.splitlines() if "rho0 is not periodic" in ln]
    assert r.returncode in (0, 3) and len(lines) == 1, r.stderr
    assert "0.8 of its maximum" in lines[0] and "tagged 2" in lines[0]


@pytest.mark.slow
def test_killed_periodic_run_restarts_on_two_ranks(tmp_path):
    """A periodic run killed after its second checkpoint restarts on 2 ranks (the sides'
    tags rebuilt on the checkpoint's mesh, the pairs found again) and reaches the J of the
    uninterrupted run."""
    from helpers import REPO
    from test_checkpoint_restart import killed_and_restarted
    text = (REPO / "demos" / "periodic_channel.toml").read_text() + (
        "\n[output]\nfigures = false\nvtx = false\nprogress = false\ncheckpoint_every = 1\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    _, s = killed_and_restarted(cfg, tmp_path)
    assert s["mass_error"] < 1e-12


@pytest.mark.slow
def test_periodic_channel_demo(tmp_path):
    """demos/periodic_channel.toml through the CLI: converged, mass to 1e-12, the value
    identity, and the crowd crossed the glued ends (mass near the target at T)."""
    from helpers import REPO, read_summary, run_cli
    out = tmp_path / "out"
    r = run_cli(["run", str(REPO / "demos" / "periodic_channel.toml"), "--out", str(out),
                 "--quiet"])
    assert r.returncode == 0, r.stderr
    s = read_summary(out)
    assert s["converged"] and all(c["ok"] for c in s["checks"].values()), s["checks"]
    assert s["mass_error"] < 1e-12
    assert abs(s["J"] - s["J_value_identity"]) < 1e-9 * abs(s["J"])
    again = config.load(out / "config.toml")
    assert again["boundary"] == config.load(REPO / "demos" / "periodic_channel.toml")["boundary"]


def test_auto_falls_back_to_newton_where_cole_hopf_breaks_down(tmp_path):
    """The periodic channel without congestion on 16 cells: 'auto' took Cole-Hopf, whose χ
    loses positivity on this coarse Galerkin mesh — J = 1053 against a value identity of
    1.26, exit 3 — while Newton solves the same problem (J = 1.2509, exit 0).  The automatic
    choice now checks Cole-Hopf's identity and, off by more than its tolerance, solves by
    Newton, saying so in summary.json."""
    import tomllib

    from fem_mfc import config
    from fem_mfc.pipeline import run_config
    from helpers import REPO
    raw = tomllib.loads((REPO / "demos" / "periodic_channel.toml").read_text())
    raw["mesh"]["cells"], raw["problem"]["steps"], raw["problem"]["G"] = 16, 32, "0"
    raw["solver"]["method"] = "auto"
    raw["output"] = {"figures": False, "vtx": False, "progress": False}
    s = run_config(config.from_dict(raw), tmp_path / "auto", quiet=True)
    assert s["converged"] is True and s["method"] == "newton"
    assert s["auto_fallback"]["from"] == "cole-hopf" and s["auto_fallback"]["identity_gap"] > 0.5
    raw["solver"]["method"] = "newton"
    newton = run_config(config.from_dict(raw), tmp_path / "newton", quiet=True)
    assert s["J"] == pytest.approx(newton["J"], rel=1e-10)
    raw["solver"]["method"] = "auto"
    raw["mesh"]["cells"] = 64                   # fine enough: Cole-Hopf's own answer stands
    s = run_config(config.from_dict(raw), tmp_path / "fine", quiet=True)
    assert s["method"] == "cole-hopf" and "auto_fallback" not in s
