"""NLS invariants and moments as assembled functionals (MODEL §5), global over all ranks.

  mass      M = ∫|Ψ|²
  energy    E = ∫ (ħ²/2)|∇Ψ|² + V|Ψ|² + G(|Ψ|²)    (same quadrature as the residual)
  momentum  P = ∫ ħ Im(Ψ̄∇Ψ)                        (conserved for V = 0 away from ∂Ω)
  centre    m = ∫ x|Ψ|² / M,  width² s² = ∫ |x − m|²|Ψ|² / (d M)   (per-axis variance)
"""
from __future__ import annotations

import math

from mpi4py import MPI

import dolfinx
import numpy as np
import ufl

from .forms import nls as forms


class NLSInvariants:
    """Compiled invariant forms of ``problem`` evaluated at the current ``z``."""

    def __init__(self, problem, z):
        comm = problem.mesh.comm
        self.comm = comm
        x = ufl.SpatialCoordinate(problem.mesh)
        rho = forms.density(z)
        self._mass = dolfinx.fem.form(rho * ufl.dx)
        self._energy = dolfinx.fem.form(forms.energy(z, problem.hbar, problem.V, problem.G,
                                                     problem.dxp))
        self._momentum = [dolfinx.fem.form(f) for f in forms.momentum(z, problem.hbar)]
        self._first = [dolfinx.fem.form(x[i] * rho * ufl.dx) for i in range(len(x))]
        self._second = dolfinx.fem.form(ufl.inner(x, x) * rho * ufl.dx)
        self._gradient2 = dolfinx.fem.form(ufl.inner(ufl.grad(z), ufl.grad(z)) * ufl.dx)
        self.gdim = len(x)

    def _sum(self, form) -> float:
        return self.comm.allreduce(dolfinx.fem.assemble_scalar(form), op=MPI.SUM)

    def mass(self) -> float:
        return self._sum(self._mass)

    def energy(self) -> float:
        return self._sum(self._energy)

    def momentum(self) -> list[float]:
        return [self._sum(f) for f in self._momentum]

    def centre(self) -> np.ndarray:
        return np.array([self._sum(f) for f in self._first]) / self.mass()

    def width2(self) -> float:
        """Per-axis variance of the normalised density: (∫|x|²ρ/M − |m|²)/d."""
        m = self.centre()
        return (self._sum(self._second) / self.mass() - float(m @ m)) / self.gdim

    def wavenumber(self) -> float:
        """The rms wavenumber of Ψ: k = (∫|∇Ψ|² / ∫|Ψ|²)^½ (|k0| plus the packet's spread)."""
        return math.sqrt(max(self._sum(self._gradient2), 0.0) / max(self.mass(), 1e-300))

    def __call__(self) -> dict:
        return {"mass": self.mass(), "energy": self.energy(), "momentum": self.momentum()}


def relative_drift(history) -> float:
    """max_n |Iⁿ − I⁰| / |I⁰| (absolute drift when I⁰ = 0)."""
    h = np.asarray(history, dtype=float)
    scale = abs(h[0]) if h[0] != 0 else 1.0
    return float(np.max(np.abs(h - h[0]))) / scale


def l2_norm_complex(z, re, im, degree_raise: int = 3) -> float:
    """‖Ψ_h − Ψ‖_{L²} for Ψ = re + i·im given as UFL expressions."""
    mesh = z.function_space.mesh
    deg = z.function_space.element.basix_element.degree + degree_raise
    e = (z[0] - re) ** 2 + (z[1] - im) ** 2
    val = mesh.comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(
        e * ufl.dx(metadata={"quadrature_degree": 2 * deg}))), op=MPI.SUM)
    return math.sqrt(max(val, 0.0))


def l2_norm_density(z, rho_exact, degree_raise: int = 3) -> float:
    """‖|Ψ_h|² − ρ‖_{L²}."""
    mesh = z.function_space.mesh
    deg = z.function_space.element.basix_element.degree + degree_raise
    e = (forms.density(z) - rho_exact) ** 2
    val = mesh.comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(
        e * ufl.dx(metadata={"quadrature_degree": 2 * deg}))), op=MPI.SUM)
    return math.sqrt(max(val, 0.0))


# The relative frequency error of the rms wave e^{i(kx − ωt)}, ω = ħk²/2: in space
# (kh)^{2p}/c_p for P_p with the consistent mass (1D dispersion: P1 λ_h = k²(1 + (kh)²/12),
# P2 (kh)⁴/720), in time (ωτ)^q/d_q for a method of order q (the midpoint rule (ωτ)²/12, RK4's
# (ωτ)⁴/120, used for the order-4 compositions too); both together, over ωT radians of phase.
SPACE_CONSTANT = {1: 12.0, 2: 720.0}
TIME_ORDER = {"midpoint": 2, "triple-jump": 4, "suzuki": 4, "rk4": 4}
TIME_CONSTANT = {2: 12.0, 4: 120.0}
PHASE_ERROR_WARN = 0.5        # radians at T: the wave's L² error is about this fraction of it


def phase_error(k: float, h: float, degree: int, tau: float, T: float, hbar: float,
                integrator: str) -> dict:
    """An a-priori estimate of the phase error at T of the rms wave of wavenumber ``k`` on a
    mesh of size ``h`` (P``degree``) with step ``tau`` of ``integrator``: the resolution
    figures of an NLS run (its conservation checks cannot see an under-resolved wave — the
    midpoint rule conserves mass and energy whatever the mesh).  Keys: ``k_rms``,
    ``points_per_wavelength`` (2π/(kh)·p), ``omega_tau``, ``phase_error_space``,
    ``phase_error_time`` and ``phase_error`` (radians)."""
    omega = hbar * k * k / 2
    kh = k * h
    q = TIME_ORDER[integrator]
    space = omega * T * kh ** (2 * degree) / SPACE_CONSTANT.get(degree, 720.0)
    time = omega * T * (omega * tau) ** q / TIME_CONSTANT[q]
    return {"k_rms": k, "points_per_wavelength": (2 * math.pi / kh * degree if kh > 0
                                                  else math.inf),
            "omega_tau": omega * tau, "phase_error_space": space, "phase_error_time": time,
            "phase_error": space + time}
