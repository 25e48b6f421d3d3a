"""Weak form of the uncontrolled Fokker–Planck (heat) step — the platform's smoke problem.

  ∂_t ρ = εΔρ in Ω,  ε∇ρ·n = 0 on ∂Ω   (MODEL §1 with a = 0)

θ-scheme, θ = 1 (backward Euler) or ½ (Crank–Nicolson):
  ∫ ρ^{n+1} v + θτε ∫∇ρ^{n+1}·∇v = ∫ ρⁿ v − (1−θ)τε ∫∇ρⁿ·∇v   for all v.
Testing with v = 1 shows ∫ρ^{n+1} = ∫ρⁿ: mass is conserved exactly.
"""
import ufl

THETA = {"backward-euler": 1.0, "crank-nicolson": 0.5}


def heat_step(rho_old, tau, eps, theta):
    """Bilinear and linear forms (a, L) of one θ-step for ρ^{n+1} given ρⁿ = ``rho_old``."""
    V = rho_old.function_space
    rho, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    a = rho * v * ufl.dx + theta * tau * eps * ufl.inner(ufl.grad(rho), ufl.grad(v)) * ufl.dx
    L = rho_old * v * ufl.dx
    if theta != 1:
        L -= (1 - theta) * tau * eps * ufl.inner(ufl.grad(rho_old), ufl.grad(v)) * ufl.dx
    return a, L
