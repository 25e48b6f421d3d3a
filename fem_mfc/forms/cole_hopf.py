"""Cole–Hopf linearisation of the congestion-free HJB–FP system (MODEL §4).

With χ = exp(−u/2ε), Γ = ρ/χ and W = V (no congestion):
  ∂_t χ + εΔχ = (W/2ε) χ   backward, χ(T) = exp(−Φ/2ε),  ∇χ·n = 0
  ∂_t Γ − εΔΓ = −(W/2ε) Γ  forward,  Γ(0) = ρ_0/χ(0),    ∇Γ·n = 0
Both are discretised by the θ-scheme with the operator a(φ, v) = ε∫∇φ·∇v + (1/2ε)∫Wφv:
  (M + θτA) χⁿ = (M − (1−θ)τA) χ^{n+1},   (M + θτA) Γ^{n+1} = (M − (1−θ)τA) Γⁿ,
so one matrix (one factorisation) serves every step of both sweeps.
"""
import ufl


def operator(phi, v, eps, W):
    """a(φ, v) = ε∫∇φ·∇v + (1/2ε)∫Wφv."""
    return eps * ufl.inner(ufl.grad(phi), ufl.grad(v)) * ufl.dx + (0.5 / eps) * W * phi * v * ufl.dx


def step_matrices(V, tau, eps, W, theta):
    """Bilinear forms (M + θτA, M − (1−θ)τA) of one θ-step."""
    phi, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    m, a = phi * v * ufl.dx, operator(phi, v, eps, W)
    return m + theta * tau * a, m - (1.0 - theta) * tau * a
