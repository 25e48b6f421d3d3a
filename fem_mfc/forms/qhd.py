"""Quantum-hydrodynamic (QHD) form (ρ, S) of the optimality system (MODEL §3, §5).

Continuous system in the unified signature (natural boundary conditions ∇S·n = ∇ρ·n = 0):

  continuity:  ∂_tρ + ∇·(ρ∇S) = 0
  Bernoulli:   ∂_tS + ½|∇S|² + U(x, ρ) + κ_Q Δ√ρ/√ρ = 0

  control (imaginary time): U = −(V + c(ρ)), κ_Q = +σ⁴/2 = 2ε²,  ρ(0) = ρ_0,
                            S(T) = −Φ − ε log ρ(T)   (two-point problem, S = −u − ε log ρ);
  quantum (real time):      U = +(V + c(ρ)), κ_Q = −ħ²/2,        ρ(0) = ρ_0, S(0) = S_0,
with c(ρ) = G'(ρ) ("mftc") or G(ρ)/ρ ("mfg").  The system is canonical, ∂_tρ = δH/δS,
∂_tS = −δH/δρ, for the Hamiltonian

  H(ρ, S) = ∫ ½ρ|∇S|² + s_U (Vρ + G(ρ)) − 2κ_Q F(ρ),   F(ρ) = ⅛∫|∇ρ|²/ρ = ½∫|∇√ρ|²,

s_U = −1 (control) / +1 (quantum).  The quantum potential enters through the Fisher
information F: δF/δρ = −½Δ√ρ/√ρ, so −2κ_Q δF/δρ = κ_Q Δ√ρ/√ρ, and its weak form
∫∇√ρ·∇(q/(2√ρ)) needs no third derivatives.  The mixed Bohm variable Q_κ = κ_QΔR/R, R = √ρ,
(∫Q_κ R q + κ_Q∫∇R·∇q = 0; for the control signature Q = 2ε²Δ√ρ/√ρ) is available for output.

Time discretisation.
* control: the discrete action (symplectic Euler / staggered midpoint, θ = 1 or ½)
      A = B(ρ^N) + Σ_{n=0}^{N−1} [∫Sⁿ(ρ^{n+1} − ρⁿ) − τH(ρ̄ⁿ, Sⁿ) + τ∫_∂(b_C Sⁿ − b_B ρ̄ⁿ)],
      ρ̄ = θρ^{n+1} + (1 − θ)ρⁿ,  B(ρ) = ∫Φρ + ε∫ρ(log ρ − 1)  (−δB/δρ = S(T) = −Φ − ε log ρ(T)).
  ∂A/∂Sⁿ = 0 is the continuity step (test function 1 ⇒ exact mass conservation), ∂A/∂ρⁿ = 0
  the Bernoulli step; the space-time solver takes the Jacobians as ``ufl.derivative`` of
  these rows.  Same unknown layout as the HJB–FP Lagrangian (S in the slots of u).
  b_C, b_B are the boundary data of an exact solution (0 otherwise).  The natural conditions
  are ρ∇S·n = 0 (continuity) and ∇ρ·n = 0 (Bernoulli: ∂/∂ρ of 2τκ_Q F leaves
  τ(κ_Q/2)∫_∂ ∇log ρ·n q); b_C = ρ∇S·n and b_B = (κ_Q/2)∇log ρ·n = ε²∇log ρ·n make the
  exact solution consistent on a bounded box.
* quantum: the discrete-gradient (energy-conserving) midpoint step
      ∫(ρ^{n+1} − ρⁿ)s = τ ∂̄_S H[s],   ∫(S^{n+1} − Sⁿ)q = −τ ∂̄_ρ H[q],
      ∂̄_S H[s] = ∫ρ̄∇S̄·∇s,  ∂̄_ρ H[q] = ∫[¼(|∇Sⁿ|² + |∇S^{n+1}|²) + s_U(V + c̄)]q
                                           − κ_Q∫∇R̄·∇(q/R̄),
  ρ̄, S̄ means, R̄ = (√ρⁿ + √ρ^{n+1})/2, c̄ = ∫₀¹c(ρⁿ + s(ρ^{n+1} − ρⁿ))ds (Gauss–Legendre).
  Since ½|∇R₁|² − ½|∇R₀|² = ∇R̄·∇((ρ₁ − ρ₀)/(2R̄)) pointwise, H(z^{n+1}) = H(zⁿ) holds exactly
  (for polynomial G with "mftc") when residual and energy share one quadrature rule ``dxq``;
  mass is conserved exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import dolfinx
import ufl

from .hjb_fp import (
    RHO_CUR,
    RHO_NEXT,
    RHO_PREV,
    U_CUR,
    U_PREV,
    coupling_residual,
    coupling_value,
    rho_bar,
)
from .nls import averaged_nonlinearity

SIGNATURES = ("control", "quantum")
# S occupies the slots of u in the space-time layout of forms/hjb_fp.py
S_PREV, S_CUR = U_PREV, U_CUR


@dataclass
class QHDData:
    """Data of the QHD system in one signature (UFL expressions in x; G: ρ ↦ UFL or None)."""

    signature: str
    tau: object                 # τ, κ_Q, ε: dolfinx Constants (one compiled form per run shape)
    kappa_Q: object
    V: object
    theta: float = 1.0
    eps: object = 0.0           # ε of the control terminal condition S(T) = −Φ − ε log ρ(T)
    Phi: object = 0.0
    G: Optional[Callable] = None
    coupling: str = "mftc"
    quadrature_degree: Optional[int] = None
    sources: Optional[Callable] = None    # t ↦ {"b_C": …, "b_B": …} of an exact solution

    def __post_init__(self):
        if self.signature not in SIGNATURES:
            raise ValueError(f"signature must be one of {SIGNATURES}, got {self.signature!r}")

    @property
    def s_U(self) -> float:
        """Sign of the potential: U = s_U (V + c(ρ))."""
        return -1.0 if self.signature == "control" else 1.0

    @property
    def dxq(self):
        """The measure shared by residuals and energies (exact discrete energy identity)."""
        if self.quadrature_degree is None:
            return ufl.dx
        return ufl.dx(metadata={"quadrature_degree": self.quadrature_degree})

    @property
    def dx(self):
        """The measure of the HJB–FP terms shared with forms/hjb_fp.py (the coupling
        residual): ``dxq``, one rule for residuals and energies."""
        return self.dxq

    @classmethod
    def control(cls, problem, quadrature_degree=None) -> "QHDData":
        """Control signature of a :class:`fem_mfc.problem.ControlProblem`: κ_Q = σ⁴/2; the
        boundary data of its exact solution, if that has ``qhd_sources``."""
        tau, kappa_Q, eps = constants(problem.mesh, problem.tau, 0.5 * problem.sigma ** 4,
                                      problem.eps)
        return cls(signature="control", tau=tau, kappa_Q=kappa_Q, V=problem.V,
                   theta=problem.theta, eps=eps, Phi=problem.Phi, G=problem.G,
                   coupling=problem.coupling, quadrature_degree=quadrature_degree,
                   sources=getattr(problem.exact, "qhd_sources", None))

    @classmethod
    def quantum(cls, mesh, tau, hbar, V, G=None, coupling="mftc",
                quadrature_degree=None) -> "QHDData":
        """Quantum signature: κ_Q = −ħ²/2."""
        tau, kappa_Q = constants(mesh, tau, -0.5 * hbar ** 2)
        return cls(signature="quantum", tau=tau, kappa_Q=kappa_Q, V=V, G=G, coupling=coupling,
                   quadrature_degree=quadrature_degree)


def constants(mesh, *values):
    """dolfinx Constants of the per-run numbers: forms compiled once serve every value."""
    return tuple(dolfinx.fem.Constant(mesh, float(v)) for v in values)


def positive(c) -> bool:
    """c > 0 for a number or a Constant: decides a form's structure (ε = 0 drops log ρ)."""
    return float(getattr(c, "value", c)) > 0


