"""Initial densities ρ_0 from the ``[rho0]`` config section: checked and normalised.

Kinds: ``gaussian`` (mean, std), ``mixture`` (means, stds, weights), ``formula`` (a user formula
in x, unnormalised), ``file`` (an adios4dolfinx checkpoint holding a function named ``rho0``).
The result is a non-negative dolfinx Function with ∫ρ_0 = 1; a negative or zero-mass density
raises :class:`~fem_mfc.errors.ConfigError` naming the key.
"""
from __future__ import annotations

import math

from mpi4py import MPI

import numpy as np
import ufl

from .errors import ConfigError
from .expressions import parse


def gaussian_ufl(x, mean, std, periods: dict | None = None, std_value: float | None = None):
    """Isotropic normal density N(mean, std² I) as a UFL expression in x.

    ``periods`` {direction i: period L_i} wraps it along the periodic directions of the
    domain (the density of x mod L_i, a function that is periodic itself):
    Σ_k exp(−(y − kL)²/2s²), y = x_i − m_i, over the images |k| ≤ ⌈9s/L⌉ + 1 for s ≤ L/4
    (the next ones are below e^−40 of the peak); for wider ones its Poisson sum
    (√(2π)s/L)(1 + 2Σ_{n≥1} e^{−2π²n²s²/L²} cos(2πny/L)), whose terms fall below 1e-18 by
    n = ⌈1.45 L/s⌉ ≤ 6.  ``std_value`` is the std as a number (``std`` may be a Constant)."""
    d = len(mean)
    periods = periods or {}

    def factor(i):
        y = x[i] - mean[i]
        L = periods.get(i)
        if L is None:
            return ufl.exp(-y ** 2 / (2 * std ** 2))
        s = float(std) if std_value is None else float(std_value)
        if s <= L / 4:
            K = math.ceil(9 * s / L) + 1
            return sum(ufl.exp(-(y - k * L) ** 2 / (2 * std ** 2)) for k in range(-K, K + 1))
        N = math.ceil(1.45 * L / s)
        series = 1 + 2 * sum(ufl.exp(-2 * math.pi ** 2 * n ** 2 * std ** 2 / L ** 2)
                             * ufl.cos(2 * math.pi * n * y / L) for n in range(1, N + 1))
        return math.sqrt(2 * math.pi) * std / L * series

    prod = factor(0)
    for i in range(1, d):
        prod = prod * factor(i)
    return prod / (2 * math.pi * std ** 2) ** (d / 2)


def gaussian_mean(rcfg: dict, gdim: int) -> list:
    """The configured Gaussian mean, the origin when ``rho0.mean`` is empty."""
    mean = list(rcfg["mean"]) or [0.0] * gdim
    if len(mean) != gdim:
        raise ConfigError("rho0.mean", f"an array of {gdim} numbers (the mesh is {gdim}D)",
                          rcfg["mean"])
    return mean


# A Gaussian narrower than h/STD_MIN_PER_H is not resolved by the mesh (its interpolant is a
# spike at one vertex or zero); one wider than STD_MAX_PER_DIAMETER domain diameters is a
# constant (and its normalisation overflows for huge stds).
STD_MIN_PER_H = 10.0
STD_MAX_PER_DIAMETER = 100.0


def mesh_scales(mesh) -> tuple[float, float]:
    """(largest cell diameter h, diameter of the bounding box) of ``mesh``, global."""
    tdim = mesh.topology.dim
    n = mesh.topology.index_map(tdim).size_local
    hloc = float(mesh.h(tdim, np.arange(n, dtype=np.int32)).max()) if n else 0.0
    xs = mesh.geometry.x[:, :mesh.geometry.dim]
    lo = xs.min(axis=0) if xs.size else np.full(mesh.geometry.dim, np.inf)
    hi = xs.max(axis=0) if xs.size else np.full(mesh.geometry.dim, -np.inf)
    lo = np.min(mesh.comm.allgather(lo), axis=0)       # elementwise over ranks
    hi = np.max(mesh.comm.allgather(hi), axis=0)
    return mesh.comm.allreduce(hloc, op=MPI.MAX), float(np.linalg.norm(hi - lo))


