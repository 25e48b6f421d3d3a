"""Edge-averaged finite elements (EAFE) for the Fokker–Planck transport of the learning problems.

Xu & Zikatanov's EAFE scheme (Math. Comp. 68, 1999) — on a Delaunay mesh the P1 form of the
Scharfetter–Gummel flux — for ∂_t ρ + ∇·(ρa) = εΔρ with a nodal (P1) velocity a:

  (M(ρ^{n+1} − ρⁿ))_i + τ (X(a)ρ^{n+1})_i = 0,
  (X(a)ρ)_i = Σ_j w_ij ε [B(−β_ij) ρ_i − B(β_ij) ρ_j],   β_ij = ½(a_i + a_j)·(x_j − x_i)/ε,

with the Bernoulli function B(s) = s/(eˢ − 1), lumped masses m_i = ∫φ_i (M = diag m) and on the
graph of the P1 stiffness matrix K the edge weights w_ij = max(−K_ij, 0) (K itself on a
Delaunay mesh; elsewhere the minimal artificial diffusion that makes every weight
non-negative, as in :mod:`fem_mfc.forms.monotone`).  Properties (tested):

* mass: the column sums of X vanish (B(−β) − B(β) = β and β_ji = −β_ij make the flux i → j
  antisymmetric), so Σ_i m_i ρ_i is conserved to round-off;
* positivity for EVERY velocity: the off-diagonal entries −w_ij ε B(β_ij) ≤ 0 and the matrix
  M + τX is column diagonally dominant — an M-matrix — so ρⁿ ≥ 0 ⇒ ρ^{n+1} ≥ 0 whatever the
  mesh Péclet number |a|h/2ε (Galerkin needs Pe ≲ 1 and even then undershoots);
* consistency: B(β) = 1 − β/2 + O(β²) gives, for small Pe, the Galerkin diffusion plus the
  central flux w_ij a·(x_j − x_i)(ρ_i + ρ_j)/2 (the finite-volume flux through the Voronoi
  face); for large Pe it tends to the upwind flux — numerical diffusion ε(β/2 coth(β/2) − 1)
  along the edges, first order in h only where the velocity is large;
* smoothness: X is C^∞ in a, so the reduced functional J(a) has a Hessian (Newton);
* duality: the adjoint (HJB) step is the transpose, (Xᵀu)_i = Σ_j w_ij ε B(−β_ij)(u_i − u_j),
  an upwind −a·∇u − εΔu that is an M-matrix as well (a discrete maximum principle for u).

:class:`EdgeGraph` holds the graph on the owned rows of the stiffness pattern (columns on the
pattern's column map: owned dofs, then ghosts) and evaluates, vectorised over the entries,
the operator, its transpose and their first and second derivatives in the velocity — what
:mod:`.reduced` needs for J, its gradient and its Hessian-vector products.
"""
from __future__ import annotations

import dolfinx
import dolfinx.fem.petsc
import numpy as np
import scipy.sparse as sp
import ufl

from ..solvers.assembly import CSRAssembler, fill_owned

_SMALL = 0.1            # |s| below which the Taylor series of B, B', B'' are used


def bernoulli(s):
    """(B(s), B'(s), B''(s)) elementwise, B(s) = s/(eˢ − 1), accurate to round-off for all s.

    For |s| ≥ 0.1 the closed forms at |s| (with q = e^{−|s|}, d = 1 − q) and the symmetries
    B(−s) = B(s) + s, B'(−s) = −1 − B'(s), B''(−s) = B''(s); below, the Bernoulli-number series
    (truncation error < 1e-17)."""
    s = np.asarray(s, dtype=float)
    x = np.abs(s)
    small = x < _SMALL
    x = np.maximum(x, _SMALL)              # the small entries are overwritten below
    d = -np.expm1(-x)                      # 1 − e^{−x}, accurate
    q = np.exp(-x)
    r = q / d
    t = r / d
    B = x * r
    B1 = r - x * t
    B2 = t * (x * (1.0 + q) / d - 2.0)
    neg = s < 0
    B += np.where(neg, x, 0.0)
    B1 = np.where(neg, -1.0 - B1, B1)
    if small.any():
        z = s[small]
        z2 = z * z
        B[small] = 1.0 - z / 2 + z2 / 12 - z2 * z2 / 720 + z2 ** 3 / 30240 - z2 ** 4 / 1209600
        B1[small] = -0.5 + z / 6 - z * z2 / 180 + z * z2 * z2 / 5040 - z * z2 ** 3 / 151200
        B2[small] = 1.0 / 6 - z2 / 60 + z2 * z2 / 1008 - z2 ** 3 / 21600
    return B, B1, B2


