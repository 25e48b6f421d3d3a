"""Baselines in torch (MODEL §8): a discrete ResNet of the same depth and a neural ODE.

* ResNet:  x_{n+1} = x_n + τ f_n(x_n),  f_n(x) = W_{2,n} tanh(W_{1,n} x + b_{1,n}) + b_{2,n}
  (width 16 by default), n = 0..N−1, τ = T/N;
* neural ODE:  ẋ = a(x, t), a = an MLP of (x, t) (two tanh hidden layers of the same width,
  weights shared over time), integrated on [0, T] by fixed steps of the classical RK4 scheme —
  ⌈N/4⌉ steps, i.e. as many evaluations of a as the ResNet has layers — (or N explicit Euler
  steps) and trained by back-propagation through the solver; its kinetic energy
  ∫½|a(x(t), t)|² dt is integrated along with the state by the same scheme.

Both are trained full-batch by Adam on the same split with the SAME objective as the PDE
network (the same anchor head: predicted class = nearest anchor):
  (1/n) Σ_i [ β/2 |x_N^i − c_{y_i}|² + kinetic energy of the path of x^i
              + ∫ V(x^i(t)) dt ],
the running potential V of ``[problem] V`` (default 0) read by
:func:`fem_mfc.expressions.torch_function` — by the ResNet as the PDE network's flow takes it,
Σ_n τ V(x_n), by the neural ODE integrated along with the kinetic energy.

Training to convergence of *their* objective (:func:`fit`): early stopping on a plateau — when
the best objective has not improved by a relative ``rel_tol`` within ``patience`` epochs, the
learning rate is divided by 4 (at most ``lr_drops`` times) and training goes on from the best
parameters; at the next plateau after the last drop it stops (``converged = True``); ``epochs``
caps the epochs (``converged = False`` if the cap ends it).  ``patience = 0`` trains exactly
``epochs`` epochs (the old fixed-epoch baseline).  The parameters returned are the best seen.
:func:`train_seeds` repeats a baseline over several seeds: every run, the mean and spread
(sample standard deviation) of each figure and the best run (lowest training objective).

Runs on one thread (``torch.set_num_threads(1)``; the ``bin/fem-env`` wrapper sets
``OMP_WAIT_POLICY=PASSIVE`` so that idle OpenMP threads do not spin on the cores shared with MPI
ranks).  Only rank 0 trains; the result is broadcast.
"""
from __future__ import annotations

import concurrent.futures
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

KINDS = ("resnet", "node")
# the figures of a run that train_seeds averages over the seeds
FIGURES = ("train_accuracy", "test_accuracy", "fresh_accuracy", "train_objective",
           "train_anchor_loss", "train_kinetic", "train_potential", "test_objective",
           "cpu_time_s", "wall_time_s", "epochs")


def _model(torch, dim, width, depth):
    nn = torch.nn
    return nn.ModuleList([nn.Sequential(nn.Linear(dim, width), nn.Tanh(), nn.Linear(width, dim))
                          for _ in range(depth)])


def _flow(blocks, x, tau, V=None):
    """Returns x_N, Σ_n τ ½|f_n(x_n)|² and Σ_n τ V(x_n) per point, and the path."""
    kin = x.new_zeros(x.shape[0])
    pot = x.new_zeros(x.shape[0])
    path = [x]
    for f in blocks:
        v = f(x)
        kin = kin + tau * 0.5 * (v ** 2).sum(dim=1)
        if V is not None:
            pot = pot + tau * V(x)
        x = x + tau * v
        path.append(x)
    return x, kin, pot, path


class _ODEField:
    """The velocity a(x, t) of the neural ODE: an MLP of (x, t), two tanh hidden layers."""

    def __init__(self, torch, dim, width):
        nn = torch.nn
        self.torch = torch
        self.net = nn.Sequential(nn.Linear(dim + 1, width), nn.Tanh(), nn.Linear(width, width),
                                 nn.Tanh(), nn.Linear(width, dim))

    def __call__(self, x, t):
        tt = x.new_full((x.shape[0], 1), float(t))
        return self.net(self.torch.cat([x, tt], dim=1))


def node_steps(depth: int, scheme: str) -> int:
    """Steps of the neural ODE's solver: as many velocity evaluations as ResNet layers."""
    return max(1, math.ceil(depth / 4)) if scheme == "rk4" else depth


