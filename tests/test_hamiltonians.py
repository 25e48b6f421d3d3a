"""General Hamiltonians H(x, p, ρ) (fem_mfc/hamiltonian.py, ``[problem] H``): manufactured
rates for every kind, discrete duality, Newton's quadratic convergence, the declared structure
facts the solvers rely on, the config and its refusals, serial = 2 ranks.

MPI: ``mpirun -n 2 python3 -m pytest --with-mpi -m mpi tests/test_hamiltonians.py``."""
import dataclasses
import math

from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import numpy as np
import pytest
import ufl

from fem_mfc import config
from fem_mfc import hamiltonian as ham
from fem_mfc.errors import ConfigError
from fem_mfc.exact import ErrorNorms, Manufactured
from fem_mfc.forms import hjb_fp as HF
from fem_mfc.problem import ControlProblem
from fem_mfc.solvers import newton, solve
from fem_mfc.solvers.kkt import KKTOperator
from fem_mfc.solvers.spacetime import SpaceTime, hjb_fp, symbolic_quadratic
from helpers import dense, kkt_blocks

BE, CN = "backward-euler", "crank-nicolson"


def G(r):
    return r ** 2


# kind -> mesh ↦ Hamiltonian (the power kind with a δ that keeps H smooth at the mesh scale:
# the manufactured ∇u vanishes inside the square)
KINDS = {
    "weighted": lambda m: ham.weighted(1.0 + 0.5 * ufl.SpatialCoordinate(m)[0]),
    "power-1.5": lambda m: ham.power(1.5, 0.25),
    "power-3": lambda m: ham.power(3.0, 0.25),
    "anisotropic": lambda m: ham.anisotropic(
        [[1.0, 0.3], [0.3, 2.0 + ufl.SpatialCoordinate(m)[1]]]),
    "congestion": lambda m: ham.congestion(1.0),
    "formula": lambda m: ham.from_formula("|p|**2/(2*(1 + rho)) + 0.1*p0*x1",
                                          ufl.SpatialCoordinate(m), 2, {}),
}


def rates(errs):
    return [math.log2(a / b) for a, b in zip(errs, errs[1:])]


def mms(kind, nx, steps, degree=1, scheme=CN, coupling="mftc", time="affine", space="trig"):
    mesh = dolfinx.mesh.create_unit_square(MPI.COMM_SELF, nx, nx)
    H = KINDS[kind](mesh)
    ex = Manufactured(mesh, 1.0, 0.5, G, coupling, time=time, space=space, H=H)
    p = ControlProblem(mesh=mesh, T=1.0, sigma=0.5, steps=steps, degree=degree, scheme=scheme,
                       V=ex.V, Phi=ex.Phi, G=G, coupling=coupling, rho0=ex.rho(0.0), exact=ex,
                       hamiltonian=H)
    r = newton(p, rtol=1e-10)
    assert r.converged
    return ErrorNorms(ex, p.space)(r)


@pytest.mark.slow
@pytest.mark.parametrize("kind,coupling", [(k, "mftc") for k in KINDS]
                         + [("congestion", "mfg"), ("formula", "mfg")])
def test_space_rates_p1(kind, coupling):
    """P1, midpoint in time on a solution affine in t (no time error): O(h²) in L²."""
    res = [mms(kind, nx, 2, coupling=coupling) for nx in (8, 16, 32)]
    for key in ("u", "rho"):
        r = rates([e[key] for e in res])
        print(kind, coupling, key, [f"{x:.2f}" for x in r])
        assert min(r) >= 1.8, (key, r)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["power-1.5", "congestion"])
def test_space_rates_p2(kind):
    """P2: O(h³) in L²."""
    res = [mms(kind, nx, 2, degree=2) for nx in (4, 8, 16)]
    for key in ("u", "rho"):
        r = rates([e[key] for e in res])
        print(kind, "P2", key, [f"{x:.2f}" for x in r])
        assert min(r) >= 2.7, (key, r)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["anisotropic", "congestion"])
def test_time_rates(kind):
    """P2 on a solution quadratic in x, trigonometric in t: backward Euler O(τ),
    Crank–Nicolson O(τ²) (the spatial error of the non-polynomial sources stays below)."""
    be = [mms(kind, 3, n, 2, BE, time="smooth", space="quadratic") for n in (32, 64, 128)]
    cn = [mms(kind, 3, n, 2, CN, time="smooth", space="quadratic") for n in (4, 8, 16)]
    for key in ("u", "rho"):
        rb, rc = rates([e[key] for e in be]), rates([e[key] for e in cn])
        print(kind, key, "BE", [f"{x:.2f}" for x in rb], "CN", [f"{x:.2f}" for x in rc])
        assert min(rb) >= 0.85, (key, rb)
        assert min(rc) >= 1.9, (key, rc)


