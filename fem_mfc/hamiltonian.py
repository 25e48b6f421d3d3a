"""Hamiltonians H(x, p, ρ) of the HJB–FP system (``[problem] H``, ``[hamiltonian]``).

The optimality system of MODEL §2 with a general Hamiltonian reads

  HJB (backward):  −∂_t u − εΔu + H(x, ∇u, ρ) [+ ρ ∂_ρH] = V + c(ρ),   u(T) = Φ
  FP  (forward):    ∂_t ρ − εΔρ − ∇·(ρ ∂_pH(x, ∇u, ρ)) = 0,            ρ(0) = ρ_0

(control a* = −∂_pH; the bracket only for ``coupling = "mftc"``, where H's dependence on ρ
is differentiated like the congestion G — the mean-field *control* problem — while the game
``"mfg"`` keeps ρ in H as a parameter, the MFG with congestion of Achdou–Porretta).  The
discrete Lagrangian of forms/hjb_fp.py replaces −½ρ̄|∇u|² by −ρ̄H(x, ∇u, ρ̄), so the drift
−∂_pH of the FP rows comes from ``ufl.derivative`` of that one term, never written by hand.

Kinds (``[problem] H``):

* ``"quadratic"`` (default): ½|p|² — the original forms, bit for bit;
* ``"weighted"``: ½c(x)|p|², c = ``[hamiltonian] weight`` (a positive formula in x);
* ``"power"``: |p|^q/q, q = ``[hamiltonian] q`` > 1, regularised at p = 0 as
  ((|p|² + δ²)^{q/2} − δ^q)/q with δ = ``[hamiltonian] delta`` (q ≠ 2): without it ∂²H/∂p²
  is infinite (q < 2) or has 0·∞ terms (2 < q < 4) at p = 0 and Newton's matrix is NaN there.
  For q < 2 the regularised H is below |p|^q/q by at most δ^q/q;
* ``"anisotropic"``: ½pᵀA(x)p, A = ``[hamiltonian] A`` (gdim × gdim formulas, symmetric
  positive definite; the symmetric part is used);
* ``"congestion"``: |p|²/(2(1 + ρ)^α), α = ``[hamiltonian] alpha`` ≥ 0;
* any other string: a formula in p0, p1, p2 (the components of p = ∇u), |p|, x0..x2, rho and
  the ``params`` (``|p|**b`` is taken as (p·p)^{b/2}, smooth at p = 0 for b ≥ 2; a bare |p|
  is not differentiable at p = 0).

Structure facts for the solvers (:mod:`fem_mfc.solvers.spacetime`): ``quadratic`` — H is a
quadratic form in p free of ρ, so the residual stays quadratic in the unknowns (weighted,
anisotropic, power with q = 2, congestion with α = 0); ``uses_rho`` — the HJB rows depend on ρ
through H (the ρ–ρ blocks exist without G; the game coupling then breaks the symmetry of the
KKT matrix, see ``mirrored`` in spacetime.py).
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Callable

import ufl

from .errors import ConfigError

KINDS = ("quadratic", "weighted", "power", "anisotropic", "congestion")
_PNORM = "pnorm"
_BARS = re.compile(r"\|\s*p\s*\|")


@dataclass
class Hamiltonian:
    """H(x, p, ρ) as a callable ``fn(p, rho)`` (x built in) and its structure facts."""

    kind: str
    fn: Callable
    quadratic: bool
    uses_rho: bool
    text: str = ""

    def __call__(self, p, rho=None):
        return self.fn(p, rho)

    def gradient(self, p, rho=None):
        """∂H/∂p at p (UFL, by differentiation)."""
        pv = ufl.variable(p)
        return ufl.diff(self.fn(pv, rho), pv)

    def lagrangian(self, p, rho=None):
        """p·∂_pH − H: the running cost L(x, a) of the optimal control a = −∂_pH."""
        pv = ufl.variable(p)
        h = self.fn(pv, rho)
        return ufl.inner(pv, ufl.diff(h, pv)) - h

    def rho_derivative(self, p, rho):
        """∂H/∂ρ at (p, ρ) (UFL)."""
        rv = ufl.variable(rho)
        return ufl.diff(self.fn(p, rv), rv)


def is_default(h) -> bool:
    """The quadratic default (None): the original forms of forms/hjb_fp.py."""
    return h is None


def from_config(cfg: dict, mesh):
    """The Hamiltonian of ``[problem] H`` and ``[hamiltonian]`` on ``mesh``: None for the
    quadratic default, else a :class:`Hamiltonian`."""
    from .expressions import parameter_constants, parse
    pr = cfg["problem"]
    text = pr.get("H", "quadratic")
    if text == "quadratic":
        return None
    hc = cfg.get("hamiltonian", {})
    params = parameter_constants(pr.get("params", {}), mesh)   # numbers as Constants: the
    gdim = mesh.geometry.dim                                   # forms compile once for all
    x = ufl.SpatialCoordinate(mesh)                            # values (exponents excepted)

    def formula(key, t, **kw):
        return parse(t, key, x=x, gdim=gdim, params=params, literals=mesh, **kw)

    if text == "weighted":
        c = formula("hamiltonian.weight", hc.get("weight", "1"))
        return weighted(c, text=f"weighted: c(x) = {hc.get('weight', '1')}")
    if text == "power":
        q, delta = float(hc.get("q", 1.5)), float(hc.get("delta", 1e-3))
        return power(q, delta)
    if text == "anisotropic":
        A = hc.get("A", [])
        if not (isinstance(A, list) and len(A) == gdim
                and all(isinstance(r, list) and len(r) == gdim for r in A)):
            raise ConfigError("hamiltonian.A", f"a {gdim}x{gdim} array of formulas (rows) for "
                              "H = 'anisotropic'", A)
        M = [[formula(f"hamiltonian.A[{i}][{j}]", str(v)) for j, v in enumerate(r)]
             for i, r in enumerate(A)]
        return anisotropic(M)
    if text == "congestion":
        return congestion(float(hc.get("alpha", 1.0)))
    return from_formula(text, x, gdim, params, literals=mesh)


def quadratic():
    """½|p|² as a Hamiltonian object (the default itself is None: the original forms)."""
    return Hamiltonian("quadratic", lambda p, rho: 0.5 * ufl.inner(p, p), True, False,
                       "|p|^2/2")


def weighted(c, text="weighted"):
    """½c(x)|p|²."""
    return Hamiltonian("weighted", lambda p, rho: 0.5 * c * ufl.inner(p, p), True, False, text)


def power(q: float, delta: float = 1e-3):
    """|p|^q/q, regularised as ((|p|² + δ²)^{q/2} − δ^q)/q for q ≠ 2."""
    if not q > 1:
        raise ConfigError("hamiltonian.q", "a number > 1 for H = 'power'", q)
    if q != 2 and not delta > 0:
        raise ConfigError("hamiltonian.delta", "a positive regularisation for H = 'power' with "
                          "q != 2 (d2H/dp2 is singular at p = 0)", delta)
    if q == 2:
        return Hamiltonian("power", lambda p, rho: 0.5 * ufl.inner(p, p), True, False,
                           "|p|^2/2")
    return Hamiltonian("power", lambda p, rho: ((ufl.inner(p, p) + delta ** 2) ** (q / 2)
                                                 - delta ** q) / q, False, False,
                       f"|p|^{q:g}/{q:g} (delta = {delta:g})")


def anisotropic(A):
    """½pᵀA(x)p with A a list of rows of UFL expressions (or numbers); its symmetric part."""
    n = len(A)
    S = ufl.as_matrix([[0.5 * (A[i][j] + A[j][i]) for j in range(n)] for i in range(n)])
    return Hamiltonian("anisotropic", lambda p, rho: 0.5 * ufl.inner(p, ufl.dot(S, p)), True,
                       False, "p.A(x)p/2")


def congestion(alpha: float):
    """|p|²/(2(1 + ρ)^α) (MFG with congestion)."""
    if not alpha >= 0:
        raise ConfigError("hamiltonian.alpha", "a non-negative number", alpha)
    if alpha == 0:
        return Hamiltonian("congestion", lambda p, rho: 0.5 * ufl.inner(p, p), True, False,
                           "|p|^2/2")
    return Hamiltonian("congestion",
                       lambda p, rho: ufl.inner(p, p) / (2.0 * (1.0 + rho) ** alpha),
                       False, True, f"|p|^2/(2(1+rho)^{alpha:g})")


def formula_names(text: str) -> set:
    """The names a formula uses (after |p| → pnorm)."""
    try:
        tree = ast.parse(_BARS.sub(_PNORM, text.strip()), mode="eval")
    except SyntaxError:
        return set()
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def from_formula(text: str, x, gdim: int, params: dict, key: str = "problem.H",
                 literals=None):
    """H as a formula in p0..p{gdim−1}, |p|, x, rho and the params (``literals``: a mesh on
    which its numbers become Constants, :func:`fem_mfc.expressions.parse`)."""
    from .expressions import parse
    src = _BARS.sub(_PNORM, text)
    names = formula_names(text)
    uses_rho = "rho" in names
    if not names & ({f"p{i}" for i in range(gdim)} | {_PNORM}):
        raise ConfigError(key, "'quadratic', 'weighted', 'power', 'anisotropic', "
                          "'congestion' or a formula in p0..p%d or |p| (and x, rho)"
                          % (gdim - 1), text)

    def fn(p, rho):
        variables = {f"p{i}": p[i] for i in range(gdim)}
        variables[_PNORM] = ufl.sqrt(ufl.inner(p, p))
        if rho is not None:
            variables["rho"] = rho
        return parse(src, key, x=x, gdim=gdim, params=params, variables=variables,
                     powers={_PNORM: lambda b: ufl.inner(p, p) ** (b / 2.0)},
                     literals=literals)

    h = Hamiltonian("formula", fn, False, uses_rho, text)
    h.quadratic = (not uses_rho) and _quadratic_in_p(h, gdim)
    return h


def _quadratic_in_p(h: Hamiltonian, gdim: int) -> bool:
    """Is H a polynomial of degree ≤ 2 in p?  (Its third p-derivative expands to Zero; a
    formula UFL cannot simplify that far is taken as not quadratic: always safe.)"""
    try:
        p = ufl.variable(ufl.as_vector([ufl.as_ufl(0.3 + 0.1 * i) for i in range(gdim)]))
        d3 = ufl.diff(ufl.diff(ufl.diff(h(p, None), p), p), p)
        d3 = ufl.algorithms.expand_derivatives(d3)
        return isinstance(d3, ufl.constantvalue.Zero)
    except Exception:                 # noqa: BLE001 - any failure: not provably quadratic
        return False


__all__ = ["Hamiltonian", "KINDS", "from_config", "quadratic", "weighted", "power",
           "anisotropic", "congestion", "from_formula", "is_default"]
