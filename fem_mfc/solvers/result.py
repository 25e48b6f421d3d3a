"""The outcome of a solve: fields at every layer, cost two ways, mass, iterations."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Result:
    """ρ⁰..ρᴺ (ρⁿ at t_n) and u⁰..u^{N−1} (uⁿ at ``problem.u_time(n)``) with diagnostics.

    ``J`` is the direct evaluation ∫Φρ^N + Σ τ∫[(½|∇uⁿ|² + V)ρ̄ⁿ + G(ρ̄ⁿ)]; ``J_value`` the
    discrete value identity ∫u(0)ρ_0 + Σ τ∫(G(ρ̄) − ρ̄c(ρ̄)) (equal at a discrete solution).
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

    @classmethod
    def from_system(cls, st, method, iterations, history, seconds):
        d = st.diagnostics()
        return cls(problem=st.problem, method=method, rho=st.rho, u=st.u, J=d["J"],
                   J_value=d["J_value"], mass=d["mass"], mass_error=d["mass_error"],
                   min_rho=d["min_rho"], iterations=iterations, history=history,
                   seconds=seconds)

    def summary(self) -> dict:
        return {"method": self.method, "J": self.J, "J_value_identity": self.J_value,
                "mass_error": self.mass_error, "min_rho": self.min_rho,
                "iterations": self.iterations, "seconds": self.seconds}
