"""Invariants and norms as assembled functionals (global over all ranks)."""
from __future__ import annotations

import math

from mpi4py import MPI

import dolfinx
import ufl


def assemble(expr_form, comm) -> float:
    """Assemble a scalar UFL form and sum it over the ranks of ``comm``."""
    return comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(expr_form)), op=MPI.SUM)


def integrate(f) -> float:
    """∫_Ω f dx (mass when f = ρ)."""
    mesh = f.function_space.mesh if hasattr(f, "function_space") else f.ufl_domain()
    return assemble(f * ufl.dx(domain=mesh), mesh.comm)


def l2_error(f, exact, degree_raise: int = 3) -> float:
    """‖f − exact‖_{L²(Ω)} with a quadrature degree raised for the exact expression."""
    mesh = f.function_space.mesh
    deg = f.function_space.element.basix_element.degree + degree_raise
    e = f - exact
    return math.sqrt(max(assemble(ufl.inner(e, e) * ufl.dx(metadata={"quadrature_degree": deg}),
                                  mesh.comm), 0.0))
