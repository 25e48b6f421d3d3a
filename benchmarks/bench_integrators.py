"""Benchmark of the structure-preserving integrators (not a test: prints tables).

1. Steps per second of every registered integrator on the free rigid body (so(3)*) and the
   pendulum (canonical), single-threaded pure Python/numpy.
2. Matched accuracy: for target errors at T = 20 on the rigid body, the cheapest step count of
   each fixed-step method (doubling sweep) and the loosest tolerance of scipy's RK45/DOP853 that
   reach the target; cost in vector-field evaluations and wall time, and the ratio to DOP853.
3. At that matched accuracy, the Casimir |Π|² error after a longer run (t = 400; nan when that
   would take more than 10⁵ fixed steps).

Run: bin/fem-env python3 benchmarks/bench_integrators.py [--quick]
"""
import argparse
import time

import numpy as np
from scipy.integrate import solve_ivp

from fem_mfc.integrators import examples as ex
from fem_mfc.integrators import get_integrator

INERTIA = (1.0, 2.0, 3.0)
M0 = np.array([1.0, 0.5, -0.3])


def steps_per_second(quick):
    rows = []
    cases = [("rigid body", ex.rigid_body(INERTIA), M0, 0.05,
              ["lphj1", "lphj2", "lphj4", "midpoint", "rk4", "backward-euler"]),
             ("pendulum", ex.pendulum(), np.array([1.5, 0.0]), 0.05,
              ["midpoint", "gf4", "triple-jump", "suzuki", "rk4", "backward-euler"])]
    n = 500 if quick else 5000
    for label, system, z0, tau, names in cases:
        for name in names:
            tr = get_integrator(name, system).run(z0, tau, n)
            rows.append((label, name, n / tr.wall, tr.nfev / n))
    print(f"\n{'system':<11} {'integrator':<15} {'steps/s':>10} {'evals/step':>11}")
    for r in rows:
        print(f"{r[0]:<11} {r[1]:<15} {r[2]:>10.0f} {r[3]:>11.1f}")


def fixed_step_cost(name, target, ref, T):
    n = 8
    while n <= 2 ** 17:
        system = ex.rigid_body(INERTIA)
        tr = get_integrator(name, system).run(M0, T / n, n)
        err = np.linalg.norm(tr.final - ref)
        if err <= target:
            return n, err, tr.nfev, tr.wall
        n *= 2 if err < 1e3 * target else 4
    return None


def adaptive_cost(method, target, ref, T):
    for tol in 10.0 ** -np.arange(3, 14):
        start = time.perf_counter()
        sol = solve_ivp(ex.rigid_body_rhs(INERTIA), (0, T), M0, method=method, rtol=tol,
                        atol=tol * 1e-2)
        wall = time.perf_counter() - start
        err = np.linalg.norm(sol.y[:, -1] - ref)
        if err <= target:
            return tol, err, sol.nfev, wall
    return None


def long_casimir(name, n_per_unit, T_long, max_steps=100_000):
    if T_long * n_per_unit > max_steps:
        return float("nan")
    system = ex.rigid_body(INERTIA)
    tr = get_integrator(name, system).run(M0, 1.0 / n_per_unit, int(T_long * n_per_unit),
                                          monitors=["casimirs"], store_every=10 ** 9)
    return float(tr.drift("casimirs")[-1, 0])


def long_casimir_adaptive(method, tol, T_long):
    sol = solve_ivp(ex.rigid_body_rhs(INERTIA), (0, T_long), M0, method=method, rtol=tol,
                    atol=tol * 1e-2)
    c = np.sum(sol.y[:, -1] ** 2)
    return abs(c - M0 @ M0) / (M0 @ M0)


def matched_accuracy(quick):
    T = 20.0
    T_long = 100.0 if quick else 400.0
    ref = solve_ivp(ex.rigid_body_rhs(INERTIA), (0, T), M0, method="DOP853", rtol=1e-13,
                    atol=1e-14).y[:, -1]
    targets = [1e-4, 1e-6] if quick else [1e-4, 1e-6, 1e-8]
    print(f"\nMatched accuracy on the rigid body, error at T = {T:g}; Casimir error at "
          f"t = {T_long:g} with the same step/tolerance")
    print(f"{'target':>7} {'method':<8} {'setting':>12} {'error':>9} {'evals':>8} {'wall[s]':>9} "
          f"{'evals/DOP853':>13} {'wall/DOP853':>12} {'Casimir(t)':>11}")
    for target in targets:
        rows = []
        for method in ("RK45", "DOP853"):
            r = adaptive_cost(method, target, ref, T)
            if r:
                rows.append((method, f"rtol={r[0]:.0e}", r[1], r[2], r[3],
                             long_casimir_adaptive(method, r[0], T_long)))
        for name in ("lphj2", "lphj4", "midpoint", "rk4"):
            r = fixed_step_cost(name, target, ref, T)
            if r:
                n = r[0]
                rows.append((name, f"n={n}", r[1], r[2], r[3], long_casimir(name, n / T, T_long)))
        dop = next(r for r in rows if r[0] == "DOP853")
        for r in rows:
            print(f"{target:>7.0e} {r[0]:<8} {r[1]:>12} {r[2]:>9.1e} {r[3]:>8d} {r[4]:>9.4f} "
                  f"{r[3] / dop[3]:>13.2f} {r[4] / dop[4]:>12.2f} {r[5]:>11.1e}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    steps_per_second(a.quick)
    matched_accuracy(a.quick)
