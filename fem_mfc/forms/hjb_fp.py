"""Discrete Lagrangian of the feedback-network optimality system (MODEL §2).

Continuous system (ε = σ²/2, natural boundary conditions):

  HJB (backward):  −∂_t u − εΔu + ½|∇u|² = V + c(ρ),   u(T) = Φ
  FP  (forward):    ∂_t ρ − εΔρ − ∇·(ρ∇u) = 0,          ρ(0) = ρ_0
  coupling c(ρ) = G'(ρ) ("mftc") or G(ρ)/ρ ("mfg").

Discretisation: the discrete Lagrangian, with the control a = −∇u eliminated,

  L(ρ, u) = ∫Φ ρ^N + Σ_{n=0}^{N−1} L_n(ρⁿ, ρ^{n+1}, uⁿ),
  L_n = τ∫[V ρ̄ + G(ρ̄) − ½ ρ̄ |∇uⁿ|²] − ∫uⁿ(ρ^{n+1} − ρⁿ) − τε∫∇uⁿ·∇ρ̄,

  ρ̄ = ρ^{n+1} (backward Euler, θ = 1) or (ρⁿ + ρ^{n+1})/2 (implicit midpoint, θ = ½).

∂L/∂uⁿ = 0 is the FP step (test function 1 ⇒ ∫ρ^{n+1} = ∫ρⁿ); ∂L/∂ρ^{n+1} = 0 is the
implicit HJB step for uⁿ (the ∫Φρ^N term plays "u^N = Φ").  Every residual and Jacobian is
obtained from this one density with ``ufl.derivative``.  The congestion enters the ρ-rows as
∫c(ρ̄) ∂ρ̄/∂ρ[q]; for "mftc" this is exactly ∂/∂ρ of τ∫G(ρ̄), for "mfg" it is the game coupling
(not a derivative of L); Jacobians are derivatives of these residuals, so both modes come from
the one definition of G.

Manufactured sources enter L linearly: an HJB forcing f_H and Neumann datum b_H = ε∇u·n as
τ∫f_H ρ̄ + τ∫_∂ b_H ρ̄, an FP forcing f_F and boundary flux b_F = (ε∇ρ + ρ∇u)·n as
τ∫f_F u + τ∫_∂ b_F u.

General Hamiltonians (:mod:`fem_mfc.hamiltonian`, ``StepData.H``): the term −½ρ̄|∇uⁿ|² becomes
−ρ̄H(x, ∇uⁿ, ρ̄), so ∂L/∂uⁿ is the FP step with the drift −∂_pH and ∂L/∂ρ the HJB step with
H + ρ̄∂_ρH ("mftc": one Lagrangian, symmetric KKT matrix).  For the game ("mfg") the ρ in H is
held fixed while the HJB rows are differentiated (a placeholder Coefficient replaced by ρ̄
afterwards): the HJB step then has H(x, ∇u, ρ̄) itself, and the FP rows, still ∂L/∂uⁿ, are
unchanged.  ``H = None`` is the quadratic default with the original forms, bit for bit.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable, Optional

import ufl

THETA = {"backward-euler": 1.0, "crank-nicolson": 0.5}

# Template coefficients of one time level k (see ``level_residuals``).
RHO_PREV, RHO_CUR, RHO_NEXT, U_PREV, U_CUR = "rho_prev", "rho_cur", "rho_next", "u_prev", "u_cur"


@dataclass
class StepData:
    """Everything the per-step density needs (UFL expressions in x; ``sources(t)`` in x, t).

    ``G`` is the congestion as the problem defines it; the forms use ``s·G`` with ``scale`` =
    s a Constant (1 unless a continuation in the coupling strength changes it)."""

    tau: float
    eps: float
    theta: float
    V: object
    Phi: object
    G0: Optional[Callable] = None         # rho ↦ UFL expression, None = no congestion
    coupling: str = "mftc"
    sources: Optional[Callable] = None    # t ↦ dict(f_H=, b_H=, f_F=, b_F=) (entries may be None)
    scale: object = None                  # Constant s: the forms use s·G (continuation)
    H: object = None                      # fem_mfc.hamiltonian.Hamiltonian; None: ½|p|²
    quadrature_degree: Optional[int] = None   # of every integral with H (None: estimated)
    congestion_degree: Optional[int] = None   # of every integral with G (None: estimated)
    robin: tuple = ()                     # ((tag, ds(tag), κ, t ↦ g), …): leaky walls

    @property
    def dx(self):
        """The measure of every cell integral but those with H: UFL's estimates (exact for the
        polynomial integrands) — unless the coupling is not a polynomial in ρ
        (:attr:`congestion_degree`): then one fixed rule for *every* integral, H's too.
        UFL estimates a different degree for each form with G (the residual's c(ρ̄)q, the
        cost's G(ρ̄) among other terms, the identity's G − ρ̄c), and the discrete value
        identity J = ∫u(0)ρ_0 + Σ value held to the quadrature error only; and DOLFINx
        0.9's form compiler evaluates a functional (a rank-0 form) whose integrals carry
        different rules with one of them for all — ∫r dx + ∫r² dx(degree 4) came out as
        if both were of degree 1 (vector and matrix forms are right)."""
        if self.congestion_degree is None:
            return ufl.dx
        return ufl.dx(metadata={"quadrature_degree": max(self.congestion_degree,
                                                         self.quadrature_degree or 0)})

    @property
    def dxH(self):
        """The measure of the integrals with H: one fixed rule for the residual, cost and
        value forms, so that the discrete value identity holds to round-off also for an H
        that is not a polynomial (UFL would estimate a different degree for each form);
        :attr:`dx` where that is one rule for all."""
        if self.quadrature_degree is None or self.congestion_degree is not None:
            return self.dx
        return ufl.dx(metadata={"quadrature_degree": self.quadrature_degree})

    @property
    def G(self) -> Optional[Callable]:
        if self.G0 is None:
            return None
        if self.scale is None:
            return self.G0
        return lambda rho: self.scale * self.G0(rho)

    @property
    def parameters(self) -> dict:
        """The Constants a continuation may change: the coupling strength s and ε."""
        out = {"eps": self.eps} if hasattr(self.eps, "value") else {}
        if self.scale is not None and self.G0 is not None:
            out["coupling"] = self.scale
        return out


SAMPLES = (0.37, 1.3, 4.1)          # densities at which c', c'' are sampled (see structure)
POLYNOMIAL_ORDER = 5                # c is taken for a polynomial if c⁽ʲ⁾ = 0 for some j ≤ this


def _number(expr) -> float | None:
    """The value of a UFL expression built from numbers (literals, variables of them and
    scalar Constants at their current values: the config's ``params``) only, else None (it
    depends on x or on a Function)."""
    from ufl.corealg.traversal import traverse_unique_terminals
    from ufl.variable import Label  # the name of a ufl.variable of a number

    from ..expressions import _is_constant
    terminals = list(traverse_unique_terminals(expr))
    held = {t: ufl.as_ufl(float(t.value)) for t in terminals if _is_constant(t)}
    if not all(isinstance(t, (ufl.constantvalue.ConstantValue, Label)) or t in held
               for t in terminals):
        return None
    return float(ufl.replace(expr, held) if held else expr)


_DERIVATIVES = weakref.WeakKeyDictionary()   # G0 → {(coupling, j): c⁽ʲ⁾ at SAMPLES or None}


def _derivative(G0: Callable, coupling: str, j: int) -> list | None:
    """[c⁽ʲ⁾(s) for s in SAMPLES] of the coupling c of ``G0``, or None if it still depends on
    x or on a Function (a G with x in it): then the shape is unknown.  Parameters held as
    Constants count at their values (fixed for the life of a G0).  Once per G0, coupling and
    order (the shape questions below are asked for every system a solve builds; the nested
    derivatives of G/ρ grow quickly)."""
    try:
        memo = _DERIVATIVES.setdefault(G0, {})
    except TypeError:                           # not weakly referable: no memo
        memo = {}
    if (coupling, j) not in memo:
        out = []
        for s in SAMPLES:
            r = ufl.variable(ufl.as_ufl(s))
            c = coupling_value(G0, coupling, r)
            for _ in range(j):
                c = ufl.diff(c, r)
            v = _number(ufl.algorithms.expand_derivatives(c))
            if v is None:
                out = None
                break
            out.append(v)
        memo[(coupling, j)] = out
    return memo[(coupling, j)]


def coupling_shape(G0: Optional[Callable], coupling: str) -> tuple[bool | None, bool]:
    """(c varies with ρ, c is at most quadratic in ρ) for the coupling c of ``G0``, from the
    derivatives c′ and c‴ evaluated at SAMPLES (exact for the polynomial couplings of
    practice; a G that depends on x cannot be evaluated: (None, False), unknown — the safe
    answer: the solvers then assume neither a ρ-free HJB nor a quadratic residual)."""
    if G0 is None:
        return False, True
    d1, d3 = _derivative(G0, coupling, 1), _derivative(G0, coupling, 3)
    if d1 is None or d3 is None:
        return None, False
    return any(abs(v) > 0.0 for v in d1), _negligible(d3, d1)


def coupling_affine(G0: Optional[Callable], coupling: str) -> bool:
    """Is the coupling c of ``G0`` affine in ρ (c'' = 0 at SAMPLES, e.g. G = κρ²/2 for mftc
    or κρ² for mfg)?  Then its ρ–ρ Jacobian blocks τ∫c'(ρ̄)·· do not change with the states
    (their UFL forms may still involve ρ: (G'(ρ)ρ − G(ρ))/ρ² for mfg).  False if unknown."""
    if G0 is None:
        return True
    d1, d2 = _derivative(G0, coupling, 1), _derivative(G0, coupling, 2)
    if d1 is None or d2 is None:
        return False
    return _negligible(d2, d1)


def _negligible(d: list, ref: list) -> bool:
    """Are the sampled derivative values ``d`` round-off against those of c′ (``ref``)?"""
    scale = max(max(map(abs, ref)), 1e-300)
    return all(abs(v) <= 1e-10 * scale for v in d)


def congestion_degree(G0: Optional[Callable], coupling: str, space) -> Optional[int]:
    """The quadrature degree for the integrals with G on ``space`` (the residual's c(ρ̄)q, the
    cost's G(ρ̄), the value identity's G(ρ̄) − ρ̄c(ρ̄)): None if c is a polynomial in ρ (some
    derivative up to POLYNOMIAL_ORDER vanishes at SAMPLES; UFL's estimates are then exact
    for each form), else UFL's estimate for the residual's c(ρ̄)q, at least 3k + 1 (exact
    for the polynomial terms such as ρ̄|∇u|²q: the rule is every integral's, StepData.dx).
    UFL estimates each form on its own (exp(ρ̄): degree k + 2, times q or ρ̄ one more, the
    cost's G inside a sum of other terms), and the discrete value identity then held to
    the quadrature error only: G = exp(ρ), 4 × 4 P1 cells, a converged solve was 1e-4 off
    and reported "not a discrete solution" (exit 3)."""
    if G0 is None or _polynomial(G0, coupling):
        return None
    r, q = ufl.Coefficient(space), ufl.TestFunction(space)
    integrand = ufl.algorithms.expand_derivatives(coupling_value(G0, coupling, r) * q)
    k = space.ufl_element().embedded_superdegree   # the rule is every integral's: at least
    return max(ufl.algorithms.estimate_total_polynomial_degree(integrand), 3 * k + 1)   # ρ̄|∇u|²q's


def data_degree(G0: Optional[Callable], coupling: str, space, data) -> Optional[int]:
    """:func:`congestion_degree`, or — where the coupling is a polynomial (or absent) but
    some data (Φ, V: UFL expressions in x) is not — one rule for every integral too: UFL's
    estimate for the data's terms Φq, Vρ̄q and the coupling's c(ρ̄)q, at least 3k + 1.  With
    UFL's per-form estimates the residual's Φq and the cost's ∫Φρ^N, each summed with other
    terms, were integrated by different rules: Φ = cos πx₀ + cos πx₁ with G = 3ρ³ (P2),
    a converged solve's value identity was 6e-6 off and the run exited 3."""
    degree = congestion_degree(G0, coupling, space)
    g = geometry_degree(space)
    if g == 1 and (degree is not None or all(polynomial_in_x(e) for e in data)):
        return degree
    r, q = ufl.Coefficient(space), ufl.TestFunction(space)
    k = space.ufl_element().embedded_superdegree
    terms = [e * r * q for e in data] + ([coupling_value(G0, coupling, r) * q]
                                         if G0 is not None else [])
    est = [ufl.algorithms.estimate_total_polynomial_degree(
        ufl.algorithms.expand_derivatives(t)) for t in terms]
    if g == 1:
        return max(est + [3 * k + 1])
    # Curved cells (a gmsh mesh of order g > 1): the integrands are rational on them, no rule
    # is exact and UFL's per-form estimates differ — a converged solve on a hole meshed at
    # order 2 missed its value identity by 2e-5 (exit 3).  One rule: the affine one plus the
    # degree of det J, (g − 1)·tdim.
    tdim = space.mesh.topology.dim
    return max(est + [3 * k + 1, degree or 0]) + (g - 1) * tdim


def geometry_degree(space) -> int:
    """The polynomial degree of the cells' map (1: affine simplices, 2: curved gmsh order 2)."""
    return space.mesh.ufl_domain().ufl_coordinate_element().embedded_subdegree


def polynomial_in_x(expr) -> bool:
    """Is the UFL expression (or number) a polynomial in the coordinates — no elementary
    function, conditional, |·|, division by a non-constant or non-integer power?"""
    from ufl.classes import (
        Abs,
        BesselFunction,
        Conditional,
        Division,
        MathFunction,
        MaxValue,
        MinValue,
        Power,
        ScalarValue,
    )
    if not isinstance(expr, ufl.core.expr.Expr):
        return True
    for node in ufl.corealg.traversal.unique_pre_traversal(expr):
        if isinstance(node, (MathFunction, BesselFunction, Conditional, Abs, MaxValue,
                             MinValue)):
            return False
        if isinstance(node, Division) and not _constant(node.ufl_operands[1]):
            return False
        if isinstance(node, Power):
            e = node.ufl_operands[1]
            if not (isinstance(e, ScalarValue) and float(e) >= 0
                    and float(e) == int(float(e))):
                return False
    return True


def _constant(expr) -> bool:
    """Does ``expr`` involve no coordinate (numbers and Constants only)?"""
    from ufl.classes import SpatialCoordinate
    return not any(isinstance(n, SpatialCoordinate)
                   for n in ufl.corealg.traversal.unique_pre_traversal(expr))


def _polynomial(G0: Callable, coupling: str) -> bool:
    """Does some derivative c⁽ʲ⁾, j ≤ POLYNOMIAL_ORDER, of the coupling vanish at SAMPLES?
    Order by order, stopping at the first that vanishes (all eight orders of G/ρ took 0.7 s
    for G = κρ²/2, mfg).  A polynomial of higher degree counts as none: harmless, its forms
    then share one rule that integrates them exactly."""
    for j in range(1, POLYNOMIAL_ORDER + 1):
        d = _derivative(G0, coupling, j)
        if d is None:
            return False
        if all(abs(x) <= 1e-12 * max(1.0, *map(abs, d)) for x in d):
            return True
    return False


def structure(d: "StepData") -> tuple[bool | None, bool]:
    """(the HJB rows depend on ρ, the residual is quadratic in the unknowns) from the
    congestion G (:func:`coupling_shape`) and the Hamiltonian: H(x, p, ρ) adds the ρ
    dependence, a non-quadratic H (in p, or depending on ρ) the non-quadratic residual."""
    coupled, quadratic = coupling_shape(d.G0, d.coupling)
    h = d.H
    if h is None:
        return coupled, quadratic
    if h.uses_rho and coupled is not None:
        coupled = True
    return coupled, quadratic and h.quadratic


def mirrored(d: "StepData") -> bool:
    """Is the block of the HJB rows in the u columns the transpose of the FP rows' block in
    the ρ columns?  Yes when the rows are one Lagrangian's gradient up to ρ-only terms: always
    except the game coupling with an H that depends on ρ (the FP rows see ∂_ρ(ρ̄∂_pH), the
    HJB rows, ρ held fixed in H, do not)."""
    return not (d.H is not None and d.H.uses_rho and d.coupling == "mfg")


def row_dependencies(theta: float, coupled: bool) -> dict:
    """The templates each residual row of :func:`level_residuals` involves (the nonzero
    Jacobian blocks): the ρ–ρ blocks exist only where the coupling c varies with ρ
    (``coupled``), ρ^{k±1} enter the HJB rows only through midpoint means (θ < 1)."""
    mid = theta < 1.0
    rho = [U_PREV, U_CUR]
    last = [U_PREV]
    if coupled:
        rho += [RHO_CUR] + ([RHO_PREV, RHO_NEXT] if mid else [])
        last += [RHO_CUR] + ([RHO_PREV] if mid else [])
    return {"u": (RHO_CUR, RHO_NEXT, U_CUR), "rho": tuple(rho), "rho_last": tuple(last)}


def is_quadratic(d: "StepData") -> bool:
    """Is the residual quadratic in the unknowns (every Jacobian block affine in the
    states)?  The Lagrangian is cubic in (ρ, u) apart from the congestion, whose residual
    term is c(ρ̄): iff c is at most quadratic in ρ (e.g. G = κρ²/2 or κρ³/3 for mftc,
    G = κρ² for mfg, or no G), and H is a quadratic form in p free of ρ."""
    return structure(d)[1]


def rho_bar(rho_old, rho_new, theta: float):
    """ρ̄ = θρ^{n+1} + (1 − θ)ρⁿ."""
    if theta == 1.0:
        return rho_new
    return theta * rho_new + (1.0 - theta) * rho_old


def coupling_value(G: Callable, coupling: str, rho):
    """c(ρ) = G'(ρ) (mftc) or G(ρ)/ρ (mfg), from the one UFL definition of G."""
    r = ufl.variable(rho)
    if coupling == "mftc":
        return ufl.diff(G(r), r)
    if coupling == "mfg":
        return G(r) / r
    raise ValueError(f"unknown coupling {coupling!r}")


def _sources(d: StepData, t):
    s = d.sources(t) if d.sources is not None else {}
    return {k: s.get(k) for k in ("f_H", "b_H", "f_F", "b_F")}


def step_lagrangian(rho_old, rho_new, u, t, d: StepData, congestion: bool = True,
                    rho_H=None):
    """L_n(ρⁿ, ρ^{n+1}, uⁿ) at source time t (see module docstring); G only if ``congestion``;
    ``rho_H``: the density in H(x, ∇u, ρ) (default ρ̄)."""
    rb = rho_bar(rho_old, rho_new, d.theta)
    tau, eps = d.tau, d.eps
    if d.H is None:
        kinetic = d.V * rb - 0.5 * rb * ufl.inner(ufl.grad(u), ufl.grad(u))
    else:
        kinetic = d.V * rb - rb * d.H(ufl.grad(u), rb if rho_H is None else rho_H)
    L = (tau * kinetic * (d.dx if d.H is None else d.dxH)
         - u * (rho_new - rho_old) * d.dx
         - tau * eps * ufl.inner(ufl.grad(u), ufl.grad(rb)) * d.dx)
    if congestion and d.G is not None and not _zero(d.G(rb)):
        L += tau * d.G(rb) * d.dx
    for _, ds, kappa, g in d.robin:       # leak at rate κ paying g: ρ-flux κρ, ε∂_n u = κ(g − u)
        L += tau * kappa * rb * (g(t) - u) * ds
    s = _sources(d, t)
    if _present(s["f_H"]):
        L += tau * s["f_H"] * rb * d.dx
    if _present(s["b_H"]):
        L += tau * s["b_H"] * rb * ufl.ds
    if _present(s["f_F"]):
        L += tau * s["f_F"] * u * d.dx
    if _present(s["b_F"]):
        L += tau * s["b_F"] * u * ufl.ds
    return L


def _present(source) -> bool:
    """A source term to add: given and not identically zero (ε = 0 makes the Neumann datum
    b_H = ε∇u·n UFL's Zero, and Zero·ds is no integral: sigma = 0 with an exact solution
    crashed in the form)."""
    return source is not None and not _zero(source)


def _zero(expr) -> bool:
    return isinstance(expr, ufl.constantvalue.Zero) or (isinstance(expr, (int, float))
                                                       and expr == 0)


def coupling_residual(rho_old, rho_new, wrt, q, d: StepData):
    """τ∫c(ρ̄) ∂ρ̄/∂(wrt)[q]: the congestion part of the ρ-residual of one step."""
    if d.G is None or _zero(d.G(rho_bar(rho_old, rho_new, d.theta))):
        return None
    rb = rho_bar(rho_old, rho_new, d.theta)
    integrand = d.tau * coupling_value(d.G, d.coupling, rb) * ufl.derivative(rb, wrt, q)
    if _zero(integrand):     # a constant G (G = '1e-320'): c = G' = 0, and Zero*dx is no form
        return None
    return integrand * d.dx


def rho_residual(rho_old, rho_new, u, t, wrt, q, d: StepData):
    """∂L_n/∂(wrt)[q] with the congestion replaced by its coupling c (wrt = ρⁿ or ρ^{n+1});
    for the game coupling with H(x, p, ρ) the ρ in H is held fixed (module docstring)."""
    if d.H is not None and d.H.uses_rho and d.coupling == "mfg":
        frozen = ufl.Coefficient(wrt.ufl_function_space())
        F = ufl.derivative(step_lagrangian(rho_old, rho_new, u, t, d, congestion=False,
                                           rho_H=frozen), wrt, q)
        F = ufl.replace(ufl.algorithms.expand_derivatives(F),
                        {frozen: rho_bar(rho_old, rho_new, d.theta)})
    else:
        F = ufl.derivative(step_lagrangian(rho_old, rho_new, u, t, d, congestion=False),
                           wrt, q)
    c = coupling_residual(rho_old, rho_new, wrt, q, d)
    return F if c is None else F + c


def terminal(rho_N, d: StepData):
    """∫Φ ρ^N."""
    return d.Phi * rho_N * d.dx


def nonzero(form):
    """The form with derivatives expanded, or None if it vanishes identically."""
    f = ufl.algorithms.expand_derivatives(form)
    return None if f.empty() else f


def level_residuals(tm: dict, t_prev, t_cur, d: StepData) -> dict:
    """UFL residual rows of time level k on template coefficients ``tm``.

    ``tm`` maps RHO_PREV, RHO_CUR, RHO_NEXT, U_PREV, U_CUR to Functions holding ρ^{k−1}, ρ^k,
    ρ^{k+1}, u^{k−1}, u^k.  Rows (the equation of the field each is a derivative for):
      "u":        ∂L_k/∂u^k                       (FP step k → k+1),
      "rho":      ∂(L_{k−1} + L_k)/∂ρ^k + coupling (HJB step for u^{k−1}, 1 ≤ k < N),
      "rho_last": ∂(L_{N−1} + ∫Φρ^N)/∂ρ^N + coupling.
    The Jacobian blocks are their derivatives (:func:`row_dependencies` lists the nonzero
    ones).
    """
    return level_rows(tm, t_prev, t_cur, d, step_lagrangian, rho_residual, terminal)


def level_rows(tm: dict, t_prev, t_cur, d, step_lagrangian, rho_residual, terminal) -> dict:
    """The rows of :func:`level_residuals` from a formulation's step Lagrangian, HJB residual
    and terminal functional (this module's, or the K-population ones of forms/populations.py
    with their data ``d``)."""
    q = ufl.TestFunction(tm[RHO_CUR].function_space)
    rp, rc, rn, up, uc = (tm[k] for k in (RHO_PREV, RHO_CUR, RHO_NEXT, U_PREV, U_CUR))
    previous = rho_residual(rp, rc, up, t_prev, rc, q, d)
    return {
        "u": ufl.derivative(step_lagrangian(rc, rn, uc, t_cur, d), uc, q),
        "rho": previous + rho_residual(rc, rn, uc, t_cur, rc, q, d),
        "rho_last": previous + ufl.derivative(terminal(rc, d), rc, q),
    }


def level_functionals(tm: dict, t_cur, d: StepData) -> dict:
    """Scalar functionals of step k (on ρ^k, ρ^{k+1}, u^k) used for the cost and identities.

      "cost":  τ∫[(½|∇u^k|² + V)ρ̄ + G(ρ̄)]                 (direct evaluation of J),
      "value": τ∫[G(ρ̄) − ρ̄ c(ρ̄)] − τ∫f_H ρ̄ − τ∫_∂ b_H ρ̄   (value-identity correction),
      "u0":    ∂L_0/∂ρ⁰[ρ⁰] with G → c: the discrete ∫u(0)ρ_0 (only meaningful at k = 0),
      "mass":  ∫ρ^k.
    At a discrete stationary point J = Σ cost + ∫Φρ^N = u0 + Σ value exactly (discrete value
    identity, MODEL §2: J* = ∫u(0)ρ_0 + ∫∫(G(ρ) − ρG'(ρ))).
    """
    rc, rn, uc = tm[RHO_CUR], tm[RHO_NEXT], tm[U_CUR]
    rb = rho_bar(rc, rn, d.theta)
    if d.H is None:
        cost = d.tau * (0.5 * ufl.inner(ufl.grad(uc), ufl.grad(uc)) + d.V) * rb * d.dx
    else:                         # the running cost p·∂_pH − H of the control a = −∂_pH
        cost = d.tau * (d.H.lagrangian(ufl.grad(uc), rb) + d.V) * rb * d.dxH
    value = None
    if d.H is not None and d.H.uses_rho and d.coupling == "mftc":
        # the ρ in H differentiated by the HJB rows: f = −ρ̄H gives f − ρ̄f' = ρ̄²∂_ρH
        value = d.tau * rb ** 2 * d.H.rho_derivative(ufl.grad(uc), rb) * d.dxH
    if d.G is not None and not _zero(d.G(rb)):
        cost += d.tau * d.G(rb) * d.dx
        term = d.tau * (d.G(rb) - rb * coupling_value(d.G, d.coupling, rb)) * d.dx
        value = term if value is None else value + term
    leaks = {}
    for tag, ds, kappa, g in d.robin:     # mass through a leaky wall and its cost
        cost += d.tau * kappa * rb * g(t_cur) * ds
        leaks[f"leak:{tag}"] = d.tau * kappa * rb * ds
    s = _sources(d, t_cur)
    for key, meas in (("f_H", d.dx), ("b_H", ufl.ds)):
        if _present(s[key]):
            term = -d.tau * s[key] * rb * meas
            value = term if value is None else value + term
    return {"cost": cost, "value": value,
            "u0": rho_residual(rc, rn, uc, t_cur, rc, rc, d),
            "mass": rc * d.dx, "terminal": terminal(rc, d), **leaks}
