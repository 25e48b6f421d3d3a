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
* ``unused_petsc_options()``: ``PetscOptionsLeftGet``, which petsc4py does not wrap;
* ``linesearch_step(snes)``: ``SNESLineSearchGetLambda``, which petsc4py does not wrap;
* ``require_value(name)``: gives an option set without a value an empty but present value
  (PETSc's API stores "" as no value at all) through the options table's layout (PETSc
  3.18–3.24, checked on a probe entry before use; elsewhere it does nothing);
* ``write_mesh_serially(bp, data)``: a mesh gathered on rank 0 written in adios4dolfinx's
  layout by that rank alone (adios4dolfinx 0.9's writer internals; the checkpoints);
* ``fast_jit_lookup()``: FFCx 0.9 finds a cached form module by listing the whole JIT cache
  folder (``importlib.machinery.FileFinder``) on every ``dolfinx.fem.form`` call — 5 ms per
  form with 2,400 cached modules, growing with every form ever compiled; fem_mfc loads the
  module's shared object by its path and remembers it for the process.

Worked around elsewhere, to recheck on a port: FFCx 0.9 evaluates a functional (rank-0
form) whose cell integrals carry different quadrature rules with one rule for all of them
(∫r dx + ∫r² dx(degree 4) as if both were of degree 1; vector and matrix forms are right),
so no fem_mfc functional mixes rules (``forms.hjb_fp.StepData.dx``; the probe at the end of
``tests/test_hjb_fp_structure.py::test_every_functional_has_one_quadrature_rule`` prints
whether the installed version still does it).
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


_LIBPETSC = []


def _libpetsc():
    """PETSc's shared library as loaded in this process, or None (not loaded yet).  Found in
    /proc/self/maps once: callers query it per Newton step (the line search's step)."""
    if _LIBPETSC:
        return _LIBPETSC[0]
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1] if line.split() else ""
            if "libpetsc" in path and ".so" in path:
                _LIBPETSC.append(ctypes.CDLL(path))
                return _LIBPETSC[0]
    return None


def petsc_error_message(ierr: int) -> str | None:
    """PETSc's own words for its last error (PetscErrorMessage: the specific message, e.g.
    "Unknown KSP type given: notakspt", else the text of ``ierr``); None if unavailable."""
    lib = _libpetsc()
    if lib is None or not hasattr(lib, "PetscErrorMessage"):
        return None
    text, specific = ctypes.c_char_p(), ctypes.c_char_p()
    try:
        if lib.PetscErrorMessage(ctypes.c_int(int(ierr)), ctypes.byref(text),
                                 ctypes.byref(specific)) != 0:
            return None
    except (ValueError, TypeError, OSError):
        return None
    for s in (specific.value, text.value):
        if s:
            msg = " ".join(s.decode(errors="replace").split())
            if msg:
                return msg
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


def linesearch_step(snes) -> float | None:
    """The step length λ of ``snes``'s last line search (SNESLineSearchGetLambda, which
    petsc4py 3.22 does not wrap); None where the library cannot be reached."""
    lib = _libpetsc()
    if lib is None or not hasattr(lib, "SNESLineSearchGetLambda"):
        return None
    from petsc4py import PETSc
    if PETSc.RealType().itemsize != ctypes.sizeof(ctypes.c_double):
        return None                                              # pragma: no cover
    search, lam = ctypes.c_void_p(), ctypes.c_double()
    if lib.SNESGetLineSearch(ctypes.c_void_p(snes.handle), ctypes.byref(search)) != 0 \
            or not search.value \
            or lib.SNESLineSearchGetLambda(search, ctypes.byref(lam)) != 0:
        return None
    return float(lam.value)


class _OptionsTable(ctypes.Structure):
    """The head of ``struct _n_PetscOptions`` (src/sys/objects/options.c, PETSc 3.18–3.24)."""
    _fields_ = [("previous", ctypes.c_void_p), ("N", ctypes.c_int), ("Nalloc", ctypes.c_int),
                ("names", ctypes.POINTER(ctypes.c_char_p)),
                ("values", ctypes.POINTER(ctypes.c_void_p))]


_LAYOUT_VERSIONS = ((3, 18), (3, 24))


@functools.lru_cache(maxsize=1)
def _options_table():
    """PETSc's default options table, or None where its layout cannot be confirmed (another
    PETSc, the library not reachable, the probe entry not where the layout says)."""
    from petsc4py import PETSc
    lib = _libpetsc()
    if lib is None or not _LAYOUT_VERSIONS[0] <= tuple(PETSc.Sys.getVersion()[:2]) \
            <= _LAYOUT_VERSIONS[1] or not all(hasattr(lib, f) for f in (
                "PetscOptionsCreate", "PetscOptionsPush", "PetscOptionsPop",
                "PetscOptionsDestroy")):
        return None
    fresh = ctypes.c_void_p()
    if lib.PetscOptionsCreate(ctypes.byref(fresh)) != 0 or not fresh.value:
        return None
    try:                                    # a pushed database points to the default one
        if lib.PetscOptionsPush(fresh) != 0:
            return None
        default = ctypes.c_void_p.from_address(fresh.value).value
        lib.PetscOptionsPop()
    finally:
        lib.PetscOptionsDestroy(ctypes.byref(fresh))
    if not default:
        return None
    table = _OptionsTable.from_address(default)
    db, probe = PETSc.Options(), "fem_mfc_options_layout_probe"
    db.setValue(probe, "probe-value")
    try:
        if not 0 < table.N <= table.Nalloc < 1 << 24:
            return None
        for i in range(table.N):
            if table.names[i] == probe.encode():
                value = table.values[i]
                ok = value and ctypes.string_at(value) == b"probe-value"
                return table if ok else None
        return None
    finally:
        db.delValue(probe)


def _libc_malloc():
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    return libc.malloc


def _option_index(name: str):
    """(the options table, the index of option ``name`` in it), or (table, None) if it is not
    set, or (None, None) where the table is not reachable (see :func:`_options_table`)."""
    table = _options_table()
    if table is None:
        return None, None
    key = name.lower().encode()
    for i in range(table.N):
        if table.names[i] is not None and table.names[i].lower() == key:
            return table, i
    return table, None


def require_value(name: str) -> bool:
    """Give the option ``name`` (without '-'), set without a value, an empty value instead of
    none, so that PETSc reads it as it would read ``-name ""``: a flag, a boolean (true) or a
    viewer as before, but a number read from it is an error (``PetscOptionsGetInt`` and
    ``GetReal`` skip an option without a value silently: ``-snes_max_it`` alone was ignored).
    True if done; False where the table is not reachable or the option has a value."""
    table, i = _option_index(name)
    if i is None or table.values[i]:
        return False
    empty = _libc_malloc()(1)                     # PETSc frees values with free()
    if not empty:
        return False
    ctypes.memset(empty, 0, 1)
    table.values[i] = empty
    return True


def has_empty_value(name: str) -> bool:
    """Is ``name`` set with an empty but present value (:func:`require_value`)?"""
    table, i = _option_index(name)
    return i is not None and bool(table.values[i]) \
        and ctypes.string_at(table.values[i]) == b""


def option_used(name: str) -> bool | None:
    """Has anything read the option ``name`` (PetscOptionsUsed)?  None if unknown."""
    lib = _libpetsc()
    if lib is None or not hasattr(lib, "PetscOptionsUsed"):
        return None
    flag = ctypes.c_int(0)
    if lib.PetscOptionsUsed(None, name.encode(), ctypes.byref(flag)) != 0:
        return None
    return bool(flag.value)


def fast_jit_lookup() -> bool:
    """Make FFCx's look-up of an already compiled form module O(1) (see the module's
    docstring): the module is loaded from ``<cache>/<name><EXT_SUFFIX>`` once its
    ``.c.cached`` marker exists (FFCx writes it after the compilation) and kept for the
    process; anything else — not compiled yet, being compiled by another process, another
    FFCx — goes to FFCx's own function.  Idempotent; returns whether it is installed."""
    try:
        from ffcx.codegeneration import jit
    except ImportError:                                          # pragma: no cover
        return False
    original = jit.get_cached_module
    if getattr(original, "_fem_mfc", False):
        return True
    if original.__code__.co_varnames[:4] != ("module_name", "object_names", "cache_dir",
                                             "timeout"):
        return False                                             # pragma: no cover
    import importlib.machinery
    import importlib.util
    import os
    loaded = {}
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]

    def get_cached_module(module_name, object_names, cache_dir, timeout):
        key = (str(cache_dir), module_name)
        module = loaded.get(key)
        if module is None:
            base = os.path.join(str(cache_dir), module_name)
            if not (os.path.exists(base + ".c.cached") and os.path.exists(base + suffix)):
                return original(module_name, object_names, cache_dir, timeout)
            spec = importlib.util.spec_from_file_location(
                module_name, base + suffix,
                loader=importlib.machinery.ExtensionFileLoader(module_name, base + suffix))
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            loaded[key] = module
        return [getattr(module.lib, name) for name in object_names], module

    get_cached_module._fem_mfc = True
    jit.get_cached_module = get_cached_module
    return True


