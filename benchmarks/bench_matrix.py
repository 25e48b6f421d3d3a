"""The solver core across the work range: dimension × degree × size × steps × coupling × path.

    bin/fem-env python3 benchmarks/bench_matrix.py [--dims 1,2,3] [--degrees 1,2]
        [--steps 20,100] [--couplings none,mftc,mfg,attractive] [--paths lu,sweep]
        [--max-dofs N] [--out results/bench_matrix] [--repeat 1] [--budget-s 600]
        [--memory-gb 20]                                       (make bench-matrix)

Problem (every dimension): Ω = [−1, 1]^d (interval / rectangle / box of the size's cells),
T = 1, σ = 0.6, Crank–Nicolson, ρ_0 a Gaussian at (−0.4, 0, …) of std 0.28,
Φ = (x0 − 0.5)² + Σ_{i>0} x_i², V = 0.2 x1² (d > 1); couplings: "none" (G = 0: the linear
Cole–Hopf sweeps and Newton), "mftc" (G = ρ²/2), "mfg" (G = ρ²/2, game coupling),
"attractive" (mfg, G = −0.05ρ²: an aggregation game).

Paths: "lu" (Newton, LU of the space-time matrix), "sweep" (Newton, Krylov + sweep
preconditioner) and, for G = 0, "cole-hopf" (two linear sweeps).  "auto" is recorded as the
path Newton's automatic rule chooses at that point (its time is that path's time, measured in
the same run) and its ratio to the fastest path measured.

Every point reports solve time (wall, max over ranks, best of --repeat), DOF·steps/s
(ndofs·steps/time), Newton and Krylov iterations, the peak resident memory of the solve above
the memory before it (sampled every 5 ms) per DOF·step, and the limit proxy measured in the
same process at the same size: ``steps`` backward-Euler heat steps (M + τεK)xⁿ⁺¹ = Mxⁿ with one
reused per-step factorisation (the cost of two linear sweeps is twice that), and the ratio of
the solve time to it.  A point is skipped — and the output says so — only when the estimate of
:mod:`fem_mfc.solvers.auto` puts its time above --budget-s or its memory (the LU's factors;
for the sweep path :func:`sweep_bytes`, measured per coupling) above --memory-gb.

Each (dimension, degree, size, steps) group runs in a fresh process (memory is measured per
group), after one untimed solve of every path on the smallest size of its ladder with 4 steps
(form compilation and imports are not part of any timing); results accumulate in
OUT/matrix.json, OUT/matrix.csv and OUT/matrix.png (throughput vs DOFs, one line per path and
dimension).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# cells per axis of the size ladder, per (dimension, degree): ≈ 300 … ≥ 250k dofs in 2D,
# ≥ 100k in 3D
CELLS = {(1, 1): [300, 3000, 30000, 300000], (1, 2): [150, 1500, 15000, 150000],
         (2, 1): [16, 32, 64, 128, 256, 512], (2, 2): [8, 16, 32, 64, 128, 256],
         (3, 1): [6, 12, 24, 32, 48], (3, 2): [4, 8, 16, 24]}
COUPLINGS = {"none": (None, "mftc"), "mftc": (0.5, "mftc"), "mfg": (0.5, "mfg"),
             "attractive": (-0.05, "mfg")}
BASE_MB = None


# Peak memory of the Newton sweep path in B per DOF·step (benchmarks/bench_memory.py, 2D P1,
# CN, fresh process; 16,641 × 50 for every coupling, 66,049 × 100 for mfg: 757 B with GMRES):
# states 16; Krylov/SNES vectors 481 (30 space-time vectors with FGMRES; GMRES, the default
# from newton.GMRES_FROM DOF·steps, keeps 11 fewer); level blocks 165 for a congestion block
# shared by all levels (mftc, G = ρ²/2) and 226 for the game couplings (state-dependent ρ–ρ
# blocks, one per time interval with Crank–Nicolson: kkt.py's midpoint coupling; 361 with
# three per level before it); assembly tables 43 / 101 and per-step factors ≈ 60 at 50 steps
# (both per dof, not per step).  Blocks, tables and factors scale with the nonzeros per row
# (NNZ_PER_ROW relative to 2D P1); SWEEP_MARGIN covers transients and allocator slack (the
# mfg solve at 263,169 × 100 was killed at 24.3 GB: ≥ 925 B against 757 at 66k × 100).
SWEEP_VECTORS_B = {"fgmres": 16 + 481, "gmres": 16 + 481 - 11 * 16}
SWEEP_BLOCKS_B = {"mftc": 165, "none": 165, "mfg": 226, "attractive": 226}
SWEEP_PER_DOF_B_50 = {"mftc": 43 + 60, "none": 43 + 60, "mfg": 101 + 60,
                      "attractive": 101 + 60}
NNZ_PER_ROW = {(1, 1): 3, (1, 2): 4, (2, 1): 7, (2, 2): 14, (3, 1): 15, (3, 2): 43}
SWEEP_MARGIN = 1.2


def sweep_bytes(dim: int, degree: int, ndofs: int, steps: int, coupling: str) -> float:
    """Estimated peak bytes of the Newton sweep path above the process's start."""
    from fem_mfc.solvers.newton import GMRES_FROM
    dof_steps = ndofs * steps
    scale = NNZ_PER_ROW[(dim, degree)] / NNZ_PER_ROW[(2, 1)]
    per = (SWEEP_VECTORS_B["gmres" if dof_steps >= GMRES_FROM else "fgmres"]
           + scale * (SWEEP_BLOCKS_B[coupling] + SWEEP_PER_DOF_B_50[coupling] * 50 / steps))
    return SWEEP_MARGIN * per * dof_steps


