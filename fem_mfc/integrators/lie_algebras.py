"""Lie algebras g, their duals g* and the coadjoint actions used by the Lie–Poisson integrators.

Conventions (one place, used everywhere):

* g* is identified with vectors/matrices through the pairing ⟨μ, ξ⟩ (dot product for so(3),
  se(3); Frobenius tr(μᵀξ) for gl(d), so(d), states stored flattened).
* ad*_ξ μ is defined by ⟨ad*_ξ μ, η⟩ = ⟨μ, [ξ, η]⟩, and Ad*_g μ by ⟨Ad*_g μ, η⟩ = ⟨μ, Ad_g η⟩.
* The (−) Lie–Poisson equation of a left-invariant system (rigid body in body coordinates) is
      μ' = ad*_{∂h/∂μ} μ,
  and its flow is μ(t) = Ad*_{g(t)} μ(0) with g' = g ∂h/∂μ(μ(t)), g(0) = e.  So one step with
  the (frozen or midpoint) generator ξ is  μ_{n+1} = Ad*_{exp(τξ)} μ_n.

Closed forms:

=========  ===================  ====================================  =========================
algebra    state                ad*_ξ μ                               Ad*_g μ
=========  ===================  ====================================  =========================
so(3)      μ ∈ R³ (…, 3)        μ × ξ                                 Rᵀμ
se(3)      (Π, Γ) ∈ R⁶          (Π×ω + Γ×v,  Γ×ω)   for ξ = (ω, v)    (Rᵀ(Π + Γ×r), RᵀΓ)
gl(d)      μ ∈ R^{d×d}          ξᵀμ − μξᵀ                             gᵀ μ g⁻ᵀ
so(d)      μ skew               μξ − ξμ                               gᵀ μ g
=========  ===================  ====================================  =========================

``coadjoint_exp(ξ, μ)`` = Ad*_{exp ξ} μ and ``coadjoint_cayley(ξ, μ)`` = Ad*_{cay ξ} μ with
cay(ξ) = (I − ξ/2)⁻¹(I + ξ/2) = exp(ξ) + O(|ξ|³).  Coadjoint orbits, hence the Casimirs
(|μ|² for so(3); |Γ|², Π·Γ for se(3); tr μᵏ for gl(d); tr μ^{2k} for so(d)), are preserved by
these maps up to round-off.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.linalg


# --------------------------------------------------------------------------------------------
# so(3) helpers (vectorised over leading axes)
# --------------------------------------------------------------------------------------------
def hat(v: np.ndarray) -> np.ndarray:
    """v ∈ R³ ↦ v̂ ∈ so(3) with v̂ w = v × w (vectorised over leading axes)."""
    v = np.asarray(v, dtype=float)
    out = np.zeros(v.shape[:-1] + (3, 3))
    out[..., 0, 1], out[..., 0, 2] = -v[..., 2], v[..., 1]
    out[..., 1, 0], out[..., 1, 2] = v[..., 2], -v[..., 0]
    out[..., 2, 0], out[..., 2, 1] = -v[..., 1], v[..., 0]
    return out


def vee(A: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hat` applied to the skew part of A."""
    A = np.asarray(A, dtype=float)
    return 0.5 * np.stack([A[..., 2, 1] - A[..., 1, 2], A[..., 0, 2] - A[..., 2, 0],
                           A[..., 1, 0] - A[..., 0, 1]], axis=-1)


def cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a × b over the last axis (faster than ``np.cross`` for small and batched arrays)."""
    a0, a1, a2 = a[..., 0], a[..., 1], a[..., 2]
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=-1)


def _rodrigues_coeffs(theta2: np.ndarray):
    """s = sin θ/θ and c = (1 − cos θ)/θ² = 2 sin²(θ/2)/θ² from θ² (Taylor near 0)."""
    theta = np.sqrt(theta2)
    small = theta < 1e-4
    ts = np.where(small, 1.0, theta)
    s = np.where(small, 1.0 - theta2 / 6.0 + theta2 ** 2 / 120.0, np.sin(ts) / ts)
    half = np.sin(0.5 * ts) / ts
    c = np.where(small, 0.5 - theta2 / 24.0 + theta2 ** 2 / 720.0, 2.0 * half * half)
    return s, c


def _rotate_one(w, v, cayley: bool) -> np.ndarray:
    """Scalar fast path of :func:`rotate` / :func:`cayley_rotate` for single 3-vectors."""
    w0, w1, w2 = w.tolist()
    v0, v1, v2 = v.tolist()
    t2 = w0 * w0 + w1 * w1 + w2 * w2
    if cayley:
        s = 4.0 / (4.0 + t2)
        c = 0.5 * s
    elif t2 < 1e-8:
        s, c = 1.0 - t2 / 6.0 + t2 * t2 / 120.0, 0.5 - t2 / 24.0 + t2 * t2 / 720.0
    else:
        t = math.sqrt(t2)
        s = math.sin(t) / t
        h = math.sin(0.5 * t) / t
        c = 2.0 * h * h
    x0, x1, x2 = w1 * v2 - w2 * v1, w2 * v0 - w0 * v2, w0 * v1 - w1 * v0
    y0, y1, y2 = w1 * x2 - w2 * x1, w2 * x0 - w0 * x2, w0 * x1 - w1 * x0
    return np.array([v0 + s * x0 + c * y0, v1 + s * x1 + c * y1, v2 + s * x2 + c * y2])


def rotate(w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """exp(ŵ) v by Rodrigues' formula  v + s w×v + c w×(w×v)  (vectorised)."""
    w, v = np.asarray(w, dtype=float), np.asarray(v, dtype=float)
    if w.shape == v.shape == (3,):
        return _rotate_one(w, v, cayley=False)
    s, c = _rodrigues_coeffs(np.sum(w * w, axis=-1))
    wv = cross(w, v)
    return v + s[..., None] * wv + c[..., None] * cross(w, wv)


