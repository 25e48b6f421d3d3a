"""A trained classifier saved with its run, and applied to new points (``fem-mfc predict``).

A feedback network is the per-layer velocity aⁿ on the run's mesh; a classifier run writes it
into ``RUN/model/`` (:func:`save_feedback`), everything inference needs and nothing else:

* ``mesh.bp`` — the mesh in adios4dolfinx's layout (gathered on and written by rank 0,
  :func:`fem_mfc.compat.write_mesh_serially`; ``adios4dolfinx.read_mesh`` reads it on any
  number of ranks);
* ``velocity.npz`` — aⁿ, n = 0..N−1, as its values at the velocity nodes with the nodes'
  coordinates (``__nodes__``: (nodes, d); ``__states__``: (nodes, N·d), layer-major per node),
  as the checkpoints store a control: a reader on M ranks finds its nodes by their
  coordinates, whatever the N ranks that wrote them;
* ``model.json`` — ``format``, ``kind`` ("feedback"), the element of a (``velocity``: "P1" or
  "DG0"), ``T``, ``steps``, ``tau``, ``anchors`` (K × mesh dimension, in the network's
  coordinates), ``loss_weight`` β, ``classes`` (the original label of class k, as text),
  ``feature_mean`` / ``feature_scale`` (the standardisation of the training features, as in
  ``weights.npz``), the running potential ``V`` with its ``params`` (for the empirical
  objective; the flow itself does not use it), ``projection`` (what happens to a point that
  leaves the mesh: it is moved to the nearest point of the mesh, as in training), the data
  set's name, and ``state_files`` (the sizes of ``mesh.bp``'s files: a truncated BP file is
  refused instead of read for ever).

The folder is written under a temporary name and renamed into place
(:func:`fem_mfc.checkpoint._commit`), like a checkpoint.  A dictionary network keeps its
``weights.npz`` (:class:`~.numpy_resnet.NumpyResNet`).

:func:`load` returns a predictor for either; ``predict(X_raw)`` takes rows of raw features
(the units of the data file), standardises them, pushes them through the trained ResNet
x_{n+1} = x_n + τ aⁿ(x_n) (:class:`~.infer.TrainedFlow`, MPI-safe point evaluation; every rank
holds every point) and returns the nearest anchor's class and label and the final features
x_N.  :func:`read_points` reads the points to label with the CSV rules of the training data.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .data import csv_rows, is_number

MODEL_DIR = "model"
MESH, VALUES, META = "mesh.bp", "velocity.npz", "model.json"
WEIGHTS = "weights.npz"
FORMAT = 1
PROJECTION = "nearest point of the mesh"


# -- writing -------------------------------------------------------------------------------------
def save_feedback(folder, model, ds, problem) -> None:
    """Write the trained feedback network ``model`` (FeedbackClassifier or EdgeClassifier) of
    data set ``ds`` (its standardisation and labels) and :class:`~.problem.ClassifierProblem`
    ``problem`` into ``folder`` (atomically; collective, any number of ranks)."""
    from ..checkpoint import STATES, _commit, _gather_rows
    Va, comm = model.Va, model.comm
    n, bs = Va.dofmap.index_map.size_local, Va.dofmap.index_map_bs
    vals = np.stack([np.asarray(a)[: n * bs].reshape(n, bs) for a in model.a], axis=1)
    nodes = Va.tabulate_dof_coordinates()[:n]
    eq = problem.equation
    info = {"format": FORMAT, "kind": "feedback", "velocity": problem.velocity,
            "T": float(model.T), "steps": int(model.N), "tau": float(model.tau),
            "anchors": np.asarray(model.anchors, float).tolist(),
            "loss_weight": float(model.beta), "classes": [str(c) for c in ds.classes],
            "feature_mean": [float(v) for v in ds.mean],
            "feature_scale": [float(v) for v in ds.scale],
            "V": str(eq["V"]), "params": dict(eq["params"]), "projection": PROJECTION,
            "dataset": ds.name, "dim": int(model.mesh.geometry.dim)}
    _commit(Path(folder), comm, model.mesh, {},
            lambda: _gather_rows(comm, nodes, {STATES: vals.reshape(n, -1)}), info,
            files=(MESH, VALUES, META), what="the saved model")


# -- reading -------------------------------------------------------------------------------------
@dataclass
class Prediction:
    """What a predictor returns for rows of raw features."""

    k: np.ndarray            # the class (0..K−1) of each row
    labels: np.ndarray       # its original label, as text
    final: np.ndarray        # x_N, the final features (network coordinates)
    projected: int           # point-steps moved back onto the mesh
    off_mesh: int            # rows whose standardised point lies outside the mesh


@contextlib.contextmanager
def _readable(folder: Path, part: str):
    """Any failure to read ``part`` of a saved model is one line naming the folder."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:   # JSON, zip (npz), ADIOS2 errors, missing keys, other nodes
        why = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UserError(f"{folder}: the saved model cannot be read ({part}: {why}); run the "
                        "config.toml of the run again to write it") from None