# -- measurement helpers ---------------------------------------------------------------------
def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


class PeakRSS:
    """Peak resident memory (MB) while the ``with`` block runs, sampled every 5 ms."""

    def __enter__(self):
        self.base = self.peak = rss_mb()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mb())

    @property
    def extra(self) -> float:
        return self.peak - self.base


def problem(dim, degree, cells, steps, coupling):
    from mpi4py import MPI

    import dolfinx
    import ufl

    from fem_mfc.problem import ControlProblem
    comm = MPI.COMM_WORLD
    if dim == 1:
        mesh = dolfinx.mesh.create_interval(comm, cells, [-1.0, 1.0])
    elif dim == 2:
        mesh = dolfinx.mesh.create_rectangle(comm, [[-1, -1], [1, 1]], [cells, cells])
    else:
        mesh = dolfinx.mesh.create_box(comm, [[-1, -1, -1], [1, 1, 1]], [cells] * 3)
    x = ufl.SpatialCoordinate(mesh)
    r2 = sum(x[i] ** 2 for i in range(1, dim))
    kappa, mode = COUPLINGS[coupling]
    G = None if kappa is None else (lambda r, k=kappa: k * r ** 2)
    return ControlProblem(mesh=mesh, T=1.0, sigma=0.6, steps=steps, degree=degree,
                          scheme="crank-nicolson", Phi=(x[0] - 0.5) ** 2 + r2,
                          V=0.2 * x[1] ** 2 if dim > 1 else 0.0, G=G, coupling=mode,
                          rho0=ufl.exp(-((x[0] + 0.4) ** 2 + r2) / (2 * 0.28 ** 2)))


def heat_proxy(p, kind: str = "lu") -> float:
    """Seconds for p.steps backward-Euler heat steps with one reused per-step solver of
    ``kind`` (default: a factorisation; fem_mfc.solvers.steps.step_solver)."""
    from mpi4py import MPI

    import dolfinx.fem.petsc
    import ufl

    from fem_mfc.solvers.steps import step_solver
    u, v = ufl.TrialFunction(p.space), ufl.TestFunction(p.space)
    m = u * v * ufl.dx
    mats = []
    for form in (m + p.tau * p.eps * ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx, m):
        mats.append(dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(form)))
        mats[-1].assemble()
    A, B = mats
    ksp = step_solver(A, "bench_heat_", kind, symmetric=True)   # SPD: Cholesky
    x, b = A.createVecs()
    y = x.duplicate()
    x.set(1.0)
    comm = MPI.COMM_WORLD
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(p.steps):
        B.mult(x, b)
        ksp.solve(b, y)
        x, y = y, x
    dt = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    for o in (ksp, A, B, x, y, b):
        o.destroy()
    return dt


