"""One space-time system for every all-at-once formulation (HJB–FP, QHD, Cole–Hopf pair).

The unknowns are the two kinds of fields on the N + 1 time levels of
:class:`~fem_mfc.solvers.layout.SpaceTimeLayout` (ρ¹..ρ^N and u⁰..u^{N−1} for HJB–FP), each a
dolfinx Function.  A formulation is a :class:`Formulation` — a *description* of the
mathematics, no solver code:

* ``templates``: name → (kind, offset): at level k the template holds kind^{k+offset};
* ``rows``: row → (kind, predicate(k, N)): at level k the row is the equation of the field
  kind^k and exists where the predicate holds;
* ``build(tm, t_prev, t_cur) -> {row: F}``: the UFL residual rows of a level on the template
  Functions ``tm`` and the source-time Constants t_{k−1}, t_k.  The Jacobian blocks are
  derived here, (row, template) ↦ ∂F_row/∂template, so every formulation's Newton matrix is
  by construction the derivative of its residual;
* ``functionals(tm, t_cur) -> {name: form or None}`` and ``diagnostics``: output key →
  ("sum" | "list", ((name, predicate(k, N)), …)): the scalars evaluated level by level;
  ``finish(st, d)`` may add derived keys;
* ``data``, ``guess``, ``names``, ``params`` (per-run numbers that views of the solution need)
  and ``parameters``: the Constants a continuation may change (e.g. the coupling strength);
* **structure facts**, declared once from the mathematics (each verified numerically by the
  tests, never discovered at run time): ``depends`` (the templates each row involves),
  ``quadratic`` (the residual is quadratic in the unknowns, every Jacobian block affine in
  the states), ``mirrored`` (the rows are the gradient of one discrete Lagrangian up to terms
  free of the backward kind, so the block of the equation of ρ in column u is the transpose
  of the block of the equation of u in column ρ), ``forward_split`` (the forward equation
  is linear in (ρⁿ, ρ^{n+1}) through θ-means and differences: ∂F/∂ρⁿ = α ∂F/∂ρ^{n+1} + E with
  E independent of the states), ``sweep`` (the sweep preconditioner, which drops the ρ–ρ
  blocks, is effective: true for HJB–FP, whose ρ–ρ blocks are the congestion only, and for
  the Cole–Hopf pair; false for QHD) and
  ``midpoint_coupling`` (the ρ–ρ blocks of Crank–Nicolson are those of one matrix per time
  interval: :func:`midpoint_coupling`) and ``constant_coupling`` (the ρ–ρ blocks do not change
  with the states, only with the parameters: a coupling affine in ρ, H free of ρ).

:class:`SpaceTime` keeps the mathematics only: states ↔ vectors, residual, Jacobian blocks and
diagnostics.  How a row or block is evaluated is its ``assembler``'s business
(:mod:`fem_mfc.solvers.assemblers`: a plain one that assembles, and a caching one that reuses
and evaluates affine blocks without assembly).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import dolfinx.fem.petsc
import numpy as np
import ufl

from ..errors import SolverError
from ..forms import hjb_fp as H
from . import formcache
from .assemblers import Assembler, CachingAssembler, input_values, varying_inputs  # noqa: F401
from .layout import BACKWARD, FORWARD, SpaceTimeLayout


def first(k, N):
    return k == 0


def last(k, N):
    return k == N


def before_last(k, N):
    return k < N


def every(k, N):
    return True


# The HJB–FP layout: level k holds ρ^{k−1}, ρ^k, ρ^{k+1}, u^{k−1}, u^k; row "u" is the equation
# of u^k (FP step k → k+1, k < N), "rho"/"rho_last" the equation of ρ^k (HJB step for u^{k−1},
# k ≥ 1).  QHD puts S in the u-slots.
HJB_TEMPLATES = {H.RHO_PREV: (FORWARD, -1), H.RHO_CUR: (FORWARD, 0), H.RHO_NEXT: (FORWARD, 1),
                 H.U_PREV: (BACKWARD, -1), H.U_CUR: (BACKWARD, 0)}
HJB_ROWS = {"u": (BACKWARD, before_last),
            "rho": (FORWARD, lambda k, N: 1 <= k < N),
            "rho_last": (FORWARD, last)}
# J = Σ cost + ∫Φρ^N; value identity J = ∫u(0)ρ_0 + Σ value; ∫ρ^k per level
HJB_DIAGNOSTICS = {"J": ("sum", (("cost", before_last), ("terminal", last))),
                   "J_value": ("sum", (("value", before_last), ("u0", first))),
                   "mass": ("list", (("mass", every),))}


@dataclass(frozen=True)
class ForwardSplit:
    """∂F_row/∂(prev) = alpha·∂F_row/∂(next) + E with E independent of the states (templates
    ``prev``, ``next`` of the forward equation ``row``)."""

    row: str
    prev: str
    next: str
    alpha: float


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
    parameters: dict = field(default_factory=dict)
    depends: Optional[dict] = None
    quadratic: bool = False
    mirrored: bool = False
    forward_split: Optional[ForwardSplit] = None
    sweep: bool = True
    midpoint_coupling: bool = False
    constant_coupling: bool = False


def hjb_fp(problem) -> Formulation:
    """The discrete HJB–FP Lagrangian (forms/hjb_fp.py); trivial guess ρⁿ = ρ_0, uⁿ = Φ.
    A problem of several populations (fem_mfc/populations.py) gets :func:`populations`."""
    if getattr(problem, "populations", None):
        return populations(problem)
    d = problem.step_data()
    theta = d.theta
    coupled, quadratic = H.structure(d)
    diagnostics = dict(HJB_DIAGNOSTICS)       # + the mass through each leaky wall per step
    diagnostics.update({f"leak:{tag}": ("list", ((f"leak:{tag}", before_last),))
                        for tag, *_ in d.robin})
    return Formulation(build=lambda tm, tp, tc: H.level_residuals(tm, tp, tc, d),
                       functionals=lambda tm, tc: H.level_functionals(tm, tc, d),
                       diagnostics=diagnostics,
                       data={"rho": problem.rho0, "u": None},
                       guess=trivial_guess(problem),
                       parameters=dict(d.parameters),
                       depends=None if coupled is None else H.row_dependencies(theta, coupled),
                       quadratic=quadratic,
                       mirrored=H.mirrored(d),
                       forward_split=forward_split(problem, theta),
                       midpoint_coupling=midpoint_coupling(problem, theta, coupled),
                       constant_coupling=(H.coupling_affine(d.G0, d.coupling)
                                          and not getattr(d.H, "uses_rho", False)))


def trivial_guess(problem) -> dict:
    """ρⁿ = ρ_0 and uⁿ = Φ (interpolated) on every level."""
    V = problem.space
    phi = dolfinx.fem.Function(V)
    phi.interpolate(dolfinx.fem.Expression(problem.Phi, V.element.interpolation_points()))
    return {"rho": problem.rho0, "u": phi}


def forward_split(problem, theta: float) -> ForwardSplit | None:
    """The FP rows' B_n = αP_n + E (θ-scheme, 0 < θ < 1) — unless exits or periodic sides
    replace rows of the FP step, after which it no longer holds."""
    if not 0.0 < theta < 1.0 or getattr(problem, "exits", None) or getattr(problem,
                                                                           "periodic", None):
        return None
    return ForwardSplit("u", H.RHO_CUR, H.RHO_NEXT, (1.0 - theta) / theta)


def midpoint_coupling(problem, theta: float, coupled: bool | None) -> bool:
    """Do the ρ–ρ blocks come from a coupling of the Crank–Nicolson midpoint means
    ρ̄ = (ρⁿ + ρⁿ⁺¹)/2 only?  Then, with C(m, n) the block of the equation of ρᵐ in column
    ρⁿ, C(n+1, n) = C(n, n+1) and C(n, n) = C(n, n−1) + C(n, n+1) (C(N, N) = C(N, N−1)): each
    is ¼τ∫c'(ρ̄)·· over the interval they share (the KKT operator stores one block per
    interval).  Not with an H that depends on ρ (its ρ–ρ terms), exits or periodic sides (their
    constraints rewrite rows)."""
    return (theta == 0.5 and bool(coupled) and getattr(problem, "hamiltonian", None) is None
            and not getattr(problem, "exits", None) and not getattr(problem, "periodic", None))


def populations(problem) -> Formulation:
    """The K-population Lagrangian (forms/populations.py) on K-valued level fields; the
    HJB–FP layout, guess ρⁿ = ρ_0, uⁿ = Φ, with ∫ρ_k per level and population
    (``mass:k``), the total as ``mass``, and ``mass_error`` = max_k,n |∫ρ_kⁿ − m_k|."""
    from ..forms import populations as P
    d = problem.step_data()
    theta = d.theta
    coupled, quadratic = P.coupling_shape(d)
    diagnostics = dict(HJB_DIAGNOSTICS)
    diagnostics.update({f"mass:{k}": ("list", ((f"mass:{k}", every),)) for k in range(d.K)})
    names, masses = list(problem.names), list(problem.masses)

    def finish(st, out):
        per = [out.pop(f"mass:{k}") for k in range(len(names))]
        errs = [max(abs(m - m0) for m in ms) for ms, m0 in zip(per, masses)]
        out["mass_error"] = max(errs)
        out["populations"] = {"names": names, "mass0": masses, "mass": per,
                              "mass_error": errs,
                              "min_rho": [st.comm.allreduce(
                                  min((float(f.x.array[:st.nl][k::len(names)].min())
                                       if st.nl else np.inf) for f in st.rho), op=MPI.MIN)
                                  for k in range(len(names))]}
        return out
    return Formulation(build=lambda tm, tp, tc: P.level_residuals(tm, tp, tc, d),
                       functionals=lambda tm, tc: P.level_functionals(tm, tc, d),
                       diagnostics=diagnostics, finish=finish,
                       data={"rho": problem.rho0, "u": None},
                       guess=trivial_guess(problem),
                       parameters=dict(d.parameters),
                       depends=None if coupled is None else H.row_dependencies(theta, coupled),
                       quadratic=quadratic, mirrored=True,
                       forward_split=forward_split(problem, theta))


def jacobian_blocks(res: dict, tm: dict, depends: dict | None = None) -> dict:
    """{(row, template): ∂F_row/∂template}, derivatives expanded, for the templates each row
    depends on (``depends``: declared; None: every template), vanishing ones dropped.  The
    rows ``res`` should be expanded already (each block is then one differentiation pass)."""
    dtrial = ufl.TrialFunction(next(iter(tm.values())).function_space)
    out = {}
    for row, F in res.items():
        for col in (depends[row] if depends is not None else tm):
            a = H.nonzero(ufl.derivative(F, tm[col], dtrial))
            if a is not None:
                out[(row, col)] = a
    return out


def symbolic_quadratic(jac_ufl: dict, tm: dict) -> bool:
    """Is every Jacobian block affine in the templates?  (No derivative of a block with
    respect to a template depends on a template.)  The generic check behind the declared
    ``Formulation.quadratic``, used by the tests."""
    templates = set(tm.values())
    V = next(iter(templates)).function_space
    w = ufl.Argument(V, 2)
    for a in jac_ufl.values():
        for t in templates:
            d = H.nonzero(ufl.derivative(a, t, w))
            if d is not None and varying_inputs(d, templates):
                return False
    return True


class SpaceTime:
    """States, compiled level forms, residual and Jacobian of a space-time system."""

    def __init__(self, problem, formulation: Formulation | None = None, cache: bool = True,
                 **options):
        self.problem = p = problem
        self.formulation = fm = formulation or self.describe(problem, **options)
        self.V = V = p.space
        self.comm = p.mesh.comm
        self.N = N = p.steps
        self.nl = V.dofmap.index_map.size_local * V.dofmap.index_map_bs
        self.layout = SpaceTimeLayout(N, self.nl)
        self.nfields = self.layout.nfields
        rho_name, u_name = fm.names
        self.rho = [fm.data["rho"]] + [dolfinx.fem.Function(V, name=rho_name) for _ in range(N)]
        self.u = [dolfinx.fem.Function(V, name=u_name) for _ in range(N)]
        self.u_data = fm.data.get("u")
        self.set_guess()
        self.tm = {k: dolfinx.fem.Function(V, name=k) for k in fm.templates}
        self.t_prev = dolfinx.fem.Constant(p.mesh, 0.0)
        self.t_cur = dolfinx.fem.Constant(p.mesh, 0.0)
        self.parameters = dict(fm.parameters)
        self.constraints = None               # exits (solvers/exits.py): Dirichlet rows
        if getattr(p, "exits", None):
            from .exits import ExitConstraints
            self.constraints = ExitConstraints(self)
            self.constraints.impose()
        elif getattr(p, "periodic", None):    # solvers/periodic.py: x = Rᵀz
            from .periodic import PeriodicConstraints
            self.constraints = PeriodicConstraints(self)
            self.constraints.impose()
        self._compile(cache)
        self.A = None

    def set_guess(self):
        """States ← the formulation's initial guess (before any constraints)."""
        fm = self.formulation
        for fs, g in ((self.rho[1:], fm.guess["rho"]), (self.u, fm.guess["u"])):
            for f in fs:
                f.x.array[:] = g.x.array if hasattr(g, "x") else g

    def _compile(self, cache: bool):
        """The compiled residual rows, Jacobian blocks and functionals of the formulation, and
        the assembler that evaluates them.  A system of the structure of an earlier one takes
        that one's derived and compiled forms with its own data (:mod:`.formcache`)."""
        fm = self.formulation
        raw = fm.build(self.tm, self.t_prev, self.t_cur)
        self.func_ufl = {k: f for k, f in fm.functionals(self.tm, self.t_cur).items()
                         if f is not None}
        self._raw = raw
        self._mesh = self.problem.mesh
        varying = set(self.tm.values()) | {self.t_prev, self.t_cur}
        found = formcache.key_of(self._structure_tag(),
                                 {**{("res", k): F for k, F in raw.items()},
                                  **{("func", k): F for k, F in self.func_ufl.items()}})
        self._cache_key, self._canon = found if found is not None else (None, None)
        entry = formcache.lookup(self._cache_key) if found is not None else None
        if entry is not None:
            canon = self._canon
            self._entry = entry
            self.res = {k: entry.form(("res", k), canon, self._mesh) for k in raw}
            self.func = {k: entry.form(("func", k), canon, self._mesh) for k in self.func_ufl}
            self.row_inputs = {k: [canon[i] for i in entry.data[("row_inputs", k)]]
                               for k in raw}
        else:
            self._entry = None
            self._res_ufl = {k: ufl.algorithms.expand_derivatives(F) for k, F in raw.items()}
            self.res = {k: dolfinx.fem.form(F) for k, F in self._res_ufl.items()}
            self.row_inputs = {k: varying_inputs(F, varying)
                               for k, F in self._res_ufl.items()}
            self.func = {k: dolfinx.fem.form(f) for k, f in self.func_ufl.items()}
            if found is not None:
                self._new_entry()
        self.assembler = (CachingAssembler if cache else Assembler)(self)

    def _structure_tag(self) -> tuple:
        """What besides the forms' signatures the derived forms depend on."""
        fm = self.formulation
        depends = (None if fm.depends is None
                   else tuple(sorted((r, tuple(c)) for r, c in fm.depends.items())))
        return (type(self).__qualname__, tuple(sorted(fm.templates)), depends,
                None if fm.forward_split is None else tuple(vars(fm.forward_split).values()))

    def _canon_index(self) -> dict:
        return {t: i for i, t in enumerate(self._canon)}

    def _new_entry(self):
        """Store the cache entry of this structure with the residual rows and functionals
        (the Jacobian joins it when first derived)."""
        entry, index = formcache.Entry(), self._canon_index()
        ok = all(entry.add(("res", k), self.res[k], F, index)
                 for k, F in self._res_ufl.items())
        ok = ok and all(entry.add(("func", k), self.func[k], F, index)
                        for k, F in self.func_ufl.items())
        ok = ok and all(t in index for ts in self.row_inputs.values() for t in ts)
        if not ok:
            self._cache_key = None
            return
        for k, ts in self.row_inputs.items():
            entry.data[("row_inputs", k)] = [index[t] for t in ts]
        formcache.store(self._cache_key, entry)
        self._entry = entry

    JACOBIAN = ("jac_ufl", "jac", "block_inputs", "constant_block", "split", "_res_ufl")

    def __getattr__(self, name):
        """The Jacobian blocks (``JACOBIAN``) are derived and compiled when first asked for:
        a system used only for its residual and diagnostics (the Cole–Hopf sweeps' J and
        value identity) never pays for them.  A system built from the form cache derives
        UFL (``jac_ufl``, ``_res_ufl``) only if asked (tests)."""
        d = self.__dict__
        if name == "_res_ufl" and "_raw" in d:
            d["_res_ufl"] = {k: ufl.algorithms.expand_derivatives(F)
                             for k, F in self._raw.items()}
            return d["_res_ufl"]
        if name in SpaceTime.JACOBIAN and "_raw" in d:
            if "jac" not in d:
                self._compile_jacobian()
            if name == "jac_ufl" and name not in d:      # built from the cache
                d["jac_ufl"] = jacobian_blocks(self._res_ufl, self.tm,
                                               self.formulation.depends)
            return d[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _compile_jacobian(self):
        fm = self.formulation
        entry = self.__dict__.get("_entry")
        if entry is not None and "jac_keys" in entry.data:
            canon, mesh = self._canon, self._mesh
            self.jac = {k: entry.form(("jac", k), canon, mesh) for k in entry.data["jac_keys"]}
            self.block_inputs = {k: [canon[i] for i in entry.data[("block_inputs", k)]]
                                 for k in self.jac}
            self.constant_block = {k: not inputs for k, inputs in self.block_inputs.items()}
            split = entry.data.get("split")
            self.split = (None if split is None
                          else (fm.forward_split, entry.form("split", canon, mesh)))
            return
        self.jac_ufl = jacobian_blocks(self._res_ufl, self.tm, fm.depends)
        self.jac = {k: dolfinx.fem.form(a) for k, a in self.jac_ufl.items()}
        varying = set(self.tm.values()) | {self.t_prev, self.t_cur}
        self.block_inputs = {k: varying_inputs(a, varying) for k, a in self.jac_ufl.items()}
        self.constant_block = {k: not inputs for k, inputs in self.block_inputs.items()}
        self.split = self._split_forms(fm.forward_split)
        self._store_jacobian()

    def _store_jacobian(self):
        """Add the Jacobian to the cache entry of this structure."""
        entry = self.__dict__.get("_entry")
        if entry is None or "jac_keys" in entry.data:
            return
        index = self._canon_index()
        ok = all(entry.add(("jac", k), self.jac[k], a, index) for k, a in self.jac_ufl.items())
        ok = ok and all(t in index for ts in self.block_inputs.values() for t in ts)
        if self.split is not None:
            ok = ok and entry.add("split", self.split[1], self._split_ufl, index)
        if not ok:
            return
        entry.data["jac_keys"] = list(self.jac)
        for k, ts in self.block_inputs.items():
            entry.data[("block_inputs", k)] = [index[t] for t in ts]
        entry.data["split"] = None if self.split is None else True

    def derived(self, name, derive):
        """(form or None, its inputs) of a form derived from this system's by ``derive()`` →
        (UFL form or None, list of its terminals), through the form cache."""
        entry = self.__dict__.get("_entry")
        if entry is not None and name in entry.kernels and name in entry.data:
            canon = self._canon
            return entry.form(name, canon, self._mesh), [canon[i] for i in entry.data[name]]
        a, inputs = derive()
        form = None if a is None else dolfinx.fem.form(a)
        if entry is not None:
            index = self._canon_index()
            if all(t in index for t in inputs) and entry.add(name, form, a, index):
                entry.data[name] = [index[t] for t in inputs]
        return form, inputs

    @classmethod
    def describe(cls, problem, **options) -> Formulation:
        """The formulation of this class (HJB–FP); subclasses override only this."""
        return hjb_fp(problem, **options)

    @property
    def quadratic(self) -> bool:
        return self.formulation.quadratic

    def _split_forms(self, split: ForwardSplit | None):
        """(split, E form) of the declared forward split, E = ∂F/∂prev − α∂F/∂next."""
        if split is None:
            return None
        keys = ((split.row, split.prev), (split.row, split.next))
        if not all(k in self.jac_ufl for k in keys):
            return None
        E = self._split_ufl = self.jac_ufl[keys[0]] - split.alpha * self.jac_ufl[keys[1]]
        return split, dolfinx.fem.form(E)

    # -- parameters ----------------------------------------------------------------------
    def set_parameter(self, name: str, value: float):
        """Set a declared parameter (a Constant of the forms) and drop everything the
        assembler evaluated with its old value."""
        c = self.parameters[name]
        if float(c.value) != float(value):
            c.value = value
            self.assembler.invalidate()

    def parameter(self, name: str) -> float:
        return float(self.parameters[name].value)

    # -- level bookkeeping -------------------------------------------------------------
    def _index(self, name: str, k: int):
        kind, off = self.formulation.templates[name]
        return kind, k + off

    def field(self, name: str, k: int):
        """Global field index of template ``name`` at level k, or None if it is data/absent."""
        return self.layout.index(*self._index(name, k))

    def row_field(self, row: str, k: int) -> int:
        """The field whose equation row ``row`` of level k is."""
        return self.layout.index(self.formulation.rows[row][0], k)

    def rows(self, k: int):
        """Residual rows of level k."""
        return [r for r, (_, exists) in self.formulation.rows.items() if exists(k, self.N)]

    def function(self, f: int):
        """The Function of global field f."""
        kind, n = self.layout.field(f)
        return self.rho[n] if kind == FORWARD else self.u[n]

    def source(self, name: str, k: int):
        """The Function (unknown or data) of template ``name`` at level k, or None."""
        kind, n = self._index(name, k)
        if kind == FORWARD:
            return self.rho[n] if 0 <= n <= self.N else None
        if 0 <= n < self.N:
            return self.u[n]
        return self.u_data if n == self.N else None

    def load(self, k: int):
        """Copy level k's states into the templates and set the source times (the arrays
        and times of every level listed once: loads run per level, block and residual)."""
        plan = self.__dict__.get("_load_plan")
        if plan is None:
            plan = self._load_plan = {}
        step = plan.get(k)
        if step is None:
            pairs = [(t.x.array, f.x.array) for name, t in self.tm.items()
                     if (f := self.source(name, k)) is not None]
            step = plan[k] = (pairs, self.problem.source_time(k - 1),
                              self.problem.source_time(k))
        pairs, t_prev, t_cur = step
        for dst, src in pairs:
            dst[:] = src
        self.t_prev.value = t_prev
        self.t_cur.value = t_cur

    # -- global vector <-> states ------------------------------------------------------
    def create_vec(self) -> PETSc.Vec:
        v = PETSc.Vec().createMPI((self.nfields * self.nl, PETSc.DETERMINE), comm=self.comm)
        v.setUp()
        return v

    def states_to_vec(self, X: PETSc.Vec):
        a, L = X.getArray(), self.layout
        for f in range(self.nfields):
            a[L.slice(f)] = self.function(f).x.array[:self.nl]
        if hasattr(self.constraints, "to_vec"):       # periodic: z = x, slaves 0
            self.constraints.to_vec(a)

    def vec_to_states(self, X: PETSc.Vec):
        a, L = X.getArray(readonly=True), self.layout
        for f in range(self.nfields):
            self.function(f).x.array[:self.nl] = a[L.slice(f)]
        if hasattr(self.constraints, "from_vec"):     # periodic: x = Rᵀz
            self.constraints.from_vec(a)
        for f in range(self.nfields):
            self.function(f).x.scatter_forward()

    def assign(self, rho, u):
        """States ← the given ρ⁰..ρ^N (ρ⁰ is data and left alone) and u⁰..u^{N−1}."""
        for a, b in zip(self.rho[1:] + self.u, list(rho[1:]) + list(u)):
            a.x.array[:] = b.x.array

    # -- residual and Jacobian ------------------------------------------------------------
    def residual(self, X: PETSc.Vec | None, F: PETSc.Vec):
        """F(X): all rows of all levels (X = None: use the current states)."""
        if X is not None:
            self.vec_to_states(X)
        a, L = F.getArray(), self.layout
        for k in range(self.N + 1):
            self.load(k)
            for row in self.rows(k):
                s = L.slice(self.row_field(row, k))
                a[s] = self.assembler.row(row)
                if self.constraints is not None:
                    self.constraints.fix_row(row, k, a[s])

    @property
    def block_keys(self) -> dict:
        """{(r, c): (key, k)}: the Jacobian block of row field r and column field c is the form
        ``self.jac[key]`` assembled at level k, ordered by level."""
        keys = getattr(self, "_block_keys", None)
        if keys is None:
            keys = self._block_keys = {}
            for k in range(self.N + 1):
                for row in self.rows(k):
                    r = self.row_field(row, k)
                    for (rw, col) in self.jac:
                        c = self.field(col, k)
                        if rw == row and c is not None:
                            keys[(r, c)] = ((rw, col), k)
        return keys

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
            grid[r][c] = self.assembler.block(key, k)
            if self.constraints is not None:
                grid[r][c] = self.constraints.fix_block(key, grid[r][c])
        return grid

    def assemble_block(self, r: int, c: int) -> PETSc.Mat:
        """A new matrix holding block (r, c) at the current states (not kept by the system)."""
        key, k = self.block_keys[(r, c)]
        self.load(k)
        A = self.assembler.fresh(self.jac[key])
        if self.constraints is not None:
            B = self.constraints.fix_block(key, A, fresh=True)
            if B is not A:
                A.destroy()
            A = B
        return A

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
    def scalar(self, name: str) -> float:
        """The functional ``name`` at the loaded level (summed over ranks)."""
        return self.assembler.scalar(name)

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
                    if name not in self.func or not when(k, self.N):
                        continue
                    if how == "sum":
                        out[key] += self.scalar(name)
                    else:
                        out[key].append(self.scalar(name))
        exits = getattr(self.constraints, "kind", None) == "exit"
        if exits or any(k.startswith("leak:") for k in out):
            self._exit_diagnostics(out)
        else:
            out["mass_error"] = max(abs(m - 1.0) for m in out["mass"])
        out["min_rho"] = self.min_of(self.rho)
        fin = self.formulation.finish
        return fin(self, out) if fin else out

    def _exit_diagnostics(self, out: dict):
        """Mass through the exits per step and tag, the exit cost in J, and the mass balance
        max_k |∫ρ^k + exited before t_k − 1| as ``mass_error`` (solvers/exits.py)."""
        c = self.constraints if getattr(self.constraints, "kind", None) == "exit" else None
        per_step = [0.0] * self.N
        by_tag = {str(t): [] for t in (c.by_tag if c is not None else ())}
        if c is not None:
            for k in range(self.N):
                self.load(k)
                tags, total, cost = c.fluxes(self.assembler.row("u"), k)
                for t, v in tags.items():
                    by_tag[str(t)].append(v)
                per_step[k] += total
                out["J"] += cost
            for k in range(1, self.N + 1):    # the prescribed densities (Dirichlet)
                self.load(k)
                row = "rho_last" if k == self.N else "rho"
                out["J_value"] += c.value_term(self.assembler.row(row), k)
        for key in [k for k in out if k.startswith("leak:")]:     # leaky walls (Robin)
            flux = out.pop(key)
            by_tag[key[5:]] = flux
            per_step = [a + b for a, b in zip(per_step, flux)]
        gone, balance = 0.0, []
        for k in range(self.N + 1):
            balance.append(abs(out["mass"][k] + gone - 1.0))
            if k < self.N:
                gone += per_step[k]
        out["mass_error"] = max(balance)
        out["mass_exited"] = {"total": gone, "per_step": per_step, "by_tag": by_tag}

    def check_finite(self, what: str):
        bad = any(not np.all(np.isfinite(f.x.array)) for f in self.rho[1:] + self.u)
        if self.comm.allreduce(bad, op=MPI.LOR):
            raise SolverError(f"{what}: the solution contains NaN or inf (diverged)")

    def finite(self) -> bool:
        bad = any(not np.all(np.isfinite(f.x.array)) for f in self.rho[1:] + self.u)
        return not self.comm.allreduce(bad, op=MPI.LOR)

    def destroy(self):
        if hasattr(self.constraints, "destroy"):
            self.constraints.destroy()
        self.assembler.destroy()
        if self.A is not None:
            self.A.destroy()
            self.A = None
