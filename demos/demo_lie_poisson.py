# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Lie–Poisson Hamilton–Jacobi integrators for a rotation network's weights
#
# A *rotation network* moves features by $\dot x = \theta(t)\times x$, $\theta\in so(3)$, and is
# trained with anisotropic weight decay $\sum_j \lambda_j\theta_j^2/2$ and the terminal loss
# $\tfrac1N\sum_i \tfrac12|x_i(T)-c_{k(i)}|^2$ (class anchors).  Pontryagin's principle gives
# costates $p_i$ and the control $\theta = -\Lambda^{-1}M$ with the momentum map
# $M=\sum_i x_i\times p_i$ (the so(3)\* part of $\mu=\sum_i p_ix_i^\top$).  The weights obey
# the **free rigid body** $\dot M = M\times\Lambda^{-1}M$ (MODEL §5): a Lie–Poisson system whose
# Casimir $|M|^2$ and energy $\tfrac12 M^\top\Lambda^{-1}M$ (the control cost rate) are conserved.
#
# We (1) train the network by shooting on $M(0)$, (2) integrate its weight dynamics over long
# times with Lie–Poisson Hamilton–Jacobi (LPHJ, Ge–Marsden) integrators of orders 1, 2, 4 and
# with implicit midpoint, RK4 and scipy's DOP853, and (3) draw the work–precision diagram.
#
# Run: `bin/fem-env python3 demos/demo_lie_poisson.py [--quick] [--out DIR]`.

# %%
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

from fem_mfc.integrators import examples as ex  # noqa: E402
from fem_mfc.integrators import get_integrator  # noqa: E402
from fem_mfc.integrators.weight_space import RotationNetwork, make_point_cloud  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--out", default="results/demo_lie_poisson", help="output folder")
parser.add_argument("--quick", action="store_true", help="small sizes (< 20 s)")
args, _ = parser.parse_known_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
QUICK = args.quick
summary: dict = {"quick": QUICK}

# %% [markdown]
# ## 1. Train the rotation network
# Two Gaussian blobs in $\mathbb R^3$; the anchors are the blob means rotated by one radian, so a
# rotation can fit them.  Shooting solves $M_N(M_0) = \sum_i x_i(T)\times p_i(T)$ for
# $M_0\in\mathbb R^3$, with the reduced dynamics stepped by LPHJ2 and the particles rotated by
# the same group elements.

# %%
x0, labels, anchors = make_point_cloud(n_per_class=10 if QUICK else 40, seed=0)
net = RotationNetwork(x0, anchors[labels], lam=(0.05, 0.1, 0.2), T=1.0)
t0 = time.perf_counter()
res = net.train(nsteps=40, integrator="lphj2")
summary["training"] = {
    "particles": int(net.N), "M0": res.M0.tolist(), "loss_before": res.loss_before,
    "loss_after": res.loss_after, "terminal_before": res.terminal_before,
    "terminal_after": res.terminal_after, "shooting_residual": res.residual,
    "shooting_evaluations": res.nfev, "seconds": time.perf_counter() - t0}
print(f"training: loss {res.loss_before:.4f} -> {res.loss_after:.4f} "
      f"(terminal {res.terminal_before:.4f} -> {res.terminal_after:.4f}), "
      f"residual {res.residual:.1e}")

# %% [markdown]
# **Particles ↔ Lie–Poisson.**  Rotating the particles and their costates by the LPHJ group
# elements reproduces the reduced momenta to round-off (discrete Noether), and the continuous
# particle optimality system (a canonical system in $\mathbb R^{6N}$, solved by DOP853) matches
# the rigid body.

# %%
fw = net.forward(res.M0, 40, "lphj2")
p0 = net.initial_costates(fw)            # p(T) = w∇Φ(x(T)) rotated back to t = 0
fwp = net.forward(res.M0, 40, "lphj2", with_costates=p0)
discrete_gap = float(np.max(np.abs(net.momentum(fwp.x, fwp.p) - fwp.M)))
ts = np.linspace(0, net.T, 41)
zp = solve_ivp(lambda t, z: net.particle_system().vector_field(z), (0, net.T),
               np.concatenate([net.x0.ravel(), p0.ravel()]), t_eval=ts, method="DOP853",
               rtol=1e-12, atol=1e-14).y.T
