"""PETSc options, scoped to the run or solve that sets them.

PETSc reads its solver settings from one global options database.  fem_mfc never leaves its
own entries behind there: every set of options is inserted by :func:`inserted` for the
duration of a ``with`` block and removed (earlier values restored) when the block ends — the
idea of Firedrake's ``OptionsManager.inserted_options``.  Two kinds of entries:

* **settings** (the user's: a run's ``[solver] petsc_options`` and command-line options, or a
  solver call's ``petsc_options``) overwrite what is there;
* **defaults** (a solver's choices, e.g. the line search) are inserted only where the name is
  not already set, so the user's choice always wins.

:func:`make_ksp` and :func:`make_snes` create the solver objects of the package (prefix,
operators, type, defaults); their ``setFromOptions`` runs inside :func:`inserted` so the
defaults are seen, and callers keep solving inside the same block where a setting is read at
set-up time (e.g. MUMPS' ICNTL values at factorisation).

A setting without a value (``-mfc_snes_max_it`` at the end of the command line, or followed by
another option) is inserted with an empty value rather than none
(:func:`fem_mfc.compat.require_value`): flags, booleans (true) and viewers read it as before,
but PETSc's number readers, which skipped an option without a value silently, now fail, and
:func:`missing_value` turns that failure into one line naming the option (exit 2).
"""
from __future__ import annotations

import contextlib
import re

from mpi4py import MPI
from petsc4py import PETSc

import numpy as np

from .errors import UserError

# PETSc's words when a number is read from an empty value (PetscOptionsStringToInt/Real)
NO_NUMBER = "length zero has no numerical value"
VIEWER_NAME = re.compile(r"(monitor|view|reason)(_|$)")
_valueless: list[str] = []          # settings without a value, in the blocks now open
_detected: list[UserError] = []     # the error missing_value found (callbacks swallow it)


def normalise(options: dict | None, prefix: str = "") -> dict:
    """{name without leading '-', with ``prefix``: value as a string} ("" for flags)."""
    out = {}
    for k, v in (options or {}).items():
        name = str(k).lstrip("-")
        if prefix and not name.startswith(prefix):
            name = prefix + name
        if isinstance(v, bool):
            v = "true" if v else "false"
        out[name] = "" if v is None else str(v)
    return out


@contextlib.contextmanager
def inserted(settings: dict | None = None, defaults: dict | None = None, prefix: str = ""):
    """Insert ``settings`` (overwriting) and ``defaults`` (only where unset) under ``prefix``
    into PETSc's options database for the ``with`` block; on exit remove what was inserted
    and restore overwritten values.  Yields the names inserted."""
    from .compat import has_empty_value, require_value
    db = PETSc.Options()
    saved = {}                      # name -> (previous value (None: was unset), it was empty)
    valueless, added = [], 0
    try:
        for name, v in normalise(settings, prefix).items():
            if name not in saved:
                saved[name] = ((db.getString(name), has_empty_value(name))
                               if db.hasName(name) else (None, False))
            db.setValue(name, v)
            if v == "" and require_value(name):
                valueless.append(name)
        for name, v in normalise(defaults, prefix).items():
            if not db.hasName(name):
                saved.setdefault(name, (None, False))
                db.setValue(name, v)
        if valueless and not _valueless:
            _forget_petsc_error()
        _valueless.extend(valueless)
        added = len(valueless)
        yield list(saved)
    except PETSc.Error as e:
        error = missing_value(e)
        if error is None:
            raise
        raise error from None
    finally:
        del _valueless[len(_valueless) - added:]
        if not _valueless:
            _detected.clear()
        for name, (old, empty) in saved.items():
            if old is None:
                db.delValue(name)
            else:
                db.setValue(name, old)
                if empty:
                    require_value(name)


