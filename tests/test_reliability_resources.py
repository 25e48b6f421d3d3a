"""Item 3 of issue 14: validation by effect.  A memory estimate before anything is allocated
(``config.estimate_resources`` / ``config.check_resources``), a refinement level refused before
the mesh is built, sigma = 0 refused where the formulation divides by it."""
from __future__ import annotations

import resource
import time

from mpi4py import MPI

import pytest

from fem_mfc import config, mesh
from fem_mfc.errors import ConfigError
from helpers import run_python


def _cfg(**over):
    raw = {"run": {"formulation": "hjb-fp"},
           "mesh": {"kind": "interval", "cells": 16, "lower": [-3.0], "upper": [3.0]},
           "rho0": {"mean": [0.0]}}
    if "kind" in over.get("mesh", {}):       # another kind: none of the interval's keys
        raw["mesh"] = {}
    for sec, kv in over.items():
        raw.setdefault(sec, {}).update(kv)
    return config.from_dict(raw)


@pytest.mark.parametrize("over,dofs", [
    ({}, 17),                                                              # 16 P1 cells: 17 nodes
    ({"discretisation": {"degree": 2}}, 33),
    ({"mesh": {"refine": 2}}, 65),
    ({"mesh": {"kind": "rectangle", "cells": 8, "lower": [0.0, 0.0], "upper": [1.0, 1.0]},
      "rho0": {"mean": []}}, 81),
    ({"mesh": {"kind": "box", "cells": 4, "lower": [0.0] * 3, "upper": [1.0] * 3},
      "rho0": {"mean": []}}, 125),
])
def test_estimate_counts_structured_dofs(over, dofs):
    est = config.estimate_resources(_cfg(**over))
    assert est["dofs"] == dofs
    assert est["steps"] == 20
    assert est["bytes"] >= dofs * 20 * est["bytes_per_dof_step"]


def test_estimate_of_a_gmsh_disk_is_close_to_the_mesh(tmp_path):
    cfg = _cfg(mesh={"kind": "disk", "radius": 1.0, "h": 0.2}, rho0={"mean": []})
    est = config.estimate_resources(cfg)
    md = mesh.build(cfg["mesh"], MPI.COMM_SELF)
    nv = md.mesh.geometry.index_map().size_global
    assert 0.5 * nv <= est["dofs"] <= 2.0 * nv, (est["dofs"], nv)


HUGE = [({"problem": {"steps": 1_000_000_000}}, "problem.steps"),
        ({"problem": {"steps": 2 ** 63 - 1}}, "problem.steps"),
        ({"mesh": {"kind": "rectangle", "cells": 10_000_000, "lower": [0.0, 0.0],
                   "upper": [1.0, 1.0]}, "rho0": {"mean": []}}, "mesh.cells"),
        ({"mesh": {"refine": 60}}, "mesh.refine"),
        ({"mesh": {"refine": 1000000}}, "mesh.refine"),
        ({"mesh": {"kind": "disk", "h": 1e-6}, "rho0": {"mean": []}}, "mesh.h")]


@pytest.mark.perf
@pytest.mark.parametrize("over,key", HUGE, ids=[k + str(i) for i, (_, k) in enumerate(HUGE)])
def test_check_resources_refuses_fast(over, key):
    cfg = _cfg(**over)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        config.check_resources(cfg, limit_bytes=8 << 30)
    assert time.perf_counter() - t0 < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 50_000   # KB
    msg = str(e.value)
    assert f"'{key}'" in msg and "estimate" in msg and "--force" in msg and "\n" not in msg
    est = config.check_resources(cfg, limit_bytes=8 << 30, force=True)
    assert est["bytes"] > 8 << 30


def test_check_resources_passes_a_small_run():
    est = config.check_resources(_cfg(), limit_bytes=1 << 30)
    assert 0 < est["bytes"] < 1 << 30


def test_limit_is_compared_with_the_estimate():
    cfg = _cfg()
    b = config.estimate_resources(cfg)["bytes"]
    config.check_resources(cfg, limit_bytes=b)
    with pytest.raises(ConfigError):
        config.check_resources(cfg, limit_bytes=b / 2)


def test_space_time_lu_counts_where_a_run_takes_it():
    """The QHD control signature and ``linear = 'lu'`` factorise the whole space-time matrix
    whatever its size (2D 16,641 dofs × 50 steps: MUMPS ran out of memory after the estimate
    of the trajectories alone had passed): its factors enter the estimate, and the refusal
    names them.  Newton's automatic path never takes an LU that does not fit: no LU there."""
    square = {"mesh": {"kind": "rectangle", "cells": 128, "lower": [0.0, 0.0],
                       "upper": [1.0, 1.0]}, "rho0": {"mean": []},
              "problem": {"steps": 50, "G": "rho**2/2"}}
    auto = config.estimate_resources(_cfg(**square))
    assert auto["lu_bytes"] == 0
    for over in ({"solver": {"linear": "lu"}},
                 {"run": {"formulation": "qhd"}, "qhd": {"signature": "control"}}):
        est = config.estimate_resources(_cfg(**square, **over))
        assert est["lu_bytes"] > 20e9 and est["bytes"] > auto["bytes"] + 20e9
        with pytest.raises(ConfigError, match="for the LU of the space-time matrix"):
            config.check_resources(_cfg(**square, **over), limit_bytes=auto["bytes"] * 2)