class EdgeGraph:
    """The P1 stiffness graph of ``V`` on the owned rows (MPI: columns on the pattern's
    column map, whose ghosts may exceed V's), lumped masses, edge vectors, ghost exchange,
    and PETSc matrices of the pattern.

    Attributes: ``nl`` owned dofs, ``ncols`` columns (owned + ghosts), ``m`` lumped masses
    (owned), ``K`` stiffness values per entry, ``io``/``jo`` row/column of the off-diagonal
    entries, ``w`` their weights max(−K, 0), ``t`` (nnz_off × gdim) the edge vectors x_j − x_i.
    """

    def __init__(self, V):
        self.V = V
        mesh = V.mesh
        self.comm = mesh.comm
        self.gdim = mesh.geometry.dim
        u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
        self.csr = CSRAssembler()
        self.form = dolfinx.fem.form(ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx)
        pat = self.pattern = self.csr._pattern(self.form)
        scratch = pat.csr
        scratch.set_value(0.0)
        dolfinx.fem.assemble_matrix(scratch, self.form)
        scratch.scatter_reverse()
        self.nl = nl = V.dofmap.index_map.size_local
        indptr = np.asarray(scratch.indptr[: nl + 1], dtype=np.int64)
        cols = np.asarray(scratch.indices[: indptr[-1]], dtype=np.int64)
        self.K = scratch.data[: indptr[-1]].copy()
        rows = np.repeat(np.arange(nl), np.diff(indptr))
        off = cols != rows
        self.diag = np.flatnonzero(~off)
        assert self.diag.size == nl, "every row of the P1 stiffness pattern has a diagonal entry"
        self.off = np.flatnonzero(off)
        self.rows, self.cols = rows, cols
        self.io, self.jo = rows[off], cols[off]
        self.w = np.maximum(-self.K[off], 0.0)
        cmap = scratch.index_map(1)
        self.ncols = cmap.size_local + cmap.num_ghosts
        self._serial = self.ncols == nl
        self._v1 = dolfinx.la.vector(cmap, 1)
        self._vd = dolfinx.la.vector(cmap, self.gdim)
        mf = dolfinx.fem.Function(V)
        dolfinx.fem.assemble_vector(mf.x.array, dolfinx.fem.form(v * ufl.dx))
        mf.x.scatter_reverse(dolfinx.la.InsertMode.add)
        self.m = mf.x.array[:nl].copy()
        self.x = V.tabulate_dof_coordinates()[:nl, : self.gdim].copy()
        X = self.ext_vec(self.x)
        self.t = X[self.jo] - X[self.io]
        # the linear maps of the edge loops as sparse matrices (scipy; a few times faster than
        # fancy indexing + bincount): β = S a/ε, to_nodes(s) = Sᵀs, row sums R, stiffness K
        d, n_off = self.gdim, self.io.size
        e = np.repeat(np.arange(n_off), 2 * d)
        c = np.concatenate([self.io[:, None] * d + np.arange(d),
                            self.jo[:, None] * d + np.arange(d)], axis=1).ravel()
        v = 0.5 * np.concatenate([self.t, self.t], axis=1).ravel()
        self._S = sp.csr_matrix((v, (e, c)), shape=(n_off, self.ncols * d))
        self._ST = self._S.T.tocsr()
        self._R = sp.csr_matrix((np.ones(n_off), (self.io, np.arange(n_off))),
                                shape=(nl, n_off))
        self._Kmat = sp.csr_matrix((self.K, cols, indptr), shape=(nl, self.ncols))

    # -- ghost exchange ------------------------------------------------------------------------
    def ext(self, owned: np.ndarray) -> np.ndarray:
        """Values of an owned scalar array on the column map (owned, then ghosts)."""
        if self._serial:
            return owned
        self._v1.array[: self.nl] = owned
        self._v1.scatter_forward()
        return self._v1.array.copy()

    def ext_vec(self, owned: np.ndarray) -> np.ndarray:
        """(ncols, gdim) values of an owned (nl, gdim) array."""
        if self._serial:
            return owned
        d = self.gdim
        self._vd.array[: self.nl * d] = owned.ravel()
        self._vd.scatter_forward()
        return self._vd.array.reshape(-1, d).copy()

    def to_nodes(self, s: np.ndarray) -> np.ndarray:
        """Σ over the edges at each owned node of s_ij t_ij/2 (both ends i and j of every
        entry; ghost ends are sent to their owners): the chain rule through
        ∂β_ij/∂a_i = ∂β_ij/∂a_j = t_ij/(2ε) for per-entry derivatives s_ij = ε ∂(·)/∂β_ij."""
        d = self.gdim
        out = (self._ST @ s).reshape(self.ncols, d)
        if self._serial:
            return out
        self._vd.array[:] = out.ravel()
        self._vd.scatter_reverse(dolfinx.la.InsertMode.add)
        return self._vd.array[: self.nl * d].reshape(-1, d).copy()

    def row_sum(self, vals: np.ndarray) -> np.ndarray:
        """Σ over each owned row of per-off-diagonal-entry values."""
        return self._R @ vals

    # -- the operator ----------------------------------------------------------------------------
    def beta(self, a_ext: np.ndarray, eps: float) -> np.ndarray:
        """β_ij = ½(a_i + a_j)·t_ij/ε per off-diagonal entry ((ncols, gdim) velocity)."""
        return (self._S @ np.ascontiguousarray(a_ext, dtype=float).reshape(-1)) / eps

    def step_values(self, B: np.ndarray, beta: np.ndarray, eps: float, tau: float) -> np.ndarray:
        """Entries of M + τX on the pattern for Bernoulli values ``B`` = B(β)."""
        vals = np.zeros(self.K.size)
        we = self.w * eps
        vals[self.off] = -tau * we * B
        vals[self.diag] = self.m + tau * self.row_sum(we * (B + beta))
        return vals

    def smoothing_values(self, diag: np.ndarray, alpha: float) -> np.ndarray:
        """Entries of diag(``diag``) + αK (K the P1 stiffness matrix)."""
        vals = alpha * self.K
        vals[self.diag] += diag
        return vals

    def apply_K(self, f_ext: np.ndarray) -> np.ndarray:
        """(K f)_i on the owned rows (f on the column map; scalar or (ncols, d))."""
        return self._Kmat @ f_ext

    def apply_X(self, B, beta, eps, r_ext):
        """(X r)_i = Σ_j w_ij ε [B(−β) r_i − B(β) r_j]."""
        return self.row_sum(self.w * eps * ((B + beta) * r_ext[self.io] - B * r_ext[self.jo]))

    def apply_XT(self, B, beta, eps, u_ext):
        """(Xᵀu)_i = Σ_j w_ij ε B(−β_ij)(u_i − u_j)."""
        return self.row_sum(self.w * eps * (B + beta) * (u_ext[self.io] - u_ext[self.jo]))

    def dX(self, B1, eps, dbeta, r_ext):
        """((∂X/∂β)[δβ] r)_i = Σ_j w_ij ε [(1 + B'(β)) r_i − B'(β) r_j] δβ_ij."""
        return self.row_sum(self.w * eps * dbeta * ((1.0 + B1) * r_ext[self.io]
                                                    - B1 * r_ext[self.jo]))

    def dXT(self, B1, eps, dbeta, u_ext):
        """((∂Xᵀ/∂β)[δβ] u)_i = Σ_j w_ij ε (1 + B'(β)) δβ_ij (u_i − u_j)."""
        return self.row_sum(self.w * eps * dbeta * (1.0 + B1) * (u_ext[self.io] - u_ext[self.jo]))

    def dS(self, B1, u_ext, r_ext) -> np.ndarray:
        """Per entry ε ∂(uᵀX r)/∂β_ij / ε = w_ij u_i [(1 + B'(β)) r_i − B'(β) r_j] (times ε this
        is the β-derivative; :meth:`to_nodes` turns Σ of these into ∂(uᵀXr)/∂a)."""
        return self.w * u_ext[self.io] * ((1.0 + B1) * r_ext[self.io] - B1 * r_ext[self.jo])

    def d2S(self, B2, dbeta, u_ext, r_ext) -> np.ndarray:
        """Per entry (∂²(uᵀXr)/∂β_ij²) δβ_ij = w_ij ε u_i B''(β)(r_i − r_j) δβ_ij, divided by ε
        (the same scaling as :meth:`dS`)."""
        return self.w * u_ext[self.io] * B2 * (r_ext[self.io] - r_ext[self.jo]) * dbeta

    # -- PETSc matrices of the pattern ---------------------------------------------------------
    def create_matrix(self):
        return self.csr.create(self.form)

    def fill(self, A, values: np.ndarray) -> None:
        """A ← the owned-row entries ``values`` (pattern order), assembled."""
        fill_owned(A, self.pattern.indptr, self.pattern.cols, values)

    def destroy(self):
        self.csr.destroy()


__all__ = ["bernoulli", "EdgeGraph"]
