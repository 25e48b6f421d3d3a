"""The dictionary network (MODEL §2, E–Han–Li maximum principle) as a per-step Lagrangian.

The velocity of layer n is aⁿ = B(x) θⁿ with the dictionary B of
:func:`fem_mfc.dictionaries.columns` (written in UFL here) and θⁿ ∈ R^m a
``dolfinx.fem.Constant``.  The weight decay (λ/2)∫|θ|²dt is not a field integral; it is added
to J outside the forms (τλ/2 Σ_n |θⁿ|²).  The step Lagrangian composes the classifier's FP step:

  ℓⁿ = τ∫(V ρ^{n+1} + G(ρ^{n+1})) − Σ_k ⟨u_k^{n+1}, FP step of ρ_k with a = Bθⁿ⟩,

so (:class:`~fem_mfc.forms.classifier.SweepForms`) the forward step is the FP equation with
drift Bθ and the backward step is
  −∂_t u_k − εΔu_k − (Bθ)·∇u_k = V + G'(ρ)   (no ½|a|²: weight decay replaces it).

Gradient in θ: θⁿ enters as θⁿ + ϑ with ϑ a DG0 field of m components held at 0, and
  ∂ℓⁿ/∂ϑ (by ``ufl.derivative``, tested with DG0) = per cell τ Σ_k ∫_cell ρ_k^{n+1} Bᵀ∇u_k^{n+1};
summed over the cells it is ∂ℓⁿ/∂θⁿ, so that ∂J/∂θⁿ = τλθⁿ + Σ_cells(…) and the optimality
condition λθ + Σ_k∫ρ_k Bᵀ∇u_k = 0 of MODEL §2 reads θⁿ = θ̂ⁿ := −(1/τλ) ∂ℓⁿ/∂θⁿ.
"""
from __future__ import annotations

import dolfinx
import numpy as np
import ufl

from ..dictionaries import columns
from .classifier import SweepForms, fp_residual


def dictionary_velocity(mesh, kind: str, theta, w=None, beta=None):
    """(B, a = Bθ) as UFL on ``mesh``; ``theta`` is a UFL vector of m weights."""
    d = mesh.geometry.dim
    x = ufl.SpatialCoordinate(mesh)
    cols = columns(kind, [x[i] for i in range(d)], w, beta, tanh=ufl.tanh)
    B = ufl.as_matrix([[cols[j][i] for j in range(len(cols))] for i in range(d)])
    return B, B * theta


def step_lagrangian(rho_old, rho_new, a, u, tau, eps, V, G):
    """ℓⁿ = τ∫(Vρ + G(ρ)) at the new densities − Σ_k ⟨u_k, FP step of ρ_k with drift a⟩."""
    rho = sum(rho_new[1:], rho_new[0])
    L = tau * (V * rho + G(rho)) * ufl.dx(domain=rho_new[0].function_space.mesh)
    for ro, rn, uk in zip(rho_old, rho_new, u):
        L = L - fp_residual(rn, ro, a, uk, tau, eps)
    return L


class DictionaryForms(SweepForms):
    """Slots and compiled forms of the dictionary network.

    Besides the :class:`SweepForms` slots: ``theta`` (Constant, m) = θ^{m−1}.  Forms: those of
    :class:`SweepForms`, ``grad`` (DG0^m vector: per-cell ∂ℓ/∂θ), ``cost`` (τ∫(Vρ + G)),
    ``energy`` (τ∫½|Bθ|²ρ), ``identity`` (τ∫(G − ρG')), and the UFL ``velocity`` Bθ.
    """

    def __init__(self, V, K, tau, eps, Vpot, G, kind, m, w=None, beta=None):
        mesh = V.mesh
        C = dolfinx.fem.Constant
        self.w = C(mesh, np.asarray(w, float)) if w is not None else None
        self.beta = C(mesh, np.asarray(beta, float)) if beta is not None else None
        self.theta = C(mesh, np.zeros(m))
        self.Vtheta = dolfinx.fem.functionspace(mesh, ("DG", 0, (m,)))
        self.dtheta = dolfinx.fem.Function(self.Vtheta, name="dtheta")     # held at 0
        self.B, a = dictionary_velocity(mesh, kind, self.theta + self.dtheta, self.w, self.beta)
        self.velocity = self.B * self.theta
        super().__init__(V, K, lambda ro, rn, u: step_lagrangian(ro, rn, a, u, tau, eps, Vpot, G))
        form = dolfinx.fem.form
        self.grad = form(ufl.derivative(self.ell, self.dtheta, ufl.TestFunction(self.Vtheta)))
        rho = sum(self.rho_cur[1:], self.rho_cur[0])
        self.cost = form(tau * (Vpot * rho + G(rho)) * ufl.dx(domain=mesh))
        self.energy = form(tau * 0.5 * ufl.inner(self.velocity, self.velocity) * rho * ufl.dx)
        r = ufl.variable(rho)
        Gr = G(r)
        corr = C(mesh, 0.0) * ufl.dx(domain=mesh)
        if not isinstance(Gr, (int, float)):
            corr = corr + tau * (Gr - r * ufl.diff(Gr, r)) * ufl.dx
        self.identity = form(corr)