def test_mumps_out_of_memory_is_said_in_words():
    """A space-time LU that MUMPS cannot fit (here: a 1 MB cap, ICNTL(23)) ends the solve
    with its reason in words, not PETSc's bare DIVERGED_LINEAR_SOLVE."""
    import dolfinx
    import ufl

    from fem_mfc.problem import ControlProblem
    from fem_mfc.solvers.newton import newton
    msh = dolfinx.mesh.create_rectangle(MPI.COMM_SELF, [[-1, -1], [1, 1]], [8, 8])
    x = ufl.SpatialCoordinate(msh)
    p = ControlProblem(mesh=msh, T=1.0, sigma=0.6, steps=4, Phi=x[0] ** 2,
                       G=lambda r: 0.5 * r ** 2, rho0=ufl.exp(-4 * (x[0] ** 2 + x[1] ** 2)))
    r = newton(p, linear="lu", continuation=False,
               petsc_options={"mfc_mat_mumps_icntl_23": 1})
    assert not r.converged
    assert "needs more memory" in r.reason and "INFOG(1) = -" in r.reason, r.reason


def test_mesh_build_refuses_refinement_beyond_memory():
    """Without any wiring: mesh.build itself refuses a level whose vertices cannot fit, in a
    subprocess limited to 6 GB of address space (before the change it allocates or hangs)."""
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))\n"
            "from mpi4py import MPI\nfrom fem_mfc import mesh\n"
            "from fem_mfc.errors import ConfigError\n"
            "for m in ({'kind': 'rectangle', 'cells': 16, 'lower': [0, 0], 'upper': [1, 1], "
            "'refine': 40}, {'kind': 'disk', 'radius': 1.0, 'h': 0.2, 'refine': 60}):\n"
            "    try:\n        mesh.build(m, MPI.COMM_SELF)\n"
            "    except ConfigError as e:\n        print('REFUSED', e)\n")
    p = run_python(["-c", code], timeout=120)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("REFUSED")]
    assert len(lines) == 2 and all("mesh.refine" in ln for ln in lines), p.stdout + p.stderr


@pytest.mark.parametrize("over", [
    {"run": {"formulation": "qhd"}},
    {"run": {"formulation": "cole-hopf"}},
    {"solver": {"method": "cole-hopf"}},
    {"solver": {"method": "newton", "initial_guess": "cole-hopf"}},
    {},                                       # 'auto' without congestion: Cole-Hopf
])
def test_sigma_zero_refused_where_it_divides(over):
    with pytest.raises(ConfigError, match="problem.sigma"):
        _cfg(problem={"sigma": 0.0}, **over)


def test_sigma_zero_allowed_elsewhere():
    _cfg(problem={"sigma": 0.0}, solver={"method": "newton"})
    _cfg(problem={"sigma": 0.0, "G": "rho**2/2"})     # 'auto' takes Newton with a congestion
    with pytest.raises(ConfigError, match="problem.sigma"):   # a G that vanishes is none
        _cfg(problem={"sigma": 0.0, "G": "c*rho**2", "params": {"c": 0.0}})
    with pytest.raises(ConfigError, match="problem.sigma"):   # heat is the noise alone:
        _cfg(problem={"sigma": 0.0}, run={"formulation": "heat"})   # it crashed in its form


LEARNING = [({"data": {"n_samples": 10 ** 9}}, "data.n_samples"),
            ({"data": {"n_samples": 2 ** 63 - 1}}, "data.n_samples"),
            ({"training": {"fresh": 10 ** 9}}, "training.fresh"),
            ({"training": {"particles": 10 ** 9}}, "training.particles"),
            ({"training": {"hidden": 10 ** 9}}, "training.hidden"),
            ({"data": {"dataset": "gaussians", "classes": 10 ** 7, "n_samples": 2 * 10 ** 7}},
             "data.classes"),
            ({"network": {"kind": "dictionary", "dictionary": "random-tanh",
                          "ridges": 10 ** 9}}, "network.ridges"),
            ({"run": {"formulation": "generative"}, "generative": {"samples": 10 ** 10}},
             "generative.samples"),
            ({"training": {"seeds": 2 ** 31 - 1}}, "training.seeds")]


@pytest.mark.parametrize("over,key", LEARNING, ids=[k for _, k in LEARNING])
def test_learning_sizes_that_do_not_fit_are_refused(over, key):
    """The sizes of a learning run (points of the data set, the fresh sample, the particles,
    the generated samples, the baselines' width, the classes, the ridges) were not estimated:
    10^9 points was a MemoryError after the data were drawn (exit 1).  Refused by name now."""
    raw = {"run": {"formulation": "classifier"}, "mesh": {"kind": "disk"}}
    for sec, kv in over.items():
        raw.setdefault(sec, {}).update(kv)
    with pytest.raises(ConfigError) as e:
        config.check_resources(config.from_dict(raw), limit_bytes=8 << 30)
    assert e.value.key == key and "--force" in str(e.value)


@pytest.mark.parametrize("demo", ["moons", "generative", "dictionary", "circles3d"])
def test_learning_demos_fit_easily(demo):
    from helpers import REPO
    est = config.estimate_resources(config.load(REPO / "demos" / f"{demo}.toml"))
    assert est["bytes"] < 1 << 30 and est["learning"]


@pytest.mark.parametrize("radius,h,most", [(3.0, 1e300, 10), (1e300, 1e299, 1000),
                                           (1e-300, 1e-301, 1000)])
def test_a_coarse_gmsh_mesh_is_not_estimated_unbounded(radius, h, most):
    """The gmsh estimate took R^2 and h^2 apart: h = 1e300 overflowed and a disk of a few
    cells was refused as "an unbounded amount" of memory; ratios R/h now."""
    cfg = _cfg(mesh={"kind": "disk", "radius": radius, "h": h}, rho0={"mean": []})
    assert config.estimate_resources(cfg)["dofs"] < most
    config.check_resources(cfg, limit_bytes=1 << 30)
