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
GENERATIVE_PROJECTION = ("evaluated at the nearest point of the mesh, not moved (the forward "
                         "map stays the inverse of the sampler)")


# -- writing -------------------------------------------------------------------------------------
def save_feedback(folder, model, ds, problem) -> None:
    """Write the trained feedback network ``model`` (FeedbackClassifier or EdgeClassifier) of
    data set ``ds`` (its standardisation and labels) and :class:`~.problem.ClassifierProblem`
    ``problem`` into ``folder`` (atomically; collective, any number of ranks)."""
    eq = problem.equation
    _save(folder, model, model.a, {
        "kind": "feedback", "velocity": problem.velocity,
        "anchors": np.asarray(model.anchors, float).tolist(),
        "loss_weight": float(model.beta), "classes": [str(c) for c in ds.classes],
        "V": str(eq["V"]), "params": dict(eq["params"]), "projection": PROJECTION}, ds)


def save_generative(folder, fm, ds, problem) -> None:
    """Write the learned map of a trained generative flow, the
    :class:`~.generative.FlowMap` ``fm`` (its probability-flow velocities vⁿ), of data set
    ``ds`` and :class:`~.problem.GenerativeProblem` ``problem`` into ``folder`` (atomically;
    collective)."""
    model, gen = fm.model, problem.generative
    _save(folder, model, [v.x.array for v in fm.v], {
        "kind": "generative", "velocity": "P1", "target_std": float(gen.target_std),
        "target_mass_on_mesh": float(model.Z), "score": bool(gen.score),
        "sigma": float(problem.sigma), "seed": int(problem.seed) + 1,
        "samples": int(gen.samples), "projection": GENERATIVE_PROJECTION}, ds)


def _save(folder, model, velocities, info: dict, ds) -> None:
    """``model``'s mesh and the per-layer ``velocities`` (arrays of ``model.Va``) with
    ``info``, the layers and the data set's standardisation in model.json (collective)."""
    from ..checkpoint import STATES, _commit, _gather_rows
    Va, comm = model.Va, model.comm
    n, bs = Va.dofmap.index_map.size_local, Va.dofmap.index_map_bs
    vals = np.stack([np.asarray(a)[: n * bs].reshape(n, bs) for a in velocities], axis=1)
    nodes = Va.tabulate_dof_coordinates()[:n]
    info = {"format": FORMAT, **info, "T": float(model.T), "steps": int(model.N),
            "tau": float(model.tau), "feature_mean": [float(v) for v in ds.mean],
            "feature_scale": [float(v) for v in ds.scale], "dataset": ds.name,
            "dim": int(model.mesh.geometry.dim)}
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


class _SavedFlow:
    """A per-layer velocity read from a ``model/`` folder written by :func:`_save`: its
    ``mesh``, ``V`` (P1), ``Va``, the layers ``a`` (full local arrays of ``Va``), ``N``,
    ``T``, ``tau``, ``comm``, ``meta`` (model.json) and the features' ``mean`` and
    ``scale``.  ``kind``: the model.json kind it reads."""

    kind = ""

    def __init__(self, folder, comm=None):
        from mpi4py import MPI

        import adios4dolfinx
        import dolfinx

        from ..checkpoint import NODES, STATES, _match_nodes, _sizes
        from ..errors import ConfigError
        self.folder = folder = Path(folder)
        self.comm = comm = comm or MPI.COMM_WORLD
        with _readable(folder, META):
            meta = json.loads((folder / META).read_text())
            if not isinstance(meta, dict) or meta.get("kind") != self.kind:
                raise ValueError(f"not a {self.kind} network's model.json")
            if int(meta.get("format", 0)) > FORMAT:
                raise ValueError(f"format {meta['format']} of a newer fem_mfc (this one reads "
                                 f"format {FORMAT})")
            self.meta = meta
            self.N, self.T, self.tau = int(meta["steps"]), float(meta["T"]), float(meta["tau"])
            self.mean = np.array(meta["feature_mean"], float)
            self.scale = np.array(meta["feature_scale"], float)
            velocity = meta["velocity"]
            self._read_meta(meta)
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
        self._flow = None

    def _read_meta(self, meta: dict) -> None:
        """The keys of model.json of this kind (a KeyError or ValueError: unreadable)."""

    @property
    def data_dim(self) -> int:
        return len(self.mean)

    def standardise(self, X_raw) -> np.ndarray:
        """Raw features (d columns) → the network's coordinates, padded to the mesh's."""
        Z = (np.atleast_2d(np.asarray(X_raw, float)) - self.mean) / self.scale
        out = np.zeros((Z.shape[0], self.mesh.geometry.dim))
        out[:, :Z.shape[1]] = Z
        return out

    def off_mesh(self, Z) -> int:
        """How many rows of Z (network coordinates) lie outside the mesh (collective)."""
        _, owner = self.flow.ev.locate(Z)
        return int(np.count_nonzero(owner == self.comm.size))


