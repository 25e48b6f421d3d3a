"""Madelung maps between the wave function Ψ = q + ip and the hydrodynamic pair (ρ, S) (§3, §4).

  forward:   ρ = |Ψ|² = q² + p²,   ∇S = ħ Im(Ψ̄∇Ψ)/|Ψ|² = ħ (q∇p − p∇q)/(q² + p²)
  inverse:   Ψ = √ρ e^{iS/ħ}

ρ and the wrapped phase S = ħ arg Ψ are nodal interpolants in the scalar Lagrange space of Ψ's
components; ∇S is the L²-projection onto the vector Lagrange space of the same degree (ρ is
regularised as max(ρ, δ·max ρ) where Ψ ≈ 0).  :func:`phase_from_gradient` recovers an
unwrapped S from ∇S (Neumann problem ∫∇S·∇v = ∫w·∇v, zero mean), so (ρ, ∇S) → Ψ is the
inverse map up to the global phase that a velocity potential cannot see.
"""
from __future__ import annotations

from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import dolfinx.fem.petsc
import numpy as np
import ufl

from . import options
from .errors import SolverError
from .solvers.linear import make_ksp


def scalar_space(z):
    """The scalar Lagrange space of one component of z = (q, p)."""
    return z.function_space.sub(0).collapse()[0]


def _interp(space, expr, name):
    f = dolfinx.fem.Function(space, name=name)
    f.interpolate(dolfinx.fem.Expression(expr, space.element.interpolation_points()))
    f.x.scatter_forward()
    return f


def _lu(A, comm, prefix):
    """MUMPS' LU, whose null-pivot detection (ICNTL(24)) factorises the pure-Neumann
    Laplacian of :func:`phase_from_gradient`."""
    return options.make_ksp(comm, prefix, A, factor="mumps")


def density(z, name="rho"):
    """ρ = q² + p² (nodal interpolant)."""
    return _interp(scalar_space(z), z[0] ** 2 + z[1] ** 2, name)


def phase(z, hbar: float = 1.0, name="S"):
    """The wrapped phase S = ħ atan2(p, q) ∈ (−πħ, πħ] (nodal)."""
    Vs = scalar_space(z)
    q = _interp(Vs, z[0], "q").x.array
    p = _interp(Vs, z[1], "p").x.array
    S = dolfinx.fem.Function(Vs, name=name)
    S.x.array[:] = hbar * np.arctan2(p, q)
    return S


class DensityPhase:
    """ρ and the wrapped phase S of z, as Functions ``rho`` and ``S`` of the scalar space,
    refreshed by :meth:`update` — the space collapsed and the interpolations compiled once,
    for a time stepper that writes them at many steps (the same values as :func:`density`
    and :func:`phase`)."""

    def __init__(self, z, hbar: float = 1.0):
        self.hbar = hbar
        self.space = scalar_space(z)
        pts = self.space.element.interpolation_points()
        self._exprs = [dolfinx.fem.Expression(e, pts)
                       for e in (z[0] ** 2 + z[1] ** 2, z[0], z[1])]
        self.rho = dolfinx.fem.Function(self.space, name="rho")
        self.S = dolfinx.fem.Function(self.space, name="S")
        self._q, self._p = dolfinx.fem.Function(self.space), dolfinx.fem.Function(self.space)
        self.update()

    def update(self):
        for f, e in zip((self.rho, self._q, self._p), self._exprs):
            f.interpolate(e)
            f.x.scatter_forward()
        self.S.x.array[:] = self.hbar * np.arctan2(self._p.x.array, self._q.x.array)


