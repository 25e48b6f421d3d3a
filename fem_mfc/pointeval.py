"""MPI-safe point evaluation of finite element fields at points known to every rank.

Every rank holds the same points.  Each rank searches its *owned* cells (bounding box tree +
exact collision); a point found by several ranks (on an interface) is assigned to the lowest
of them, the owner evaluates, and an allreduce (sum) gives every rank the values.  Points that
lie outside the mesh are projected to the closest point of the mesh (GJK distance to the
closest cell, minimised over the ranks), nudged slightly inwards along the way from the point
to it — a direction of the geometry alone, so that the result does not depend on which of the
cells meeting at that point a rank found (toward that cell's centre, a point beside a vertex
shared by cells on two ranks moved by 3e-10 between 1 and 2 ranks).
"""
from __future__ import annotations

from mpi4py import MPI

import numpy as np

FAR = 1e4       # points farther than FAR × the mesh's extent from its bounding box are pulled
                # in to that distance before the nearest point is sought (see _pull_in)
NUDGE = 1e-9    # a projected point moves this × the mesh's extent into the mesh


class PointEvaluator:
    """Locate points in a distributed mesh and evaluate Functions there."""

    def __init__(self, mesh):
        import dolfinx.geometry as G
        self.mesh = mesh
        self.comm = mesh.comm
        self.tdim = mesh.topology.dim
        self.gdim = mesh.geometry.dim
        n = mesh.topology.index_map(self.tdim).size_local
        self.cells = np.arange(n, dtype=np.int32)
        self.tree = G.bb_tree(mesh, self.tdim, self.cells)
        self.mid_tree = G.create_midpoint_tree(mesh, self.tdim, self.cells) if n else None
        self.dofmap = mesh.geometry.dofmap
        self.xg = mesh.geometry.x
        self._bounds = None

    @staticmethod
    def _pad3(X):
        P = np.zeros((X.shape[0], 3))
        P[:, :X.shape[1]] = X
        return P

    def locate(self, X):
        """(local cell or −1, owner rank or comm.size if no rank holds the point) per point."""
        import dolfinx.geometry as G
        P = self._pad3(X)
        cell = np.full(len(P), -1, dtype=np.int32)
        if len(self.cells) and len(P):
            cand = G.compute_collisions_points(self.tree, P)
            coll = G.compute_colliding_cells(self.mesh, cand, P)
            off, arr = coll.offsets, coll.array
            has = off[1:] > off[:-1]
            cell[has] = arr[off[:-1][has]]
        mine = np.where(cell >= 0, self.comm.rank, self.comm.size).astype(np.int32)
        owner = np.empty_like(mine)
        self.comm.Allreduce(mine, owner, op=MPI.MIN)
        cell[owner != self.comm.rank] = -1
        return cell, owner

    def bounds(self):
        """The mesh's bounding box (lo, hi), as 3-vectors (collective the first time)."""
        if self._bounds is None:
            xg = self.xg                          # (n, 3)
            lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
            if len(xg):
                lo, hi = xg.min(axis=0), xg.max(axis=0)
            self.comm.Allreduce(MPI.IN_PLACE, lo, op=MPI.MIN)
            self.comm.Allreduce(MPI.IN_PLACE, hi, op=MPI.MAX)
            self._bounds = (lo, hi)
        return self._bounds

    def _pull_in(self, P):
        """P with each row farther than FAR × the mesh's extent from the mesh's bounding box
        moved, along the way to its nearest point of the box, to that distance.  Far away the
        distances to the cells along a face differ by round-off only: a point 1e12 or 1e20
        away was projected to a wrong vertex (or inside the mesh), one 1e300 away raised "GJK
        error - max iteration limit reached" (``fem-mfc predict`` on such a row: a
        traceback).  Its nearest point moves by about extent/FAR where the boundary curves,
        not at all on a face of the box."""
        lo, hi = self.bounds()
        reach = FAR * max(float(np.max(hi - lo)), 1e-300)
        b = np.clip(P, lo, hi)
        d = np.hypot.reduce(P - b, axis=1)          # no overflow at 1e300
        far = d > reach
        P = P.copy()
        P[far] = b[far] + (P[far] - b[far]) * (reach / d[far])[:, None]
        return P

    def project(self, X):
        """Closest points of the mesh to the rows of X (which lie outside it)."""
        import dolfinx.geometry as G
        P = self._pull_in(self._pad3(X))
        lo, hi = self.bounds()
        step = NUDGE * max(float(np.max(hi - lo)), 1e-300)
        best = np.full(len(P), np.inf)
        Q = P.copy()
        if self.mid_tree is not None and len(P):
            ent = G.compute_closest_entity(self.tree, self.mid_tree, self.mesh, P)
            for i, c in enumerate(ent):
                verts = self.xg[self.dofmap[c]]
                v = G.compute_distance_gjk(verts, P[i])   # from the point to the cell
                q = P[i] + v
                best[i] = np.linalg.norm(v)
                # inwards along v: the nearest point of a mesh from outside is on a facet
                # (v its inward normal) or a convex corner (v in its inward cone)
                Q[i] = (q + step * v / best[i] if best[i] > 0
                        else q + NUDGE * (verts.mean(axis=0) - q))
        dmin = np.empty_like(best)
        self.comm.Allreduce(best, dmin, op=MPI.MIN)
        winner = np.where(best == dmin, self.comm.rank, self.comm.size).astype(np.int32)
        win = np.empty_like(winner)
        self.comm.Allreduce(winner, win, op=MPI.MIN)
        Q[win != self.comm.rank] = 0.0
        out = np.empty_like(Q)
        self.comm.Allreduce(Q, out, op=MPI.SUM)
        return out[:, :X.shape[1]]

    def clamp(self, X):
        """Return (X with outside points projected onto the mesh, cells, number projected)."""
        cell, owner = self.locate(X)
        out = owner == self.comm.size
        nout = int(out.sum())
        if nout:
            X = X.copy()
            X[out] = self.project(X[out])
            c2, o2 = self.locate(X[out])
            cell[out] = c2
            owner[out] = o2
        return X, cell, nout

    def evaluate(self, f, X, cell):
        """Values of Function ``f`` at points X (cells from :meth:`locate`), on every rank."""
        vs = int(np.prod(f.ufl_shape)) if f.ufl_shape else 1
        vals = np.zeros((len(X), vs))
        mine = cell >= 0
        if mine.any():
            vals[mine] = f.eval(self._pad3(X[mine]), cell[mine]).reshape(-1, vs)
        out = np.empty_like(vals)
        self.comm.Allreduce(vals, out, op=MPI.SUM)
        return out if f.ufl_shape else out[:, 0]