def check_scale(rcfg: dict, mesh) -> None:
    """Refuse a Gaussian (or mixture component) whose std is far below the mesh size h or far
    above the domain: ConfigError naming ``rho0.std`` (``rho0.stds``) with the numbers."""
    kind = rcfg.get("kind")
    if kind == "gaussian":
        stds = [("rho0.std", rcfg["std"])]
    elif kind == "mixture":
        stds = [(f"rho0.stds[{i}]", s) for i, s in enumerate(rcfg.get("stds", []))]
    else:
        return
    h, diam = mesh_scales(mesh)
    for key, s in stds:
        if s < h / STD_MIN_PER_H:
            raise ConfigError(key, f"a standard deviation of at least h/{STD_MIN_PER_H:g} = "
                              f"{h / STD_MIN_PER_H:.3g} (the mesh size is h = {h:.3g}; refine "
                              "the mesh or widen the Gaussian)", s)
        if s > STD_MAX_PER_DIAMETER * diam:
            raise ConfigError(key, f"a standard deviation of at most {STD_MAX_PER_DIAMETER:g} x "
                              f"the domain diameter {diam:.3g} = {STD_MAX_PER_DIAMETER * diam:.3g}"
                              " (wider is a constant: use kind = 'formula', formula = '1')", s)


# A Gaussian (or mixture component) of which less than this fraction lies in the mesh's
# bounding box is refused: a mean given in other coordinates (mean = [-1, 0] copied to the
# corridor [0, 4] x [0, 1]) or off by a sign left a tail of e^-88 of it on the mesh, which
# normalising blew up into another initial density (squashed against a wall), and the run
# reported success.
MIN_MASS_ON_MESH = 1e-2


def check_on_mesh(rcfg: dict, mesh, periods: dict | None = None) -> None:
    """Refuse a Gaussian or mixture component that lies (all but MIN_MASS_ON_MESH of it)
    outside the mesh: ConfigError naming ``rho0.mean`` (``rho0.means[i]``) with the fraction
    and the mesh's extent.  The fraction inside the bounding box bounds the mass on the mesh
    from above (periodic directions hold all of it), so nothing on the mesh is refused."""
    kind = rcfg.get("kind")
    d = mesh.geometry.dim
    if kind == "gaussian":
        parts = [("rho0.mean", gaussian_mean(rcfg, d), rcfg["std"])]
    elif kind == "mixture":
        parts = [(f"rho0.means[{i}]", m, s)
                 for i, (m, s) in enumerate(zip(rcfg.get("means", []), rcfg.get("stds", [])))
                 if len(m) == d]
    else:
        return
    lo, hi = _bbox(mesh)
    for key, mean, std in parts:
        frac = 1.0
        for i in range(d):
            if periods and i in periods:
                continue
            a, b = ((float(lo[i]) - mean[i]) / (std * math.sqrt(2)),
                    (float(hi[i]) - mean[i]) / (std * math.sqrt(2)))
            # the tails by erfc: erf(b) − erf(a) cancels to 0 far out on either side
            frac *= 0.5 * (math.erfc(a) - math.erfc(b) if a > 0 else
                           math.erfc(-b) - math.erfc(-a) if b < 0 else
                           math.erf(b) - math.erf(a))
        if frac < MIN_MASS_ON_MESH:
            box = "[" + ", ".join(f"{x:.3g}..{y:.3g}" for x, y in zip(lo, hi)) + "]"
            raise ConfigError(key, f"a Gaussian with at least {MIN_MASS_ON_MESH:g} of its mass "
                              f"on the mesh (only {frac:.2g} of it lies in the mesh's extent "
                              f"{box}; is the mean in the mesh's coordinates?)", list(mean))


def density_ufl(rcfg: dict, mesh, params: dict | None = None, periods: dict | None = None):
    """The unnormalised ρ_0 of config section ``rcfg`` as a UFL expression on ``mesh``;
    Gaussians wrapped along the periodic directions ``periods`` {i: L_i} (see
    :func:`gaussian_ufl`)."""
    x = ufl.SpatialCoordinate(mesh)
    d = mesh.geometry.dim
    kind = rcfg["kind"]
    check_scale(rcfg, mesh)
    check_on_mesh(rcfg, mesh, periods)
    # means, widths and weights as Constants: one compiled interpolation for every value
    # (a new width cost 0.35 s of compilation on a 1.0 s run)
    import dolfinx

    def held(v):
        return dolfinx.fem.Constant(mesh, float(v))
    if kind == "gaussian":
        return gaussian_ufl(x, [held(m) for m in gaussian_mean(rcfg, d)], held(rcfg["std"]),
                            periods, rcfg["std"])
    if kind == "mixture":
        terms = []
        for i, (m, s, w) in enumerate(zip(rcfg["means"], rcfg["stds"], rcfg["weights"])):
            if len(m) != d:
                raise ConfigError(f"rho0.means[{i}]", f"an array of {d} numbers", m)
            terms.append(held(w) * gaussian_ufl(x, [held(c) for c in m], held(s), periods, s))
        return sum(terms[1:], terms[0])
    if kind == "formula":
        return parse(rcfg["formula"], "rho0.formula", x=x, gdim=d, params=params)
    raise ConfigError("rho0.kind", "gaussian, mixture or formula here", kind)


