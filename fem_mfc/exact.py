"""Exact solutions of the HJB–FP system (MODEL §7.1–7.2) and error norms.

* :class:`LQGaussian` — V = G = 0, Φ = (a/2)|x|² (MODEL §7.1):
    u = ½P(t)|x|² + εd log τ(t), τ(t) = 1 + a(T − t), P = a/τ;
    ρ(t) = N(m(t), s²(t)I), m = m_0 τ/τ(0), s² = (τ/τ(0))² s_0² + (2ε/a)τ(1 − τ/τ(0));
    J* = ½P(0)(|m_0|² + d s_0²) + εd log τ(0).
  On a bounded box the exact u has ∇u·n ≠ 0: its Neumann datum b_H = ε∇u·n is supplied as a
  linear boundary source (the FP flux of the Gaussian is negligible on a box ≫ its width).
* :class:`Manufactured` — smooth fields with congestion G (either coupling); the sources
    f_H = −∂_t u − εΔu + ½|∇u|² − V − c(ρ),  b_H = ε∇u·n,
    f_F = ∂_t ρ − εΔρ − ∇·(ρ∇u),            b_F = (ε∇ρ + ρ∇u)·n
  are built symbolically in UFL from the exact fields (time derivative by ``ufl.diff``).

Both give ``u(t)``, ``rho(t)`` as UFL expressions in x for a float or UFL time t, and
``sources(t)`` for the per-step Lagrangian (forms/hjb_fp.py).
"""
from __future__ import annotations

import math

from mpi4py import MPI

import dolfinx
import numpy as np
import ufl

from .errors import ConfigError
from .forms.hjb_fp import coupling_value


def _ln(v):
    return math.log(v) if isinstance(v, (int, float)) else ufl.ln(v)


