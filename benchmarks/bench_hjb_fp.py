"""Benchmark of the HJB–FP solvers on a 2D problem: DOF·steps/s, iterations, peak memory.

  bin/fem-env python3 benchmarks/bench_hjb_fp.py [--cells 244] [--steps 50] [--newton-cells 24]
  bin/fem-env mpirun -n 2 python3 benchmarks/bench_hjb_fp.py ...

Cole–Hopf runs at the full size (P1, (cells+1)² ≈ 60k DOFs × 50 steps); the all-at-once
Newton/Picard factorise a space-time (3D-like) KKT matrix, so they run at --newton-cells.
"""
import argparse
import resource
import time

import dolfinx
import ufl
from mpi4py import MPI

from fem_mfc.problem import ControlProblem
from fem_mfc.solvers import solve


def problem(cells, steps, congested):
    mesh = dolfinx.mesh.create_rectangle(MPI.COMM_WORLD, [[-1, -1], [1, 1]], [cells, cells])
    x = ufl.SpatialCoordinate(mesh)
    return ControlProblem(mesh=mesh, T=1.0, sigma=0.6, steps=steps, scheme="crank-nicolson",
                          Phi=(x[0] - 0.5) ** 2 + x[1] ** 2, V=0.2 * x[1] ** 2,
                          G=(lambda r: 0.5 * r ** 2) if congested else None,
                          rho0=ufl.exp(-((x[0] + 0.4) ** 2 + x[1] ** 2) / 0.08))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=244)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--newton-cells", type=int, default=24)
    ap.add_argument("--newton-steps", type=int, default=10)
    a = ap.parse_args()
    comm = MPI.COMM_WORLD
    runs = [("cole-hopf", a.cells, a.steps, False), ("newton", a.newton_cells, a.newton_steps, True),
            ("picard", a.newton_cells, a.newton_steps, True)]
    for method, cells, steps, congested in runs:
        p = problem(cells, steps, congested)
        ndofs = p.space.dofmap.index_map.size_global
        comm.Barrier()
        t0 = time.perf_counter()
        r = solve(p, method)
        dt = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        mem = comm.allreduce(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, op=MPI.SUM) / 1024
        if comm.rank == 0:
            print(f"{method:10s} ranks={comm.size} dofs={ndofs} steps={steps} "
                  f"congestion={congested} time={dt:.2f}s DOF*steps/s={ndofs * steps / dt:.3g} "
                  f"iterations={r.iterations} J={r.J:.6f} mass_err={r.mass_error:.1e} "
                  f"peak_mem(sum ranks)={mem:.0f}MB", flush=True)


if __name__ == "__main__":
    main()
