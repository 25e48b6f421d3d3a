"""Benchmark of the real-time NLS stepper: steps/s and DOF·steps/s in 2D, 1 vs 2 ranks.

A cubic (κ = −1) Gaussian packet on a P1 rectangle mesh of about 60k DOFs (two fields q, p),
implicit midpoint with SNES Newton and the per-step LU of ``fem_mfc.solvers.steps.set_lu``
(PETSc's LU on one rank, the redundant LU or MUMPS on 2; each Newton iteration re-assembles
and re-factorises), and explicit RK4 (four mass-matrix solves per step: Cholesky factors
once on one rank, CG + Jacobi on more).

  bin/fem-env python3 benchmarks/bench_nls.py [--ranks 1 2] [--steps 10] [--cells 172]

The script re-launches itself under ``mpirun -n R`` for every R and prints one table.  Not a
test: wall times on a shared machine vary.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child(cells: int, steps: int, integrator: str) -> dict:
    from mpi4py import MPI

    import dolfinx
    import ufl

    from fem_mfc.runs.nls import free_gaussian
    from fem_mfc.solvers.nls import MidpointStepper, NLSProblem, RK4Stepper
    comm = MPI.COMM_WORLD
    t0 = time.perf_counter()
    msh = dolfinx.mesh.create_rectangle(comm, [[-6.0, -6.0], [6.0, 6.0]], [cells, cells])
    P = NLSProblem(msh, 1, 1.0, 0.0, lambda r: -r ** 2 / 2)
    z = P.function()
    P.interpolate(z, *free_gaussian(ufl.SpatialCoordinate(msh), 0.0, 1.0, 0.7, [1.0, 0.5],
                                    [0.0, 0.0]))
    tau = 0.01 if integrator == "midpoint" else 0.2 * (12 / cells) ** 2
    st = (MidpointStepper(P, z, tau, rtol=1e-10, atol=1e-12) if integrator == "midpoint"
          else RK4Stepper(P, z, tau))
    st.step()                                    # warm-up: JIT, symbolic factorisation
    comm.barrier()
    setup = time.perf_counter() - t0
    its0 = st.newton_iterations
    t1 = time.perf_counter()
    for _ in range(steps):
        st.step()
    comm.barrier()
    wall = time.perf_counter() - t1
    its = st.newton_iterations - its0
    st.destroy()
    return {"ranks": comm.size, "integrator": integrator, "ndofs": P.ndofs, "steps": steps,
            "wall_s": wall, "setup_s": setup, "steps_per_s": steps / wall,
            "dof_steps_per_s": P.ndofs * steps / wall, "newton_per_step": its / steps}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--cells", type=int, default=172, help="cells per axis (172: ~60k DOFs)")
    ap.add_argument("--integrators", nargs="+", default=["midpoint", "rk4"])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        from mpi4py import MPI
        rows = [child(a.cells, a.steps, i) for i in a.integrators]
        if MPI.COMM_WORLD.rank == 0:
            print("BENCH " + json.dumps(rows), flush=True)
        return
    rows = []
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for r in a.ranks:
        cmd = [sys.executable, __file__, "--child", "--steps", str(a.steps), "--cells",
               str(a.cells), "--integrators", *a.integrators]
        if r > 1:
            cmd = ["mpirun", "-n", str(r), *cmd]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [x for x in p.stdout.splitlines() if x.startswith("BENCH ")]
        if p.returncode != 0 or not line:
            sys.exit(f"bench_nls: run on {r} rank(s) failed:\n{p.stderr[-2000:]}")
        rows += json.loads(line[0][6:])
    hdr = (f"{'integrator':<10} {'ranks':>5} {'DOFs':>8} {'steps':>5} {'wall s':>8} "
           f"{'steps/s':>8} {'DOF·steps/s':>12} {'Newton/step':>11} {'setup s':>8}")
    print(hdr)
    print("-" * len(hdr))
    for x in sorted(rows, key=lambda x: (x["integrator"], x["ranks"])):
        print(f"{x['integrator']:<10} {x['ranks']:>5} {x['ndofs']:>8} {x['steps']:>5} "
              f"{x['wall_s']:>8.2f} {x['steps_per_s']:>8.2f} {x['dof_steps_per_s']:>12.3e} "
              f"{x['newton_per_step']:>11.2f} {x['setup_s']:>8.2f}")


if __name__ == "__main__":
    main()
