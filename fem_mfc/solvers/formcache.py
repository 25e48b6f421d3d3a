"""Derived and compiled forms of a space-time system, reused by every system of the same
structure in the process.

Building a :class:`~fem_mfc.solvers.spacetime.SpaceTime` derives its forms symbolically
(residual rows with their derivatives expanded, one Jacobian block per row and template,
the forward split) and compiles each (FFCx signature and JIT look-up): ≈ 0.1 s, the same for
289 dofs as for 250k, and the same again for every system of the same formulation on
another mesh or with another step count — a nested iteration's coarse grids, a benchmark's
repeats, a refinement study.  The mathematics of two such systems differ only in their
*data*: the template Functions, the Constants (τ, ε, the source times, the coupling
strength) and the mesh.

A :class:`Entry` keeps what the first system derived, by position instead of by object: the
compiled kernels (``ufcx_form`` and module) of every form, and for each the canonical
indices of the coefficients and constants it takes.  The key is UFL's own signature of the
*underived* forms the formulation builds (cheap: no derivative is expanded), which numbers
coefficients and constants by creation order within each form, together with the sharing
pattern of those terminals across the forms.  Equal keys mean equal expression trees up to
the renumbering, hence equal derived forms: a later system attaches its own data to the
stored kernels (:func:`dolfinx.fem.create_form`'s constructor) without deriving or compiling
anything.  The first system's objects are not kept (no mesh stays alive through the cache).

Forms over tagged subdomains (``ds(tag)``) are never cached (their integration entities
belong to a mesh); such systems derive as before.  UFL orders the operands of a sum or
product by their repr, which holds a terminal's global count in decimal (c_999 sorts after
c_1000): a system whose Constants or Functions straddle a power of ten from an earlier one's
builds differently ordered forms and misses the cache — rarely, and correctly (it derives).
"""
from __future__ import annotations

from collections import OrderedDict

import dolfinx
import dolfinx.fem.forms as dforms
import ufl

MAX_ENTRIES = 8                  # structures kept (a handful of formulations per process)
_entries: "OrderedDict[tuple, Entry]" = OrderedDict()
enabled = True                   # off: every system derives and compiles its own forms
stats = {"hits": 0, "misses": 0}


def terminals(forms) -> tuple[list, tuple]:
    """(the canonical list of the coefficients and constants of ``forms`` — per form in
    UFL's numbering order, first occurrence first —, the sharing pattern: per form the
    canonical indices of its coefficients and of its constants)."""
    index, canon, pattern = {}, [], []
    for F in forms:
        own = []
        for group in (F.coefficients(), F.constants()):
            ids = []
            for t in group:
                i = index.get(t)
                if i is None:
                    i = index[t] = len(canon)
                    canon.append(t)
                ids.append(i)
            own.append(tuple(ids))
        pattern.append(tuple(own))
    return canon, tuple(pattern)


def cacheable(forms) -> bool:
    """Whole-domain integrals only (no subdomain data), one integration domain."""
    for F in forms:
        if len(F.ufl_domains()) != 1:
            return False
        if any(itg.subdomain_data() is not None for itg in F.integrals()):
            return False
    return True


def key_of(tag, named: dict) -> tuple | None:
    """The cache key of the underived forms ``named`` (name → ufl.Form) and the extra
    structure ``tag`` (hashable), and their canonical terminals; None if not cacheable."""
    names = sorted(named)
    forms = [named[k] for k in names]
    if not enabled or not cacheable(forms):
        return None
    canon, pattern = terminals(forms)
    sigs = tuple(F.signature() for F in forms)
    return (tag, tuple(names), sigs, pattern), canon