def cayley_rotate(w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """cay(ŵ) v = v + 4/(4 + |w|²) (w×v + ½ w×(w×v))  (vectorised)."""
    w, v = np.asarray(w, dtype=float), np.asarray(v, dtype=float)
    if w.shape == v.shape == (3,):
        return _rotate_one(w, v, cayley=True)
    k = 4.0 / (4.0 + np.sum(w * w, axis=-1))
    wv = cross(w, v)
    return v + k[..., None] * (wv + 0.5 * cross(w, wv))


def rotation_matrix(w: np.ndarray) -> np.ndarray:
    """exp(ŵ) ∈ SO(3) as a matrix (vectorised)."""
    w = np.asarray(w, dtype=float)
    s, c = _rodrigues_coeffs(np.sum(w * w, axis=-1))
    W = hat(w)
    return np.eye(3) + s[..., None, None] * W + c[..., None, None] * (W @ W)


class SO3:
    """so(3)* ≅ R³: the free rigid body  Π' = Π × Ω,  Ω = ∂h/∂Π.  Casimir |μ|²."""

    name = "so(3)"
    dim = 3

    def ad_star(self, xi, mu):
        return cross(mu, xi)

    def coadjoint_exp(self, xi, mu):
        # Ad*_{exp ξ} μ = exp(ξ̂)ᵀ μ = exp(−ξ̂) μ
        return rotate(-np.asarray(xi, dtype=float), mu)

    def coadjoint_cayley(self, xi, mu):
        return cayley_rotate(-np.asarray(xi, dtype=float), mu)

    def exp(self, xi):
        return rotation_matrix(xi)

    def casimirs(self, mu):
        mu = np.asarray(mu, dtype=float)
        return np.sum(mu * mu, axis=-1)[..., None]


class SE3:
    """se(3)* = so(3)* ⋉ R³, states (Π, Γ): heavy top / Kirchhoff equations
    Π' = Π×ω + Γ×v,  Γ' = Γ×ω  with (ω, v) = ∂h/∂(Π, Γ).  Casimirs |Γ|², Π·Γ.

    exp(ω, v) = (R, r) with R = exp(ω̂), r = V(ω)v, V = I + c ω̂ + d ω̂²,
    c = (1 − cos θ)/θ², d = (θ − sin θ)/θ³;  cay(ω, v) = (cay(ω̂), (I − ω̂/2)⁻¹ v).
    """

    name = "se(3)"
    dim = 6

    @staticmethod
    def _split(z):
        z = np.asarray(z, dtype=float)
        return z[..., :3], z[..., 3:]

    def ad_star(self, xi, mu):
        w, v = self._split(xi)
        P, G = self._split(mu)
        return np.concatenate([cross(P, w) + cross(G, v), cross(G, w)], axis=-1)

    def _coadjoint(self, rot_T, r, mu):
        P, G = self._split(mu)
        return np.concatenate([rot_T(P + cross(G, r)), rot_T(G)], axis=-1)

    def coadjoint_exp(self, xi, mu):
        w, v = self._split(xi)
        if w.shape == (3,) and np.shape(mu) == (6,):
            return self._coadjoint_one(w, v, mu)
        th2 = np.sum(w * w, axis=-1)
        th = np.sqrt(th2)
        small = th < 1e-3
        ts = np.where(small, 1.0, th)
        d = np.where(small, 1.0 / 6.0 - th2 / 120.0 + th2 ** 2 / 5040.0,
                     (ts - np.sin(ts)) / ts ** 3)
        _, c = _rodrigues_coeffs(th2)
        wv = cross(w, v)
        r = v + c[..., None] * wv + d[..., None] * cross(w, wv)
        return self._coadjoint(lambda x: rotate(-w, x), r, mu)

    def _coadjoint_one(self, w, v, mu):
        """Scalar fast path of :meth:`coadjoint_exp` for a single state."""
        w0, w1, w2 = w.tolist()
        v0, v1, v2 = v.tolist()
        t2 = w0 * w0 + w1 * w1 + w2 * w2
        if t2 < 1e-6:
            c, d = 0.5 - t2 / 24.0 + t2 * t2 / 720.0, 1.0 / 6.0 - t2 / 120.0 + t2 * t2 / 5040.0
        else:
            t = math.sqrt(t2)
            h = math.sin(0.5 * t) / t
            c, d = 2.0 * h * h, (t - math.sin(t)) / (t * t2)
        x0, x1, x2 = w1 * v2 - w2 * v1, w2 * v0 - w0 * v2, w0 * v1 - w1 * v0
        y0, y1, y2 = w1 * x2 - w2 * x1, w2 * x0 - w0 * x2, w0 * x1 - w1 * x0
        r = np.array([v0 + c * x0 + d * y0, v1 + c * x1 + d * y1, v2 + c * x2 + d * y2])
        mu = np.asarray(mu, dtype=float)
        P, G = mu[:3], mu[3:]
        mw = -w
        return np.concatenate([_rotate_one(mw, P + cross(G, r), False),
                               _rotate_one(mw, G, False)])

    def coadjoint_cayley(self, xi, mu):
        w, v = self._split(xi)
        h = 0.5 * w
        hv = cross(h, v)
        r = v + (hv + cross(h, hv)) / (1.0 + np.sum(h * h, axis=-1))[..., None]
        return self._coadjoint(lambda x: cayley_rotate(-w, x), r, mu)

    def casimirs(self, mu):
        P, G = self._split(mu)
        return np.stack([np.sum(G * G, axis=-1), np.sum(P * G, axis=-1)], axis=-1)


class GL:
    """gl(d)* with the Frobenius pairing, states flattened (d²,):  μ' = ξᵀμ − μξᵀ, ξ = ∂h/∂μ.

    Ad*_g μ = gᵀ μ g⁻ᵀ is a similarity, so the Casimirs tr(μᵏ), k = 1..d, are preserved.
    """

    name = "gl(d)"

    def __init__(self, d: int):
        self.d = d
        self.dim = d * d

    def _mat(self, x):
        return np.asarray(x, dtype=float).reshape(self.d, self.d)

    def _alg(self, xi):
        return self._mat(xi)

    def ad_star(self, xi, mu):
        X, M = self._alg(xi), self._mat(mu)
        return (X.T @ M - M @ X.T).ravel()

    def _Ad_star(self, g, mu):
        M = self._mat(mu)
        return (g.T @ np.linalg.solve(g, M.T).T).ravel()   # gᵀ μ g⁻ᵀ

    def exp(self, xi):
        return scipy.linalg.expm(self._alg(xi))

    def cayley(self, xi):
        X = 0.5 * self._alg(xi)
        eye = np.eye(self.d)
        return np.linalg.solve(eye - X, eye + X)

    def coadjoint_exp(self, xi, mu):
        return self._Ad_star(self.exp(xi), mu)

    def coadjoint_cayley(self, xi, mu):
        return self._Ad_star(self.cayley(xi), mu)

    def casimirs(self, mu):
        M = self._mat(mu)
        out, P = [], np.eye(self.d)
        for _ in range(self.d):
            P = P @ M
            out.append(np.trace(P))
        return np.array(out)


class SO(GL):
    """so(d)* ≅ skew matrices (Frobenius pairing), states flattened (d²,):  μ' = μξ − ξμ.

    Generators are projected to their skew part (so ∂h/∂μ may be any matrix gradient);
    Ad*_g μ = gᵀμg with g ∈ SO(d).  Casimirs tr(μ^{2k}), k = 1..⌊d/2⌋.
    """

    name = "so(d)"

    def _alg(self, xi):
        X = self._mat(xi)
        return 0.5 * (X - X.T)

    def _Ad_star(self, g, mu):
        M = self._mat(mu)
        return (g.T @ M @ g).ravel()

    def casimirs(self, mu):
        M = self._mat(mu)
        M2 = M @ M
        out, P = [], np.eye(self.d)
        for _ in range(self.d // 2):
            P = P @ M2
            out.append(np.trace(P))
        return np.array(out)
