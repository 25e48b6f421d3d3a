"""How the rows, blocks and functionals of a :class:`~fem_mfc.solvers.spacetime.SpaceTime`
are evaluated at its loaded level.

* :class:`Assembler` assembles: every residual row with ``dolfinx.fem.assemble_vector``,
  every Jacobian block through the shared-pattern CSR assembler
  (:class:`~fem_mfc.solvers.assembly.CSRAssembler`), one matrix per block and level (one for
  all levels where the block's form involves neither states nor time), every functional with
  ``assemble_scalar``.  The correctness tests run on it.
* :class:`CachingAssembler` gives the same numbers with less work (its own counter tests):

  - a row or block whose inputs (the templates and times its form uses) hold the values of
    the last assembly of its form is that result (levels with equal states, e.g. the constant
    initial guess: a few assemblies instead of N; the decision is collective);
  - blocks of quadratic systems, affine in their states, are evaluated as d₀ + Σ Tᵢwᵢ
    (:mod:`fem_mfc.solvers.affine`) once a form has been assembled AFFINE_AFTER times and
    REPAY_JACOBIANS Jacobians (N levels each) repay the set-up, else once it has been
    assembled as often as the set-up costs (rent or buy);
  - functionals affine in one state (∫ρ^k, ∫Φρ^N) are F(0) + b·f, one dot product per level.

Both drop what depends on the formulation's parameters when :meth:`invalidate` is called
(:meth:`SpaceTime.set_parameter`).
"""
from __future__ import annotations

from mpi4py import MPI
from petsc4py import PETSc

import dolfinx
import dolfinx.fem.petsc
import numpy as np
import ufl

from ..forms.hjb_fp import nonzero
from .affine import affine_evaluator, applicable, setup_assemblies
from .assembly import CSRAssembler


def varying_inputs(form, varying: set) -> list:
    """The coefficients and Constants of a UFL form or expression that are in ``varying``."""
    return [f for f in (set(ufl.algorithms.extract_coefficients(form))
                        | set(ufl.algorithms.analysis.extract_type(form, ufl.Constant)))
            if f in varying]


def input_values(inputs: list) -> list:
    """The current values of Functions and Constants (views, not copies)."""
    return [f.x.array if hasattr(f, "x") else np.asarray(f.value) for f in inputs]


AFFINE_AFTER = 4                 # block assemblies of a form before it is evaluated affinely
REPAY_JACOBIANS = 2              # ... when this many Jacobians (N levels each) repay the set-up:
                                 # Newton assembles at least three (the trivial guess, two steps)


class Assembler:
    """Plain assembly at the loaded level (see the module docstring)."""

    def __init__(self, st):
        self.st = st
        self.csr = CSRAssembler()                 # one sparsity pattern for all the blocks
        self._vecs = {k: dolfinx.fem.Function(st.V).x for k in st.res}
        self._mats = {}                           # key or (key, k) -> Mat
        self._stale = set()                       # constant blocks to reassemble
        self.assemblies = 0                       # block assemblies (for reports and tests)

    # -- rows ------------------------------------------------------------------------------
    def _assemble_row(self, row: str) -> np.ndarray:
        b = self._vecs[row]
        b.array[:] = 0.0
        dolfinx.fem.assemble_vector(b.array, self.st.res[row])
        b.scatter_reverse(dolfinx.la.InsertMode.add)
        return b.array[: self.st.nl]

    def row(self, row: str) -> np.ndarray:
        """Owned part of the residual vector of ``row`` (valid until the next call)."""
        return self._assemble_row(row)

    # -- blocks ----------------------------------------------------------------------------
    def _storage(self, key, k):
        """(storage key, existing Mat or None) of block form ``key`` at level k."""
        mkey = key if self.st.constant_block[key] else (key, k)
        return mkey, self._mats.get(mkey)

    def _assemble_block(self, A, key, evaluator=None) -> PETSc.Mat:
        if A is None:
            A = self.csr.create(self.st.jac[key])
        self.assemblies += 1
        return self.csr.assemble(A, self.st.jac[key], evaluator)

    def block(self, key, k: int) -> PETSc.Mat:
        """Jacobian block ``key = (row, template)`` at the loaded level k, assembled into its
        matrix (kept; blocks free of states and time are assembled once and shared)."""
        mkey, A = self._storage(key, k)
        if A is not None and self.st.constant_block[key] and mkey not in self._stale:
            return A
        self._stale.discard(mkey)
        A = self._mats[mkey] = self._assemble_block(A, key)
        return A

    def fresh(self, form) -> PETSc.Mat:
        """A new matrix holding the assembled bilinear ``form`` (not kept)."""
        A = self.csr.create(form)
        return self.csr.assemble(A, form)

    # -- functionals -----------------------------------------------------------------------
    def scalar(self, name: str) -> float:
        """The functional ``name`` at the loaded level (summed over ranks)."""
        return self.st.comm.allreduce(dolfinx.fem.assemble_scalar(self.st.func[name]),
                                      op=MPI.SUM)

    # -- lifetime --------------------------------------------------------------------------
    def invalidate(self):
        """The formulation's parameters changed: reassemble the shared constant blocks."""
        self._stale = {m for m in self._mats if m in self.st.constant_block}

    def destroy(self):
        for A in self._mats.values():
            A.destroy()
        self._mats = {}
        self.csr.destroy()