class FeedbackModel:
    """A feedback network read from a ``model/`` folder, with the attributes of a trained
    network that :class:`~.infer.TrainedFlow` and :func:`~.infer.evaluate_flow` read
    (``mesh``, ``V``, ``Va``, ``a``, ``N``, ``tau``, ``comm``, ``anchors``, ``beta``,
    ``Vpot``)."""

    kind = "feedback"

    def __init__(self, folder, comm=None):
        from mpi4py import MPI

        import adios4dolfinx
        import dolfinx
        import ufl

        from ..checkpoint import NODES, STATES, _match_nodes, _sizes
        from ..errors import ConfigError
        from ..expressions import parse
        self.folder = folder = Path(folder)
        self.comm = comm = comm or MPI.COMM_WORLD
        with _readable(folder, META):
            meta = json.loads((folder / META).read_text())
            if not isinstance(meta, dict) or meta.get("kind") != "feedback":
                raise ValueError("not a feedback network's model.json")
            if int(meta.get("format", 0)) > FORMAT:
                raise ValueError(f"format {meta['format']} of a newer fem_mfc (this one reads "
                                 f"format {FORMAT})")
            self.meta = meta
            self.N, self.T, self.tau = int(meta["steps"]), float(meta["T"]), float(meta["tau"])
            self.anchors = np.array(meta["anchors"], float)
            self.K = len(self.anchors)
            self.beta = float(meta["loss_weight"])
            self.classes = tuple(str(c) for c in meta["classes"])
            self.mean = np.array(meta["feature_mean"], float)
            self.scale = np.array(meta["feature_scale"], float)
            velocity = meta["velocity"]
        bp = folder / MESH
        with _readable(folder, MESH):
            expected, found = meta.get("state_files"), _sizes(bp)
            if expected is not None and found != expected:      # ADIOS2 waits for a file
                raise ValueError("its files are not those written")     # cut short, for ever
            self.mesh = adios4dolfinx.read_mesh(bp, comm)
        gdim = self.mesh.geometry.dim
        self.V = dolfinx.fem.functionspace(self.mesh, ("Lagrange", 1))
        el = ("DG", 0, (gdim,)) if velocity == "DG0" else ("Lagrange", 1, (gdim,))
        self.Va = Va = dolfinx.fem.functionspace(self.mesh, el)
        n, bs = Va.dofmap.index_map.size_local, Va.dofmap.index_map_bs
        with _readable(folder, VALUES), np.load(folder / VALUES) as z:
            try:
                rows = _match_nodes(z[NODES], Va.tabulate_dof_coordinates()[:n], folder)
            except ConfigError:
                raise ValueError("its nodes are not those of its mesh") from None
            vals = z[STATES][rows].reshape(n, self.N, bs)
        self.a = []
        f = dolfinx.fem.Function(Va)
        for k in range(self.N):
            f.x.array[: n * bs] = vals[:, k].ravel()
            f.x.scatter_forward()
            self.a.append(f.x.array.copy())
        with _readable(folder, META + " V"):
            self.Vpot = parse(str(meta.get("V", "0")), "problem.V",
                              x=ufl.SpatialCoordinate(self.mesh), gdim=gdim,
                              params=meta.get("params") or {})
        self._flow = None

    @property
    def data_dim(self) -> int:
        return len(self.mean)

    @property
    def flow(self):
        from .infer import TrainedFlow
        if self._flow is None:
            self._flow = TrainedFlow(self)
        return self._flow

    def standardise(self, X_raw) -> np.ndarray:
        """Raw features (d columns) → the network's coordinates, padded to the mesh's."""
        Z = (np.atleast_2d(np.asarray(X_raw, float)) - self.mean) / self.scale
        out = np.zeros((Z.shape[0], self.mesh.geometry.dim))
        out[:, :Z.shape[1]] = Z
        return out

    def predict(self, X_raw) -> Prediction:
        """Push raw feature rows (the same on every rank; collective) through the flow."""
        from .infer import nearest_anchor
        Z = self.standardise(X_raw)
        _, owner = self.flow.ev.locate(Z)
        r = self.flow.push(Z)
        k = nearest_anchor(r.X, self.anchors)
        return Prediction(k, np.asarray(self.classes)[k], r.X, r.projected,
                          int(np.count_nonzero(owner == self.comm.size)))


