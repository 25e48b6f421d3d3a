"""Run configuration: the TOML schema, its validation, and defaults.

This is the one place that knows the key names.  A config is a TOML file of sections; every
key is declared below with its type, default and admissible range, and :func:`load` rejects
unknown keys, wrong types, missing files and out-of-range values with a one-line
:class:`~fem_mfc.errors.ConfigError` naming the key.  The validated config is a plain nested
``dict`` with every default filled in, so that the copy written next to the results
(``config.toml``) reproduces the run exactly.

The schema is documented for users in ``docs/config.md`` (generated from this module by
``python3 -m fem_mfc schema``).
"""
from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import registry
from .errors import ConfigError, UserError, toml_value, warning


@dataclass
class Key:
    """One config key: a type, a default (``REQUIRED`` if none) and an optional check."""

    type: type | tuple
    default: Any
    doc: str
    check: Callable[[Any], bool] | None = None
    expect: str = ""          # what the check wants, for the error message
    choices: tuple | None = None
    path: bool = False        # a file that must exist (resolved relative to the config)


REQUIRED = object()


def positive(x):
    return x > 0


def nonnegative(x):
    return x >= 0


def _unit_interval(x):
    return 0 < x <= 1


# iteration counts: a PETSc integer (solver.max_it = 2^63 - 1 was an OverflowError in SNES's
# setTolerances; training.max_sweeps = 2^63 - 1 one in len(range(...)) of the progress bar)
COUNT_MAX = 2 ** 31 - 1
COUNT_EXPECT = "a positive integer of at most 2^31 - 1"


def _count(n):
    return 0 < n <= COUNT_MAX


# sigma enters as epsilon = sigma^2/2: its square must be a finite number (sigma = 1e300
# overflowed in the exact solutions: OverflowError, exit 1), and a positive sigma must have a
# positive epsilon with a finite inverse (sigma = 1e-300 gave epsilon = 0, and Cole-Hopf
# divided by it).  The same for the Gaussian target's std s of the generative runs (1/2s^2 and
# s^2 in the KL term: 5e-324 was a ZeroDivisionError, 1e300 an inf the form compiler choked on).
SQUARE_MIN, SQUARE_MAX = 1e-150, 1e150


def _square_ok(s):
    return SQUARE_MIN <= s <= SQUARE_MAX


def _sigma(s):
    return s == 0 or _square_ok(s)


SQUARE_EXPECT = (f"a number from {SQUARE_MIN:g} to {SQUARE_MAX:g} (its square and the inverse "
                 "of its square must be finite positive numbers)")
SIGMA_EXPECT = "0 or " + SQUARE_EXPECT


FORMULATIONS = registry.NAMES
# Names a formula already gives a meaning to: parameters may not shadow them.
RESERVED_NAMES = ("x0", "x1", "x2", "x", "y", "z", "rho", "t", "pi", "e", "p0", "p1", "p2",
                  "pnorm")
HAMILTONIANS = ("quadratic", "weighted", "power", "anisotropic", "congestion")
MESH_KINDS = ("interval", "rectangle", "box", "disk", "annulus", "lshape", "ball", "file")
GRADING_MAX = 20.0              # mesh.grading: sinh(2a) of a focus at a side far from overflow

