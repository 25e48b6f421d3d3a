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
    fine mesh; non-matching).  Returns (len(sources), local size).

    Serial, on affine simplex meshes with Lagrange elements needing no dof transformations
    (degree ≤ 2): one sparse interpolation matrix (fine dof ← coarse cell's basis at its
    reference coordinates; a point outside the coarse mesh takes the closest cell,
    extrapolating) applied to all sources at once.  Otherwise dolfinx's non-matching
    interpolation through a blocked space with one component per source (one collision
    search and one evaluation for all of them; parallel)."""
    P = _interpolation_matrix(sources[0].function_space, V_to)
    if P is not None:
        return np.ascontiguousarray((P @ np.stack([f.x.array for f in sources], axis=1)).T)
    return _transfer_nonmatching(sources, V_to)


def _interpolation_matrix(V_from, V_to):
    """The sparse matrix of the fast path of :func:`transfer_all`, or None where it does not
    apply."""
    import dolfinx
    import dolfinx.geometry as geo
    import scipy.sparse as sp
    mc = V_from.mesh
    tdim = mc.topology.dim
    simplex = mc.topology.cell_type in (dolfinx.mesh.CellType.interval,
                                        dolfinx.mesh.CellType.triangle,
                                        dolfinx.mesh.CellType.tetrahedron)
    if (mc.comm.size > 1 or not simplex or mc.geometry.cmap.degree != 1
            or V_from.element.needs_dof_transformations
            or V_from.dofmap.index_map_bs != 1 or V_to.dofmap.index_map_bs != 1):
        return None
    X = V_to.tabulate_dof_coordinates()
    n = X.shape[0]
    n_from = V_from.dofmap.index_map.size_local + V_from.dofmap.index_map.num_ghosts
    if n == 0:
        return sp.csr_matrix((0, n_from))
    ncells = mc.topology.index_map(tdim).size_local
    tree = geo.bb_tree(mc, tdim)
    hits = geo.compute_colliding_cells(mc, geo.compute_collisions_points(tree, X), X)
    offs = hits.offsets
    cell = np.full(n, -1, dtype=np.int32)
    found = np.diff(offs) > 0
    cell[found] = hits.array[offs[:-1][found]]
    if not found.all():                       # outside the coarse mesh: the closest cell
        mid = geo.create_midpoint_tree(mc, tdim, np.arange(ncells, dtype=np.int32))
        cell[~found] = geo.compute_closest_entity(tree, mid, mc, X[~found])
    if (cell < 0).any():
        return None
    gdim = mc.geometry.dim
    nodes = mc.geometry.x[mc.geometry.dofmap[cell]][:, :, :gdim]    # (n, tdim+1, gdim)
    J = np.transpose(nodes[:, 1:, :] - nodes[:, :1, :], (0, 2, 1))  # (n, gdim, tdim)
    rhs = (X[:, :gdim] - nodes[:, 0, :])[:, :, None]
    # reference coordinates: J X = x − x₀ (a manifold mesh, gdim > tdim: least squares)
    ref = (np.linalg.solve(J, rhs) if gdim == tdim else np.linalg.pinv(J) @ rhs).reshape(n, tdim)
    phi = V_from.element.basix_element.tabulate(0, ref)[0, :, :, 0]   # (n, dofs per cell)
    cols = V_from.dofmap.list[cell]
    rows = np.repeat(np.arange(n), cols.shape[1])
    return sp.csr_matrix((phi.ravel(), (rows, cols.ravel())), shape=(n, n_from))


def _transfer_nonmatching(sources: list, V_to) -> np.ndarray:
    """:func:`transfer_all` through dolfinx's non-matching interpolation."""
    import basix.ufl
    import dolfinx
    V_from = sources[0].function_space
    k = len(sources)

    def el(V):
        return basix.ufl.element("Lagrange", V.mesh.basix_cell(),
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


def coarse_guess(st, solve, rtol: float, atol: float, max_it: int, prefix: str) -> str:
    """States of ``st`` ← the interpolated solution of ``st.problem.coarse()`` (solved by
    ``solve`` — :func:`fem_mfc.solvers.newton.newton`, passed in by it —, itself nested while
    large) if it exists, converged
    and gives a smaller residual than the trivial guess; returns a description for the
    history."""
    p = st.problem
    make = getattr(p, "coarse", None)
    if make is None:
        return "trivial (no coarser grid)"
    coarse = make()
    nc = coarse.space.dofmap.index_map.size_global * coarse.steps * 2
    if nc >= st.V.dofmap.index_map.size_global * st.N * 2:
        return "trivial (the coarser problem is not smaller)"
    inner = "coarse" if nc >= MIN_UNKNOWNS and getattr(coarse, "coarse", None) else "trivial"
    r = solve(coarse, rtol=COARSE_RTOL, atol=atol, max_it=max_it, prefix=prefix, guess=inner)
    if not r.converged:
        return f"trivial (the coarse solve did not converge: {r.reason})"
    transfer(coarse, st, r.rho, r.u)
    ndofs = coarse.space.dofmap.index_map.size_global
    return (f"coarse ({ndofs} dofs x {coarse.steps} steps, {r.iterations} Newton steps"
            + (f", {r.history[0].get('guess')}" if r.history else "") + ")")


__all__ = ["coarse_guess", "transfer", "transfer_all"]
