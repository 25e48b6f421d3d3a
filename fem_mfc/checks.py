"""The checks of a validated config on its mesh, before any solve: every formula parses and is
finite where the solver will evaluate it, the congestion and the Hamiltonian at probe values of
ρ and ∇u, the initial density's scale against the mesh.  ConfigError naming the key (exit 2);
collective over the mesh's communicator.  (Apart from :mod:`fem_mfc.expressions`, which parses,
so that the parser needs nothing from the density and Hamiltonian modules that use it.)"""
from __future__ import annotations

import ufl

from .errors import ConfigError
from .expressions import _short, check_finite_on_mesh, parameter_constants, parse


def _parse(mesh, text, key, **kw):
    """:func:`parse` with every number a Constant on ``mesh`` (``literals``): the checks'
    expressions compile once for all values, as the solve's forms do."""
    return parse(text, key, literals=mesh, **kw)


# ρ values at which G (and its derivative) is checked: ρ >= 0 in the solves, but ρ = 0 itself is
# left out because congestions such as rho*log(rho) are meant as their limit there.
RHO_PROBES = (1e-6, 1.0, 100.0)


def check_formulas(cfg: dict, mesh) -> None:
    """Check every formula of a validated config on ``mesh`` before the solve: parse errors,
    size limits, and NaN/inf at the DOF and quadrature points (V, Phi, qhd.S0, rho0.formula;
    G, dG/drho and, for coupling 'mfg', G/rho at rho in RHO_PROBES); the initial density's
    scale against the mesh (:func:`fem_mfc.density.check_scale`).  Raises ConfigError naming the
    key; collective over ``mesh.comm``."""
    from mpi4py import MPI

    import numpy as np
    pr = cfg["problem"]
    params = parameter_constants(pr.get("params", {}), mesh)   # compiled once for all values
    gdim = mesh.geometry.dim
    deg = cfg.get("discretisation", {}).get("degree", 1)
    x = ufl.SpatialCoordinate(mesh)
    exact = cfg.get("exact", {}).get("solution", "none") != "none"
    if not exact:
        for k in ("V", "Phi"):
            text = pr[k]
            check_finite_on_mesh(_parse(mesh, text, f"problem.{k}", x=x, gdim=gdim, params=params),
                                 f"problem.{k}", mesh, deg, text)
    _check_G(pr["G"], "problem.G", pr, mesh, deg)
    for i, t in enumerate(cfg.get("population", [])):    # [[population]] tables
        pre = f"population[{i}]"
        for k in ("V", "Phi"):
            check_finite_on_mesh(_parse(mesh, t[k], f"{pre}.{k}", x=x, gdim=gdim, params=params),
                                 f"{pre}.{k}", mesh, deg, t[k])
        _check_G(t["G"], f"{pre}.G", pr, mesh, deg)
        _check_rho0(t["rho0"], f"{pre}.rho0", mesh, deg, x, gdim, params)
    if pr.get("H", "quadratic") != "quadratic":
        check_hamiltonian(cfg, mesh, deg)
    for i, b in enumerate(cfg.get("boundary", [])):
        names = {"exit": ("cost",), "robin": ("cost",), "dirichlet": ("cost", "density")}
        for name in names.get(b["kind"], ()):
            key = f"boundary[{i}].{name}"
            for t in (0.0, pr["T"]):
                check_finite_on_mesh(_parse(mesh, b[name], key, x=x, gdim=gdim, params=params,
                                           variables={"t": t}), key, mesh, deg, b[name],
                                     what=f"at t = {t:g}")
    f = cfg["run"]["formulation"]
    if f == "qhd" and cfg.get("qhd", {}).get("signature") == "quantum":
        text = cfg["qhd"]["S0"]
        check_finite_on_mesh(_parse(mesh, text, "qhd.S0", x=x, gdim=gdim, params=params), "qhd.S0",
                             mesh, deg, text)
    r = cfg.get("rho0", {}) if "population" not in cfg else {}
    if not exact and r.get("kind") == "formula" and f not in ("classifier", "generative", "nls"):
        text = r["formula"]
        vals = check_finite_on_mesh(_parse(mesh, text, "rho0.formula", x=x, gdim=gdim,
                                           params=params), "rho0.formula", mesh, deg, text)
        vmax = mesh.comm.allreduce(float(np.max(vals)) if vals.size else -np.inf, op=MPI.MAX)
        if not vmax > 0:
            raise ConfigError("rho0.formula", "a density that is positive somewhere on the mesh",
                              f"{_short(text)} (largest value {vmax:.3g})")
    if not exact and r.get("kind") in ("gaussian", "mixture") \
            and f not in ("classifier", "generative", "nls"):
        from .density import check_scale
        check_scale(r, mesh)


