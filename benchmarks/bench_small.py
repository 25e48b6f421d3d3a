"""Small points of the solver core, two source trees against each other in one run.

    bin/fem-env python3 benchmarks/bench_small.py --trees before=/tmp/base,after=. \
        [--points 2:16,2:32,2:64,2:128,1:300,1:3000,3:6,3:12] [--steps 20]
        [--paths sweep,cole-hopf] [--repeat 3]

The measure is bench_matrix.py's: the problem of :func:`bench_matrix.problem` (P1, congested
``mftc`` for Newton, ``none`` for Cole–Hopf) is built outside the timing, then
:func:`bench_matrix.solve_point` is timed — set-up (forms, blocks, factorisations) and solve
— in a *warm* process: after one untimed solve of the same path at the smallest size of the
dimension's ladder with 4 steps (imports, JIT compilation).  Each timed solve runs in its own
process, the trees alternating (``--repeat`` rounds), so the load of a shared machine hits
both alike; the table gives min and median per point and tree, and the ratio of the medians.
A tree is a folder holding the package ``fem_mfc`` (e.g. ``git archive REV | tar -x -C DIR``
for an earlier revision), put first on ``PYTHONPATH`` of its processes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def child(a):
    # bench_matrix sits next to this script: the script's folder is on the import path
    import bench_matrix as bm

    import fem_mfc
    coupling = "none" if a.path == "cole-hopf" else "mftc"
    small = bm.CELLS[(a.dim, 1)][0]
    bm.solve_point(bm.problem(a.dim, 1, small, 4, coupling), a.path)        # warm-up
    p = bm.problem(a.dim, 1, a.cells, a.steps, coupling)
    t0 = time.perf_counter()
    r = bm.solve_point(p, a.path)
    dt = time.perf_counter() - t0
    kry = [h.get("ksp_its") for h in r.history if h.get("ksp_its") is not None]
    fac = [h.get("factorisations") for h in r.history if h.get("factorisations") is not None]
    print("RESULT " + json.dumps({
        "seconds": dt, "J": r.J, "newton": r.iterations, "krylov": sum(kry),
        "factorisations": fac[-1] if fac else None, "converged": r.converged,
        "ndofs": p.space.dofmap.index_map.size_global, "package": fem_mfc.__file__}),
        flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", default="after=.")
    ap.add_argument("--points", default="2:16,2:32,2:64,2:128,1:300,1:3000,3:6,3:12")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--paths", default="sweep,cole-hopf")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dim", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cells", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    trees = dict(t.split("=", 1) for t in a.trees.split(","))
    points = [tuple(map(int, p.split(":"))) for p in a.points.split(",")]
    paths = a.paths.split(",")
    env0 = {k: v for k, v in os.environ.items()
            if not k.startswith(("OMPI_COMM_WORLD", "PMIX_", "OMPI_MCA_ess", "OMPI_MCA_orte"))}
    rows = []
    for dim, cells in points:
        for path in paths:
            got = {name: [] for name in trees}
            for _ in range(a.repeat):
                for name, tree in trees.items():
                    env = dict(env0, PYTHONPATH=os.pathsep.join(
                        [str(Path(tree).resolve())] + [p for p in [env0.get("PYTHONPATH")] if p]))
                    cmd = [sys.executable, __file__, "--child", "--dim", str(dim), "--cells",
                           str(cells), "--path", path, "--steps", str(a.steps)]
                    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                    res = [json.loads(ln[7:]) for ln in out.stdout.splitlines()
                           if ln.startswith("RESULT ")]
                    if not res:
                        sys.exit(f"{name} {dim}D {cells} {path} failed:\n{out.stderr[-3000:]}")
                    got[name].append(res[0])
            row = {"dim": dim, "cells": cells, "ndofs": got[next(iter(trees))][0]["ndofs"],
                   "steps": a.steps, "path": path}
            for name, rs in got.items():
                ts = [r["seconds"] for r in rs]
                row[name] = {"min": min(ts), "median": statistics.median(ts), "J": rs[-1]["J"],
                             "newton": rs[-1]["newton"], "krylov": rs[-1]["krylov"],
                             "factorisations": rs[-1]["factorisations"],
                             "package": rs[-1]["package"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    names = list(trees)
    head = "| d | dofs | N | path | " + " | ".join(
        f"{n} min / median s | {n} Newton / Krylov / fact." for n in names)
    if len(names) == 2:
        head += f" | {names[1]} / {names[0]} (median) | ΔJ"
    print("\n" + head + " |")
    print("|" + "---|" * (4 + 2 * len(names) + (2 if len(names) == 2 else 0)))
    for r in rows:
        cells = [str(r["dim"]), f"{r['ndofs']:,}", str(r["steps"]), r["path"]]
        for n in names:
            v = r[n]
            cells += [f"{v['min']:.3f} / {v['median']:.3f}",
                      f"{v['newton']} / {v['krylov']} / {v['factorisations']}"]
        if len(names) == 2:
            x, y = r[names[0]], r[names[1]]
            cells += [f"{y['median'] / x['median']:.2f}", f"{abs(y['J'] - x['J']):.1e}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