class FeedbackModel(_SavedFlow):
    """A feedback network read from a ``model/`` folder, with the attributes of a trained
    network that :class:`~.infer.TrainedFlow` and :func:`~.infer.evaluate_flow` read
    (``mesh``, ``V``, ``Va``, ``a``, ``N``, ``tau``, ``comm``, ``anchors``, ``beta``,
    ``Vpot``)."""

    kind = "feedback"

    def __init__(self, folder, comm=None):
        import ufl

        from ..expressions import parse
        super().__init__(folder, comm)
        meta = self.meta
        with _readable(self.folder, META + " V"):
            self.Vpot = parse(str(meta.get("V", "0")), "problem.V",
                              x=ufl.SpatialCoordinate(self.mesh), gdim=self.mesh.geometry.dim,
                              params=meta.get("params") or {})

    def _read_meta(self, meta: dict) -> None:
        self.anchors = np.array(meta["anchors"], float)
        self.K = len(self.anchors)
        self.beta = float(meta["loss_weight"])
        self.classes = tuple(str(c) for c in meta["classes"])

    @property
    def flow(self):
        from .infer import TrainedFlow
        if self._flow is None:
            self._flow = TrainedFlow(self)
        return self._flow

    def predict(self, X_raw) -> Prediction:
        """Push raw feature rows (the same on every rank; collective) through the flow."""
        from .infer import nearest_anchor
        Z = self.standardise(X_raw)
        off = self.off_mesh(Z)
        r = self.flow.push(Z)
        k = nearest_anchor(r.X, self.anchors)
        return Prediction(k, np.asarray(self.classes)[k], r.X, r.projected, off)


@dataclass
class Transport:
    """What a generative model returns for rows of raw data."""

    latent: np.ndarray       # x_N, the points in the base N(0, s²I) (network coordinates)
    log_density: np.ndarray  # log p(x_0) in the data's units (nats)
    off_mesh: int            # rows whose standardised point lies outside the mesh


class GenerativeModel(_SavedFlow):
    """The learned map of a generative run read from its ``model/`` folder: the flow is
    trained from the data (ρ_0) to the base N(0, s²I) restricted to the mesh, so
    :meth:`sample` pulls base samples back through it (generation) and :meth:`predict`
    pushes data forward (its latent point and the model's log-density).  Its ``a`` are the
    probability-flow velocities vⁿ of :class:`~.generative.FlowMap` (the score included)."""

    kind = "generative"

    def _read_meta(self, meta: dict) -> None:
        from .generative import log_target
        self.std = float(meta["target_std"])
        self.Z = float(meta["target_mass_on_mesh"])
        self.seed = int(meta["seed"])
        self.log_target = log_target(self.std, int(meta["dim"]), self.Z)

    @property
    def flow(self):
        from .generative import FlowMap
        if self._flow is None:
            self._flow = FlowMap(self, score=False)     # (vⁿ holds the score already)
        return self._flow

    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """n new points in the data's units (n × d; the same on every rank; collective):
        z ~ N(0, s²I) on the mesh drawn with ``seed`` (default: the run's, which draws the
        run's own samples.csv for the run's number of samples), pulled back through the
        flow."""
        rng = np.random.default_rng(self.seed if seed is None else seed)
        X, _ = self.flow.sample(n, rng, self.std)
        return unstandardise(X, self.mean, self.scale)

    def predict(self, X_raw) -> Transport:
        """Push raw data rows (the same on every rank; collective) forward through the flow:
        x_N and log p(x_0) = log N_Ω(x_N) + Σ log|det(I + τ∇vⁿ)| − Σ_i log scale_i."""
        Z = self.standardise(X_raw)
        off = self.off_mesh(Z)
        XN, logdet, _ = self.flow.forward(Z)
        return Transport(XN, self.log_target(XN) + logdet - np.log(self.scale).sum(), off)


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