def phase_gradient(z, hbar: float = 1.0, delta: float = 1e-12, name="grad_S"):
    """∇S = ħ(q∇p − p∇q)/ρ, L²-projected onto vector Lagrange of the degree of z."""
    mesh = z.function_space.mesh
    deg = z.function_space.element.basix_element.degree
    Vv = dolfinx.fem.functionspace(mesh, ("Lagrange", deg, (mesh.geometry.dim,)))
    rho = z[0] ** 2 + z[1] ** 2
    rho_max = mesh.comm.allreduce(float(density(z).x.array.max()), op=MPI.MAX)
    w = hbar * (z[0] * ufl.grad(z[1]) - z[1] * ufl.grad(z[0])) \
        / ufl.max_value(rho, delta * rho_max)
    u, v = ufl.TrialFunction(Vv), ufl.TestFunction(Vv)
    dxq = ufl.dx(metadata={"quadrature_degree": 4 * deg + 2})
    A = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(ufl.inner(u, v) * ufl.dx))
    A.assemble()
    b = dolfinx.fem.petsc.assemble_vector(dolfinx.fem.form(ufl.inner(w, v) * dxq))
    b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
    out = dolfinx.fem.Function(Vv, name=name)
    ksp = make_ksp(A, "madelung_proj_", solves=1, symmetric=True)
    ksp.solve(b, out.x.petsc_vec)
    out.x.scatter_forward()
    for o in (ksp, A, b):
        o.destroy()
    return out


def to_madelung(z, hbar: float = 1.0):
    """Ψ ↦ (ρ, ∇S)."""
    return density(z), phase_gradient(z, hbar)


def phase_from_gradient(grad_S, space, name="S"):
    """S ∈ ``space`` with ∫∇S·∇v = ∫∇S_given·∇v for all v and ∫S = 0 (pure Neumann)."""
    mesh = space.mesh
    u, v = ufl.TrialFunction(space), ufl.TestFunction(space)
    A = dolfinx.fem.petsc.assemble_matrix(dolfinx.fem.form(
        ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx))
    A.assemble()
    b = dolfinx.fem.petsc.assemble_vector(dolfinx.fem.form(ufl.inner(grad_S, ufl.grad(v)) * ufl.dx))
    b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
    ones = dolfinx.fem.Function(space)
    ones.x.array[:] = 1.0
    c = ones.x.petsc_vec.copy()
    c.normalize()
    ns = PETSc.NullSpace().create(vectors=[c], comm=mesh.comm)
    A.setNullSpace(ns)
    ns.remove(b)
    ksp = _lu(A, mesh.comm, "madelung_phase_")
    # null-pivot detection (ICNTL(24)); more workspace where MUMPS asks for it
    options.factorise(ksp, icntl={24: 1, 25: 0})
    S = dolfinx.fem.Function(space, name=name)
    ksp.solve(b, S.x.petsc_vec)
    if ksp.getConvergedReason() < 0:
        raise SolverError(f"phase from its gradient: the LU solve failed (KSP reason "
                          f"{ksp.getConvergedReason()})")
    S.x.scatter_forward()
    vol = mesh.comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(
        1.0 * ufl.dx(domain=mesh))), op=MPI.SUM)
    mean = mesh.comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(S * ufl.dx)),
                               op=MPI.SUM) / vol
    S.x.array[:] -= mean
    for o in (ksp, A, b, c):
        o.destroy()
    return S


def from_madelung(rho, S, hbar, W, name="psi"):
    """(ρ, S) ↦ Ψ = √ρ e^{iS/ħ}, interpolated into the (q, p) space ``W``."""
    z = dolfinx.fem.Function(W, name=name)
    r = ufl.sqrt(ufl.max_value(rho, 0.0))
    z.interpolate(dolfinx.fem.Expression(ufl.as_vector([r * ufl.cos(S / hbar),
                                                        r * ufl.sin(S / hbar)]),
                                         W.element.interpolation_points()))
    z.x.scatter_forward()
    return z


def align_global_phase(z, z_ref):
    """Multiply z by the unit number e^{iθ} that makes ∫ Ψ̄_ref Ψ real positive."""
    comm = z.function_space.mesh.comm
    re = comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(
        (z_ref[0] * z[0] + z_ref[1] * z[1]) * ufl.dx)), op=MPI.SUM)
    im = comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(
        (z_ref[0] * z[1] - z_ref[1] * z[0]) * ufl.dx)), op=MPI.SUM)
    theta = -np.arctan2(im, re)
    a = z.x.array.reshape(-1, 2).copy()
    c, s = np.cos(theta), np.sin(theta)
    z.x.array[0::2] = c * a[:, 0] - s * a[:, 1]
    z.x.array[1::2] = s * a[:, 0] + c * a[:, 1]
    return z
