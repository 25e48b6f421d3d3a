"""Products with the space-time Jacobian that read every distinct matrix as rarely as possible.

A block-by-block product (a MatNest of the blocks of
:class:`~fem_mfc.solvers.kkt.KKTOperator`) makes about eleven sparse products per time level,
although most blocks are the same few matrices — with B_n = αP_n + E (derived FP blocks), the
HJB/u blocks the transposes of the FP/ρ blocks (mirrors) and the state-independent blocks
(mass-like congestion blocks, E) shared by all levels.  Every Krylov iteration and every
trapezoid residual multiplies with the whole operator, so these products are memory-bound
reads of the same matrices over and over.

:class:`KKTProduct` writes the operator as a sum of terms

      K[r, c] = Σ  coeff · op(base),      op ∈ {identity, transpose},

(a mirror block (r, c) is the transpose of the terms of (c, r); a derived block the terms
α·P_n + 1·E), groups the terms by (base, op) and applies each group with as few products as
its shape allows:

* one input column  (e.g. P_nᵀ uⁿ feeds the HJB rows n and n+1):  w = op(base) x_c once,
  distributed to its rows with their coefficients;
* one output row    (e.g. P_n(ρ^{n+1} + αρⁿ) in the FP row n):   inputs combined first;
* otherwise (a shared matrix at many (r, c), e.g. the congestion mass blocks of all levels):
  one sparse × dense product over all its input columns (``MatMatMult``, which reads the
  sparse matrix once per few columns instead of once per column).

The result equals the product with the assembled blocks to round-off (tests/test_kkt_pc.py);
it is the operator the Newton–Krylov solver multiplies with (and the matrix its preconditioner
finds the operator through).  Per level: 3 sparse products of state-dependent matrices (P_n,
P_nᵀ, A_n) instead of ≈ 11.
"""
from __future__ import annotations

from petsc4py import PETSc

import numpy as np

from .assembly import scalar_multiple

SYMMETRY_RTOL = 1e-14           # a shared transposed base within round-off of symmetric
BATCH = 16                      # columns per sparse × dense product (bounds its buffers)
MULTIPLE_RTOL = 1e-11           # a shared base within round-off of a multiple of another: E of
                                # KKTOperator is a difference B_n − αP_n and carries P_n's
                                # round-off (5e-12 of ‖E‖ at 60k dofs; kkt_pc.DERIVE_RTOL)


