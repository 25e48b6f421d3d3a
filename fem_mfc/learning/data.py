"""Data sets for the classifier and their class densities on the mesh (MODEL §8).

* Generators: ``moons`` and ``circles`` (scikit-learn), ``spirals`` (two interleaved Archimedean
  spirals), ``gaussians`` (K isotropic blobs with centres on the unit circle), ``csv`` (user data
  with columns ``x1, x2, label``, or ``x1, …, xd, label`` for d features on a mesh of at least
  d dimensions; labels are integers or words such as ``cat``, ``dog``).
  Labels are mapped to 0..K-1 in sorted order of the distinct labels; word labels are
  recorded in the data set's name (``csv (classes: 0 = cat, 1 = dog)``, summary.json's
  ``dataset``) and in :attr:`Dataset.classes`.
* Split with :func:`sklearn.model_selection.train_test_split` (stratified, seeded).
* Features are standardised with the training mean/std (one scalar scale per axis) and padded
  with zeros to the mesh dimension (the augmented flow, e.g. (x, y) ↦ (x, y, 0) on a 3D mesh).
* Class densities: ρ_{k,0}(x) = π_k · KDE_k(x), the Gaussian kernel density estimate of the
  training points of class k, interpolated into P1 and rescaled so that ∫_Ω ρ_{k,0} = π_k
  (π_k = fraction of training points in class k; Σ_k π_k = 1).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, UserError

DATASETS = ("moons", "circles", "spirals", "gaussians", "csv")


@dataclass
class Dataset:
    """A standardised train/test split.  ``X_*`` have the mesh dimension (zero-padded)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    mean: np.ndarray          # of the raw features (training set; d = the data dimension)
    scale: np.ndarray         # per-axis std of the raw features (training set)
    name: str = ""
    classes: tuple = ()       # the original label of class k, as text (k = 0..K-1)

    @property
    def K(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    @property
    def proportions(self) -> np.ndarray:
        """π_k: fraction of the training points in class k."""
        return np.bincount(self.y_train, minlength=self.K) / len(self.y_train)

    def transform(self, X_raw: np.ndarray, dim: int) -> np.ndarray:
        """Standardise raw features (d columns) and pad them with zeros to ``dim`` columns."""
        return pad((X_raw - self.mean) / self.scale, dim)


def pad(X: np.ndarray, dim: int) -> np.ndarray:
    """Embed points of R^d into R^dim (dim ≥ d) as (x, 0, ..., 0); ConfigError naming
    mesh.file where the mesh has fewer dimensions than the data."""
    if dim < X.shape[1]:
        raise ConfigError("mesh.file", f"a mesh of at least {X.shape[1]} dimensions for "
                          f"{X.shape[1]}D data", f"a {dim}D mesh")
    out = np.zeros((X.shape[0], dim))
    out[:, :X.shape[1]] = X
    return out


def two_spirals(n: int, noise: float, rng: np.random.Generator, turns: float = 1.0):
    """Two interleaved spirals r = θ/(2π·turns), θ ∈ [π/2, π/2 + 2π·turns]; class 1 = −class 0."""
    n0 = n // 2
    n1 = n - n0
    def arm(m):
        th = math.pi / 2 + np.sqrt(rng.uniform(0, 1, m)) * 2 * math.pi * turns
        r = th / (2 * math.pi * turns)
        return np.c_[r * np.cos(th), r * np.sin(th)]
    X = np.vstack([arm(n0), -arm(n1)]) + noise * rng.standard_normal((n, 2))
    y = np.r_[np.zeros(n0, int), np.ones(n1, int)]
    return X, y


def gaussian_blobs(n: int, K: int, noise: float, rng: np.random.Generator):
    """K isotropic Gaussian blobs of std ``noise`` centred on the unit circle at the angles
    π + 2πk/K (the directions of the default anchors of the classifier)."""
    from sklearn.datasets import make_blobs
    ang = math.pi + 2 * math.pi * np.arange(K) / K
    centres = np.c_[np.cos(ang), np.sin(ang)]
    return make_blobs(n_samples=n, centers=centres, cluster_std=noise,
                      random_state=int(rng.integers(2 ** 31)))


def generate(dcfg: dict):
    """Raw (X, y) of the configured data set (``[data]`` section), before the split."""
    kind, n, noise, seed = dcfg["dataset"], dcfg["n_samples"], dcfg["noise"], dcfg["seed"]
    rng = np.random.default_rng(seed)
    if kind == "moons":
        from sklearn.datasets import make_moons
        return make_moons(n_samples=n, noise=noise, random_state=seed)
    if kind == "circles":
        from sklearn.datasets import make_circles
        return make_circles(n_samples=n, noise=noise, factor=dcfg["factor"], random_state=seed)
    if kind == "spirals":
        return two_spirals(n, noise, rng, dcfg["turns"])
    if kind == "gaussians":
        return gaussian_blobs(n, dcfg["classes"], noise, rng)
    if kind == "csv":
        return read_csv(dcfg["file"])
    raise ConfigError("data.dataset", "one of " + ", ".join(DATASETS), kind)


def csv_rows(path: Path, what: str, expected: str) -> list[tuple[int, list[str]]]:
    """The non-blank rows of CSV file ``path`` with their row numbers (from 1), a byte-order
    mark (Excel's "CSV UTF-8") ignored; a one-line :class:`UserError` naming the ``what``
    file if it is missing, unreadable, not UTF-8 or empty (``expected``: what it should
    hold).  The reader of training data (:func:`read_csv`) and of points to label
    (:func:`~.saved.read_points`)."""
    if not path.is_file():
        raise UserError(f"{path}: {what} file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file (expected {expected})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the {what} file ({e.strerror or e})") from None
    rows = [(i, r) for i, r in enumerate(csv.reader(text.splitlines()), start=1)
            if any(c.strip() for c in r)]
    if not rows:
        raise UserError(f"{path}: the file is empty (expected {expected})")
    return rows


def read_csv(path: str | Path):
    """Read user data: a header ``x1,x2,label`` (or ``x1,…,xd,label`` for d features, e.g.
    ``x1,x2,x3,label`` for 3D data on a 3D mesh) then one point per row.  The header may be
    left out: a first row whose features are numbers is a point (d = its length − 1).  Labels are
    integers, or words (``cat``, ``dog``: returned as strings, mapped to classes by
    :func:`load`).

    Every problem (missing/empty file, wrong columns, non-numeric or NaN features, non-integer
    numeric labels, empty labels, numbers and words mixed as labels, a single class) raises a
    one-line :class:`UserError` naming the file and row.
    """
    path = Path(path)
    rows = [r for _, r in csv_rows(path, "data", "a header x1,x2,label and rows")]
    if len(rows[0]) >= 2 and all(is_number(c) for c in rows[0][:-1]):
        d, start = len(rows[0]) - 1, 1          # no header: the first row is a point
    else:
        header = [c.strip().lower() for c in rows[0]]
        d, start = len(header) - 1, 2
        if d < 1 or header != [f"x{i + 1}" for i in range(d)] + ["label"]:
            raise UserError(f"{path}: expected the columns x1,x2,label in the header "
                            f"(x1,…,xd,label for d features), got {','.join(rows[0])!r}")
        if len(rows) == 1:
            raise UserError(f"{path}: no data rows after the header")
    cols = ",".join([f"x{i + 1}" for i in range(d)] + ["label"])
    X, y = [], []
    words = None                   # are the labels words? (decided by the first row)
    first = None
    for i, r in enumerate(rows[start - 1:], start=start):
        if len(r) != d + 1:
            raise UserError(f"{path}: row {i}: expected {d + 1} values ({cols}), got {len(r)}")
        try:
            x = [float(c) for c in r[:d]]
        except ValueError:
            raise UserError(f"{path}: row {i}: not a number in {','.join(r)!r}") from None
        text = r[d].strip()
        if not text:
            raise UserError(f"{path}: row {i}: empty label in {','.join(r)!r}")
        try:
            lab = float(text)
        except ValueError:
            lab = None             # a word: a class name
        if not all(math.isfinite(c) for c in x) or (lab is not None
                                                    and not math.isfinite(lab)):
            raise UserError(f"{path}: row {i}: NaN or infinite value in {','.join(r)!r}")
        if words is None:
            words, first = lab is None, (i, text)
        elif words != (lab is None):
            raise UserError(f"{path}: row {i}: label {text!r} is a "
                            f"{'number' if words else 'word'} but row {first[0]}'s label "
                            f"{first[1]!r} is a {'word' if words else 'number'} (expected "
                            "integer labels or word labels, not both)")
        if not words and lab != int(lab):
            raise UserError(f"{path}: row {i}: the label must be an integer or a word, got "
                            f"{text!r}")
        X.append(x)
        y.append(text if words else int(lab))
    y = np.array(y)
    if len(np.unique(y)) < 2:
        raise UserError(f"{path}: only one class ({y[0]}) in the data; a classifier needs at "
                        f"least two")
    return np.array(X, dtype=float).reshape(len(y), d), y


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load(dcfg: dict, dim: int = 2) -> Dataset:
    """Generate/read, relabel to 0..K-1, split (stratified, seeded), standardise, pad to dim."""
    Xtr, Xte, ytr, yte, classes, name = split(dcfg, dim)
    mean = Xtr.mean(axis=0)
    scale = Xtr.std(axis=0)
    if not (scale > 0).all():
        raise UserError(f"data set '{dcfg['dataset']}': a feature is constant on the training "
                        f"set (cannot standardise)")
    ds = Dataset(Xtr, ytr, Xte, yte, mean, scale, name, classes)
    ds.X_train, ds.X_test = ds.transform(Xtr, dim), ds.transform(Xte, dim)
    return ds


def split(dcfg: dict, dim: int = 2):
    """The raw train/test split of :func:`load`, in the units of the data: (X_train, X_test,
    y_train, y_test, classes, name) with y in 0..K−1 and ``classes`` the original label of
    class k as text (the points a run trained on, e.g. to apply its saved model to them)."""
    from sklearn.model_selection import train_test_split
    X, y = generate(dcfg)
    if X.shape[1] > dim:
        raise ConfigError("data.file", f"at most {dim} feature columns for a {dim}D mesh (or a "
                          f"mesh of {X.shape[1]} dimensions, e.g. mesh.kind = 'box' or 'ball')",
                          f"{X.shape[1]} columns x1..x{X.shape[1]}")
    labels, y = np.unique(y, return_inverse=True)
    y = y.reshape(-1)
    classes = tuple(str(c) for c in labels)
    name = dcfg["dataset"]
    if labels.dtype.kind in "US":  # word labels: say which class is which
        name += " (classes: " + ", ".join(f"{k} = {c}" for k, c in enumerate(classes)) + ")"
    counts = np.bincount(y)
    ntest = int(math.ceil(dcfg["test_fraction"] * len(y)))
    if counts.min() < 2 or ntest < len(counts) or len(y) - ntest < len(counts):
        # the key to change: the fraction where it leaves a side without every class, else
        # the number of points (a CSV file: the file)
        short = ntest < len(counts) or len(y) - ntest < len(counts)
        key = ("data.test_fraction" if short else "data.file" if dcfg["dataset"] == "csv"
               else "data.n_samples")
        raise ConfigError(key, f"enough points to split data set '{dcfg['dataset']}' into "
                          f"train and test sets holding every class ({len(y)} points, smallest "
                          f"class {counts.min()}, test_fraction {dcfg['test_fraction']:g})",
                          dcfg["test_fraction"] if short else
                          (dcfg["file"] if dcfg["dataset"] == "csv" else dcfg["n_samples"]))
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=dcfg["test_fraction"],
                                          random_state=dcfg["seed"], stratify=y)
    return Xtr, Xte, ytr, yte, classes, name


