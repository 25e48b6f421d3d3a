"""Which linear path Newton takes (``[solver] linear = "auto"``): the cheaper of

* ``"lu"``: one sparse LU of the whole space-time Jacobian per Newton step (MUMPS), and
* ``"sweep"``: a few Krylov iterations, each one backward and one forward sweep of per-step
  solves with reused per-step LU factors,

by estimates of their cost per Newton step.  The space-time matrix of a d-dimensional mesh
factorises like a (d+1)-dimensional problem: nested dissection cuts it along its longest
side, and the separators of a (d+1)-dimensional grid make the fill grow like n^{2d/(d+1)}
and the flops like n^{3d/(d+1)} (n unknowns) — fast in 1D, 3D-like in 2D, 4D-like in 3D.
:func:`nd_cost` estimates flops and factor entries of a box-shaped grid by the recursion of
nested dissection with dense fronts; the mesh is modelled as a box with n^{1/d} vertices per
side (and the degree's extra dofs per cell).  Time per flop, per factor entry and per level
come from the benchmark matrix (``benchmarks/bench_matrix.py``, constants below, with the
command that reproduces them in docs/performance.md).  The LU path is never chosen when its
factors are estimated to need more than LU_MEMORY_FRACTION of the machine's memory.

The sweep path is the only path for formulations whose declared structure does not make the
sweep preconditioner effective (``Formulation.sweep`` False: QHD keeps LU unless asked; the
Cole–Hopf pair takes the sweep, 2–50 Krylov iterations per Newton step, 1D 1,025 × 100:
1.9 s against LU 20 s, 2D 16² × 16: 2.2 against 18 s).
"""
from __future__ import annotations

import math
import os

# -- constants of the cost model (seconds), fitted on the benchmark matrix ------------------
# (results/calib1: 1D/2D/3D P1, 20 steps, congested; docs/performance.md has the command)
FLOP_TIME = 3.0e-9             # s per estimated flop of a sparse LU (the estimate is ≈ 1/6 of
                               # MUMPS' count)
ST_ENTRY_TIME = 7.0e-9         # s per estimated factor entry, MUMPS' space-time solves
LU_LEVEL_TIME = 3.0e-3         # s per level per Newton step of the LU path besides the LU
                               # (blocks, MatNest → AIJ)
DOF_STEP_TIME = 2.0e-7         # s per unknown and level: residual, products, vectors
SWEEP_LEVEL_TIME = 2.5e-3      # s per level per Newton step of the sweep path, fixed part
SWEEP_DOF_TIME = {1: 1.3e-6, 2: 2.4e-6, 3: 1.2e-5}   # … per dof (all Krylov sweeps, blocks,
                                                       # per-step set-ups), by dimension
ESTIMATED = "estimated cost per Newton step"   # the record's rule when the estimates chose
LU_MEMORY_FRACTION = 0.5       # of the physical memory: above this, never LU
BYTES_PER_ENTRY = 12           # a factor entry (value + index, MUMPS)


def nd_cost(sides: tuple, unknowns_per_node: float = 1.0) -> tuple[float, float]:
    """(flops, factor entries) of the nested-dissection LU of a grid with ``sides`` vertices
    per side (nearest-neighbour coupling incl. diagonals), ``unknowns_per_node`` unknowns at
    each vertex: cut the longest side by a one-vertex-thick separator, factor its dense front
    (the separator and the boundary it inherits, ≈ 2× the separator), recurse."""
    flops = entries = 0.0
    stack = [(tuple(float(s) for s in sides), 1.0)]
    while stack:
        dims, count = stack.pop()
        n = math.prod(dims) * unknowns_per_node
        if n <= 64.0 or max(dims) <= 2.0:
            flops += count * n ** 3 / 3.0
            entries += count * n * n
            continue
        i = max(range(len(dims)), key=lambda j: dims[j])
        sep = unknowns_per_node * math.prod(d for j, d in enumerate(dims) if j != i)
        front = 2.0 * sep
        flops += count * (front ** 3 / 3.0)
        entries += count * front * sep
        half = list(dims)
        half[i] = max((dims[i] - 1.0) / 2.0, 1.0)
        stack.append((tuple(half), 2.0 * count))
    return flops, entries


def mesh_sides(ndofs: int, dim: int) -> tuple:
    """A box of ``ndofs`` vertices in ``dim`` dimensions."""
    side = max(ndofs, 1) ** (1.0 / dim)
    return (side,) * dim


def estimates(ndofs: int, N: int, dim: int, ranks: int = 1) -> dict:
    """Estimated seconds per Newton step of both paths and the LU's factor memory.  Measured
    over the benchmark matrix (1D–3D, 300–66k dofs, 20 steps) the estimates are within a
    factor 3 of the times; the sweep path was faster at every measured point."""
    st_flops, st_entries = nd_cost(mesh_sides(ndofs, dim) + (N,), 2.0)
    lu = (FLOP_TIME * st_flops + ST_ENTRY_TIME * st_entries
          + (LU_LEVEL_TIME + DOF_STEP_TIME * 2 * ndofs) * N)
    sweep = N * (SWEEP_LEVEL_TIME + SWEEP_DOF_TIME.get(dim, SWEEP_DOF_TIME[3]) * ndofs)
    return {"lu_s": lu / ranks ** 0.5, "sweep_s": sweep / ranks,
            "lu_bytes": BYTES_PER_ENTRY * st_entries, "lu_flops": st_flops}


def step_kind(ndofs: int, dim: int, ranks: int = 1, solves: float = 10.0) -> str:
    """The per-step solver kind (fem_mfc.solvers.steps): LU where its factorisation is cheap
    (1D, 2D: ILU was slower at every measured size, its iterations growing like τε/h²),
    GMRES + ILU(0) in 3D, where the fill of a factorisation grows like n^{4/3} and its time
    like n² while ILU needs 8–20 iterations (docs/performance.md)."""
    return "lu" if dim <= 2 else "ilu"


def memory_bytes() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8e9


def sizes(st) -> tuple[int, int, int]:
    """(global dofs per level, steps, mesh dimension) of the space-time system ``st``."""
    V = st.V
    return V.dofmap.index_map.size_global * V.dofmap.index_map_bs, st.N, V.mesh.topology.dim


def serial_ratio(st) -> float:
    """The LU's estimated Newton step over the sweep's for ``st`` on one rank: the same on
    every number of ranks (the estimates give a second rank half the sweep's time but only
    1/√2 of the LU's, which the continuation's sweeps do not bear out: 1D, 401 dofs, 2 ranks
    15.1 s against 8.7 s on one, the LU stages 6.9 against 6.6 s)."""
    e = estimates(*sizes(st), ranks=1)
    return e["lu_s"] / e["sweep_s"]


def choose(st) -> tuple[str, dict]:
    """("lu" | "sweep", record of the estimates) for the space-time system ``st``."""
    ndofs, N, dim = sizes(st)
    est = estimates(ndofs, N, dim, st.comm.size)
    record = {"rule": ESTIMATED,
              **{k: float(f"{v:.3g}") for k, v in est.items()}}
    if not getattr(st.formulation, "sweep", True):
        return "lu", dict(record, rule="formulation without an effective sweep")
    if est["lu_bytes"] > LU_MEMORY_FRACTION * memory_bytes():
        return "sweep", dict(record, rule="LU factors would not fit in memory")
    return ("lu" if est["lu_s"] < est["sweep_s"] else "sweep"), record


__all__ = ["choose", "estimates", "nd_cost", "serial_ratio", "sizes"]