# -- source-free problems: duality, Newton, value identity --------------------------------------
def problem(kind, coupling="mftc", nx=8, steps=4, scheme=CN, comm=MPI.COMM_SELF, kappa=1.0):
    mesh = dolfinx.mesh.create_rectangle(comm, [[-1, -1], [1, 1]], [nx, nx])
    x = ufl.SpatialCoordinate(mesh)
    H = {"weighted": lambda m: ham.weighted(1.0 + 0.5 * x[0] ** 2),
         "power-1.5": lambda m: ham.power(1.5, 1e-3),
         "power-3": lambda m: ham.power(3.0, 1e-3)}.get(kind, KINDS.get(kind))
    return ControlProblem(mesh=mesh, T=1.0, sigma=0.5, steps=steps, degree=1, scheme=scheme,
                          Phi=2 * ((x[0] - 0.5) ** 2 + x[1] ** 2), V=0.3 * x[1] ** 2,
                          G=(lambda r: 0.5 * kappa * r ** 2) if kappa else None,
                          coupling=coupling, hamiltonian=H(mesh) if H else None,
                          rho0=ufl.exp(-((x[0] + 0.4) ** 2 + x[1] ** 2) / (2 * 0.2 ** 2)))


@pytest.mark.parametrize("scheme", [BE, CN])
@pytest.mark.parametrize("kind,coupling", [(k, "mftc") for k in KINDS]
                         + [(k, "mfg") for k in ("weighted", "power-1.5", "anisotropic")])
def test_fp_matrix_is_transpose_of_linearised_hjb(kind, coupling, scheme):
    """Discrete duality: ∂(FP rows)/∂ρ = (∂(HJB rows)/∂u)ᵀ to round-off, and the whole KKT
    matrix is symmetric (the Hessian of one Lagrangian) — every kind for the control
    coupling, every ρ-free H for the game."""
    st = SpaceTime(problem(kind, coupling, nx=4, steps=3, scheme=scheme))
    assert st.formulation.mirrored
    M, fp, hjb = kkt_blocks(st)
    assert np.abs(fp).max() > 0.1
    assert np.abs(fp - hjb.T).max() < 1e-13 * np.abs(fp).max()
    assert np.abs(M - M.T).max() < 1e-13 * np.abs(M).max()


@pytest.mark.parametrize("kind", ["congestion", "formula"])
def test_game_with_rho_in_h_duality_and_declared_asymmetry(kind):
    """The game with H(x, p, ρ): the HJB rows hold ρ fixed in H, so the KKT matrix is not
    symmetric (``mirrored`` False is declared: the solvers store both blocks).  Duality holds
    per step: the linearised HJB step is the adjoint of the FP step whose drift −∂_pH(∇u, ρ̂)
    has its density frozen at the state ρ̂."""
    p = problem(kind, "mfg", nx=4, steps=3)
    st = SpaceTime(p)
    assert not st.formulation.mirrored
    M, fp, hjb = kkt_blocks(st)
    assert np.abs(fp - hjb.T).max() > 1e-6 * np.abs(fp).max()
    d = p.step_data()
    V = p.space
    rng = np.random.default_rng(3)
    rc, rn, uc = (dolfinx.fem.Function(V) for _ in range(3))
    for f in (rc, rn):
        f.x.array[:] = 0.5 + rng.random(f.x.array.size)
    uc.x.array[:] = rng.standard_normal(uc.x.array.size)
    q, t = ufl.TestFunction(V), dolfinx.fem.Constant(p.mesh, 0.0)
    dtr = ufl.TrialFunction(V)
    frozen = ufl.Coefficient(V)
    fp_step = ufl.derivative(HF.step_lagrangian(rc, rn, uc, t, d, rho_H=frozen), uc, q)
    fp_op = ufl.replace(ufl.algorithms.expand_derivatives(ufl.derivative(fp_step, rn, dtr)),
                        {frozen: HF.rho_bar(rc, rn, d.theta)})
    hjb_op = ufl.derivative(HF.rho_residual(rc, rn, uc, t, rn, q, d), uc, dtr)
    A = _assembled(fp_op)
    B = _assembled(hjb_op)
    assert np.abs(A).max() > 0.1
    assert np.abs(A - B.T).max() < 1e-13 * np.abs(A).max()