def _check_G(g: str, key: str, pr: dict, mesh, deg: int) -> None:
    """G, dG/drho (and G/rho for mfg) finite at the mesh points for rho in RHO_PROBES."""
    import dolfinx
    params = parameter_constants(pr.get("params", {}), mesh)
    x = ufl.SpatialCoordinate(mesh)
    rho_c = dolfinx.fem.Constant(mesh, 1.0)
    rv = ufl.variable(rho_c)
    G = _parse(mesh, g, key, x=x, gdim=mesh.geometry.dim, variables={"rho": rv}, params=params)
    if isinstance(G, float) and G == 0.0:
        return
    G = ufl.as_ufl(G)
    exprs = {"G": G, "dG/drho": ufl.diff(G, rv)}
    if pr.get("coupling") == "mfg":
        exprs["G/rho"] = G / rv
    values = {}
    for rho in RHO_PROBES:
        rho_c.value = rho
        for name, e in exprs.items():
            values[rho, name] = check_finite_on_mesh(e, key, mesh, deg, g,
                                                     what=f"for rho = {rho:g} ({name})")
    if pr.get("coupling") == "mfg":
        # the game's cost per agent is G(rho)/rho: G(0) != 0 makes it infinite where the
        # density vanishes (G = 0.2*exp(rho) in a room with exits: the continuation stopped
        # at lambda = 0.13, DIVERGED_LINEAR_SOLVE, exit 3)
        from mpi4py import MPI

        import numpy as np
        one = np.abs(values[1.0, "G"]).max(initial=0.0)
        rho_c.value = 0.0
        zero = np.abs(check_finite_on_mesh(G, key, mesh, deg, g, what="for rho = 0 (G)"))
        scale = mesh.comm.allreduce(max(one, 1.0), op=MPI.MAX)
        g0 = mesh.comm.allreduce(zero.max(initial=0.0), op=MPI.MAX)
        if g0 > 1e-12 * scale:
            raise ConfigError(key, "a G with G(0) = 0 for coupling = 'mfg' (the cost per agent "
                              f"is G(rho)/rho; here |G(0)| reaches {g0:.3g})", _short(g))


def _check_rho0(r: dict, pre: str, mesh, deg, x, gdim, params) -> None:
    """A population's rho0: its formula finite and positive somewhere, a Gaussian's scale."""
    from mpi4py import MPI

    import numpy as np
    if r["kind"] == "formula":
        text = r["formula"]
        vals = check_finite_on_mesh(_parse(mesh, text, f"{pre}.formula", x=x, gdim=gdim,
                                          params=params), f"{pre}.formula", mesh, deg, text)
        vmax = mesh.comm.allreduce(float(np.max(vals)) if vals.size else -np.inf, op=MPI.MAX)
        if not vmax > 0:
            raise ConfigError(f"{pre}.formula", "a density that is positive somewhere on the "
                              "mesh", f"{_short(text)} (largest value {vmax:.3g})")
    elif r["kind"] in ("gaussian", "mixture"):
        from .density import check_scale
        from .populations import prefixed
        with prefixed(pre[: -len("rho0")]):
            check_scale(r, mesh)


# p = ∇u at which H, ∂H/∂p and ∂²H/∂p² are checked (p = 0 included: Newton's matrix must exist
# where ∇u vanishes, e.g. at the extrema of u)
P_PROBES = ((0.0, 0.0, 0.0), (0.7, -0.4, 0.3), (-3.0, 2.0, 1.0))


