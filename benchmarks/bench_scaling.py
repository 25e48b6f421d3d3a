"""Strong and weak scaling of Cole–Hopf and Newton on 1 and 2 ranks, side by side in one run.

    bin/fem-env python3 benchmarks/bench_scaling.py [--cases 2d,3d] [--steps 20]
        [--ranks 1,2] [--kinds auto,lu,mumps,ilu,amg] [--paths cole-hopf,newton]
        [--weak] [--repeat 2] [--out results/bench_scaling]          (make bench-scaling)

Cases (the problem of benchmarks/bench_matrix.py: CN, σ = 0.6, congested mftc G = ρ²/2 for
Newton, G = 0 for Cole–Hopf): "2d" = P1 on a 500 × 500 rectangle (251k dofs), "3d" = P1 on a
46³ box (104k dofs), 20 steps; "2d-small"/"3d-small" (a quarter of the dofs) for a quick look.
``--weak`` adds, per rank count r, the case whose dofs per rank equal the 1-rank size of the
"-small" case (r × the dofs of "2d-small"/"3d-small").

Per-step solver kinds (:mod:`fem_mfc.solvers.steps`): "auto" (the rule of
:func:`fem_mfc.solvers.auto.step_kind`, recorded), "lu" (PETSc LU on 1 rank, the same LU on
every rank on 2–4 ranks), "mumps" (MUMPS LU distributed over the ranks), "ilu" (GMRES +
ILU(0), in parallel additive Schwarz with overlap 1), "bjacobi" (GMRES + block-Jacobi ILU(0),
no overlap), "amg" (GMRES + hypre BoomerAMG).

For every (case, ranks) the script relaunches itself (``mpirun -n r``) and prints, per path
and kind: the solve time (wall, max over ranks, min and median of --repeat), DOF·steps/s,
Newton and Krylov iterations, J, and the limit proxy measured in the same process at the same
size: ``steps`` backward-Euler heat steps with the same per-step solver kind
(twice that for Cole–Hopf's two sweeps) and the ratio of the solve to
it.  The table at the end puts 1 and 2 ranks side by side: speed-up = time(1) / time(r) of the
same path and kind, and of the best kind on each side.  Results in OUT/scaling.json.
Timings on a shared machine are noisy: the ratios within one run are what to compare.
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

HERE = Path(__file__).resolve().parent

CASES = {"2d": (2, 500), "3d": (3, 46), "2d-small": (2, 250), "3d-small": (3, 29)}
KIND_OPTIONS = {"auto": {}, "lu": {"step": "lu"}, "ilu": {"step": "ilu"},
                "amg": {"step": "amg"},
                # the parallel ILU before ASM: block Jacobi, ILU(0) per rank without overlap
                "bjacobi": {"step": "ilu", "mfc_ch_pc_type": "bjacobi",
                            "mfc_sweep_pc_type": "bjacobi", "bench_heat_pc_type": "bjacobi"},
                "mumps": {"step": "lu", "mfc_ch_pc_type": "lu", "mfc_sweep_pc_type": "lu",
                          "mfc_ch_pc_factor_mat_solver_type": "mumps",
                          "mfc_sweep_pc_factor_mat_solver_type": "mumps",
                          "bench_heat_pc_type": "lu",
                          "bench_heat_pc_factor_mat_solver_type": "mumps"}}


def child(a) -> None:
    from mpi4py import MPI
    from petsc4py import PETSc

    from bench_matrix import heat_proxy, problem

    from fem_mfc import options
    from fem_mfc.solvers import solve
    from fem_mfc.solvers.auto import step_kind
    comm = MPI.COMM_WORLD
    dim, cells = a.dim, a.cells
    rows = []
    for kind in a.kinds.split(","):
        o = dict(KIND_OPTIONS[kind])
        step = o.pop("step", "auto")
        heat = {k: v for k, v in o.items() if k.startswith("bench_heat_")}
        for path in a.paths.split(","):
            coupling = "none" if path == "cole-hopf" else "mftc"
            p = problem(dim, 1, cells, a.steps, coupling)
            n = p.space.dofmap.index_map.size_global
            proxy_kind = step_kind(n, dim, comm.size) if step == "auto" else step
            times, proxies = [], []
            for _ in range(a.repeat):
                with options.inserted(settings={k: v for k, v in o.items()
                                                if not k.startswith("bench_heat_")}):
                    comm.Barrier()
                    t0 = time.perf_counter()
                    r = solve(p, "cole-hopf" if path == "cole-hopf" else "newton",
                              linear="sweep", step=step, strict=False)
                    times.append(comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
                with options.inserted(settings=heat):
                    proxies.append(heat_proxy(p, proxy_kind) * (2 if path == "cole-hopf" else 1))
                PETSc.garbage_cleanup()
            kry = [h.get("ksp_its") for h in r.history if h.get("ksp_its") is not None]
            rows.append({"dim": dim, "cells": cells, "dofs": n, "steps": a.steps,
                         "ranks": comm.size, "path": path, "kind": kind,
                         "auto_kind": step_kind(n, dim, comm.size) if kind == "auto" else kind,
                         "time_min": min(times), "time_median": statistics.median(times),
                         "proxy_s": min(proxies), "newton_its": r.iterations,
                         "krylov_its": kry, "J": r.J, "converged": r.converged})
            if comm.rank == 0:
                w = rows[-1]
                print(f"[{comm.size} rank{'s' * (comm.size > 1)}] {dim}D {n} dofs x {a.steps} "
                      f"{path:9s} {kind:5s} ({w['auto_kind']}) time min {w['time_min']:.2f}s "
                      f"median {w['time_median']:.2f}s  {n * a.steps / w['time_min']:.3g} "
                      f"DOF*steps/s  proxy {w['proxy_s']:.2f}s  ratio "
                      f"{w['time_min'] / w['proxy_s']:.1f}  its {r.iterations} {kry} "
                      f"J={r.J:.10g}", flush=True)
    if comm.rank == 0:
        with open(a.result, "w") as f:
            json.dump(rows, f)


def table(rows: list) -> str:
    """Markdown: one line per (case, path, kind), times per rank count and speed-ups."""
    ranks = sorted({r["ranks"] for r in rows})
    key = lambda r: (r["dim"], r["dofs"], r["path"], r["kind"])       # noqa: E731
    groups: dict = {}
    for r in rows:
        groups.setdefault(key(r), {})[r["ranks"]] = r
    head = ("| dim | dofs | steps | path | kind | " + " | ".join(f"{k} rank(s) s" for k in ranks)
            + " | " + " | ".join(f"speed-up {k}" for k in ranks[1:])
            + " | ratio to proxy (" + ", ".join(map(str, ranks)) + ") | J agrees |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (dim, dofs, path, kind), g in sorted(groups.items()):
        one = g.get(ranks[0])
        ts = [f"{g[k]['time_min']:.2f}" if k in g else "–" for k in ranks]
        sp = [f"{one['time_min'] / g[k]['time_min']:.2f}" if one and k in g else "–"
              for k in ranks[1:]]
        rp = [f"{g[k]['time_min'] / g[k]['proxy_s']:.1f}" if k in g else "–" for k in ranks]
        if one is None or len(g) < 2:         # a weak-scaling size: nothing to compare
            agree = "–"
        else:
            agree = "yes" if all(abs(g[k]["J"] - one["J"]) <= 1e-8 * abs(one["J"])
                                 for k in g) else "NO"
        steps = next(iter(g.values()))["steps"]
        lines.append(f"| {dim} | {dofs} | {steps} | {path} | {kind} "
                     f"({'/'.join(g[k]['auto_kind'] for k in ranks if k in g)}) | "
                     + " | ".join(ts) + " | " + " | ".join(sp) + " | " + ", ".join(rp)
                     + f" | {agree} |")
    return "\n".join(lines)


def weak_table(rows: list) -> str:
    """Markdown: weak scaling — the 1-rank run against the r-rank runs of ≈ r × its dofs
    (within 10 %), same path and kind: efficiency = time(1) / time(r) (1 is ideal) and
    DOF·steps/s per rank.  Empty when there are no such pairs."""
    ones = [r for r in rows if r["ranks"] == 1]
    lines = []
    for o in sorted(ones, key=lambda r: (r["dim"], r["dofs"], r["path"], r["kind"])):
        for r in rows:
            if (r["ranks"] > 1 and (r["dim"], r["path"], r["kind"]) == (o["dim"], o["path"],
                                                                          o["kind"])
                    and abs(r["dofs"] / (r["ranks"] * o["dofs"]) - 1) < 0.1):
                rate = [x["dofs"] * x["steps"] / x["time_min"] / x["ranks"] for x in (o, r)]
                lines.append(f"| {o['dim']} | {o['path']} | {o['kind']} | {o['dofs']} → "
                             f"{r['dofs']} | 1 → {r['ranks']} | {o['time_min']:.2f} → "
                             f"{r['time_min']:.2f} | {o['time_min'] / r['time_min']:.2f} | "
                             f"{rate[0]:.3g} → {rate[1]:.3g} |")
    if not lines:
        return ""
    head = ("| dim | path | kind | dofs | ranks | s | weak efficiency | "
            "DOF·steps/s per rank |")
    return "\n".join([head, "|" + "---|" * (head.count("|") - 1)] + lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="2d,3d")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--kinds", default="auto,lu,mumps,ilu,amg")
    ap.add_argument("--paths", default="cole-hopf,newton")
    ap.add_argument("--weak", action="store_true")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default="results/bench_scaling")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dim", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cells", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMPI_COMM_WORLD", "PMIX_", "OMPI_MCA_ess", "OMPI_MCA_orte"))}
    env["PYTHONPATH"] = str(HERE.parent) + os.pathsep + env.get("PYTHONPATH", "")
    jobs = []
    for case in a.cases.split(","):
        dim, cells = CASES[case]
        for r in map(int, a.ranks.split(",")):
            jobs.append((dim, cells, r))
            if a.weak and r > 1:         # dofs per rank of the 1-rank "-small" case
                small = CASES[f"{dim}d-small"][1]
                jobs.append((dim, round(small * r ** (1 / dim)), r))
        if a.weak:
            jobs.append((dim, CASES[f"{dim}d-small"][1], 1))
    rows = []
    for i, (dim, cells, r) in enumerate(dict.fromkeys(jobs)):
        res = out / f"part{i}.json"
        args = [__file__, "--child", "--dim", str(dim), "--cells", str(cells),
                "--steps", str(a.steps), "--kinds", a.kinds, "--paths", a.paths,
                "--repeat", str(a.repeat), "--result", str(res)]
        cmd = [sys.executable, *args]
        if r > 1:
            cmd = ["mpirun", "-n", str(r), *cmd]
        subprocess.run(cmd, env=env, check=True)
        rows += json.loads(res.read_text())
        res.unlink()
    (out / "scaling.json").write_text(json.dumps(rows, indent=1))
    text = table(rows)
    weak = weak_table(rows)
    if weak:
        text += "\n\nWeak scaling:\n\n" + weak
    (out / "scaling.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
