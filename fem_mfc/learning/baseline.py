"""Baseline: a discrete ResNet of the same depth trained by Adam in torch (MODEL §8).

  x_{n+1} = x_n + τ f_n(x_n),  f_n(x) = W_{2,n} tanh(W_{1,n} x + b_{1,n}) + b_{2,n}  (width 16),

trained full-batch on the same split with the SAME objective as the PDE network:
  (1/n) Σ_i [ β/2 |x_N^i − c_{y_i}|² + Σ_n τ ½|f_n(x_n^i)|² ],
predicted class = nearest anchor.  Runs on one thread (``torch.set_num_threads(1)``; the
``bin/fem-env`` wrapper sets ``OMP_WAIT_POLICY=PASSIVE`` so that idle OpenMP threads do not
spin on the cores shared with MPI ranks).  Only rank 0 trains; the result is broadcast.
"""
from __future__ import annotations

import time

import numpy as np


def _model(torch, dim, width, depth):
    nn = torch.nn
    return nn.ModuleList([nn.Sequential(nn.Linear(dim, width), nn.Tanh(), nn.Linear(width, dim))
                          for _ in range(depth)])


def _flow(blocks, x, tau):
    """Returns x_N, Σ_n τ ½|f_n(x_n)|² per point, and the path."""
    kin = x.new_zeros(x.shape[0])
    path = [x]
    for f in blocks:
        v = f(x)
        kin = kin + tau * 0.5 * (v ** 2).sum(dim=1)
        x = x + tau * v
        path.append(x)
    return x, kin, path


def train_resnet(X_train, y_train, X_test, y_test, anchors, beta, T, depth, width=16,
                 epochs=600, lr=0.01, seed=0, comm=None) -> dict:
    """Train the baseline; return accuracies, objective terms, energy, wall time, paths."""
    if comm is not None and comm.rank != 0:
        return comm.bcast(None, root=0)
    import torch
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    tau = T / depth
    dt = torch.float64
    Xtr, Xte = torch.tensor(X_train, dtype=dt), torch.tensor(X_test, dtype=dt)
    ytr = torch.tensor(y_train)
    C = torch.tensor(anchors, dtype=dt)
    blocks = _model(torch, Xtr.shape[1], width, depth).to(dt)
    opt = torch.optim.Adam(blocks.parameters(), lr=lr)
    hist = []
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        opt.zero_grad()
        xN, kin, _ = _flow(blocks, Xtr, tau)
        loss = (0.5 * beta * ((xN - C[ytr]) ** 2).sum(dim=1) + kin).mean()
        loss.backward()
        opt.step()
        hist.append(float(loss))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"wall_time_s": wall, "cpu_time_s": cpu, "history": hist, "epochs": epochs,
           "width": width, "depth": depth,
           "parameters": sum(p.numel() for p in blocks.parameters())}
    with torch.no_grad():
        for name, X, y in (("train", Xtr, y_train), ("test", Xte, y_test)):
            xN, kin, path = _flow(blocks, X, tau)
            d2 = ((xN[:, None, :] - C[None]) ** 2).sum(dim=2)
            pred = d2.argmin(dim=1).numpy()
            anchor = 0.5 * beta * ((xN.numpy() - anchors[y]) ** 2).sum(axis=1)
            out[f"{name}_accuracy"] = float((pred == y).mean())
            out[f"{name}_anchor_loss"] = float(anchor.mean())
            out[f"{name}_kinetic"] = float(kin.mean())
            out[f"{name}_objective"] = float((anchor + kin.numpy()).mean())
            if name == "train":
                out["train_paths"] = np.stack([p.numpy() for p in path])
    out["state"] = {k: v.numpy() for k, v in blocks.state_dict().items()}
    if comm is not None:
        comm.bcast(out, root=0)
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
