"""The DOLFINx- and PETSc-version-specific calls of fem_mfc, in one place.

fem_mfc is pinned to DOLFINx 0.9 (Debian 13); upstream is at 0.11.  The calls whose spelling
changed since (or that reach below petsc4py) go through this module, so a port touches one
file:

* ``interpolation_points(V)``: a method in 0.9, a property from 0.10;
* ``create_vector(form)``: ``dolfinx.fem.petsc.create_vector`` takes a form in 0.9 and a
  list of function spaces from 0.10;
* ``nonlinear_residual_jacobian(F, u)``: ``dolfinx.fem.petsc.NonlinearProblem`` (0.9) is a
  residual/Jacobian holder; from 0.10 it is a SNES wrapper — fem_mfc only needs F and J;
* ``vtx_writer``: the ``engine`` keyword;
* ``unused_petsc_options()``: ``PetscOptionsLeftGet``, which petsc4py does not wrap.
"""
from __future__ import annotations

import ctypes
import functools

import dolfinx
import dolfinx.fem.petsc

DOLFINX = tuple(int(x) for x in dolfinx.__version__.split(".")[:2])


def interpolation_points(V):
    pts = V.element.interpolation_points
    return pts() if callable(pts) else pts


def create_vector(form):
    if DOLFINX < (0, 10):
        return dolfinx.fem.petsc.create_vector(form)
    return dolfinx.fem.petsc.create_vector(form.function_spaces)    # pragma: no cover


class ResidualJacobian:
    """Compiled residual F(u; v) and Jacobian dF/du of a nonlinear problem, with
    ``F(x, b)`` and ``J(x, A)`` assembling them at x (the 0.9 ``NonlinearProblem`` API)."""

    def __init__(self, F, u):
        import ufl
        self._u = u
        self.L = dolfinx.fem.form(F)
        self.a = dolfinx.fem.form(ufl.derivative(F, u, ufl.TrialFunction(u.function_space)))

    def F(self, x, b):
        from petsc4py import PETSc
        x.ghostUpdate(addv=PETSc.InsertMode.INSERT, mode=PETSc.ScatterMode.FORWARD)
        with b.localForm() as loc:
            loc.set(0.0)
        dolfinx.fem.petsc.assemble_vector(b, self.L)
        b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)

    def J(self, x, A):
        A.zeroEntries()
        dolfinx.fem.petsc.assemble_matrix(A, self.a)
        A.assemble()


def nonlinear_residual_jacobian(F, u) -> ResidualJacobian:
    return ResidualJacobian(F, u)


def vtx_writer(comm, path: str, functions, engine: str = "BP4"):
    return dolfinx.io.VTXWriter(comm, path, functions, engine=engine)


@functools.lru_cache(maxsize=1)
def _libpetsc():
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1] if line.split() else ""
            if "libpetsc" in path and ".so" in path:
                return ctypes.CDLL(path)
    return None


def unused_petsc_options() -> list[str] | None:
    """Names (without '-') of the options in PETSc's database that nothing has read
    (PetscOptionsLeftGet); None where the library cannot be reached."""
    lib = _libpetsc()
    if lib is None or not hasattr(lib, "PetscOptionsLeftGet"):
        return None
    from petsc4py import PETSc
    intc = ctypes.c_int64 if PETSc.IntType().itemsize == 8 else ctypes.c_int32
    n = intc()
    names = ctypes.POINTER(ctypes.c_char_p)()
    values = ctypes.POINTER(ctypes.c_char_p)()
    if lib.PetscOptionsLeftGet(None, ctypes.byref(n), ctypes.byref(names),
                               ctypes.byref(values)) != 0:
        return None
    out = [names[i].decode() for i in range(n.value)]
    lib.PetscOptionsLeftRestore(None, ctypes.byref(n), ctypes.byref(names),
                                ctypes.byref(values))
    return out


__all__ = ["interpolation_points", "create_vector", "nonlinear_residual_jacobian",
           "vtx_writer", "unused_petsc_options", "DOLFINX"]


def adios2():
    """ADIOS2's Python module in its MPI flavour.  Debian ships a serial and an MPI build;
    whichever ``import adios2`` loads first stays, and adios4dolfinx refuses the serial one
    ("ADIOS2 must be built with MPI support"): let adios4dolfinx choose."""
    import importlib
    importlib.import_module("adios4dolfinx")     # first: it imports the MPI build
    import adios2 as module
    return module
