"""Affine evaluation of Jacobian blocks (solvers/affine.py) equals assembly.

Serial: ``python3 -m pytest tests/test_affine.py``; the ``mpi`` tests run under
``mpirun -n 2 python3 -m pytest --with-mpi -m mpi tests/test_affine.py``."""
from mpi4py import MPI

import dolfinx
import numpy as np
import pytest
import ufl

from fem_mfc.solvers import newton
from fem_mfc.solvers.affine import AffineForm, affine_evaluator, colour_coefficient_dofs
from fem_mfc.solvers.assemblers import AFFINE_AFTER, REPAY_JACOBIANS
from fem_mfc.solvers.assembly import CSRAssembler
from fem_mfc.solvers.spacetime import SpaceTime
from test_kkt_pc import assert_same, perturbed, problem

COMMS = [MPI.COMM_SELF, pytest.param(MPI.COMM_WORLD, marks=pytest.mark.mpi)]


def space(comm, degree=1):
    mesh = dolfinx.mesh.create_unit_square(comm, 7, 6)
    V = dolfinx.fem.functionspace(mesh, ("Lagrange", degree))
    w1, w2 = dolfinx.fem.Function(V), dolfinx.fem.Function(V)
    rng = np.random.default_rng(comm.rank)
    return V, w1, w2, rng


def randomise(rng, *ws):
    for w in ws:
        w.x.array[:] = rng.standard_normal(w.x.array.size)
        w.x.scatter_forward()


def assembled(a, csr):
    csr.set_value(0.0)
    dolfinx.fem.assemble_matrix(csr, a)
    return csr.data.copy()


@pytest.mark.parametrize("comm", COMMS)
@pytest.mark.parametrize("degree", [1, 2])
def test_affine_form_equals_assembly(comm, degree):
    """A form affine in two coefficients (with gradients of one of them, a constant part and
    a non-symmetric term): d₀ + Σ Tᵢwᵢ equals assembly at new random coefficients to 1e-13."""
    V, w1, w2, rng = space(comm, degree)
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    a = dolfinx.fem.form((1.0 + w1) * ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx
                         + u * ufl.inner(ufl.grad(w2), ufl.grad(v)) * ufl.dx
                         + (2.0 - w2) * u * v * ufl.dx)
    csr = CSRAssembler().scratch(a)
    randomise(rng, w1, w2)
    f = affine_evaluator(a, csr, [w1, w2], {}, comm)
    assert f is not None and len(f.T) == 2
    for _ in range(3):
        randomise(rng, w1, w2)
        ref = assembled(a, csr)
        got = f.evaluate().copy()
        assert np.abs(got - ref).max() <= 1e-13 * np.abs(ref).max()
    f.destroy()


@pytest.mark.parametrize("comm", COMMS)
def test_not_affine_is_refused(comm):
    """∫w²∇u·∇v is not affine in w: the check against assembly refuses the evaluator."""
    V, w1, _, rng = space(comm)
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    a = dolfinx.fem.form(w1 ** 2 * ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx)
    randomise(rng, w1)
    before = w1.x.array.copy()
    assert affine_evaluator(a, CSRAssembler().scratch(a), [w1], {}, comm) is None
    assert np.array_equal(w1.x.array, before)          # the coefficient is restored


def test_facet_integrals_and_no_inputs_are_assembled():
    V, w1, _, _ = space(MPI.COMM_SELF)
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    a = dolfinx.fem.form(w1 * u * v * ufl.ds)
    assert affine_evaluator(a, CSRAssembler().scratch(a), [w1], {}, MPI.COMM_SELF) is None
    b = dolfinx.fem.form(u * v * ufl.dx)
    assert affine_evaluator(b, CSRAssembler().scratch(b), [], {}, MPI.COMM_SELF) is None


def test_colouring_separates_dofs_of_one_patch():
    """No two dofs of one colour lie in cells around a common row dof (P1: distance 2)."""
    V, _, _, _ = space(MPI.COMM_SELF)
    cells = V.dofmap.list
    n = V.dofmap.index_map.size_local
    colour = colour_coefficient_dofs(cells, cells, n, n)
    for i in range(n):
        patch = np.unique(cells[np.any(cells == i, axis=1)])
        assert len(set(colour[patch].tolist())) == patch.size
    assert colour.max() + 1 <= 12


