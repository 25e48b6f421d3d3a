"""The label-blind K-class classifier (MODEL §2) as ONE per-step discrete Lagrangian in UFL.

Unknowns per layer n = 0..N-1 (τ = T/N, ε = σ²/2): class densities ρ_kⁿ ∈ P1, a shared velocity
aⁿ (vector DG0 or P1) and multipliers u_k^{n+1} ∈ P1.  The step Lagrangian is

  ℓⁿ = τ ∫ (½|aⁿ|² ρ^{n+1} + V ρ^{n+1} + G(ρ^{n+1})) + R(aⁿ)       (running cost, ρ = Σ_k ρ_k)
       − Σ_k [ ∫ (ρ_k^{n+1} − ρ_kⁿ) u_k^{n+1} + τ ∫ (ε∇ρ_k^{n+1} − ρ_k^{n+1} aⁿ)·∇u_k^{n+1} ]

(the second line: backward Euler of ∂_t ρ_k + ∇·(ρ_k a) = εΔρ_k in weak form, boundary flux
(ρa − ε∇ρ)·n = 0 natural), and the discrete Lagrangian is L = Σ_n ℓⁿ + Σ_k ∫ Φ_k ρ_k^N with
Φ_k interpolated in P1.  R(a) = τ∫(½δ|a|² + ½α|∇a|²): δ > 0 regularises the control where
ρ ≈ 0, α ≥ 0 smooths a P1 velocity (a Lipschitz network; ∇a = 0 for DG0).

Everything the solver needs is a derivative of ℓ (:class:`ClassifierForms`):

* ∂L/∂u_k^{n+1} = 0 — the forward FP step (linear in ρ_k^{n+1}); testing with 1 gives
  ∫ρ_k^{n+1} = ∫ρ_kⁿ, mass conservation to round-off.
* ∂L/∂ρ_k^m = 0 — the backward adjoint step (derivative of ℓ^{m−1} in its new density plus of
  ℓ^m in its old density, u_k^{N+1} := Φ_k):
  ∫ u_k^m w + τ∫ ε∇u_k^m·∇w − τ∫ (a^{m−1}·∇u_k^m) w = ∫ u_k^{m+1} w + τ∫ (½|a|² + V + G'(ρ^m)) w,
  backward Euler of −∂_t u_k − εΔu_k − a·∇u_k = ½|a|² + V + G'(ρ).  Its matrix is the transpose
  of the FP matrix (discrete duality; tested).
* ∂L/∂aⁿ = 0 — the optimality condition τ∫ ((ρ + δ) a + Σ_k ρ_k ∇u_k)·b + τα∫∇a:∇b = 0, i.e.
  for α = 0 the (ρ+δ)-weighted L² projection of a = −Σ_k ρ_k ∇u_k / (ρ + δ) (cell-local for
  DG0); α > 0 adds a smoothing (−αΔa, natural boundary condition).
"""
from __future__ import annotations

import dolfinx
import ufl


def control_regularisation(a, tau, delta, alpha):
    """R(a) = τ∫(½δ|a|² + ½α|∇a|²): the ρ → ρ+δ regularisation and the velocity smoothing."""
    return tau * (0.5 * delta * ufl.inner(a, a)
                  + 0.5 * alpha * ufl.inner(ufl.grad(a), ufl.grad(a))) * ufl.dx


def step_cost(rho_new, a, tau, V, G, delta, alpha):
    """τ∫(½|a|²ρ + Vρ + G(ρ)) dx + R(a) with ρ = Σ_k ρ_k (``G`` maps a UFL ρ to G(ρ))."""
    rho = sum(rho_new[1:], rho_new[0])
    return (tau * (0.5 * ufl.inner(a, a) * rho + V * rho + G(rho)) * ufl.dx
            + control_regularisation(a, tau, delta, alpha))


def fp_residual(rho_new, rho_old, a, w, tau, eps):
    """Backward Euler FP step of one class tested with w:
    ∫(ρ^{n+1} − ρⁿ) w + τ∫(ε∇ρ^{n+1} − ρ^{n+1} a)·∇w."""
    return ((rho_new - rho_old) * w
            + tau * ufl.inner(eps * ufl.grad(rho_new) - rho_new * a, ufl.grad(w))) * ufl.dx


def step_lagrangian(rho_old, rho_new, a, u, tau, eps, V, G, delta, alpha):
    """ℓⁿ = running cost of the step − Σ_k ⟨u_k, FP step of ρ_k⟩ (see the module docstring)."""
    L = step_cost(rho_new, a, tau, V, G, delta, alpha)
    for ro, rn, uk in zip(rho_old, rho_new, u):
        L = L - fp_residual(rn, ro, a, uk, tau, eps)
    return L


def _system(residual, unknown):
    """(bilinear, linear) forms of a residual that is affine in the Function ``unknown``."""
    trial = ufl.TrialFunction(unknown.function_space)
    return ufl.system(ufl.replace(residual, {unknown: trial}))