def _assembled(form):
    import dolfinx.fem.petsc
    A = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(form))
    A.assemble()
    return dense(A)


def quadratic_phase(r):
    h = [e["residual"] for e in r.history]
    return any(b < 10 * a ** 2 and a < 1e-2 for a, b in zip(h, h[1:]))


@pytest.mark.slow
@pytest.mark.parametrize("kind,coupling", [(k, "mftc") for k in KINDS]
                         + [("congestion", "mfg"), ("formula", "mfg")])
def test_newton_quadratic_convergence_and_value_identity(kind, coupling):
    """Newton (exact linear solves) converges quadratically from the trivial guess; at the
    discrete solution J = ∫u(0)ρ_0 + ∫∫(G − ρc) [+ ∫∫ρ²∂_ρH for mftc] and mass is exact."""
    r = newton(problem(kind, coupling, nx=12, steps=6), linear="lu", continuation=False)
    h = [e["residual"] for e in r.history]
    print(kind, coupling, r.iterations, [f"{x:.1e}" for x in h])
    assert r.converged and r.iterations <= 10
    assert quadratic_phase(r), h
    assert r.mass_error < 1e-12
    assert abs(r.J - r.J_value) < 1e-9 * max(1.0, abs(r.J))


@pytest.mark.parametrize("kind,coupling", [("power-1.5", "mftc"), ("congestion", "mfg")])
def test_sweep_path_matches_lu(kind, coupling):
    """The sweep-preconditioned Krylov path (what 'auto' picks on large problems) solves the
    same Newton steps as LU — also for the non-symmetric game, whose HJB pivots are stored."""
    lu = newton(problem(kind, coupling), linear="lu")
    sw = newton(problem(kind, coupling), linear="sweep", forcing="exact")
    assert lu.iterations == sw.iterations
    assert abs(lu.J - sw.J) < 1e-10
    for a, b in zip(lu.rho + lu.u, sw.rho + sw.u):
        assert np.abs(a.x.array - b.x.array).max() < 1e-8


@pytest.mark.parametrize("kind,coupling", [("anisotropic", "mftc"), ("power-3", "mftc"),
                                           ("congestion", "mfg")])
def test_declared_structure(kind, coupling):
    """The declared facts equal the generic checks: 'quadratic' (every block affine in the
    states, symbolically), the dependencies miss no nonzero block, and the operator's blocks
    (mirrors as transposes, B_n = αP_n + E) equal their assembly."""
    p = problem(kind, coupling, nx=4, steps=3)
    st = SpaceTime(p)
    assert st.quadratic == symbolic_quadratic(st.jac_ufl, st.tm)
    assert st.quadratic == (kind == "anisotropic")
    full = SpaceTime(p, formulation=dataclasses.replace(hjb_fp(p), depends=None))
    assert set(full.jac_ufl) == set(st.jac_ufl)
    rng = np.random.default_rng(5)
    for f in st.rho[1:] + st.u:
        f.x.array[:] += 0.1 * rng.standard_normal(f.x.array.size)
    X = st.create_vec()
    st.states_to_vec(X)
    op = KKTOperator(st)
    assert bool(op.mirror) == st.formulation.mirrored
    op.update(X)
    ref = SpaceTime(p, cache=False)
    ref.vec_to_states(X)
    grid = ref.block_grid()
    for r, c in op.blocks():
        D = None
        for base, t, a in op.terms(r, c):
            Mt = base.transpose(PETSc.Mat()) if t else base.copy()
            Mt.scale(a)
            if D is None:
                D = Mt
            else:
                D.axpy(1.0, Mt, structure=PETSc.Mat.Structure.DIFFERENT_NONZERO_PATTERN)
        D.axpy(-1.0, grid[r][c], structure=PETSc.Mat.Structure.DIFFERENT_NONZERO_PATTERN)
        assert D.norm() <= 1e-12 * max(grid[r][c].norm(), 1.0), (r, c)
    op.destroy()


# -- the quadratic default and its spellings ----------------------------------------------------
@pytest.mark.parametrize("H", [lambda m: ham.quadratic(), lambda m: ham.power(2.0),
                               lambda m: ham.from_formula("|p|**2/2", None, 2, {}),
                               lambda m: ham.from_formula("0.5*(p0**2 + p1**2)", None, 2, {})])
