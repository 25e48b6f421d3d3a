"""Weight-space Lie–Poisson reduction of a rotation network (MODEL §5 "Weight space").

Network a(t, x) = θ(t) × x = θ̂(t) x with θ ∈ so(3) ≅ R³, ε = 0, acting on N particles x_i
(the empirical measure Σ_i w_i δ_{x_i}, w_i = 1/N).  Training minimises

    J(θ) = Σ_i w_i Φ_i(x_i(T)) + ∫_0^T ½ Σ_j λ_j θ_j² dt,    x_i' = θ × x_i,
    Φ_i(x) = ½|x − c_{k(i)}|²  (class anchors).

Pontryagin's minimum principle (costates p_i, p_i(T) = w_i ∇Φ_i(x_i(T))):

    x_i' = θ × x_i,   p_i' = −θ̂ᵀ p_i = θ × p_i,   λ_j θ_j + ⟨Σ_i p_i x_iᵀ, ê_j⟩_F = 0,

and ⟨Σ_i p_i x_iᵀ, ê_j⟩_F = (Σ_i x_i × p_i)_j, so with the momentum map (the projection of
μ = Σ_i p_i x_iᵀ to so(3)* ≅ R³)

    M = Σ_i x_i × p_i,     θ = −Λ⁻¹ M,   Λ = diag(λ).

Eliminating θ, (x, p) ∈ R^{6N} is a canonical Hamiltonian system with the collective
Hamiltonian  H(x, p) = −½ Mᵀ Λ⁻¹ M,  and M obeys the Lie–Poisson equation (MODEL §5,
μ' = μθᵀ − θᵀμ projected to so(3)*)

    M' = θ × M = M × Λ⁻¹M,

the free rigid body with inertia Λ; |M|² is its Casimir and ½MᵀΛ⁻¹M its energy, so the control
cost is T·½M(0)ᵀΛ⁻¹M(0).  Discretely, if the reduced system takes LPHJ steps
M_{n+1} = exp(−Ξ̂_n) M_n and the particles are rotated by the same Q_n = exp(−Ξ̂_n)
(θ_n = −Ξ_n/τ), then x_{n+1} × p_{n+1} = Q_n(x_n × p_n): particle and reduced solutions agree
to round-off.  Training = shooting on M(0) ∈ R³:  M_N(M(0)) = Σ_i x_i(T) × w_i ∇Φ_i(x_i(T)).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import root

from .composition import Composition
from .examples import rigid_body
from .lie_algebras import cross, hat, rotate, rotation_matrix
from .registry import get_integrator
from .systems import CanonicalSystem


def make_point_cloud(n_per_class: int = 12, seed: int = 0, angle: float = 1.0):
    """Two Gaussian blobs in R³ and anchors c_k = R*·(blob mean k), R* a rotation by ``angle``.

    Returns (x0 (N, 3), labels (N,), anchors (2, 3)); a rotation network can reach low loss.
    """
    rng = np.random.default_rng(seed)
    means = np.array([[1.5, 0.0, 0.5], [-1.0, 1.0, -0.5]])
    x0 = np.concatenate([m + 0.3 * rng.normal(size=(n_per_class, 3)) for m in means])
    labels = np.repeat(np.arange(len(means)), n_per_class)
    axis = np.array([1.0, 2.0, 2.0]) / 3.0
    anchors = rotate(angle * axis, means)
    return x0, labels, anchors


@dataclass
class Forward:
    """A discrete forward pass: reduced momenta M_n, particles x_n, costates p_n at t_n."""

    t: np.ndarray
    M: np.ndarray
    x: np.ndarray
    p: np.ndarray | None = None
    R: np.ndarray | None = None     # the total rotation: x_N = R x_0 (row-wise: x_N = x_0 Rᵀ)


@dataclass
class TrainResult:
    M0: np.ndarray
    loss_before: float
    loss_after: float
    terminal_before: float
    terminal_after: float
    residual: float
    nfev: int
    forward: Forward = field(repr=False, default=None)


class RotationNetwork:
    """The rotation network on a point cloud and its Lie–Poisson reduced dynamics."""

    def __init__(self, x0, anchors_per_point, lam=(0.05, 0.1, 0.2), T: float = 1.0):
        self.x0 = np.asarray(x0, dtype=float)
        self.c = np.asarray(anchors_per_point, dtype=float)
        self.N = len(self.x0)
        self.w = np.full(self.N, 1.0 / self.N)
        self.lam = np.asarray(lam, dtype=float)
        self.T = float(T)
        self.reduced = rigid_body(self.lam)

    # -- model pieces -------------------------------------------------------------------------
    @staticmethod
    def momentum(x, p):
        """M = Σ_i x_i × p_i = vee(μ − μᵀ), μ = Σ_i p_i x_iᵀ (vectorised over leading axes)."""
        return np.sum(cross(np.asarray(x), np.asarray(p)), axis=-2)

    def control(self, M):
        """θ = −Λ⁻¹ M (stationarity of the minimum-principle Hamiltonian)."""
        return -np.asarray(M) / self.lam

    def terminal_costate(self, xT):
        return self.w[:, None] * (xT - self.c)

    def terminal_loss(self, xT):
        return float(0.5 * np.sum(self.w * np.sum((xT - self.c) ** 2, axis=-1)))

    def control_cost(self, M0):
        """∫_0^T ½ θᵀΛθ dt = T · ½ M(0)ᵀΛ⁻¹M(0) (the rigid-body energy is conserved)."""
        return float(self.T * 0.5 * np.sum(np.asarray(M0) ** 2 / self.lam))

    # -- the particle optimality system as a canonical Hamiltonian system ---------------------
    def particle_system(self) -> CanonicalSystem:
        """z = (x_1..x_N, p_1..p_N) ∈ R^{6N},  H = −½ MᵀΛ⁻¹M,  M = Σ x_i × p_i.

        ∂H/∂x_i = Ω × p_i,  ∂H/∂p_i = −Ω × x_i,  Ω = Λ⁻¹M  (so x_i' = θ × x_i, p_i' = θ × p_i).
        """
        N, lam = self.N, self.lam

        def split(z):
            z = np.asarray(z, dtype=float)
            return z[:3 * N].reshape(N, 3), z[3 * N:].reshape(N, 3)

        def H(z):
            M = self.momentum(*split(z))
            return -0.5 * float(np.sum(M * M / lam))

        def grad(z):
            x, p = split(z)
            Om = self.momentum(x, p) / lam
            return np.concatenate([cross(np.broadcast_to(Om, p.shape), p).ravel(),
                                   -cross(np.broadcast_to(Om, x.shape), x).ravel()])

        def hess(z):
            x, p = split(z)
            Om = self.momentum(x, p) / lam
            # ∂M/∂z = [−p̂_1 … −p̂_N | x̂_1 … x̂_N]  (3 × 6N)
            G = np.concatenate([np.concatenate(-hat(p), axis=1),
                                np.concatenate(hat(x), axis=1)], axis=1)
            dOm = G / lam[:, None]
            Hx = np.concatenate(-hat(p), axis=0) @ dOm     # ∂(Ω×p_i)/∂z, Ω part
            Hp = np.concatenate(hat(x), axis=0) @ dOm      # ∂(−Ω×x_i)/∂z, Ω part
            W = np.kron(np.eye(N), hat(Om))
            Hx[:, 3 * N:] += W
            Hp[:, :3 * N] -= W
            return np.concatenate([Hx, Hp], axis=0)

        return CanonicalSystem(H, grad, hess, 3 * N, name="rotation-network-particles")

    # -- discrete forward pass through the reduced (Lie–Poisson) dynamics ---------------------
    def forward(self, M0, nsteps: int, integrator: str = "lphj2", with_costates=None) -> Forward:
        """LPHJ steps for M and the same rotations Q_n = exp(−Ξ̂_n) applied to the particles
        (and to costates ``with_costates`` given at t = 0, if any)."""
        integ = get_integrator(integrator, self.reduced)
        subs = ([(integ.base, g) for g in integ.gammas] if isinstance(integ, Composition)
                else [(integ, 1.0)])
        tau = self.T / nsteps
        M = np.array(M0, dtype=float)
        x = self.x0.copy()
        p = None if with_costates is None else np.array(with_costates, dtype=float)
        R = np.eye(3)
        Ms, xs, ps = [M], [x], [p]
        for _ in range(nsteps):
            for base, g in subs:
                M, Xi = base.step_generator(M, g * tau)
                x = rotate(-Xi, x)
                R = rotation_matrix(-Xi) @ R
                if p is not None:
                    p = rotate(-Xi, p)
            Ms.append(M)
            xs.append(x)
            ps.append(p)
        return Forward(t=np.linspace(0.0, self.T, nsteps + 1), M=np.array(Ms), x=np.array(xs),
                       p=None if p is None else np.array(ps), R=R)

    def initial_costates(self, fw: Forward) -> np.ndarray:
        """p_i(0) = Rᵀ p_i(T) with p_i(T) = w_i ∇Φ_i(x_i(T)) (costates rotate with the
        particles)."""
        return self.terminal_costate(fw.x[-1]) @ fw.R

    def shooting_residual(self, M0, nsteps: int, integrator: str = "lphj2"):
        fw = self.forward(M0, nsteps, integrator)
        xT = fw.x[-1]
        return fw.M[-1] - self.momentum(xT, self.terminal_costate(xT)), fw

    def loss(self, M0, nsteps: int, integrator: str = "lphj2") -> tuple[float, float]:
        """(total cost J, terminal loss) of the control θ(t) = −Λ⁻¹M(t) generated from M0."""
        fw = self.forward(M0, nsteps, integrator)
        term = self.terminal_loss(fw.x[-1])
        return term + self.control_cost(M0), term

    def train(self, nsteps: int = 40, integrator: str = "lphj2", M0=None,
              tol: float = 1e-12) -> TrainResult:
        """Shooting on M(0) ∈ R³ (scipy ``root``, hybrid Powell), from M(0) = 0 (θ ≡ 0)."""
        M0 = np.zeros(3) if M0 is None else np.asarray(M0, dtype=float)
        before, term_before = self.loss(np.zeros(3), nsteps, integrator)
        sol = root(lambda m: self.shooting_residual(m, nsteps, integrator)[0], M0,
                   method="hybr", tol=tol)
        res, fw = self.shooting_residual(sol.x, nsteps, integrator)
        after = self.terminal_loss(fw.x[-1])
        return TrainResult(M0=sol.x, loss_before=before,
                           loss_after=after + self.control_cost(sol.x),
                           terminal_before=term_before, terminal_after=after,
                           residual=float(np.max(np.abs(res))), nfev=int(sol.nfev), forward=fw)

    # -- the discrete training loss for arbitrary controls (to test stationarity) -------------
    def discrete_cost(self, theta_path) -> float:
        """J for piecewise-constant controls θ_n on [t_n, t_{n+1}]: x_{n+1} = exp(τθ̂_n) x_n,
        cost τ Σ_n ½ θ_nᵀΛθ_n + terminal loss."""
        theta_path = np.asarray(theta_path, dtype=float)
        tau = self.T / len(theta_path)
        x = self.x0
        for th in theta_path:
            x = rotate(tau * th, x)
        return self.terminal_loss(x) + float(tau * 0.5 * np.sum(theta_path ** 2 * self.lam))
