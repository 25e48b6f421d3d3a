"""The feedback-network control problem (MODEL §1–2) as a Python object.

  minimise J = ∫Φρ(T) + ∫∫(½|a|² + V)ρ + ∫∫G(ρ)
  s.t. ∂_tρ + ∇·(ρa) = εΔρ, ρ(0) = ρ_0, ε = σ²/2, on a mesh of Ω, depth T, ``steps`` layers.

:class:`ControlProblem` holds the data as UFL expressions (V, Φ in x; G a callable ρ ↦ UFL),
checks it, and normalises ρ_0 to mass 1.  :meth:`ControlProblem.from_config` builds it from the
validated config dict of :mod:`fem_mfc.config`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from mpi4py import MPI

import dolfinx
import ufl

from .density import density_ufl, initial_density, normalise
from .errors import ConfigError, warning
from .forms.hjb_fp import THETA, StepData, data_degree

ROUNDOFF = 1e-10
# A ρ0 whose values on two periodic sides differ by more than this fraction of its maximum is
# reported (its slave side is overwritten by the master side's values).
RHO0_PERIODIC_RTOL = 1e-6


class TimeGrid:
    """What every control problem derives from its T, steps, scheme and G: step, θ and the
    times of the levels (a mixin of the problem dataclasses)."""

    @property
    def tau(self) -> float:
        return self.T / self.steps

    @property
    def theta(self) -> float:
        return THETA[self.scheme]

    @property
    def congested(self) -> bool:
        return self.G is not None

    def rho_time(self, n: int) -> float:
        """Time of ρⁿ."""
        return n * self.tau

    def u_time(self, n: int) -> float:
        """Time approximated by uⁿ: t_n (backward Euler) or t_{n+½} (midpoint)."""
        return (n + 1.0 - self.theta) * self.tau

    def source_time(self, n: int) -> float:
        """Time at which the data of step n → n+1 are evaluated: t_n + θτ."""
        return (n + self.theta) * self.tau


def check_common(p) -> None:
    """The checks every control problem's data share (one line naming the key otherwise):
    horizon T, steps, degree, time scheme and coupling mode."""
    if not (isinstance(p.T, (int, float)) and math.isfinite(p.T) and p.T > 0):
        raise ConfigError("problem.T", "a positive number", p.T)
    if not (isinstance(p.steps, int) and p.steps > 0):
        raise ConfigError("problem.steps", "a positive integer", p.steps)
    if p.degree not in (1, 2, 3):
        raise ConfigError("discretisation.degree", "1, 2 or 3", p.degree)
    if p.scheme not in THETA:
        raise ConfigError("discretisation.scheme", "one of " + ", ".join(THETA), p.scheme)
    if p.coupling not in ("mftc", "mfg"):
        raise ConfigError("problem.coupling", "'mftc' or 'mfg'", p.coupling)


@dataclass
class Robin:
    """A leaky wall (forms/hjb_fp.py): on the facets tagged ``tag`` mass leaves at the rate
    κ = ``rate`` — the outward flux is κρ, i.e. (ε∇ρ + ρ∂_pH)·n = −κρ — paying the exit cost
    g = ``cost(t)`` (UFL in x and the time Constant t); the HJB gets the Robin condition
    ε∂_n u = κ(g − u).  One term τ∫_Γ κρ̄(g − u) of the discrete Lagrangian gives both."""

    tag: int
    rate: float
    cost: Callable = lambda t: 0.0


@dataclass
class Exit:
    """An absorbing boundary (solvers/exits.py): the facets tagged ``tag``, where ρ = 0 and
    u = g(x, t) = ``cost(t)`` (a UFL expression in x, or a number).  A Dirichlet boundary
    prescribes ρ = ``density(t)`` ≥ 0 instead of 0 (an entrance where it exceeds the inside)."""

    tag: int
    cost: Callable = lambda t: 0.0
    density: Optional[Callable] = None          # None: ρ = 0 (an exit)


@dataclass
class Periodic:
    """A periodic pair of sides (solvers/periodic.py): the dofs of the facets tagged ``tag``
    (the slave side) take the values at x − ``translation``, on the side tagged ``to``."""

    tag: int
    to: int
    translation: tuple


def interpolate(expr, V, name=None):
    """Interpolate a UFL expression (or number) in x into the space V."""
    f = dolfinx.fem.Function(V, name=name)
    if isinstance(expr, (int, float)):
        f.x.array[:] = float(expr)
    elif isinstance(expr, dolfinx.fem.Function):
        f.interpolate(expr)
    else:
        f.interpolate(dolfinx.fem.Expression(expr, V.element.interpolation_points()))
    f.x.scatter_forward()
    return f


@dataclass
class ControlProblem(TimeGrid):
    """Data of the single-population control problem; see the module docstring."""

    mesh: Any
    T: float
    sigma: float
    steps: int
    rho0: Any                                   # dolfinx Function (or UFL expression in x)
    degree: int = 1
    scheme: str = "backward-euler"
    V: Any = 0.0
    Phi: Any = 0.0
    G: Optional[Callable] = None
    coupling: str = "mftc"
    exact: Any = None
    cell_tags: Any = None
    facet_tags: Any = None
    coarse: Optional[Callable] = None           # () -> the problem on a coarser grid, or None
    stabilisation: str = "none"                 # "none" (Galerkin) or "monotone" (P1, BE)
    hamiltonian: Any = None                     # fem_mfc.hamiltonian.Hamiltonian; None: ½|p|²
    exits: list = field(default_factory=list)   # [Exit]: absorbing boundaries (by facet tag)
    robins: list = field(default_factory=list)  # [Robin]: leaky walls (by facet tag)
    periodic: list = field(default_factory=list)  # [Periodic]: periodic pairs of sides
    space: Any = field(init=False, default=None)

    def __post_init__(self):
        check_common(self)
        if not (isinstance(self.sigma, (int, float)) and math.isfinite(self.sigma)
                and self.sigma >= 0):
            raise ConfigError("problem.sigma", "a non-negative number", self.sigma)
        if self.stabilisation not in ("none", "monotone"):
            raise ConfigError("discretisation.stabilisation", "'none' or 'monotone'",
                              self.stabilisation)
        if self.periodic and self.exits:
            raise ConfigError("boundary.kind", "'no-flux' or 'robin' beside 'periodic' sides "
                              "(exits and Dirichlet sides with periodic ones are not "
                              "supported)", "exit")
        self.T, self.sigma = float(self.T), float(self.sigma)
        self.space = dolfinx.fem.functionspace(self.mesh, ("Lagrange", self.degree))
        self.x = ufl.SpatialCoordinate(self.mesh)
        self.V = _as_ufl(self.V, self.mesh)
        self.Phi = _as_ufl(self.Phi, self.mesh)
        self.rho0 = self._checked_rho0(self.rho0)
        if self.robins:
            self._check_robin_tags()

    # -- derived quantities -------------------------------------------------------------
    @property
    def eps(self) -> float:
        return 0.5 * self.sigma ** 2

    def step_data(self) -> StepData:
        """The data of the per-step Lagrangian density (forms/hjb_fp.py)."""
        # τ and ε as Constants: one compiled form serves every step count and noise level
        return StepData(tau=dolfinx.fem.Constant(self.mesh, self.tau),
                        eps=dolfinx.fem.Constant(self.mesh, self.eps), theta=self.theta,
                        V=self.V, Phi=self.Phi, G0=self.G, coupling=self.coupling,
                        sources=getattr(self.exact, "sources", None),
                        scale=dolfinx.fem.Constant(self.mesh, 1.0), H=self.hamiltonian,
                        quadrature_degree=(None if self.hamiltonian is None
                                           else 2 * self.degree + 2),
                        # with sources (an exact solution's), J and the value identity
                        # differ by them: its data keep UFL's per-form rules
                        congestion_degree=data_degree(
                            self.G, self.coupling, self.space,
                            (self.Phi, self.V) if self.exact is None else ()),
                        robin=self.robin_terms())

    def _check_robin_tags(self):
        """Every leaky wall names facets of the mesh, as an exit must (collective; one line
        otherwise): a wall on a tag the mesh lacks leaked nothing and the run passed."""
        from .mesh import require_facet_tags
        require_facet_tags(self.mesh, self.facet_tags, [r.tag for r in self.robins])

    def robin_terms(self) -> tuple:
        """((tag, ds(tag), κ, g), …) of the leaky walls (forms/hjb_fp.py)."""
        if not self.robins:
            return ()
        if self.facet_tags is None:
            raise ConfigError("boundary.tag", "a mesh with tagged boundary facets (gmsh "
                              "physical groups, or the sides of an interval/rectangle/box)",
                              None)
        ds = ufl.Measure("ds", domain=self.mesh, subdomain_data=self.facet_tags)
        return tuple((r.tag, ds(r.tag), dolfinx.fem.Constant(self.mesh, float(r.rate)),
                      r.cost) for r in self.robins)

    def monotone_advice(self) -> str | None:
        """What to set for the positivity-preserving scheme if it can solve this Galerkin
        problem (P1, quadratic H, no manufactured sources; backward Euler; any sides),
        else None — advice for a density gone negative."""
        if (self.stabilisation != "none" or self.degree != 1 or self.hamiltonian is not None
                or getattr(self.exact, "sources", None) is not None):
            return None
        return ("[discretisation] stabilisation = \"monotone\""
                + (", scheme = \"backward-euler\"" if self.theta != 1.0 else ""))

    def potential_gauge(self) -> float:
        """(min V + max V)/2 at the nodes: the constant the Cole–Hopf paths take out of V
        (and give back to u as c·(T − t)), so that their answer does not depend on V's
        additive constant — their θ-steps are not exact for a constant potential."""
        if isinstance(self.V, (int, float)):
            return float(self.V)
        if getattr(self, "_gauge", None) is None:
            f = interpolate(self.V, self.space)
            n = self.space.dofmap.index_map.size_local
            a = f.x.array[:n]
            comm = self.mesh.comm
            lo = comm.allreduce(float(a.min()) if n else math.inf, op=MPI.MIN)
            hi = comm.allreduce(float(a.max()) if n else -math.inf, op=MPI.MAX)
            self._gauge = 0.5 * (lo + hi)
        return self._gauge

    def periodic_map(self):
        """The periodic map R of the space (solvers/periodic.py), built once; None without
        periodic sides."""
        if not self.periodic:
            return None
        if getattr(self, "_periodic_map", None) is None:
            from .solvers.periodic import PeriodicMap
            self._periodic_map = PeriodicMap(self.space, self.facet_tags, self.periodic)
        return self._periodic_map

    # -- checks ------------------------------------------------------------------------
    def _checked_rho0(self, rho0):
        """ρ_0 in the solve space: non-negative at the dofs (to round-off), mass 1 (and
        periodic: the slave dofs take their masters' values)."""
        f = interpolate(rho0, self.space, name="rho0")
        if self.periodic:
            pm = self.periodic_map()
            jump = pm.max_mismatch(f)
            top = self.mesh.comm.allreduce(float(abs(f.x.array).max(initial=0.0)), op=MPI.MAX)
            if jump > RHO0_PERIODIC_RTOL * top:
                warning(f"rho0 is not periodic: its values on the periodic sides differ by up "
                        f"to {jump / top:.2g} of its maximum; the side tagged "
                        f"{', '.join(str(p.tag) for p in self.periodic)} takes the values of "
                        "the opposite one (a Gaussian ρ0 is wrapped around the period)")
            pm.periodise(f)
        return normalise(f, "rho0", tol=ROUNDOFF)

    # -- construction from the config --------------------------------------------------
    @classmethod
    def from_config(cls, cfg: dict, mesh, cell_tags=None, facet_tags=None) -> "ControlProblem":
        """Build the problem from the validated config dict (sections problem, rho0,
        discretisation, exact).  With ``exact.solution`` set, V, Φ, G and ρ_0 are those of the
        exact solution (see :mod:`fem_mfc.exact`)."""
        from . import exact as exact_mod
        from . import hamiltonian as ham
        from .expressions import parameter_constants, parse, vanishes

        pr, disc = cfg["problem"], cfg["discretisation"]
        params = pr.get("params", {})
        gdim = mesh.geometry.dim
        x = ufl.SpatialCoordinate(mesh)
        held = parameter_constants(params, mesh)      # V, Φ and G: one compiled form for

        def formula(key, text, **kw):                 # every value of the parameters
            return parse(text, key, x=x, gdim=gdim, params=held, literals=mesh, **kw)

        G = None
        if not vanishes(pr["G"], "problem.G", "rho", x=x, gdim=gdim, params=params):
            text = pr["G"]

            def G(rho, _text=text):
                return formula("problem.G", _text, variables={"rho": rho})
        common = dict(mesh=mesh, T=pr["T"], sigma=pr["sigma"], steps=pr["steps"],
                      degree=disc["degree"], scheme=disc["scheme"], coupling=pr["coupling"],
                      cell_tags=cell_tags, facet_tags=facet_tags,
                      coarse=coarse_factory(cfg, mesh.comm),
                      stabilisation=disc.get("stabilisation", "none"),
                      hamiltonian=ham.from_config(cfg, mesh),
                      exits=exits_from_config(cfg, x, gdim, held, mesh),
                      robins=robins_from_config(cfg, x, gdim, held, mesh),
                      periodic=periodic_from_config(cfg))
        kind = cfg.get("exact", {}).get("solution", "none")
        if kind != "none":
            ex = exact_mod.from_config(kind, cfg, mesh, G, common["hamiltonian"])
            return cls(rho0=ex.rho(0.0), V=ex.V, Phi=ex.Phi, G=ex.G, exact=ex, **common)
        if cfg["rho0"]["kind"] == "file":
            rho0 = initial_density(cfg["rho0"], dolfinx.fem.functionspace(
                mesh, ("Lagrange", disc["degree"])), params)
        else:
            rho0 = density_ufl(cfg["rho0"], mesh, held, periods={
                i: abs(v) for p in common["periodic"] for i, v in enumerate(p.translation)
                if v})
        return cls(rho0=rho0,
                   V=formula("problem.V", pr["V"]), Phi=formula("problem.Phi", pr["Phi"]),
                   G=G, **common)


def exits_from_config(cfg: dict, x, gdim: int, params: dict, mesh) -> list:
    """The [[boundary]] tables of kind 'exit' and 'dirichlet' as :class:`Exit` objects."""
    from .expressions import parse
    out = []
    for i, b in enumerate(cfg.get("boundary", [])):
        if b["kind"] not in ("exit", "dirichlet"):
            continue
        tc = dolfinx.fem.Constant(mesh, 0.0)

        def formula(t, _text, _key, _tc=tc):
            # t as a Constant set to the time asked for (the caller interpolates the result
            # at once): one compiled interpolation for every step, not one per step
            _tc.value = float(t)
            return parse(_text, _key, x=x, gdim=gdim, params=params, variables={"t": _tc},
                         literals=mesh)
        def cost(t, _t=b["cost"], _k=f"boundary[{i}].cost"):
            return formula(t, _t, _k)
        density = None
        if b["kind"] == "dirichlet":
            def density(t, _t=b["density"], _k=f"boundary[{i}].density"):
                return formula(t, _t, _k)
        out.append(Exit(int(b["tag"]), cost, density))
    return out


def periodic_from_config(cfg: dict) -> list:
    """The [[boundary]] tables of kind 'periodic' as :class:`Periodic` objects (the sides of
    an interval/rectangle/box: tag 2i+1 at x_i = lower[i], 2i+2 at x_i = upper[i]; the config
    checks that ``to`` is the opposite side)."""
    out = []
    m = cfg["mesh"]
    for b in cfg.get("boundary", []):
        if b["kind"] != "periodic":
            continue
        t, to = int(b["tag"]), int(b["to"])
        i = (t - 1) // 2
        shift = [0.0] * len(m["lower"])
        shift[i] = (m["upper"][i] - m["lower"][i]) * (1.0 if t % 2 == 0 else -1.0)
        out.append(Periodic(t, to, tuple(shift)))
    return out


def robins_from_config(cfg: dict, x, gdim: int, params: dict, mesh) -> list:
    """The [[boundary]] tables of kind 'robin' as :class:`Robin` objects."""
    from .expressions import parse
    out = []
    for i, b in enumerate(cfg.get("boundary", [])):
        if b["kind"] != "robin":
            continue
        text = b["cost"]

        def cost(t, _text=text, _key=f"boundary[{i}].cost"):
            return parse(_text, _key, x=x, gdim=gdim, params=params, variables={"t": t},
                         literals=mesh)
        out.append(Robin(int(b["tag"]), float(b["rate"]), cost))
    return out


def coarse_config(cfg: dict) -> dict | None:
    """The config of the next coarser grid for nested iteration: half the cells per axis (or
    twice h) and half the steps (rounded up); None where there is none (a mesh file, a mesh
    that would have fewer than 4 cells per axis, fewer than 4 steps)."""
    import copy
    m = cfg["mesh"]
    if m["kind"] == "file" or cfg["problem"]["steps"] < 4:
        return None
    if m["kind"] in ("interval", "rectangle", "box") and m["cells"] * 2 ** m["refine"] < 8:
        return None
    c = copy.deepcopy(cfg)
    c["mesh"]["refine"] = m["refine"] - 1
    c["problem"]["steps"] = (cfg["problem"]["steps"] + 1) // 2
    return c


def coarse_factory(cfg: dict, comm):
    """A callable building the problem of :func:`coarse_config` (None if there is none)."""
    c = coarse_config(cfg)
    if c is None:
        return None

    def build():
        from . import mesh as meshmod
        md = meshmod.build(c["mesh"], comm)
        return ControlProblem.from_config(c, md.mesh, md.cell_tags, md.facet_tags)
    return build


def _as_ufl(expr, mesh):
    if isinstance(expr, (int, float)):
        return dolfinx.fem.Constant(mesh, float(expr))
    return expr
