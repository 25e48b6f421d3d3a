"""The space-time system of the monotone P1 scheme (``[discretisation] stabilisation =
"monotone"``; mathematics in :mod:`fem_mfc.forms.monotone`).

:class:`MonotoneSpaceTime` is a :class:`~fem_mfc.solvers.spacetime.SpaceTime` with the HJB–FP
layout, rows and structure (mirrored: the Jacobian is the Hessian of one Lagrangian), whose
rows and blocks are evaluated from nodal arrays on the stiffness graph instead of UFL forms —
the upwind Hamiltonian is a sum over mesh edges, which a cell integrand cannot express.
Everything is rank-local on owned rows with ghost values.  Backward Euler and P1 only (the
M-matrix property of a Crank–Nicolson step needs a time-step restriction; higher degrees have
no nodal M-matrix structure).
"""
from __future__ import annotations

from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import dolfinx.fem.petsc
import numpy as np
import ufl

from ..errors import ConfigError
from ..forms import hjb_fp as H
from ..forms import monotone as Mo
from .assemblers import Assembler
from .assembly import fill_owned
from .spacetime import HJB_ROWS, HJB_TEMPLATES, Formulation, SpaceTime

RHO_CUR, RHO_NEXT, U_PREV, U_CUR = H.RHO_CUR, H.RHO_NEXT, H.U_PREV, H.U_CUR


def monotone(problem) -> Formulation:
    """The monotone scheme's description: the HJB–FP layout, trivial guess ρⁿ = ρ_0, uⁿ = Φ."""
    if getattr(problem, "hamiltonian", None) is not None:
        from .sweeps import hamiltonian_refusal
        raise hamiltonian_refusal("[discretisation] stabilisation = 'monotone' (an upwind "
                                  "scheme built for the quadratic Hamiltonian)")
    if problem.degree != 1:
        raise ConfigError("discretisation.stabilisation", "degree = 1 for 'monotone' (a "
                          "nodal M-matrix scheme)", problem.degree)
    if problem.theta != 1.0:
        raise ConfigError("discretisation.stabilisation", "scheme = 'backward-euler' for "
                          "'monotone' (a Crank-Nicolson step is positive only under a "
                          "time-step restriction)", problem.scheme)
    if getattr(problem.exact, "sources", None) is not None:
        raise ConfigError("discretisation.stabilisation", "'none' for a problem with an "
                          "exact solution (its source terms do not enter the monotone "
                          "scheme)", "monotone")
    d = problem.step_data()
    V = problem.space
    phi = dolfinx.fem.Function(V)
    phi.interpolate(dolfinx.fem.Expression(problem.Phi, V.element.interpolation_points()))
    coupled, quadratic = H.coupling_shape(d.G0, d.coupling)
    return Formulation(build=None, functionals=None,
                       data={"rho": problem.rho0, "u": None},
                       guess={"rho": problem.rho0, "u": phi},
                       templates=dict(HJB_TEMPLATES), rows=dict(HJB_ROWS),
                       parameters=dict(d.parameters), mirrored=True, quadratic=False,
                       depends={"u": (RHO_CUR, RHO_NEXT, U_CUR),
                                "rho": (U_PREV, U_CUR) + ((RHO_CUR,) if coupled is not False
                                                          else ()),
                                "rho_last": (U_PREV,) + ((RHO_CUR,) if coupled is not False
                                                         else ())},
                       params={"step_data": d})