class LQGaussian:
    """MODEL §7.1 on a box ≫ the Gaussian width."""

    # its HJB–FP sources are HJB boundary data only: the FP steps conserve the mass exactly.
    # Its QHD boundary data include the continuity flux b_C: the QHD mass moves with it.
    moves_mass = False
    moves_qhd_mass = True

    def __init__(self, mesh, T, sigma, a=1.0, mean=None, std=0.5, discrete_time=None):
        self.mesh, self.T, self.a = mesh, float(T), float(a)
        self.eps = 0.5 * sigma ** 2
        self.d = mesh.geometry.dim
        self.m0 = np.zeros(self.d) if mean is None else np.asarray(mean, float)
        self.s0 = float(std)
        self.x = ufl.SpatialCoordinate(mesh)
        self.n = ufl.FacetNormal(mesh)
        self.V, self.G = 0.0, None
        self.Phi = 0.5 * self.a * ufl.inner(self.x, self.x)
        # discrete_time = (steps, theta): Neumann data of the time-discrete u (see
        # time_discrete_u), so that a spatial study against it has no time error at all
        self._table = None
        if discrete_time is not None:
            steps, theta = discrete_time
            self._table = (steps, theta, self._riccati(steps, theta))

    def _tau(self, t):
        return 1.0 + self.a * (self.T - t)

    def u(self, t):
        tau = self._tau(t)
        return 0.5 * (self.a / tau) * ufl.inner(self.x, self.x) + self.eps * self.d * _ln(tau)

    def _moments(self, t):
        """(|x − m(t)|², s²(t)) of the Gaussian ρ(t)."""
        tau, tau0 = self._tau(t), self._tau(0.0)
        r = tau / tau0
        s2 = r ** 2 * self.s0 ** 2 + (2 * self.eps / self.a) * tau * (1.0 - r)
        m = [float(self.m0[i]) * r for i in range(self.d)]
        return sum((self.x[i] - m[i]) ** 2 for i in range(self.d)), s2

    def rho(self, t):
        r2, s2 = self._moments(t)
        return ufl.exp(-r2 / (2 * s2)) / (2 * math.pi * s2) ** (self.d / 2)

    def log_rho(self, t):
        """log ρ(t) = −|x − m|²/2s² − (d/2) log(2πs²), without exp/log round trips."""
        r2, s2 = self._moments(t)
        return -r2 / (2 * s2) - 0.5 * self.d * _ln(2 * math.pi * s2)

    def S(self, t):
        """The QHD potential S = −u − ε log ρ (MODEL §3): a quadratic in x."""
        return -self.u(t) - self.eps * self.log_rho(t)

    def qhd_sources(self, t):
        """Boundary data of the QHD rows (forms/qhd.py): the continuity flux b_C = ρ∇S·n and
        the Fisher term's flux b_B = (κ_Q/2)∇log ρ·n = ε²∇log ρ·n — the exact solution then
        solves the discrete QHD system's equations on any box, however small."""
        return {"b_C": self.rho(t) * ufl.dot(ufl.grad(self.S(t)), self.n),
                "b_B": self.eps ** 2 * ufl.dot(ufl.grad(self.log_rho(t)), self.n)}

    def sources(self, t):
        if self._table is None:
            return {"b_H": self.eps * ufl.dot(ufl.grad(self.u(t)), self.n)}
        steps, theta, (P, _) = self._table
        tau = self.T / steps      # step n is evaluated at t = (n + θ)τ: pick P_n there
        Pt = sum(ufl.conditional(ufl.lt(abs(t - (n + theta) * tau), 0.5 * tau), Pn, 0.0)
                 for n, Pn in enumerate(P))
        return {"b_H": self.eps * Pt * ufl.dot(self.x, self.n)}

    def time_discrete_u(self, steps: int, theta: float) -> list:
        """uⁿ of the time-discrete scheme (exact in space, whole space): uⁿ = ½P_n|x|² + c_n.

        G = V = 0 decouples the discrete HJB rows of forms/hjb_fp.py from ρ; the quadratic
        ansatz gives P_{k−1} + θτP_{k−1}² = R_k with R_N = a, R_k = P_k − (1−θ)τP_k², and
        c_{k−1} = c_k + τεd(θP_{k−1} + (1−θ)P_k) (c_N = 0 and no (1−θ) terms at k = N).
        Comparing with it removes the time error from a spatial convergence study.
        """
        P, c = self._riccati(steps, theta)
        return [0.5 * P[n] * ufl.inner(self.x, self.x) + c[n] for n in range(steps)]

    def _riccati(self, steps, theta):
        tau, d, eps = self.T / steps, self.d, self.eps
        P, c = [0.0] * steps, [0.0] * steps
        Pk = ck = None
        for k in range(steps, 0, -1):
            R = self.a if k == steps else Pk - (1 - theta) * tau * Pk ** 2
            Pm = R if theta == 0 else (-1 + math.sqrt(1 + 4 * theta * tau * R)) / (2 * theta * tau)
            cm = tau * eps * d * theta * Pm if k == steps \
                else ck + tau * eps * d * (theta * Pm + (1 - theta) * Pk)
            P[k - 1], c[k - 1] = Pm, cm
            Pk, ck = Pm, cm
        return P, c

    @property
    def J(self) -> float:
        tau0 = self._tau(0.0)
        return 0.5 * self.a / tau0 * (float(self.m0 @ self.m0) + self.d * self.s0 ** 2) \
            + self.eps * self.d * math.log(tau0)


