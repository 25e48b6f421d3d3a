"""Exits: absorbing boundaries Γ_e (``[[boundary]] kind = "exit"``) of the HJB–FP system.

On an exit the density vanishes and the value is the exit cost: ρ = 0, u = g(x, t) on Γ_e
(agents leave there and pay g).  Discretely both are Dirichlet conditions on the dofs of the
tagged facets, imposed *symmetrically* on the discrete Lagrangian: the equation of u^k at an
exit dof (∂L/∂u^k_i, the FP step tested with φ_i) is replaced by the constraint ρ^{k+1}_i = 0,
the equation of ρ^k (the HJB step for u^{k−1}) by u^{k−1}_i = g_i(t), and the rows *and
columns* of the exit dofs are zeroed in every Jacobian block, with 1 on the diagonal of the
pivot blocks ∂FP/∂ρ^{k+1} and ∂HJB/∂u^{k−1}.  The states satisfy the constraints from the
start (:meth:`ExitConstraints.impose`), so Newton's corrections vanish there and zeroing the
columns changes no iterate; the KKT matrix stays symmetric and the pivot blocks stay each
other's transposes, as the solvers' declared structure (``mirrored``) needs.

The mass that leaves in step k → k+1 is the consistent boundary flux: the FP residual of the
step tested with φ_Γ = Σ_{i ∈ Γ_e} φ_i (the unconstrained rows of the exit dofs, summed).
With the interior rows zero, Σ_i F_i = F(1) = ∫ρ^k − ∫ρ^{k+1}, so ∫ρ^k + Σ_{m<k} exited_m = 1
to solver tolerance (the mass balance).  The exit cost Σ_k Σ_i g_i F_i joins J, and the
discrete value identity J = ∫u(0)ρ_0 + Σ value still holds exactly.
"""
from __future__ import annotations

from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import numpy as np
import ufl

from ..errors import ConfigError
from ..forms import hjb_fp as H

# the pivot blocks, whose exit rows become the constraints (1 on the diagonal)
PIVOTS = {("u", H.RHO_NEXT), ("rho", H.U_PREV), ("rho_last", H.U_PREV)}


def exit_dofs(problem) -> dict:
    """{tag: local dofs (owned and ghost) of the facets tagged ``tag``} for the exits."""
    return tagged_dofs(problem, [e.tag for e in problem.exits])


def tagged_dofs(problem, tags) -> dict:
    """{tag: local dofs (owned and ghost) of the facets tagged ``tag``} for ``tags``
    (collective; a ConfigError naming ``boundary.tag`` for a tag the mesh lacks)."""
    from ..mesh import require_facet_tags
    p = problem
    ft = p.facet_tags
    mesh, V = p.mesh, p.space
    fdim = mesh.topology.dim - 1
    if ft is None:
        raise ConfigError("boundary.tag", "a mesh with tagged boundary facets (gmsh physical "
                          "groups, or the sides of an interval/rectangle/box)", None)
    require_facet_tags(mesh, ft, tags)
    mesh.topology.create_connectivity(fdim, mesh.topology.dim)
    return {t: dolfinx.fem.locate_dofs_topological(V, fdim, ft.find(t)) for t in tags}


