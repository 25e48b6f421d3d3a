"""Dictionary networks as plain NumPy ResNets (MODEL §2 "Dictionary network"; no DOLFINx).

A dictionary network has the velocity a(t, x) = B(x) θ(t) = Σ_j θ_j(t) b_j(x), θ ∈ R^m, with

* ``affine``:      b = e_i x_l and e_i  (a = W x + c, m = d² + d; θ = (W row-major, c));
* ``rotation``:    b = (E_pq − E_qp) x for p < q  (a = Ω x, Ω ∈ so(d), m = d(d−1)/2);
* ``random-tanh``: b = e_i tanh(w_j·x + β_j), j = 1..width  (m = d·width; θ index j·d + i), the
  ridges (w_j, β_j) ~ N(0, s²) drawn once from a seed and then frozen.

:func:`fem_mfc.dictionaries.columns` writes the dictionary ONCE, generic in the arithmetic: with
NumPy arrays it is the inference network below, with UFL coordinates it is the velocity inside
the PDE forms (:mod:`fem_mfc.forms.dictionary`), so both sides evaluate the same B(x).

The ResNet is x_{n+1} = x_n + τ B(x_n) θⁿ, n = 0..N−1 (defined on all of R^d), predicted class
argmin_k |x_N − c_k|.  ``weights.npz`` stores kind, θ (N × m), τ, the ridges and the anchors,
and, from a run, the standardisation of the training features (``mean``, ``scale``) and the
original labels of the classes (``classes``), so that :meth:`NumpyResNet.classify` takes new
points in the units of the data file and returns their labels.
"""
from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..dictionaries import KINDS, columns, n_weights, ridges  # noqa: F401 (re-exported)


def dictionary_matrix(kind: str, X: np.ndarray, w=None, beta=None) -> np.ndarray:
    """B at the rows of X: an (n, d, m) array."""
    X = np.asarray(X, float)
    n, d = X.shape
    cols = columns(kind, [X[:, i] for i in range(d)], w, beta)
    B = np.zeros((n, d, len(cols)))
    for j, c in enumerate(cols):
        for i, v in enumerate(c):
            B[:, i, j] = v
    return B


@dataclass
class NumpyResNet:
    """x_{n+1} = x_n + τ B(x_n) θⁿ with frozen dictionary and trained weights θ (N × m)."""

    kind: str
    theta: np.ndarray
    tau: float
    anchors: np.ndarray
    w: np.ndarray | None = None
    beta: np.ndarray | None = None
    mean: np.ndarray | None = None      # of the raw training features (d columns)
    scale: np.ndarray | None = None     # their per-axis std
    classes: tuple | None = None        # the original label of class k, as text

    @property
    def depth(self) -> int:
        return len(self.theta)

    def velocity(self, n: int, X) -> np.ndarray:
        """a(t_n, x) = B(x) θⁿ at the rows of X."""
        return dictionary_matrix(self.kind, X, self.w, self.beta) @ self.theta[n]

    def push(self, X, record: bool = False):
        """x_N for the rows of X (and the path [x_0, …, x_N] if ``record``)."""
        X = np.array(X, float)
        path = [X.copy()]
        for n in range(self.depth):
            X = X + self.tau * self.velocity(n, X)
            if record:
                path.append(X.copy())
        return (X, path) if record else X

    def predict(self, X) -> np.ndarray:
        """The nearest anchor to x_N."""
        XN = self.push(X)
        return ((XN[:, None, :] - self.anchors[None]) ** 2).sum(axis=2).argmin(axis=1)

    def standardise(self, X_raw) -> np.ndarray:
        """Raw features (rows, d columns, the units of the data) → the network's coordinates:
        (x − mean)/scale, padded with zeros to the anchors' dimension."""
        if self.mean is None:
            raise ValueError("these weights carry no standardisation (written before it was "
                             "saved): standardise the points with the training mean and std")
        Z = (np.atleast_2d(np.asarray(X_raw, float)) - self.mean) / self.scale
        out = np.zeros((Z.shape[0], self.anchors.shape[1]))
        out[:, :Z.shape[1]] = Z
        return out

    def classify(self, X_raw) -> np.ndarray:
        """The labels (as in the data: integers or words, as text) of raw feature rows."""
        k = self.predict(self.standardise(X_raw))
        return np.asarray(self.classes)[k] if self.classes else k

    def save(self, path: str | Path) -> None:
        """Write ``weights.npz`` atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        buf = io.BytesIO()
        extra = {} if self.w is None else {"w": self.w, "beta": self.beta}
        if self.mean is not None:
            extra.update(mean=self.mean, scale=self.scale)
        if self.classes:
            extra["classes"] = np.array(self.classes, dtype=str)
        np.savez(buf, kind=np.array(self.kind), theta=self.theta, tau=np.array(self.tau),
                 anchors=self.anchors, **extra)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(buf.getvalue())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> "NumpyResNet":
        with np.load(path) as z:
            get = lambda k: z[k] if k in z else None  # noqa: E731
            classes = get("classes")
            return cls(str(z["kind"]), z["theta"], float(z["tau"]), z["anchors"], get("w"),
                       get("beta"), get("mean"), get("scale"),
                       None if classes is None else tuple(str(c) for c in classes))
