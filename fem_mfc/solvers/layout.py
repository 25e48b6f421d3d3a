"""The unknowns of an all-at-once space-time system and their order in one PETSc vector.

Every space-time formulation (HJB–FP, QHD, the Cole–Hopf pair) has two kinds of fields on the
time levels n = 0..N:

* the *forward* kind (ρ, Γ), data at n = 0 and unknown at n = 1..N;
* the *backward* kind (u, S, χ), unknown at n = 0..N−1 and data (or absent) at n = N.

Each equation belongs to the field it is the derivative with respect to (the discrete
Lagrangian's optimality system): the equation of uⁿ, ∂L/∂uⁿ = 0, steps the forward kind
n → n+1 (the Fokker–Planck step for HJB–FP) and is solved for ρ^{n+1} in a forward sweep; the
equation of ρⁿ, ∂L/∂ρⁿ = 0, steps the backward kind n → n−1 (the HJB step) and is solved for
u^{n−1} in a backward sweep.  These are the *pivots* of the sweep preconditioner.

The global vector holds, on every rank, the owned dofs of the fields in the order
u⁰, ρ¹, u¹, ρ², …, u^{N−1}, ρ^N (field index 2n for uⁿ, 2n − 1 for ρⁿ): the order of a MatNest
of the level blocks converted to AIJ.  Only this module knows that arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass

FORWARD, BACKWARD = "rho", "u"           # kind names used by the formulations' templates


@dataclass(frozen=True)
class SpaceTimeLayout:
    """N time steps of ``nl`` owned dofs per field."""

    N: int
    nl: int

    @property
    def nfields(self) -> int:
        return 2 * self.N

    # -- fields ---------------------------------------------------------------------------
    def index(self, kind: str, n: int) -> int | None:
        """The field index of kindⁿ, or None where it is data or absent."""
        if kind == FORWARD:
            return 2 * n - 1 if 1 <= n <= self.N else None
        if kind == BACKWARD:
            return 2 * n if 0 <= n <= self.N - 1 else None
        raise ValueError(f"unknown field kind {kind!r}")

    def field(self, f: int) -> tuple[str, int]:
        """(kind, n) of field index f."""
        return (BACKWARD, f // 2) if f % 2 == 0 else (FORWARD, (f + 1) // 2)

    def is_forward(self, f: int) -> bool:
        """Is field f of the forward kind (ρ)?  Its equation is then a backward (HJB) step."""
        return f % 2 == 1

    def slice(self, f: int) -> slice:
        """The owned entries of field f in the local part of the global vector."""
        return slice(f * self.nl, (f + 1) * self.nl)

    # -- equations (rows) and the sweeps ----------------------------------------------------
    def pivot(self, r: int) -> int:
        """The field equation r is solved for in a sweep: the equation of uⁿ → ρ^{n+1}
        (forward step), the equation of ρⁿ → u^{n−1} (backward step)."""
        return r - 1 if self.is_forward(r) else r + 1

    def forward_rows(self) -> list[int]:
        """Equations of u⁰, …, u^{N−1}: the forward steps in the order of a forward sweep."""
        return [self.index(BACKWARD, n) for n in range(self.N)]

    def backward_rows(self) -> list[int]:
        """Equations of ρ^N, …, ρ¹: the backward steps in the order of a backward sweep."""
        return [self.index(FORWARD, n) for n in range(self.N, 0, -1)]

    def forward_fields(self) -> list[int]:
        return [self.index(FORWARD, n) for n in range(1, self.N + 1)]

    def backward_fields(self) -> list[int]:
        return [self.index(BACKWARD, n) for n in range(self.N)]

    def before_in_backward_sweep(self, c: int, r: int) -> bool:
        """Is column c known when the backward sweep reaches equation r (u-kind fields later
        in time than r's pivot)?"""
        return not self.is_forward(c) and c > self.pivot(r)

    def before_in_forward_sweep(self, c: int, r: int) -> bool:
        """Is column c known when the forward sweep reaches equation r (every u-kind field,
        after the backward sweep, and the ρ-kind fields earlier than r's pivot)?"""
        return not self.is_forward(c) or c < self.pivot(r)


__all__ = ["SpaceTimeLayout", "FORWARD", "BACKWARD"]