def _check_convex(hessians, gdim: int, key, mesh, text, where) -> None:
    """H convex in p (MODEL §2, General Hamiltonians): the smallest eigenvalue of H''(p) at
    the mesh points is >= 0 up to round-off.  A concave formula H such as -|p|**2/2 has no
    running cost L = H* and its stationary point is no optimal control; it ran to exit 0."""
    from mpi4py import MPI

    import numpy as np
    h = np.asarray(hessians, dtype=float)
    if h.size % (gdim * gdim):          # a Hessian that folded to a number: 0 (linear H)
        h = np.zeros((0, gdim, gdim))
    h = h.reshape(-1, gdim, gdim)
    eig = np.linalg.eigvalsh(0.5 * (h + h.transpose(0, 2, 1))) if len(h) else np.zeros((0, 1))
    low = mesh.comm.allreduce(float(eig.min()) if eig.size else np.inf, op=MPI.MIN)
    big = mesh.comm.allreduce(float(np.abs(eig).max()) if eig.size else 0.0, op=MPI.MAX)
    if low < -1e-10 * max(big, 1.0):
        raise ConfigError(key, "a Hamiltonian convex in p (the smallest eigenvalue of "
                          f"d2H/dp2 is {low:.3g} < 0 for {where})", text)


def check_hamiltonian(cfg: dict, mesh, deg: int = 1) -> None:
    """Check ``[problem] H`` on ``mesh``: it parses, H, ∂H/∂p and ∂²H/∂p² are finite at the
    mesh points for p in P_PROBES and ρ in RHO_PROBES, H is convex in p there (d2H/dp2
    positive semidefinite), and the weighted and anisotropic kinds are positive (c(x) > 0,
    A(x) positive on the probes).  ConfigError naming the key."""
    from mpi4py import MPI

    import dolfinx
    import numpy as np

    from . import hamiltonian as ham
    h = ham.from_config(cfg, mesh)
    if h is None:
        return
    text = cfg["problem"]["H"]
    gdim = mesh.geometry.dim
    key = {"weighted": "hamiltonian.weight", "anisotropic": "hamiltonian.A"}.get(h.kind,
                                                                            "problem.H")
    # the value a message quotes: the key's own (the matrix A as TOML, not Python's repr)
    shown = {"hamiltonian.weight": cfg["hamiltonian"]["weight"],
             "hamiltonian.A": cfg["hamiltonian"]["A"]}.get(key, _short(text))
    rho_c = dolfinx.fem.Constant(mesh, 1.0)
    # p as a cellwise-constant Function (a Constant alone has no mesh to evaluate on)
    pf = dolfinx.fem.Function(dolfinx.fem.functionspace(mesh, ("DG", 0, (gdim,))))
    for probe in P_PROBES:
        pf.x.array[:] = np.tile(np.array(probe[:gdim], dtype=float),
                                pf.x.array.size // gdim)
        pv = ufl.variable(pf)
        value = h(pv, rho_c)
        grad = ufl.diff(value, pv)
        one = ufl.conditional(ufl.ge(pf[0], -1.0e300), 1.0, 0.0)   # keeps the mesh in a
        exprs = {"H": value, "dH/dp": one * grad,                   # constant derivative
                 "d2H/dp2": one * ufl.diff(grad, pv)}
        for rho in (RHO_PROBES if h.uses_rho else (1.0,)):
            rho_c.value = rho
            where = f"p = {list(probe[:gdim])}" + (f", rho = {rho:g}" if h.uses_rho else "")
            for name, e in exprs.items():
                vals = check_finite_on_mesh(e, key, mesh, deg, text,
                                            what=f"for {where} ({name})")
                if name == "d2H/dp2":
                    _check_convex(vals, gdim, key, mesh, shown, where)
                if name == "H" and h.kind in ("weighted", "anisotropic") and any(probe):
                    low = mesh.comm.allreduce(float(vals.min()) if vals.size else np.inf,
                                              op=MPI.MIN)
                    if not low > 0:
                        raise ConfigError(key, "a positive definite weight (H > 0 for p != 0"
                                          f" at every mesh point; H = {low:.3g} for {where})",
                                          shown)


__all__ = ["check_formulas", "check_hamiltonian", "RHO_PROBES", "P_PROBES"]