Mp = np.array([net.momentum(z[:3 * net.N].reshape(-1, 3), z[3 * net.N:].reshape(-1, 3))
               for z in zp])
fine = net.forward(Mp[0], 400, "lphj4").M[::10]
continuous_gap = float(np.max(np.abs(Mp - fine)))
summary["particles_vs_lie_poisson"] = {"discrete_max_gap": discrete_gap,
                                       "continuous_max_gap": continuous_gap,
                                       "shooting_fixed_point_gap":
                                           float(np.max(np.abs(Mp[0] - res.M0)))}
print(f"particles vs Lie–Poisson: discrete {discrete_gap:.1e}, continuous {continuous_gap:.1e}")

fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
for j in range(3):
    ax[0].plot(ts, Mp[:, j], "-", label=f"particles $M_{j + 1}$")
    ax[0].plot(fw.t, fw.M[:, j], "k:", lw=1)
ax[0].set(xlabel="t (depth)", ylabel="M(t)", title="weights: particles (—) vs LPHJ2 (···)")
ax[0].legend(fontsize=8)
for k, mk in ((0, "o"), (1, "s")):
    sel = labels == k
    ax[1].scatter(fw.x[0, sel, 0], fw.x[0, sel, 1], marker=mk, c="0.7", s=12)
    ax[1].scatter(fw.x[-1, sel, 0], fw.x[-1, sel, 1], marker=mk, s=12, label=f"class {k}, x(T)")
ax[1].scatter(anchors[:, 0], anchors[:, 1], c="k", marker="*", s=120, label="anchors")
ax[1].set(xlabel="x₁", ylabel="x₂", title="point cloud: x(0) grey, x(T) coloured")
ax[1].legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "training.png", dpi=120)
plt.close(fig)

# %% [markdown]
# ## 2. Long-time weight dynamics: Casimir and energy errors
# The learned $M_0$ and inertia $\Lambda$ define a rigid body that we integrate far beyond the
# network's depth.  LPHJ steps act by the coadjoint action, so $|M|^2$ is exact to round-off for
# every order; for a quadratic $h$ the midpoint-generator step (LPHJ2, hence LPHJ4) also keeps
# the energy exactly, and so does implicit midpoint (a quadratic invariant).  RK4 and DOP853
# drift off the orbit.

# %%
rb = ex.rigid_body(net.lam)
M0 = res.M0                                     # the learned weights' momentum
tau, T_long = 0.1, (200.0 if QUICK else 5000.0)
n_long = int(round(T_long / tau))
every = max(1, n_long // 400)
long_runs = {}
for name in ("lphj1", "lphj2", "lphj4", "midpoint", "rk4"):
    rb.reset_counts()
    tr = get_integrator(name, rb).run(M0, tau, n_long, monitors=["casimirs", "energy"],
                                      store_every=every)
    long_runs[name] = (tr.t, tr.drift("casimirs")[:, 0], tr.drift("energy"), tr.wall)
t_eval = np.linspace(0, T_long, 401)
start = time.perf_counter()
sol = solve_ivp(ex.rigid_body_rhs(net.lam), (0, T_long), M0, t_eval=t_eval, method="DOP853",
                rtol=1e-8, atol=1e-10)
Y = sol.y.T
C, E = rb.casimirs(Y)[:, 0], rb.H(Y)
long_runs["DOP853 (rtol 1e-8)"] = (t_eval, np.abs(C - C[0]) / C[0], np.abs(E - E[0]) / E[0],
                                    time.perf_counter() - start)
summary["long_time"] = {"tau": tau, "T": T_long, "steps": n_long, "methods": {
    k: {"max_casimir_rel_error": float(v[1].max()), "max_energy_rel_error": float(v[2].max()),
        "seconds": float(v[3])} for k, v in long_runs.items()}}

fig, ax = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
for k, (t, c, e, _) in long_runs.items():
    ax[0].loglog(t[1:], np.maximum(c[1:], 1e-17), label=k)
    ax[1].loglog(t[1:], np.maximum(e[1:], 1e-17), label=k)
ax[0].set(xlabel="t", ylabel="|C(t) − C(0)|/C(0)", title="Casimir |M|²")
ax[1].set(xlabel="t", ylabel="|h(t) − h(0)|/h(0)", title="energy ½MᵀΛ⁻¹M")
ax[0].legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "casimir_energy.png", dpi=120)
plt.close(fig)
for k, v in summary["long_time"]["methods"].items():
    print(f"{k:>20}: Casimir {v['max_casimir_rel_error']:.1e}, "
          f"energy {v['max_energy_rel_error']:.1e}")