class Manufactured:
    """Smooth exact fields on a box with congestion G and coupling c (see module docstring).

    ``time = "affine"``: u, ρ affine in t — the implicit midpoint scheme has no time error, so
    the observed errors are purely spatial.  ``time = "smooth"``: trigonometric in t (time
    rates).  ρ = (1 + β(t)ψ(x))/|Ω|, ψ = Π cos(π(x_i − l_i)/L_i) (mean zero, mass 1),
    u = γ(t)(½|x − c|² + 0.2 sin(π Σx_i)).  ``space = "quadratic"``: ψ = Σ((x_i − c_i)²/L_i² −
    1/12), u = γ(t)(½|x − c|² + 0.2 Σx_i + 0.3 x_0x_1): both lie in P2 and every source is a
    polynomial integrated exactly, so P2 has no spatial error (time rates).
    ``variant = k`` > 0 (another population, fem_mfc/populations.py): ψ → (−1)^k ψ and the
    centre of u moved by 0.1k along x_0 (polynomial still).
    """

    moves_mass = True       # FP sources f_F, b_F: the discrete mass follows them to O(h^p)

    def __init__(self, mesh, T, sigma, G, coupling="mftc", time="affine", space="trig", V=0.0,
                 H=None, variant: int = 0):
        if time not in ("affine", "smooth") or space not in ("trig", "quadratic"):
            raise ValueError((time, space))
        self.space = space
        self.mesh, self.T, self.eps = mesh, float(T), 0.5 * sigma ** 2
        self.G, self.coupling, self.time = G, coupling, time
        self.H = H                    # fem_mfc.hamiltonian.Hamiltonian; None: ½|p|²
        self.x = ufl.SpatialCoordinate(mesh)
        self.n = ufl.FacetNormal(mesh)
        self.d = mesh.geometry.dim
        comm = mesh.comm
        X = mesh.geometry.x[:, : self.d]
        # the bounding box, reduced elementwise (the pickled allreduce compared whole arrays:
        # "truth value of an array ... is ambiguous" on 2 ranks in 2D and 3D)
        self.lo = X.min(axis=0) if len(X) else np.full(self.d, np.inf)
        self.hi = X.max(axis=0) if len(X) else np.full(self.d, -np.inf)
        comm.Allreduce(MPI.IN_PLACE, self.lo, op=MPI.MIN)
        comm.Allreduce(MPI.IN_PLACE, self.hi, op=MPI.MAX)
        self.volume = float(np.prod(self.hi - self.lo))
        self.V = V
        self.variant = int(variant)
        self.Phi = self.u(self.T)

    def _beta(self, t):
        if self.time == "affine":
            return 0.3 + 0.2 * t / self.T
        return 0.3 + 0.2 * ufl.sin(2.0 * t / self.T) if not isinstance(t, float) \
            else 0.3 + 0.2 * math.sin(2.0 * t / self.T)

    def _gamma(self, t):
        if self.time == "affine":
            return 1.0 + 0.5 * (self.T - t) / self.T
        return 1.0 + 0.5 * ufl.cos(1.5 * t / self.T) if not isinstance(t, float) \
            else 1.0 + 0.5 * math.cos(1.5 * t / self.T)

    def rho(self, t):
        L, c = self.hi - self.lo, 0.5 * (self.lo + self.hi)
        if self.space == "quadratic":
            psi = sum((self.x[i] - c[i]) ** 2 / L[i] ** 2 - 1.0 / 12.0 for i in range(self.d))
        else:
            psi = 1.0
            for i in range(self.d):
                psi = psi * ufl.cos(math.pi * (self.x[i] - self.lo[i]) / L[i])
        if self.variant % 2:
            psi = -psi
        return (1.0 + self._beta(t) * psi) / self.volume

    def u(self, t):
        c = 0.5 * (self.lo + self.hi)
        if self.variant:
            c = c + 0.1 * self.variant * np.eye(self.d)[0]
        phi = 0.5 * sum((self.x[i] - c[i]) ** 2 for i in range(self.d))
        if self.space == "quadratic":
            phi = phi + 0.2 * sum(self.x[i] for i in range(self.d)) \
                + (0.3 * self.x[0] * self.x[1] if self.d > 1 else 0.0)
        else:
            phi = phi + 0.2 * ufl.sin(math.pi * sum(self.x[i] for i in range(self.d)))
        return self._gamma(t) * phi

    def sources(self, t):
        tv = ufl.variable(t)
        u, rho = self.u(tv), self.rho(tv)
        eps, gu = self.eps, ufl.grad(u)
        c = coupling_value(self.G, self.coupling, rho) if self.G is not None else 0.0
        if self.H is None:
            f_H = (-ufl.diff(u, tv) - eps * ufl.div(gu) + 0.5 * ufl.inner(gu, gu) - self.V - c)
            flux = eps * ufl.grad(rho) + rho * gu
        else:                         # H(x, ∇u, ρ) [+ ρ∂_ρH for mftc], drift −∂_pH
            h = self.H(gu, rho)
            if self.H.uses_rho and self.coupling == "mftc":
                h = h + rho * self.H.rho_derivative(gu, rho)
            f_H = -ufl.diff(u, tv) - eps * ufl.div(gu) + h - self.V - c
            flux = eps * ufl.grad(rho) + rho * self.H.gradient(gu, rho)
        f_F = ufl.diff(rho, tv) - ufl.div(flux)
        return {"f_H": f_H, "b_H": eps * ufl.dot(gu, self.n),
                "f_F": f_F, "b_F": ufl.dot(flux, self.n)}


