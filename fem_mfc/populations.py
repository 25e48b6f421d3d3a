"""Several interacting populations (``[[population]]`` tables; an extension beyond the paper).

:class:`PopulationProblem` holds K populations — each with its own initial density ρ_{k,0}
(mass m_k), terminal cost Φ_k, running potential V_k, noise σ_k and self-congestion G_k — and
the coupling matrix C of their interaction; the equations are those of
:mod:`fem_mfc.forms.populations` (MODEL §2b).  The unknowns of a time level are K-valued
Functions of a blocked Lagrange space whose component k is population k, so the space-time
Newton solver, its LU and sweep paths and the continuation run unchanged on the joint system.

The object offers the interface of :class:`fem_mfc.problem.ControlProblem` that the Newton
path uses (mesh, space, steps, times, ``step_data``, ``rho0``, ``Phi``) and says what it does
not support: no-flux walls only (no exits, Dirichlet, leaky or periodic sides), no
stabilisation, the quadratic Hamiltonian, Newton from the trivial guess (:func:`refusal`).
:class:`ManufacturedPopulations` is a smooth exact solution of the coupled system with
sources (the convergence tests).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from mpi4py import MPI

import dolfinx
import numpy as np
import ufl

from .errors import ConfigError
from .forms.hjb_fp import StepData, congestion_degree
from .forms.populations import PopulationsData
from .problem import TimeGrid, check_common

ROUNDOFF = 1e-10


@dataclass
class Population:
    """One population: ρ_0 (UFL in x, a number or a scalar Function; normalised to ``mass``),
    Φ, V (UFL in x or numbers), σ ≥ 0, self-congestion G (ρ_k ↦ UFL, None: none) and, for
    manufactured solutions, ``sources(t)`` (forms/hjb_fp.py)."""

    rho0: Any
    Phi: Any = 0.0
    V: Any = 0.0
    sigma: float = 0.5
    G: Optional[Callable] = None
    mass: float = 1.0
    name: str = ""
    sources: Optional[Callable] = None

    @property
    def eps(self) -> float:
        return 0.5 * self.sigma ** 2


def _as_ufl(expr, mesh):
    if isinstance(expr, (int, float)):
        return dolfinx.fem.Constant(mesh, float(expr))
    return expr


@dataclass
class PopulationProblem(TimeGrid):
    """K populations on one mesh, horizon T, ``steps`` time steps (see the module docstring).
    ``interaction``: the K × K matrix C (None: no interaction); for ``coupling = "mftc"`` it
    must be symmetric."""

    mesh: Any
    T: float
    steps: int
    populations: list
    interaction: Optional[list] = None
    degree: int = 1
    scheme: str = "backward-euler"
    coupling: str = "mftc"
    exact: Any = None
    cell_tags: Any = None
    facet_tags: Any = None
    # what the solvers ask every problem: this one has none of these
    stabilisation: str = "none"
    hamiltonian: Any = None
    exits: list = field(default_factory=list)
    robins: list = field(default_factory=list)
    coarse: Any = None
    space: Any = field(init=False, default=None)

    def __post_init__(self):
        K = len(self.populations)
        if K < 1:
            raise ConfigError("population", "at least one [[population]] table", K)
        check_common(self)
        self.interaction = check_interaction(self.interaction, K, self.coupling)
        for i, p in enumerate(self.populations):
            if not p.name:
                p.name = f"pop{i}"
            if not (isinstance(p.sigma, (int, float)) and math.isfinite(p.sigma)
                    and p.sigma >= 0):
                raise ConfigError(f"population[{i}].sigma", "a non-negative number", p.sigma)
            if not (isinstance(p.mass, (int, float)) and math.isfinite(p.mass) and p.mass > 0):
                raise ConfigError(f"population[{i}].mass", "a positive number", p.mass)
        names = [p.name for p in self.populations]
        if len(set(names)) != K:
            raise ConfigError("population.name", "a different name for every population",
                              names)
        self.T = float(self.T)
        self.space = dolfinx.fem.functionspace(self.mesh, ("Lagrange", self.degree, (K,)))
        self.scalar_space = dolfinx.fem.functionspace(self.mesh, ("Lagrange", self.degree))
        # a blocked space stores component k of node i at K·i + k (owned nodes, then ghosts,
        # in the node order of the scalar space of the same degree)
        im = self.space.dofmap.index_map
        nodes = np.arange(im.size_local + im.num_ghosts)
        self.dofs = [K * nodes + k for k in range(K)]
        self.x = ufl.SpatialCoordinate(self.mesh)
        for p in self.populations:
            p.V, p.Phi = _as_ufl(p.V, self.mesh), _as_ufl(p.Phi, self.mesh)
        self.Phi = ufl.as_vector([p.Phi for p in self.populations])
        self.rho0 = self._checked_rho0()

    # -- derived quantities --------------------------------------------------------------
    @property
    def K(self) -> int:
        return len(self.populations)

    @property
    def names(self) -> list:
        return [p.name for p in self.populations]

    @property
    def masses(self) -> list:
        return [float(p.mass) for p in self.populations]

    @property
    def G(self):
        """Any congestion or interaction (the solvers' ``problem.G is not None``)."""
        if any(p.G is not None for p in self.populations) or any(
                v != 0.0 for row in self.interaction for v in row):
            return True
        return None

    def step_data(self) -> PopulationsData:
        tau = dolfinx.fem.Constant(self.mesh, self.tau)
        scale = dolfinx.fem.Constant(self.mesh, 1.0)
        degrees = [q for q in (congestion_degree(p.G, self.coupling, self.scalar_space)
                               for p in self.populations) if q is not None]
        q = max(degrees) if degrees else None       # one rule for all (StepData.dx)
        steps = tuple(StepData(tau=tau, eps=dolfinx.fem.Constant(self.mesh, p.eps),
                               theta=self.theta, V=p.V, Phi=p.Phi, G0=p.G,
                               coupling=self.coupling, sources=p.sources, scale=scale,
                               congestion_degree=q)
                      for p in self.populations)
        return PopulationsData(steps=steps, C=tuple(tuple(r) for r in self.interaction),
                               coupling=self.coupling, scale=scale)

    # -- components ----------------------------------------------------------------------
    def component(self, f, k: int, out=None):
        """Population k of a K-valued Function as a Function of ``scalar_space``."""
        if out is None:
            out = dolfinx.fem.Function(self.scalar_space)
        out.x.array[:] = f.x.array[self.dofs[k]]
        return out

    def _checked_rho0(self):
        from .density import normalise
        from .problem import interpolate
        rho0 = dolfinx.fem.Function(self.space, name="rho0")
        for k, p in enumerate(self.populations):
            key = f"population[{k}].rho0"
            r = interpolate(p.rho0, self.scalar_space)
            normalise(r, key, tol=ROUNDOFF)
            rho0.x.array[self.dofs[k]] = p.mass * r.x.array
        rho0.x.scatter_forward()
        return rho0


def check_interaction(C, K: int, coupling: str, key: str = "population.interaction"):
    """C as K lists of K floats (None: zeros); ConfigError unless finite, K × K, and
    symmetric for 'mftc' (the planner's G = ½ρᵀCρ)."""
    if C is None:
        return [[0.0] * K for _ in range(K)]
    rows = [list(r) for r in C] if isinstance(C, (list, tuple, np.ndarray)) else None
    if rows is None or len(rows) != K or any(len(r) != K for r in rows) or not all(
            isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)
            and math.isfinite(v) for r in rows for v in r):
        raise ConfigError(key, f"a {K} x {K} matrix of finite numbers (one row of {K} per "
                          "population)", C)
    rows = [[float(v) for v in r] for r in rows]
    if coupling == "mftc":
        for k in range(K):
            for j in range(k):
                if rows[k][j] != rows[j][k]:
                    raise ConfigError(key, "a symmetric matrix for coupling 'mftc' (C[k][l] = "
                                      "C[l][k]: one cost 1/2 rho.C rho for all; coupling "
                                      f"'mfg' allows a non-symmetric game), C[{k}][{j}] = "
                                      f"{rows[k][j]:g} but C[{j}][{k}] = {rows[j][k]:g}",
                                      rows)
    return rows