class CachingAssembler(Assembler):
    """:class:`Assembler` with memos, affine blocks and affine functionals (see the module
    docstring)."""

    def __init__(self, st):
        super().__init__(st)
        self._row_memo = {}                   # row → (inputs, owned residual)
        self._memo = {}                       # key → (inputs, Mat, its state)
        self.affine_blocks = True             # evaluate affine blocks (option)
        self._affine, self._colours, self._count, self._due = {}, {}, {}, {}
        self._affine_func = self._affine_functionals()

    def _unchanged(self, memo, values: list) -> bool:
        """Do the input values equal those memoised in ``memo[0]`` on every rank?  (One
        collective decision: the callers assemble, which may communicate, otherwise.)"""
        same = memo is not None and all(np.array_equal(a, b) for a, b in zip(memo[0], values))
        return self.st.comm.allreduce(same, op=MPI.LAND)

    def row(self, row: str) -> np.ndarray:
        values = input_values(self.st.row_inputs[row])
        memo = self._row_memo.get(row)
        if self._unchanged(memo, values):
            return memo[1]
        out = self._assemble_row(row)
        self._row_memo[row] = ([v.copy() for v in values], out.copy())
        return out

    def block(self, key, k: int) -> PETSc.Mat:
        """As :meth:`Assembler.block`; a block whose inputs hold the values of the last
        assembly of its form is copied from that matrix (unless it changed since).  A form
        evaluated affinely skips that comparison: its evaluation costs about as much as the
        comparison and the copy of the inputs it would save."""
        st = self.st
        if st.constant_block[key]:
            return super().block(key, k)
        mkey, A = self._storage(key, k)
        ev = self._affine.get(key)
        if ev is not None and A is not None:
            self._memo.pop(key, None)
            return self._assemble_block(A, key, ev)
        values = input_values(st.block_inputs[key])
        memo = self._memo.get(key)                # (inputs, Mat, its state when memoised)
        valid = memo is not None and memo[1] is not A and memo[1].stateGet() == memo[2]
        if self._unchanged(memo if valid else None, values):
            if A is None:
                A = self._mats[mkey] = self.csr.create_copy(st.jac[key], memo[1])
            else:
                memo[1].copy(A, structure=PETSc.Mat.Structure.SAME_NONZERO_PATTERN)
            return A
        A = self._mats[mkey] = self._assemble_block(A, key, self._evaluator(key))
        self._memo[key] = ([v.copy() for v in values], A, A.stateGet())
        return A

    def _evaluator(self, key):
        """The affine evaluator of block form ``key`` (solvers/affine.py), or None (see the
        module docstring; never for forms that depend on time, e.g. through sources)."""
        st = self.st
        if key in self._affine:
            return self._affine[key]
        n = self._count[key] = self._count.get(key, 0) + 1
        if n < AFFINE_AFTER or not self.affine_blocks or not st.quadratic:
            return None
        a, inputs = st.jac[key], st.block_inputs[key]
        csr = self.csr.scratch(a)
        if key not in self._due:                                  # decided once per form
            if csr is None or not all(hasattr(f, "x") for f in inputs) \
                    or not applicable(a, inputs, st.comm):        # time Constants etc.
                self._affine[key] = None
                return None
            self._due[key] = setup_assemblies(a, csr, inputs, self._colours, st.comm)
        due = self._due[key]
        if REPAY_JACOBIANS * st.N < due and n < due:
            return None
        ev = self._affine[key] = affine_evaluator(a, csr, inputs, self._colours, st.comm)
        return ev

    def _affine_functionals(self) -> dict:
        """{name: (template, F(0) on this rank, b)} for the functionals of one template whose
        derivative b = ∂F/∂f is independent of the states and time (F affine in f, e.g.
        ∫ρ^k and ∫Φρ^N).  b is assembled once (owned dofs, ghost contributions added)."""
        st = self.st
        varying = set(st.tm.values()) | {st.t_prev, st.t_cur}

        def derive(F):
            inputs = varying_inputs(F, varying)
            if len(inputs) != 1 or not hasattr(inputs[0], "x"):
                return None, []
            f = inputs[0]
            dF = nonzero(ufl.derivative(F, f, ufl.TestFunction(f.function_space)))
            if dF is None or varying_inputs(dF, varying):
                return None, []
            return dF, [f]

        out = {}
        for name, F in st.func_ufl.items():
            form, inputs = st.derived(("dfunc", name), lambda F=F: derive(F))
            if form is None:
                continue
            f = inputs[0]
            b = dolfinx.fem.petsc.assemble_vector(form)
            b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
            saved = f.x.array.copy()
            f.x.array[:] = 0.0
            F0 = dolfinx.fem.assemble_scalar(st.func[name])
            f.x.array[:] = saved
            out[name] = (f, F0, b.array_r[: st.nl].copy())
            b.destroy()
        return out

    def scalar(self, name: str) -> float:
        aff = self._affine_func.get(name)
        if aff is not None:
            f, F0, b = aff
            return self.st.comm.allreduce(F0 + float(b @ f.x.array[: self.st.nl]),
                                          op=MPI.SUM)
        return super().scalar(name)

    def invalidate(self):
        super().invalidate()
        self._row_memo, self._memo = {}, {}
        for ev in self._affine.values():
            if ev is not None:
                ev.destroy()
        self._affine, self._count, self._due = {}, {}, {}
        self._affine_func = self._affine_functionals()

    def destroy(self):
        for ev in self._affine.values():
            if ev is not None:
                ev.destroy()
        self._affine = {}
        super().destroy()


__all__ = ["Assembler", "CachingAssembler", "AFFINE_AFTER", "input_values", "varying_inputs"]