def _ode_flow(field, x, T, steps, scheme="rk4", V=None):
    """Integrate ẋ = a(x, t), ė = ½|a|² and ṗ = V(x) on [0, T] by ``steps`` fixed steps;
    x_N, e, p, path."""
    h = T / steps
    kin = x.new_zeros(x.shape[0])
    pot = x.new_zeros(x.shape[0])
    path = [x]

    def e(v):
        return 0.5 * (v ** 2).sum(dim=1)

    def w(y):
        return V(y) if V is not None else 0.0
    for n in range(steps):
        t = n * h
        k1 = field(x, t)
        if scheme == "euler":
            x, kin, pot = x + h * k1, kin + h * e(k1), pot + h * w(x)
        else:
            x2 = x + 0.5 * h * k1
            k2 = field(x2, t + 0.5 * h)
            x3 = x + 0.5 * h * k2
            k3 = field(x3, t + 0.5 * h)
            x4 = x + h * k3
            k4 = field(x4, t + h)
            if V is not None:
                pot = pot + h / 6 * (w(x) + 2 * w(x2) + 2 * w(x3) + w(x4))
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            kin = kin + h / 6 * (e(k1) + 2 * e(k2) + 2 * e(k3) + e(k4))
        path.append(x)
    return x, kin, pot, path


def fit(torch, params, loss_fn, epochs, lr, patience=100, rel_tol=1e-4, lr_drops=2):
    """Full-batch Adam on ``loss_fn()`` with early stopping on a plateau (module doc).

    Returns a dict: ``history`` (objective per epoch), ``epochs`` (epochs run), ``converged``
    (stopped on a plateau rather than by the cap), ``best`` (the last objective that counted as
    an improvement); the parameters are left at those of ``best`` (fixed-epoch mode,
    patience = 0: at the last)."""
    params = list(params)
    opt = torch.optim.Adam(params, lr=lr)
    hist = []
    best, best_epoch, best_state = math.inf, 0, None
    drops = 0
    converged = False
    for ep in range(epochs):
        opt.zero_grad()
        loss = loss_fn()
        L = float(loss)
        hist.append(L)
        if not math.isfinite(L):
            break
        if L < best - rel_tol * abs(best) or best_state is None:
            best, best_epoch = L, ep
            if patience:
                best_state = [p.detach().clone() for p in params]
        elif patience and ep - best_epoch >= patience:
            if drops >= lr_drops:
                converged = True
                break
            drops += 1
            best_epoch = ep
            with torch.no_grad():
                for p, b in zip(params, best_state):
                    p.copy_(b)
            for g in opt.param_groups:
                g["lr"] *= 0.25
            continue
        loss.backward()
        opt.step()
    if patience and best_state is not None:
        with torch.no_grad():
            for p, b in zip(params, best_state):
                p.copy_(b)
    return {"history": hist, "epochs": len(hist), "converged": converged, "best": best}


def _evaluate(out, flow, sets, anchors, beta, C):
    """Accuracy, anchor loss, kinetic energy, potential and objective of ``flow`` on each
    labelled set."""
    for name, (X, y) in sets.items():
        xN, kin, pot, path = flow(X)
        d2 = ((xN[:, None, :] - C[None]) ** 2).sum(dim=2)
        pred = d2.argmin(dim=1).numpy()
        anchor = 0.5 * beta * ((xN.numpy() - anchors[y]) ** 2).sum(axis=1)
        out[f"{name}_accuracy"] = float((pred == y).mean())
        out[f"{name}_anchor_loss"] = float(anchor.mean())
        out[f"{name}_kinetic"] = float(kin.mean())
        out[f"{name}_potential"] = float(pot.mean())
        out[f"{name}_objective"] = float((anchor + kin.numpy() + pot.numpy()).mean())
        if name == "train":
            out["train_paths"] = np.stack([p.numpy() for p in path])