class ExitConstraints:
    """The exit dofs of a space-time system and their constraint values (module docstring)."""

    kind = "exit"

    def __init__(self, st):
        p = st.problem
        self.st = st
        self.nl = nl = st.nl
        self.by_tag = exit_dofs(p)
        self.dofs = np.unique(np.concatenate(list(self.by_tag.values())))
        self.owned = self.dofs[self.dofs < nl]
        self.owned_by_tag = {t: d[d < nl] for t, d in self.by_tag.items()}
        imap = p.space.dofmap.index_map
        self.rows = imap.local_to_global(self.owned.astype(np.int32)).astype(PETSc.IntType)
        # g at the exit dofs for u^n (time p.u_time(n)), ρ_D for ρ^k (time t_k, 0 on exits);
        # a dof on two boundaries keeps the last
        self.g = [self._values(lambda e: e.cost, p.u_time(n)) for n in range(p.steps)]
        self.rho_d = [None] + [self._values(lambda e: e.density, p.rho_time(k))
                               for k in range(1, p.steps + 1)]
        self._check_densities()

    def _check_densities(self):
        """ρ_D ≥ 0 at the dofs of every Dirichlet boundary (collective; ConfigError naming the
        tag): a negative boundary density is bad input, it ran to a failed solve (exit 3)."""
        p = self.st.problem
        for e in p.exits:
            if e.density is None:
                continue
            d = self.by_tag[e.tag]
            low = min((float(r[d].min()) for r in self.rho_d[1:] if d.size), default=np.inf)
            low = self.st.comm.allreduce(low, op=MPI.MIN)
            if low < 0:
                raise ConfigError("boundary.density", f"a density >= 0 on the Dirichlet "
                                  f"boundary tag {e.tag} (its smallest value there is "
                                  f"{low:.3g})")

    def _values(self, which, t: float) -> np.ndarray:
        p = self.st.problem
        f = dolfinx.fem.Function(p.space)
        vals = np.zeros(f.x.array.size)
        for e in p.exits:
            fn, d = which(e), self.by_tag[e.tag]
            c = 0.0 if fn is None else fn(t)
            if not isinstance(c, (int, float)) and ufl.domain.extract_unique_domain(c) is None:
                c = float(c)                  # constant at this t: "0.1*t*(1 + x1**2)" at t = 0
            if isinstance(c, (int, float)):   # is UFL's Zero, no Expression of it exists
                vals[d] = float(c)
            else:
                f.interpolate(dolfinx.fem.Expression(c, p.space.element.interpolation_points()))
                vals[d] = f.x.array[d]
        return vals

    def impose(self):
        """States ← the constraints: ρ^k = 0 (k ≥ 1) and u^n = g(t_n) at the exit dofs."""
        st, d = self.st, self.dofs
        for k, f in enumerate(st.rho[1:], start=1):
            f.x.array[d] = self.rho_d[k][d]
        for n, f in enumerate(st.u):
            f.x.array[d] = self.g[n][d]
        for f in st.rho[1:] + st.u:           # ghosts on exit facets this rank lacks
            f.x.scatter_forward()

    def fix_row(self, row: str, k: int, F: np.ndarray):
        """Replace the exit entries of the owned residual ``F`` of ``row`` at level k."""
        o, st = self.owned, self.st
        if row == "u":
            F[o] = st.rho[k + 1].x.array[o] - self.rho_d[k + 1][o]
        elif row in ("rho", "rho_last"):
            F[o] = st.u[k - 1].x.array[o] - self.g[k - 1][o]

    def fix_block(self, key, A: PETSc.Mat, fresh: bool = False) -> PETSc.Mat:
        """Zero the exit rows and columns of block ``key`` (1 on the diagonal of a pivot),
        in place; returns A."""
        A.zeroRowsColumns(self.rows, diag=1.0 if key in PIVOTS else 0.0)
        return A

    def value_term(self, R: np.ndarray, k: int) -> float:
        """Σ_i ρ^k_i R_i over the exit dofs, R the unconstrained HJB row of level k (owned):
        the part of the value identity's Σ_k ∂L/∂ρ^k[ρ^k] that the constrained rows leave
        (zero on exits, where ρ = 0; the prescribed density of a Dirichlet boundary)."""
        o = self.owned
        return self.st.comm.allreduce(float(self.rho_d[k][o] @ R[o]), op=MPI.SUM)

    def fluxes(self, F: np.ndarray, k: int) -> tuple[dict, float, float]:
        """({tag: mass leaving through it in step k → k+1}, the total (a dof on two exits
        counted once), the exit cost of the step) from the unconstrained FP residual ``F`` of
        level k (owned entries; summed over ranks)."""
        comm = self.st.comm
        out = {t: comm.allreduce(float(F[d].sum()), op=MPI.SUM)
               for t, d in self.owned_by_tag.items()}
        o = self.owned
        total = comm.allreduce(float(F[o].sum()), op=MPI.SUM)
        cost = comm.allreduce(float(self.g[k][o] @ F[o]), op=MPI.SUM)
        return out, total, cost


__all__ = ["ExitConstraints", "exit_dofs", "tagged_dofs", "PIVOTS"]
