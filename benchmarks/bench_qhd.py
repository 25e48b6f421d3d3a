"""All-at-once Newton on the same congested control problem: HJB–FP vs QHD vs Cole–Hopf pair.

Prints Newton iterations and wall time (after a warm-up solve that fills the JIT cache) for a
few 1D and 2D sizes.  A benchmark script, not a test: nothing is asserted.
Run: ``bin/fem-env python3 benchmarks/bench_qhd.py [--quick]``.
"""
from __future__ import annotations

import argparse
import time

from fem_mfc.equivalence import make_problem
from fem_mfc.solvers.cole_hopf_pair import solve_pair
from fem_mfc.solvers.newton import newton
from fem_mfc.solvers.qhd import solve_control

SOLVERS = {"hjb-fp": newton, "qhd": lambda p: solve_control(p)[0], "pair": solve_pair}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    sizes = [(1, 64), (2, 8)] if args.quick else [(1, 64), (1, 256), (2, 16), (2, 32)]
    for dim in sorted({d for d, _ in sizes}):                     # warm-up (JIT)
        for s in SOLVERS.values():
            s(make_problem(4, 2, dim))
    print(f"{'d':>2} {'cells':>6} {'steps':>6} {'unknowns':>9} | "
          + " | ".join(f"{k:>16}" for k in SOLVERS))
    for dim, cells in sizes:
        steps = max(cells // 2, 2)
        p = make_problem(cells, steps, dim)
        cols = []
        for s in SOLVERS.values():
            t0 = time.perf_counter()
            r = s(p)
            cols.append(f"{r.iterations:3d} it {time.perf_counter() - t0:7.2f} s")
        n = 2 * steps * p.space.dofmap.index_map.size_global
        print(f"{dim:>2} {cells:>6} {steps:>6} {n:>9} | " + " | ".join(f"{c:>16}" for c in cols))


if __name__ == "__main__":
    main()
