"""Per-step linear solvers of the time sweeps (Cole–Hopf sweeps, the sweep preconditioner).

A per-step system is a d-dimensional problem, mass + τ(diffusion + drift), solved once per
time step and sweep.  Three kinds (``-{prefix}step lu|ilu|amg|auto``, default ``auto``):

* ``lu``: factorised, the factors reused for many solves (Cholesky for the symmetric
  positive definite Cole–Hopf step matrix: half the factors to read).  PETSc's own LU with its
  nested-dissection ordering on one rank (its triangular solves are faster than MUMPS');
  on 2 to REDUNDANT_MAX_RANKS ranks the same LU on every rank (PCREDUNDANT) for pivots of
  fewer than REDUNDANT_MAX_DOFS dofs, or fewer than REDUNDANT_SOLVES_MAX_DOFS when the
  factors serve REDUNDANT_SOLVES solves or more (Newton's sweeps); MUMPS, distributed,
  otherwise (its factorisation is faster, its solves slower: :func:`redundant`).  The
  sweep preconditioner of Newton, which factorises many pivots per set-up, replaces the
  redundant LU by :class:`OwnedLU`: each factorisation on one rank, the ranks in turn.
  Fill and factorisation time grow like a d-dimensional nested dissection: cheap in 1D and
  2D, prohibitive in 3D (docs/performance.md).
* ``ilu``: GMRES with ILU(0) (in parallel restricted additive Schwarz with overlap 1 and
  ILU(0) per rank; serially in 1D and 2D in the RCM ordering) to a relative tolerance
  STEP_RTOL.  The system is mass-dominated (κ ≈ 1 + τε/h²): 8–25 iterations in 3D, no
  fill, set-up O(nnz), parallel without redundancy.
* ``amg``: GMRES with algebraic multigrid (hypre BoomerAMG) — iteration counts independent
  of h and τ, for the largest problems.

``auto`` takes LU in 1D and 2D and ILU in 3D (:func:`fem_mfc.solvers.auto.step_kind`, fitted
on the benchmark matrix).  PETSc options under the solver's prefix override everything
(``-mfc_sweep_pc_type gamg``, ``-mfc_sweep_ksp_rtol 1e-10``…; a user ``pc_type`` or
``pc_factor_mat_solver_type`` is kept as given).  No ordering is set for LU: an explicit
PCFactor ordering reaches MUMPS as a user permutation and made it an order of magnitude
slower.
"""
from __future__ import annotations

from petsc4py import PETSc

from .. import options
from ..options import zero_pivot

REDUNDANT_MAX_RANKS = 4  # per-step LU solved redundantly up to this many ranks
REDUNDANT_MAX_DOFS = 100_000   # ... and pivots of fewer dofs; MUMPS (distributed) otherwise,
REDUNDANT_SOLVES = 60          # except for factors serving this many solves or more
REDUNDANT_SOLVES_MAX_DOFS = 1_000_000   # (and pivots below this: a full copy per rank)
# At 251k 2D dofs on 2 ranks (docs/performance.md, "Two ranks"): MUMPS factorises in 0.57×
# and solves in 2× the time of the redundant PETSc LU/Cholesky (20 ms per solve), so it pays
# for a factorisation serving fewer than ≈ 30 (LU) – 70 (Cholesky) solves — Cole–Hopf with
# few steps — and loses on the sweeps of Newton, whose factors serve hundreds (2 ranks:
# 104 s with MUMPS, 59 s redundant, 68 s on one rank).
KINDS = ("lu", "ilu", "amg")
STEP_RTOL = 1e-9         # relative tolerance of iterative per-step solves
STEP_MAX_IT = 500
ASM_OVERLAP = 1          # overlap of the per-rank ILU(0) blocks of the iterative kind ("ilu")


def step_kind(A: PETSc.Mat, prefix: str, dim: int | None = None, solves: float = 10.0) -> str:
    """The per-step solver kind for A under ``prefix``: the option ``{prefix}step`` or the
    automatic rule (:func:`fem_mfc.solvers.auto.step_kind`)."""
    kind = options.get("step", "auto", prefix)
    if kind == "auto":
        from .auto import step_kind as rule
        kind = rule(A.getSize()[0], dim or 2, A.getComm().getSize(), solves)
    if kind not in KINDS:
        from ..errors import ConfigError
        raise ConfigError(f"-{prefix}step", "one of auto, " + ", ".join(KINDS), kind)
    return kind


