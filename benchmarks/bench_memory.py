"""Where the memory of the all-at-once Newton solve goes, stage by stage, in B per DOF·step.

    bin/fem-env python3 benchmarks/bench_memory.py [--cells 128,244] [--steps 50]
        [--before DIR] [--guess trivial]

The congested 2D P1 problem of ``bench_hjb_fp.py`` (G = ρ²/2, Crank–Nicolson; 128 cells:
16,641 dofs, 244 cells: 60,025 dofs), Newton on the sweep path from the trivial guess, each
size in a fresh serial process after a small untimed solve (forms compiled, libraries
loaded).  Resident memory (``/proc/self/statm``) is sampled every 2 ms and on entry to and
exit from the solver's parts; every rise of the high-water mark above the memory before the
solve is charged to the part running then:

* states: the space-time system (u, ρ at every level: the storage floor is 16 B);
* blocks: the Jacobian blocks of all levels (``KKTOperator``: its block grid, E, products);
* assembly: reassembly at new states, affine tables, input memos (residual, ``update``);
* factors: per-step factorisations of the sweep preconditioner (``SweepPC.setUp``);
* vectors: everything else during the solve — PETSc's Krylov basis and SNES/line-search
  work vectors, and ours (shown also as a count of space-time vectors of 16 B per DOF·step);
* peak: the process's peak (ru_maxrss) above the memory before the solve, and the process's
  memory before the solve (libraries, mesh, forms: the fixed part).

Memory does not depend on the machine's load.  ``--before DIR`` measures the tree in DIR too
(e.g. ``git archive main | tar -x -C /tmp/before``) in the same run and prints both side by
side, with the Newton/Krylov iterations and J of each (the same iterates must give the same
counts and J).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = ("states", "blocks", "assembly", "factors", "vectors")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Charges:
    """High-water-mark rises charged to the stage running (a stack of stages)."""

    def __init__(self):
        self.base = self.high = rss()
        self.stack = ["vectors"]
        self.charged = dict.fromkeys(STAGES, 0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def sample(self):
        with self._lock:
            now = rss()
            if now > self.high:
                self.charged[self.stack[-1]] += now - self.high
                self.high = now

    def _run(self):
        while not self._stop.wait(0.002):
            self.sample()

    def enter(self, stage):
        self.sample()
        with self._lock:
            self.stack.append(stage)

    def leave(self):
        self.sample()
        with self._lock:
            self.stack.pop()

    def stop(self):
        self._stop.set()
        self._t.join()
        self.sample()


def wrap(cls, name, stage, charges, seen=None):
    """Charge what ``cls.name`` allocates to ``stage`` (``seen``: collect the instances)."""
    f = getattr(cls, name)

    def wrapped(self, *a, **k):
        if seen is not None:
            seen.append(self)
        charges[0].enter(stage)
        try:
            return f(self, *a, **k)
        finally:
            charges[0].leave()
    setattr(cls, name, wrapped)


def problem(cells, steps, coupling=None):
    """bench_hjb_fp's congested problem, or bench_matrix's with ``coupling`` (mftc, mfg,
    attractive)."""
    if coupling:
        from bench_matrix import problem as matrix_problem
        return matrix_problem(2, 1, cells, steps, coupling)
    from bench_hjb_fp import problem as make  # beside this script (its folder is first)
    return make(cells, steps, True)


def child(a):
    from petsc4py import PETSc

    from fem_mfc.solvers import kkt, kkt_pc, spacetime
    from fem_mfc.solvers.newton import newton
    newton(problem(8, 4))                      # compile, load, warm up
    charges = [None]
    pcs = []
    wrap(kkt.KKTOperator, "__init__", "blocks", charges)
    wrap(kkt.KKTOperator, "update", "assembly", charges)
    wrap(spacetime.SpaceTime, "residual", "assembly", charges)
    wrap(spacetime.SpaceTime, "__init__", "states", charges)
    wrap(kkt_pc.SweepPC, "setUp", "factors", charges, pcs)
    p = problem(a.cells, a.steps, a.coupling)
    n = p.space.dofmap.index_map.size_global
    PETSc.garbage_cleanup()
    before = rss()
    charges[0] = c = Charges()
    t0 = time.perf_counter()
    r = newton(p, linear="sweep", guess=a.guess,
               petsc_options=None if a.krylov == "auto" else {"newton_krylov": a.krylov})
    seconds = time.perf_counter() - t0
    c.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    pc = pcs[-1] if pcs else None
    out = {"dofs": n, "steps": a.steps, "before_MB": before / 2 ** 20,
           "peak": peak - before, "charged": c.charged, "seconds": seconds,
           "newton": r.iterations, "krylov": [h["ksp_its"] for h in r.history
                                              if "ksp_its" in h],
           "J": r.J, "residual": r.residual,
           "factorisations": getattr(pc, "factorisations", None)}
    print("RESULT " + json.dumps(out), flush=True)


def run(tree: Path, cells: int, a) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--cells", str(cells),
           "--steps", str(a.steps), "--guess", a.guess, "--krylov", a.krylov]
    if a.coupling:
        cmd += ["--coupling", a.coupling]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=tree)
    line = [s for s in out.stdout.splitlines() if s.startswith("RESULT ")][-1]
    return json.loads(line[7:])


def table(results: list) -> str:
    """One column per (tree, size): B per DOF·step per stage."""
    head = ["stage"] + [f"{name} {r['dofs']:,}×{r['steps']}" for name, r in results]
    rows = []
    for s in STAGES:
        rows.append([s] + [f"{r['charged'][s] / (r['dofs'] * r['steps']):.0f}"
                           for _, r in results])
    rows.append(["  (vectors as space-time vectors of 16 B)"]
                + [f"{r['charged']['vectors'] / (16 * r['dofs'] * r['steps']):.1f}"
                   for _, r in results])
    rows.append(["**peak**"] + [f"**{r['peak'] / (r['dofs'] * r['steps']):.0f}**"
                                for _, r in results])
    rows.append(["peak MB (+ MB before the solve)"]
                + [f"{r['peak'] / 2 ** 20:.0f} (+{r['before_MB']:.0f})" for _, r in results])
    rows.append(["Newton / Krylov its"] + [f"{r['newton']} / {sum(r['krylov'])} {r['krylov']}"
                                            for _, r in results])
    rows.append(["J"] + [f"{r['J']:.12f}" for _, r in results])
    rows.append(["factorisations"] + [str(r["factorisations"]) for _, r in results])
    rows.append(["solve s (load-dependent)"] + [f"{r['seconds']:.1f}" for _, r in results])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default="128,244")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guess", default="trivial")
    ap.add_argument("--krylov", default="auto", help="newton_krylov: auto | gmres | fgmres")
    ap.add_argument("--coupling", help="bench_matrix.py's problem with this coupling "
                    "(mftc, mfg, attractive) instead of bench_hjb_fp.py's")
    ap.add_argument("--before", help="another tree to measure in the same run")
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        a.cells = int(a.cells)
        return child(a)
    trees = ([("before", Path(a.before).resolve())] if a.before else []) \
        + [("after" if a.before else "this", HERE.parent)]
    results = []
    for cells in map(int, a.cells.split(",")):
        for name, tree in trees:
            results.append((name, run(tree, cells, a)))
            print(f"{name} {cells} cells: {json.dumps(results[-1][1])}", flush=True)
    print(table(results))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
