"""The linear steppers (heat runs, NLS mass matrices) on 1 and 2 ranks: MUMPS, which they took
before, against the sweeps' per-step solver they take now, side by side in one run.

    bin/fem-env python3 benchmarks/bench_steppers.py [--points 2:64,2:256,2:500,3:16,3:32]
        [--steps 100] [--ranks 1,2] [--repeat 3]

A point d:n is the heat run's step (``fem_mfc.runs.heat``: M + τεK, backward Euler, P1) on
the unit square (n × n cells) or cube (n³ cells).  For every rank count the script relaunches
itself (``mpirun -n r``); each process times, alternating the two variants ``--repeat``
times, a :class:`~fem_mfc.solvers.linear.LinearStepper` set-up (assembly, factorisation) and
``--steps`` steps (right-hand side assembly and solve), max over the ranks:

* ``mumps``: the options the stepper had before (``-pc_type lu
  -pc_factor_mat_solver_type mumps`` under its prefix);
* ``default``: what it takes now (:func:`fem_mfc.solvers.steps.step_solver`: Cholesky on one
  rank, the same Cholesky on every rank of 2–4, GMRES + ILU(0) in 3D).

The steps of ``default`` on one rank are the limit proxy of the other benchmarks (heat steps
with the best per-step solver); the table gives min and median seconds, DOF·steps/s, the
ratio to the 1-rank ``default`` and the speed-up of 2 ranks over 1 per variant.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

VARIANTS = {"mumps": {"pc_type": "lu", "pc_factor_mat_solver_type": "mumps"}, "default": {}}


def child(a) -> None:
    from mpi4py import MPI

    import dolfinx
    import ufl

    from fem_mfc import options
    from fem_mfc.forms.heat import heat_step
    from fem_mfc.solvers.linear import LinearStepper
    comm = MPI.COMM_WORLD
    for point in a.points.split(","):
        dim, n = map(int, point.split(":"))
        msh = (dolfinx.mesh.create_unit_square(comm, n, n) if dim == 2
               else dolfinx.mesh.create_unit_cube(comm, n, n, n))
        V = dolfinx.fem.functionspace(msh, ("Lagrange", 1))
        x = ufl.SpatialCoordinate(msh)
        rho_old, rho = dolfinx.fem.Function(V), dolfinx.fem.Function(V)
        rho_old.interpolate(dolfinx.fem.Expression(ufl.exp(-20 * ufl.inner(x, x)),
                                                   V.element.interpolation_points()))
        ndofs = V.dofmap.index_map.size_global
        times = {v: {"setup": [], "steps": []} for v in VARIANTS}
        for rep in range(a.repeat):
            for v, opts in VARIANTS.items():
                prefix = f"bench_{v}_{rep}_{dim}_{n}_"
                with options.inserted(settings=opts, prefix=prefix):
                    comm.Barrier()
                    t0 = time.perf_counter()
                    st = LinearStepper(*heat_step(rho_old, 1.0 / a.steps, 0.18, 1.0), prefix,
                                       steps=a.steps, symmetric=True)
                    t1 = time.perf_counter()
                    for _ in range(a.steps):
                        st.step(rho)
                    t2 = time.perf_counter()
                kind = st.ksp.getPC().getType()
                st.destroy()
                setup = comm.allreduce(t1 - t0, op=MPI.MAX)
                steps = comm.allreduce(t2 - t1, op=MPI.MAX)
                times[v]["setup"].append(setup)
                times[v]["steps"].append(steps)
                times[v]["pc"] = kind
        if comm.rank == 0:
            print("RESULT " + json.dumps({"dim": dim, "n": n, "ndofs": ndofs,
                                          "ranks": comm.size, "times": times}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", default="2:64,2:256,2:500,3:16,3:32")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child", action="store_true")
    a = ap.parse_args()
    if a.child:
        return child(a)
    rows = []
    for r in map(int, a.ranks.split(",")):
        cmd = ["mpirun", "-n", str(r), sys.executable, __file__, "--child", "--points",
               a.points, "--steps", str(a.steps), "--repeat", str(a.repeat)]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
            for ln in proc.stdout:                  # each point as it finishes
                if ln.startswith("RESULT "):
                    rows.append(json.loads(ln[7:]))
                    w = rows[-1]
                    print(f"{r} rank(s) {w['dim']}D {w['ndofs']} dofs: " + ", ".join(
                        f"{v} {min(t['steps']):.3f} s" for v, t in w["times"].items()),
                        flush=True)
        if proc.returncode:
            sys.exit(f"mpirun -n {r}: exit {proc.returncode}")
    base = {(w["dim"], w["n"]): min(w["times"]["default"]["steps"]) for w in rows
            if w["ranks"] == 1}
    one = {(w["dim"], w["n"], v): min(w["times"][v]["steps"])
           for w in rows if w["ranks"] == 1 for v in VARIANTS}
    print(f"{a.steps} backward-Euler heat steps, P1; seconds min / median of {a.repeat}")
    print("| d | dofs | ranks | variant | PC | set-up s | steps s | DOF·steps/s | × 1-rank "
          "default | speed-up 2/1 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for w in rows:
        for v in VARIANTS:
            t = w["times"][v]
            s = min(t["steps"])
            key = (w["dim"], w["n"])
            up = (f"{one[(*key, v)] / s:.2f}" if w["ranks"] > 1 and (*key, v) in one else "–")
            print(f"| {w['dim']} | {w['ndofs']} | {w['ranks']} | {v} | {t['pc']} | "
                  f"{min(t['setup']):.3f} / {statistics.median(t['setup']):.3f} | "
                  f"{s:.3f} / {statistics.median(t['steps']):.3f} | "
                  f"{w['ndofs'] * a.steps / s:.3g} | {s / base[key]:.2f} | {up} |")


if __name__ == "__main__":
    main()