class MonotoneSpaceTime(SpaceTime):
    """The monotone scheme as a space-time system (see the module docstring)."""

    describe = staticmethod(monotone)

    def _compile(self, cache: bool):
        fm = self.formulation
        d = fm.params["step_data"]
        self.step_data = d
        self.jac_ufl = {}
        self.res = {row: None for row in fm.rows}
        self.jac = {(row, col): None for row, cols in fm.depends.items() for col in cols}
        self.constant_block = {k: k in (("u", RHO_CUR), ("rho", U_CUR)) for k in self.jac}
        self.block_inputs, self.row_inputs = {}, {}
        self.func_ufl, self.func = {}, {}
        self.split = None
        self.assembler = MonotoneAssembler(self)

    # -- diagnostics -----------------------------------------------------------------------
    def diagnostics(self) -> dict:
        """J (direct: Σ τ Σ_i [m_i(V_i ρ_i + G(ρ_i)) + ρ_i H_i(uⁿ)] + Σ m Φ ρ^N), the value
        identity J = Σ m u⁰ρ⁰ + Σ τ Σ m (G(ρ) − ρ c(ρ)), masses Σ m ρⁿ, min ρ."""
        a, g, comm, nl = self.assembler, self.assembler.graph, self.comm, self.nl
        tau = float(self.step_data.tau.value)
        J = Jv = 0.0
        mass = []
        for n in range(self.N + 1):
            mass.append(comm.allreduce(float(g.m @ self.rho[n].x.array[:nl]), op=MPI.SUM))
        for n in range(self.N):
            r = self.rho[n + 1].x.array
            cost = g.m @ (a.V[:nl] * r[:nl]) + r[:nl] @ Mo.hamiltonian(g, a._ext(self.u[n]))
            if a.coupled:
                G = a.G_nodal(r)[:nl]
                c = a.c_nodal(r)[:nl]
                cost += g.m @ G
                Jv += tau * float(g.m @ (G - r[:nl] * c))
            J += tau * float(cost)
        J += float(g.m @ (a.Phi[:nl] * self.rho[self.N].x.array[:nl]))
        Jv += float(g.m @ (self.u[0].x.array[:nl] * self.rho[0].x.array[:nl]))
        leaks = {}
        for tag, (b, _) in a.leaks.items():   # leaky walls: outflow τΣbρ^{n+1}, cost τΣγρ
            leaks[f"leak:{tag}"] = [comm.allreduce(tau * float(b @ self.rho[n + 1].x.array[:nl]),
                                                   op=MPI.SUM) for n in range(self.N)]
            J += sum(tau * float(a.leak_cost(tag, self.problem.source_time(n))
                                 @ self.rho[n + 1].x.array[:nl]) for n in range(self.N))
        out = {"J": comm.allreduce(J, op=MPI.SUM), "J_value": comm.allreduce(Jv, op=MPI.SUM),
               "mass": mass, **leaks}
        if self.constraints is not None or leaks:     # the mass through exits and leaky
            self._exit_diagnostics(out)               # walls, the exits' cost in J
        else:
            out["mass_error"] = max(abs(m - 1.0) for m in mass)
        out["min_rho"] = self.min_of(self.rho)
        return out