def bandwidth(points: np.ndarray, rule) -> float:
    """Isotropic KDE bandwidth h for ``points`` (n × d, the data dimension).

    ``"scott"``: h = s n^{-1/(d+4)};  ``"silverman"``: h = s (4/(n(d+2)))^{1/(d+4)};
    a number: h itself.  s is the mean per-axis standard deviation of the points.
    """
    if isinstance(rule, (int, float)):
        return float(rule)
    n, d = points.shape
    s = float(np.mean(points.std(axis=0)))
    if rule == "scott":
        return s * n ** (-1.0 / (d + 4))
    if rule == "silverman":
        return s * (4.0 / (n * (d + 2))) ** (1.0 / (d + 4))
    raise ConfigError("data.bandwidth", "'scott', 'silverman' or a positive number", rule)


def kde(points: np.ndarray, h: float, x: np.ndarray, data_dim: int) -> np.ndarray:
    """Gaussian KDE (1/n) Σ_i N(x; p_i, h² I) evaluated at rows of ``x``.

    Points and x may be padded to a larger dimension; the kernel is a density in the first
    ``data_dim`` coordinates times N(0, h²) in the padded ones (a thin slab around the data plane).
    """
    d = x.shape[1]
    out = np.zeros(x.shape[0])
    for chunk in np.array_split(np.arange(points.shape[0]), max(1, points.shape[0] // 256)):
        r2 = ((x[:, None, :] - points[None, chunk, :d]) ** 2).sum(axis=2)
        out += np.exp(-r2 / (2 * h * h)).sum(axis=1)
    return out / (points.shape[0] * (2 * math.pi * h * h) ** (d / 2))


def _check_bandwidth(h: float, mesh) -> None:
    """A KDE bandwidth the mesh resolves and holds, as rho0.std (fem_mfc.density): one far
    below the mesh size or far above the domain gave class densities of no mass on the mesh
    and the advice to enlarge the domain (data.bandwidth = 5e-324 or 1e300).  Collective."""
    from ..density import STD_MAX_PER_DIAMETER, STD_MIN_PER_H, mesh_scales
    hmesh, diam = mesh_scales(mesh)
    if h < hmesh / STD_MIN_PER_H:
        raise ConfigError("data.bandwidth", f"a bandwidth of at least h/{STD_MIN_PER_H:g} = "
                          f"{hmesh / STD_MIN_PER_H:.3g} (the mesh size is h = {hmesh:.3g}, in "
                          "standardised units; refine the mesh or widen the bandwidth)", h)
    if h > STD_MAX_PER_DIAMETER * diam:
        raise ConfigError("data.bandwidth", f"a bandwidth of at most {STD_MAX_PER_DIAMETER:g} "
                          f"x the domain diameter {diam:.3g} = "
                          f"{STD_MAX_PER_DIAMETER * diam:.3g}", h)


def class_densities(ds: Dataset, V, rule="scott", names=None):
    """ρ_{k,0} ∈ V (P1): the KDE of the class-k training points, scaled to ∫ρ_{k,0} = π_k.

    Returns (list of Functions, list of bandwidths).  Raises UserError if a class has no mass
    on the mesh (its data lie outside the domain).
    """
    import dolfinx

    from ..invariants import integrate
    x = V.tabulate_dof_coordinates()[:, :V.mesh.geometry.dim]
    data_dim = ds.mean.shape[0]
    rhos, hs = [], []
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        _check_bandwidth(float(rule), V.mesh)
    for k, pk in enumerate(ds.proportions):
        pts = ds.X_train[ds.y_train == k]
        h = bandwidth(pts[:, :data_dim], rule)
        if not h > 0:          # one training point, or all alike: their spread is 0
            which = ("one training point" if len(pts) == 1
                     else f"{len(pts)} training points, all alike")
            raise ConfigError("data.bandwidth", "a number (standardised units) for a class "
                              f"whose training points have no spread: class {k} has {which}, "
                              f"whose '{rule}' bandwidth is 0 (or more training points: "
                              "data.test_fraction, data.n_samples)", rule)
        rho = dolfinx.fem.Function(V, name=(names[k] if names else f"rho_{k}"))
        rho.x.array[:] = kde(pts, h, x, data_dim)
        m = integrate(rho)
        if not m > 1e-12:
            raise UserError(f"class {k}: its density has no mass on the mesh; enlarge the "
                            f"domain (mesh.radius / mesh.lower, mesh.upper)")
        rho.x.array[:] *= pk / m
        rhos.append(rho)
        hs.append(h)
    return rhos, hs
