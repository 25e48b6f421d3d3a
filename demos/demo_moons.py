# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Two moons: training a deep network by solving PDEs
#
# A residual network with N layers, $x_{n+1} = x_n + \tau\, a(t_n, x_n)$, is the time
# discretisation of the ODE $\dot x = a(t, x)$ with depth as time.  Training it on a data set
# means choosing the velocity field $a$ so that points of class $k$ end near an anchor $c_k$
# while moving as little as possible.  For the whole *distribution* of the data this is a
# mean-field optimal control problem (MODEL §1–§2): with class densities $\rho_k(t,x)$,
#
# $$ J(a) = \sum_k \int \tfrac{\beta}{2}|x-c_k|^2 \rho_k(T)
#          + \int_0^T\!\!\int \tfrac12 |a|^2 \rho \quad\text{s.t.}\quad
#          \partial_t \rho_k + \nabla\cdot(\rho_k a) = \varepsilon \Delta \rho_k . $$
#
# The network is **label-blind**: one shared velocity $a$ moves all classes (at inference it
# does not know the label).  The optimality system is a forward Fokker–Planck equation per
# class, a backward adjoint (HJB-type) equation per class, and the control law
# $a = -\sum_k \rho_k \nabla u_k / \rho$.  We discretise it on an unstructured gmsh disk
# with P1 finite elements, backward Euler in depth and the edge-averaged (Scharfetter–Gummel)
# transport `fem_mfc/learning/eafe.py`, which keeps every density non-negative at any mesh
# Péclet number.  All equations come from ONE discrete Lagrangian: J is a function of the
# velocities alone (the reduced functional, `fem_mfc/learning/reduced.py`), its gradient is
# one forward FP sweep and one backward adjoint sweep, its Hessian-vector products one more
# pair of (linearised) sweeps, and truncated Newton–CG (`fem_mfc/learning/trainer.py`)
# solves the optimality condition to a relative residual of 1e-6 in about ten Newton steps.
# Run with `--quick` for a small version.

# %%
from pathlib import Path

import _common as demo

args = demo.parse_args("results/demo")
HERE = Path(__file__).resolve().parent

# %% [markdown]
# ## Configuration
# `demos/moons.toml`: 1000 points of two moons (noise 0.1), half held out for testing;
# features standardised; class densities by a Gaussian KDE (bandwidth 0.15) on a disk of
# radius 3.5 (h = 0.12, about 3200 P1 dofs); 20 layers on [0, 1]; anchors $c_{0,1} = \mp 2 e_1$.
# The noise is σ = 0.35; the mesh Péclet number $\max|a| h / 2\varepsilon$ reaches about
# 2.5, beyond what a Galerkin transport resolves, but the EAFE fluxes upwind smoothly there and
# min ρ stays ≥ 0 (the report gives it).  `[training] method = "newton"`, tol = 1e-6.

# %%
# --quick: a coarse mesh and 6 layers, still trained to convergence (Newton needs ~10 steps)
cfg = demo.load_config(HERE / "moons.toml", demo.QUICK if args.quick else None)

# %% [markdown]
# ## Train, evaluate, compare
# The runner trains the PDE network (J decreases monotonically; it stops when the relative
# residual of the optimality condition is below the tolerance), runs the trained ResNet on the
# held-out points, pushes particles through the stochastic flow to check the PDE densities,
# and trains torch baselines on the same objective with the same anchor head: a ResNet of the
# same depth (20 blocks, width 16) and a neural ODE (an MLP a(x, t) through 5 RK4 steps), with
# early stopping on a plateau of their objective (reached well before the cap `epochs`; the
# two train side by side in worker processes, one per core).  Every model is also
# measured on a fresh 20k-point sample of the generator, next to the Bayes-optimal ceiling.

# %%
summary = demo.run(cfg, args.out, "demos/moons.toml" + (" --quick" if args.quick else ""))

# %% [markdown]
# ## What to look at
# `report.md` in the output folder embeds the decision regions of both networks, the class
# densities flowing through the layers (snapshots and an animation), particle trajectories,
# the training history and the comparison table (test and fresh-sample accuracy, kinetic
# energy, empirical objective, J, CPU and wall time, iterations, converged; the Bayes ceiling),
# followed by sentences computed from it that say where the PDE network loses.
# The two networks reach the same accuracy (99.4% test each).  The torch ResNet minimises the
# empirical objective on the training points directly and ends slightly lower on it; the PDE network
# minimises the population objective J of the KDE-smoothed class densities with noise σ, which
# acts as a regulariser (its decision boundary follows the gap between the moons).  J also
# satisfies the discrete value identity $J = \sum_k \int u_k(0)\rho_k(0) + \dots$ to round-off,
# a check of the discrete duality between the forward and backward sweeps.  `method =
# "sweeps"` in `[training]` runs the old damped forward–backward sweeps (a preconditioned
# gradient method: linear convergence, ~100 sweeps for the same tolerance).

# %% [markdown]
# ## Apply the trained network to new points
# The run saves the trained network in `model/` of its output folder (the mesh and the
# velocity of each layer, the standardisation and the class labels): `fem-mfc predict
# results/demo POINTS.csv` labels the points of a CSV file given in the data's units, and so
# does `fem_mfc.learning.saved` from Python, here on a fresh sample of the generator.

# %%
from mpi4py import MPI

from sklearn.datasets import make_moons

from fem_mfc.learning import saved

X_new, y_new = make_moons(n_samples=500, noise=0.1, random_state=7)
p = saved.load(args.out).predict(X_new)          # labels as text, final features, …
if MPI.COMM_WORLD.rank == 0:
    print(f"saved model on 500 new points: accuracy {(p.labels == y_new.astype(str)).mean():.3f}")