def missing_value(error: Exception | None = None) -> UserError | None:
    """The input error behind a failure, when it is PETSc failing to read a number from an
    option given without a value (see the module docstring): one line naming the option — the
    one a solver read, among those given without a value — else None.  ``error``: the
    PETSc.Error just caught; without it, PETSc's last error since the options were inserted
    (a solver that caught the error and failed, e.g. a factorisation inside a Newton step)."""
    from .compat import option_used, petsc_error_message
    if not _valueless:
        return None
    if _detected:
        return _detected[-1]
    ierr = getattr(error, "ierr", 0)
    message = petsc_error_message(ierr if isinstance(ierr, int) else 0) or ""
    if NO_NUMBER not in message.lower():
        return None
    names = list(dict.fromkeys(_valueless))
    read = [n for n in names if option_used(n)] or names
    # which one failed PETSc does not say: among those read, monitors, views and reasons (by
    # PETSc's naming; viewers, read before the tolerances in KSPSetFromOptions) were fine
    read = [n for n in read if not VIEWER_NAME.search(n)] or read
    if len(read) == 1:
        line = (f"PETSc option -{read[0]}: expected a value after it (PETSc reads it as a "
                "number), got none")
    else:
        line = (f"PETSc options {', '.join('-' + n for n in read)}: one of them needs a value "
                "after it (PETSc reads it as a number), got none")
    _detected.append(UserError(line))
    return _detected[-1]


def _forget_petsc_error() -> None:
    """Overwrite PETSc's record of its last error with a harmless one of our own, so that
    :func:`missing_value` sees only the failures after this point."""
    db, probe = PETSc.Options(), "fem_mfc_forget_error_probe"
    db.setValue(probe, "x")
    try:
        db.getInt(probe)
    except PETSc.Error:
        pass
    finally:
        db.delValue(probe)


def get(name: str, default=None, prefix: str = ""):
    """The option ``prefix + name`` as a string, or ``default`` when unset."""
    db = PETSc.Options(prefix)
    return db.getString(name) if db.hasName(name) else default


def get_bool(name: str, default: bool, prefix: str = "") -> bool:
    return PETSc.Options(prefix).getBool(name, default)


def get_real(name: str, default: float, prefix: str = "") -> float:
    return PETSc.Options(prefix).getReal(name, default)


# PETSc's LU and Cholesky call a pivot below an *absolute* 100 ε a zero pivot; fem_mfc's
# factors take it relative to the matrix's smallest non-zero diagonal entry instead (not the
# largest: the rows of constrained dofs hold 1), so the units do not matter — a 2D mesh of
# size 1e-6, or a 3D one of 1e-4, has mass-matrix entries below 1e-14 and every per-step
# factorisation failed
ZERO_PIVOT = 100 * 2.220446049250313e-16


def zero_pivot(A: PETSc.Mat) -> float:
    """The zero-pivot tolerance of a factorisation of A: ZERO_PIVOT × min |A_ii| over the
    non-zero diagonal entries, at most PETSc's default (collective on A's communicator)."""
    d = np.abs(A.getDiagonal().getArray())
    local = float(d[d > 0].min()) if np.any(d > 0) else np.inf
    low = A.getComm().tompi4py().allreduce(local, op=MPI.MIN)
    return ZERO_PIVOT * min(low, 1.0) if np.isfinite(low) else ZERO_PIVOT


def make_ksp(comm, prefix: str, A=None, ksp_type: str = "preonly", pc_type: str = "lu",
             factor: str | None = "mumps", defaults: dict | None = None,
             rtol: float | None = None, atol: float | None = None,
             max_it: int | None = None) -> PETSc.KSP:
    """A KSP with options prefix ``prefix`` on operator ``A``: ``ksp_type`` + ``pc_type``
    (with ``factor`` as the factorisation package for LU), then the options database
    (``defaults`` inserted where unset)."""
    ksp = PETSc.KSP().create(comm)
    ksp.setOptionsPrefix(prefix)
    if A is not None:
        ksp.setOperators(A)
    ksp.setType(ksp_type)
    pc = ksp.getPC()
    pc.setType(pc_type)
    if pc_type in ("lu", "cholesky") and factor:
        pc.setFactorSolverType(factor)
        if factor == "petsc" and A is not None:
            pc.setFactorPivot(zeropivot=zero_pivot(A))            # relative to A: any units
    if rtol is not None or atol is not None or max_it is not None:
        ksp.setTolerances(rtol=rtol, atol=atol, max_it=max_it)
    with inserted(defaults=defaults, prefix=prefix):
        ksp.setFromOptions()
    return ksp


# MUMPS' INFOG(1) of a work array or buffer that it sized from its analysis' estimate plus the
# relaxation ICNTL(14) % and that proved too small (its users' guide: "increase ICNTL(14)");
# -13, -19, -22 are allocations the machine or ICNTL(23) refused, which more relaxation only
# makes worse.  Seen as an intermittent -9 on 2 ranks for a tiny problem (the estimate depends
# on the delayed pivots, i.e. on the values).  :func:`factorise` repeats the factorisation
# from the analysis with the relaxation doubled (at least WORKSPACE_RELAX %) up to
# WORKSPACE_RETRIES times.
MUMPS_WORKSPACE = (-8, -9, -11, -12, -14, -15, -17, -20)
WORKSPACE_RETRIES = 3
WORKSPACE_RELAX = 100