def step_solver(A: PETSc.Mat, prefix: str, kind: str = "lu",
                rtol: float = STEP_RTOL, dim: int | None = None,
                symmetric: bool = False, solves: float = float("inf")) -> PETSc.KSP:
    """A set-up KSP of ``kind`` for the per-step matrix A with options prefix ``prefix``
    (``rtol``: the relative tolerance of the iterative kinds; ``dim``: the mesh's dimension,
    if known — serial ILU in 1D and 2D factorises in the reverse Cuthill–McKee ordering;
    ``symmetric``: A is symmetric positive definite, factorised by Cholesky — half the
    factors to read per solve: at 251k 2D dofs PETSc's solves 17 % and MUMPS' on 2 ranks 22 %
    faster, MUMPS' factorisation 10–20 % (docs/performance.md, "Two ranks"); ``solves``: how
    many solves the factors serve (:func:`redundant`; the sweeps' factors: many))."""
    size = A.getComm().getSize()
    ksp = PETSc.KSP().create(A.getComm())
    ksp.setOptionsPrefix(prefix)
    ksp.setOperators(A)
    pc = ksp.getPC()
    pivot = {}
    if kind == "lu":
        pivot = set_lu(ksp, A, prefix, solves, symmetric, dim=dim)
    else:
        ksp.setType("gmres")
        ksp.setTolerances(rtol=rtol, atol=0.0, max_it=STEP_MAX_IT)
        if kind == "ilu":
            if size > 1:
                # restricted additive Schwarz, overlap 1, ILU(0) per subdomain: 3D P1 104k
                # dofs on 2 ranks, 25 GMRES iterations and 77 ms per solve against block
                # Jacobi's 34 and 95 ms (1 rank, ILU(0): 23, 129 ms; docs/performance.md)
                pc.setType("asm")
                pc.setASMOverlap(ASM_OVERLAP)
            else:
                pc.setType("ilu")
            if size == 1 and dim is not None and dim <= 2:
                # dolfinx numbers P2 dofs so that ILU(0) in the natural ordering drops the
                # fill it needs: 1D P2, 3001 dofs: GMRES stagnates (500 iterations, 1e-4);
                # RCM makes the 1D band exact and halves 2D P2; in 3D it costs a quarter
                # more, so 3D keeps the natural ordering (docs/performance.md)
                pc.setFactorOrdering("rcm")
        else:
            pc.setType("hypre")
            pc.setHYPREType("boomeramg")
    with options.inserted(defaults=pivot, prefix=prefix):
        ksp.setFromOptions()
        options.factorise(ksp)            # MUMPS: with more workspace where it asks for it
        ksp.setUp()
    return ksp


def set_lu(ksp: PETSc.KSP, A: PETSc.Mat, prefix: str, solves: float = float("inf"),
           symmetric: bool = False, zp: float | None = None, dim: int | None = None) -> dict:
    """Make ``ksp`` (options prefix ``prefix``, not yet set up) a factorisation of A, or of
    matrices of A's size and pattern (a Newton Jacobian), whose factors serve ``solves``
    solves: preonly + PETSc's LU/Cholesky on one rank, the same on every rank (PCREDUNDANT)
    on 2–REDUNDANT_MAX_RANKS ranks by :func:`redundant` (``dim``: the mesh's dimension),
    MUMPS otherwise; a user's
    ``pc_type`` or ``pc_factor_mat_solver_type`` under ``prefix`` keeps the distributed
    choice for the options database to override.  ``zp``: the zero-pivot tolerance (default
    :func:`zero_pivot` of A, collective).  Returns the option defaults to insert under
    ``prefix`` while the KSP is set up (a redundant LU's inner pivot tolerance)."""
    size = A.getComm().getSize()
    user = any(options.get(k, prefix=prefix) is not None
               for k in ("pc_type", "pc_factor_mat_solver_type"))
    zp = zero_pivot(A) if zp is None else zp
    ksp.setType("preonly")
    pc = ksp.getPC()
    if redundant(A.getSize()[0], size, solves, dim) and not user:
        pc.setType("redundant")               # inner: preonly + PETSc LU on a full copy
        return {"redundant_pc_factor_zeropivot": zp}
    pc.setType("cholesky" if symmetric else "lu")
    pc.setFactorSolverType("petsc" if size == 1 else "mumps")
    pc.setFactorPivot(zeropivot=zp)
    return {}


def is_direct(ksp) -> bool:
    """Does one application of ``ksp`` (a KSP or an :class:`OwnedLU`) solve exactly (preonly
    + a factorisation)?"""
    return ksp.getType() == PETSc.KSP.Type.PREONLY