class MonotoneAssembler(Assembler):
    """Rows and blocks of :class:`MonotoneSpaceTime` at its loaded level, from nodal arrays on
    the stiffness graph; matrices share the pattern of the P1 stiffness matrix."""

    def __init__(self, st):
        self.st = st
        V = st.V
        u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
        from .assembly import CSRAssembler
        self.csr = CSRAssembler()
        self.form = dolfinx.fem.form(ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx)
        pat = self.csr._pattern(self.form)
        scratch = pat.csr
        scratch.set_value(0.0)
        dolfinx.fem.assemble_matrix(scratch, self.form)
        scratch.scatter_reverse()
        nl = st.nl
        indptr = np.asarray(scratch.indptr[: nl + 1], dtype=np.int64)
        cols = np.asarray(scratch.indices[: indptr[-1]], dtype=np.int64)
        K = scratch.data[: indptr[-1]].copy()
        # On several ranks the pattern's columns include dofs this rank does not ghost (cells of
        # other ranks around an owned vertex): values are read through vectors on the
        # pattern's column map (owned part = V's), filled by a forward scatter (_ext).
        self._colvecs = [dolfinx.la.vector(scratch.index_map(1)) for _ in range(2)]
        self.graph = Mo.build_graph(indptr, cols, K, _owned_vector(dolfinx.fem.form(v * ufl.dx),
                                                                   V))
        self.nnz_local = scratch.data.size
        self.pattern = pat
        p = st.problem
        pts = V.element.interpolation_points()
        self.V = _interp(p.V, V, pts)
        self.Phi = _interp(p.Phi, V, pts)
        d = st.step_data
        self.coupled = d.G is not None and H.coupling_shape(d.G0, d.coupling)[0] is not False
        self._r = dolfinx.fem.Function(V)
        self._out = dolfinx.fem.Function(V)
        self._exprs = {}
        if self.coupled:
            rv = ufl.variable(self._r)
            c = H.coupling_value(d.G, d.coupling, rv)
            expand = ufl.algorithms.expand_derivatives
            exprs = [("G", d.G(self._r)), ("c", c), ("dc", expand(ufl.diff(c, rv)))]
            if d.coupling == "mfg":
                # c = G/ρ at the nodes where ρ = 0 (an exit's, a Dirichlet side's zeros): its
                # limits G'(0) and G''(0)/2 (0/0 made J's value identity NaN, exit 3)
                g1 = expand(ufl.diff(d.G(rv), rv))
                exprs += [("c@0", g1), ("dc@0", expand(ufl.diff(g1, rv)) / 2)]
            self._exprs = {name: dolfinx.fem.Expression(e, pts) for name, e in exprs}
        self._leaks(p, V)
        self._mats, self._stale = {}, set()
        self._vecs = {}
        self._scratch = None
        self.assemblies = 0

    def _leaks(self, p, V):
        """Leaky walls: {tag: (b = ∫_Γ κφ_i, the compiled form of γ(t) = ∫_Γ κg(t)φ_i)} on
        the owned dofs, ``leak_b`` their sum, and the time Constant of γ."""
        self.leaks, self._leak_t, self._leak_memo = {}, None, {}
        self.leak_b = np.zeros(self.st.nl)
        if not p.robins:
            return
        v = ufl.TestFunction(V)
        self._leak_t = dolfinx.fem.Constant(p.mesh, 0.0)
        for tag, ds, kappa, g in p.robin_terms():
            b = _owned_vector(dolfinx.fem.form(kappa * v * ds), V)
            cost = g(self._leak_t)            # a free wall (g = 0) has no cost form
            self.leaks[tag] = (b, None if H._zero(cost) else
                               dolfinx.fem.form(kappa * cost * v * ds))
            self.leak_b += b

    def leak_cost(self, tag, t: float) -> np.ndarray:
        """γ(t) of the leaky wall ``tag`` (owned dofs; t a step's source time)."""
        key = (tag, float(t))
        if key not in self._leak_memo:
            self._leak_t.value = t
            form = self.leaks[tag][1]
            self._leak_memo[key] = (np.zeros(self.st.nl) if form is None
                                    else _owned_vector(form, self.st.V))
        return self._leak_memo[key]

    # -- nodal values ------------------------------------------------------------------------
    def _nodal(self, name: str, rho: np.ndarray) -> np.ndarray:
        self._r.x.array[:] = rho
        self._out.interpolate(self._exprs[name])
        out = self._out.x.array.copy()
        if name + "@0" in self._exprs:
            self._out.interpolate(self._exprs[name + "@0"])
            zero = rho == 0
            out[zero] = self._out.x.array[zero]
        return out

    def G_nodal(self, rho):
        return self._nodal("G", rho)

    def c_nodal(self, rho):
        return self._nodal("c", rho)

    def _params(self):
        d = self.st.step_data
        return float(d.tau.value), float(d.eps.value)

    def _ext(self, f, slot: int = 0) -> np.ndarray:
        """Values of the Function f on the pattern's columns (owned + its ghosts)."""
        if self.st.comm.size == 1:
            return f.x.array
        v, nl = self._colvecs[slot], self.st.nl
        v.array[:nl] = f.x.array[:nl]
        v.scatter_forward()
        return v.array

    # -- rows ----------------------------------------------------------------------------------
    def row(self, row: str) -> np.ndarray:
        """The owned residual of ``row`` at the loaded level (templates of the system)."""
        tm, g, nl = self.st.tm, self.graph, self.st.nl
        tau, eps = self._params()
        m = g.m
        if row == "u":                        # FP step k → k+1
            rc = tm[RHO_CUR].x.array
            rn, uc = self._ext(tm[RHO_NEXT], 0), self._ext(tm[U_CUR], 1)
            X = eps * Mo.laplacian(g, rn) + Mo.transport(g, uc, rn) + self.leak_b * rn[:nl]
            return -m * (rn[:nl] - rc[:nl]) - tau * X
        rc, up = tm[RHO_CUR].x.array, self._ext(tm[U_PREV], 0)
        hjb = (m * self.V[:nl] - Mo.hamiltonian(g, up) - eps * Mo.laplacian(g, up))
        if self.coupled:
            hjb = hjb + m * self.c_nodal(rc)[:nl]
        if self.leaks:                        # the Robin condition of step k−1 → k
            t = float(self.st.t_prev.value)
            hjb = hjb - self.leak_b * up[:nl] + sum(self.leak_cost(tag, t)
                                                    for tag in self.leaks)
        nxt = self.Phi if row == "rho_last" else tm[U_CUR].x.array
        return tau * hjb - m * up[:nl] + m * nxt[:nl]

    # -- blocks --------------------------------------------------------------------------------
    def _values(self, key) -> np.ndarray:
        """Entries of block ``key`` on the owned rows of the pattern."""
        tm, g = self.st.tm, self.graph
        tau, eps = self._params()
        def diag(d):
            return _diagonal(g, d)
        row, col = key
        if key == ("u", RHO_CUR):             # ∂FP/∂ρ^k = M
            return diag(g.m)
        if key == ("u", RHO_NEXT):            # P = −M − τX(u^k)
            vals = -tau * Mo.fp_operator(g, self._ext(tm[U_CUR]), eps)
            vals[g.diag] -= g.m + tau * self.leak_b
            return vals
        if key == ("u", U_CUR):               # A = −τ ∂(Bᵀ(u)ρ^{k+1})/∂u
            return -tau * Mo.transport_hessian(g, self._ext(tm[U_CUR], 0),
                                               self._ext(tm[RHO_NEXT], 1))
        if key == ("rho", U_CUR):             # +M
            return diag(g.m)
        if col == U_PREV:                     # the P of u^{k−1}; the block is its transpose
            vals = -tau * Mo.fp_operator(g, self._ext(tm[U_PREV]), eps)
            vals[g.diag] -= g.m + tau * self.leak_b
            return vals
        if col == RHO_CUR:                    # τ m c'(ρ^k)
            return diag(tau * g.m * self._nodal("dc", tm[RHO_CUR].x.array)[: self.st.nl])
        raise KeyError(key)

    def block(self, key, k: int) -> PETSc.Mat:
        mkey = key if self.st.constant_block[key] else (key, k)
        A = self._mats.get(mkey)
        if A is not None and self.st.constant_block[key] and mkey not in self._stale:
            return A
        self._stale.discard(mkey)
        if key[1] == U_PREV:                  # −M − τ(εK̃ + B(u^{k−1})) = P(u^{k−1})ᵀ
            if self._scratch is None:
                self._scratch = self.csr.create(self.form)
            self._fill(self._scratch, self._values(key))
            if A is None:
                A = self._mats[mkey] = self._scratch.transpose(PETSc.Mat())
            else:
                self._scratch.setTransposePrecursor(A)
                self._scratch.transpose(A)
        else:
            if A is None:
                A = self._mats[mkey] = self.csr.create(self.form)
            self._fill(A, self._values(key))
        self.assemblies += 1
        return A

    def _fill(self, A: PETSc.Mat, owned: np.ndarray):
        fill_owned(A, self.pattern.indptr, self.pattern.cols, owned)

    def fresh(self, form):
        raise TypeError("the monotone scheme has no UFL block forms (no forward split)")

    def scalar(self, name: str) -> float:
        raise KeyError(f"the monotone scheme evaluates its functionals in diagnostics(): "
                       f"{name}")

    def invalidate(self):
        self._stale = {m for m in self._mats if m in self.st.constant_block}

    def destroy(self):
        if self._scratch is not None:
            self._scratch.destroy()
            self._scratch = None
        super().destroy()


def _interp(expr, V, pts) -> np.ndarray:
    """Nodal values of a number, a Constant or a UFL expression in x."""
    f = dolfinx.fem.Function(V)
    if isinstance(expr, (int, float)):
        f.x.array[:] = float(expr)
    elif isinstance(expr, dolfinx.fem.Constant):
        f.x.array[:] = float(expr.value)
    else:
        f.interpolate(dolfinx.fem.Expression(expr, pts))
    f.x.scatter_forward()
    return f.x.array.copy()


def _owned_vector(form, V) -> np.ndarray:
    """The owned entries of an assembled linear form (ghost contributions added)."""
    f = dolfinx.fem.Function(V)
    dolfinx.fem.assemble_vector(f.x.array, form)
    f.x.scatter_reverse(dolfinx.la.InsertMode.add)
    return f.x.array[: V.dofmap.index_map.size_local].copy()


def _diagonal(g, d: np.ndarray) -> np.ndarray:
    vals = np.zeros(g.cols.size)
    vals[g.diag] = d
    return vals


__all__ = ["MonotoneSpaceTime", "monotone"]
