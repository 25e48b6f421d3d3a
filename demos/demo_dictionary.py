# ---
# jupytext:
#   text_representation:
#     extension: .py
#     format_name: percent
# ---

# %% [markdown]
# # Dictionary networks: finite width, shared weights θ(t)
#
# The feedback network of `demo_moons.py` has an arbitrary velocity field per layer.  A real
# network has finitely many weights: $a(t,x) = B(x)\theta(t) = \sum_j \theta_j(t) b_j(x)$ with a
# fixed dictionary $b_j$ and weight decay $\frac\lambda2\int|\theta|^2dt$ (MODEL §2).  The
# mean-field maximum principle (E–Han–Li) in PDE form is, per class $k$,
#
# $$ \partial_t\rho_k + \nabla\cdot(\rho_k B\theta) = \varepsilon\Delta\rho_k,\quad
#    -\partial_t u_k - \varepsilon\Delta u_k - B\theta\cdot\nabla u_k = 0,\quad
#    u_k(T) = \Phi_k,\quad \lambda\theta(t) + \sum_k\int\rho_k B^T\nabla u_k\,dx = 0 . $$
#
# All three come from one discrete Lagrangian.  Here the transport is the edge-averaged
# (Scharfetter–Gummel) scheme of `fem_mfc/learning/eafe.py` (ρ ≥ 0 at the mesh Péclet numbers
# ~10 these dictionaries produce), J(θ) is a reduced functional with the adjoint gradient
# λτθⁿ + Σ_i B(x_i)ᵀ∂J/∂aⁿ_i and exact Hessian-vector products, and training is truncated
# Newton–CG (`EdgeDictionaryNetwork` in `fem_mfc/learning/dictionary.py`, `[training] method
# = "newton"`, relative residual 1e-6).  `transport = "galerkin"`, `method = "sweeps"` run the
# Galerkin forms of `fem_mfc/forms/dictionary.py` by the method of successive approximations.
# Three dictionaries: random tanh ridges $e_i\tanh(w_j\cdot x+\beta_j)$, affine $Wx + c$ and
# rotations $\Omega x$, $\Omega\in so(2)$.  The trained θ is saved to `weights.npz` and reloaded
# as a plain NumPy ResNet.

# %%
from pathlib import Path

import numpy as np

import _common as demo
from fem_mfc.learning import data
from fem_mfc.learning.numpy_resnet import NumpyResNet

args = demo.parse_args("results/demo_dictionary")
HERE = Path(__file__).resolve().parent
OUT = Path(args.out)
QUICK = {"mesh": {"h": 0.35}, "problem": {"steps": 6},
         "training": {"max_sweeps": 20, "baseline": False}}

# %% [markdown]
# ## Three networks
# * `tanh`: 16 random ridges (32 weights per layer) on two moons;
# * `affine`: $a = W(t)x + c(t)$ (6 weights per layer) on two moons — an affine flow cannot
#   untangle the moons, so its accuracy stays near that of a linear classifier;
# * `rotation`: $a = \omega(t) J x$ (1 weight per layer) on "rotated blobs": two Gaussian blobs
#   at $\pm e_1$ whose anchors are at $\pm 2e_2$ — the network must turn the plane by about 90°.

# %%
RUNS = {
    "tanh": {},
    # (ridges = None: the affine and rotation dictionaries have no ridges to count)
    "affine": {"network": {"dictionary": "affine", "weight_decay": 0.5, "ridges": None}},
    "rotation": {"network": {"dictionary": "rotation", "weight_decay": 0.1, "ridges": None,
                             "anchors": [[0.0, -2.0], [0.0, 2.0]]},
                 "data": {"dataset": "gaussians", "classes": 2, "noise": 0.4},
                 "run": {"title": "Rotated blobs with a rotation dictionary a = omega(t) J x"}},
}

# %%
from mpi4py import MPI

from fem_mfc.pipeline import run_config

results = {}
for name, over in RUNS.items():
    o = {s: dict(kv) for s, kv in over.items()}
    if args.quick:
        for s, kv in QUICK.items():
            o.setdefault(s, {}).update(kv)
    cfg = demo.load_config(HERE / "dictionary.toml", o)
    s = run_config(cfg, OUT / name, config_path=f"demos/dictionary.toml [{name}]")
    # reload the weights as a NumPy ResNet and classify the held-out points without DOLFINx
    net = NumpyResNet.load(OUT / name / "weights.npz")
    ds = data.load(cfg["data"], 2)
    acc = float((net.predict(ds.X_test) == ds.y_test).mean())
    results[name] = (s, acc)
    if MPI.COMM_WORLD.rank == 0:
        print(f"{name:9s} ({s['dictionary']}, {s['weights_per_layer']} weights/layer): test "
              f"accuracy {s['test_accuracy']:.3f} (NumPy ResNet from weights.npz: {acc:.3f}), "
              f"J = {s['J']:.4g}, {s['method']} iterations {s['sweeps']}, residual "
              f"{s['residual']:.2e}, converged {s['converged']}"
              + (f"; torch baseline {s['baseline']['test_accuracy']:.3f}"
                 if "baseline" in s else ""))

# %% [markdown]
# ## What to look at
# Each folder (`tanh/`, `affine/`, `rotation/`) holds `report.md` with decision regions,
# trajectories, densities through the layers and the training history, and `weights.npz`.
# The NumPy ResNet reloaded from `weights.npz` gives exactly the accuracy of the PDE side (the
# same B(x) is written once, `fem_mfc/learning/numpy_resnet.py:columns`, and rendered both in
# UFL and NumPy).  For the rotation network, $\tau\sum_n\theta^n$ is the total angle turned.

# %%
if MPI.COMM_WORLD.rank == 0:
    th = np.array(results["rotation"][0]["theta"]).ravel()
    print(f"rotation: total angle tau * sum theta = {th.sum() * results['rotation'][0]['tau']:.3f} "
          f"rad")