def redundant(ndofs: int, ranks: int, solves: float = float("inf"),
              dim: int | None = None) -> bool:
    """Is a per-step LU of ``ndofs`` unknowns on ``ranks`` ranks, whose factors serve
    ``solves`` solves, solved redundantly (the same PETSc LU on every rank)?  A matrix
    refactorised for every solve (``solves`` ≤ 1: a Newton Jacobian) of a mesh of dimension
    ``dim`` ≥ 2 is not: there MUMPS' distributed factorisation wins from a few thousand dofs
    (2 ranks, 2D P1, 10 refactorisations and solves of a nonlinear Schrödinger Jacobian:
    20k dofs 0.92 against 1.51 s redundant, 1.24 s on one rank; 52k dofs 2.6 against 4.3 s;
    an imaginary-time ground state of 53k dofs, 28 steps, 3.9 against 6.9 s), while in 1D the
    redundant LU does (40k dofs: 0.12 against 0.41 s)."""
    if not 1 < ranks <= REDUNDANT_MAX_RANKS:
        return False
    if solves <= 1 and dim is not None and dim >= 2:
        return False
    return ndofs < REDUNDANT_MAX_DOFS or (solves >= REDUNDANT_SOLVES
                                          and ndofs < REDUNDANT_SOLVES_MAX_DOFS)


def describe(comm, prefix: str, kind: str = "lu", ndofs: int = 0, owned: bool = False) -> str:
    """What :func:`step_solver` builds under ``prefix`` on ``comm`` for factors serving many
    solves (the sweeps; for summaries); ``owned``: the sweeps' LUs are :class:`OwnedLU`."""
    pc = options.get("pc_type", None, prefix)
    ksp = options.get("ksp_type", None, prefix)
    if pc is None:
        if kind == "ilu":
            return "gmres+" + (f"asm({ASM_OVERLAP})/ilu(0)" if comm.size > 1 else "ilu(0)")
        if kind == "amg":
            return "gmres+boomeramg"
        size = comm.size
        if owned:
            return "lu:petsc (each factorisation on one rank)"
        if redundant(ndofs, size):
            return "lu:petsc (redundant)"
        return "lu:" + ("petsc" if size == 1 else "mumps")
    if pc in ("lu", "cholesky"):
        return f"{pc}:" + options.get("pc_factor_mat_solver_type", "petsc", prefix)
    return f"{ksp or ('gmres' if kind != 'lu' else 'preonly')}+{pc}"


class OwnerTransfer:
    """The entries of a distributed vector (or matrix) gathered to one rank, ``owner``, as a
    sequential one there (size 0 elsewhere), and back: the data movement of factors held by
    one rank (:class:`OwnedLU`, :class:`~fem_mfc.solvers.layers.LayerFactors`)."""

    def __init__(self, comm, nlocal: int, nglobal: int, owner: int):
        self.owner = owner
        self.mine = comm.getRank() == owner
        n = nglobal if self.mine else 0
        self.rows = PETSc.IS().createStride(n, 0, 1, comm=PETSc.COMM_SELF)
        self.full = PETSc.Vec().createSeq(n, comm=PETSc.COMM_SELF)   # the owner's vector
        self.out = self.full.duplicate()                              # … and a solution
        v = PETSc.Vec().createMPI((nlocal, PETSc.DETERMINE), comm=comm)
        self.scatter = PETSc.Scatter().create(v, self.rows, self.full, None)
        v.destroy()

    def matrix(self, A: PETSc.Mat, sub: PETSc.Mat | None = None) -> PETSc.Mat:
        """Collective: the whole of A on the owner (0 × 0 elsewhere); into ``sub`` if given
        (a matrix this returned for A's pattern)."""
        return A.createSubMatrices(self.rows, submats=None if sub is None else [sub])[0]

    def gather(self, b: PETSc.Vec, full: PETSc.Vec | None = None) -> PETSc.Vec:
        """Collective: b on the owner, in ``full`` (default: this transfer's vector)."""
        full = self.full if full is None else full
        self.scatter.scatter(b, full, PETSc.InsertMode.INSERT_VALUES,
                             PETSc.ScatterMode.FORWARD)
        return full

    def scatter_back(self, full: PETSc.Vec, x: PETSc.Vec):
        """Collective: the owner's ``full`` into the distributed x."""
        self.scatter.scatter(full, x, PETSc.InsertMode.INSERT_VALUES,
                             PETSc.ScatterMode.REVERSE)

    def destroy(self):
        for o in (self.rows, self.full, self.out, self.scatter):
            o.destroy()


def factorise(ksp: PETSc.KSP, M: PETSc.Mat) -> bool:
    """Set up ``ksp`` (a factorisation) on M; False if it failed (a zero pivot, out of
    memory…: the callers are local to one rank and report collectively)."""
    try:
        ksp.setOperators(M)
        ksp.getPC().setFactorPivot(zeropivot=zero_pivot(M))
        ksp.setUp()
        return ksp.getPC().getFailedReason() == 0
    except (PETSc.Error, MemoryError):
        return False