def write_mesh_serially(bp, data: dict):
    """Write a mesh gathered on this rank — ``data``: ``x`` (nodes in their global order),
    ``cells`` (global node numbers), ``cell_type``, ``degree``, ``variant`` and ``tags``
    {name: (entities by global node numbers, values, dim)} — into the adios4dolfinx file
    ``bp`` on ``MPI.COMM_SELF``, in adios4dolfinx's layout (its ``read_mesh`` and
    ``read_meshtags`` read it on any number of ranks).  adios4dolfinx 0.9's writer
    internals (``writers.write_mesh``, ``structures.MeshData``, ``adios2_helpers.ADIOSFile``):
    its public ``write_mesh`` is collective over the mesh's communicator, and a failed
    collective ADIOS2 write left the other ranks waiting (fem_mfc.checkpoint._commit)."""
    from mpi4py import MPI

    import numpy as np
    from adios4dolfinx.adios2_helpers import ADIOSFile, adios2
    from adios4dolfinx.structures import MeshData
    from adios4dolfinx.writers import write_mesh

    nx, nc = len(data["x"]), len(data["cells"])
    write_mesh(bp, MPI.COMM_SELF, MeshData(
        local_geometry=data["x"], local_geometry_pos=(0, nx), num_nodes_global=nx,
        local_topology=data["cells"], local_topology_pos=(0, nc), num_cells_global=nc,
        cell_type=data["cell_type"], degree=data["degree"], lagrange_variant=data["variant"],
        store_partition=False, partition_processes=None, ownership_array=None,
        ownership_offset=None, partition_range=None, partition_global=None))
    for name, (nodes, values, dim) in data["tags"].items():
        adios = adios2.ADIOS(MPI.COMM_SELF)
        with ADIOSFile(adios=adios, filename=bp, mode=adios2.Mode.Append, engine="BP4",
                       io_name="MeshTagWriter") as f:
            f.file.BeginStep()
            var = f.io.DefineVariable(name + "_topology", nodes, shape=list(nodes.shape),
                                      start=[0, 0], count=list(nodes.shape))
            f.file.Put(var, nodes, adios2.Mode.Sync)
            var = f.io.DefineVariable(name + "_values", values, shape=[len(values)],
                                      start=[0], count=[len(values)])
            f.file.Put(var, values, adios2.Mode.Sync)
            f.io.DefineAttribute(name + "_dim", np.array([dim], dtype=np.uint8))
            f.file.PerformPuts()
            f.file.EndStep()


__all__ = ["interpolation_points", "create_vector", "nonlinear_residual_jacobian",
           "vtx_writer", "unused_petsc_options", "linesearch_step", "require_value",
           "has_empty_value", "option_used", "fast_jit_lookup", "write_mesh_serially",
           "DOLFINX"]


def adios2():
    """ADIOS2's Python module in its MPI flavour.  Debian ships a serial and an MPI build;
    whichever ``import adios2`` loads first stays, and adios4dolfinx refuses the serial one
    ("ADIOS2 must be built with MPI support"): let adios4dolfinx choose."""
    import importlib
    importlib.import_module("adios4dolfinx")     # first: it imports the MPI build
    import adios2 as module
    return module
