"""Would time-parallel sweeps pay on 2 ranks?  Krylov iterations of the sweep preconditioner
and of its time-parallel variants, serially, in one run.

    bin/fem-env python3 benchmarks/bench_time_parallel.py [--cells 64,128] [--steps 50]
        [--chunks 2,4,10] [--quick]

The sweep preconditioner (:mod:`fem_mfc.solvers.kkt_pc`) is a backward sweep of N per-step
solves followed by a forward sweep of N; both are sequential in time, and the forward sweep
needs the backward one's result from its first step on.  Two ways to give each of P ranks
its own share of a preconditioner application, measured here by the Krylov iterations they
cost (the operator and Newton are unchanged, so are the solution and J):

* **time chunks** (``--chunks P``): the time interval cut into P chunks, each rank sweeping
  its own chunk backward then forward, the couplings between chunks dropped (block Jacobi in
  time over sweep-preconditioned chunks; a rank's work per application ÷ P);
* **concurrent sweeps**: the forward sweep without the backward sweep's δu (M = [0 P; Q 0]):
  the two sweeps independent, one per rank (work per application ÷ 2).

A variant pays on P ranks only if its Krylov count grows by less than P× (less, in fact:
the products, residuals and set-ups do not shrink).  The problem is bench_hjb_fp.py's:
congested 2D P1 (G = ρ²/2), Crank–Nicolson, Newton from the trivial guess, the sweep path.
Iterations do not depend on the machine's load; the times printed are serial and only show
the extra iterations' cost.
"""
from __future__ import annotations

import argparse
import sys
import time


def variant(name: str, P: int = 1):
    """Patch the sweep's "known column" rules of SpaceTimeLayout for a variant."""
    from fem_mfc.solvers import layout as lay
    L = lay.SpaceTimeLayout
    base_bw, base_fw = L.__dict__["before_in_backward_sweep"], L.__dict__[
        "before_in_forward_sweep"]

    def chunk(self, f):
        kind, n = self.field(f)
        interval = n if kind == lay.BACKWARD else n - 1
        return interval * P // self.N

    if name == "sweep":
        bw, fw = base_bw, base_fw
    elif name == "chunks":
        def bw(self, c, r):
            return base_bw(self, c, r) and chunk(self, c) == chunk(self, self.pivot(r))

        def fw(self, c, r):
            return base_fw(self, c, r) and chunk(self, c) == chunk(self, self.pivot(r))
    elif name == "concurrent":
        bw = base_bw

        def fw(self, c, r):
            return base_fw(self, c, r) and self.is_forward(c)
    else:
        raise ValueError(name)
    return bw, fw


def rows(cells: int, steps: int, chunks=(2, 4, 10)) -> list:
    """One dict per variant: Newton's and Krylov's iterations, J, serial seconds."""
    from bench_hjb_fp import problem  # beside this script

    from fem_mfc.solvers import layout as lay
    from fem_mfc.solvers import solve
    L = lay.SpaceTimeLayout
    variants = ([("sweep", 1, "sweep (reference)")]
                + [("chunks", P, f"{P} time chunks") for P in chunks]
                + [("concurrent", 2, "concurrent sweeps")])
    saved = L.__dict__["before_in_backward_sweep"], L.__dict__["before_in_forward_sweep"]
    out = []
    for name, P, label in variants:
        L.before_in_backward_sweep, L.before_in_forward_sweep = variant(name, P)
        try:
            p = problem(cells, steps, True)
            t0 = time.perf_counter()
            r = solve(p, "newton", linear="sweep", strict=False)
            dt = time.perf_counter() - t0
        finally:
            L.before_in_backward_sweep, L.before_in_forward_sweep = saved
        kry = [h["ksp_its"] for h in r.history if "ksp_its" in h]
        out.append({"variant": name, "label": label, "ranks": P,
                    "dofs": p.space.dofmap.index_map.size_global, "steps": steps,
                    "newton": r.iterations, "krylov": kry, "J": r.J,
                    "converged": r.converged, "seconds": dt})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default="64,128")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--chunks", default="2,4,10")
    ap.add_argument("--quick", action="store_true", help="32 cells, 20 steps")
    a = ap.parse_args()
    if a.quick:
        a.cells, a.steps = "32", 20
    from bench_hjb_fp import problem

    from fem_mfc.solvers import solve
    solve(problem(8, 4, True), "newton", linear="sweep")          # warm-up (JIT, imports)
    print("| dofs | N | preconditioner | ranks it is for | Newton | Krylov per step | "
          "Krylov | × reference | serial s | J |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for cells in (int(c) for c in a.cells.split(",")):
        out = rows(cells, a.steps, tuple(int(P) for P in a.chunks.split(",")))
        ref = sum(out[0]["krylov"])
        for o in out:
            k = sum(o["krylov"])
            print(f"| {o['dofs']:,} | {o['steps']} | {o['label']} | {o['ranks']} | "
                  f"{o['newton']} | {o['krylov']} | {k} | {k / ref:.2f} | {o['seconds']:.2f} "
                  f"| {o['J']:.12f}{'' if o['converged'] else ' (not converged)'} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