# Section -> key -> Key.  A value of dict type (``Key(dict, ...)``) is a free table (e.g. PETSc
# options, or named parameters referenced from formulas).
SCHEMA: dict[str, dict[str, Key]] = {
    "run": {
        "formulation": Key(str, "hjb-fp", "which system to solve", choices=FORMULATIONS),
        "title": Key(str, "", "free text, copied to summary.json"),
    },
    "mesh": {
        "kind": Key(str, "rectangle", "mesh kind", choices=MESH_KINDS),
        "cells": Key(int, 16, "cells per axis (interval/rectangle/box)", positive,
                     "a positive integer"),
        "lower": Key(list, [-1.0, -1.0], "lower corner (interval/rectangle/box; not given: -1 in "
                     "every coordinate)"),
        "upper": Key(list, [1.0, 1.0], "upper corner (interval/rectangle/box; not given: 1 in "
                     "every coordinate)"),
        "diagonal": Key(str, "right", "triangle diagonal of rectangle meshes",
                        choices=("right", "left", "crossed", "right/left", "left/right")),
        "radius": Key(float, 1.0, "outer radius (disk/annulus/ball)", positive,
                      "a positive number"),
        "inner_radius": Key(float, 0.5, "inner radius (annulus)", positive, "a positive number"),
        "h": Key(float, 0.2, "target cell size (gmsh kinds)", positive, "a positive number"),
        "file": Key(str, "", "a gmsh .msh (or meshio-readable) file (kind = 'file')", path=True),
        "refine": Key(int, 0, "refinement level: cells x 2^refine, h / 2^refine", nonnegative,
                      "a non-negative integer"),
        "grading": Key(float, 0.0, "interval/rectangle/box: grade the cells towards mesh.focus "
                       "by x = c + l*sinh(2a(t - t_c)) per axis (t uniform; 0: uniform cells; "
                       "a = 6 makes the cells at a midpoint focus a/sinh(a) = 0.03 of the "
                       "uniform size and those at the sides 6x; for densities that concentrate "
                       "there, e.g. attractive couplings)", lambda a: 0 <= a <= GRADING_MAX,
                       f"a number from 0 to {GRADING_MAX:g}"),
        "focus": Key(list, [], "the point a graded mesh's cells shrink towards (empty: the "
                     "middle of the mesh)"),
    },
    "problem": {
        "T": Key(float, 1.0, "horizon (network depth)", positive, "a positive number"),
        "sigma": Key(float, 0.5, "noise sigma (epsilon = sigma^2/2)", _sigma,
                     SIGMA_EXPECT),
        "steps": Key(int, 20, "number of time steps (layers)", positive, "a positive integer"),
        "V": Key(str, "0", "running potential V(x), a formula in x0, x1, x2"),
        "Phi": Key(str, "0", "terminal loss Phi(x), a formula in x0, x1, x2"),
        "G": Key(str, "0", "congestion G(rho), a formula in rho (and parameters)"),
        "coupling": Key(str, "mftc", "congestion coupling: G'(rho) (mftc) or G(rho)/rho (mfg); "
                        "for an H that depends on rho, mftc also differentiates H in rho (the "
                        "mean-field control problem), mfg keeps rho in H fixed (the game)",
                        choices=("mftc", "mfg")),
        "H": Key(str, "quadratic", "Hamiltonian H(x, p, rho), p = grad u (control a = -dH/dp):"
                 " 'quadratic' (|p|^2/2, the default), 'weighted' (c(x)|p|^2/2), 'power' "
                 "(|p|^q/q, regularised at p = 0), 'anisotropic' (p.A(x)p/2), 'congestion' "
                 "(|p|^2/(2(1+rho)^alpha)) with the parameters in [hamiltonian], or a formula "
                 "in p0, p1, p2, |p|, x0..x2, rho and params, e.g. '0.5*(p0**2 + 4*p1**2)' or "
                 "'|p|**2/(2*(1 + rho))' (|p|**b is (p.p)^(b/2), smooth at p = 0 for b >= 2). "
                 "H must be convex in p (checked on the mesh). Other than 'quadratic' only "
                 "formulation 'hjb-fp' with solver.method 'newton', "
                 "'picard' or 'auto' (Galerkin, initial_guess 'trivial' or 'coarse')"),
        "params": Key(dict, {}, "named numbers usable in every formula, e.g. {kappa = 1.0}"),
    },
    "hamiltonian": {
        "weight": Key(str, "1", "H = 'weighted': c(x) in c(x)|p|^2/2, a positive formula in "
                      "x0, x1, x2"),
        "q": Key(float, 1.5, "H = 'power': the exponent q > 1 of |p|^q/q", lambda q: q > 1,
                 "a number > 1"),
        "delta": Key(float, 1e-3, "H = 'power', q != 2: regularisation ((|p|^2 + delta^2)^(q/2)"
                     " - delta^q)/q, smooth at p = 0 so that Newton's matrix exists there "
                     "(for q < 2 below |p|^q/q by at most delta^q/q)", nonnegative,
                     "a non-negative number"),
        "A": Key(list, [], "H = 'anisotropic': the symmetric positive definite matrix A(x) of "
                 "p.A(x)p/2 as gdim rows of gdim formulas (or numbers), e.g. "
                 "[['1', '0'], ['0', '4']]"),
        "alpha": Key(float, 1.0, "H = 'congestion': the exponent alpha >= 0 of "
                     "|p|^2/(2(1+rho)^alpha)", nonnegative, "a non-negative number"),
    },
    "rho0": {
        "kind": Key(str, "gaussian", "initial density kind",
                    choices=("gaussian", "mixture", "formula", "file")),
        "mean": Key(list, [], "Gaussian mean (empty: the origin)"),
        "std": Key(float, 0.3, "Gaussian standard deviation (per axis)", positive,
                   "a positive number"),
        "means": Key(list, [], "mixture: list of means"),
        "stds": Key(list, [], "mixture: list of standard deviations"),
        "weights": Key(list, [], "mixture: list of weights"),
        "formula": Key(str, "", "kind = 'formula': an unnormalised density in x0, x1, x2"),
        "file": Key(str, "", "kind = 'file': an adios4dolfinx checkpoint (.bp folder) holding "
                    "a function 'rho0', written with fem_mfc.io.save_checkpoint(path, mesh, "
                    "{'rho0': f}) (a run's ParaView series rho.bp is not one)",
                    path=True),
    },
    "discretisation": {
        "degree": Key(int, 1, "Lagrange degree", lambda k: k in (1, 2, 3), "1, 2 or 3"),
        "scheme": Key(str, "backward-euler", "time scheme",
                      choices=("backward-euler", "crank-nicolson")),
        "stabilisation": Key(str, "none", "'monotone': the positivity-preserving P1 scheme "
                             "(lumped mass, upwind Hamiltonian on the mesh edges, minimal "
                             "artificial diffusion; backward Euler, degree 1; first order)",
                             choices=("none", "monotone")),
    },
    "solver": {
        "method": Key(str, "auto", "nonlinear solver",
                      choices=("auto", "newton", "picard", "cole-hopf")),
        "rtol": Key(float, 1e-10, "relative residual tolerance", lambda r: 0 < r < 1,
                    "a number in (0, 1) (PETSc refuses a relative tolerance of 1 or more)"),
        "atol": Key(float, 1e-12, "absolute residual tolerance", positive, "a positive number"),
        "max_it": Key(int, 50, "maximum Newton iterations", _count, COUNT_EXPECT),
        "initial_guess": Key(str, "trivial", "Newton's start: rho = rho0, u = Phi ('trivial'), "
                             "the Cole-Hopf solution without congestion ('cole-hopf') or the "
                             "solution on a grid coarser in space and time ('coarse')",
                             choices=("trivial", "cole-hopf", "coarse")),
        "linear": Key(str, "auto", "Newton's linear path: 'lu' (LU of the space-time matrix), "
                      "'sweep' (Krylov + forward-backward sweep preconditioner) or 'auto' "
                      "(the cheaper by estimated cost)", choices=("auto", "lu", "sweep")),
        "step_solver": Key(str, "auto", "per-step solver of the sweeps (Newton's sweep "
                           "preconditioner, Cole-Hopf): 'lu', 'ilu' (GMRES + ILU(0)), 'amg' "
                           "(GMRES + BoomerAMG) or 'auto' (LU in 1D/2D, ILU in 3D)",
                           choices=("auto", "lu", "ilu", "amg")),
        "continuation": Key(bool, True, "if Newton fails from its initial guess, continue in "
                            "the coupling strength (and the noise) from the uncoupled problem"),
        "picard_max_it": Key(int, 500, "maximum Picard iterations", _count, COUNT_EXPECT),
        "relaxation": Key(float, 0.5, "Picard damping in (0, 1]", _unit_interval,
                          "a number in (0, 1]"),
        "petsc_options": Key(dict, {}, "PETSc options (also accepted on the command line)"),
    },
    "exact": {
        "solution": Key(str, "none", "known solution for error norms and refinement studies",
                        choices=("none", "lq-gaussian", "manufactured", "heat-gaussian",
                                 "soliton", "free-gaussian")),
    },
    "data": {
        "dataset": Key(str, "moons", "classifier data set",
                       choices=("moons", "circles", "spirals", "gaussians", "csv")),
        "n_samples": Key(int, 1000, "number of generated points (train + test)",
                         lambda n: n >= 8, "an integer >= 8"),
        "noise": Key(float, 0.1, "std of the Gaussian noise added to the points (gaussians: "
                     "blob std, centres on the unit circle)", nonnegative, "a non-negative number"),
        "factor": Key(float, 0.5, "circles: radius of the inner circle / outer circle",
                      lambda f: 0 < f < 1, "a number in (0, 1)"),
        "turns": Key(float, 1.0, "spirals: number of turns of each arm", positive,
                     "a positive number"),
        "classes": Key(int, 3, "gaussians: number of blobs (classes)", lambda k: k >= 2,
                       "an integer >= 2"),
        "test_fraction": Key(float, 0.5, "fraction of the points held out for testing",
                             lambda f: 0 < f < 1, "a number in (0, 1)"),
        "seed": Key(int, 0, "random seed of the generator and of the split",
                    lambda s: 0 <= s <= 2 ** 32 - 1, "an integer from 0 to 2^32 - 1 (a seed "
                    "of scikit-learn's generators)"),
        "file": Key(str, "", "dataset = 'csv': a CSV file with the columns x1,x2,label "
                     "(x1,...,xd,label for d features on a mesh of at least d dimensions; "
                     "the header may be left out)",
                    path=True),
        "bandwidth": Key((str, float, int), "scott", "KDE bandwidth of the class densities: "
                         "'scott', 'silverman' or a number (standardised units)",
                         lambda b: b in ("scott", "silverman") or (
                             not isinstance(b, (str, bool)) and math.isfinite(b) and b > 0),
                         "'scott', 'silverman' or a positive number"),
    },
    "network": {
        "kind": Key(str, "feedback", "network class (MODEL §2): label-blind feedback network "
                    "(a(t,x) free) or dictionary network (a = B(x) theta(t), shared weights)",
                    choices=("feedback", "dictionary")),
        "anchors": Key(list, [], "class anchors c_k (list of points); empty: K points on a "
                       "circle of radius anchor_radius (K = 2: +-anchor_radius e_1), with "
                       "CSV data assigned to the classes by the classes' mean positions "
                       "(not by the sorted order of the labels)"),
        "anchor_radius": Key(float, 2.0, "radius of the default anchors", positive,
                             "a positive number"),
        "loss_weight": Key(float, 1.0, "beta in Phi_k = beta/2 |x - c_k|^2", positive,
                           "a positive number"),
        "velocity": Key(str, "P1", "finite element of the per-layer velocity a(t_n, .)",
                        choices=("P1", "DG0")),
        "transport": Key(str, "auto", "discretisation of the transport terms of the class "
                         "densities: 'eafe' (edge-averaged finite elements / Scharfetter-Gummel, "
                         "lumped masses: rho >= 0 and no mesh Peclet limit; needs sigma > 0 and "
                         "P1 velocities; fem_mfc/learning/eafe.py), 'galerkin' (P1 Galerkin from "
                         "ufl.derivative of the step Lagrangian, MODEL par. 2; accurate for mesh "
                         "Peclet numbers <~ 2) or 'auto' (= eafe)",
                         choices=("auto", "eafe", "galerkin")),
        "smoothing": Key(float, 1e-3, "alpha: velocity smoothing alpha/2 int |grad a|^2 in J "
                         "(P1 velocity)", nonnegative, "a non-negative number"),
        "delta": Key(float, 1e-3, "regularisation rho -> rho + delta in a = -sum rho_k grad u_k "
                     "/ (rho + delta) (adds delta/2 int |a|^2 to J)", positive,
                     "a positive number"),
        "dictionary": Key(str, "affine", "kind = 'dictionary': the columns b_j of B(x): affine "
                          "(a = W x + c), rotation (a = Omega x, Omega in so(d)) or random-tanh "
                          "ridges b = e_i tanh(w_j . x + beta_j)",
                          choices=("affine", "rotation", "random-tanh")),
        "ridges": Key(int, 8, "kind = 'dictionary', random-tanh: number of ridges m (then "
                      "d*m weights per layer)", positive, "a positive integer"),
        "weight_decay": Key(float, 1e-2, "kind = 'dictionary': lambda in the weight decay "
                            "lambda/2 int |theta|^2 dt", positive, "a positive number"),
        "ridge_scale": Key(float, 1.5, "random-tanh: std of the ridge directions w_j and offsets "
                           "beta_j", positive, "a positive number"),
        "dictionary_seed": Key(int, 0, "random-tanh: seed of the ridges", nonnegative,
                               "a non-negative integer"),
    },
    "training": {
        "method": Key(str, "auto", "trainer of the reduced functional J(control): 'newton' "
                      "(truncated Newton-CG with exact Hessian-vector products, Steihaug "
                      "truncation, Armijo line search), 'lbfgs' (limited-memory BFGS in the "
                      "sweeps' metric), 'sweeps' (damped forward-backward sweeps, a "
                      "preconditioned gradient method) or 'auto' (newton where the transport "
                      "is 'eafe', sweeps otherwise); newton and lbfgs need the eafe transport",
                      choices=("auto", "newton", "lbfgs", "sweeps")),
        "max_sweeps": Key(int, 60, "maximum outer iterations (sweeps, Newton or L-BFGS steps)",
                          _count, COUNT_EXPECT),
        "relaxation": Key(float, 0.5, "initial relaxation theta of a <- a + theta (a_hat - a)",
                          _unit_interval, "a number in (0, 1]"),
        "tol": Key((str, float), "auto", "stop when the relative optimality residual is below "
                   "tol; 'auto': 1e-6 for the second-order trainers (newton, lbfgs: a few "
                   "more iterations), 1e-3 for the sweeps (linear convergence); below 1 (the "
                   "residual of the untrained network is 1)",
                   lambda t: t == "auto" or (not isinstance(t, (str, bool))
                                            and math.isfinite(t) and 0 < t < 1),
                   "'auto' or a number in (0, 1) (the relative residual is 1 before training: "
                   "a tol of 1 or more stops at once and reports the untrained network as "
                   "converged)"),
        "baseline": Key(bool, True, "also train the torch baselines (ResNet of the same "
                        "depth, and the neural ODE if node = true) on the empirical objective"),
        "node": Key(bool, True, "baseline = true: also train the neural ODE baseline"),
        "epochs": Key(int, 600, "baselines: maximum full-batch Adam epochs (early stopping on "
                      "a plateau ends them sooner, see patience)", _count, COUNT_EXPECT),
        "patience": Key(int, 100, "baselines: a plateau is `patience` epochs without a relative "
                        "improvement of 1e-4 of the objective (the learning rate is divided by "
                        "4 at the first two, training stops at the third); 0: exactly `epochs` "
                        "epochs", nonnegative, "a non-negative integer"),
        "seeds": Key(int, 3, "baselines: number of seeds (data seed, data seed + 1, ...); the "
                     "report gives the best run and the mean +- std", _count, COUNT_EXPECT),
        "fresh": Key(int, 20000, "size of the fresh sample from the data generator on which "
                     "every model's accuracy and the Bayes ceiling are measured (0: skip)",
                     nonnegative, "a non-negative integer"),
        "lr": Key(float, 0.01, "baseline: Adam learning rate", positive, "a positive number"),
        "hidden": Key(int, 16, "baseline: hidden width of each residual block", positive,
                      "a positive integer"),
        "particles": Key(int, 4000, "particles pushed through the learned stochastic flow to "
                         "check the PDE moments (0: skip)", nonnegative,
                         "a non-negative integer"),
    },
    "generative": {
        "kl_weight": Key(float, 5.0, "beta in J = int int |a|^2 rho / 2 + beta KL(rho(T) || "
                         "N(0, s^2 I))", positive, "a positive number"),
        "kl_floor": Key(float, 1e-3, "eta: KL is evaluated as int (rho + eta) log((rho + eta)/N) "
                        "so that the logarithm stays finite", nonnegative,
                        "a non-negative number"),
        "target_std": Key(float, 1.0, "s: standard deviation of the Gaussian target",
                          _square_ok, SQUARE_EXPECT),
        "samples": Key(int, 1000, "samples drawn by running the flow backward from the target",
                       positive, "a positive integer"),
        "score": Key(bool, True, "include the diffusion's contribution -eps grad log rho in the "
                     "flow map (probability-flow velocity) for likelihoods and sampling"),
    },
    "nls": {
        "hbar": Key(float, 1.0, "Planck constant hbar of i hbar Psi_t = -(hbar^2/2) Lap Psi + "
                    "(V + G'(|Psi|^2)) Psi", _square_ok, SQUARE_EXPECT),
        "kappa": Key(float, 0.0, "cubic nonlinearity G = kappa rho^2/2 (focusing if < 0) when "
                     "problem.G = '0'; otherwise G is problem.G (set kappa = 0)"),
        "initial": Key(str, "soliton", "initial wave function",
                       choices=("soliton", "gaussian", "ground-state")),
        "eta": Key(float, 1.0, "soliton amplitude/inverse width eta", _square_ok,
                   SQUARE_EXPECT),
        "wavenumber": Key(float, 0.0, "soliton wave number v (speed hbar*v)",
                          lambda v: abs(v) <= SQUARE_MAX, f"a number of size at most "
                          f"{SQUARE_MAX:g} (v^2 enters the phase)"),
        "x0": Key(list, [0.0], "soliton/Gaussian centre (gdim numbers; [0.0]: the origin)"),
        "s0": Key(float, 0.5, "Gaussian width s0 (per-axis std of |Psi|^2)", _square_ok,
                  SQUARE_EXPECT),
        "k0": Key(list, [0.0], "Gaussian mean wave vector k0 (gdim numbers; [0.0]: zero)"),
        "integrator": Key(str, "midpoint", "time stepper: implicit midpoint (SNES Newton), its "
                          "order-4 symmetric compositions, or explicit RK4 (a contrast)",
                          choices=("midpoint", "triple-jump", "suzuki", "rk4")),
        "nonlinearity": Key(str, "energy-conserving", "g in the midpoint step: averaged between "
                            "rho^n and rho^{n+1} (conserves energy) or g(|Psi^{n+1/2}|^2)",
                            choices=("energy-conserving", "midpoint")),
        "mass": Key(float, 1.0, "ground-state normalisation int |Psi|^2", positive,
                    "a positive number"),
        "gs_tau": Key(float, 0.5, "imaginary-time step of the ground-state flow", positive,
                      "a positive number"),
        "gs_tol": Key(float, 1e-10, "ground-state stopping tolerance (relative max change)",
                      positive, "a positive number"),
        "gs_max_steps": Key(int, 5000, "maximum ground-state iterations", _count,
                            COUNT_EXPECT),
    },
    "qhd": {
        "signature": Key(str, "control", "QHD signature (MODEL §3): 'control' = the optimality "
                         "system in imaginary time (two-point problem, all-at-once Newton), "
                         "'quantum' = real-time Madelung fluid (initial-value problem)",
                         choices=("control", "quantum")),
        "hbar": Key(float, 1.0, "quantum signature: hbar in kappa_Q = -hbar^2/2", _square_ok,
                    SQUARE_EXPECT),
        "S0": Key(str, "0", "quantum signature: initial phase S(0, x), a formula in x0, x1, x2 "
                  "(the control signature determines S(0) itself)"),
    },
    "output": {
        "vtx": Key(bool, True, "write ParaView VTX (.bp) time series"),
        "xdmf": Key(bool, False, "also write XDMF time series"),
        "figures": Key(bool, True, "render PNG figures with PyVista (rank 0, off-screen)"),
        "animation": Key(bool, False, "render an animated GIF of the density over the "
                         "series' times (<series>.gif, also with figures off; the learning "
                         "runs write densities.gif with their figures)"),
        "every": Key(int, 1, "write fields every N steps", positive, "a positive integer"),
        "progress": Key(bool, True, "show progress bars"),
        "checkpoint_every": Key(int, 0, "write a restartable checkpoint (OUT.checkpoint/) every "
                                "k Newton iterations and after every continuation stage "
                                "(hjb-fp with solver.method 'newton' or 'auto', qhd with "
                                "signature 'control'), every k outer training iterations "
                                "(classifier, generative) or every k time steps (heat, nls, "
                                "qhd with signature 'quantum'); 0: off (refused elsewhere)",
                                nonnegative, "a non-negative integer"),
    },
}

# Keys renamed since they were first published: section -> {old name: new name}.  A config
# that uses an old name still loads: the value goes to the new key, with one deprecation line
# on stderr (rank 0); giving the old and the new name in one section is an error.
RENAMED: dict[str, dict[str, str]] = {
    "network": {"width": "ridges"},       # three meanings of 'width' (issue 15)
    "training": {"width": "hidden"},
    "nls": {"width": "s0",
            "velocity": "wavenumber"},      # [network] velocity is an element
}


