"""The evacuation problem against the congested benchmark on the same mesh, in one run.

    bin/fem-env python3 benchmarks/bench_evacuation.py [--levels 0.2:15,0.1:30,0.05:60]
        [--quick]

For each (mesh size h, steps) level the room of ``meshes/room.geo`` (three pillars, two doors)
is meshed once and solved twice by Newton with the default (automatic) linear path:

* **evacuation**: ``demos/room_evacuation.toml`` — the congestion Hamiltonian
  |p|²/(2(1 + ρ)), game coupling, exits at both doors (ρ = 0, u = 0);
* **congested**: the same mesh, steps and data with the quadratic Hamiltonian, no exits
  (walls everywhere) and the congestion G = ρ²/2 of the benchmark matrix (``mftc``).

Printed per level and problem: dofs, Newton iterations, Krylov iterations, solve time,
DOF·steps/s (dofs × steps / time), and the time relative to the congested problem and to the
limit proxy (``steps`` backward-Euler heat steps with one reused factorisation on the same
mesh, measured in the same run), after one untimed solve of both at the first level.
Timings are noisy: compare the ratios.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from mpi4py import MPI

from bench_matrix import heat_proxy

from fem_mfc import config
from fem_mfc.mesh import MESH_DIR, from_geo
from fem_mfc.problem import ControlProblem
from fem_mfc.solvers import solve

ROOT = Path(__file__).resolve().parents[1]


def problems(cfg: dict, md, steps: int) -> dict:
    evac = copy.deepcopy(cfg)
    evac["problem"]["steps"] = steps
    cong = copy.deepcopy(evac)
    cong["problem"].update(H="quadratic", G="0.5*rho**2", coupling="mftc")
    cong["boundary"] = []
    return {name: ControlProblem.from_config(c, md.mesh, md.cell_tags, md.facet_tags)
            for name, c in (("evacuation", evac), ("congested", cong))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="0.2:15,0.1:30,0.05:60")
    ap.add_argument("--quick", action="store_true", help="the two coarse levels only")
    a = ap.parse_args()
    comm = MPI.COMM_WORLD
    levels = [(float(h), int(n)) for h, n in (lv.split(":") for lv in a.levels.split(","))]
    if a.quick:
        levels = levels[:2]
    cfg = config.load(ROOT / "demos" / "room_evacuation.toml")
    rows = []
    h0, n0 = levels[0]                     # warm-up: form compilation is not timed
    for p in problems(cfg, from_geo(MESH_DIR / "room.geo", 2, comm, h=h0), n0).values():
        solve(p, method="newton", strict=False)
    for h, steps in levels:
        md = from_geo(MESH_DIR / "room.geo", 2, comm, h=h)
        out = {}
        for name, p in problems(cfg, md, steps).items():
            comm.Barrier()
            t0 = time.perf_counter()
            r = solve(p, method="newton", strict=False)
            dt = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
            ndofs = p.space.dofmap.index_map.size_global
            kry = sum(x.get("ksp_its") or 0 for x in r.history)
            out[name] = (ndofs, r, dt, kry)
        proxy = heat_proxy(p)
        for name, (ndofs, r, dt, kry) in out.items():
            rows.append((h, steps, name, ndofs, r.iterations, len(r.continuation), kry, dt,
                         ndofs * steps / dt, dt / out["congested"][2], dt / proxy,
                         r.converged))
    if comm.rank == 0:
        print("| h | steps | problem | dofs | Newton | continuation stages | Krylov | s | "
              "DOF·steps/s | × congested | × proxy | converged |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for h, n, name, nd, its, st, kry, dt, rate, rc, rp, ok in rows:
            print(f"| {h} | {n} | {name} | {nd} | {its} | {st} | {kry} | {dt:.2f} | "
                  f"{rate:.3g} | {rc:.2f} | {rp:.0f} | {ok} |")


if __name__ == "__main__":
    main()