def solve_point(p, path):
    """path: cole-hopf | lu | sweep (per-step solver by the auto rule) | sweep-lu |
    sweep-ilu | sweep-amg."""
    from fem_mfc.solvers import solve
    if path == "cole-hopf":
        return solve(p, "cole-hopf", strict=False)
    linear, _, step = path.partition("-")
    return solve(p, "newton", linear=linear, step=step or "auto", strict=False)


def run_group(a) -> list:
    """All couplings × paths of one (dim, degree, cells, steps) group, in this process."""
    from mpi4py import MPI
    from petsc4py import PETSc

    from fem_mfc.solvers import auto
    from fem_mfc.solvers.spacetime import SpaceTime
    comm = MPI.COMM_WORLD
    rows = []
    proxy_p = problem(a.dim, a.degree, a.cells, a.steps, "mftc")
    ndofs = proxy_p.space.dofmap.index_map.size_global
    heat_proxy(proxy_p)                                    # warm-up
    proxy = min(heat_proxy(proxy_p) for _ in range(3))
    small = CELLS[(a.dim, a.degree)][0]
    for coupling in a.couplings:
        paths = list(a.paths) + (["cole-hopf"] if coupling == "none" else [])
        for path in paths:            # warm-up: JIT-compile and import outside the timings
            if path != "lu" or small == a.cells:
                solve_point(problem(a.dim, a.degree, small, 4, coupling), path)
        est = auto.estimates(ndofs, a.steps, a.dim, comm.size)
        for path in paths:
            row = {"dim": a.dim, "degree": a.degree, "cells": a.cells, "ndofs": ndofs,
                   "steps": a.steps, "coupling": coupling, "path": path, "ranks": comm.size,
                   "proxy_s": proxy}
            secs = est.get(f"{path.split('-')[0]}_s")
            newton_steps = 6
            if secs is not None and (secs * newton_steps > a.budget_s
                                            or (path == "lu"
                                                and est["lu_bytes"] > a.memory_gb * 2 ** 30)):
                row.update(skipped=f"estimate {secs * newton_steps:.3g} s, LU factors "
                                   f"{est['lu_bytes'] / 2 ** 30:.3g} GB")
                rows.append(row)
                continue
            need = sweep_bytes(a.dim, a.degree, ndofs, a.steps, coupling) / 2 ** 30
            if path.startswith("sweep") and need > a.memory_gb:
                row.update(skipped=f"estimate {need:.3g} GB > {a.memory_gb:g} GB")
                rows.append(row)
                if comm.rank == 0:
                    print(json.dumps(row), flush=True)
                continue
            best = None
            for _ in range(a.repeat):
                p = problem(a.dim, a.degree, a.cells, a.steps, coupling)
                comm.Barrier()
                with PeakRSS() as mem:
                    t0 = time.perf_counter()
                    r = solve_point(p, path)
                    dt = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
                if best is None or dt < best[0]:
                    best = (dt, r, mem.extra)
                PETSc.garbage_cleanup()
            dt, r, extra = best
            kry = [h.get("ksp_its") for h in r.history if h.get("ksp_its") is not None]
            row.update(seconds=dt, dof_steps_per_s=ndofs * a.steps / dt,
                       newton=r.iterations, krylov=sum(kry), converged=r.converged,
                       J=r.J, peak_mb=comm.allreduce(extra, op=MPI.SUM),
                       bytes_per_dof_step=comm.allreduce(extra, op=MPI.SUM) * 2 ** 20
                       / (ndofs * a.steps),
                       ratio_to_proxy=dt / proxy,
                       continuation=len(r.continuation))
            rows.append(row)
            if comm.rank == 0:
                print(json.dumps(row), flush=True)
        if a.paths:
            st = SpaceTime(problem(a.dim, a.degree, a.cells, a.steps, coupling))
            from fem_mfc.solvers.newton import linear_mode
            mode, rule = linear_mode(st, "auto", "bench_auto_")
            if mode == "sweep":
                mode = f"sweep-{auto.step_kind(ndofs, a.dim, comm.size)}"
            method = "cole-hopf" if coupling == "none" else mode
            rows.append({"dim": a.dim, "degree": a.degree, "cells": a.cells, "ndofs": ndofs,
                         "steps": a.steps, "coupling": coupling, "path": "auto",
                         "ranks": comm.size, "proxy_s": proxy, "chooses": method,
                         "rule": rule})
    return rows