class DictionaryModel:
    """A dictionary network's ``weights.npz`` (:class:`~.numpy_resnet.NumpyResNet`; NumPy
    only, on every rank alike)."""

    kind = "dictionary"

    def __init__(self, path):
        from .numpy_resnet import NumpyResNet
        path = Path(path)
        with _readable(path.parent, WEIGHTS):
            self.net = NumpyResNet.load(path)
        if self.net.mean is None:
            raise UserError(f"{path}: weights without the standardisation of the training "
                            "features (written by an older fem_mfc); run the config.toml of "
                            "the run again")
        self.N, self.anchors = self.net.depth, self.net.anchors
        self.classes = self.net.classes or tuple(str(k) for k in range(len(self.anchors)))
        self.mean = self.net.mean

    @property
    def data_dim(self) -> int:
        return len(self.mean)

    def predict(self, X_raw) -> Prediction:
        Z = self.net.standardise(X_raw)
        XN = self.net.push(Z)
        k = ((XN[:, None, :] - self.anchors[None]) ** 2).sum(axis=2).argmin(axis=1)
        return Prediction(k, np.asarray(self.classes)[k], XN, 0, 0)


def load(run, comm=None):
    """The trained classifier of run folder ``run`` (or of its ``model/`` folder): a
    :class:`FeedbackModel` or a :class:`DictionaryModel`.  A folder that is not a classifier
    run with a saved model is a one-line :class:`UserError` (collective: every rank reads the
    same files)."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"{run}: run folder not found (expected the output folder of "
                        "fem-mfc run with a classifier config)")
    if (run / META).is_file():
        return FeedbackModel(run, comm)
    if (run / MODEL_DIR / META).is_file():
        return FeedbackModel(run / MODEL_DIR, comm)
    if (run / WEIGHTS).is_file():
        return DictionaryModel(run / WEIGHTS)
    summary = {}
    with contextlib.suppress(OSError, ValueError):
        summary = json.loads((run / "summary.json").read_text())
    if not isinstance(summary, dict) or not summary:
        raise UserError(f"{run}: not a fem-mfc run folder (no summary.json, {MODEL_DIR}/ or "
                        f"{WEIGHTS}; expected the output folder of a classifier run)")
    formulation = summary.get("formulation")
    if formulation != "classifier":
        raise UserError(f"{run}: a '{formulation}' run has no classifier to apply (expected "
                        "the output folder of a run with formulation = \"classifier\")")
    raise UserError(f"{run}: a classifier run without a saved model ({MODEL_DIR}/ or "
                    f"{WEIGHTS}: written by an older fem_mfc); run its config.toml again")


# -- the points to label -------------------------------------------------------------------------
def read_points(path, d: int):
    """Read the points to label from CSV file ``path``: d feature columns ``x1,…,xd`` in the
    units of the training data, optionally followed by a ``label`` column (then the accuracy
    is reported), as the training data reader (:func:`~.data.read_csv`) reads them: an
    optional header row ``x1,…,xd[,label]`` (a first row whose first d cells are numbers is a
    point), blank lines skipped, a byte-order mark ignored.  Returns (X (n × d), labels as
    text or None).  Every problem is a one-line :class:`UserError` naming the file, the row
    and the column."""
    path = Path(path)
    names = [f"x{i + 1}" for i in range(d)]
    cols = ",".join(names)
    rows = csv_rows(path, "points", f"rows of {d} numbers {cols}, optionally with a label "
                    "column")
    first = rows[0][1]
    width = None
    if not all(is_number(c) for c in first[:d]):       # a header (or a word)
        header = [c.strip().lower() for c in first]
        if header not in (names, names + ["label"]):
            raise UserError(f"{path}: expected the columns {cols} (or {cols},label) in the "
                            f"header: the model was trained on {d} feature"
                            f"{'s' if d > 1 else ''}, got {','.join(first)!r}")
        width, rows = len(header), rows[1:]
        if not rows:
            raise UserError(f"{path}: no data rows after the header")
    width = width or len(rows[0][1])
    if width not in (d, d + 1):
        raise UserError(f"{path}: row {rows[0][0]}: expected {d} values ({cols}: the model was "
                        f"trained on {d} feature{'s' if d > 1 else ''}) or {d + 1} "
                        f"({cols},label), got {width}")
    labelled = width == d + 1
    X = np.empty((len(rows), d))
    labels = [] if labelled else None
    for j, (i, r) in enumerate(rows):
        if len(r) != width:
            raise UserError(f"{path}: row {i}: expected {width} values "
                            f"({cols}{',label' if labelled else ''}), got {len(r)}")
        for c in range(d):
            try:
                v = float(r[c])
            except ValueError:
                raise UserError(f"{path}: row {i}, column {names[c]}: expected a number, got "
                                f"{r[c].strip()!r}") from None
            if not math.isfinite(v):
                raise UserError(f"{path}: row {i}, column {names[c]}: expected a finite "
                                f"number, got {r[c].strip()!r}")
            X[j, c] = v
        if labelled:
            lab = r[d].strip()
            if not lab:
                raise UserError(f"{path}: row {i}, column label: empty label")
            if is_number(lab) and not (math.isfinite(float(lab))
                                        and float(lab) == int(float(lab))):
                raise UserError(f"{path}: row {i}, column label: expected an integer or a "
                                f"word, got {lab!r} (a feature? the model was trained on "
                                f"{d} feature{'s' if d > 1 else ''}, {cols})")
            labels.append(_label_text(lab))
    return X, (None if labels is None else np.array(labels, dtype=str))


def _label_text(text: str) -> str:
    """A label as the classes record it: an integral number as an integer ("1.0" → "1")."""
    try:
        v = float(text)
    except ValueError:
        return text
    return str(int(v)) if math.isfinite(v) and v == int(v) else text


def write_predictions(path, pred: Prediction) -> None:
    """The CSV of :func:`predict`: ``label,final_x1,…,final_xD`` (full precision)."""
    import io

    from ..io import write_text_atomic
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label"] + [f"final_x{i + 1}" for i in range(pred.final.shape[1])])
    for lab, x in zip(pred.labels, pred.final):
        w.writerow([lab] + [repr(float(v)) for v in x])
    if str(path) == "-":
        import sys
        sys.stdout.write(buf.getvalue())
        sys.stdout.flush()
    else:
        write_text_atomic(path, buf.getvalue())


__all__ = ["FeedbackModel", "DictionaryModel", "Prediction", "load", "read_points",
           "save_feedback", "write_predictions", "MODEL_DIR"]
