"""Benchmark of the HJB–FP solvers on a 2D problem, 1 and 2 ranks, in one run.

  bin/fem-env python3 benchmarks/bench_hjb_fp.py [--cells 244] [--steps 50] [--ranks 1,2]
      [--small-cells 0] [--configs "default:;lag:sweep_reuse_rtol=0.05;amg:sweep_pc_type=gamg"]

For every rank count the script relaunches itself (``mpirun -n r`` for r > 1) and prints:

* heat reference: one backward-Euler heat step (M + τεK) xⁿ⁺¹ = M xⁿ with a reused LU
  factorisation (factorisation excluded), P1 on the same mesh — with MUMPS (the issue's
  reference) and with the LU that Cole–Hopf uses (PETSc LU on one rank, the same on every
  rank on 2–4 ranks ("redundant"), MUMPS on more);
* Cole–Hopf (congestion-free): DOF·steps/s counting *both* sweeps, 2·ndofs·steps / time, for
  the solver (assembly, factorisation, sweeps, output fields) and for the wall time of
  ``solve`` (which adds the set-up of the HJB–FP functionals and J, mass diagnostics), and
  the ratio of the solver rate to each heat reference;
* Newton on the congested problem (G = κρ²/2, κ = 1) at the same size with the sweep-
  preconditioned FGMRES (``linear="sweep"``, inexact Newton steps), from the trivial guess
  and from the Cole–Hopf solution without congestion (``--configs``): Newton iterations,
  Krylov iterations per Newton step, time and the Newton/Cole–Hopf time ratio (wall times
  of ``solve``; the Cole–Hopf guess's sweeps are counted in Newton's time);
* at --small-cells/--small-steps: Newton with LU and with the sweep (same iterations and J)
  and Picard, for comparison;
* peak resident memory summed over ranks (ru_maxrss, cumulative within the process).
Timings on a shared machine are noisy: compare the ratios printed within one run.
"""
import argparse
import os
import subprocess
import sys
import time


