"""The form cache (solvers/formcache.py): a space-time system of the structure of an earlier
one takes that one's derived and compiled forms with its own data — without deriving or
compiling anything — and evaluates exactly what a system built from scratch evaluates."""
from mpi4py import MPI

import dolfinx
import numpy as np
import pytest
import ufl

from fem_mfc import hamiltonian as ham
from fem_mfc.problem import ControlProblem, Robin
from fem_mfc.solvers import formcache
from fem_mfc.solvers.spacetime import SpaceTime

BE, CN = "backward-euler", "crank-nicolson"
MARGIN = 500           # terminals a test here creates, with room to spare


@pytest.fixture(autouse=True)
def counts_of_one_length():
    """UFL orders the operands of a product or sum by their repr, which holds a terminal's
    global count in decimal: c_999 sorts after c_1000.  Two systems whose Constants (or
    Functions) straddle a power of ten build differently ordered forms, whose signatures
    differ: a cache miss, correct but not what these tests count (one failed in a suite run
    whose 1000th Constant fell between its two systems).  Each counter is moved past a power
    of ten that is less than MARGIN ahead."""
    mesh = dolfinx.mesh.create_unit_interval(MPI.COMM_SELF, 1)
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
    for make in (lambda: dolfinx.fem.Constant(mesh, 0.0), lambda: dolfinx.fem.Function(V)):
        n = make().count()
        ahead = 10 ** len(str(n)) - n               # to the next power of ten
        if ahead < MARGIN:
            for _ in range(ahead):
                make()
    yield


def problem(nx=6, steps=3, scheme=CN, coupling="mftc", H=None, robin=False, kappa=0.5):
    mesh = dolfinx.mesh.create_rectangle(MPI.COMM_SELF, [[-1, -1], [1, 1]], [nx, nx])
    x = ufl.SpatialCoordinate(mesh)
    extra = {}
    if robin:
        tags = dolfinx.mesh.locate_entities_boundary(mesh, 1, lambda y: np.isclose(y[0], 1.0))
        extra = dict(facet_tags=dolfinx.mesh.meshtags(mesh, 1, tags, np.full_like(tags, 2)),
                     robins=[Robin(2, 0.5, lambda t: 0.1)])
    return ControlProblem(mesh=mesh, T=1.0, sigma=0.5, steps=steps, scheme=scheme,
                          Phi=2 * ((x[0] - 0.5) ** 2 + x[1] ** 2), V=0.3 * x[1] ** 2,
                          G=lambda r: kappa * r ** 2, coupling=coupling,
                          hamiltonian=H(x) if H else None,
                          rho0=ufl.exp(-((x[0] + 0.4) ** 2 + x[1] ** 2) / 0.08), **extra)


def evaluate(st, seed=3):
    """Residual, every stored Jacobian block and the diagnostics at a random state."""
    rng = np.random.default_rng(seed)
    for f in st.rho[1:] + st.u:
        f.x.array[:] = 0.5 + rng.random(f.x.array.size)
    F = st.create_vec()
    st.residual(None, F)
    blocks = {rc: st.assemble_block(*rc)[:, :] for rc in st.block_keys}
    split = None
    if st.split is not None:
        split = st.assembler.fresh(st.split[1])[:, :]
    out = (F.array.copy(), blocks, split, st.diagnostics())
    F.destroy()
    return out


def same(a, b):
    assert np.allclose(a[0], b[0], rtol=1e-13, atol=1e-14)
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        assert np.allclose(a[1][k], b[1][k], rtol=1e-13, atol=1e-14), k
    assert (a[2] is None) == (b[2] is None)
    if a[2] is not None:
        assert np.allclose(a[2], b[2], rtol=1e-13, atol=1e-14)
    for k in ("J", "J_value", "mass_error"):
        assert abs(a[3][k] - b[3][k]) <= 1e-13 * max(1.0, abs(a[3][k])), k