def train_baseline(kind, X_train, y_train, X_test, y_test, anchors, beta, T, depth, width=16,
                   epochs=600, lr=0.01, seed=0, comm=None, patience=0, rel_tol=1e-4,
                   fresh=None, scheme="rk4", potential=None) -> dict:
    """Train one baseline (``kind`` = "resnet" or "node"); return accuracies (train, test and,
    if ``fresh`` = (X, y) is given, on that fresh sample), objective terms, kinetic energy,
    wall and CPU time, epochs, the history and the trained state.  ``potential``: the running
    potential V as (formula, params) of ``[problem] V`` (None: V = 0)."""
    if kind not in KINDS:
        raise ValueError(f"unknown baseline {kind!r} (one of {', '.join(KINDS)})")
    if comm is not None and comm.rank != 0:
        return comm.bcast(None, root=0)
    import torch
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    tau = T / depth
    dt = torch.float64
    Xtr = torch.tensor(X_train, dtype=dt)
    ytr = torch.tensor(y_train)
    C = torch.tensor(anchors, dtype=dt)
    dim = Xtr.shape[1]
    V = None
    if potential is not None:
        from ..expressions import torch_function
        V = torch_function(potential[0], "problem.V", dim, potential[1])
    if kind == "resnet":
        net = _model(torch, dim, width, depth).to(dt)

        def flow(X):
            return _flow(net, X, tau, V)
    else:
        field = _ODEField(torch, dim, width)
        net = field.net.to(dt)
        steps = node_steps(depth, scheme)

        def flow(X):
            return _ode_flow(field, X, T, steps, scheme, V)

    def loss_fn():
        xN, kin, pot, _ = flow(Xtr)
        return (0.5 * beta * ((xN - C[ytr]) ** 2).sum(dim=1) + kin + pot).mean()
    loss_fn().backward()              # warm-up (torch's lazy set-up, the optimiser's first
    net.zero_grad()                   # step imports modules): not timed
    w = torch.zeros(1, requires_grad=True)
    w.grad = torch.zeros(1)
    torch.optim.Adam([w]).step()
    t0, c0 = time.perf_counter(), time.process_time()
    f = fit(torch, net.parameters(), loss_fn, epochs, lr, patience, rel_tol)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"kind": kind, "seed": seed, "wall_time_s": wall, "cpu_time_s": cpu,
           "history": f["history"], "epochs": f["epochs"], "max_epochs": epochs,
           "converged": f["converged"], "patience": patience, "width": width, "depth": depth,
           "parameters": sum(p.numel() for p in net.parameters())}
    if kind == "node":
        out.update(scheme=scheme, steps=steps)
    sets = {"train": (Xtr, np.asarray(y_train)), "test": (torch.tensor(X_test, dtype=dt),
                                                         np.asarray(y_test))}
    if fresh is not None:
        sets["fresh"] = (torch.tensor(fresh[0], dtype=dt), np.asarray(fresh[1]))
    with torch.no_grad():
        _evaluate(out, flow, sets, anchors, beta, C)
    out["state"] = {k: v.numpy() for k, v in net.state_dict().items()}
    if comm is not None:
        comm.bcast(out, root=0)
    return out


def train_resnet(X_train, y_train, X_test, y_test, anchors, beta, T, depth, width=16,
                 epochs=600, lr=0.01, seed=0, comm=None, **kw) -> dict:
    """The ResNet baseline (:func:`train_baseline` with kind = "resnet")."""
    return train_baseline("resnet", X_train, y_train, X_test, y_test, anchors, beta, T, depth,
                          width, epochs, lr, seed, comm, **kw)


def train_seeds(kind, seeds, *args, workers=1, **kw) -> dict:
    """:func:`train_baseline` for each seed in ``seeds``; returns ``runs`` (without histories,
    paths and states), ``mean`` and ``spread`` (sample std; 0 for one seed) of the figures
    :data:`FIGURES`, and ``best``: the full result of the run with the lowest training
    objective (the baseline's own criterion).  ``workers``: see :func:`train_all`."""
    return train_all([kind], seeds, *args, workers=workers, **kw)[kind]