# -- the Hamiltonian and its pieces -----------------------------------------------------------
def fisher_density(rho):
    """⅛|∇ρ|²/ρ, the integrand of the Fisher-information term F(ρ) = ½∫|∇√ρ|²."""
    return ufl.inner(ufl.grad(rho), ufl.grad(rho)) / (8 * rho)


def kinetic_density(rho, S):
    """½ρ|∇S|²."""
    return 0.5 * rho * ufl.inner(ufl.grad(S), ufl.grad(S))


def potential_density(rho, d: QHDData, congestion: bool = True):
    """s_U (Vρ + G(ρ)) (G only if ``congestion``)."""
    e = d.V * rho
    if congestion and d.G is not None:
        e = e + d.G(rho)
    return d.s_U * e


def hamiltonian_density(rho, S, d: QHDData, congestion: bool = True):
    """½ρ|∇S|² + s_U(Vρ + G(ρ)) − 2κ_Q·⅛|∇ρ|²/ρ: the integrand of H (MODEL §5)."""
    return (kinetic_density(rho, S) + potential_density(rho, d, congestion)
            - 2 * d.kappa_Q * fisher_density(rho))


def bohm_potential_forms(rho, Q, q, kappa_Q):
    """Mixed form of the Bohm term Q_κ = κ_Q Δ√ρ/√ρ with R = √ρ and ∇R·n = 0 (MODEL §3):
    (a, L) with a = ∫Q R q and L = −κ_Q∫∇R·∇q."""
    R = ufl.sqrt(rho)
    return Q * R * q * ufl.dx, -kappa_Q * ufl.inner(ufl.grad(R), ufl.grad(q)) * ufl.dx