@pytest.mark.parametrize("comm", COMMS)
def test_newton_with_affine_blocks_matches_assembled_blocks(comm):
    """Enough steps that one Jacobian repays the set-up: the state-dependent block forms
    switch to affine evaluation during the first Newton step, with the same iterates as
    with every block assembled."""
    steps = 24
    a = newton(problem(comm, steps=steps), linear="sweep")
    b = newton(problem(comm, steps=steps), linear="sweep",
               petsc_options={"newton_affine_blocks": False})
    assert_same(b, a, tol=1e-9)
    st = SpaceTime(problem(comm, steps=steps))
    st.vec_to_states(perturbed(st, 1))
    st.block_grid()
    asm = st.assembler
    live = [ev for ev in asm._affine.values() if ev is not None]
    assert live and all(isinstance(ev, AffineForm) for ev in live)
    assert all(asm._due[k] <= steps for k in asm._due)
    # A_n = −τ∫ρ̄∇·∇ with ρ̄ = (ρⁿ + ρ^{n+1})/2: its two Tᵢ coincide and are applied once
    assert any(len(members) == 2 for ev in live for _, members in ev.groups)


def test_few_levels_rent_before_buying():
    """With fewer levels than the set-up costs in assemblies, a form is evaluated affinely
    only after it has been assembled that often (rent or buy)."""
    st = SpaceTime(problem(steps=AFFINE_AFTER + 1))
    asm = st.assembler
    rounds = 0
    while not any(ev is not None for ev in asm._affine.values()):
        rounds += 1
        st.vec_to_states(perturbed(st, rounds))
        st.block_grid()
        assert rounds < 50
    key = next(k for k, ev in asm._affine.items() if ev is not None)
    assert st.N < asm._due[key] <= asm._count[key]


def test_two_jacobians_repay_the_set_up():
    """A form whose set-up costs more assemblies than one Jacobian's N levels but no more
    than REPAY_JACOBIANS Jacobians' is evaluated affinely from its first Jacobian on (after
    AFFINE_AFTER assemblies): Newton assembles at least that many."""
    probe = SpaceTime(problem(steps=AFFINE_AFTER + 1))
    probe.vec_to_states(perturbed(probe, 1))
    probe.block_grid()
    due = min(probe.assembler._due.values())
    steps = max(AFFINE_AFTER + 1, -(-due // REPAY_JACOBIANS))    # N < due <= REPAY·N
    assert steps < due <= REPAY_JACOBIANS * steps
    st = SpaceTime(problem(steps=steps))
    st.vec_to_states(perturbed(st, 1))
    st.block_grid()                                    # the first Jacobian
    asm = st.assembler
    key = next(k for k, d in asm._due.items() if d == due)
    assert isinstance(asm._affine.get(key), AffineForm)
    assert asm._count[key] == AFFINE_AFTER
    # from then on the form is evaluated at every level without comparing (and copying)
    # its inputs against a memo
    st.vec_to_states(perturbed(st, 2))
    st.block_grid()
    assert key not in asm._memo


@pytest.mark.parametrize("comm", COMMS)
def test_affine_functionals_equal_assembly(comm):
    """∫ρ^k and ∫Φρ^N are affine in one state: F(0) + b·ρ equals their assembly at new states
    (cost and value are not affine and stay assembled)."""
    st = SpaceTime(problem(comm, steps=4))
    aff = st.assembler._affine_func
    assert {"mass", "terminal"} <= set(aff) and "cost" not in aff
    st.vec_to_states(perturbed(st, 3))
    for k in range(st.N + 1):
        st.load(k)
        for name in aff:
            ref = comm.allreduce(dolfinx.fem.assemble_scalar(st.func[name]), op=MPI.SUM)
            assert abs(st.scalar(name) - ref) <= 1e-14 * max(abs(ref), 1.0), (name, k)
