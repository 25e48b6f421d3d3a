"""One space-time system for every all-at-once formulation (HJB–FP, QHD, Cole–Hopf pair).

Unknowns: two kinds of fields on N + 1 time levels, "rho" (n = 1..N; n = 0 is data) and "u"
(n = 0..N−1; n = N is data or absent) — 2N *fields*, field 2n = uⁿ, field 2n−1 = ρⁿ.  Each is
a dolfinx Function; the global PETSc Vec has, on every rank, the concatenation of the owned
dofs of the fields in this order (the ordering of ``MatNest.convert("aij")``).

A formulation is a :class:`Formulation` — a *description*, no code of its own:

* ``templates``: name → (kind, offset): at level k the template holds kind^{k+offset};
* ``rows``: row → (kind, predicate(k, N)): at level k the row is the equation of field kind^k
  and exists where the predicate holds;
* ``build(tm, t_prev, t_cur) -> {row: F}``: the UFL residual rows of a level on the template
  Functions ``tm`` and the source-time Constants t_{k−1}, t_k.  The Jacobian blocks are
  derived here, (row, template) ↦ ∂F_row/∂template (vanishing blocks dropped), so every
  formulation's Newton matrix is by construction the derivative of its residual;
* ``functionals(tm, t_cur) -> {name: form or None}`` and ``diagnostics``: output key →
  ("sum" | "list", ((name, predicate(k, N)), …)): the scalars evaluated level by level;
  ``finish(st, d)`` may add derived keys (e.g. J of the pair through the HJB–FP functionals);
* ``data``: the non-unknown fields {"rho": ρ-kind at n = 0, "u": u-kind at n = N or None};
* ``guess``: initial states {"rho": …, "u": …} (Functions or arrays);
* ``names`` of the two kinds' Functions and ``params``, per-run numbers of the description
  that views of the solution need (e.g. the pair's Φ_min).

Forms are compiled once per system with τ, ε as Constants (one compiled form for every step
count); :meth:`SpaceTime.load` copies level k's states into the templates before assembling.
The HJB–FP description (forms/hjb_fp.py) is the default.  Subclasses choose another one by
overriding :meth:`SpaceTime.describe` only and add views of their unknowns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Optional

import dolfinx
import dolfinx.fem.petsc
import numpy as np
import ufl
from mpi4py import MPI
from petsc4py import PETSc

from ..errors import SolverError
from ..forms import hjb_fp as H
from .affine import affine_evaluator, applicable, setup_assemblies
from .assembly import CSRAssembler


AFFINE_AFTER = 4                 # block assemblies of a form before it is evaluated affinely


def first(k, N):
    return k == 0


def last(k, N):
    return k == N


def before_last(k, N):
    return k < N


def every(k, N):
    return True


# The HJB–FP layout: level k holds ρ^{k−1}, ρ^k, ρ^{k+1}, u^{k−1}, u^k; row "u" is the FP step
# k (k < N), "rho"/"rho_last" the HJB step for u^{k−1} (k ≥ 1).  QHD puts S in the u-slots.
HJB_TEMPLATES = {H.RHO_PREV: ("rho", -1), H.RHO_CUR: ("rho", 0), H.RHO_NEXT: ("rho", 1),
                 H.U_PREV: ("u", -1), H.U_CUR: ("u", 0)}
HJB_ROWS = {"u": ("u", before_last),
            "rho": ("rho", lambda k, N: 1 <= k < N),
            "rho_last": ("rho", last)}
# J = Σ cost + ∫Φρ^N; value identity J = ∫u(0)ρ_0 + Σ value; ∫ρ^k per level
HJB_DIAGNOSTICS = {"J": ("sum", (("cost", before_last), ("terminal", last))),
                   "J_value": ("sum", (("value", before_last), ("u0", first))),
                   "mass": ("list", (("mass", every),))}


@dataclass
class Formulation:
    """The description of one space-time formulation (see the module docstring)."""

    build: Callable
    functionals: Callable
    data: dict
    guess: dict
    templates: dict = field(default_factory=lambda: dict(HJB_TEMPLATES))
    rows: dict = field(default_factory=lambda: dict(HJB_ROWS))
    diagnostics: dict = field(default_factory=lambda: dict(HJB_DIAGNOSTICS))
    names: tuple = ("rho", "u")
    finish: Optional[Callable] = None
    params: dict = field(default_factory=dict)


def hjb_fp(problem) -> Formulation:
    """The discrete HJB–FP Lagrangian (forms/hjb_fp.py); trivial guess ρⁿ = ρ_0, uⁿ = Φ."""
    d = problem.step_data()
    V = problem.space
    phi = dolfinx.fem.Function(V)
    phi.interpolate(dolfinx.fem.Expression(problem.Phi, V.element.interpolation_points()))
    return Formulation(build=lambda tm, tp, tc: H.level_forms(tm, tp, tc, d)["res"],
                       functionals=lambda tm, tc: H.level_functionals(tm, tc, d),
                       data={"rho": problem.rho0, "u": None},
                       guess={"rho": problem.rho0, "u": phi})


def varying_inputs(form, varying: set) -> list:
    """The coefficients and Constants of a UFL form or expression that are in ``varying``."""
    return [f for f in (set(ufl.algorithms.extract_coefficients(form))
                        | set(ufl.algorithms.analysis.extract_type(form, ufl.Constant)))
            if f in varying]


def input_values(inputs: list) -> list:
    """The current values of Functions and Constants (views, not copies)."""
    return [f.x.array if hasattr(f, "x") else np.asarray(f.value) for f in inputs]


def jacobian_blocks(res: dict, tm: dict) -> dict:
    """{(row, template): ∂F_row/∂template} for the non-vanishing derivatives."""
    dtrial = ufl.TrialFunction(next(iter(tm.values())).function_space)
    blocks = {(row, col): H.nonzero(ufl.derivative(F, f, dtrial))
              for row, F in res.items() for col, f in tm.items()}
    return {key: a for key, a in blocks.items() if a is not None}


class SpaceTime:
    """States, compiled level forms, residual and Jacobian of a space-time system."""

    def __init__(self, problem, formulation: Formulation | None = None, **options):
        self.problem = p = problem
        self.formulation = fm = formulation or self.describe(problem, **options)
        self.V = V = p.space
        self.comm = p.mesh.comm
        self.N = N = p.steps
        self.nl = V.dofmap.index_map.size_local * V.dofmap.index_map_bs
        self.nfields = 2 * N
        rho_name, u_name = fm.names
        self.rho = [fm.data["rho"]] + [dolfinx.fem.Function(V, name=rho_name) for _ in range(N)]
        self.u = [dolfinx.fem.Function(V, name=u_name) for _ in range(N)]
        self.u_data = fm.data.get("u")
        for fs, g in ((self.rho[1:], fm.guess["rho"]), (self.u, fm.guess["u"])):
            for f in fs:
                f.x.array[:] = g.x.array if hasattr(g, "x") else g
        self.tm = {k: dolfinx.fem.Function(V, name=k) for k in fm.templates}
        self.t_prev = dolfinx.fem.Constant(p.mesh, 0.0)
        self.t_cur = dolfinx.fem.Constant(p.mesh, 0.0)
        res = fm.build(self.tm, self.t_prev, self.t_cur)
        jac = self._jac_ufl = jacobian_blocks(res, self.tm)
        self.res = {k: dolfinx.fem.form(F) for k, F in res.items()}
        self.jac = {k: dolfinx.fem.form(a) for k, a in jac.items()}
        varying = set(self.tm.values()) | {self.t_prev, self.t_cur}
        self._inputs = {k: varying_inputs(a, varying) for k, a in jac.items()}
        self.constant_block = {k: not inputs for k, inputs in self._inputs.items()}
        self._row_inputs = {k: varying_inputs(F, varying) for k, F in res.items()}
        self._row_memo = {}                   # row → (inputs, owned residual) of the last assembly
        self._memo = {}                       # key → (inputs, Mat, its state) of the last assembly
        functionals = fm.functionals(self.tm, self.t_cur)
        self.func = {k: (dolfinx.fem.form(f) if f is not None else None)
                     for k, f in functionals.items()}
        self._affine_func = self._affine_functionals(functionals, varying)
        self._vecs = {k: dolfinx.fem.Function(V).x for k in self.res}
        self._mats = {}
        self._assembler = CSRAssembler()      # one sparsity pattern for all the blocks
        self.affine_blocks = True             # evaluate affine blocks (see :meth:`_evaluator`)
        self._affine, self._colours, self._assembled, self._affine_due = {}, {}, {}, {}
        self.A = None

    @cached_property
    def quadratic(self) -> bool:
        """Is the residual quadratic in the unknowns, i.e. every Jacobian block affine in the
        states (true for HJB–FP with G = κρ²/2: the ρ̄|∇u|² term gives bilinear/quadratic
        rows)?  Checked symbolically: no derivative of a block with respect to a template
        depends on a template."""
        templates = set(self.tm.values())
        w = ufl.Argument(self.V, 2)
        for a in self._jac_ufl.values():
            for t in templates:
                d = H.nonzero(ufl.derivative(a, t, w))
                if d is not None and varying_inputs(d, templates):
                    return False
        return True

    @classmethod
    def describe(cls, problem, **options) -> Formulation:
        """The formulation of this class (HJB–FP); subclasses override only this."""
        return hjb_fp(problem, **options)

    # -- level bookkeeping -------------------------------------------------------------
    def _index(self, name: str, k: int):
        kind, off = self.formulation.templates[name]
        return kind, k + off

    def field(self, name: str, k: int):
        """Global field index of template ``name`` at level k, or None if it is data/absent."""
        kind, n = self._index(name, k)
        if kind == "rho":
            return 2 * n - 1 if 1 <= n <= self.N else None
        return 2 * n if 0 <= n <= self.N - 1 else None

    def row_field(self, row: str, k: int) -> int:
        return 2 * k if self.formulation.rows[row][0] == "u" else 2 * k - 1

    def rows(self, k: int):
        """Residual rows of level k."""
        return [r for r, (_, exists) in self.formulation.rows.items() if exists(k, self.N)]

    def function(self, f: int):
        """The Function of global field f."""
        return self.u[f // 2] if f % 2 == 0 else self.rho[(f + 1) // 2]

    def source(self, name: str, k: int):
        """The Function (unknown or data) of template ``name`` at level k, or None."""
        kind, n = self._index(name, k)
        if kind == "rho":
            return self.rho[n] if 0 <= n <= self.N else None
        if 0 <= n < self.N:
            return self.u[n]
        return self.u_data if n == self.N else None

    def load(self, k: int):
        """Copy level k's states into the templates and set the source times."""
        for name, t in self.tm.items():
            f = self.source(name, k)
            if f is not None:
                t.x.array[:] = f.x.array
        self.t_prev.value = self.problem.source_time(k - 1)
        self.t_cur.value = self.problem.source_time(k)

    # -- global vector <-> states ------------------------------------------------------
    def create_vec(self) -> PETSc.Vec:
        v = PETSc.Vec().createMPI((self.nfields * self.nl, PETSc.DETERMINE), comm=self.comm)
        v.setUp()
        return v

    def states_to_vec(self, X: PETSc.Vec):
        a, nl = X.getArray(), self.nl
        for f in range(self.nfields):
            a[f * nl:(f + 1) * nl] = self.function(f).x.array[:nl]

    def vec_to_states(self, X: PETSc.Vec):
        a, nl = X.getArray(readonly=True), self.nl
        for f in range(self.nfields):
            fun = self.function(f)
            fun.x.array[:nl] = a[f * nl:(f + 1) * nl]
            fun.x.scatter_forward()

    def assign(self, rho, u):
        """States ← the given ρ⁰..ρ^N (ρ⁰ is data and left alone) and u⁰..u^{N−1}."""
        for a, b in zip(self.rho[1:] + self.u, list(rho[1:]) + list(u)):
            a.x.array[:] = b.x.array

    # -- assembly ----------------------------------------------------------------------
    def assemble_row(self, row: str) -> np.ndarray:
        """Owned part of the residual vector of ``row`` at the loaded level; a row whose
        inputs (templates and times its form uses) hold the values of its last assembly is
        that result (levels with equal states, e.g. the constant initial guess: a few
        assemblies instead of N; the decision is collective)."""
        values = input_values(self._row_inputs[row])
        memo = self._row_memo.get(row)
        if self._unchanged(memo, values):
            return memo[1]
        b = self._vecs[row]
        b.array[:] = 0.0
        dolfinx.fem.assemble_vector(b.array, self.res[row])
        b.scatter_reverse(dolfinx.la.InsertMode.add)
        self._row_memo[row] = ([v.copy() for v in values], b.array[: self.nl].copy())
        return b.array[: self.nl]

    def residual(self, X: PETSc.Vec | None, F: PETSc.Vec):
        """F(X): all rows of all levels (X = None: use the current states)."""
        if X is not None:
            self.vec_to_states(X)
        a, nl = F.getArray(), self.nl
        for k in range(self.N + 1):
            self.load(k)
            for row in self.rows(k):
                f = self.row_field(row, k)
                a[f * nl:(f + 1) * nl] = self.assemble_row(row)

    def block(self, key, k: int) -> PETSc.Mat:
        """Assembled Jacobian block ``key = (row, template)`` at the loaded level k.

        Blocks whose form involves neither unknowns nor time are assembled once and shared.
        A block whose inputs (the templates and times its form uses) hold the values of the
        last assembly of its form is copied from that matrix instead, unless that matrix has
        changed since (levels with equal states, e.g. the constant initial guess: one assembly
        per form instead of N)."""
        const = self.constant_block[key]
        mkey = key if const else (key, k)
        A = self._mats.get(mkey)
        if A is not None and const:
            return A
        values = input_values(self._inputs[key])
        memo = self._memo.get(key)                # (inputs, Mat, its state when memoised)
        valid = memo is not None and memo[1] is not A and memo[1].stateGet() == memo[2]
        if self._unchanged(memo if valid else None, values):
            if A is None:
                A = self._mats[mkey] = self._assembler.create_copy(self.jac[key], memo[1])
            else:
                memo[1].copy(A, structure=PETSc.Mat.Structure.SAME_NONZERO_PATTERN)
            return A
        if A is None:
            A = self._mats[mkey] = self._assembler.create(self.jac[key])
        self._assembler.assemble(A, self.jac[key], self._evaluator(key))
        self._memo[key] = ([v.copy() for v in values], A, A.stateGet())
        return A

    def _unchanged(self, memo, values: list) -> bool:
        """Do the input values equal those memoised in ``memo[0]`` on every rank?  (One
        collective decision: the callers assemble, which may communicate, otherwise.)"""
        same = memo is not None and all(np.array_equal(a, b) for a, b in zip(memo[0], values))
        return self.comm.allreduce(same, op=MPI.LAND)

    def _evaluator(self, key):
        """The affine evaluator of block form ``key`` (solvers/affine.py), or None.

        For a quadratic residual every block is affine in the states it depends on; a block
        form is evaluated as d₀ + Σ Tᵢwᵢ (checked against an assembly) once it has been
        assembled AFFINE_AFTER times if one Jacobian (N levels) repays the set-up (≈ one
        assembly per colour and state: 10 per state for P1 triangles), else once it has been
        assembled as often as the set-up costs (rent or buy: at most twice the cheaper
        choice) — unless it depends on time (sources) or ``affine_blocks`` is off."""
        if key in self._affine:
            return self._affine[key]
        n = self._assembled[key] = self._assembled.get(key, 0) + 1
        if n < AFFINE_AFTER or not self.affine_blocks or not self.quadratic:
            return None
        a, inputs = self.jac[key], self._inputs[key]
        csr = self._assembler.scratch(a)
        if key not in self._affine_due:                          # decided once per form
            if csr is None or not all(hasattr(f, "x") for f in inputs) \
                    or not applicable(a, inputs, self.comm):      # time Constants etc.
                self._affine[key] = None
                return None
            self._affine_due[key] = setup_assemblies(a, csr, inputs, self._colours, self.comm)
        due = self._affine_due[key]
        if self.N < due and n < due:
            return None
        ev = affine_evaluator(a, csr, inputs, self._colours, self.comm)
        self._affine[key] = ev
        return ev

    @cached_property
    def block_keys(self) -> dict:
        """{(r, c): (key, k)}: the Jacobian block of row field r and column field c is the form
        ``self.jac[key]`` assembled at level k (non-vanishing blocks only), ordered by level."""
        out = {}
        for k in range(self.N + 1):
            for row in self.rows(k):
                r = self.row_field(row, k)
                for (rw, col) in self.jac:
                    c = self.field(col, k)
                    if rw == row and c is not None:
                        out[(r, c)] = ((rw, col), k)
        return out

    def block_grid(self, skip=frozenset()) -> list:
        """The Jacobian blocks at the current states as an nfields × nfields grid of Mats
        (None where a block vanishes or its (row, column) field pair is in ``skip``)."""
        nf = self.nfields
        grid = [[None] * nf for _ in range(nf)]
        loaded = None
        for (r, c), (key, k) in self.block_keys.items():
            if (r, c) in skip:
                continue
            if k != loaded:
                self.load(k)
                loaded = k
            grid[r][c] = self.block(key, k)
        return grid

    def assemble_block(self, r: int, c: int) -> PETSc.Mat:
        """A new matrix holding block (r, c) at the current states (not kept by the system)."""
        key, k = self.block_keys[(r, c)]
        self.load(k)
        A = self._assembler.create(self.jac[key])
        return self._assembler.assemble(A, self.jac[key])

    def jacobian(self, X: PETSc.Vec | None) -> PETSc.Mat:
        """The space-time Jacobian as AIJ: blocks → MatNest → convert (reusing ``self.A``)."""
        if X is not None:
            self.vec_to_states(X)
        nest = PETSc.Mat().createNest(self.block_grid(), comm=self.comm)
        if self.A is None:
            self.A = PETSc.Mat()          # empty handle: MatConvert(MAT_INITIAL_MATRIX)
        nest.convert("aij", out=self.A)   # later calls: MAT_REUSE_MATRIX
        nest.destroy()
        return self.A

    # -- diagnostics -------------------------------------------------------------------
    def _affine_functionals(self, functionals: dict, varying: set) -> dict:
        """{name: (template, F(0) on this rank, b)} for the functionals of one template whose
        derivative b = ∂F/∂f is independent of the states and time (F affine in f, e.g.
        ∫ρ^k and ∫Φρ^N): F(f) = F(0) + b·f, one dot product per level instead of an
        assembly.  b is assembled once (owned dofs, ghost contributions added)."""
        out = {}
        for name, F in functionals.items():
            if F is None:
                continue
            inputs = varying_inputs(F, varying)
            if len(inputs) != 1 or not hasattr(inputs[0], "x"):
                continue
            f = inputs[0]
            dF = H.nonzero(ufl.derivative(F, f, ufl.TestFunction(f.function_space)))
            if dF is None or varying_inputs(dF, varying):
                continue
            b = dolfinx.fem.petsc.assemble_vector(dolfinx.fem.form(dF))
            b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
            saved = f.x.array.copy()
            f.x.array[:] = 0.0
            F0 = dolfinx.fem.assemble_scalar(self.func[name])
            f.x.array[:] = saved
            out[name] = (f, F0, b.array_r[: self.nl].copy())
            b.destroy()
        return out

    def scalar(self, name: str) -> float:
        """The functional ``name`` at the loaded level (summed over ranks)."""
        aff = self._affine_func.get(name)
        if aff is not None:
            f, F0, b = aff
            return self.comm.allreduce(F0 + float(b @ f.x.array[: self.nl]), op=MPI.SUM)
        return self.comm.allreduce(dolfinx.fem.assemble_scalar(self.func[name]), op=MPI.SUM)

    def min_of(self, fields) -> float:
        """The smallest owned dof value of ``fields`` over all ranks."""
        nl = self.nl
        mins = [f.x.array[:nl].min() if nl else np.inf for f in fields]
        return self.comm.allreduce(float(min(mins)), op=MPI.MIN)

    def diagnostics(self) -> dict:
        """The formulation's functionals, level by level ("sum" keys summed over the levels
        where their predicate holds, "list" keys one value per such level), the mass error
        max|∫ρ^k − 1| and min ρ of the current states, then ``finish``."""
        spec = self.formulation.diagnostics
        out = {key: (0.0 if how == "sum" else []) for key, (how, _) in spec.items()}
        for k in range(self.N + 1):
            self.load(k)
            for key, (how, parts) in spec.items():
                for name, when in parts:
                    if self.func.get(name) is None or not when(k, self.N):
                        continue
                    if how == "sum":
                        out[key] += self.scalar(name)
                    else:
                        out[key].append(self.scalar(name))
        out["mass_error"] = max(abs(m - 1.0) for m in out["mass"])
        out["min_rho"] = self.min_of(self.rho)
        fin = self.formulation.finish
        return fin(self, out) if fin else out

    def check_finite(self, what: str):
        bad = any(not np.all(np.isfinite(f.x.array)) for f in self.rho[1:] + self.u)
        if self.comm.allreduce(bad, op=MPI.LOR):
            raise SolverError(f"{what}: the solution contains NaN or inf (diverged)")