# -- control signature: the discrete action ------------------------------------------------------
def boundary_data(t, d: QHDData) -> dict:
    """{"b_C": …, "b_B": …} at source time t (entries None where absent)."""
    s = d.sources(t) if d.sources is not None else {}
    return {k: s.get(k) for k in ("b_C", "b_B")}


def step_action(rho_old, rho_new, S, t, d: QHDData, congestion: bool = True):
    """A_n = ∫Sⁿ(ρ^{n+1} − ρⁿ) − τH(ρ̄ⁿ, Sⁿ) + τ∫_∂(b_C Sⁿ − b_B ρ̄ⁿ) (data at source time t)."""
    rb = rho_bar(rho_old, rho_new, d.theta)
    A = (S * (rho_new - rho_old) * ufl.dx
         - d.tau * hamiltonian_density(rb, S, d, congestion) * d.dxq)
    b = boundary_data(t, d)
    if b["b_C"] is not None:
        A += d.tau * b["b_C"] * S * ufl.ds
    if b["b_B"] is not None:
        A -= d.tau * b["b_B"] * rb * ufl.ds
    return A


def terminal(rho_N, d: QHDData):
    """B(ρ^N) = ∫Φρ^N + ε∫ρ^N(log ρ^N − 1), so that ∂B/∂ρ^N = 0 ⇔ S^N = −Φ − ε log ρ^N."""
    B = d.Phi * rho_N * ufl.dx
    if positive(d.eps):
        B += d.eps * rho_N * (ufl.ln(rho_N) - 1.0) * d.dxq
    return B


def rho_residual(rho_old, rho_new, S, t, wrt, q, d: QHDData):
    """∂A_n/∂(wrt)[q] with the congestion term replaced by the coupling c (−s_U τ∫c ∂ρ̄[q])."""
    F = ufl.derivative(step_action(rho_old, rho_new, S, t, d, congestion=False), wrt, q)
    c = coupling_residual(rho_old, rho_new, wrt, q, d)
    return F if c is None else F - d.s_U * c


def continuity_residual(rho_old, rho_new, S, t, s, d: QHDData):
    """∂A_n/∂Sⁿ[s] = ∫(ρ^{n+1} − ρⁿ)s − τ∫ρ̄∇Sⁿ·∇s (+ τ∫_∂ b_C s): the weak continuity step."""
    return ufl.derivative(step_action(rho_old, rho_new, S, t, d), S, s)


def level_forms(tm: dict, t_prev, t_cur, d: QHDData) -> dict:
    """Residual rows of time level k on templates ``tm`` (control; source times t_{k−1}, t_k).

    ``tm`` maps RHO_PREV, RHO_CUR, RHO_NEXT, S_PREV, S_CUR to Functions holding ρ^{k−1}, ρ^k,
    ρ^{k+1}, S^{k−1}, S^k.  Rows (as in forms/hjb_fp.py, S in the place of u):
      "u":        ∂A_k/∂S^k                    (continuity step k → k+1),
      "rho":      ∂(A_{k−1} + A_k)/∂ρ^k        (Bernoulli step S^{k−1} → S^k),
      "rho_last": ∂(A_{N−1} + B)/∂ρ^N          (Bernoulli step with the terminal condition).
    """
    q = ufl.TestFunction(tm[RHO_CUR].function_space)
    rp, rc, rn, sp, sc = (tm[k] for k in (RHO_PREV, RHO_CUR, RHO_NEXT, S_PREV, S_CUR))
    previous = rho_residual(rp, rc, sp, t_prev, rc, q, d)
    return {"u": continuity_residual(rc, rn, sc, t_cur, q, d),
            "rho": previous + rho_residual(rc, rn, sc, t_cur, rc, q, d),
            "rho_last": previous + ufl.derivative(terminal(rc, d), rc, q)}


