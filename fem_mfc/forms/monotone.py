"""A positivity-preserving (monotone) P1 discretisation of the HJB–FP Lagrangian.

The Galerkin Lagrangian of :mod:`fem_mfc.forms.hjb_fp` gives an FP operator whose matrix is
not an M-matrix on coarse meshes (drift-dominated cells): densities go negative (−0.12 on a
15 × 15 mesh).  This scheme keeps the structure — one discrete Lagrangian, FP = adjoint of the
linearised HJB, exact mass conservation — and makes every backward-Euler FP step an
M-matrix, so ρ ≥ 0:

  L = Σ_{n=0}^{N−1} [ τ Σ_i m_i (V_i ρ_i^{n+1} + G(ρ_i^{n+1})) − τ Σ_i ρ_i^{n+1} H_i(uⁿ)
                      − Σ_i m_i u_iⁿ (ρ_i^{n+1} − ρ_iⁿ) − τ ε uⁿ·K̃ ρ^{n+1} ] + Σ_i m_i Φ_i ρ_i^N,

with lumped masses m_i = ∫φ_i, nodal data V_i, Φ_i, and on the graph of the P1 stiffness
matrix K the edge weights w_ij = max(−K_ij, 0):

* K̃ = the graph Laplacian with weights w: K̃ = K where the mesh is Delaunay (K_ij ≤ 0 off
  the diagonal) and otherwise the minimal artificial diffusion that removes the positive
  off-diagonal entries;
* H_i(u) = ½ Σ_j w_ij ((u_i − u_j)⁺)², an upwind (monotone) Hamiltonian: non-increasing in
  every neighbour u_j, and Σ_i H_i(u) = ½ uᵀK̃u exactly when all the differences are counted
  once at their upper node — H_i/m_i ≈ ½|∇u(x_i)|² (exact for linear u on a structured
  right-angled mesh).

A leaky wall Γ (``[[boundary]] kind = "robin"``: outward flux κρ paying g) adds
τ Σ_i ρ_i^{n+1} (γ_i(t_{n+1}) − b_i u_iⁿ) with b_i = ∫_Γ κφ_i and γ_i(t) = ∫_Γ κg(t)φ_i, the
Galerkin term τ∫_Γ κρ(g − u) with ρ and u lumped: a positive diagonal τb in the FP step
(outflow τΣ b ρ^{n+1}), the Robin condition in the HJB step.

∂L/∂uⁿ = 0 is the FP step −M(ρ^{n+1} − ρⁿ) − τ X(uⁿ) ρ^{n+1} = 0 with X = εK̃ + Bᵀ,
Bᵀ_kk = Σ_j w_kj (u_k − u_j)⁺, Bᵀ_kj = −w_kj (u_j − u_k)⁺: non-positive off the diagonal and
zero column sums, so M + τX is an M-matrix (column diagonally dominant) and ρ^{n+1} ≥ 0
whenever ρⁿ ≥ 0; Σ_k of the FP row is −Σ m Δρ: mass is conserved exactly.  ∂L/∂ρ^{n+1} = 0
is the HJB step m(u^{n+1} − uⁿ)/τ − εK̃uⁿ − H(uⁿ) + m(V + c(ρ^{n+1})) = 0 (c = G' or G/ρ),
monotone in u.  First order in h (upwinding) and τ (backward Euler).

The functions below evaluate the pieces on the owned rows of the stiffness pattern
(:class:`Graph`), vectorised over the entries; the space-time system
:class:`fem_mfc.solvers.monotone.MonotoneSpaceTime` assembles residuals and Jacobian blocks
from them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Graph:
    """Owned rows of the P1 stiffness pattern with local column indices (owned + ghost):
    ``indptr`` (n_owned + 1), ``cols``/``rows`` per entry, ``off`` (entries off the diagonal),
    ``diag`` (the diagonal entry of each row), ``w`` (edge weights, 0 on the diagonal) and the
    lumped masses ``m`` (owned)."""

    indptr: np.ndarray
    cols: np.ndarray
    rows: np.ndarray
    off: np.ndarray
    diag: np.ndarray
    w: np.ndarray
    m: np.ndarray

    @property
    def n(self) -> int:
        return self.indptr.size - 1

    def row_sum(self, values: np.ndarray) -> np.ndarray:
        """Σ over each owned row of per-entry ``values``."""
        return np.bincount(self.rows, weights=values, minlength=self.n)


def build_graph(indptr: np.ndarray, cols: np.ndarray, K: np.ndarray, m: np.ndarray) -> Graph:
    """The graph of the stiffness values K on the owned-row CSR structure (indptr, cols)."""
    n = indptr.size - 1
    rows = np.repeat(np.arange(n), np.diff(indptr))
    off = cols != rows
    diag = np.flatnonzero(~off)
    assert diag.size == n, "every row of the P1 stiffness pattern has a diagonal entry"
    w = np.where(off, np.maximum(-K, 0.0), 0.0)
    return Graph(indptr=indptr, cols=cols, rows=rows, off=off, diag=diag, w=w, m=m)


def hamiltonian(g: Graph, u: np.ndarray) -> np.ndarray:
    """H_i(u) = ½ Σ_j w_ij ((u_i − u_j)⁺)² on the owned nodes (u: owned + ghost values)."""
    d = np.maximum(u[g.rows] - u[g.cols], 0.0)
    return g.row_sum(0.5 * g.w * d * d)


def laplacian(g: Graph, u: np.ndarray) -> np.ndarray:
    """(K̃u)_i = Σ_j w_ij (u_i − u_j)."""
    return g.row_sum(g.w * (u[g.rows] - u[g.cols]))


def transport(g: Graph, u: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """(Bᵀ(u)ρ)_k = Σ_i ρ_i ∂H_i/∂u_k = Σ_j w_kj [ρ_k (u_k − u_j)⁺ − ρ_j (u_j − u_k)⁺]."""
    d = u[g.rows] - u[g.cols]
    return g.row_sum(g.w * (rho[g.rows] * np.maximum(d, 0.0) - rho[g.cols]
                            * np.maximum(-d, 0.0)))


def fp_operator(g: Graph, u: np.ndarray, eps: float) -> np.ndarray:
    """Entries of X(u) = εK̃ + Bᵀ(u) on the pattern (off the diagonal: −w(ε + (u_j − u_k)⁺),
    non-positive; on it: the negative sum of its column's off-diagonal entries)."""
    d = u[g.rows] - u[g.cols]
    vals = np.where(g.off, -g.w * (eps + np.maximum(-d, 0.0)), 0.0)
    vals[g.diag] = g.row_sum(g.w * (eps + np.maximum(d, 0.0)))
    return vals


def transport_hessian(g: Graph, u: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """Entries of ∂(Bᵀ(u)ρ)/∂u on the pattern: the graph Laplacian with weights
    w_kj ρ_up, ρ_up = ρ at the upper end of the edge (one-sided at ties)."""
    d = u[g.rows] - u[g.cols]
    up = np.where(d > 0, rho[g.rows], np.where(d < 0, rho[g.cols], 0.0))
    wk = g.w * up
    vals = np.where(g.off, -wk, 0.0)
    vals[g.diag] = g.row_sum(wk)
    return vals


__all__ = ["Graph", "build_graph", "hamiltonian", "laplacian", "transport", "fp_operator",
           "transport_hessian"]
