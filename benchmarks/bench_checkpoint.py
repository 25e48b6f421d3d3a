"""What a checkpoint costs: size, seconds to write and read, and the share of the solve.

    bin/fem-env python3 benchmarks/bench_checkpoint.py [--cells 32,64,128,244] [--steps 50]
        [--repeat 3] [--ranks 1,2]

The congested 2D P1 problem of ``bench_hjb_fp.py`` (G = ρ²/2, Crank–Nicolson), solved once by
Newton on the sweep path; then its space-time system is checkpointed ``--repeat`` times in
two formats, in the same process:

* **nodal** (fem_mfc's): the mesh with adios4dolfinx, the states ρ¹..ρ^N, u⁰..u^{N−1} as nodal
  values with the nodes' coordinates, gathered on rank 0 (``fem_mfc.checkpoint.Writer``);
* **functions** (the format before 2026-12-07, for reference): the mesh and one
  adios4dolfinx function per state (each stores its own dofmap).

Each row: dofs × steps, Newton solve time, Newton iterations, seconds per checkpoint (min and
median of ``--repeat``), its size, the values alone (16 B per DOF·step), the time to load it
back into a fresh system, and a checkpoint's time as a share of one Newton iteration — what
``checkpoint_every = 1`` adds.  ``--ranks 1,2`` runs each size serially and on 2 ranks (the
readers match nodes by coordinates, so a checkpoint's cost includes the gather to rank 0).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def folder_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file())


def legacy_write(folder: Path, st):
    """The format before nodal.npz: the mesh and one adios4dolfinx function per state."""
    import adios4dolfinx
    comm = st.comm
    if comm.rank == 0:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    comm.barrier()
    bp = folder / "state.bp"
    adios4dolfinx.write_mesh(bp, st.problem.mesh)
    for n in range(1, st.N + 1):
        adios4dolfinx.write_function(bp, st.rho[n], name=f"rho_{n}")
    for n in range(st.N):
        adios4dolfinx.write_function(bp, st.u[n], name=f"u_{n}")
    comm.barrier()


def child(a):
    # bench_matrix sits next to this script: the script's folder is on the import path
    from mpi4py import MPI

    import bench_matrix as bm

    from fem_mfc import checkpoint
    from fem_mfc.solvers.newton import make_system, newton
    comm = MPI.COMM_WORLD
    bm.solve_point(bm.problem(2, 1, 8, 4, "mftc"), "sweep")            # warm-up (JIT)
    p = bm.problem(2, 1, a.cells, a.steps, "mftc")
    st = make_system(p)
    t0 = time.perf_counter()
    r = newton(p, system=st, linear="sweep")
    solve = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    root = Path(comm.bcast(tempfile.mkdtemp(prefix="bench_ck_") if comm.rank == 0 else None))
    cfg = {"run": {"formulation": "hjb-fp"}, "problem": {"steps": a.steps}}
    out = {"dofs": p.space.dofmap.index_map.size_global, "steps": a.steps, "ranks": comm.size,
           "solve_s": solve, "newton": r.iterations, "values_MB": 16e-6 *
           p.space.dofmap.index_map.size_global * a.steps}
    for kind in ("nodal", "functions"):
        folder = root / kind
        times = []
        for _ in range(a.repeat):
            comm.barrier()
            t0 = time.perf_counter()
            if kind == "nodal":
                checkpoint.Writer(folder, st, cfg, 1).write(phase="newton", iteration=1)
            else:
                legacy_write(folder, st)
            times.append(comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
        size = comm.bcast(folder_bytes(folder) if comm.rank == 0 else None)
        back = make_system(p)
        comm.barrier()
        t0 = time.perf_counter()
        if kind == "nodal":
            checkpoint.load_states(folder, back)
        else:                # the legacy reader needs the checkpoint's mesh: time the read
            import adios4dolfinx
            mesh = adios4dolfinx.read_mesh(folder / "state.bp", comm)
            import dolfinx
            V = dolfinx.fem.functionspace(mesh, ("Lagrange", 1))
            f = dolfinx.fem.Function(V)
            for n in range(1, a.steps + 1):
                adios4dolfinx.read_function(folder / "state.bp", f, name=f"rho_{n}")
            for n in range(a.steps):
                adios4dolfinx.read_function(folder / "state.bp", f, name=f"u_{n}")
        load = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        out[kind] = {"write_min_s": min(times), "write_median_s": statistics.median(times),
                     "MB": size / 1e6, "load_s": load,
                     "share_of_newton_iteration": min(times) / (solve / max(r.iterations, 1))}
    if comm.rank == 0:
        shutil.rmtree(root, ignore_errors=True)
        print("RESULT " + json.dumps(out), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default="32,64,128,244")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ranks", default="1")
    ap.add_argument("--out", default="results/bench_checkpoint")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cells-one", type=int, dest="cells_one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        a.cells = a.cells_one
        return child(a)
    rows = []
    for cells in map(int, a.cells.split(",")):
        for ranks in map(int, a.ranks.split(",")):
            cmd = [sys.executable, __file__, "--child", "--cells-one", str(cells),
                   "--steps", str(a.steps), "--repeat", str(a.repeat)]
            if ranks > 1:
                cmd = ["mpirun", "-n", str(ranks)] + cmd
            p = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            if p.returncode or not line:
                print(f"cells {cells}, {ranks} ranks failed:\n{p.stderr[-2000:]}")
                continue
            rows.append(json.loads(line[0][7:]))
            r = rows[-1]
            print(f"{r['dofs']:>7} x {r['steps']} on {r['ranks']}: solve {r['solve_s']:.2f} s "
                  f"({r['newton']} Newton) | nodal {r['nodal']['write_min_s']:.3f} s "
                  f"{r['nodal']['MB']:.1f} MB load {r['nodal']['load_s']:.3f} s "
                  f"({100 * r['nodal']['share_of_newton_iteration']:.1f} % of an iteration) | "
                  f"functions {r['functions']['write_min_s']:.3f} s "
                  f"{r['functions']['MB']:.1f} MB load {r['functions']['load_s']:.3f} s "
                  f"({100 * r['functions']['share_of_newton_iteration']:.1f} %) | values "
                  f"{r['values_MB']:.1f} MB", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_checkpoint.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("| dofs × steps | ranks | Newton s (its) | nodal: write s (min / median), MB, load s, "
          "% of an iteration | functions: write s, MB, load s, % | values MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        n, f = r["nodal"], r["functions"]
        print(f"| {r['dofs']:,} × {r['steps']} | {r['ranks']} | {r['solve_s']:.2f} "
              f"({r['newton']}) | {n['write_min_s']:.3f} / {n['write_median_s']:.3f}, "
              f"{n['MB']:.1f}, {n['load_s']:.3f}, {100 * n['share_of_newton_iteration']:.1f} | "
              f"{f['write_min_s']:.3f}, {f['MB']:.1f}, {f['load_s']:.3f}, "
              f"{100 * f['share_of_newton_iteration']:.1f} | {r['values_MB']:.1f} |")


if __name__ == "__main__":
    main()