def control_velocity(rho, S, eps):
    """The network's velocity a = −∇u = ∇S + ε∇ρ/ρ (MODEL §2–3)."""
    return ufl.grad(S) + eps * ufl.grad(rho) / rho


def level_functionals(tm: dict, t_cur, d: QHDData) -> dict:
    """Scalar functionals of step k (control): cost τ∫(½|a|² + V)ρ̄ + G(ρ̄) with
    a = ∇S^k + ε∇ρ̄/ρ̄, the Hamiltonian and Fisher term at (ρ^k, S^k), ∫ρ^k, ∫Φρ^k,
    "u0" = ∫(−S^k − ε log ρ^k)ρ^k (the discrete ∫u(0)ρ_0 at k = 0) and the value-identity
    correction τ∫(G − ρ̄c)(ρ̄) + τ∫_∂ b_B ρ̄ (as forms/hjb_fp.py, for the action's sources)."""
    rc, rn, sc = tm[RHO_CUR], tm[RHO_NEXT], tm[S_CUR]
    rb = rho_bar(rc, rn, d.theta)
    a = control_velocity(rb, sc, d.eps)
    cost = d.tau * (0.5 * ufl.inner(a, a) + d.V) * rb * d.dxq
    value = None
    if d.G is not None:
        cost += d.tau * d.G(rb) * d.dxq
        value = d.tau * (d.G(rb) - rb * coupling_value(d.G, d.coupling, rb)) * d.dxq
    b = boundary_data(t_cur, d)["b_B"]
    if b is not None:
        term = d.tau * b * rb * ufl.ds
        value = term if value is None else value + term
    u0 = -sc * rc * ufl.dx
    if positive(d.eps):
        u0 += -d.eps * ufl.ln(rc) * rc * d.dxq
    return {"cost": cost, "value": value, "u0": u0, "mass": rc * ufl.dx,
            "terminal": d.Phi * rc * ufl.dx,
            "energy": hamiltonian_density(rc, sc, d) * d.dxq,
            "fisher": fisher_density(rc) * d.dxq}


# -- quantum signature: the discrete-gradient step ----------------------------------------------
def split(z):
    """(ρ, S) of a mixed Function/Argument z."""
    return z[0], z[1]


def discrete_gradient_rho(z_old, z_new, q, d: QHDData):
    """∂̄_ρH[q] = ∫[¼(|∇Sⁿ|² + |∇S^{n+1}|²) + s_U(V + c̄)]q − κ_Q∫∇R̄·∇(q/R̄)."""
    (r0, S0), (r1, S1) = split(z_old), split(z_new)
    kin = 0.25 * (ufl.inner(ufl.grad(S0), ufl.grad(S0)) + ufl.inner(ufl.grad(S1), ufl.grad(S1)))
    pot = d.V
    if d.G is not None:
        pot = pot + averaged_nonlinearity(lambda r: coupling_value(d.G, d.coupling, r), r0, r1)
    Rb = 0.5 * (ufl.sqrt(r0) + ufl.sqrt(r1))
    return ((kin + d.s_U * pot) * q * d.dxq
            - d.kappa_Q * ufl.inner(ufl.grad(Rb), ufl.grad(q / Rb)) * d.dxq)


def discrete_gradient_S(z_old, z_new, s, d: QHDData):
    """∂̄_S H[s] = ∫ρ̄∇S̄·∇s."""
    (r0, S0), (r1, S1) = split(z_old), split(z_new)
    return 0.5 * (r0 + r1) * ufl.inner(ufl.grad(0.5 * (S0 + S1)), ufl.grad(s)) * d.dxq


def quantum_step_residual(z_old, z_new, w, d: QHDData):
    """∫(ρ^{n+1} − ρⁿ)s − τ∂̄_S H[s] + ∫(S^{n+1} − Sⁿ)q + τ∂̄_ρ H[q], w = (s, q)."""
    (r0, S0), (r1, S1) = split(z_old), split(z_new)
    s, q = split(w)
    return ((r1 - r0) * s * ufl.dx - d.tau * discrete_gradient_S(z_old, z_new, s, d)
            + (S1 - S0) * q * ufl.dx + d.tau * discrete_gradient_rho(z_old, z_new, q, d))


def quantum_functionals(z, d: QHDData) -> dict:
    """Mass ∫ρ, energy H(ρ, S) (same quadrature as the step) and the Fisher term ⅛∫|∇ρ|²/ρ."""
    rho, S = split(z)
    return {"mass": rho * ufl.dx, "energy": hamiltonian_density(rho, S, d) * d.dxq,
            "fisher": fisher_density(rho) * d.dxq}