class KKTProduct:
    """petsc4py Mat context (type "python") multiplying with the blocks of ``op.grid``."""

    def __init__(self, op):
        self.op = op
        st = op.st
        self.nl, self.nf, self.comm = st.nl, st.nfields, st.comm
        size = (self.nl, PETSc.DETERMINE)
        self._dummy = np.zeros(self.nl, dtype=PETSc.ScalarType)
        self.xin = PETSc.Vec().createWithArray(self._dummy, size=size, comm=st.comm)
        self.yout = PETSc.Vec().createWithArray(self._dummy.copy(), size=size, comm=st.comm)
        self.comb = PETSc.Vec().createMPI(size, comm=st.comm)      # combined inputs
        self.w = PETSc.Vec().createMPI(size, comm=st.comm)         # one product
        self._plan, self._buffers, self._params = None, {}, None
        n = st.nfields * st.nl
        self.mat = PETSc.Mat().createPython(((n, PETSc.DETERMINE), (n, PETSc.DETERMINE)),
                                            context=self, comm=st.comm)
        self.mat.setUp()
        self.products = 0                     # sparse products of the last plan (for reports)

    # -- the operator as terms coeff·op(base) --------------------------------------------
    def terms(self) -> list:
        """[(base, transposed, r, c, coeff)] whose sum is the operator."""
        op, out = self.op, []
        for r, c in op.blocks():
            out += [(b, t, r, c, a) for b, t, a in op.terms(r, c)]
        return out

    def plan(self) -> list:
        """The grouped products (built once: the operator's structure is fixed — and again
        after a parameter changed, which scales the merged matrices differently, e.g. the
        congestion blocks against E in a continuation in the coupling strength)."""
        params = tuple(float(c.value) for c in self.op.st.parameters.values())
        if self._plan is not None and params == self._params:
            return self._plan
        if self._plan is not None:
            self.destroy_plan()
        self._params = params
        groups = {}
        for base, t, r, c, a in self.terms():
            groups.setdefault((base.handle, t), (base, t, []))[2].append((r, c, a))
        groups = self._merge_shared(groups)
        plan, buffers = [], {}
        for base, t, uses in groups.values():
            rows = {r for r, _, _ in uses}
            cols = tuple(sorted({c for _, c, _ in uses}))
            if len(cols) == 1:
                plan.append(("col", base, t, cols[0], [(r, a) for r, _, a in uses]))
            elif len(rows) == 1:
                plan.append(("row", base, t, rows.pop(), [(c, a) for _, c, a in uses]))
            else:                             # in chunks of ≤ BATCH columns: one input
                y_of = {}                     # buffer per chunk width, one output per base
                for i in range(0, len(cols), BATCH):
                    chunk = cols[i:i + BATCH]
                    if len(chunk) not in buffers:
                        buffers[len(chunk)] = self._dense(len(chunk))
                    index = {c: j for j, c in enumerate(chunk)}
                    mine = [(r, index[c], a) for r, c, a in uses if c in index]
                    Y = y_of.setdefault(len(chunk), [None])
                    plan.append(("batch", base, t, chunk, mine, *buffers[len(chunk)], Y))
        self._plan = plan
        self._buffers = buffers
        self.products = sum(1 if p[0] != "batch" else len(p[3]) for p in plan)
        return plan

    def _merge_shared(self, groups: dict) -> dict:
        """Shared state-independent matrices (groups with several rows and columns: the
        constant blocks of all levels, ``op.constant``) become one group per matrix up to a
        scalar factor: a symmetric transposed matrix joins its untransposed group, and a
        matrix equal to s·B joins B's group with its coefficients times s (e.g. the
        congestion blocks τG''θ(1−θ)M, τG''θ²M and E = M/θ: one sparse × dense product for
        all of them).  Checked once, to round-off — so never for a matrix that changes with
        the states: the Crank–Nicolson coupling blocks C(n, n+1) of a non-quadratic G are
        shared by four blocks each and all equal at the constant initial guess, not later."""
        shared = [k for k, (base, _, uses) in groups.items()
                  if len({u[0] for u in uses}) > 1 and len({u[1] for u in uses}) > 1
                  and base.handle in self.op.constant]
        out = {k: g for k, g in groups.items() if k not in shared}
        families = []                         # [(B, t, uses)] of the shared groups
        for k in shared:
            base, t, uses = groups[k]
            if t and self._symmetric(base):
                t = False
            for fam in families:
                s = fam[1] == t and scalar_multiple(base, fam[0], MULTIPLE_RTOL)
                if s:
                    fam[2].extend((r, c, a * s) for r, c, a in uses)
                    break
            else:
                families.append((base, t, list(uses)))
        for base, t, uses in families:
            out[(base.handle, t, "shared")] = (base, t, uses)
        return out

    def _symmetric(self, A: PETSc.Mat) -> bool:
        return A.isSymmetric(tol=SYMMETRY_RTOL * A.norm(PETSc.NormType.INFINITY))

    def _dense(self, m: int):
        """Input buffer (m columns of nl rows, column-major) and its dense Mat."""
        buf = np.zeros((m, self.nl), dtype=PETSc.ScalarType)
        X = PETSc.Mat().createDense(((self.nl, PETSc.DETERMINE), (PETSc.DECIDE, m)),
                                    array=buf.reshape(-1), comm=self.comm)
        X.assemble()
        return buf, X, [None]                 # [the columns it holds in this product]

    # -- y = K x ---------------------------------------------------------------------------
    def _apply(self, base, t: bool, xa: np.ndarray) -> np.ndarray:
        """op(base) applied to the owned array xa; returns the owned result array."""
        self.xin.placeArray(xa)
        try:
            (base.multTranspose if t else base.mult)(self.xin, self.w)
        finally:
            self.xin.resetArray()
        return self.w.array_r

    def _into(self, base, t: bool, xa: np.ndarray, ya: np.ndarray, accumulate: bool):
        """ya ← op(base) xa, or ya += op(base) xa (``accumulate``), on owned arrays."""
        self.xin.placeArray(xa)
        self.yout.placeArray(ya)
        try:
            if accumulate:
                (base.multTransposeAdd if t else base.multAdd)(self.xin, self.yout, self.yout)
            else:
                (base.multTranspose if t else base.mult)(self.xin, self.yout)
        finally:
            self.xin.resetArray()
            self.yout.resetArray()

    def mult(self, mat, x: PETSc.Vec, y: PETSc.Vec):
        self._mult(x, y, accumulate=False)

    def multAdd(self, mat, x: PETSc.Vec, v: PETSc.Vec, y: PETSc.Vec):
        """y = v + K x without a work vector (``v`` may be ``y``)."""
        if v.handle != y.handle:
            v.copy(y)
        self._mult(x, y, accumulate=True)

    def _mult(self, x: PETSc.Vec, y: PETSc.Vec, accumulate: bool):
        nl, nf = self.nl, self.nf
        xa = x.getArray(readonly=True)
        xs = [xa[f * nl:(f + 1) * nl] for f in range(nf)]
        ya = y.getArray()
        ys = [ya[f * nl:(f + 1) * nl] for f in range(nf)]
        fresh = [not accumulate] * nf         # row not yet written (no zeroing pass)

        def add(r, w, a):
            if fresh[r]:
                np.multiply(w, a, out=ys[r]) if a != 1.0 else np.copyto(ys[r], w)
                fresh[r] = False
            else:
                ys[r] += w if a == 1.0 else a * w

        for _buf, _X, filled in self._buffers.values():
            filled[0] = None
        for step in self.plan():
            kind, base, t = step[:3]
            if kind == "col" and len(step[4]) == 1 and step[4][0][1] == 1.0:
                r = step[4][0][0]                 # one row: straight into y
                self._into(base, t, xs[step[3]], ys[r], not fresh[r])
                fresh[r] = False
            elif kind == "col":
                w = self._apply(base, t, xs[step[3]])
                for r, a in step[4]:
                    add(r, w, a)
            elif kind == "row":
                comb = self.comb.array
                (c0, a0), *rest = step[4]
                np.multiply(xs[c0], a0, out=comb)
                for c, a in rest:
                    comb += xs[c] if a == 1.0 else a * xs[c]
                r = step[3]
                self._into(base, t, comb, ys[r], not fresh[r])
                fresh[r] = False
            else:
                cols, uses, buf, X, filled, Y = step[3:]
                if filled[0] != cols:             # the shared input holds another chunk
                    for j, c in enumerate(cols):
                        buf[j] = xs[c]
                    X.stateIncrease()
                    filled[0] = cols
                Y[0] = (base.transposeMatMult if t else base.matMult)(X, Y[0])
                out = Y[0].getDenseArray(readonly=True)
                for r, j, a in uses:
                    add(r, out[:, j], a)
        for r in range(nf):
            if fresh[r]:
                ys[r][:] = 0.0
        y.stateIncrease()

    def destroy_plan(self):
        holders = {id(step[8]): step[8] for step in self._plan or () if step[0] == "batch"}
        for Y in holders.values():
            if Y[0] is not None:
                Y[0].destroy()
                Y[0] = None
        for _buf, X, _filled in getattr(self, "_buffers", {}).values():
            X.destroy()
        self._plan, self._buffers, self._params = None, {}, None

    def destroy(self, mat=None):
        """Free the work objects (also called by PETSc when ``mat`` is destroyed)."""
        if self.xin is None:
            return
        self.destroy_plan()
        for v in (self.xin, self.yout, self.comb, self.w):
            v.destroy()
        self.xin = None
        if mat is None and self.mat is not None:
            m, self.mat = self.mat, None
            m.destroy()


__all__ = ["KKTProduct"]