KINDS = {"classifier": {"feedback": FeedbackModel, "dictionary": DictionaryModel},
         "generative": {"generative": GenerativeModel}}


def load(run, comm=None, formulations=("classifier", "generative"), use: str = "apply"):
    """The trained model of run folder ``run`` (or of its ``model/`` folder) of one of
    ``formulations``: a :class:`FeedbackModel` or a :class:`DictionaryModel` (classifier), a
    :class:`GenerativeModel` (generative).  A folder that is not such a run with a saved model
    is a one-line :class:`UserError` (``use``: what the caller does with the model; collective:
    every rank reads the same files)."""
    run = Path(run)
    which = " or ".join(formulations)
    expected = " or ".join(f'formulation = "{f}"' for f in formulations)
    kinds = {k: (f, cls) for f in formulations for k, cls in KINDS[f].items()}

    def refuse(formulation):
        raise UserError(f"{run}: a '{formulation}' run has no trained model to {use} (expected "
                        f"the output folder of a run with {expected})")

    if not run.is_dir():
        raise UserError(f"{run}: run folder not found (expected the output folder of fem-mfc "
                        f"run with a {which} config)")
    folder = next((f for f in (run, run / MODEL_DIR) if (f / META).is_file()), None)
    if folder is not None:
        with _readable(folder, META):
            meta = json.loads((folder / META).read_text())
            kind = meta.get("kind") if isinstance(meta, dict) else None
            if not any(kind in KINDS[f] for f in KINDS):
                raise ValueError(f"unknown kind {kind!r}")
        if kind not in kinds:
            refuse(next(f for f in KINDS if kind in KINDS[f]))
        return kinds[kind][1](folder, comm)
    if (run / WEIGHTS).is_file():
        if "dictionary" not in kinds:
            refuse("classifier")
        return DictionaryModel(run / WEIGHTS)
    summary = {}
    with contextlib.suppress(OSError, ValueError):
        summary = json.loads((run / "summary.json").read_text())
    if not isinstance(summary, dict) or not summary:
        raise UserError(f"{run}: not a fem-mfc run folder (no summary.json, {MODEL_DIR}/ or "
                        f"{WEIGHTS}; expected the output folder of a {which} run)")
    formulation = summary.get("formulation")
    if formulation not in formulations:
        refuse(formulation)
    files = f"{MODEL_DIR}/ or {WEIGHTS}" if formulation == "classifier" else f"{MODEL_DIR}/"
    raise UserError(f"{run}: a {formulation} run without a saved model ({files}: written by "
                    "an older fem_mfc); run its config.toml again")


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


def unstandardise(X, mean, scale) -> np.ndarray:
    """Network coordinates → the data's units (the mesh's padded coordinates dropped)."""
    return X[:, :len(mean)] * scale + mean


def samples_text(X_raw) -> str:
    """Points in the data's units as CSV with the header x1,…,xd (the run's samples.csv and
    ``fem-mfc sample``'s output)."""
    return table_text([f"x{i + 1}" for i in range(X_raw.shape[1])],
                      ([repr(float(v)) for v in x] for x in X_raw))


def predictions_text(pred) -> str:
    """The CSV of ``fem-mfc predict``: a :class:`Prediction`'s ``label,final_x1,…,final_xD``
    or a :class:`Transport`'s ``log_density,final_x1,…,final_xD`` (full precision)."""
    first, col = (("label", pred.labels) if isinstance(pred, Prediction)
                  else ("log_density", [repr(float(v)) for v in pred.log_density]))
    final = pred.final if isinstance(pred, Prediction) else pred.latent
    return table_text([first] + [f"final_x{i + 1}" for i in range(final.shape[1])],
                      ([c] + [repr(float(v)) for v in x] for c, x in zip(col, final)))


def table_text(header, rows) -> str:
    import io
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def write_table(path, text: str) -> None:
    """``text`` into file ``path`` atomically, or to standard output (``-``)."""
    from ..io import write_text_atomic
    if str(path) == "-":
        import sys
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_text_atomic(path, text)


__all__ = ["FeedbackModel", "DictionaryModel", "GenerativeModel", "Prediction", "Transport",
           "load", "read_points", "save_feedback", "save_generative", "predictions_text",
           "samples_text", "write_table", "MODEL_DIR"]