# ``[[boundary]]``: an array of tables, one per tagged part of the boundary (facets not named
# are no-flux walls)
# mesh tags are 32-bit in DOLFINx (tag = 2^63 - 1 was a TypeError in MeshTags.find, exit 1)
TAG_EXPECT = "a non-negative integer of at most 2^31 - 1 (mesh tags are 32-bit)"


def _tag(t):
    return 0 <= t <= 2 ** 31 - 1


BOUNDARY_KINDS = ("no-flux", "exit", "robin", "dirichlet", "periodic")
BOUNDARY: dict[str, Key] = {
    "tag": Key(int, REQUIRED, "the facet tag: a gmsh physical group of the mesh file, or a "
               "side of an interval/rectangle/box (2i+1 where x_i = lower[i], 2i+2 where "
               "x_i = upper[i])", _tag, TAG_EXPECT),
    "kind": Key(str, "no-flux", "'no-flux' (a wall: the natural condition, the default "
                "everywhere), 'exit' (absorbing: rho = 0 and u = cost there; solver.method "
                "'newton' or 'auto') or 'robin' (a leaky wall: mass leaves at the rate "
                "rate*rho paying cost, and eps du/dn = rate (cost - u); also 'picard') or "
                "'dirichlet' (rho = density and u = cost there, e.g. an entrance; as 'exit' "
                "otherwise); the "
                "mass that leaves is reported as mass_exited in summary.json; or 'periodic' "
                "(this side, the slave, takes the values of the opposite side `to`, the "
                "master: agents leaving through one side re-enter through the other; an "
                "interval, rectangle or box mesh, solver.method 'newton', 'auto' or "
                "'cole-hopf' (without congestion), beside 'no-flux' and 'robin' sides "
                "only); formulation "
                "'hjb-fp' only", choices=BOUNDARY_KINDS),
    "cost": Key(str, "0", "kind = 'exit', 'robin' or 'dirichlet': the exit cost / boundary "
                "value g(x, t) of u, a formula in x0, x1, x2, t and params"),
    "density": Key(str, "0", "kind = 'dirichlet': the boundary density rho_D(x, t) >= 0, a "
                   "formula in x0, x1, x2, t and params"),
    "rate": Key(float, 1.0, "kind = 'robin': the leak rate kappa (outward flux kappa*rho)",
                positive, "a positive number"),
    "to": Key(int, 0, "kind = 'periodic': the tag of the master side, the side opposite "
              "`tag` (2i+1 for 2i+2 and back; 0: that opposite side); the slave side `tag` "
              "is the master side translated by the box's length along x_i", _tag,
              TAG_EXPECT),
}


def _array_table(name: str, i: int, b: dict, keys: dict, source, inherit=None) -> dict:
    """Table i of the array of tables ``[[name]]`` validated against ``keys``: unknown keys
    refused, values coerced, defaults filled in (:data:`INHERIT`: the value of the same key in
    ``inherit``, a section; lists and dicts copied)."""
    for k in b:
        if k not in keys:
            raise ConfigError(f"{name}[{i}].{k}", _known(f"key of [[{name}]]", keys, k),
                              "unknown key", source)
    t = {}
    for k, spec in keys.items():
        key = f"{name}[{i}].{k}"
        if k in b:
            t[k] = _coerce(key, spec, b[k], source)
        elif spec.default is REQUIRED:
            raise ConfigError(key, "a value (this key is required)", None, source)
        elif spec.default is INHERIT:
            t[k] = inherit[k]
        else:
            t[k] = type(spec.default)(spec.default) if isinstance(
                spec.default, (list, dict)) else spec.default
    return t


# the keys of a [[boundary]] table each kind reads besides its tag
BOUNDARY_KIND_KEYS = {"no-flux": (), "exit": ("cost",), "robin": ("cost", "rate"),
                      "dirichlet": ("cost", "density"), "periodic": ("to",)}


def _boundary(raw, source) -> list:
    """Validate the ``[[boundary]]`` tables (a list of tables) against :data:`BOUNDARY`."""
    if not isinstance(raw, list) or not all(isinstance(b, dict) for b in raw):
        raise ConfigError("boundary", "an array of tables [[boundary]]", raw, source)
    out, tags = [], set()
    for i, b in enumerate(raw):
        t = _array_table("boundary", i, b, BOUNDARY, source)
        own = BOUNDARY_KIND_KEYS[t["kind"]]
        for k in ("cost", "density", "rate", "to"):    # another kind's key: it had no effect
            if k not in own and t[k] != BOUNDARY[k].default:
                raise ConfigError(f"boundary[{i}].{k}", f"{toml_value(BOUNDARY[k].default)} "
                                  f"(the default) for kind = '{t['kind']}' (it reads "
                                  + (", ".join(own) or "no key but tag") + ")", t[k], source)
        if t["tag"] in tags:
            raise ConfigError(f"boundary[{i}].tag", "a tag named by one [[boundary]] table "
                              "only", t["tag"], source)
        tags.add(t["tag"])
        out.append(t)
    return out


# ``[[population]]``: an array of tables, one per population (fem_mfc/populations.py, MODEL
# §2b).  Without them the problem has one population, given by [problem] and [rho0].
INHERIT = object()
POPULATION: dict[str, Key] = {
    "name": Key(str, "", "the population's name in outputs (fields rho_NAME, u_NAME, "
                "velocity_NAME; summary.json); letters, digits, '_' and '-' (default "
                "'popK', K its index from 0)"),
    "rho0": Key(dict, REQUIRED, "its initial density: an inline table with the keys of "
                "[rho0] (kind 'gaussian', 'mixture' or 'formula'), e.g. {kind = 'gaussian', "
                "mean = [-1.5, 0.0], std = 0.3}; normalised to `mass`"),
    "mass": Key(float, 1.0, "its mass (the integral of rho0 after normalisation)", positive,
                "a positive number"),
    "sigma": Key(float, INHERIT, "its noise sigma (default: [problem] sigma)", _sigma,
                 SIGMA_EXPECT),
    "Phi": Key(str, INHERIT, "its terminal cost Phi(x) (default: [problem] Phi)"),
    "V": Key(str, INHERIT, "its running potential V(x) (default: [problem] V)"),
    "G": Key(str, "0", "its own congestion G(rho) in its own density rho (coupling as "
             "[problem] coupling: G' for mftc, G/rho for mfg)"),
    "interaction": Key(list, [], "row k of the coupling matrix C: K numbers, C[k][l] the "
                       "cost per unit density of population l that population k pays "
                       "(c_k = sum_l C[k][l] rho_l in its HJB); empty: zeros.  C must be "
                       "symmetric for coupling 'mftc' (the planner's cost 1/2 rho.C rho)"),
}
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _populations(raw, cfg: dict, source) -> list:
    """Validate the ``[[population]]`` tables against :data:`POPULATION` and what they can be
    combined with (one line naming the key otherwise)."""
    if not isinstance(raw, list) or not raw or not all(isinstance(b, dict) for b in raw):
        raise ConfigError("population", "a non-empty array of tables [[population]]", raw,
                          source)
    pr = cfg["problem"]
    out = []
    for i, b in enumerate(raw):
        t = _array_table("population", i, b, POPULATION, source, inherit=pr)
        t["name"] = t["name"] or f"pop{i}"
        if not _NAME.match(t["name"]):
            raise ConfigError(f"population[{i}].name", "letters, digits, '_' and '-' only",
                              t["name"], source)
        t["rho0"] = _population_rho0(t["rho0"], f"population[{i}].rho0", cfg, source)
        out.append(t)
    names = [t["name"] for t in out]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise ConfigError(f"population[{i}].name", "a name no other population has", n,
                              source)
    K = len(out)
    for i, t in enumerate(out):
        row = t["interaction"]
        if row:
            _check_vector(f"population[{i}].interaction", row, source, K)
            t["interaction"] = [float(v) for v in row]
    if pr["coupling"] == "mftc":
        C = [t["interaction"] or [0.0] * K for t in out]
        for i in range(K):
            for j in range(i):
                if C[i][j] != C[j][i]:
                    raise ConfigError(f"population[{i}].interaction", "a symmetric coupling "
                                      f"matrix for coupling 'mftc' (C[{i}][{j}] = C[{j}][{i}]; "
                                      "coupling 'mfg' allows a non-symmetric game)",
                                      out[i]["interaction"], source)
    _refuse_with_populations(cfg, source)
    return out


def _population_rho0(given: dict, prefix: str, cfg: dict, source) -> dict:
    keys = SCHEMA["rho0"]
    for k in given:
        if k not in keys:
            raise ConfigError(f"{prefix}.{k}", _known("key of [rho0]", keys, k),
                              "unknown key", source)
    r = {}
    for k, spec in keys.items():
        if k in given:
            r[k] = _coerce(f"{prefix}.{k}", spec, given[k], source)
        else:
            r[k] = type(spec.default)(spec.default) if isinstance(
                spec.default, (list, dict)) else spec.default
    if r["kind"] == "file":
        raise ConfigError(f"{prefix}.kind", "'gaussian', 'mixture' or 'formula' for a "
                          "population", "file", source)
    _check_rho0(r, cfg, source, prefix)
    for key, bad, expected, got in _rho0_unread(r, prefix):
        if bad:
            raise ConfigError(key, expected, got, source)
    return r


def _defaults(section: str) -> dict:
    return {k: type(spec.default)(spec.default) if isinstance(spec.default, (list, dict))
            else spec.default for k, spec in SCHEMA[section].items()}


def _refuse_with_populations(cfg: dict, source):
    """What [[population]] tables do not combine with: one ConfigError naming the key."""
    s, pr = cfg["solver"], cfg["problem"]
    checks = (
        ("run.formulation", cfg["run"]["formulation"] != "hjb-fp",
         "'hjb-fp' with [[population]] tables", cfg["run"]["formulation"]),
        ("rho0", cfg["rho0"] != _defaults("rho0"), "no [rho0] section (or only its "
         "defaults, as in a written config.toml) with [[population]] tables (each population "
         "has its rho0)", "[rho0]"),
        ("problem.G", pr["G"] != "0", "'0' with [[population]] tables (give each population "
         "its G and its row of the interaction matrix)", pr["G"]),
        ("problem.H", pr["H"] != "quadratic", "'quadratic' with [[population]] tables",
         pr["H"]),
        ("solver.method", s["method"] not in ("auto", "newton"), "'newton' or 'auto' with "
         "[[population]] tables (the joint all-at-once Newton)", s["method"]),
        ("solver.initial_guess", s["initial_guess"] != "trivial", "'trivial' with "
         "[[population]] tables", s["initial_guess"]),
        ("discretisation.stabilisation", cfg["discretisation"]["stabilisation"] != "none",
         "'none' with [[population]] tables", cfg["discretisation"]["stabilisation"]),
        ("boundary.kind", any(b["kind"] != "no-flux" for b in cfg["boundary"]),
         "'no-flux' with [[population]] tables", "/".join(sorted(
             {b["kind"] for b in cfg["boundary"]} - {"no-flux"}))),
        ("exact.solution", cfg["exact"]["solution"] != "none", "'none' with [[population]] "
         "tables (the manufactured K-population solution is a Python API: "
         "fem_mfc.populations.ManufacturedPopulations)", cfg["exact"]["solution"]),
    )
    for key, bad, expected, got in checks:
        if bad:
            raise ConfigError(key, expected, got, source)


