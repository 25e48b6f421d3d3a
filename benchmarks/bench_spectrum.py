"""The spectrum of the sweep-preconditioned Newton operator, and what a coarse space-time
correction does to it (dense linear algebra on a small problem; serial).

    bin/fem-env python3 benchmarks/bench_spectrum.py [--cells 12] [--steps 6]

The Newton system K of the congested problem of benchmarks/bench_hjb_fp.py (2D P1, CN,
G = ρ²/2) at its solution, the sweep preconditioner M = K without the congestion blocks
(the ρ–ρ blocks of the HJB rows; kkt_pc.py's M with exact per-step solves), and a two-grid
correction: Π = (P1 interpolation from a mesh with half the cells) ⊗ (linear interpolation
in time from half the steps) on the increments (δρ⁰ = 0 and δu(T) = 0 at the fixed ends),
the Galerkin coarse operator K_c = ΠᵀKΠ, and the multiplicative preconditioner
B = M⁻¹ + ΠK_c⁻¹Πᵀ(I − KM⁻¹) (one sweep, one product with K and one coarse solve).
Printed: the eigenvalues of M⁻¹K and of BK (their distance from 1), and the reduction per
step of the stationary iterations e ← (I − M⁻¹K)e and e ← (I − BK)e from a random start.
The Krylov method converges at a rate set by that spread; docs/performance.md, "Where the
Newton time goes".  (2028 unknowns: ≈ 1 minute, mostly the dense eigenvalues.)
"""
from __future__ import annotations

import argparse

import numpy as np


def interpolation(p, pc, Lc):
    """Π: fine space-time increments ← coarse ones (dense, for the small sizes here)."""
    from fem_mfc.solvers.nested import _interpolation_matrix, _weights
    Ps = _interpolation_matrix(pc.space, p.space).toarray()
    N, Nc, nl, nlc = p.steps, pc.steps, Ps.shape[0], Ps.shape[1]
    Pi = np.zeros((2 * N * nl, 2 * Nc * nlc))
    tu = np.array([pc.u_time(m) for m in range(Nc)] + [pc.T])       # δu(T) = 0 last
    tr = np.array([0.0] + [pc.rho_time(m) for m in range(1, Nc + 1)])  # δρ⁰ = 0 first

    def put(f, nodes, t, index):
        i, j, w = _weights(nodes, t)                  # the nested-iteration transfer's
        for m, wm in ((i, 1 - w), (j, w)):
            g = index(m)
            if g is not None and wm:
                Pi[f * nl:(f + 1) * nl, g * nlc:(g + 1) * nlc] += wm * Ps
    for n in range(N):
        put(2 * n, tu, p.u_time(n), lambda m: Lc.index("u", m) if m < Nc else None)
    for n in range(1, N + 1):
        put(2 * n - 1, tr, p.rho_time(n), lambda m: Lc.index("rho", m) if m >= 1 else None)
    return Pi


def spectra(cells: int, steps: int) -> dict:
    """{name: (eigenvalues, stationary reduction per step)} of M⁻¹K and BK, and the sizes."""
    from bench_hjb_fp import problem

    from fem_mfc.solvers.newton import make_system, newton
    from fem_mfc.solvers.spacetime import SpaceTime
    p = problem(cells, steps, True)
    r = newton(p, rtol=1e-10)
    st = make_system(p)
    st.assign(r.rho, r.u)
    K = st.jacobian(None).convert("dense").getDenseArray().copy()
    L = st.layout
    rho = np.concatenate([np.arange(L.slice(f).start, L.slice(f).stop)
                          for f in L.forward_fields()])
    M = K.copy()
    M[np.ix_(rho, rho)] = 0.0                      # the sweep drops the congestion blocks
    n = K.shape[0]
    Minv = np.linalg.inv(M)
    pc = problem(cells // 2, (steps + 1) // 2, True)
    Pi = interpolation(p, pc, SpaceTime(pc).layout)
    Kc = Pi.T @ K @ Pi
    B = Minv + Pi @ np.linalg.solve(Kc, Pi.T @ (np.eye(n) - K @ Minv))
    out = {"sizes": (p.space.dofmap.index_map.size_global, p.steps, n,
                     pc.space.dofmap.index_map.size_global, pc.steps)}
    rng = np.random.default_rng(0)
    for name, P in (("sweep M", Minv), ("sweep + coarse B", B)):
        e = rng.standard_normal(n)
        E = np.eye(n) - P @ K
        norms = []
        for _ in range(8):
            e = E @ e
            norms.append(np.linalg.norm(e))
        out[name] = (np.linalg.eigvals(P @ K), norms[-1] / norms[-2])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=12)
    ap.add_argument("--steps", type=int, default=6)
    a = ap.parse_args()
    out = spectra(a.cells, a.steps)
    nd, N, n, ndc, Nc = out["sizes"]
    print(f"{nd} dofs x {N} steps = {n} unknowns; coarse {ndc} x {Nc}")
    for name in ("sweep M", "sweep + coarse B"):
        ev, rate = out[name]
        d = np.sort(np.abs(ev - 1))[::-1]
        print(f"{name:17s} eigenvalues: Re in [{ev.real.min():.3f}, {ev.real.max():.3f}], "
              f"max|Im| {np.abs(ev.imag).max():.1e}; |λ−1| > 0.01: {(d > 0.01).sum()}, "
              f"> 0.1: {(d > 0.1).sum()} of {n}; largest |λ−1| {np.round(d[:6], 3).tolist()}; "
              f"stationary reduction per step {rate:.3f}")


if __name__ == "__main__":
    main()