class CompiledKernel:
    """One compiled form without its data: the FFCx form and module, the kernel's names of
    its coefficients and constants with their canonical indices, and for each argument the
    canonical index of a coefficient on the argument's space.  (Not dolfinx's
    ``create_form``, which names the coefficients by their position in the UFL form: wrong
    when FFCx drops one that vanishes, e.g. ∂L/∂ρ[ρ].)"""

    def __init__(self, form: dolfinx.fem.Form, ufl_form: ufl.Form, index: dict):
        self.ufcx_form, self.code = form.ufcx_form, form.code
        self.module = form.module
        self.dtype = form.dtype
        # the kernel's j-th coefficient is the original one at original_coefficient_positions[j]
        # (FFCx drops coefficients that vanish in the compiled form), named by the name map
        u, ffi = self.ufcx_form, self.module.ffi
        original = ufl.algorithms.extract_coefficients(ufl_form)
        self.coefficients = [(ffi.string(u.coefficient_name_map[j]).decode(),
                              index[original[u.original_coefficient_positions[j]]])
                             for j in range(u.num_coefficients)]
        constants = ufl.algorithms.analysis.extract_constants(ufl_form)
        self.constants = [(ffi.string(u.constant_name_map[j]).decode(), index[constants[j]])
                          for j in range(u.num_constants)]
        self.arguments = [_on_space(a.ufl_function_space(), index)
                          for a in ufl_form.arguments()]
        self.integral_types = sorted({itg.integral_type() for itg in ufl_form.integrals()})

    def create(self, canon: list, mesh) -> dolfinx.fem.Form:
        """The form on the data ``canon`` (a later system's canonical terminals)."""
        coefficients = {name: canon[j]._cpp_object for name, j in self.coefficients}
        constants = {name: canon[j]._cpp_object for name, j in self.constants}
        spaces = [canon[j].function_space._cpp_object for j in self.arguments]
        subdomains = {dforms._ufl_to_dolfinx_domain[t]: [] for t in self.integral_types}
        ftype = dforms.form_cpp_creator(self.dtype)
        f = ftype(self.module.ffi.cast("uintptr_t", self.module.ffi.addressof(self.ufcx_form)),
                  spaces, coefficients, constants, subdomains, {}, mesh._cpp_object)
        return dolfinx.fem.Form(f, self.ufcx_form, self.code, self.module)


def storable(ufl_form: ufl.Form, index: dict) -> bool:
    """Are all terminals and argument spaces of ``ufl_form`` among the canonical ones?"""
    coeffs = ufl.algorithms.extract_coefficients(ufl_form)
    consts = ufl.algorithms.analysis.extract_constants(ufl_form)
    return (all(c in index for c in coeffs) and all(c in index for c in consts)
            and all(_on_space(a.ufl_function_space(), index) is not None
                    for a in ufl_form.arguments()))


def _on_space(V, index: dict):
    """The canonical index of a coefficient on the space V, or None."""
    for c, i in index.items():
        if isinstance(c, ufl.Coefficient) and c.ufl_function_space() == V:
            return i
    return None


class Entry:
    """What one system derived: ``kernels`` (name → CompiledKernel or None for a vanishing
    form) and ``data`` (anything else positional: e.g. input lists as canonical indices)."""

    def __init__(self):
        self.kernels, self.data = {}, {}

    def add(self, name, form, ufl_form, index: dict) -> bool:
        if form is None:
            self.kernels[name] = None
            return True
        if not storable(ufl_form, index):
            return False
        self.kernels[name] = CompiledKernel(form, ufl_form, index)
        return True

    def form(self, name, canon: list, mesh):
        k = self.kernels[name]
        return None if k is None else k.create(canon, mesh)


def lookup(key) -> Entry | None:
    e = _entries.get(key)
    if e is not None:
        _entries.move_to_end(key)
        stats["hits"] += 1
    else:
        stats["misses"] += 1
    return e


def store(key, entry: Entry):
    _entries[key] = entry
    _entries.move_to_end(key)
    while len(_entries) > MAX_ENTRIES:
        _entries.popitem(last=False)


def clear():
    _entries.clear()


__all__ = ["Entry", "CompiledKernel", "key_of", "lookup", "store", "clear", "terminals"]