class SweepForms:
    """Density/multiplier slots and the FP/adjoint forms of ANY per-step Lagrangian
    ``lagrangian(rho_old, rho_new, u)`` of the form (running cost) − Σ_k ⟨u_k, FP step of ρ_k⟩.

    Slots: ``rho_prev[k]`` = ρ_k^{m−1}, ``rho_cur[k]`` = ρ_k^m, ``u_cur[k]`` = u_k^m,
    ``u_next[k]`` = u_k^{m+1}.  Forms: ``fp_lhs`` (shared by the classes), ``fp_rhs[k]``,
    ``adj_lhs``, ``adj_rhs[k]`` and the UFL residuals ``fp_residual_ufl``, ``adj_residual_ufl``.
    The control enters through the closure ``lagrangian`` (a velocity Function for the feedback
    network, Bθ for a dictionary network); ℓ^m depends on ρ_k^m only through ⟨u_k^{m+1}, ρ_k^m⟩,
    so the control of the following step drops out of the adjoint step.
    """

    def __init__(self, V, K, lagrangian):
        F = dolfinx.fem.Function
        self.K = K
        self.rho_prev = [F(V, name=f"rho_prev_{k}") for k in range(K)]
        self.rho_cur = [F(V, name=f"rho_{k}") for k in range(K)]
        self.u_cur = [F(V, name=f"u_{k}") for k in range(K)]
        self.u_next = [F(V, name=f"u_next_{k}") for k in range(K)]
        rho_after = [F(V) for _ in range(K)]     # slots of the following step
        self.ell = lagrangian(self.rho_prev, self.rho_cur, self.u_cur)
        ell_next = lagrangian(self.rho_cur, rho_after, self.u_next)
        w = ufl.TestFunction(V)
        # forward FP steps: -dL/du_k (the sign makes the matrix the positive FP matrix)
        self.fp_residual_ufl = [-ufl.derivative(self.ell, self.u_cur[k], w) for k in range(K)]
        fp = [_system(r, self.rho_cur[k]) for k, r in enumerate(self.fp_residual_ufl)]
        # backward adjoint steps: dL/drho_k^m = d ell^{m-1}/d rho_new + d ell^m / d rho_old
        self.adj_residual_ufl = [-ufl.derivative(self.ell + ell_next, self.rho_cur[k], w)
                                 for k in range(K)]
        adj = [_system(r, self.u_cur[k]) for k, r in enumerate(self.adj_residual_ufl)]
        form = dolfinx.fem.form
        self.fp_lhs, self.fp_rhs = form(fp[0][0]), [form(s[1]) for s in fp]
        self.adj_lhs, self.adj_rhs = form(adj[0][0]), [form(s[1]) for s in adj]
        self.fp_lhs_ufl, self.adj_lhs_ufl = fp[0][0], adj[0][0]


class ClassifierForms(SweepForms):
    """The feedback network's slots and compiled forms derived from the step Lagrangian.

    Slots (load arrays into ``.x.array`` before assembling): those of :class:`SweepForms`,
    ``a`` = a^{m−1} and ``a_ref`` (for the optimality gap).

    Compiled forms: those of :class:`SweepForms`, ``ctl_lhs``, ``ctl_rhs``, ``cost`` (τ × running
    cost), ``energy`` (τ∫½|a|²ρ), ``gap`` (τ∫(|ρ|+δ)|a − a_ref|²), ``gap_ref`` (τ∫(|ρ|+δ)|a_ref|²),
    ``identity`` (τ∫(G(ρ) − ρG'(ρ)) + R(a), the value-identity correction), and the UFL
    expression ``ctl_residual_ufl`` for tests.
    """

    def __init__(self, V, Va, K, tau, eps, Vpot, G, delta, alpha=0.0):
        self.a = dolfinx.fem.Function(Va, name="a")
        self.a_ref = dolfinx.fem.Function(Va, name="a_ref")
        args = (tau, eps, Vpot, G, delta, alpha)
        super().__init__(V, K, lambda ro, rn, u: step_lagrangian(ro, rn, self.a, u, *args))
        # optimality condition for a
        self.ctl_residual_ufl = ufl.derivative(self.ell, self.a, ufl.TestFunction(Va))
        ctl = _system(self.ctl_residual_ufl, self.a)
        form = dolfinx.fem.form
        self.ctl_lhs, self.ctl_rhs = form(ctl[0]), form(ctl[1])

        rho = sum(self.rho_cur[1:], self.rho_cur[0])
        self.cost = form(step_cost(self.rho_cur, self.a, tau, Vpot, G, delta, alpha))
        self.energy = form(tau * 0.5 * ufl.inner(self.a, self.a) * rho * ufl.dx)
        # the gap's weight |ρ| + δ: ρ + δ where the density is non-negative, and a norm where
        # a Galerkin density dips below −δ (there ρ + δ made the gap negative, which read as a
        # zero residual: "converged" while â was 1e3 times a)
        d = self.a - self.a_ref
        w = abs(rho) + delta
        self.gap = form(tau * ufl.inner(d, d) * w * ufl.dx)
        self.gap_ref = form(tau * ufl.inner(self.a_ref, self.a_ref) * w * ufl.dx)
        r = ufl.variable(rho)
        Gr = G(r)
        corr = control_regularisation(self.a, tau, delta, alpha)
        if not isinstance(Gr, (int, float)):
            corr = corr + tau * (Gr - r * ufl.diff(Gr, r)) * ufl.dx
        self.identity = form(corr)
