"""Space-time layout of the discrete optimality system (forms/hjb_fp.py).

Unknowns: u⁰, ρ¹, u¹, ρ², …, u^{N−1}, ρ^N — 2N *fields*, field 2n = uⁿ, field 2n−1 = ρⁿ.
Each is a dolfinx Function; the global PETSc Vec has, on every rank, the concatenation of the
owned dofs of the fields in this order (the ordering of ``MatNest.convert("aij")``).

Time level k (0 ≤ k ≤ N) owns the residual rows "u" (FP step k, k < N) and "rho" (HJB step
for u^{k−1}, k ≥ 1).  Its forms are compiled once on template Functions (ρ^{k−1}, ρ^k,
ρ^{k+1}, u^{k−1}, u^k) and two time Constants; :meth:`SpaceTime.load` copies level k's data
into the templates before assembling.
"""
from __future__ import annotations

import dolfinx
import dolfinx.fem.petsc
import numpy as np
import ufl
from mpi4py import MPI
from petsc4py import PETSc

from ..errors import SolverError
from ..forms import hjb_fp as H

TEMPLATES = (H.RHO_PREV, H.RHO_CUR, H.RHO_NEXT, H.U_PREV, H.U_CUR)


class SpaceTime:
    """States, compiled level forms, residual and Jacobian of the whole space-time system."""

    def __init__(self, problem):
        self.problem = p = problem
        self.V = V = p.space
        self.comm = p.mesh.comm
        self.N = N = p.steps
        imap = V.dofmap.index_map
        self.nl = imap.size_local * V.dofmap.index_map_bs
        self.nfields = 2 * N
        # states: rho[0] = ρ_0 (data), rho[1..N], u[0..N-1]; trivial guess ρⁿ = ρ_0, uⁿ = Φ
        self.rho = [p.rho0] + [dolfinx.fem.Function(V, name="rho") for _ in range(N)]
        phi = dolfinx.fem.Function(V)
        phi.interpolate(dolfinx.fem.Expression(p.Phi, V.element.interpolation_points()))
        self.u = [dolfinx.fem.Function(V, name="u") for _ in range(N)]
        for f in self.rho[1:]:
            f.x.array[:] = p.rho0.x.array
        for f in self.u:
            f.x.array[:] = phi.x.array
        # templates and forms
        self.tm = {k: dolfinx.fem.Function(V, name=k) for k in TEMPLATES}
        self.t_prev = dolfinx.fem.Constant(p.mesh, 0.0)
        self.t_cur = dolfinx.fem.Constant(p.mesh, 0.0)
        data = p.step_data()
        ufl_forms = H.level_forms(self.tm, self.t_prev, self.t_cur, data)
        self.res = {k: dolfinx.fem.form(F) for k, F in ufl_forms["res"].items()}
        self.jac = {k: dolfinx.fem.form(a) for k, a in ufl_forms["jac"].items()}
        unknowns = set(self.tm.values())
        times = {self.t_prev, self.t_cur}
        self.constant_block = {
            k: not (set(ufl.algorithms.extract_coefficients(a)) & unknowns)
            and not (set(ufl.algorithms.analysis.extract_type(a, ufl.Constant)) & times)
            for k, a in ufl_forms["jac"].items()}
        funcs = H.level_functionals(self.tm, self.t_cur, data)
        self.func = {k: (dolfinx.fem.form(f) if f is not None else None)
                     for k, f in funcs.items()}
        self._vecs = {k: dolfinx.fem.Function(V).x for k in self.res}
        self._mats = {}
        self.A = None

    # -- level bookkeeping -------------------------------------------------------------
    def field(self, name: str, k: int):
        """Global field index of template ``name`` at level k, or None if it is data/absent."""
        N = self.N
        idx = {H.RHO_PREV: (k - 1, "rho"), H.RHO_CUR: (k, "rho"), H.RHO_NEXT: (k + 1, "rho"),
               H.U_PREV: (k - 1, "u"), H.U_CUR: (k, "u")}[name]
        n, kind = idx
        if kind == "rho":
            return 2 * n - 1 if 1 <= n <= N else None
        return 2 * n if 0 <= n <= N - 1 else None

    def row_field(self, row: str, k: int) -> int:
        return 2 * k if row == "u" else 2 * k - 1

    def rows(self, k: int):
        """Residual rows of level k."""
        out = []
        if k < self.N:
            out.append("u")
        if k >= 1:
            out.append("rho" if k < self.N else "rho_last")
        return out

    def function(self, f: int):
        """The Function of global field f."""
        return self.u[f // 2] if f % 2 == 0 else self.rho[(f + 1) // 2]

    def load(self, k: int):
        """Copy level k's states into the templates and set the source times."""
        p, N = self.p_, self.N
        src = {H.RHO_PREV: self.rho[k - 1] if k >= 1 else None, H.RHO_CUR: self.rho[k],
               H.RHO_NEXT: self.rho[k + 1] if k < N else None,
               H.U_PREV: self.u[k - 1] if k >= 1 else None, H.U_CUR: self.u[k] if k < N else None}
        for name, f in src.items():
            if f is not None:
                self.tm[name].x.array[:] = f.x.array
        self.t_prev.value = p.source_time(k - 1)
        self.t_cur.value = p.source_time(k)

    @property
    def p_(self):
        return self.problem

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

    # -- assembly ----------------------------------------------------------------------
    def assemble_row(self, row: str) -> np.ndarray:
        """Owned part of the residual vector of ``row`` at the loaded level."""
        b = self._vecs[row]
        b.array[:] = 0.0
        dolfinx.fem.assemble_vector(b.array, self.res[row])
        b.scatter_reverse(dolfinx.la.InsertMode.add)
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

        Blocks whose form involves neither unknowns nor time are assembled once and shared."""
        const = self.constant_block[key]
        mkey = key if const else (key, k)
        A = self._mats.get(mkey)
        if A is not None and const:
            return A
        if A is None:
            A = dolfinx.fem.petsc.create_matrix(self.jac[key])
            self._mats[mkey] = A
        A.zeroEntries()
        dolfinx.fem.petsc.assemble_matrix(A, self.jac[key])
        A.assemble()
        return A

    def jacobian(self, X: PETSc.Vec | None) -> PETSc.Mat:
        """The space-time Jacobian as AIJ: blocks → MatNest → convert (reusing ``self.A``)."""
        if X is not None:
            self.vec_to_states(X)
        nf = self.nfields
        blocks = [[None] * nf for _ in range(nf)]
        for k in range(self.N + 1):
            self.load(k)
            for row in self.rows(k):
                r = self.row_field(row, k)
                for (rw, col) in self.jac:
                    c = self.field(col, k)
                    if rw == row and c is not None:
                        blocks[r][c] = self.block((rw, col), k)
        nest = PETSc.Mat().createNest(blocks, comm=self.comm)
        first = self.A is None
        if first:
            self.A = PETSc.Mat()          # empty handle: MatConvert(MAT_INITIAL_MATRIX)
        nest.convert("aij", out=self.A)   # later calls: MAT_REUSE_MATRIX
        nest.destroy()
        return self.A

    # -- diagnostics -------------------------------------------------------------------
    def _scalar(self, name) -> float:
        return self.comm.allreduce(dolfinx.fem.assemble_scalar(self.func[name]), op=MPI.SUM)

    def diagnostics(self) -> dict:
        """J (direct), J (value identity), mass error, min ρ of the current states."""
        N = self.N
        J = value = 0.0
        masses = []
        for k in range(N + 1):
            self.load(k)
            masses.append(self._scalar("mass"))
            if k < N:
                J += self._scalar("cost")
                if self.func["value"] is not None:
                    value += self._scalar("value")
            if k == 0:
                value += self._scalar("u0")
            if k == N:
                J += self._scalar("terminal")
        nl = self.nl
        mins = [f.x.array[:nl].min() if nl else np.inf for f in self.rho]
        min_rho = self.comm.allreduce(min(mins), op=MPI.MIN)
        return {"J": J, "J_value": value, "mass": masses,
                "mass_error": max(abs(m - 1.0) for m in masses), "min_rho": min_rho}

    def check_finite(self, what: str):
        bad = any(not np.all(np.isfinite(f.x.array)) for f in self.rho[1:] + self.u)
        if self.comm.allreduce(bad, op=MPI.LOR):
            raise SolverError(f"{what}: the solution contains NaN or inf (diverged)")
