"""The outcome of a solve: fields at every layer, cost two ways, mass, iterations, and whether
the solve met its tolerance."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Result:
    """ρ⁰..ρᴺ (ρⁿ at t_n) and u⁰..u^{N−1} (uⁿ at ``problem.u_time(n)``) with diagnostics.

    ``J`` is the direct evaluation ∫Φρ^N + Σ τ∫[(½|∇uⁿ|² + V)ρ̄ⁿ + G(ρ̄ⁿ)]; ``J_value`` the
    discrete value identity ∫u(0)ρ_0 + Σ τ∫(G(ρ̄) − ρ̄c(ρ̄)) (equal at a discrete solution).
    ``converged`` says whether the nonlinear solve met its tolerance (``reason`` says how it
    stopped); an unconverged result holds the best iterate reached.  ``path`` records how it
    was solved (method, linear path, per-step solver, forcing, caches, ranks) and
    ``continuation`` the stages of a continuation, if one ran.  ``restarted_from``: the
    checkpoint a restart continued (``iterations`` count the final attempt's Newton iterations
    from its start, those of the legs before included);
    ``auto_fallback``: why ``method = "auto"`` solved by Newton after Cole–Hopf.
    """

    problem: Any
    method: str
    rho: list
    u: list
    J: float
    J_value: float
    mass: list
    mass_error: float
    min_rho: float
    iterations: int
    history: list = field(default_factory=list)
    seconds: float = 0.0
    converged: bool = True
    reason: str = ""
    residual: float = 0.0
    path: dict = field(default_factory=dict)
    continuation: list = field(default_factory=list)
    mass_exited: dict = field(default_factory=dict)   # exits: total, per_step, by_tag
    populations: dict = field(default_factory=dict)   # several populations: names, masses
    restarted_from: dict | None = None    # a restart: the checkpoint's phase and iteration
    iterations_run: int | None = None     # every Newton iteration of the run (all attempts,
                                          # continuation stages and restarted legs)
    krylov_run: dict | None = None        # every Krylov iteration of the run likewise
                                          # (krylov_iterations_total), and of them those of
                                          # line searches (krylov_iterations_line_search)
    auto_fallback: dict | None = None     # 'auto' left Cole-Hopf for Newton: why

    @property
    def identity_gap(self) -> float:
        """|J − J_value| / max(|J|, |J_value|): 0 at a discrete solution of the HJB–FP scheme
        (to solver tolerance), the discretisation error for Cole–Hopf; inf if not a number."""
        return identity_gap(self.J, self.J_value)

    @classmethod
    def from_system(cls, st, method, iterations, history, seconds, **kw):
        d = st.diagnostics()
        return cls(problem=st.problem, method=method, rho=st.rho, u=st.u, J=d["J"],
                   J_value=d["J_value"], mass=d["mass"], mass_error=d["mass_error"],
                   min_rho=d["min_rho"], iterations=iterations, history=history,
                   seconds=seconds, mass_exited=d.get("mass_exited", {}),
                   populations=d.get("populations", {}), **kw)

    def run_totals(self) -> dict:
        """The summary's counts of a whole Newton run with a continuation (``iterations``
        are the final attempt's): ``iterations_total``, every Newton iteration of the run (of
        every leg of a restarted one), ``krylov_iterations_total`` every Krylov iteration
        likewise (the Newton steps' and the line searches' solves) and
        ``krylov_iterations_line_search`` the line searches' part."""
        out = {"iterations_total": (self.iterations_run if self.iterations_run is not None
                                    else sum(int(s.get("iterations") or 0)
                                             for s in self.continuation))}
        if self.krylov_run is not None:
            out.update(self.krylov_run)
        return out

    def check(self) -> "Result":
        """This result, or SolverError (one line) if the solve did not meet its tolerance."""
        if not self.converged:
            from ..errors import SolverError
            raise SolverError(f"{self.method} did not converge: {self.reason} after "
                              f"{self.iterations} iterations (residual {self.residual:.3e})")
        return self

    def summary(self) -> dict:
        out = {"method": self.method, "J": self.J, "J_value_identity": self.J_value,
               "mass_error": self.mass_error, "min_rho": self.min_rho,
               "iterations": self.iterations, "seconds": self.seconds,
               "converged": self.converged, "reason": self.reason, "residual": self.residual}
        if self.path:
            out["solver_path"] = dict(self.path)
        if self.continuation:
            out["continuation"] = list(self.continuation)
        if self.mass_exited:
            out["mass_exited"] = dict(self.mass_exited)
        return out


def identity_gap(J: float, J_value: float) -> float:
    """|J − J_value| / max(|J|, |J_value|) of a cost and its value identity (inf if either is
    not a number)."""
    import math
    if not (math.isfinite(J) and math.isfinite(J_value)):
        return math.inf
    return abs(J - J_value) / max(abs(J), abs(J_value), 1e-300)