def _refuse_for_learning(cfg: dict, source):
    """Keys of the control problem that the learning formulations do not read: one ConfigError
    naming the key (they were ignored, and the run of another problem reported success)."""
    f, d = cfg["run"]["formulation"], cfg["discretisation"]
    terminal = ("the anchors' loss beta/2 |x - c_k|^2: [network] anchors, loss_weight"
                if f == "classifier" else "beta KL(rho(T) || N(0, s^2 I)): [generative] "
                "kl_weight, target_std")
    checks = (
        ("problem.Phi", cfg["problem"]["Phi"] != "0",
         f"'0' (the default) for formulation '{f}' (its terminal cost is {terminal})",
         cfg["problem"]["Phi"]),
        ("rho0", cfg["rho0"] != _defaults("rho0"), f"no [rho0] section (or only its defaults, "
         f"as in a written config.toml) for formulation '{f}' (the initial densities are the "
         "kernel density estimates of the data: [data] bandwidth)", "[rho0]"),
        ("discretisation.degree", d["degree"] != 1, f"1 for formulation '{f}' (P1 densities "
         "and values)", d["degree"]),
        ("discretisation.scheme", d["scheme"] != "backward-euler", f"'backward-euler' for "
         f"formulation '{f}' (its layers are implicit Fokker-Planck steps)", d["scheme"]),
        ("discretisation.stabilisation", d["stabilisation"] != "none", f"'none' for "
         f"formulation '{f}' (its positivity-preserving transport is network.transport = "
         "'eafe')", d["stabilisation"]),
        ("exact.solution", cfg["exact"]["solution"] != "none", f"'none' for formulation '{f}'",
         cfg["exact"]["solution"]),
    )
    if f == "generative":                # one population, the feedback flow, no anchors
        n, dn = cfg["network"], _defaults("network")
        checks += tuple(
            (f"network.{k}", n[k] != dn[k], f"{toml_value(dn[k])} (the default) for formulation "
             f"'generative' ({why})", n[k])
            for k, why in (("kind", "the flow is a feedback network; the dictionary network is "
                                    "a classifier's"),
                           ("anchors", "a classifier's class anchors; the flow's target is "
                                       "[generative] target_std"),
                           ("loss_weight", "a classifier's anchor loss; the flow's is "
                                           "[generative] kl_weight")))
    for key, bad, expected, got in checks:
        if bad:
            raise ConfigError(key, expected, got, source)


def _kept(cfg: dict, section: str, keys, why: str) -> tuple:
    """Checks (key, bad, expected, got) that the keys of ``[section]`` a run does not read
    keep their defaults: a key equal to its default stays accepted, as in a written
    config.toml, which holds every key."""
    d = _defaults(section)
    return tuple((f"{section}.{k}", not _is_default(f"{section}.{k}", cfg[section][k], d[k]),
                  f"{toml_value(d[k])} (the default) {why}", cfg[section][k]) for k in keys)


# points whose default is the origin in any dimension ([] or [0.0]): [0.0, 0.0] is the default
ORIGIN_KEYS = ("rho0.mean", "nls.x0", "nls.k0")


def _is_default(key: str, value, default) -> bool:
    if key in ORIGIN_KEYS and isinstance(value, list):
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0
                   for v in value)
    return value == default


# the sections every formulation reads ([hamiltonian]: by [problem] H, see below); the others
# are read by the formulations whose registry entry names them (fem_mfc/registry.py)
ALWAYS_READ = ("run", "mesh", "solver", "output", "hamiltonian")

# the [solver] keys each solve reads ([solver] petsc_options: every run's PETSc options)
_NEWTON = ("method", "rtol", "atol", "max_it", "initial_guess", "linear", "continuation",
           "step_solver")
SOLVER_KEYS = {
    "heat": (), "classifier": (), "generative": (),
    "nls": ("rtol", "atol", "max_it"),
    "qhd": ("method", "rtol", "atol", "max_it"),
    "cole-hopf": ("method", "rtol", "atol", "max_it", "step_solver"),
    ("hjb-fp", "auto"): _NEWTON, ("hjb-fp", "newton"): _NEWTON,
    ("hjb-fp", "picard"): ("method", "rtol", "atol", "picard_max_it", "relaxation"),
    ("hjb-fp", "cole-hopf"): ("method", "rtol", "atol", "max_it", "step_solver"),
}
_SOLVES = {"heat": "its steps are linear solves with PETSc's settings",
           "classifier": "its layers are linear solves with PETSc's settings; the trainer's "
           "are [training]'s", "generative": "its layers are linear solves with PETSc's "
           "settings; the trainer's are [training]'s",
           "nls": "each time step's Newton reads rtol, atol and max_it",
           "qhd": "its Newton reads method, rtol, atol and max_it",
           "cole-hopf": "the Cole-Hopf sweeps, with congestion the Newton of the pair"}


def _solver_unread(cfg: dict) -> tuple:
    """The [solver] keys the configured solve does not read: another formulation's, or (for
    'hjb-fp' with an explicit method) another method's.  [solver] petsc_options reach every
    solver through PETSc's options (their prefixes are the runs')."""
    f, s = cfg["run"]["formulation"], cfg["solver"]
    m = s["method"]
    if f == "hjb-fp":
        own = SOLVER_KEYS[f, m]
        why = (f"for solver.method = '{m}' (it reads " + ", ".join(own) + ")")
    else:
        own = SOLVER_KEYS[f]
        why = (f"for formulation '{f}' ({_SOLVES[f]}; PETSc options go to "
               "[solver] petsc_options)")
    keys = [k for k in SCHEMA["solver"] if k not in own and k != "petsc_options"]
    if f == "cole-hopf":           # the formulation is the method: 'cole-hopf' says so
        return ((("solver.method", m not in ("auto", "cole-hopf"), "'auto' or 'cole-hopf' "
                  "for formulation 'cole-hopf' (it is the Cole-Hopf method; formulation "
                  "'hjb-fp' takes the others)", m),) + _kept(cfg, "solver", keys, why))
    return _kept(cfg, "solver", keys, why)


# the [rho0] keys each kind reads (the exact solutions read a Gaussian's mean and std)
RHO0_KIND_KEYS = {"gaussian": ("mean", "std"), "mixture": ("means", "stds", "weights"),
                  "formula": ("formula",), "file": ("file",)}


def _rho0_unread(r: dict, prefix: str) -> tuple:
    """The keys of the other kinds of initial density in a [rho0] table ``r`` (also a
    population's, keys under ``prefix``)."""
    d, own = _defaults("rho0"), RHO0_KIND_KEYS[r["kind"]]
    why = f"for {prefix}.kind = '{r['kind']}' (it reads {', '.join(own)})"
    return tuple((f"{prefix}.{k}", not _is_default(f"rho0.{k}", r[k], d[k]),
                  f"{toml_value(d[k])} (the default) {why}", r[k])
                 for k in d if k != "kind" and k not in own)


# the [mesh] keys each kind reads (refine: the gmsh and box kinds; a file has one resolution)
_BOX, _GMSH = ("cells", "lower", "upper", "refine", "grading", "focus"), ("radius", "h", "refine")
MESH_KIND_KEYS = {"interval": _BOX, "rectangle": _BOX + ("diagonal",), "box": _BOX,
                  "disk": _GMSH, "annulus": _GMSH + ("inner_radius",), "lshape": _GMSH,
                  "ball": _GMSH, "file": ("file", "refine")}


def _refuse_unread(cfg: dict, source):
    """Keys the configured run does not read, set to something other than their default: one
    ConfigError naming the key (each was ignored, and a copied config ran "successfully"
    with a key that had no effect)."""
    f = cfg["run"]["formulation"]
    reads = registry.get(f).sections
    checks = ()
    for section in SCHEMA:        # the sections of the other formulations, key by key
        if section not in ALWAYS_READ and section not in reads:
            checks += _kept(cfg, section, SCHEMA[section], f"for formulation '{f}' (it reads "
                            f"no [{section}] section)")
    if "rho0" in reads:
        checks += _rho0_unread(cfg["rho0"], "rho0")
        if cfg["exact"]["solution"] == "manufactured":
            checks += _kept(cfg, "rho0", ("mean", "std"), "for exact.solution = "
                            "'manufactured' (it sets rho0 itself; remove [exact] to start "
                            "from this density)")
    checks += _solver_unread(cfg)
    kind = cfg["mesh"]["kind"]
    own = MESH_KIND_KEYS[kind]
    checks += _kept(cfg, "mesh", [k for k in SCHEMA["mesh"] if k != "kind" and k not in own],
                    f"for mesh.kind = '{kind}' (it reads " + ", ".join(own) + ")")
    checks += _hamiltonian_unread(cfg)
    if f == "heat":               # the uncontrolled flow of rho0: no cost, no congestion
        why = ("for formulation 'heat' (the uncontrolled Fokker-Planck flow of rho0 reads "
               "T, sigma, steps and params)")
        checks += _kept(cfg, "problem", ("V", "Phi", "G", "coupling"), why)
        checks += _kept(cfg, "discretisation", ("stabilisation",), "for formulation 'heat' "
                        "(its Galerkin steps read degree and scheme)")
    if f == "nls":
        checks += _nls_unread(cfg)
    if f == "qhd":
        checks += _qhd_unread(cfg)
    if f in ("classifier", "generative"):
        checks += _data_unread(cfg) + _network_unread(cfg)
    if f == "generative":         # one population: no accuracies, baselines or particle check
        checks += _kept(cfg, "training", CLASSIFIER_TRAINING_KEYS, "for formulation "
                        "'generative' (a classifier's key: the flow trains no torch baseline, "
                        "measures no accuracy on a fresh sample and pushes no particles)")
    for key, bad, expected, got in checks:
        if bad:
            raise ConfigError(key, expected, got, source)


def _qhd_unread(cfg: dict) -> tuple:
    """What each QHD signature does not read: the control signature's Bohm coefficient is
    sigma^4/2 (not qhd.hbar), the quantum signature's is -hbar^2/2 (not sigma) and its
    discrete-gradient steps have no time scheme; neither has the monotone scheme."""
    signature = cfg["qhd"]["signature"]
    checks = _kept(cfg, "discretisation", ("stabilisation",), "for formulation 'qhd' (the "
                   "Galerkin QHD system; the monotone scheme is formulation 'hjb-fp''s)")
    if signature == "control":
        return checks + _kept(cfg, "qhd", ("hbar",), "for qhd.signature = 'control' (its "
                              "Bohm coefficient is sigma^4/2: [problem] sigma)")
    return checks + _kept(cfg, "problem", ("sigma",), "for qhd.signature = 'quantum' (its "
                          "Bohm coefficient is -hbar^2/2: [qhd] hbar)") + _kept(
        cfg, "discretisation", ("scheme",), "for qhd.signature = 'quantum' (its steps are "
        "the discrete-gradient scheme)")


# the [data] keys of one data set (all read dataset, test_fraction, seed and bandwidth)
DATASET_KEYS = {"moons": ("n_samples", "noise"), "circles": ("n_samples", "noise", "factor"),
                "spirals": ("n_samples", "noise", "turns"),
                "gaussians": ("n_samples", "noise", "classes"), "csv": ("file",)}


def _data_unread(cfg: dict) -> tuple:
    """The [data] keys of the other data sets; a CSV file has no generator: no n_samples,
    noise or fresh sample of it."""
    name = cfg["data"]["dataset"]
    own = DATASET_KEYS[name]
    other = dict.fromkeys(k for keys in DATASET_KEYS.values() for k in keys if k not in own)
    checks = _kept(cfg, "data", other, f"for data.dataset = '{name}' (it reads "
                   f"{', '.join(own)} besides test_fraction, seed and bandwidth)")
    fresh = cfg["training"]["fresh"]
    if name == "csv" and cfg["run"]["formulation"] == "classifier":
        checks += (("training.fresh", fresh not in (0, SCHEMA["training"]["fresh"].default),
                    "0 or the default for data.dataset = 'csv' (a file has no generator to "
                    "draw a fresh sample from)", fresh),)
    return checks


# the [training] keys only the classifier reads: its torch baselines (baseline itself may say
# false: the generative flow trains none), its fresh sample and its particle check
CLASSIFIER_TRAINING_KEYS = ("node", "epochs", "patience", "seeds", "lr", "hidden", "fresh",
                            "particles")

# the [network] keys of the dictionary network, and of its random-tanh ridges
DICTIONARY_KEYS = ("dictionary", "ridges", "weight_decay", "ridge_scale", "dictionary_seed")
RIDGE_KEYS = ("ridges", "ridge_scale", "dictionary_seed")