def test_quadratic_spellings_match_the_default(H):
    ref = newton(problem("none"), linear="lu")
    p = problem("none")
    p.hamiltonian = H(p.mesh)
    assert p.hamiltonian.quadratic
    r = newton(p, linear="lu")
    assert r.iterations == ref.iterations
    assert abs(r.J - ref.J) < 1e-12
    for a, b in zip(r.rho + r.u, ref.rho + ref.u):
        assert np.abs(a.x.array - b.x.array).max() < 1e-10


def test_formula_structure_facts():
    x = None
    assert ham.from_formula("0.5*(p0**2 + 4*p1**2) + p0", x, 2, {}).quadratic
    h = ham.from_formula("|p|**3/3", x, 2, {})
    assert not h.quadratic and not h.uses_rho
    h = ham.from_formula("|p|**2/(2*(1 + rho))", x, 2, {})
    assert not h.quadratic and h.uses_rho


# -- config ----------------------------------------------------------------------------------
def cfg(H="quadratic", **over):
    raw = {"problem": {"T": 0.5, "sigma": 0.6, "steps": 4, "Phi": "x0**2", "H": H},
           "mesh": {"kind": "interval", "cells": 16, "lower": [-1.0], "upper": [1.0]},
           "rho0": {"mean": [0.1], "std": 0.3}, "solver": {"method": "newton"}}
    for k, v in over.items():
        raw.setdefault(k, {}).update(v)
    return config.from_dict(raw)


@pytest.mark.slow
@pytest.mark.parametrize("H,table,kind", [
    ("weighted", {"weight": "1 + x0**2"}, "weighted"),
    ("power", {"q": 1.5}, "power"),
    ("anisotropic", {"A": [["2"]]}, "anisotropic"),
    ("congestion", {"alpha": 2.0}, "congestion"),
    ("|p|**4/4 + 0.5*p0**2*(1 + rho)", {}, "formula")])
def test_config_kinds_solve(H, table, kind):
    c = cfg(H, hamiltonian=table)
    mesh = dolfinx.mesh.create_interval(MPI.COMM_SELF, 16, [-1, 1])
    from fem_mfc.checks import check_formulas
    check_formulas(c, mesh)
    p = ControlProblem.from_config(c, mesh)
    assert p.hamiltonian.kind == kind
    r = solve(p, "auto")
    assert r.method == "newton" and r.converged and r.mass_error < 1e-12
    assert abs(r.J - r.J_value) < 1e-9 * max(1.0, abs(r.J))


def test_quadratic_default_forms_unchanged():
    c = cfg()
    assert c["problem"]["H"] == "quadratic"
    p = ControlProblem.from_config(c, dolfinx.mesh.create_interval(MPI.COMM_SELF, 16, [-1, 1]))
    assert p.hamiltonian is None and p.step_data().H is None


@pytest.mark.parametrize("over,key", [
    ({"run": {"formulation": "cole-hopf"}}, "problem.H"),
    ({"run": {"formulation": "qhd"}}, "problem.H"),
    ({"run": {"formulation": "nls"}}, "problem.H"),
    ({"solver": {"method": "cole-hopf"}}, "problem.H"),
    ({"solver": {"initial_guess": "cole-hopf"}}, "problem.H"),
    ({"discretisation": {"stabilisation": "monotone"}}, "problem.H"),
    ({"hamiltonian": {"q": 1.0}}, "hamiltonian.q"),
    ({"hamiltonian": {"delta": 0.0}}, "hamiltonian.delta"),
    ({"hamiltonian": {"alpha": -1.0}}, "hamiltonian.alpha")])
def test_config_refusals(over, key):
    with pytest.raises(ConfigError) as e:
        cfg("power", **over)
    assert key in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("H,table,key", [
    ("weighted", {"weight": "x0"}, "hamiltonian.weight"),       # not positive
    ("anisotropic", {"A": [["1", "0"]]}, "hamiltonian.A"),      # wrong shape
    ("|p|", {}, "problem.H"),                                   # dH/dp NaN at p = 0
    ("p0 + q0", {}, "problem.H"),                               # unknown name
    ("x0**2", {}, "problem.H"),                                 # no p at all
    ("-|p|**2/2", {}, "problem.H"),                             # concave: ran to exit 0
    ("sin(p0)", {}, "problem.H"),                               # concave at p = 0.7
    ("|p|**2/2 - p0**2", {}, "problem.H")])                     # concave along e_0