# %% [markdown]
# ## 3. Observed orders and the work–precision diagram
# Error at $T$ against a tight DOP853 reference, for step halving (fixed-step methods) and for
# tolerances (adaptive scipy methods), plotted against the cost in vector-field evaluations and
# in wall time.

# %%
T_wp = 20.0
ref = solve_ivp(ex.rigid_body_rhs(net.lam), (0, T_wp), M0, method="DOP853", rtol=1e-13,
                atol=1e-14).y[:, -1]
ns = [50, 100, 200, 400] if QUICK else [50, 100, 200, 400, 800, 1600, 3200]
wp, orders = {}, {}
for name in ("lphj1", "lphj2", "lphj4", "midpoint", "rk4"):
    rows = []
    for n in ([8 * m for m in ns] if name == "lphj1" else ns):   # order 1 needs small steps
        integ = get_integrator(name, rb)
        tr = integ.run(M0, T_wp / n, n)
        rows.append((float(np.linalg.norm(tr.final - ref)), tr.nfev, tr.wall))
    wp[name] = rows
    e, nn = np.array([r[0] for r in rows]), np.array(ns) * (8 if name == "lphj1" else 1)
    orders[name] = float(np.polyfit(np.log(T_wp / nn), np.log(e), 1)[0])
tols = [1e-4, 1e-6, 1e-8] if QUICK else [1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11]
for method in ("RK45", "DOP853"):
    rows = []
    for tol in tols:
        start = time.perf_counter()
        s = solve_ivp(ex.rigid_body_rhs(net.lam), (0, T_wp), M0, method=method, rtol=tol,
                      atol=tol * 1e-2)
        rows.append((float(np.linalg.norm(s.y[:, -1] - ref)), int(s.nfev),
                     time.perf_counter() - start))
    wp[method] = rows
summary["observed_orders"] = orders
summary["work_precision"] = {k: [{"error": r[0], "nfev": r[1], "seconds": r[2]} for r in v]
                             for k, v in wp.items()}
print("observed orders:", {k: round(v, 2) for k, v in orders.items()})

fig, ax = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for k, rows in wp.items():
    r = np.array(rows)
    style = "--" if k in ("RK45", "DOP853") else "-"
    ax[0].loglog(r[:, 1], r[:, 0], style + "o", ms=3, label=k)
    ax[1].loglog(r[:, 2], r[:, 0], style + "o", ms=3, label=k)
ax[0].set(xlabel="vector-field / gradient evaluations", ylabel="error at T", title="work–precision")
ax[1].set(xlabel="wall time [s]", title="work–precision (time)")
ax[0].legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "work_precision.png", dpi=120)
plt.close(fig)

# %% [markdown]
# ## 4. Summary
# `summary.json` collects the figures above; it is written atomically.

# %%
summary["figures"] = ["training.png", "casimir_energy.png", "work_precision.png"]
fd, tmp = tempfile.mkstemp(dir=out, suffix=".json.tmp")
with os.fdopen(fd, "w") as fh:
    json.dump(summary, fh, indent=2)
os.replace(tmp, out / "summary.json")
print(f"wrote {out / 'summary.json'}")