def _network_unread(cfg: dict) -> tuple:
    """The [network] keys of the other network class: the dictionary's with the feedback
    network, the feedback velocity's (delta, smoothing, its element) with the dictionary
    network (a = B(x) theta: P1, no velocity regularisation), the ridges' with a dictionary
    other than random-tanh."""
    n = cfg["network"]
    checks = ()
    if n["anchors"]:               # given anchors: no circle of default ones
        checks += _kept(cfg, "network", ("anchor_radius",), "with network.anchors given "
                        "(the radius of the default anchors, used when anchors is empty)")
    if cfg["run"]["formulation"] == "generative":       # no anchors at all (refused above)
        checks += _kept(cfg, "network", ("anchor_radius",), "for formulation 'generative' (a "
                        "classifier's anchors; the flow's target is [generative] target_std)")
    method = resolve_training(cfg)[1]
    if method != "sweeps":         # Newton-CG and L-BFGS take their steps by line search
        checks += _kept(cfg, "training", ("relaxation",), f"for training.method = '{method}' "
                        "(the relaxation of the sweeps; Newton-CG and L-BFGS take their steps "
                        "by line search)")
    if n["kind"] == "feedback":
        if n["velocity"] == "DG0":      # grad a = 0 for piecewise constant velocities
            checks += _kept(cfg, "network", ("smoothing",), "for network.velocity = 'DG0' "
                            "(it smooths P1 velocities: grad a = 0 for DG0)")
        return checks + _kept(cfg, "network", DICTIONARY_KEYS, "for network.kind = "
                              "'feedback' (a key of the dictionary network, kind = "
                              "'dictionary')")
    checks += _kept(cfg, "network", ("delta", "smoothing", "velocity"), "for network.kind = "
                    "'dictionary' (a key of the feedback network's velocity: the dictionary's "
                    "a = B(x) theta is P1 and regularised by weight_decay)")
    if n["dictionary"] != "random-tanh":
        checks += _kept(cfg, "network", RIDGE_KEYS, f"for network.dictionary = "
                        f"'{n['dictionary']}' (a key of the random-tanh ridges)")
    return checks


# the [hamiltonian] keys each named H reads (delta: the regularisation of q != 2)
HAMILTONIAN_KEYS = {"weighted": ("weight",), "power": ("q", "delta"), "anisotropic": ("A",),
                    "congestion": ("alpha",)}


def _hamiltonian_unread(cfg: dict) -> tuple:
    """The [hamiltonian] keys of the Hamiltonians other than [problem] H (the quadratic
    default and a formula read none)."""
    h, hc = cfg["problem"]["H"], cfg["hamiltonian"]
    own = HAMILTONIAN_KEYS.get(h, ())
    reads = (f"it reads {', '.join(own)}" if own else "the quadratic H reads no [hamiltonian] "
             "key" if h == "quadratic" else "a formula H reads no [hamiltonian] key; give its "
             "numbers in [problem] params")
    if h == "power" and hc["q"] == 2:       # |p|^2/2 itself: delta regularises q != 2 only
        own, reads = ("q",), "with q = 2 it reads q only: delta regularises q != 2"
    shown = toml_value(h) if h in HAMILTONIANS else "a formula"
    return _kept(cfg, "hamiltonian", [k for k in SCHEMA["hamiltonian"] if k not in own],
                 f"for problem.H = {shown} ({reads})")


# the keys of [nls] each initial wave function reads besides hbar, kappa, the integrator and
# its nonlinearity (the ground state is the imaginary-time flow's: normalised to `mass`)
NLS_INITIAL_KEYS = {"soliton": ("eta", "wavenumber", "x0"), "gaussian": ("x0", "s0", "k0"),
                    "ground-state": ("mass", "gs_tau", "gs_tol", "gs_max_steps")}


def _nls_unread(cfg: dict) -> tuple:
    """What formulation 'nls' does not read besides the sections of the other formulations
    ([rho0]: the initial state is nls.initial's): the [nls] keys of the other initial wave
    functions, [problem] sigma and Phi (its scale is hbar, it has no terminal cost) and the
    time scheme of the control problem."""
    initial = cfg["nls"]["initial"]
    own = NLS_INITIAL_KEYS[initial]
    other = [k for keys in NLS_INITIAL_KEYS.values() for k in keys if k not in own]
    checks = _kept(cfg, "nls", dict.fromkeys(other), f"for nls.initial = '{initial}' (it "
                   f"reads {', '.join(own)})")
    checks += _kept(cfg, "problem", ("sigma", "Phi"), "for formulation 'nls' (its scale is "
                    "nls.hbar; an initial-value problem has no terminal cost)")
    return checks + _kept(cfg, "discretisation", ("scheme", "stabilisation"), "for "
                          "formulation 'nls' (its time stepper is nls.integrator)")


def _typename(t) -> str:
    if isinstance(t, tuple):
        return " or ".join(_typename(x) for x in t)
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            list: "an array", dict: "a table"}.get(t, t.__name__)


def _coerce(key: str, spec: Key, value, source):
    t = spec.type
    numbers = t is float or (isinstance(t, tuple) and float in t and int not in t)
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)        # an integer for a number (training.tol = 1 was refused)
    if t is int and isinstance(value, bool):
        raise ConfigError(key, _typename(t), value, source)
    if not isinstance(value, t):
        raise ConfigError(key, _typename(t), value, source)
    if t is float and not math.isfinite(value):
        raise ConfigError(key, "a finite number", value, source)
    if isinstance(value, float):
        value += 0.0                # -0.0 is 0.0 (numpy's normal(scale=-0.0): "scale < 0")
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(key, "one of " + ", ".join(repr(c) for c in spec.choices), value, source)
    if spec.check is not None and not spec.check(value):
        raise ConfigError(key, spec.expect or "a valid value", value, source)
    return value


def validate(raw: dict, source: str | None = None, base_dir: Path | None = None) -> dict:
    """Check a raw TOML table against :data:`SCHEMA`; return it with all defaults filled in."""
    if not isinstance(raw, dict):
        raise ConfigError("<top>", "a TOML table", type(raw).__name__, source)
    _check_integers(raw, "", source)
    for section in raw:
        if section not in SCHEMA and section not in ("boundary", "population"):
            raise ConfigError(section, _known("section", [*SCHEMA, "boundary",
                                                          "population"], section),
                              "unknown section", source)
    cfg: dict[str, dict] = {}
    for section, keys in SCHEMA.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(section, "a table [" + section + "]", given, source)
        given = _renamed(section, given, source)
        for k in given:
            if k not in keys:
                raise ConfigError(f"{section}.{k}", _known(f"key of [{section}]", keys, k),
                                  "unknown key", source)
        out = {}
        for k, spec in keys.items():
            key = f"{section}.{k}"
            if k in given:
                v = _coerce(key, spec, given[k], source)
                if spec.path and v:
                    p = Path(v)
                    if not p.is_absolute() and base_dir is not None:
                        p = (base_dir / p)
                    try:           # a file, or a .bp folder (adios4dolfinx)
                        found = p.exists()
                        v = str(p.resolve()) if found else v
                    except (OSError, ValueError) as e:   # ENAMETOOLONG, ELOOP, a NUL
                        raise ConfigError(key, "an existing file (" + (getattr(
                            e, "strerror", None) or "not a valid path") + ")", v,
                            source) from None
                    if not found:
                        raise ConfigError(key, "an existing file", v, source)
            elif spec.default is REQUIRED:
                raise ConfigError(key, "a value (this key is required)", None, source)
            else:
                v = spec.default if not isinstance(spec.default, (list, dict)) else \
                    type(spec.default)(spec.default)
            out[k] = v
        cfg[section] = out
    mesh, given = cfg["mesh"], raw.get("mesh", {})
    if mesh["kind"] in ("interval", "box"):     # corners not given: −1 and 1 in every
        for k, x in (("lower", -1.0), ("upper", 1.0)):   # coordinate of the mesh's dimension
            if k not in given:
                mesh[k] = [x] * gdim(cfg)
    cfg["boundary"] = _boundary(raw.get("boundary", []), source)
    _cross_checks(cfg, source)
    if "population" in raw:           # absent: one population, the config as before
        cfg["population"] = _populations(raw["population"], cfg, source)
    _check_sigma(cfg, source)         # after the populations: 'auto' takes Newton with them
    _check_monotone(cfg, source)      # after the populations, which refuse the scheme itself
    _refuse_unread_coupling(cfg, source)
    return cfg


def _refuse_unread_coupling(cfg: dict, source):
    """[problem] coupling where nothing depends on rho: no congestion G, an H free of rho, one
    population (the NLS's g is G' whatever the coupling; it refuses 'mfg' with a G)."""
    pr, f = cfg["problem"], cfg["run"]["formulation"]
    if pr["coupling"] == "mftc" or f not in ("hjb-fp", "cole-hopf", "qhd", "nls"):
        return                        # heat: refused with the control keys; learning: mftc
    # G zero whatever its parameters ("0", "0*rho"), not one that vanishes for some: a
    # study of G = c*rho**2 through c = 0 keeps its coupling (test_solver_robustness.py)
    from .expressions import vanishes
    try:
        no_G = not pr["G"].strip() or vanishes(pr["G"], "problem.G", "rho")
    except ConfigError:               # parameters or coordinates in it
        no_G = False
    h = pr["H"]
    rho_free = h in ("quadratic", "weighted", "power", "anisotropic") or (
        h not in HAMILTONIANS and not re.search(r"\brho\b", h))
    if f == "nls" and no_G:
        why = "formulation 'nls' (its nonlinearity g = kappa rho is the Hamiltonian coupling)"
    elif f != "nls" and no_G and rho_free and "population" not in cfg:
        why = "a problem without congestion (G = 0 and an H free of rho: nothing to couple)"
    else:
        return
    raise ConfigError("problem.coupling", f'"mftc" (the default) for {why}', pr["coupling"],
                      source)


INT_MIN, INT_MAX = -2 ** 63, 2 ** 63 - 1


