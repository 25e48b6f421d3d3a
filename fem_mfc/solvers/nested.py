"""Nested iteration: Newton's initial guess from the solution on a coarser grid.

Newton converges quadratically once its iterate is within its region of quadratic
convergence; the discrete solution on a grid twice as coarse in space and time differs from
the fine one by the discretisation error, which is inside it on any reasonable grid.  So:
solve the coarse problem (``problem.coarse()``, built with half the cells per axis and half the
steps; itself from an even coarser one while it is large), interpolate its states in space
(non-matching meshes: :func:`dolfinx.fem.Function.interpolate_nonmatching`, all levels in
one call through a blocked space) and linearly in
time (ρⁿ at t_n, uⁿ at the time the scheme's uⁿ approximates, with u(T) = Φ as the last
node), and finish with one or two fine Newton steps.  In 2D a coarse solve costs about 1/8 of
a fine one (1/16 in 3D), so the whole hierarchy costs less than one fine Newton step more.
"""
from __future__ import annotations

import numpy as np

MIN_UNKNOWNS = 40_000           # coarse problems below this many space-time unknowns are
                                # solved from the trivial guess (no further coarsening)
COARSE_RTOL = 1e-8              # relative residual of the coarse solves


def transfer_all(sources: list, V_to) -> np.ndarray:
    """The Functions ``sources`` (one space on the coarse mesh) interpolated into V_to (the
    fine mesh; non-matching): one collision search and one evaluation for all of them, through
    a blocked space with one component per source.  Returns (len(sources), local size)."""
    import basix.ufl
    import dolfinx
    V_from = sources[0].function_space
    k = len(sources)
    el = lambda V: basix.ufl.element("Lagrange", V.mesh.basix_cell(),
                                     V.element.basix_element.degree, shape=(k,))
    W_from = dolfinx.fem.functionspace(V_from.mesh, el(V_from))
    W_to = dolfinx.fem.functionspace(V_to.mesh, el(V_to))
    src = dolfinx.fem.Function(W_from)
    n_from = V_from.dofmap.index_map.size_local + V_from.dofmap.index_map.num_ghosts
    src.x.array.reshape(n_from, k)[:] = np.stack([f.x.array for f in sources], axis=1)
    msh = V_to.mesh
    tdim = msh.topology.dim
    n = msh.topology.index_map(tdim).size_local + msh.topology.index_map(tdim).num_ghosts
    cells = np.arange(n, dtype=np.int32)
    h = float(msh.h(tdim, cells[: max(1, min(n, 8))]).max()) if n else 1.0
    data = dolfinx.fem.create_interpolation_data(W_to, W_from, cells, padding=0.5 * h)
    dst = dolfinx.fem.Function(W_to)
    dst.interpolate_nonmatching(src, cells, data)
    dst.x.scatter_forward()
    n_to = V_to.dofmap.index_map.size_local + V_to.dofmap.index_map.num_ghosts
    return dst.x.array.reshape(n_to, k).T.copy()


def _weights(t_from: np.ndarray, t: float):
    """(i, j, w): t ≈ (1 − w)·t_from[i] + w·t_from[j] (constant beyond the ends)."""
    if t <= t_from[0]:
        return 0, 0, 0.0
    if t >= t_from[-1]:
        return len(t_from) - 1, len(t_from) - 1, 0.0
    j = int(np.searchsorted(t_from, t))
    i = j - 1
    return i, j, (t - t_from[i]) / (t_from[j] - t_from[i])


def transfer(coarse, st, rho_c: list, u_c: list):
    """States of the fine system ``st`` ← the coarse solution (ρ⁰..ρ^Nc, u⁰..u^{Nc−1} on
    ``coarse``) in space and time."""
    import dolfinx
    p, V = st.problem, st.V
    phi = dolfinx.fem.Function(coarse.space)
    phi.interpolate(dolfinx.fem.Expression(coarse.Phi,
                                           coarse.space.element.interpolation_points()))
    fields = transfer_all(list(rho_c) + list(u_c) + [phi], V)     # u(T) = Φ last
    rho, u = fields[: len(rho_c)], fields[len(rho_c):]
    t_rho = np.array([coarse.rho_time(m) for m in range(coarse.steps + 1)])
    for n in range(1, st.N + 1):
        i, j, w = _weights(t_rho, p.rho_time(n))
        st.rho[n].x.array[:] = (1 - w) * rho[i] + w * rho[j]
    t_u = np.array([coarse.u_time(m) for m in range(coarse.steps)] + [coarse.T])
    for n in range(st.N):
        i, j, w = _weights(t_u, p.u_time(n))
        st.u[n].x.array[:] = (1 - w) * u[i] + w * u[j]


def coarse_guess(st, rtol: float, atol: float, max_it: int, prefix: str) -> str:
    """States of ``st`` ← the interpolated solution of ``st.problem.coarse()`` (solved by
    :func:`fem_mfc.solvers.newton.newton`, itself nested while large) if it exists, converged
    and gives a smaller residual than the trivial guess; returns a description for the
    history."""
    from .newton import newton
    p = st.problem
    make = getattr(p, "coarse", None)
    if make is None:
        return "trivial (no coarser grid)"
    coarse = make()
    nc = coarse.space.dofmap.index_map.size_global * coarse.steps * 2
    if nc >= st.V.dofmap.index_map.size_global * st.N * 2:
        return "trivial (the coarser problem is not smaller)"
    inner = "coarse" if nc >= MIN_UNKNOWNS and getattr(coarse, "coarse", None) else "trivial"
    r = newton(coarse, rtol=COARSE_RTOL, atol=atol, max_it=max_it, prefix=prefix, guess=inner)
    if not r.converged:
        return f"trivial (the coarse solve did not converge: {r.reason})"
    transfer(coarse, st, r.rho, r.u)
    ndofs = coarse.space.dofmap.index_map.size_global
    return (f"coarse ({ndofs} dofs x {coarse.steps} steps, {r.iterations} Newton steps"
            + (f", {r.history[0].get('guess')}" if r.history else "") + ")")


__all__ = ["coarse_guess", "transfer", "transfer_all"]
