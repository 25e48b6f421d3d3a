"""Solvers of the HJB–FP optimality system (MODEL §2, §4).

``solve(problem, method)``: "newton" (all-at-once, SNES), "picard" (damped fictitious play),
"cole-hopf" (two linear sweeps when G = 0; with congestion the imaginary-time cubic
Schrödinger pair (χ, Γ) of MODEL §4, all-at-once by Newton, continued in the coupling
strength where needed) or "auto" (the linear Cole–Hopf
path when G = 0 and the problem has no source terms, else Newton).
"""
from __future__ import annotations

from .. import compat
from ..errors import ConfigError
from .newton import newton
from .picard import picard
from .result import Result
from .sweeps import cole_hopf_obstacles, cole_hopf_solve

METHODS = ("auto", "newton", "picard", "cole-hopf")
compat.fast_jit_lookup()            # every solve compiles (looks up) its forms


def choose_method(problem, method: str = "auto") -> str:
    if method not in METHODS:
        raise ConfigError("solver.method", "one of " + ", ".join(METHODS), method)
    if getattr(problem, "populations", None):
        if method not in ("auto", "newton"):  # several populations: the joint Newton only
            raise ConfigError("solver.method", "'newton' or 'auto' with [[population]] "
                              "tables", method)
        return "newton"
    if method != "auto":
        if method in ("cole-hopf", "picard") and getattr(problem, "exits", None):
            raise ConfigError("solver.method", "'newton' or 'auto' for a problem with exits "
                              "([[boundary]] kind = 'exit')", method)
        if getattr(problem, "periodic", None) and (
                method == "picard" or (method == "cole-hopf" and problem.G is not None)):
            raise ConfigError("solver.method", "'newton' or 'auto' for a problem with "
                              "periodic sides ([[boundary]] kind = 'periodic'; 'cole-hopf' "
                              "without congestion)", method)
        if method == "cole-hopf" and getattr(problem, "hamiltonian", None) is not None:
            from .sweeps import hamiltonian_refusal
            raise hamiltonian_refusal("solver.method = 'cole-hopf'")
        if method == "cole-hopf" and getattr(problem, "stabilisation", "none") == "monotone":
            raise ConfigError("solver.method", "'newton' or 'picard' with the monotone scheme "
                              "(Cole-Hopf solves the Galerkin one)", method)
        return method
    if getattr(problem, "stabilisation", "none") == "monotone":
        return "newton"
    return "newton" if cole_hopf_obstacles(problem) else "cole-hopf"


def solve(problem, method: str = "auto", rtol=1e-10, atol=1e-12, max_it=50,
          picard_max_it=500, relaxation=0.5, petsc_options=None,
          initial_guess: str = "trivial", linear: str = "auto", continuation: bool = True,
          strict: bool = True, step: str = "auto", system=None, checkpoint=None,
          resume: dict | None = None, log=None) -> Result:
    """Solve ``problem`` (a :class:`~fem_mfc.problem.ControlProblem`) with ``method``
    (``initial_guess``: Newton's start, "trivial", "cole-hopf" or "coarse"; ``linear``:
    Newton's linear path; ``step``: the per-step solver of the sweeps, see
    :mod:`fem_mfc.solvers.steps`).  ``strict``: raise SolverError when the solve does not meet
    its tolerance (else return the flagged result, ``converged`` False).  Newton only:
    ``system`` (a space-time system holding the start), ``checkpoint``, ``resume`` and
    ``log`` (see :func:`fem_mfc.solvers.newton.newton`)."""
    from .. import options
    settings = {} if step == "auto" else {"mfc_sweep_step": step, "mfc_ch_step": step}
    with options.inserted(defaults=settings):
        return _solve(problem, method, rtol, atol, max_it, picard_max_it, relaxation,
                      petsc_options, initial_guess, linear, continuation, strict,
                      dict(system=system, checkpoint=checkpoint, resume=resume, log=log))


def _solve(problem, method, rtol, atol, max_it, picard_max_it, relaxation, petsc_options,
           initial_guess, linear, continuation, strict, newton_kw) -> Result:
    m = choose_method(problem, method)
    if newton_kw.get("resume") is not None and m != "newton":
        m = "newton"                      # a checkpoint holds a Newton iterate
    if m == "newton":
        r = newton(problem, rtol=rtol, atol=atol, max_it=max_it, petsc_options=petsc_options,
                   guess=initial_guess, linear=linear, continuation=continuation,
                   **newton_kw)
        return r.check() if strict else r
    if m == "picard":
        r = picard(problem, rtol=rtol, atol=atol, max_it=picard_max_it, relaxation=relaxation,
                   log=newton_kw.get("log"))
        return r.check() if strict else r
    if problem.G is not None:
        from .cole_hopf_pair import solve_pair
        return solve_pair(problem, rtol=rtol, atol=atol, max_it=max_it,
                          petsc_options=petsc_options, log=newton_kw.get("log"))
    r = cole_hopf_solve(problem)
    if method == "auto" and not (r.identity_gap <= COLE_HOPF_IDENTITY_RTOL
                                 and r.mass_error <= COLE_HOPF_IDENTITY_RTOL):
        # χ = e^{−u/2ε} lost positivity on a coarse Galerkin mesh (a 16-cell periodic
        # channel: J = 1053 against a value identity of 1.26): the automatic choice must not
        # hand that back — Newton solves the same problem
        gap, mass = r.identity_gap, r.mass_error
        r = newton(problem, rtol=rtol, atol=atol, max_it=max_it, petsc_options=petsc_options,
                   guess=initial_guess, linear=linear, continuation=continuation,
                   **newton_kw)
        r = r.check() if strict else r
        r.auto_fallback = {"from": "cole-hopf", "identity_gap": gap,
                           "mass_error": mass}
    return r


# Cole-Hopf solves another discretisation of the HJB-FP problem: its J differs from the
# HJB-FP value identity by the discretisation error, within this (relative) tolerance, and
# its discrete mass from 1 by at most as much
COLE_HOPF_IDENTITY_RTOL = 5e-2


__all__ = ["solve", "newton", "picard", "cole_hopf_solve", "Result", "choose_method"]