# -- from the config ------------------------------------------------------------------------
def from_config(cfg: dict, mesh, cell_tags=None, facet_tags=None) -> PopulationProblem:
    """The problem of a validated config with ``[[population]]`` tables."""
    from .density import density_ufl
    from .expressions import parameter_constants, parse, vanishes
    pr, disc = cfg["problem"], cfg["discretisation"]
    params = pr.get("params", {})
    held = parameter_constants(params, mesh)    # one compiled form for every value
    gdim = mesh.geometry.dim
    x = ufl.SpatialCoordinate(mesh)
    pops = []
    for i, t in enumerate(cfg["population"]):
        pre = f"population[{i}]"

        def formula(k, text, _pre=pre, **kw):
            return parse(text, f"{_pre}.{k}", x=x, gdim=gdim, params=held, literals=mesh, **kw)
        G = None
        if not vanishes(t["G"], f"{pre}.G", "rho", x=x, gdim=gdim, params=params):
            def G(rho, _text=t["G"], _f=formula):       # (the zero test with the numbers:
                return _f("G", _text, variables={"rho": rho})   # c*rho**2 with c = 0)
        with prefixed(f"{pre}."):
            rho0 = density_ufl(t["rho0"], mesh, held)
        pops.append(Population(rho0=rho0, Phi=formula("Phi", t["Phi"]),
                               V=formula("V", t["V"]), sigma=t["sigma"], G=G,
                               mass=t["mass"], name=t["name"]))
    C = interaction_matrix(cfg)
    return PopulationProblem(mesh=mesh, T=pr["T"], steps=pr["steps"], populations=pops,
                             interaction=C, degree=disc["degree"], scheme=disc["scheme"],
                             coupling=pr["coupling"], cell_tags=cell_tags,
                             facet_tags=facet_tags)