def _check_integers(value, key: str, source) -> None:
    """Every integer of the raw config within TOML's 64 bits (tomllib reads any size: T =
    1e400 written as digits was an OverflowError in float(), exit 1)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_integers(v, f"{key}.{k}" if key else str(k), source)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_integers(v, f"{key}[{i}]", source)
    elif isinstance(value, int) and not isinstance(value, bool) \
            and not INT_MIN <= value <= INT_MAX:
        raise ConfigError(key, "an integer from -2^63 to 2^63 - 1 (TOML integers are 64-bit)",
                          f"{str(value)[:12]}... ({len(str(abs(value)))} digits)", source)


def _renamed(section: str, given: dict, source) -> dict:
    """``given`` (the keys of one section) with the old names of :data:`RENAMED` mapped to the
    new ones, one deprecation line per old name; ConfigError if both names are given."""
    renamed = {old: new for old, new in RENAMED.get(section, {}).items() if old in given}
    if not renamed:
        return given
    out = dict(given)
    for old, new in renamed.items():
        if new in given:
            raise ConfigError(f"{section}.{old}", f"either '{old}' (deprecated) or '{new}' (its "
                              f"new name) in [{section}], not both", None, source)
        warning(f"{source + ': ' if source else ''}[{section}] {old} is deprecated: use {new} "
                "(same meaning)")
        out[new] = out.pop(old)
    return out


def _check_vector(key, v, source, n=None):
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
               for x in v):
        raise ConfigError(key, "an array of finite numbers", v, source)
    if n is not None and len(v) != n:
        raise ConfigError(key, f"an array of {n} numbers", v, source)


def gdim(cfg: dict) -> int:
    """Geometric dimension implied by the mesh section."""
    kind = cfg["mesh"]["kind"]
    return {"interval": 1, "rectangle": 2, "disk": 2, "annulus": 2, "lshape": 2,
            "box": 3, "ball": 3}.get(kind, len(cfg["mesh"]["lower"]))


# the smallest time step T/steps: its inverse must be a finite number (T = 5e-324 made the
# heat step tau = 0 and its form crashed, exit 1)
TAU_MIN = 1e-300


def _cross_checks(cfg: dict, source):
    pr = cfg["problem"]
    if not pr["T"] / pr["steps"] >= TAU_MIN:
        raise ConfigError("problem.T", f"a horizon whose time step T/steps is at least "
                          f"{TAU_MIN:g} (here {pr['T'] / pr['steps']:.3g})", pr["T"], source)
    m = cfg["mesh"]
    if m["kind"] in ("interval", "rectangle", "box"):
        d = gdim(cfg)
        for k in ("lower", "upper"):
            _check_vector(f"mesh.{k}", m[k], source, d)
        if any(lo >= hi for lo, hi in zip(m["lower"], m["upper"])):
            raise ConfigError("mesh.upper", "each entry larger than mesh.lower", m["upper"], source)
        # DOLFINx refuses a side shorter than machine epsilon ("Rectangle seems to have zero
        # width": a RuntimeError, exit 1), and a side at round-off of its corners has no cells
        if any(not hi - lo >= 1e-12 * max(1.0, abs(lo), abs(hi))
               for lo, hi in zip(m["lower"], m["upper"])):
            raise ConfigError("mesh.upper", "each entry larger than mesh.lower by at least "
                              "1e-12 x max(1, |lower|, |upper|)", m["upper"], source)
        if m["focus"]:
            _check_vector("mesh.focus", m["focus"], source, d)
            if not all(lo <= c <= hi for lo, c, hi in zip(m["lower"], m["focus"], m["upper"])):
                raise ConfigError("mesh.focus", "a point of the mesh (each entry from "
                                  "mesh.lower to mesh.upper)", m["focus"], source)
            if not m["grading"]:
                raise ConfigError("mesh.focus", "[] (the default) for mesh.grading = 0 (a "
                                  "uniform mesh has no focus; set mesh.grading > 0)",
                                  m["focus"], source)
    if m["kind"] == "file" and not m["file"]:
        raise ConfigError("mesh.file", "a mesh file when mesh.kind = 'file'", None, source)
    if m["kind"] == "annulus" and not m["inner_radius"] < m["radius"]:
        raise ConfigError("mesh.inner_radius", "less than mesh.radius", m["inner_radius"], source)
    for k, v in cfg["problem"]["params"].items():
        if k in RESERVED_NAMES or k in _function_names():
            raise ConfigError(f"problem.params.{k}", "a name that does not shadow a coordinate, "
                              "variable, constant or function of the formulas ("
                              + ", ".join(RESERVED_NAMES) + ", exp, log, ...)", k, source)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ConfigError(f"problem.params.{k}", "a finite number", v, source)
    entry = registry.get(cfg["run"]["formulation"])
    ex = cfg["exact"]["solution"]
    if ex != "none" and ex not in entry.exact:
        raise ConfigError("exact.solution", "'none'" + "".join(f" or '{e}'" for e in entry.exact)
                          + f" for formulation '{entry.name}'", ex, source)
    _check_rho0(cfg["rho0"], cfg, source)
    for k, v in cfg["solver"]["petsc_options"].items():
        if not isinstance(v, (str, int, float, bool)):
            raise ConfigError(f"solver.petsc_options.{k}", "a string, number or boolean", v, source)
        check_petsc_option(k, v, source)
    _check_hamiltonian(cfg, source)
    _check_periodic(cfg, source)
    _check_exits(cfg, source)
    _check_checkpoint(cfg, source)
    if cfg["run"]["formulation"] in ("classifier", "generative"):
        resolve_training(cfg, source)
        _refuse_for_learning(cfg, source)
        if cfg["mesh"]["kind"] != "file" and gdim(cfg) < 2:   # the data live in the plane
            raise ConfigError("mesh.kind", "a 2D or 3D mesh for the learning formulations "
                              "(the data are points of the plane; it crashed in 1D)",
                              cfg["mesh"]["kind"], source)
        for i, c in enumerate(cfg["network"]["anchors"]):   # the count and length: on the mesh
            if not isinstance(c, list):
                raise ConfigError(f"network.anchors[{i}]", "an array of numbers (a point)", c,
                                  source)
            _check_vector(f"network.anchors[{i}]", c, source)
        dcfg = cfg["data"]
        if dcfg["dataset"] == "gaussians" and dcfg["classes"] > dcfg["n_samples"] // 2:
            # a class needs points to train and to test on (2^63 - 1 classes drew empty ones:
            # a ValueError from scikit-learn, exit 1)
            raise ConfigError("data.classes", "at most n_samples/2 = "
                              f"{dcfg['n_samples'] // 2} classes (each needs points to train "
                              "and to test on)", dcfg["classes"], source)
        if cfg["data"]["dataset"] == "csv" and not str(cfg["data"]["file"]).strip():
            raise ConfigError("data.file", "a CSV file (header x1,x2,label or x1,...,xd,label) for "
                              "data.dataset = 'csv'", None, source)
    _refuse_unread(cfg, source)


def _check_rho0(r: dict, cfg: dict, source, pre: str = "rho0"):
    """The cross checks of a [rho0] table (also a population's rho0, keys under ``pre``)."""
    if r["kind"] == "gaussian" and r["mean"]:    # its length on a mesh file: at the mesh
        _check_vector(f"{pre}.mean", r["mean"], source,
                      gdim(cfg) if cfg["mesh"]["kind"] != "file" else None)
    if r["kind"] == "mixture":
        if not r["means"]:
            raise ConfigError(f"{pre}.means", "a non-empty list of means for a mixture", None,
                              source)
        n = len(r["means"])
        for i, mu in enumerate(r["means"]):
            if not isinstance(mu, list):
                raise ConfigError(f"{pre}.means[{i}]", "an array of numbers", mu, source)
            _check_vector(f"{pre}.means[{i}]", mu, source)
        for k in ("stds", "weights"):
            _check_vector(f"{pre}.{k}", r[k], source, n)
            if any(x <= 0 for x in r[k]):
                raise ConfigError(f"{pre}.{k}", "positive numbers", r[k], source)
    if r["kind"] == "formula" and not r["formula"].strip():
        raise ConfigError(f"{pre}.formula", "a formula when rho0.kind = 'formula'", None,
                          source)
    if r["kind"] == "file" and not r["file"]:
        raise ConfigError(f"{pre}.file", "a file when rho0.kind = 'file'", None, source)


def resolve_training(cfg: dict, source=None) -> tuple[str, str]:
    """(transport, method) of a learning config with 'auto' resolved; ConfigError for the
    combinations that do not exist (see the keys network.transport and training.method)."""
    net, tr = cfg["network"], cfg["training"]
    form = cfg["run"]["formulation"]
    eafe_ok = form in ("classifier", "generative")
    transport = net["transport"]
    if transport == "auto":
        transport = "eafe" if eafe_ok else "galerkin"
    if transport == "eafe" and not eafe_ok:
        raise ConfigError("network.transport", f"'galerkin' or 'auto' for formulation "
                          f"'{form}'", net["transport"], source)
    if transport == "eafe":
        if net["velocity"] != "P1":
            raise ConfigError("network.velocity", "'P1' for network.transport = 'eafe' (the "
                              "edge fluxes average nodal velocities)", net["velocity"], source)
        if not cfg["problem"]["sigma"] > 0:
            raise ConfigError("problem.sigma", "a positive number for network.transport = "
                              "'eafe' (the Scharfetter-Gummel flux needs diffusion)",
                              cfg["problem"]["sigma"], source)
    method = tr["method"]
    if method == "auto":
        method = "newton" if transport == "eafe" else "sweeps"
    if method != "sweeps" and transport != "eafe":
        raise ConfigError("training.method", "'sweeps' or 'auto' with the Galerkin transport "
                          "(the Newton and L-BFGS trainers work on the reduced functional of "
                          "the EAFE transport: network.transport = 'eafe')", method, source)
    return transport, method


def _check_monotone(cfg: dict, source):
    """The monotone scheme's discretisation and solver, at load: P1, backward Euler, Newton
    or Picard (they were refused once the mesh was built and the problem set up)."""
    d = cfg["discretisation"]
    if d["stabilisation"] != "monotone" or cfg["run"]["formulation"] != "hjb-fp":
        return
    if d["degree"] != 1:
        raise ConfigError("discretisation.degree", "1 for stabilisation = 'monotone' (a nodal "
                          "M-matrix scheme)", d["degree"], source)
    if d["scheme"] != "backward-euler":
        raise ConfigError("discretisation.scheme", "'backward-euler' for stabilisation = "
                          "'monotone' (a Crank-Nicolson step is positive only under a "
                          "time-step restriction)", d["scheme"], source)
    if cfg["solver"]["method"] == "cole-hopf":
        raise ConfigError("solver.method", "'newton', 'picard' or 'auto' with stabilisation = "
                          "'monotone' (Cole-Hopf solves the Galerkin scheme)",
                          cfg["solver"]["method"], source)


def _check_periodic(cfg: dict, source):
    """Periodic sides: opposite sides of an interval/rectangle/box (``to`` filled in), the
    Galerkin HJB–FP system by Newton, beside no-flux and leaky walls only."""
    tables = [(i, b) for i, b in enumerate(cfg["boundary"]) if b["kind"] == "periodic"]
    if not tables:
        return
    kind = cfg["mesh"]["kind"]
    if kind not in ("interval", "rectangle", "box"):
        raise ConfigError(f"boundary[{tables[0][0]}].kind", "a kind other than 'periodic' on "
                          f"mesh.kind = '{kind}' (periodic sides: an interval, rectangle or "
                          "box)", "periodic", source)
    d = gdim(cfg)
    named = {b["tag"] for b in cfg["boundary"]}
    for i, b in tables:
        t = b["tag"]
        if not 1 <= t <= 2 * d:
            raise ConfigError(f"boundary[{i}].tag", f"a side of the {kind} (1 to {2 * d}) "
                              "for kind = 'periodic'", t, source)
        opposite = t + 1 if t % 2 else t - 1
        if b["to"] == 0:
            b["to"] = opposite
        if b["to"] != opposite:
            raise ConfigError(f"boundary[{i}].to", f"the side opposite tag {t}, {opposite} "
                              "(periodic sides of a box are opposite sides)", b["to"], source)
        if opposite in named:
            raise ConfigError(f"boundary[{i}].to", f"a side no other [[boundary]] table names "
                              f"(tag {opposite} is the master of the periodic side {t})",
                              b["to"], source)
    f, s = cfg["run"]["formulation"], cfg["solver"]
    checks = (
        ("run.formulation", f != "hjb-fp", "'hjb-fp' with periodic sides", f),
        ("solver.method", s["method"] == "picard" or (s["method"] == "cole-hopf"
                                                      and cfg["problem"]["G"] != "0"),
         "'newton' or 'auto' with periodic sides ('cole-hopf' without congestion)",
         s["method"]),
        ("exact.solution", cfg["exact"]["solution"] != "none", "'none' with periodic sides "
         "(the periodic manufactured solution is a Python API: "
         "fem_mfc.exact.PeriodicManufactured)", cfg["exact"]["solution"]),
    )
    for key, bad, expected, got in checks:
        if bad:
            raise ConfigError(key, expected, got, source)
    for i, b in enumerate(cfg["boundary"]):     # the table at fault, by index and tag (it
        if b["kind"] in ("exit", "dirichlet"):  # said "boundary.kind ... exit/dirichlet")
            j, p = tables[0]
            raise ConfigError(f"boundary[{i}].kind", f"'no-flux', 'robin' or 'periodic' for "
                              f"tag {b['tag']} beside the periodic side boundary[{j}] (tag "
                              f"{p['tag']})", b["kind"], source)


def _check_exits(cfg: dict, source):
    """Exits and leaky walls: the HJB–FP system (Galerkin or monotone) by Newton (exits) or
    Newton and Picard (leaky walls), no exact solution."""
    kinds = {b["kind"] for b in cfg["boundary"]} - {"no-flux", "periodic"}
    if not kinds:
        return
    f, s = cfg["run"]["formulation"], cfg["solver"]
    methods = (("newton", "auto") if kinds & {"exit", "dirichlet"}
               else ("newton", "auto", "picard"))
    why = None
    if f != "hjb-fp":
        why = f"formulation '{f}'"
    elif s["method"] not in methods:
        why = f"solver.method = '{s['method']}'"
    elif s["initial_guess"] == "cole-hopf":
        why = "solver.initial_guess = 'cole-hopf'"
    elif cfg["exact"]["solution"] != "none":
        why = f"exact.solution = '{cfg['exact']['solution']}'"
    if why:       # the conditions the boundary needs, all of them (the one broken is named)
        allowed = "'no-flux'"
        if s["method"] == "picard" and why.startswith("solver.method"):
            kinds &= {"exit", "dirichlet"}          # the leaky walls are Picard's too
            allowed = "'no-flux' or 'robin'"
        raise ConfigError("boundary.kind", f"{allowed} with {why} (exits and leaky walls: "
                          "formulation 'hjb-fp', solver.method 'newton' or 'auto' — leaky "
                          "walls also 'picard' —, no Cole-Hopf guess and no exact solution)",
                          "/".join(sorted(kinds)), source)


def _check_checkpoint(cfg: dict, source):
    """``[output] checkpoint_every`` where a run writes no checkpoint: refused by name (QHD,
    NLS, Picard and the Cole-Hopf paths ignored it silently, and a killed long run could not
    resume)."""
    every = cfg["output"]["checkpoint_every"]
    if not every:
        return
    f, m = cfg["run"]["formulation"], cfg["solver"]["method"]
    if f in ("classifier", "generative", "qhd", "heat", "nls"):
        return      # the trainers, the QHD Newton solve and the time steppers write them
    why = (f"formulation '{f}'" if f != "hjb-fp" else
           f"solver.method = '{m}'" if m not in ("newton", "auto") else None)
    if why:
        raise ConfigError("output.checkpoint_every", f"0 for {why} (checkpoints are written by "
                          "the HJB-FP Newton solve — formulation 'hjb-fp', solver.method "
                          "'newton' or 'auto' —, the QHD solves, the trainers of "
                          "'classifier' and 'generative' and the time steppers of 'heat' and "
                          "'nls')", every, source)


def _check_hamiltonian(cfg: dict, source):
    """A non-quadratic H: only the Galerkin HJB–FP system solved by Newton or Picard (the
    Cole–Hopf, QHD and NLS equivalences and the monotone scheme need H = |p|^2/2)."""
    pr = cfg["problem"]
    h = pr["H"]
    if not h.strip():
        raise ConfigError("problem.H", "'quadratic', a named kind or a formula", h, source)
    if h == "quadratic":
        return
    f, s = cfg["run"]["formulation"], cfg["solver"]
    why = None            # (what needs H = |p|^2/2, what takes this H instead)
    if f != "hjb-fp":
        why = f"formulation '{f}'", "formulation 'hjb-fp', solver.method 'newton'"
    elif s["method"] == "cole-hopf":
        why = "solver.method = 'cole-hopf'", "solver.method 'newton'"
    elif s["initial_guess"] == "cole-hopf":
        why = "solver.initial_guess = 'cole-hopf'", "solver.initial_guess 'trivial'"
    elif cfg["discretisation"]["stabilisation"] == "monotone":
        # (it said "use formulation 'hjb-fp', solver.method 'newton'" to a run that had both)
        why = ("discretisation.stabilisation = 'monotone'",
               "the Galerkin scheme, discretisation.stabilisation 'none'")
    elif cfg["exact"]["solution"] == "lq-gaussian":
        why = "exact.solution = 'lq-gaussian'", "exact.solution 'none'"
    if why:
        raise ConfigError("problem.H", f"'quadratic' for {why[0]} (it needs H = |p|^2/2; "
                          f"use {why[1]})", h, source)
    hc = cfg["hamiltonian"]
    if h == "power" and hc["q"] != 2 and not hc["delta"] > 0:
        raise ConfigError("hamiltonian.delta", "a positive number for H = 'power' with q != 2 "
                          "(d2H/dp2 is singular at p = 0)", hc["delta"], source)
    if h == "anisotropic" and cfg["mesh"]["kind"] != "file":
        d = gdim(cfg)
        A = hc["A"]
        if not (len(A) == d and all(isinstance(r, list) and len(r) == d
                                     and all(isinstance(v, (str, int, float))
                                             and not isinstance(v, bool) for v in r)
                                     for r in A)):
            raise ConfigError("hamiltonian.A", f"{d} rows of {d} formulas or numbers for "
                              "H = 'anisotropic'", A, source)


def _function_names() -> tuple:
    from .expressions import FUNCTIONS
    return tuple(FUNCTIONS)


def _no_congestion(cfg: dict) -> bool:
    """Is the config's congestion G identically zero (and no [[population]] tables, no
    monotone scheme: what makes 'auto' choose Cole-Hopf)?  A G in x0..x2 counts as a
    congestion (no mesh here to parse it with)."""
    from .expressions import vanishes
    pr = cfg["problem"]
    try:
        zero = vanishes(pr["G"], "problem.G", "rho", params=pr["params"])
    except ConfigError:
        zero = False
    return (zero and "population" not in cfg
            and cfg["discretisation"]["stabilisation"] == "none")


def _check_sigma(cfg: dict, source):
    """σ = 0 where the formulation divides by ε = σ²/2 (Cole–Hopf χ = e^{−u/2ε}, the QHD
    control signature's Bohm coefficient σ⁴/2) or is the noise alone (heat: it crashed in the
    form, "missing an integration domain")."""
    if cfg["problem"]["sigma"] > 0:
        return
    f, s = cfg["run"]["formulation"], cfg["solver"]
    why = None
    if f == "cole-hopf":
        why = "formulation 'cole-hopf' (chi = exp(-u/2eps))"
    elif f == "heat":
        why = "formulation 'heat' (the flow of the noise alone: with sigma = 0 nothing moves)"
    elif f == "qhd" and cfg["qhd"]["signature"] == "control":
        why = "the QHD control signature (Bohm coefficient sigma^4/2)"
    elif f == "hjb-fp" and (s["method"] == "cole-hopf" or s["initial_guess"] == "cole-hopf"):
        why = ("solver.method = '" + s["method"] + "'" if s["initial_guess"] != "cole-hopf"
               else "solver.initial_guess = 'cole-hopf'") + " (Cole-Hopf divides by eps)"
    elif (f == "hjb-fp" and s["method"] == "auto" and cfg["problem"]["H"] == "quadratic"
          and _no_congestion(cfg)):
        # 'auto' solves a congestion-free problem by Cole-Hopf; with a congestion it takes
        # Newton, which takes sigma = 0 as it is (the noise continuation needs sigma > 0; the
        # coupling's applies; coarse Galerkin meshes oscillate: the monotone scheme solves it)
        why = ("solver.method = 'auto' without congestion (Cole-Hopf, which divides by eps;"
               " method = 'newton' solves sigma = 0)")
    if why:
        raise ConfigError("problem.sigma", f"a positive number for {why}", 0.0, source)


# -- PETSc options from a config file: no files, no processes ---------------------------------
# Options given on the command line are the user's own and stay free; options in a config file
# (which may come from someone else) must not write or read files, open windows or sockets,
# start debuggers or load Python modules outside fem_mfc.
PETSC_VIEWER_TYPES = ("ascii", "binary", "draw", "hdf5", "vtk", "vtu", "socket", "saws",
                      "glvis", "adios", "adios2", "matlab", "mathematica", "exodusii", "cgns",
                      "python", "pythonviewer", "image", "stdout", "stderr")
PETSC_FORBIDDEN_NAMES = (
    "log_view", "log_trace", "log_all", "log_summary", "log_mpe", "log_perfstubs",
    "log_view_memory", "log_view_gpu_time", "options_monitor", "options_file",
    "options_file_yaml", "options_string_yaml", "history", "malloc_dump", "malloc_view",
    "malloc_log", "objects_dump", "memory_view", "on_error_attach_debugger",
    "start_in_debugger", "stop_for_debugger", "debugger", "debugger_pause", "debugger_ranks",
    "on_error_emacs", "display", "viewer_binary_filename", "viewer_socket_machine",
    "viewer_socket_port", "viewer_draw", "x_virtual", "python", "saws_port",
    "saws_root", "saws_options", "mpiuni_allow_multiprocess_launch", "draw_save",
    "draw_save_movie", "draw_save_final_image", "vec_view_draw",
)
_PETSC_NAME = re.compile(r"^-?[A-Za-z0-9_]+$")


def check_petsc_option(name: str, value, source=None) -> None:
    """Refuse a config-file PETSc option that names a file, a window, a socket, a debugger or
    a Python module outside ``fem_mfc.`` (ConfigError naming ``solver.petsc_options.NAME``).

    Allowed: solver settings (``snes_type = "newtonls"``, ``ksp_rtol = 1e-8``) and monitors
    or views to standard output (``snes_monitor = ""``, ``ksp_view = "::ascii_info"``).
    """
    key = f"solver.petsc_options.{name}"
    if not isinstance(name, str) or not _PETSC_NAME.match(name):
        raise ConfigError(key, "an option name of letters, digits and '_'", name, source)
    n = name.lstrip("-").lower()
    if n in PETSC_FORBIDDEN_NAMES or any(n.endswith("_" + f) for f in PETSC_FORBIDDEN_NAMES
                                         if f not in ("python", "history", "display")) \
            or "draw" in n or "debugger" in n or n.endswith("_lg") or "_lg_" in n:
        raise ConfigError(key, "no option that writes files, opens windows or starts other "
                          "programs in a config file (give it on the command line if you "
                          "mean it)", value, source)
    if not isinstance(value, str):
        return
    v = value.strip()
    if n.endswith("python_type") or n.endswith("_python"):
        if not v.startswith("fem_mfc."):
            raise ConfigError(key, "a Python type inside fem_mfc ('fem_mfc.module.Class')",
                              value, source)
        return
    if n == "info" and v and not v.startswith(":"):
        raise ConfigError(key, "'' or ':classes' (no file name) in a config file", value,
                          source)
    low = v.lower()
    parts = low.split(":")
    bad = None
    if "/" in v or "\\" in v or "\x00" in v:
        bad = "a path"
    elif parts[0] in PETSC_VIEWER_TYPES and parts[0] not in ("ascii", "stdout"):
        bad = f"a '{parts[0]}' viewer"
    elif len(parts) > 1 and parts[1].strip():
        bad = f"the file '{v.split(':')[1]}'"
    elif len(parts) > 4:
        bad = "a malformed viewer"
    if bad:
        raise ConfigError(key, "a value that writes nowhere but standard output in a config "
                          f"file (this one names {bad}; viewers may be '', 'ascii' or "
                          "'::format')", value, source)


def _known(what: str, names, given: str) -> str:
    """"a known WHAT: a, b, c" with the likeliest one meant, for a misspelt name."""
    import difflib
    names = [str(n) for n in names]
    close = difflib.get_close_matches(str(given), names, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"a known {what}{hint}: " + ", ".join(names)


def load(path: str | Path) -> dict:
    """Read and validate a TOML config file (UTF-8, with or without a byte-order mark).

    A file without any key (empty, or only comments and blank lines) is refused: it would
    silently run the default problem."""
    p = Path(path)
    try:
        found = p.is_file()
        if not found and p.is_dir():
            raise UserError(f"{path}: is a folder (expected a TOML config file)")
        if not found and p.exists():
            raise UserError(f"{path}: not a regular file (expected a TOML config file)")
    except (OSError, ValueError) as e:      # a name too long for the file system, a NUL
        raise UserError(f"{path}: cannot open the config file ("
                        f"{getattr(e, 'strerror', None) or 'not a valid path'})") from None
    if not found:
        raise UserError(f"{path}: config file not found (expected a TOML file)")
    try:
        raw = tomllib.loads(p.read_bytes().decode("utf-8-sig"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file (expected TOML)") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the config file ({e.strerror})") from None
    if not raw:
        raise UserError(f"{path}: the config file is empty (expected TOML sections such as "
                        "[run] and [mesh]; `fem-mfc schema` lists them, demos/*.toml are "
                        "examples)")
    return validate(raw, source=str(path), base_dir=p.resolve().parent)


def from_dict(raw: dict) -> dict:
    """Validate a config given as a Python dict (paths relative to the working directory)."""
    return validate(raw, source="<dict>", base_dir=Path.cwd())


_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n",
                 "\f": "\\f", "\r": "\\r"}


def toml_string(v: str) -> str:
    """A TOML basic string holding ``v``: backslash, quote and every control character
    escaped (a multi-line title was written with a raw newline, and the config.toml that
    should reproduce the run was not valid TOML)."""
    return '"' + "".join(_TOML_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or
                                                   ord(c) == 0x7F else c) for c in v) + '"'


def dumps(cfg: dict) -> str:
    """Serialise a validated config to TOML (the reproducible copy stored with the results)."""
    lines = []

    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return toml_string(v)
        if isinstance(v, float):
            return repr(v)
        if isinstance(v, int):
            return str(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{toml_string(str(k))} = {val(x)}" for k, x in v.items()) + "}"
        raise TypeError(v)

    for section, table in cfg.items():
        if isinstance(table, list):           # [[boundary]]: an array of tables
            for t in table:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {val(v)}" for k, v in t.items()]
                lines.append("")
            continue
        lines.append(f"[{section}]")
        for k, v in table.items():
            lines.append(f"{k} = {val(v)}")
        lines.append("")
    return "\n".join(lines)


def _shown(default) -> str:
    """A default as it is written in a TOML file (``true``, ``"auto"``), for the reference:
    Python's ``True`` and ``'auto'`` copied into a config were a parse error or not TOML's."""
    from .errors import toml_value
    return "{}" if default == {} else toml_value(default)


def schema_markdown() -> str:
    """The schema as a Markdown reference (docs/config.md)."""
    out = ["# Config reference", "",
           "Generated from `fem_mfc/config.py` by `python3 -m fem_mfc schema`.", "",
           "## Sections each formulation reads", "",
           "Every formulation reads [run], [mesh], [solver] and [output], and [hamiltonian] "
           "through [problem] H.  A key of a section the formulation does not read, or of "
           "another kind (mesh kind, H, nls.initial, network kind), is refused unless it keeps "
           "its default (exit 2: it would have no effect).", "",
           "| formulation | also reads |", "|---|---|"]
    out += [f"| `{e.name}` | " + ", ".join(f"[{s}]" for s in e.sections) + " |"
            for e in registry.ENTRIES]
    out.append("")
    for section, keys in SCHEMA.items():
        out += [f"## [{section}]", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        formerly = {new: old for old, new in RENAMED.get(section, {}).items()}
        for k, spec in keys.items():
            d = "required" if spec.default is REQUIRED else _shown(spec.default)
            doc = spec.doc + (" — one of " + ", ".join(f"`{c}`" for c in spec.choices)
                              if spec.choices else "")
            if spec.expect:
                doc += f" ({spec.expect})"
            if k in formerly:
                doc += f"; formerly `{formerly[k]}` (deprecated, still accepted)"
            out.append(f"| `{k}` | {_typename(spec.type)} | `{d}` | {doc} |")
        out.append("")
    out += ["## [[boundary]]", "",
            "An array of tables, one per tagged part of the boundary; facets not named are "
            "no-flux walls.", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    for k, spec in BOUNDARY.items():
        d = "required" if spec.default is REQUIRED else _shown(spec.default)
        doc = spec.doc + (" — one of " + ", ".join(f"`{c}`" for c in spec.choices)
                          if spec.choices else "")
        out.append(f"| `{k}` | {_typename(spec.type)} | `{d}` | {doc} |")
    out += ["", "## [[population]]", "",
            "An array of tables, one per population (several interacting populations, e.g. two "
            "crowds crossing; MODEL §2b). Without them the problem has one population, given by "
            "[problem] and [rho0]. With them: formulation 'hjb-fp', solver.method 'newton' or "
            "'auto', initial_guess 'trivial', quadratic H, no [rho0] section, [problem] G = "
            "'0', no-flux walls only (no exits, Dirichlet, leaky or periodic sides), no "
            "stabilisation, no exact solution (each refused with exit "
            "status 2); checkpoints and --restart work as for one population. [problem] T, "
            "steps, coupling and params apply to all; the "
            "rows `interaction` form the coupling matrix C.", "",
            "| key | type | default | meaning |", "|---|---|---|---|"]
    for k, spec in POPULATION.items():
        d = ("required" if spec.default is REQUIRED else "[problem] " + k
             if spec.default is INHERIT else _shown(spec.default))
        out.append(f"| `{k}` | {_typename(spec.type)} | `{d}` | {spec.doc} |")
    out += ["", "## Renamed keys", "",
            "Old names that still load, with a deprecation warning on stderr: the value goes to "
            "the new key (same meaning). Giving both names in one section is an error.", "",
            "| section | old name | new name |", "|---|---|---|"]
    out += [f"| `[{section}]` | `{old}` | `{new}` |"
            for section, names in RENAMED.items() for old, new in names.items()]
    out.append("")
    return "\n".join(out)


# -- resources: an estimate before anything is allocated ----------------------------------------
# Memory per DOF and per time step of the run paths: measured with the all-at-once Newton path
# (the largest: every layer's rho and u, the space-time Jacobian, the sweep preconditioner's
# per-step LU factors) on a congested 2D P1 problem, 40 steps, peak RSS growth from 2401 to
# 9409 to 16641 DOFs: 1.93-1.97 KB per DOF-step.  Below 100k space-time unknowns Newton takes
# a direct LU of the whole system instead (up to ~9 KB per DOF-step, < 1 GB in all).
BYTES_PER_DOF_STEP = 2048
BYTES_PER_DOF = 4096            # mesh, function spaces, per-step-independent matrices
_GMSH_MEASURE = {  # kind -> (measure of the domain / h^d, vertices per (measure / h^d)), in
    # ratios R/h (R^2 or h^2 alone overflow: h = 1e300 was estimated an unbounded mesh)
    "disk": (lambda m, h: math.pi * (m["radius"] / h) ** 2, 1.16),
    "annulus": (lambda m, h: math.pi * ((m["radius"] / h) ** 2
                                        - (min(m["inner_radius"], m["radius"]) / h) ** 2), 1.16),
    "lshape": (lambda m, h: 3.0 * (m["radius"] / h) ** 2, 1.16),
    "ball": (lambda m, h: 4.0 / 3.0 * math.pi * (m["radius"] / h) ** 3, 1.5),
}


def estimate_dofs(cfg: dict, refine: int | None = None) -> float:
    """Estimated number of scalar Lagrange DOFs of the configured mesh and degree (a float:
    may be ``inf`` for absurd inputs; nothing is allocated)."""
    m = cfg["mesh"]
    k = cfg.get("discretisation", {}).get("degree", 1)
    level = m.get("refine", 0) if refine is None else refine
    scale = 2.0 ** min(level, 1000) if level < 1000 else math.inf
    kind = m["kind"]
    if kind in ("interval", "rectangle", "box"):
        d = {"interval": 1, "rectangle": 2, "box": 3}[kind]
        n = float(m.get("cells", 16)) * scale
        return (n * k + 1.0) ** d if n < 1e300 else math.inf
    if kind in _GMSH_MEASURE:
        measure, per = _GMSH_MEASURE[kind]
        d = 3 if kind == "ball" else 2
        h = m["h"] / scale
        try:
            return per * measure(m, h) * k ** d + 1.0
        except (OverflowError, ZeroDivisionError):
            return math.inf
    if kind == "file" and m.get("file"):
        try:       # a node line of a text mesh file holds ~40 bytes: a rough upper bound
            size = os.path.getsize(m["file"]) if os.path.isfile(m["file"]) else 0
        except OSError:
            size = 0
        return max(size / 40.0, 1.0) * k ** gdim(cfg)
    return 1.0


def estimate_resources(cfg: dict) -> dict:
    """Memory estimate of a run before anything is allocated:
    ``{"bytes": B, "dofs": N, "steps": S, "bytes_per_dof_step": C, "lu_bytes": L}`` with
    B = N·S·C + N·BYTES_PER_DOF + L (floats; ``inf`` when the numbers overflow), L the factors
    of a space-time LU the run takes whatever its size (:func:`_space_time_lu_bytes`)."""
    dofs = estimate_dofs(cfg)
    steps = cfg["problem"]["steps"]
    try:
        lu = _space_time_lu_bytes(cfg, dofs, steps)
        b = float(dofs) * float(steps) * BYTES_PER_DOF_STEP + float(dofs) * BYTES_PER_DOF + lu
    except OverflowError:
        b = lu = math.inf
    learning = _learning_bytes(cfg, dofs, steps)
    return {"bytes": b + sum(learning.values()), "dofs": dofs, "steps": steps,
            "bytes_per_dof_step": BYTES_PER_DOF_STEP, "lu_bytes": lu, "learning": learning}


# The learning runs' arrays of points: each point of the data set, of the fresh sample, of the
# particle check and of the generated samples is held at every layer (positions in up to 3D
# and work arrays: 32 B per point and layer); the torch baselines keep hidden activations of
# every training point and layer for the backward pass (and Adam's moments of the weights).
BYTES_PER_POINT_LAYER = 32


def _learning_bytes(cfg: dict, dofs: float, steps: int) -> dict:
    """Memory of the learning formulations' sizes, by key (``{}`` elsewhere): n_samples,
    fresh, particles and samples points at every layer, the baselines' activations (hidden
    x n_samples x layers), a dictionary's ridges at the mesh nodes and the data points, the
    class densities of a 'gaussians' data set.  Points of 10^9 were a MemoryError (exit 1)."""
    f = cfg["run"]["formulation"]
    if f not in ("classifier", "generative"):
        return {}
    layers = float(steps) + 1.0
    per_point = BYTES_PER_POINT_LAYER * layers
    d, t, net = cfg["data"], cfg["training"], cfg["network"]
    n = float(d["n_samples"])
    out = {"data.n_samples": n * per_point}
    if f == "classifier":         # the generative flow has no fresh sample, particles or
        out["training.fresh"] = float(t["fresh"]) * per_point      # baselines
        out["training.particles"] = float(t["particles"]) * per_point
    else:
        out["generative.samples"] = float(cfg["generative"]["samples"]) * per_point
    baseline = t["baseline"] and f == "classifier"
    if baseline:                  # each seed's runs and their records (seeds = 2^63 - 1:
        out["training.seeds"] = float(t["seeds"]) * 4096.0     # a list of them, MemoryError)
    if baseline:                  # named after the factor further above its default
        key = "training.hidden" if t["hidden"] / 16 > n / 1000 else "data.n_samples"
        out[key] = out.get(key, 0.0) + float(t["hidden"]) * (n + 3.0 * layers) * per_point
    if net["kind"] == "dictionary" and net["dictionary"] == "random-tanh":
        out["network.ridges"] = float(net["ridges"]) * (float(dofs) + n) * 3 * 8.0
    if d["dataset"] == "gaussians":
        out["data.classes"] = float(d["classes"]) * float(dofs) * layers * 4 * 8.0
    return out


def _space_time_lu_bytes(cfg: dict, dofs: float, steps: int) -> float:
    """The factors of the LU of the whole space-time matrix, where a run takes it whatever
    its size: the QHD control signature (no effective sweep preconditioner) and
    ``[solver] linear = "lu"``.  It factorises like a problem one dimension higher: 2D
    4,225 dofs × 50 steps ≈ 3.4 GB of factors, 16,641 × 50 ≈ 19 GB
    (:func:`fem_mfc.solvers.auto.nd_cost`; 2D 1,089 × 16: 0.10 GB, a QHD run's peak 0.38 GB
    with 0.25 GB before the solve; at 16,641 × 50 MUMPS asked for 10 GB more than it had)."""
    f = cfg["run"]["formulation"]
    lu = ((f == "qhd" and cfg["qhd"]["signature"] == "control")
          or (f == "hjb-fp" and cfg["solver"]["linear"] == "lu"))
    if not lu or not (dofs > 0 and steps > 0):
        return 0.0
    if float(dofs) * float(steps) > 1e12:
        raise OverflowError
    from .solvers.auto import estimates
    return 2.0 * estimates(int(dofs), int(steps), gdim(cfg))["lu_bytes"]   # + MUMPS' 100 %
    # workspace relaxation (ICNTL(14), fem_mfc.solvers.newton.LU_DEFAULTS)


def available_memory() -> int:
    """Bytes of memory available on this machine (MemAvailable; physical memory otherwise)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _fmt_bytes(b: float) -> str:
    if not math.isfinite(b):
        return "an unbounded amount"
    for unit in ("B", "KB", "MB", "GB", "TB", "PB", "EB"):
        if b < 1024 or unit == "EB":
            return f"{b:.3g} {unit}"
        b /= 1024
    return f"{b:.3g} EB"


def check_resources(cfg: dict, limit_bytes: float | None = None, force: bool = False) -> dict:
    """Refuse a run whose memory estimate exceeds ``limit_bytes`` (default: the memory
    available now) with a ConfigError naming the dominant key and the estimate; returns the
    estimate.  ``force=True`` (the CLI's ``--force``) skips the refusal."""
    est = estimate_resources(cfg)
    limit = available_memory() if limit_bytes is None else limit_bytes
    if force or est["bytes"] <= limit:
        return est
    m = cfg["mesh"]
    learning = est.get("learning") or {}
    big = max(learning, key=learning.get, default=None)
    if big is not None and learning[big] > est["bytes"] - sum(learning.values()):
        sec, k = big.split(".")
        raise ConfigError(big, "sizes of the learning run that fit in memory: estimate "
                          f"{_fmt_bytes(est['bytes'])}, {_fmt_bytes(learning[big])} of it for "
                          f"{big} > limit {_fmt_bytes(limit)} (use --force to run anyway)",
                          cfg[sec][k])
    if est["steps"] >= est["dofs"]:
        key = "problem.steps"
    elif m.get("refine", 0) > 0:
        key = "mesh.refine"
    else:
        key = {"file": "mesh.file"}.get(m["kind"], "mesh.cells" if m["kind"] in
                                        ("interval", "rectangle", "box") else "mesh.h")
    dofs = est["dofs"]
    raise ConfigError(key, f"a problem that fits in memory: estimate {_fmt_bytes(est['bytes'])}"
                      f" = {dofs:.3g} DOFs x {est['steps']:.3g} steps x "
                      f"{BYTES_PER_DOF_STEP} B"
                      + (f" + {_fmt_bytes(est['lu_bytes'])} for the LU of the space-time matrix"
                         if est["lu_bytes"] else "") + f" > limit {_fmt_bytes(limit)} "
                      "(use --force to run anyway)", cfg["problem"]["steps"] if key ==
                      "problem.steps" else m.get(key.split(".")[1]))