CASES = {"cn-mftc": {}, "be-mfg": dict(scheme=BE, coupling="mfg"),
         "weighted-H": dict(H=lambda x: ham.weighted(1.0 + 0.5 * x[0] ** 2)),
         "congestion-H-mfg": dict(H=lambda x: ham.congestion(1.0), coupling="mfg")}


@pytest.mark.parametrize("case", CASES)
def test_cached_system_equals_a_fresh_one(case):
    """A second system (another mesh and step count) hits the cache; a third of the first's
    size evaluates residual, Jacobian blocks, split and diagnostics as one built without it."""
    kw = CASES[case]
    formcache.clear()
    formcache.enabled = False
    try:
        ref = evaluate(SpaceTime(problem(**kw)))
    finally:
        formcache.enabled = True
    assert SpaceTime(problem(nx=4, steps=2, **kw)).jac     # derives and stores
    hits = formcache.stats["hits"]
    st = SpaceTime(problem(**kw))
    assert formcache.stats["hits"] == hits + 1
    same(evaluate(st), ref)
    assert set(st.jac_ufl) == set(st.jac)           # the UFL blocks, derived on request


def test_cache_hit_derives_nothing(monkeypatch):
    """The guard of the speed-up: a system whose structure is cached expands no derivative
    and compiles no form (no FFCx signature or JIT look-up)."""
    formcache.clear()
    assert SpaceTime(problem()).jac
    p = problem(nx=5, steps=7)
    calls = []
    expand, form = ufl.algorithms.expand_derivatives, dolfinx.fem.form

    def counted(name, fn):
        def wrapper(e, *a, **k):
            if isinstance(e, ufl.Form):
                calls.append(name)
            return fn(e, *a, **k)
        return wrapper
    monkeypatch.setattr(ufl.algorithms, "expand_derivatives", counted("expand", expand))
    monkeypatch.setattr(dolfinx.fem, "form", counted("form", form))
    st = SpaceTime(p)
    assert st.jac and st.block_inputs and st.split is not None
    assert calls == []


def test_tagged_boundaries_are_not_cached():
    """Forms over tagged facets (a leaky wall's ds(tag)) are derived per system."""
    formcache.clear()
    before = dict(formcache.stats)
    a = SpaceTime(problem(robin=True))
    b = SpaceTime(problem(robin=True))
    assert formcache.stats == before and a._cache_key is None
    same(evaluate(a), evaluate(b))


def test_numbers_held_as_constants_are_each_systems_own():
    """Formulas whose numbers are Constants (config problems) share one signature across
    values, so a later system takes the cached kernels: with its own Constants.  κ = 0.7
    solved after κ = 0.3 equals κ = 0.7 with the number as a literal (fresh forms), and κ = 0.3
    again equals the first."""
    from fem_mfc import config
    from fem_mfc.solvers.newton import newton
    msh = dolfinx.mesh.create_rectangle(MPI.COMM_SELF, [[0, 0], [1, 1]], [4, 4])

    def from_config(k):
        cfg = config.from_dict({"mesh": {"kind": "rectangle", "cells": 4},
                                "rho0": {"mean": [0.4, 0.5], "std": 0.25},
                                "problem": {"G": f"{k}*rho**2/2", "Phi": f"{2 * k}*(x0 - 0.5)**2",
                                            "steps": 4}})
        return ControlProblem.from_config(cfg, msh)
    J = [newton(from_config(k)).J for k in (0.3, 0.7, 0.3)]
    p = from_config(0.7)
    x = ufl.SpatialCoordinate(msh)
    literal = ControlProblem(mesh=msh, T=p.T, sigma=p.sigma, steps=4, rho0=p.rho0, V=p.V,
                             Phi=1.4 * (x[0] - 0.5) ** 2, G=lambda r: 0.7 * r ** 2 / 2)
    assert J[0] == J[2] and abs(J[1] - J[0]) > 1e-2
    assert newton(literal).J == pytest.approx(J[1], rel=1e-11)