def test_bad_hamiltonians(H, table, key):
    from fem_mfc.checks import check_formulas
    with pytest.raises(ConfigError) as e:
        c = cfg(H, hamiltonian=table)
        check_formulas(c, dolfinx.mesh.create_interval(MPI.COMM_SELF, 8, [-1, 1]))
    assert key in str(e.value) and "\n" not in str(e.value)


def test_solver_refusals():
    """Direct API use: the Cole–Hopf path and the monotone scheme refuse a non-quadratic H."""
    from fem_mfc.solvers import choose_method
    p = problem("power-1.5", kappa=0)
    assert choose_method(p) == "newton"
    with pytest.raises(ConfigError, match="problem.H"):
        solve(p, "cole-hopf")
    with pytest.raises(ConfigError, match="problem.H"):
        newton(p, guess="cole-hopf")
    q = problem("power-1.5", kappa=0, scheme=BE)
    q.stabilisation = "monotone"
    with pytest.raises(ConfigError, match="problem.H"):
        newton(q)


def test_cli_refusal_exit_2(tmp_path):
    from helpers import run_cli
    f = tmp_path / "h.toml"
    f.write_text('[run]\nformulation = "qhd"\n[problem]\nH = "congestion"\n'
                 '[mesh]\nkind = "interval"\nlower = [-1.0]\nupper = [1.0]\n')
    r = run_cli(["run", str(f), "--out", str(tmp_path / "out")])
    assert r.returncode == 2
    assert "problem.H" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# -- serial = 2 ranks -------------------------------------------------------------------------
@pytest.mark.mpi
@pytest.mark.parametrize("coupling", ["mftc", "mfg"])
def test_parallel_matches_serial(coupling):
    par = newton(problem("congestion", coupling, nx=12, steps=6, comm=MPI.COMM_WORLD))
    ser = newton(problem("congestion", coupling, nx=12, steps=6, comm=MPI.COMM_SELF))
    assert par.iterations == ser.iterations
    assert abs(par.J - ser.J) < 1e-9 and abs(par.J_value - ser.J_value) < 1e-9
    assert abs(par.min_rho - ser.min_rho) < 1e-9
    assert max(abs(a - b) for a, b in zip(par.mass, ser.mass)) < 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("kind,coupling", [("power-1.5", "mftc"), ("congestion", "mfg")])
def test_picard_agrees_with_newton(kind, coupling):
    """Fictitious play (HJB sweeps by per-step Newton, FP sweeps) reaches Newton's solution."""
    nw = solve(problem(kind, coupling, nx=8, steps=4), "newton")
    pc = solve(problem(kind, coupling, nx=8, steps=4), "picard")
    assert abs(nw.J - pc.J) < 1e-8
    for a, b in zip(nw.rho + nw.u, pc.rho + pc.u):
        assert np.abs(a.x.array - b.x.array).max() < 1e-8


def test_numbers_of_an_h_formula_compile_once():
    """The numbers and params of ``[problem] H`` (and of the weight/anisotropy formulas) are
    Constants: an edited weight keeps the UFL signature (one compiled kernel; a new value cost
    5–6 s of compilation on a 1 s run), and a quadratic H is still recognised as one."""
    from fem_mfc import config
    msh = dolfinx.mesh.create_unit_square(MPI.COMM_SELF, 2, 2)
    V = dolfinx.fem.functionspace(msh, ("Lagrange", 1))
    u = dolfinx.fem.Function(V)
    sigs = set()
    for w in (4.0, 5.0):
        cfg = config.from_dict({"mesh": {"kind": "rectangle", "cells": 2}, "rho0": {"mean": []},
                                "problem": {"H": f"0.5*(p0**2 + {w}*p1**2) + c*p0",
                                            "params": {"c": w / 10}}})
        h = ham.from_config(cfg, msh)
        assert h.quadratic
        sigs.add((h(ufl.grad(u)) * ufl.dx).signature())
    assert len(sigs) == 1


def test_a_refused_matrix_is_quoted_as_written_in_toml():
    """hamiltonian.A was quoted as Python's repr ([['x0']]) in the one-line error."""
    from fem_mfc.checks import check_formulas
    with pytest.raises(ConfigError) as e:
        check_formulas(cfg("anisotropic", hamiltonian={"A": [["x0"]]}),
                       dolfinx.mesh.create_interval(MPI.COMM_SELF, 8, [-1, 1]))
    assert "hamiltonian.A" in str(e.value) and str(e.value).endswith('got [["x0"]]'), e.value
