"""Helpers of the test suite: observed orders of convergence, CLI runs and demo runs.

Tests run inside the fem_mfc environment (``bin/fem-env``), so ``sys.executable`` has DOLFINx.
MPI tests come in two kinds: ``@pytest.mark.mpi`` tests run *inside* ``mpirun -n 2 python3 -m
pytest --with-mpi -m mpi``, and serial tests that launch ``mpirun -n 2`` as a subprocess (via
:func:`run_cli` or :func:`run_demo` with ``ranks=2``) and compare the numbers with a serial run.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def observed_orders(errors, sizes, fit: bool = False):
    """Observed orders of convergence of ``errors`` measured at mesh sizes or time steps
    ``sizes`` (h, τ, 1/cells, ...): p_i = log(e_i/e_{i+1}) / log(s_i/s_{i+1}) between
    successive levels, as a list; ``fit=True``: the least-squares slope of log e against
    log s over all levels (one number)."""
    e, s = np.asarray(errors, dtype=float), np.asarray(sizes, dtype=float)
    if e.shape != s.shape or e.size < 2:
        raise ValueError(f"need as many errors as sizes, at least two: {e}, {s}")
    if fit:
        return float(np.polyfit(np.log(s), np.log(e), 1)[0])
    return (np.log(e[:-1] / e[1:]) / np.log(s[:-1] / s[1:])).tolist()


def env() -> dict:
    """The environment of a child process: this one's, with the repository importable and
    none of the parent's MPI singleton state (a child mpirun must start clean)."""
    out = dict(os.environ)
    out["PYTHONPATH"] = str(REPO) + os.pathsep + out.get("PYTHONPATH", "")
    out.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    out.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    out.setdefault("OMPI_MCA_btl_tcp_if_include", "lo")
    out.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    out.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    for k in list(out):
        if k.startswith(("OMPI_COMM_WORLD", "PMIX_", "OMPI_MCA_ess", "OMPI_MCA_orte")):
            out.pop(k)
    return out


def run_python(args: list, ranks: int = 1, cwd=None, timeout=600, check=False):
    """Run ``python3 ARGS`` (optionally under ``mpirun -n ranks``); return CompletedProcess."""
    cmd = [sys.executable, *map(str, args)]
    if ranks > 1:
        cmd = [shutil.which("mpirun") or "mpirun", "-n", str(ranks), *cmd]
    p = subprocess.run(cmd, cwd=cwd or REPO, env=env(), capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def run_cli(args: list, ranks: int = 1, **kw):
    """Run ``python3 -m fem_mfc ARGS``."""
    return run_python(["-m", "fem_mfc", *args], ranks=ranks, **kw)


def run_demo(name: str, out, ranks: int = 1, timeout=600, args=()):
    """Run ``demos/<name> --quick --out OUT [ARGS]`` from OUT's parent folder (serially or
    under ``mpirun -n ranks``); assert it succeeded and return the CompletedProcess."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    p = run_python([REPO / "demos" / name, "--quick", "--out", out, *args], ranks=ranks,
                   cwd=out.parent, timeout=timeout)
    assert p.returncode == 0, f"{name} failed ({p.returncode}):\n{p.stdout[-2000:]}\n" \
                              f"{p.stderr[-3000:]}"
    return p


def read_summary(folder, name: str = "summary.json") -> dict:
    return json.loads((Path(folder) / name).read_text())


def assert_same_numbers(a: dict, b: dict, keys, rtol=1e-8, atol=1e-12):
    """Two summaries (serial and parallel, ...) agree on ``keys`` to solver tolerance."""
    for k in keys:
        va, vb = a[k], b[k]
        if isinstance(va, (int, str)) and not isinstance(va, bool) and isinstance(vb, type(va)):
            assert va == vb, f"{k}: {va} != {vb}"
        else:
            assert abs(va - vb) <= atol + rtol * abs(va), f"{k}: {va} != {vb}"


def comparison_table(report: str) -> list[list[str]]:
    """The rows (header first) of the comparison table of a report.md."""
    part = report.split("## Comparison with torch baselines", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in part.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in rows if "---" not in ln]


def check_comparison_table(report: str, seeds: int, node: bool = True, bayes: bool = True):
    """Every column for every model: numbers (or 'mean ± std'), 'n/a' only where undefined
    (J of the baselines; the Bayes row's columns but fresh accuracy)."""
    from fem_mfc.learning.compare import COLUMNS
    rows = comparison_table(report)
    assert rows[0] == [h for _, h in COLUMNS]
    models = [r[0] for r in rows[1:]]
    want = ["mean-field PDE network", "torch ResNet, best", "torch ResNet, mean"]
    if node:
        want += ["neural ODE, best", "neural ODE, mean"]
    if bayes:
        want.append("Bayes-optimal")
    assert len(models) == len(want) and all(m.startswith(w) for m, w in zip(models, want))
    for r in rows[1:]:
        assert len(r) == len(COLUMNS), r
        for (key, _), cell in zip(COLUMNS[1:], r[1:]):
            if cell == "n/a":
                assert key == "J" and "PDE" not in r[0] or r[0].startswith("Bayes"), (key, r)
                continue
            if key == "converged":
                assert cell in ("True", "False") or cell.endswith(f"/{seeds}"), cell
            else:
                for part in cell.split(" ± "):
                    assert math.isfinite(float(part)), (key, cell)
    bayes_row = rows[-1] if bayes else None
    if bayes_row:
        assert 0 < float(bayes_row[2]) <= 1
    assert "The PDE network" in report and "minimises J" in report


def dense(A) -> np.ndarray:
    """A serial PETSc AIJ matrix as a dense array."""
    import scipy.sparse as sp
    ai, aj, av = A.getValuesCSR()
    return sp.csr_matrix((av, aj, ai), shape=A.getSize()).toarray()


def kkt_blocks(st, seed: int = 1):
    """The space-time Jacobian of ``st`` at a generic (non-solution) state — the states
    perturbed randomly, then put back on the constraints if the system has any — as a dense
    matrix M, with its FP block ∂(equations of u)/∂ρ and its HJB block ∂(equations of ρ)/∂u
    (fields by role, from the layout)."""
    rng = np.random.default_rng(seed)
    for f in st.rho[1:] + st.u:
        f.x.array[:] += 0.1 * rng.standard_normal(f.x.array.size)
    if st.constraints is not None:
        st.constraints.impose()
    M = dense(st.jacobian(None))
    lay = st.layout

    def rows(fields):
        return np.concatenate([np.arange(s.start, s.stop) for s in map(lay.slice, fields)])
    u_idx, r_idx = rows(lay.backward_fields()), rows(lay.forward_fields())
    return M, M[np.ix_(u_idx, r_idx)], M[np.ix_(r_idx, u_idx)]


def saved_model_prediction(out, cfg: dict, part: str = "train"):
    """The saved classifier of run folder ``out`` (:mod:`fem_mfc.learning.saved`) applied to
    the raw ``part`` points of its config ``cfg``: (Prediction, the classes 0..K−1 of the
    points).  The run's own ``{part}_accuracy`` is ``(prediction.k == y).mean()``."""
    from fem_mfc.learning import data, saved
    Xtr, Xte, ytr, yte, _, _ = data.split(cfg["data"])
    X, y = (Xtr, ytr) if part == "train" else (Xte, yte)
    return saved.load(out).predict(X), y
