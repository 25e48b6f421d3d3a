"""The dictionaries of the dictionary networks (MODEL §2), written once, generic in the
arithmetic: :func:`columns` with NumPy arrays is the plain ResNet of
:mod:`fem_mfc.learning.numpy_resnet`, with UFL coordinates the velocity inside the PDE forms
(:mod:`fem_mfc.forms.dictionary`).  Depends on NumPy only, so that the forms need nothing
from the learning package.

* ``affine``:      b = e_i x_l and e_i  (a = W x + c, m = d² + d; θ = (W row-major, c));
* ``rotation``:    b = (E_pq − E_qp) x for p < q  (a = Ω x, Ω ∈ so(d), m = d(d−1)/2);
* ``random-tanh``: b = e_i tanh(w_j·x + β_j), j = 1..width  (m = d·width; θ index j·d + i), the
  ridges (w_j, β_j) ~ N(0, s²) drawn once from a seed and then frozen.
"""
from __future__ import annotations

import numpy as np

KINDS = ("affine", "rotation", "random-tanh")


def n_weights(kind: str, d: int, width: int = 0) -> int:
    """m = the number of dictionary columns."""
    return {"affine": d * d + d, "rotation": d * (d - 1) // 2, "random-tanh": d * width}[kind]


def ridges(d: int, width: int, scale: float, seed: int):
    """The frozen random ridges (w (width × d), β (width,)) ~ N(0, scale²)."""
    rng = np.random.default_rng(seed)
    return scale * rng.standard_normal((width, d)), scale * rng.standard_normal(width)


def columns(kind: str, x, w=None, beta=None, tanh=np.tanh) -> list:
    """The columns b_1..b_m at x, each a list of d components (0 for structural zeros).

    ``x``: a list of d coordinates (NumPy arrays or UFL expressions); ``w``, ``beta``: the ridges
    (NumPy arrays or UFL Constants, indexed as w[j, l], beta[j]); ``tanh``: np.tanh or ufl.tanh.
    """
    d = len(x)
    unit = [[1.0 if r == i else 0 for r in range(d)] for i in range(d)]
    if kind == "affine":
        return ([[x[k] if r == i else 0 for r in range(d)] for i in range(d) for k in range(d)]
                + unit)
    if kind == "rotation":
        cols = []
        for p in range(d):
            for q in range(p + 1, d):
                cols.append([x[q] if r == p else (-x[p] if r == q else 0) for r in range(d)])
        return cols
    if kind == "random-tanh":
        cols = []
        for j in range(len(beta) if not hasattr(beta, "ufl_shape") else beta.ufl_shape[0]):
            s = tanh(sum(w[j, k] * x[k] for k in range(d)) + beta[j])
            cols += [[s if r == i else 0 for r in range(d)] for i in range(d)]
        return cols
    raise ValueError(f"unknown dictionary '{kind}' (expected one of {', '.join(KINDS)})")


__all__ = ["KINDS", "n_weights", "ridges", "columns"]