def train_all(kinds, seeds, *args, workers=None, comm=None, **kw) -> dict:
    """:func:`train_seeds` for every baseline kind in ``kinds``: ``{kind: result}``.

    The runs (kind × seed) are independent: with ``workers`` > 1 (None: one per core this
    process may use) they run side by side in worker processes
    (:mod:`fem_mfc.learning.baseline_worker`), each on one thread — the same results as in
    process, bit for bit, since each run seeds its own generator.  Under MPI (more than one
    rank) they are dealt round-robin to the ranks, each training its share in process, and
    every rank gets all the results (they ran in turn on rank 0, the other ranks waiting:
    moons at h = 0.06, 3 seeds × 2 kinds, 4 sweeps: 41 s of a 2-rank run's wall time, while
    one rank trained them in 2 workers)."""
    jobs = [(kind, s) for kind in kinds for s in seeds]
    if comm is not None and comm.size > 1:
        mine = [(i, train_baseline(kind, *args, seed=s, **kw))
                for i, (kind, s) in enumerate(jobs) if i % comm.size == comm.rank]
        full = [r for _, r in sorted((x for part in comm.allgather(mine) for x in part),
                                     key=lambda t: t[0])]
    else:
        if workers is None:
            workers = len(os.sched_getaffinity(0))
        if min(workers, len(jobs)) > 1:
            full = _in_workers([dict(kind=kind, seed=s, args=args, kw=kw) for kind, s in jobs],
                               workers)
        else:
            full = [train_baseline(kind, *args, seed=s, **kw) for kind, s in jobs]
    return {kind: _summarise(kind, seeds, [r for (k, _), r in zip(jobs, full) if k == kind])
            for kind in kinds}


def _in_workers(jobs: list[dict], workers: int) -> list[dict]:
    """Run :func:`train_baseline` for each job in at most ``workers`` worker processes at a
    time (``python3 -m fem_mfc.learning.baseline_worker``: job in, result out, pickled on its
    standard streams).  The workers get no MPI environment, and the kernel ends them if the
    thread that started them dies (PR_SET_PDEATHSIG), so no run outlives this process."""
    root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_"))}
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"

    def run(job):
        p = subprocess.run([sys.executable, "-m", "fem_mfc.learning.baseline_worker"],
                           input=pickle.dumps(job), capture_output=True, env=env,
                           preexec_fn=_die_with_parent)
        if p.returncode != 0 or not p.stdout:
            raise RuntimeError(f"baseline worker for {job['kind']} (seed {job['seed']}) "
                               f"failed:\n{p.stderr.decode(errors='replace')[-2000:]}")
        return pickle.loads(p.stdout)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, jobs))


def _die_with_parent() -> None:
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _summarise(kind, seeds, full) -> dict:
    best = min(full, key=lambda r: r["train_objective"])
    runs = [{k: v for k, v in r.items() if k not in ("history", "train_paths", "state")}
            for r in full]
    keys = [k for k in FIGURES if k in runs[0]]
    mean = {k: float(np.mean([r[k] for r in runs])) for k in keys}
    spread = {k: float(np.std([r[k] for r in runs], ddof=1)) if len(runs) > 1 else 0.0
              for k in keys}
    return {"kind": kind, "seeds": list(seeds), "runs": runs, "mean": mean, "spread": spread,
            "best": best, "best_seed": best["seed"],
            "converged": all(r["converged"] for r in runs)}


def velocities(kind: str, state: dict, X, T, depth, times) -> list[np.ndarray]:
    """The trained baseline's velocity at the points X (NumPy): the ResNet's f_n(X) for the
    layers n = 0..depth−1, the neural ODE's a(X, t) at the given ``times``."""
    X = np.asarray(X, float)
    if kind == "resnet":
        return [np.tanh(X @ state[f"{n}.0.weight"].T + state[f"{n}.0.bias"])
                @ state[f"{n}.2.weight"].T + state[f"{n}.2.bias"] for n in range(depth)]
    out = []
    for t in times:
        h = np.c_[X, np.full(len(X), float(t))]
        for i in (0, 2):
            h = np.tanh(h @ state[f"{i}.weight"].T + state[f"{i}.bias"])
        out.append(h @ state["4.weight"].T + state["4.bias"])
    return out


def predict(state: dict, X, anchors, T, depth) -> np.ndarray:
    """Nearest-anchor class of the points X after the trained baseline ResNet (NumPy)."""
    tau = T / depth
    x = np.asarray(X, float)
    for n in range(depth):
        W1, b1 = state[f"{n}.0.weight"], state[f"{n}.0.bias"]
        W2, b2 = state[f"{n}.2.weight"], state[f"{n}.2.bias"]
        x = x + tau * (np.tanh(x @ W1.T + b1) @ W2.T + b2)
    d2 = ((x[:, None, :] - anchors[None]) ** 2).sum(axis=2)
    return d2.argmin(axis=1)