def normalise(rho, key: str = "rho0", tol: float = 1e-10):
    """Check ρ ≥ 0 (to round-off) and ∫ρ > 0, clip round-off negatives, scale to mass 1.
    Both tests are relative — to max|ρ| and to max|ρ|·|Ω| — so they do not depend on the
    units (a Gaussian on a domain of size 1e-5 used to be refused with "mass 0.952")."""
    import dolfinx
    comm = rho.function_space.mesh.comm
    a = rho.x.array
    vmax = comm.allreduce(float(np.max(np.abs(a))) if a.size else 0.0, op=MPI.MAX)
    vmin = comm.allreduce(float(np.min(a)) if a.size else 0.0, op=MPI.MIN)
    if not np.isfinite(vmax) or not np.isfinite(vmin):
        raise ConfigError(key, "a finite density", "NaN or inf values")
    if vmin < -tol * vmax:
        raise ConfigError(key, "a non-negative density", f"minimum {vmin:.3g} at a dof")
    a[a < 0] = 0.0
    mesh = rho.function_space.mesh
    mass, vol = (comm.allreduce(dolfinx.fem.assemble_scalar(dolfinx.fem.form(f * ufl.dx)),
                                op=MPI.SUM)
                 for f in (rho, dolfinx.fem.Constant(mesh, 1.0)))
    if not mass > tol * vmax * vol:
        raise ConfigError(key, "a density of positive mass", f"mass {mass:.3g}")
    a /= mass
    return rho


def initial_density(rcfg: dict, V, params: dict | None = None, name: str = "rho0"):
    """Interpolate the configured ρ_0 into space V, check and normalise it."""
    import dolfinx
    mesh = V.mesh
    rho = dolfinx.fem.Function(V, name=name)
    if rcfg["kind"] == "file":
        src = read_checkpoint_density(rcfg["file"], mesh)
        rho.interpolate_nonmatching(src, *_nonmatching_data(V, src)) \
            if src.function_space.mesh is not mesh else rho.interpolate(src)
    else:
        expr = density_ufl(rcfg, mesh, params)
        if isinstance(expr, (int, float, ufl.constantvalue.ConstantValue)):
            rho.x.array[:] = float(expr)   # a constant formula (UFL folds e.g. 0*x0 to zero)
        else:
            rho.interpolate(dolfinx.fem.Expression(expr, V.element.interpolation_points()))
    return normalise(rho)


def _bbox(mesh):
    xs = mesh.geometry.x[:, :mesh.geometry.dim]
    d = mesh.geometry.dim
    lo = xs.min(axis=0) if xs.size else np.full(d, np.inf)
    hi = xs.max(axis=0) if xs.size else np.full(d, -np.inf)
    return np.min(mesh.comm.allgather(lo), axis=0), np.max(mesh.comm.allgather(hi), axis=0)


def read_checkpoint_density(path, mesh, name: str = "rho0"):
    """The function ``name`` of checkpoint ``path`` (config key ``rho0.file``), refused with a
    ConfigError unless its mesh has the dimensions of ``mesh`` and covers its domain."""
    from pathlib import Path

    from .errors import UserError
    from .io import load_checkpoint
    key = "rho0.file"
    try:
        src_mesh, src = load_checkpoint(Path(path), mesh.comm, name)
    except ConfigError:
        raise
    except UserError as e:
        raise ConfigError(key, f"a fem_mfc checkpoint ({e})") from None
    gd, td = mesh.geometry.dim, mesh.topology.dim
    sgd, std_ = src_mesh.geometry.dim, src_mesh.topology.dim
    if (sgd, std_) != (gd, td):
        raise ConfigError(key, f"a checkpoint on a {td}D mesh in {gd}D like this run's mesh",
                          f"{path} holds a {std_}D mesh in {sgd}D")
    lo, hi = _bbox(mesh)
    slo, shi = _bbox(src_mesh)
    tol = 1e-6 * max(float(np.linalg.norm(shi - slo)), 1e-300)
    if np.any(lo < slo - tol) or np.any(hi > shi + tol):
        def fmt(a, b):
            return "[" + ", ".join(f"{x:.3g}..{y:.3g}" for x, y in zip(a, b)) + "]"
        raise ConfigError(key, f"a checkpoint whose mesh covers this run's domain {fmt(lo, hi)}",
                          f"{path} covers {fmt(slo, shi)}")
    return src


def _nonmatching_data(V, src):
    import dolfinx
    mesh = V.mesh
    cells = np.arange(mesh.topology.index_map(mesh.topology.dim).size_local, dtype=np.int32)
    return (cells, dolfinx.fem.create_interpolation_data(V, src.function_space, cells,
                                                          padding=1e-10))