def problem(cells, steps, congested):
    from mpi4py import MPI

    import dolfinx
    import ufl

    from fem_mfc.problem import ControlProblem
    mesh = dolfinx.mesh.create_rectangle(MPI.COMM_WORLD, [[-1, -1], [1, 1]], [cells, cells])
    x = ufl.SpatialCoordinate(mesh)
    p = ControlProblem(mesh=mesh, T=1.0, sigma=0.6, steps=steps, scheme="crank-nicolson",
                       Phi=(x[0] - 0.5) ** 2 + x[1] ** 2, V=0.2 * x[1] ** 2,
                       G=(lambda r: 0.5 * r ** 2) if congested else None,
                       rho0=ufl.exp(-((x[0] + 0.4) ** 2 + x[1] ** 2) / 0.08))
    if cells >= 16:                   # nested iteration (guess=coarse): half the cells and steps
        p.coarse = lambda: problem(cells // 2, (steps + 1) // 2, congested)
    return p


def heat_rate(p, factor_solver):
    """DOF·steps/s of p.steps backward-Euler heat steps with one reused LU factorisation."""
    from petsc4py import PETSc

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
    opts = PETSc.Options()
    key = "bench_heat_" + ("pc_type" if factor_solver == "redundant"
                           else "pc_factor_mat_solver_type")
    opts[key] = factor_solver                 # "redundant": PETSc LU on every rank
    ksp = step_solver(A, "bench_heat_", symmetric=True)   # SPD: Cholesky
    opts.delValue(key)
    x, b = A.createVecs()
    y = x.duplicate()
    x.set(1.0)
    comm = A.getComm().tompi4py()
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(p.steps):
        B.mult(x, b)
        ksp.solve(b, y)
        x, y = y, x
    dt = comm.allreduce(time.perf_counter() - t0, op=max_op())
    for o in (ksp, A, B, x, y, b):
        o.destroy()
    return ndofs(p) * p.steps / dt


def max_op():
    from mpi4py import MPI
    return MPI.MAX


def ndofs(p):
    return p.space.dofmap.index_map.size_global


def timed(fn):
    """(result, wall time max over ranks, peak memory MB summed over ranks)."""
    import resource

    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    comm.Barrier()
    t0 = time.perf_counter()
    r = fn()
    dt = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    mem = comm.allreduce(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, op=MPI.SUM) / 1024
    return r, dt, mem


def child(a):
    """All measurements on MPI.COMM_WORLD (run by the parent with 1 or more ranks)."""
    from mpi4py import MPI
    from petsc4py import PETSc

    from fem_mfc.solvers import solve
    from fem_mfc.solvers.newton import newton
    comm = MPI.COMM_WORLD

    def say(*args):
        if comm.rank == 0:
            print(f"[{comm.size} rank{'s' if comm.size > 1 else ''}]", *args, flush=True)

    p = problem(a.cells, a.steps, False)
    n, N = ndofs(p), p.steps
    from fem_mfc.solvers.steps import redundant
    ch_solver = ("petsc" if comm.size == 1 else
                 "redundant" if redundant(n, comm.size, 2 * p.steps) else "mumps")
    ref = {s: heat_rate(p, s) for s in dict.fromkeys(("mumps", ch_solver))}
    for s, rate in ref.items():
        say(f"heat step (LU {s}, factorisation reused)  dofs={n} steps={N}  "
            f"{rate:.3g} DOF*steps/s")
    r, wall, mem = timed(lambda: solve(p, "cole-hopf"))
    rate, rate_wall = 2 * n * N / r.seconds, 2 * n * N / wall
    say(f"cole-hopf (both sweeps, 2*dofs*steps)  solver {r.seconds:.2f}s = {rate:.3g} "
        f"DOF*steps/s, wall {wall:.2f}s = {rate_wall:.3g}  ratio to heat: "
        + ", ".join(f"{s} {rate / v:.2f} (wall {rate_wall / v:.2f})" for s, v in ref.items())
        + f"  J={r.J:.6f} peak_mem={mem:.0f}MB")
    ch_wall = wall
    runs = [(f"newton {name}", a.cells, a.steps,
             lambda q, o=o: newton(q, linear="sweep", guess=o.pop("guess", "trivial"),
                                   petsc_options=o))
            for name, o in parse_configs(a.configs)]
    if a.small_cells:
        runs += [("newton lu", a.small_cells, a.small_steps, lambda q: newton(q, linear="lu")),
                 ("newton sweep", a.small_cells, a.small_steps,
                  lambda q: newton(q, linear="sweep")),
                 ("picard", a.small_cells, a.small_steps, lambda q: solve(q, "picard"))]
    for name, cells, steps, fn in runs:
        q = problem(cells, steps, True)
        r, wall, mem = timed(lambda fn=fn, q=q: fn(q))
        kry = [h["ksp_its"] for h in r.history if "ksp_its" in h]
        fac = [h["factorisations"] for h in r.history if "factorisations" in h]
        extra = (f"krylov/newton={kry}" if name.startswith("newton") else "")
        extra += f" factorisations={fac[-1]}" if fac else ""
        ratio = (f"newton/cole-hopf time={wall / ch_wall:.1f}x " if cells == a.cells else "")
        say(f"{name:12s} congested dofs={ndofs(q)} steps={steps} its={r.iterations} {extra} "
            f"time={wall:.2f}s {ratio}J={r.J:.8f} mass_err={r.mass_error:.1e} "
            f"peak_mem={mem:.0f}MB")
        PETSc.garbage_cleanup()


def parse_configs(text):
    """"name:key=value,key=value;…" → [(name, {key: value})]."""
    out = []
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        name, _, rest = entry.partition(":")
        opts = dict(kv.split("=", 1) for kv in filter(None, rest.split(",")))
        out.append((name or "sweep", opts))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=244)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--small-cells", type=int, default=24)
    ap.add_argument("--small-steps", type=int, default=10)
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--configs", default="trivial-guess:;cole-hopf-guess:guess=cole-hopf;"
                    "coarse-guess:guess=coarse",
                    help="Newton sweep configurations 'name:key=value,…;…' (mfc_ options, "
                    "and guess=trivial|cole-hopf)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    args = [__file__, "--child", "--cells", str(a.cells), "--steps", str(a.steps),
            "--small-cells", str(a.small_cells), "--small-steps", str(a.small_steps),
            "--configs", a.configs]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMPI_COMM_WORLD", "PMIX_", "OMPI_MCA_ess", "OMPI_MCA_orte"))}
    for r in map(int, a.ranks.split(",")):
        cmd = [sys.executable, *args] if r == 1 else ["mpirun", "-n", str(r), sys.executable, *args]
        subprocess.run(cmd, env=env, check=True)


if __name__ == "__main__":
    main()