class PeriodicManufactured(Manufactured):
    """:class:`Manufactured` fields periodic along the axes ``periodic`` of the box (periodic
    boundaries, fem_mfc/solvers/periodic.py; the other sides are walls with Neumann data):

      ρ = (1 + β(t)ψ(x))/|Ω|,  ψ = cos(2π(x_0 − l_0)/L_0 − 0.7)·Π_{i≥1} w_i,
      u = γ(t)(0.3 sin(2π(x_0 − l_0)/L_0 + 0.4 Σ_{i≥1} x_i) + 0.15 cos(4π(x_0 − l_0)/L_0)
               + ½ Σ_{i non-periodic} (x_i − c_i)²),

    w_i = cos(2π(x_i − l_i)/L_i + 0.3) + 1.5 on a periodic axis i ≥ 1, 1 + 0.5 cos(π(x_i −
    l_i)/L_i) on a wall axis (axis 0 is periodic; ∫ψ = 0, so the mass is 1).  ∇u·n ≠ 0 and
    the flux through the periodic sides ≠ 0: a solve with walls there has another solution.
    The boundary sources act on the wall sides only (the normal components of the wall
    axes), as the continuous periodic problem has no boundary at the glued sides."""

    def __init__(self, mesh, T, sigma, G, coupling="mftc", time="affine", periodic=(0,),
                 V=0.0):
        self.periodic = tuple(periodic)
        if 0 not in self.periodic:
            raise ValueError("axis 0 must be periodic")
        super().__init__(mesh, T, sigma, G, coupling, time=time, space="trig", V=V)

    def _angle(self, i, k=1):
        L = self.hi - self.lo
        return 2.0 * math.pi * k * (self.x[i] - self.lo[i]) / L[i]

    def rho(self, t):
        L = self.hi - self.lo
        psi = ufl.cos(self._angle(0) - 0.7)
        for i in range(1, self.d):
            psi = psi * (ufl.cos(self._angle(i) + 0.3) + 1.5 if i in self.periodic
                         else 1.0 + 0.5 * ufl.cos(math.pi * (self.x[i] - self.lo[i]) / L[i]))
        return (1.0 + self._beta(t) * psi / 2.5 ** (self.d - 1)) / self.volume

    def u(self, t):
        c = 0.5 * (self.lo + self.hi)
        rest = sum((self.x[i] for i in range(1, self.d)), 0.0)
        phi = 0.3 * ufl.sin(self._angle(0) + 0.4 * rest) + 0.15 * ufl.cos(self._angle(0, 2))
        for i in range(1, self.d):
            if i not in self.periodic:
                phi = phi + 0.5 * (self.x[i] - c[i]) ** 2
        return self._gamma(t) * phi

    def sources(self, t):
        s = super().sources(t)
        walls = [i for i in range(self.d) if i not in self.periodic]
        if not walls:
            s["b_H"] = s["b_F"] = None
            return s
        tv = ufl.variable(t)
        u, rho = self.u(tv), self.rho(tv)
        gu, eps = ufl.grad(u), self.eps
        flux = eps * ufl.grad(rho) + rho * gu
        s["b_H"] = sum(eps * gu[i] * self.n[i] for i in walls)
        s["b_F"] = sum(flux[i] * self.n[i] for i in walls)
        return s


