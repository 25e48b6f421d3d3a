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
A third variant keeps part of the congestion in the sweep by a feedback, a linearised
Riccati relation: the unknowns change as δu = Σδρ + w (Σ maps ρ^{n+1} to uⁿ by
Σₙ = s·rₙ(M + 2rₙεK)⁻¹M, rₙ = T − t_{n+½} the time to go — the solution of the Riccati
equation −Σ' = G'' − 2εΔΣ without its quadratic term, Padé-approximated; dense here, with
``--feedback s``), and the sweep drops the ρ–ρ block of the changed system: the backward sweep
gives w, the forward sweep solves the pivots P + AΣ for δρ.
Printed: the eigenvalues of M⁻¹K and of BK (their distance from 1), the reduction per
step of the stationary iterations e ← (I − M⁻¹K)e and e ← (I − BK)e from a random start,
and the iterations of full GMRES to 1e-10 from a random right-hand side.
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


def gmres_iterations(A, tol=1e-10, most=200) -> int:
    """Iterations of full GMRES (dense Arnoldi) on A x = b, b random, to ‖r‖/‖b‖ < tol."""
    n = A.shape[0]
    b = np.random.default_rng(1).standard_normal(n)
    Q, H = np.zeros((n, most + 1)), np.zeros((most + 1, most))
    beta = np.linalg.norm(b)
    Q[:, 0] = b / beta
    for k in range(most):
        w = A @ Q[:, k]
        for j in range(k + 1):
            H[j, k] = Q[:, j] @ w
            w -= H[j, k] * Q[:, j]
        H[k + 1, k] = np.linalg.norm(w)
        Q[:, k + 1] = w / H[k + 1, k]
        e1 = np.zeros(k + 2)
        e1[0] = beta
        y = np.linalg.lstsq(H[:k + 2, :k + 1], e1, rcond=None)[0]
        if np.linalg.norm(H[:k + 2, :k + 1] @ y - e1) < tol * beta:
            return k + 1
    return most


def feedback(p, L, s: float) -> np.ndarray:
    """Σ (the u rows × the ρ columns): uⁿ ← s·rₙ(M + 2rₙεK)⁻¹M ρ^{n+1}, rₙ = T − t_{n+½}."""
    import dolfinx.fem.petsc
    import ufl
    a, b = ufl.TrialFunction(p.space), ufl.TestFunction(p.space)

    def dense(form):
        A = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(form))
        A.assemble()
        return A.convert("dense").getDenseArray().copy()
    M = dense(a * b * ufl.dx)
    K = dense(ufl.inner(ufl.grad(a), ufl.grad(b)) * ufl.dx)
    N, nl = L.N, L.nl
    S = np.zeros((N * nl, N * nl))
    for m in range(N):
        r = p.T - (m + 0.5) * p.T / N
        S[m * nl:(m + 1) * nl, m * nl:(m + 1) * nl] = s * r * np.linalg.solve(
            M + 2 * r * p.eps * K, M)
    return S


def spectra(cells: int, steps: int, s: float = 1.2) -> dict:
    """{name: (eigenvalues, stationary reduction per step, GMRES iterations)} of M⁻¹K, BK and
    the sweep with the feedback Σ, and the sizes."""
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
    u = np.concatenate([np.arange(L.slice(f).start, L.slice(f).stop)
                        for f in L.backward_fields()])
    Tm = np.eye(n)
    Tm[np.ix_(u, rho)] = feedback(p, L, s)         # δu = Σδρ + w
    MS = K @ Tm
    MS[np.ix_(rho, rho)] = 0.0                     # the sweep of the changed system
    BS = Tm @ np.linalg.inv(MS)
    out = {"sizes": (p.space.dofmap.index_map.size_global, p.steps, n,
                     pc.space.dofmap.index_map.size_global, pc.steps)}
    rng = np.random.default_rng(0)
    for name, P in (("sweep M", Minv), ("sweep + coarse B", B), (f"feedback s={s:g}", BS)):
        e = rng.standard_normal(n)
        E = np.eye(n) - P @ K
        norms = []
        for _ in range(8):
            e = E @ e
            norms.append(np.linalg.norm(e))
        out[name] = (np.linalg.eigvals(P @ K), norms[-1] / norms[-2], gmres_iterations(P @ K))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=12)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--feedback", type=float, default=1.2,
                    help="s of the feedback variant (1.2: the smallest spread at 8-12 cells)")
    a = ap.parse_args()
    out = spectra(a.cells, a.steps, a.feedback)
    nd, N, n, ndc, Nc = out.pop("sizes")
    print(f"{nd} dofs x {N} steps = {n} unknowns; coarse {ndc} x {Nc}")
    for name, (ev, rate, its) in out.items():
        d = np.sort(np.abs(ev - 1))[::-1]
        print(f"{name:17s} eigenvalues: Re in [{ev.real.min():.3f}, {ev.real.max():.3f}], "
              f"max|Im| {np.abs(ev.imag).max():.1e}; |λ−1| > 0.01: {(d > 0.01).sum()}, "
              f"> 0.1: {(d > 0.1).sum()} of {n}; largest |λ−1| {np.round(d[:6], 3).tolist()}; "
              f"stationary reduction per step {rate:.3f}; GMRES to 1e-10: {its} iterations")


if __name__ == "__main__":
    main()