def is_mumps(ksp: PETSc.KSP) -> bool:
    """Is ``ksp``'s preconditioner a factorisation (LU or Cholesky) by MUMPS?"""
    pc = ksp.getPC()
    return pc.getType() in ("lu", "cholesky") and pc.getFactorSolverType() == "mumps"


def factorise(ksp: PETSc.KSP, A: PETSc.Mat | None = None, P: PETSc.Mat | None = None,
              icntl: dict | None = None, retries: list | None = None, log=None,
              attempts: int | None = None) -> bool:
    """Factorise now the MUMPS LU/Cholesky of ``ksp``'s preconditioner (on ``A``, ``P`` if
    given, else its operators); when MUMPS reports a work array too small (INFOG(1) in
    MUMPS_WORKSPACE) start again from the analysis with twice the relaxation ICNTL(14) (at
    least WORKSPACE_RELAX), up to ``attempts`` (WORKSPACE_RETRIES) times, each recorded in
    ``retries`` ({infog1, infog2, icntl_14}) and told to ``log``.  From the analysis: PETSc's
    MUMPS interface skips the numerical phase of a factor matrix whose last phase failed
    (MatFactorNumeric_MUMPS), so the PC is reset and a new factor matrix made, with the
    relaxation set in the options database under the KSP's prefix (over the user's value,
    which MUMPS reads there) and the ``icntl`` {number: value} of the caller set again on
    it.  A solve then finds the factors current; a failure that remains is the solve's
    (DIVERGED_PC_FAILED).  Returns False, doing nothing, when the preconditioner is not
    MUMPS' (another the user chose is left to the KSP's own set-up).  Collective."""
    if not is_mumps(ksp):
        return False
    attempts = WORKSPACE_RETRIES if attempts is None else attempts
    pc = ksp.getPC()
    if A is not None:
        ksp.setOperators(A, P if P is not None else A)
    A, P = pc.getOperators()
    name = (ksp.getOptionsPrefix() or "") + "mat_mumps_icntl_14"

    def setup(settings=None):
        if icntl:
            pc.setFactorSetUpSolverType()
            F = pc.getFactorMatrix()
            for k, v in icntl.items():
                F.setMumpsIcntl(icntl=int(k), ival=int(v))
        with inserted(settings=settings):
            pc.setUp()
    setup()
    for _ in range(attempts):
        F = pc.getFactorMatrix()
        code = F.getMumpsInfog(1)
        if code not in MUMPS_WORKSPACE:
            break
        relax = max(2 * F.getMumpsIcntl(14), WORKSPACE_RELAX)
        if retries is not None:
            retries.append({"infog1": code, "infog2": F.getMumpsInfog(2), "icntl_14": relax})
        if log is not None:
            log.info("MUMPS INFOG(1) = %d (a work array too small): factorising again with "
                     "ICNTL(14) = %d", code, relax)
        pc.reset()                  # a new factor matrix, analysed with the new relaxation
        pc.setOperators(A, P)
        setup({name: relax})
    return True


def make_snes(comm, prefix: str, rtol: float, atol: float, max_it: int,
              stol: float = 1e-14, defaults: dict | None = None) -> PETSc.SNES:
    """A Newton SNES (``newtonls``) with options prefix ``prefix`` and tolerances; the caller
    sets function, Jacobian and KSP and then calls :func:`configure` inside its
    :func:`inserted` block."""
    snes = PETSc.SNES().create(comm)
    snes.setOptionsPrefix(prefix)
    snes.setType("newtonls")
    snes.setTolerances(rtol=rtol, atol=atol, stol=stol, max_it=max_it)
    return snes


REASONS = {v: k for k, v in PETSc.SNES.ConvergedReason.__dict__.items()
           if not k.startswith("_")}
KSP_REASONS = {v: k for k, v in PETSc.KSP.ConvergedReason.__dict__.items()
               if not k.startswith("_")}


__all__ = ["inserted", "missing_value", "normalise", "get", "get_bool", "get_real", "make_ksp",
           "make_snes", "factorise", "is_mumps", "MUMPS_WORKSPACE", "WORKSPACE_RETRIES",
           "REASONS", "KSP_REASONS"]