def owner_lu(prefix: str) -> PETSc.KSP:
    """A one-rank PETSc LU with the options under ``prefix``."""
    ksp = PETSc.KSP().create(PETSc.COMM_SELF)
    ksp.setOptionsPrefix(prefix)
    ksp.setType("preonly")
    ksp.getPC().setType("lu")
    ksp.getPC().setFactorSolverType("petsc")
    ksp.setFromOptions()
    return ksp


class OwnedLU:
    """The LU factors of a distributed per-step matrix held by one rank, the owner of the
    :class:`OwnerTransfer` ``io`` (one per rank, shared by all the factors it owns: the
    solves are sequential).

    Where a redundant LU (PCREDUNDANT) factorises the whole pivot on every rank, the sweep
    preconditioner gives each of its factorisations to one rank, in turn: the ranks
    factorise *different* pivots at the same time, and each factor is stored once.  A solve
    gathers the right-hand side to the owner, which solves with PETSc's LU, and scatters the
    solution back (the sweeps are sequential in time, so the other ranks wait, as they
    compute the same solve in the redundant LU).

    Two phases, so that the factorisations of one set-up overlap: :meth:`gather`
    (collective: the pivot, or its transpose with ``transpose``, as a sequential matrix on
    the owner) and :meth:`factor` (local to the owner; any failure is kept in ``failed``,
    which the caller reduces over the ranks after the set-up's last one, e.g. with
    :meth:`check`).  The owner's KSP reads the options under ``prefix``
    (``-{prefix}pc_factor_…``)."""

    def __init__(self, A: PETSc.Mat, prefix: str, io: OwnerTransfer, transpose: bool = False):
        self.comm = A.getComm()
        self.prefix, self.transpose = prefix, transpose
        self.io = self.sub = self.ksp = self.M = None
        self.failed = False
        self.gather(A, io)

    # the KSP-like interface of the sweep preconditioner
    def getType(self) -> str:
        return PETSc.KSP.Type.PREONLY

    def getConvergedReason(self) -> int:
        return PETSc.KSP.ConvergedReason.CONVERGED_ITS

    def gather(self, A: PETSc.Mat, io: OwnerTransfer):
        """Collective: A (or Aᵀ) to the owner of ``io`` as a sequential matrix; factorise
        with :meth:`factor`."""
        if io is not self.io:                 # a new owner: the old one's copy and factors go
            self._free()
            self.io = io
        self.sub = io.matrix(A, self.sub)
        self.due = True

    def factor(self):
        """Local: the owner factorises the gathered matrix (a failure is kept in
        ``failed``)."""
        due, self.due = self.due, False
        if not (self.io.mine and due):
            return
        try:                                  # local work: any failure (e.g. out of memory)
            M = self.sub                      # must reach the collective check, not hang it
            if self.transpose:
                if self.M is not None:
                    self.M.destroy()
                M = self.M = self.sub.transpose(PETSc.Mat())
            if self.ksp is None:
                self.ksp = owner_lu(self.prefix)
            self.failed = not factorise(self.ksp, M)
        except Exception:
            self.failed = True

    def check(self) -> bool:
        """Collective: did the owner's factorisation succeed?"""
        from mpi4py import MPI
        return self.comm.tompi4py().allreduce(not self.failed, op=MPI.LAND)

    def _solve(self, b: PETSc.Vec, x: PETSc.Vec, transposed: bool):
        io = self.io
        full = io.gather(b)
        if io.mine:
            (self.ksp.solveTranspose if transposed else self.ksp.solve)(full, io.out)
        io.scatter_back(io.out, x)

    def solve(self, b: PETSc.Vec, x: PETSc.Vec):
        """Collective: x = A⁻¹ b (the owner solves)."""
        self._solve(b, x, False)

    def solveTranspose(self, b: PETSc.Vec, x: PETSc.Vec):
        self._solve(b, x, True)

    def _free(self):
        for k in ("sub", "M", "ksp"):         # not the transfer: it is shared
            o = getattr(self, k)
            if o is not None:
                o.destroy()
            setattr(self, k, None)

    def destroy(self):
        self._free()


__all__ = ["step_solver", "step_kind", "set_lu", "is_direct", "OwnedLU", "OwnerTransfer",
           "factorise",
           "owner_lu", "describe", "redundant", "KINDS", "REDUNDANT_MAX_RANKS",
           "REDUNDANT_MAX_DOFS", "REDUNDANT_SOLVES", "REDUNDANT_SOLVES_MAX_DOFS"]