def from_config(kind: str, cfg: dict, mesh, G, H=None):
    """The exact solution named by ``exact.solution`` for the hjb-fp formulation.  It sets V,
    Φ and ρ_0 itself: a config giving others is refused (they were replaced silently, and the
    run of another problem than the config's reported success)."""
    pr = cfg["problem"]
    for key in ("V", "Phi"):
        if pr[key].strip() not in ("0", "0.0"):
            raise ConfigError(f"problem.{key}", f"'0' (the default) with exact.solution = "
                              f"'{kind}', which sets V and Phi itself (MODEL §7; remove "
                              f"[exact] to solve this {key})", pr[key])
    r0 = cfg["rho0"]
    if r0["kind"] != "gaussian":
        raise ConfigError("rho0.kind", f"'gaussian' with exact.solution = '{kind}' ("
                          + ("its mean and std are the exact solution's" if kind ==
                             "lq-gaussian" else "the manufactured solution sets rho0")
                          + "; remove [exact] to start from this density)", r0["kind"])
    if kind == "lq-gaussian" and H is not None:
        raise ConfigError("problem.H", "'quadratic' for exact.solution = 'lq-gaussian'",
                          pr.get("H"))
    if kind == "lq-gaussian":
        if G is not None:
            raise ConfigError("problem.G", "0 for exact.solution = 'lq-gaussian'", pr["G"])
        r = cfg["rho0"]
        return LQGaussian(mesh, pr["T"], pr["sigma"], a=pr["params"].get("a", 1.0),
                          mean=r["mean"] or None, std=r["std"])
    if kind == "manufactured":
        return Manufactured(mesh, pr["T"], pr["sigma"], G, pr["coupling"], H=H)
    raise ConfigError("exact.solution", "'none', 'lq-gaussian' or 'manufactured' for hjb-fp",
                      kind)


class ErrorNorms:
    """L² errors of a discrete solution against an exact one, max over the time levels."""

    def __init__(self, exact, space):
        self.exact = exact
        self.f = dolfinx.fem.Function(space)
        self.t = dolfinx.fem.Constant(space.mesh, 0.0)
        self.forms = {k: dolfinx.fem.form((self.f - getattr(exact, k)(self.t)) ** 2 * ufl.dx)
                      for k in ("u", "rho")}

    def l2(self, kind: str, f, t: float) -> float:
        self.f.x.array[:] = f.x.array
        self.t.value = t
        comm = self.f.function_space.mesh.comm
        return math.sqrt(comm.allreduce(dolfinx.fem.assemble_scalar(self.forms[kind]),
                                        op=MPI.SUM))

    def l2_mean_free(self, kind: str, f, t: float) -> float:
        """‖e − ē‖, e = f − exact.kind(t), ē = ∫e/|Ω|: the L² error up to an additive
        constant (the QHD potential S; its constant is not observable in ρ)."""
        if kind + "_mean" not in self.forms:
            e = self.f - getattr(self.exact, kind)(self.t)
            self.forms[kind] = dolfinx.fem.form(e ** 2 * ufl.dx)
            self.forms[kind + "_mean"] = dolfinx.fem.form(e * ufl.dx)
            self.forms["volume"] = dolfinx.fem.form(
                dolfinx.fem.Constant(self.f.function_space.mesh, 1.0) * ufl.dx)
        self.f.x.array[:] = f.x.array
        self.t.value = t
        comm = self.f.function_space.mesh.comm
        e2, e1, vol = (comm.allreduce(dolfinx.fem.assemble_scalar(self.forms[k]), op=MPI.SUM)
                       for k in (kind, kind + "_mean", "volume"))
        return math.sqrt(max(e2 - e1 ** 2 / vol, 0.0))

    def l2_to(self, f, expr) -> float:
        """‖f − expr‖ for a UFL expression in x (compiled on the fly)."""
        e = dolfinx.fem.form((f - expr) ** 2 * ufl.dx)
        return math.sqrt(f.function_space.mesh.comm.allreduce(dolfinx.fem.assemble_scalar(e),
                                                               op=MPI.SUM))

    def __call__(self, result, u_reference=None) -> dict:
        """{"u": max_n ‖uⁿ − u(t_u(n))‖, "rho": max_n ‖ρⁿ − ρ(t_n)‖, "J": |J − J*|}.

        ``u_reference``: a list of UFL expressions to compare the uⁿ with instead (e.g.
        :meth:`LQGaussian.time_discrete_u`)."""
        p = result.problem
        if u_reference is not None:
            eu = max(self.l2_to(f, g) for f, g in zip(result.u, u_reference))
        else:
            eu = max(self.l2("u", f, p.u_time(n)) for n, f in enumerate(result.u))
        out = {"u": eu,
               "rho": max(self.l2("rho", f, p.rho_time(n)) for n, f in enumerate(result.rho))}
        if hasattr(self.exact, "J"):
            out["J"] = abs(result.J - self.exact.J)
        return out