def interaction_matrix(cfg: dict) -> list:
    """C from the rows ``interaction`` of the [[population]] tables (an empty row: zeros)."""
    tables = cfg["population"]
    K = len(tables)
    return [list(t["interaction"]) or [0.0] * K for t in tables]


class prefixed:
    """Re-raise a ConfigError of the block with ``prefix`` before its key (``rho0.std`` →
    ``population[1].rho0.std``)."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if kind is not None and issubclass(kind, ConfigError) and not e.key.startswith(
                self.prefix):
            raise ConfigError(self.prefix + e.key, e.expected, e.got) from None
        return False


# -- a manufactured solution ------------------------------------------------------------------
class ManufacturedPopulations:
    """Smooth exact fields of K coupled populations on a box: population k has the fields of
    :class:`fem_mfc.exact.Manufactured` with ``variant = k`` (a different density and value
    function for each), and its HJB source subtracts the coupling
    c_k(ρ) = g_k(ρ_k) + Σ_l Ĉ_kl ρ_l of the exact densities, so that the exact fields solve the
    coupled system (Ĉ: :meth:`PopulationsData.c_matrix`).  ``time``/``space`` as there
    ("quadratic" + P2: no spatial error; "affine" + midpoint: no time error)."""

    def __init__(self, mesh, T, sigmas, interaction, Gs=None, coupling="mftc", time="affine",
                 space="trig"):
        from .exact import Manufactured
        K = len(sigmas)
        self.K, self.T, self.coupling = K, float(T), coupling
        self.C = check_interaction(interaction, K, coupling)
        self.Gs = list(Gs) if Gs is not None else [None] * K
        self.parts = [Manufactured(mesh, T, s, None, coupling, time=time, space=space,
                                   variant=k) for k, s in enumerate(sigmas)]
        self.sigmas = list(sigmas)
        self.Phi = ufl.as_vector([p.Phi for p in self.parts])

    def rho(self, t):
        return ufl.as_vector([p.rho(t) for p in self.parts])

    def u(self, t):
        return ufl.as_vector([p.u(t) for p in self.parts])

    def _c(self, k, rho):
        from .forms.hjb_fp import coupling_value
        mfg = self.coupling == "mfg"
        Ck = [self.C[k][m] if mfg else 0.5 * (self.C[k][m] + self.C[m][k])
              for m in range(self.K)]
        c = sum(Ck[m] * rho[m] for m in range(self.K))
        if self.Gs[k] is not None:
            c = c + coupling_value(self.Gs[k], self.coupling, rho[k])
        return c

    def sources_of(self, k: int):
        def sources(t):
            s = self.parts[k].sources(t)
            rho = [p.rho(t) for p in self.parts]
            return dict(s, f_H=s["f_H"] - self._c(k, rho))
        return sources

    def problem(self, mesh, steps, degree=1, scheme="crank-nicolson", **kw):
        """The :class:`PopulationProblem` this solution solves."""
        pops = [Population(rho0=p.rho(0.0), Phi=p.Phi, V=p.V, sigma=s, G=G,
                           mass=1.0, sources=self.sources_of(k), name=f"pop{k}")
                for k, (p, s, G) in enumerate(zip(self.parts, self.sigmas, self.Gs))]
        return PopulationProblem(mesh=mesh, T=self.T, steps=steps, populations=pops,
                                 interaction=self.C, degree=degree, scheme=scheme,
                                 coupling=self.coupling, exact=self, **kw)


def errors(problem: PopulationProblem, result) -> dict:
    """{"u": max_n ‖uⁿ − u(t_u(n))‖, "rho": max_n ‖ρⁿ − ρ(t_n)‖} over all populations (L²
    of the K-valued error) against ``problem.exact``."""
    ex, V = problem.exact, problem.space
    f = dolfinx.fem.Function(V)
    t = dolfinx.fem.Constant(problem.mesh, 0.0)
    forms = {k: dolfinx.fem.form(ufl.inner(f - getattr(ex, k)(t), f - getattr(ex, k)(t))
                                 * ufl.dx) for k in ("u", "rho")}
    comm = problem.mesh.comm

    def l2(kind, g, time):
        f.x.array[:] = g.x.array
        t.value = time
        return math.sqrt(comm.allreduce(dolfinx.fem.assemble_scalar(forms[kind]), op=MPI.SUM))
    return {"u": max(l2("u", g, problem.u_time(n)) for n, g in enumerate(result.u)),
            "rho": max(l2("rho", g, problem.rho_time(n)) for n, g in enumerate(result.rho))}


__all__ = ["Population", "PopulationProblem", "ManufacturedPopulations", "from_config",
           "check_interaction", "errors"]