def summarise(rows: list) -> list:
    """Fill in, for every "auto" row, the time of the path it chooses and its ratio to the
    fastest path measured at that point."""
    out = []
    def key(r):
        return (r["dim"], r["degree"], r["cells"], r["steps"], r["coupling"], r["ranks"])
    groups = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    for g in groups.values():
        timed = {r["path"]: r for r in g if "seconds" in r and r.get("converged", True)}
        for r in g:
            if r["path"] == "auto" and r.get("chooses") not in timed \
                    and str(r.get("chooses")).startswith("sweep-") and "sweep" in timed:
                timed[r["chooses"]] = timed["sweep"]        # measured as "sweep"
            if r["path"] == "auto" and r.get("chooses") in timed and timed:
                fastest = min(timed.values(), key=lambda x: x["seconds"])
                r = dict(r, seconds=timed[r["chooses"]]["seconds"],
                         fastest=fastest["path"],
                         ratio_to_fastest=timed[r["chooses"]]["seconds"] / fastest["seconds"])
                r["dof_steps_per_s"] = r["ndofs"] * r["steps"] / r["seconds"]
            out.append(r)
    return out


def plot(rows: list, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5.5))
    lines = {}
    for r in rows:
        if "dof_steps_per_s" not in r or r["coupling"] not in ("mftc", "none"):
            continue
        name = f"{r['dim']}D P{r['degree']} {r['coupling']} {r['path']}"
        lines.setdefault(name, []).append((r["ndofs"], r["dof_steps_per_s"], r["steps"]))
    for name, pts in sorted(lines.items()):
        pts = sorted(p for p in pts if p[2] == min(q[2] for q in pts))
        ax.loglog([p[0] for p in pts], [p[1] for p in pts], "o-", label=name, ms=3)
    ax.set_xlabel("DOFs per field")
    ax.set_ylabel("DOF·steps / s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    ax.set_title("solver throughput (fewest steps of the run)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(rows: list, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    rows = summarise(rows)
    (out / "matrix.json").write_text(json.dumps(rows, indent=1) + "\n")
    cols = ["dim", "degree", "cells", "ndofs", "steps", "coupling", "path", "ranks",
            "seconds", "dof_steps_per_s", "newton", "krylov", "converged", "peak_mb",
            "bytes_per_dof_step", "proxy_s", "ratio_to_proxy", "chooses", "fastest",
            "ratio_to_fastest", "continuation", "skipped"]
    with open(out / "matrix.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    plot(rows, out / "matrix.png")
    return rows


def table(rows: list) -> str:
    lines = [f"{'d':>1} {'P':>1} {'dofs':>7} {'N':>4} {'coupling':>10} {'path':>9} "
             f"{'time s':>8} {'DOF·st/s':>9} {'newt':>4} {'kryl':>5} {'B/DOF·st':>8} "
             f"{'x proxy':>7} note"]
    for r in rows:
        if "skipped" in r:
            note = "skipped: " + r["skipped"]
        elif r["path"] == "auto":
            note = (f"-> {r.get('chooses')}, {r.get('ratio_to_fastest', float('nan')):.2f}x "
                    f"fastest ({r.get('fastest')})")
        else:
            note = "" if r.get("converged", True) else "NOT CONVERGED"
        lines.append(f"{r['dim']:>1} {r['degree']:>1} {r['ndofs']:>7} {r['steps']:>4} "
                     f"{r['coupling']:>10} {r['path']:>9} {r.get('seconds', math.nan):8.3g} "
                     f"{r.get('dof_steps_per_s', math.nan):9.3g} {r.get('newton', ''):>4} "
                     f"{r.get('krylov', ''):>5} {r.get('bytes_per_dof_step', math.nan):8.3g} "
                     f"{r.get('ratio_to_proxy', math.nan):7.3g} {note}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", default="1,2,3")
    ap.add_argument("--degrees", default="1,2")
    ap.add_argument("--steps", default="20,100")
    ap.add_argument("--couplings", default="none,mftc,mfg,attractive")
    ap.add_argument("--paths", default="lu,sweep")
    ap.add_argument("--max-dofs", type=float, default=math.inf)
    ap.add_argument("--min-dofs", type=float, default=0)
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--budget-s", type=float, default=600.0)
    ap.add_argument("--memory-gb", type=float, default=20.0)
    ap.add_argument("--out", default="results/bench_matrix")
    ap.add_argument("--group", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.couplings = [c for c in a.couplings.split(",") if c]
    a.paths = [p for p in a.paths.split(",") if p]
    if a.group:                                   # child: one group, rows as JSON lines
        a.dim, a.degree, a.cells, a.steps = map(int, a.group.split(":"))
        rows = run_group(a)
        from mpi4py import MPI
        if MPI.COMM_WORLD.rank == 0:
            print("ROWS " + json.dumps(rows), flush=True)
        return
    out = Path(a.out)
    done = []
    if (out / "matrix.json").exists():            # resume: keep measured groups
        done = [r for r in json.loads((out / "matrix.json").read_text())]
    have = {(r["dim"], r["degree"], r["cells"], r["steps"], r["ranks"]) for r in done}
    from fem_mfc.solvers.auto import estimates
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMPI_COMM_WORLD", "PMIX_", "OMPI_MCA_ess", "OMPI_MCA_orte"))}
    for dim in map(int, a.dims.split(",")):
        for degree in map(int, a.degrees.split(",")):
            for cells in CELLS[(dim, degree)]:
                ndofs = (degree * cells + 1) ** dim
                if not a.min_dofs <= ndofs <= a.max_dofs:
                    continue
                for steps in map(int, a.steps.split(",")):
                    if (dim, degree, cells, steps, a.ranks) in have:
                        continue
                    est = estimates(ndofs, steps, dim, a.ranks)
                    if 6 * min(est["lu_s"], est["sweep_s"]) > a.budget_s:
                        row = {"dim": dim, "degree": degree, "cells": cells, "ndofs": ndofs,
                               "steps": steps, "ranks": a.ranks, "coupling": "*",
                               "path": "*", "skipped": f"estimate {6 * est['sweep_s']:.3g} s "
                               f"> {a.budget_s:g} s"}
                        print(json.dumps(row), flush=True)
                        done.append(row)
                        continue
                    cmd = [sys.executable, __file__, "--group", f"{dim}:{degree}:{cells}:{steps}",
                           "--couplings", ",".join(a.couplings), "--paths", ",".join(a.paths),
                           "--repeat", str(a.repeat), "--budget-s", str(a.budget_s),
                           "--memory-gb", str(a.memory_gb)]
                    if a.ranks > 1:
                        cmd = ["mpirun", "-n", str(a.ranks)] + cmd
                    t0 = time.perf_counter()
                    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
                    rows = [json.loads(ln[5:]) for ln in p.stdout.splitlines()
                            if ln.startswith("ROWS ")]
                    if not rows:
                        print(f"group {dim}D P{degree} cells={cells} N={steps} failed:\n"
                              f"{p.stderr[-2000:]}", flush=True)
                        continue
                    done += rows[0]
                    print(f"# group {dim}D P{degree} {ndofs} dofs x {steps}: "
                          f"{time.perf_counter() - t0:.1f} s", flush=True)
                    write(done, out)
    rows = write(done, out)
    print(table(rows))


if __name__ == "__main__":
    main()
