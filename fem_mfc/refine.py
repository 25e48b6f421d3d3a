"""Refinement studies: run one config on a sequence of levels and measure convergence rates.

Level k refines in space (``mesh.refine = base + k``: cells × 2^k or gmsh size h / 2^k, each
level meshed directly), in time (``problem.steps × 2^k``) or both.  Each level's runner must
report error norms against the config's exact solution (keys ``err_*``), plus ``h``, ``tau``,
``ndofs``, ``nsteps``.  The observed order of a norm e between levels k−1 and k is

    rate_k = log(e_{k−1}/e_k) / log(s_{k−1}/s_k),

where s is h (space or both) or τ (time).  Writes ``convergence.json``, ``convergence.csv`` and
a log-log ``convergence.png`` into the output folder (atomically).

A study stopped part of the way (killed, or fewer ``--levels`` first) continues with
``resume``: a level whose folder holds a converged run of the same level config (and of the
same contents of the mesh or rho0 file it read) is reused, a
level with a checkpoint beside its folder (``[output] checkpoint_every``) restarts from it,
the others run; each row says which (``run``).

A study with fewer levels than the one before it in the same folder (with or without
``resume``) moves the folders of the levels it does not have aside as ``level_K.previous``
once its own levels are done, as ``run`` keeps the run it replaces as ``DIR.previous``: the
folder then holds one study, whose ``convergence.json`` lists ``moved_aside``.  Their
checkpoints stay (a later ``resume`` with more levels restarts from them).
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
from pathlib import Path

from mpi4py import MPI

from .errors import UserError
from .io import prepare_outdir, write_json_atomic, write_text_atomic

TABLES = ("convergence.json", "convergence.csv", "convergence.png")   # the study's own files


def level_config(cfg: dict, level: int, where: str) -> dict:
    """The config of refinement level ``level`` (0 = the given config)."""
    c = copy.deepcopy(cfg)
    if where in ("space", "both"):
        c["mesh"]["refine"] = cfg["mesh"]["refine"] + level
    if where in ("time", "both"):
        c["problem"]["steps"] = cfg["problem"]["steps"] * 2 ** level
    c["output"].update(figures=False, vtx=False, xdmf=False, animation=False, progress=False)
    return c


def rates(levels: list[dict], where: str) -> dict:
    """Observed orders of every ``err_*`` norm between consecutive levels."""
    scale = "tau" if where == "time" else "h"
    names = [k for k in levels[0] if k.startswith("err_")]
    out = {}
    for name in names:
        r = []
        for a, b in zip(levels[:-1], levels[1:]):
            ea, eb = a.get(name), b.get(name)
            if ea is None or eb is None or ea <= 0 or eb <= 0 or a[scale] == b[scale]:
                r.append(None)
            else:
                r.append(math.log(ea / eb) / math.log(a[scale] / b[scale]))
        out[name] = r
    return out


# An observed order below this between two levels is reported: the error did not fall as a
# convergent discretisation's does (every scheme here is at least first order in h and τ).
LOW_ORDER = 0.5

CAUSE = {"time": "the spatial error of the fixed mesh dominates: refine it (more cells or "
                 "mesh.refine) or use --in both",
         "space": "the time error of the fixed step dominates: use more steps or --in both",
         "both": "the levels are not yet in the asymptotic range: start from a finer level"}


def low_orders(rates_: dict, where: str) -> str | None:
    """One line naming the norms whose observed order fell below :data:`LOW_ORDER` between
    some pair of levels, and the likely cause; None if every order is at least that."""
    low = {k: r for k, r in rates_.items() if any(v is not None and v < LOW_ORDER for v in r)}
    if not low:
        return None
    shown = "; ".join(f"{k} " + ", ".join("n/a" if v is None else f"{v:.2g}" for v in r)
                      for k, r in low.items())
    return (f"refinement in {where}: observed orders below {LOW_ORDER:g} ({shown}); "
            f"probably {CAUSE[where]}")


def finished_level(folder: Path, level_cfg: dict, comm=MPI.COMM_WORLD,
                   petsc_options: dict | None = None) -> dict | None:
    """The summary of a converged run of ``level_cfg`` with ``petsc_options`` in ``folder``
    (its ``config.toml`` is that config), else None."""
    from . import config as config_mod
    from .pipeline import reproducing, run_settings
    out = None
    if comm.rank == 0:
        try:
            same = (folder / "config.toml").read_text() == config_mod.dumps(
                reproducing(level_cfg, run_settings(level_cfg, petsc_options)))
            s = json.loads((folder / "summary.json").read_text()) if same else {}
            out = s if s.get("converged") is True else None
            if out is not None and _inputs_changed(level_cfg, out, folder / "summary.json"):
                out = None
        except (OSError, ValueError):
            out = None
    return comm.bcast(out, root=0)


def _inputs_changed(level_cfg: dict, summary: dict, path: Path) -> bool:
    """Has the mesh file or the rho0 checkpoint the config names (kind 'file') changed since
    the level ran?  By their contents: the digests the level's summary recorded
    (``input_sha256``) against the files' now (:func:`fem_mfc.checkpoint.input_digests`, the
    digest a checkpoint restart compares).  Time stamps missed a file replaced by an older
    copy (``cp -p``, ``git checkout``) and ran again a level whose file was only touched.
    A level written before the digests were recorded: by time (:func:`_inputs_changed_since`,
    ``path`` its summary.json)."""
    from .checkpoint import input_digests
    recorded = summary.get("input_sha256")
    if recorded is None:
        return _inputs_changed_since(level_cfg, path)
    now = input_digests(level_cfg)
    return recorded != now or None in now.values()


def _inputs_changed_since(level_cfg: dict, summary: Path) -> bool:
    """Was the mesh file or the rho0 checkpoint the config names (kind 'file') changed after
    ``summary`` was written (by time stamp: the rule of levels written before their summary
    recorded the files' digests)?  The level's config.toml names them, not their contents: a
    mesh file regenerated between two --resume studies reused the levels of the old mesh."""
    written = summary.stat().st_mtime
    for section in ("mesh", "rho0"):
        c = level_cfg.get(section) or {}
        if c.get("kind") != "file" or not c.get("file"):
            continue
        p = Path(c["file"])
        paths = [p, *p.rglob("*")] if p.is_dir() else [p]
        if any(q.stat().st_mtime > written for q in paths):
            return True
    return False


def _usable(ck: Path, level_cfg: dict, comm) -> bool:
    """A checkpoint of this level's problem beside its folder (one of an earlier, different
    study is left alone: the level runs from the start)."""
    from . import checkpoint
    from .errors import ConfigError
    ok = False
    if comm.rank == 0 and (ck / checkpoint.META).is_file():
        try:
            checkpoint.read_meta(ck, level_cfg)
            ok = True
        except (ConfigError, OSError, ValueError):
            ok = False
    return comm.bcast(ok, root=0)


def _exact_fits(cfg: dict, entry) -> tuple[list, list]:
    """(the exact solutions of ``entry`` that ``cfg`` could set, the settings that leave it
    none): the solutions of hjb-fp, cole-hopf and qhd set V, Phi and a Gaussian rho0 themselves
    and 'lq-gaussian' also needs G = 0 and the quadratic H; 'heat-gaussian' a Gaussian rho0
    (the congested square was told to set 'lq-gaussian' or 'manufactured', each refused in
    turn naming problem.Phi)."""
    fits, keys = list(entry.exact), []
    pr, r0 = cfg.get("problem", {}), cfg.get("rho0", {})
    if entry.name in ("hjb-fp", "cole-hopf", "qhd"):
        keys += [f"problem.{k} = '{pr[k]}'" for k in ("V", "Phi")
                 if str(pr.get(k, "0")).strip() not in ("0", "0.0")]
        if str(pr.get("G", "0")).strip() not in ("0", "0.0") or \
                pr.get("H", "quadratic") != "quadratic":
            fits = [x for x in fits if x != "lq-gaussian"]
    if entry.name in ("hjb-fp", "cole-hopf", "qhd", "heat") and \
            r0.get("kind", "gaussian") != "gaussian":
        keys.append(f"rho0.kind = '{r0['kind']}'")
    if not fits and not keys:
        keys = ["problem.G or problem.H"]
    return ([] if keys else fits), keys


def refinement_study(cfg: dict, outdir, levels: int = 3, where: str = "both",
                     petsc_options: dict | None = None, config_path="<dict>",
                     comm=MPI.COMM_WORLD, force: bool = False, resume: bool = False,
                     report=None) -> dict:
    """Run ``levels`` refinement levels of ``cfg`` and write the convergence table (each
    level's row says whether its run converged and, with ``resume``, whether it was reused,
    restarted from its checkpoint or run).  ``report(line)``: told each level's errors as it
    finishes (the levels run quietly)."""
    from . import checkpoint, registry
    from .pipeline import run_config
    entry = registry.get(cfg["run"]["formulation"])
    if not entry.refinable:
        raise UserError(f"formulation '{entry.name}' has no refinement support")
    if cfg["exact"]["solution"] == "none":
        # exits, leaky walls, periodic sides and the monotone scheme take no exact solution:
        # the advice below was refused in turn (monotone + exits: twice)
        takes_none = [f"[[boundary]] kind = '{b['kind']}'" for b in cfg.get("boundary", ())
                      if b.get("kind", "no-flux") != "no-flux"][:1]
        if cfg.get("discretisation", {}).get("stabilisation", "none") != "none":
            takes_none.append("stabilisation = 'monotone'")
        if cfg.get("population"):
            # several populations refuse every [exact] solution too (was advised to set one)
            takes_none.append("[[population]] tables")
        fits, keys = _exact_fits(cfg, entry)
        takes_none += keys if not fits else []
        if takes_none:
            raise UserError(f"{config_path}: no exact solution to measure errors against, "
                            f"and none applies with {' and '.join(takes_none)} (compare runs "
                            "at halved h and tau instead, e.g. their J and mass_exited)")
        # the solutions of this formulation (heat was told to set 'lq-gaussian', which it
        # refuses) that this config takes
        raise UserError(f"{config_path}: no exact solution to measure errors against (set "
                        f"[exact] solution = " + " or ".join(f"'{x}'" for x in fits)
                        + f" for formulation '{entry.name}')")
    if cfg["mesh"]["kind"] == "file" and where != "time":
        raise UserError("mesh.kind = 'file' has one resolution: use --in time, or a generated "
                        "mesh kind")
    outdir = prepare_outdir(outdir, comm)
    if comm.rank == 0:
        # the study's table describes the levels beside it: an earlier one stays no longer
        # than those (a study stopped half-way kept the earlier convergence.json, with
        # other runs' numbers, beside its new levels)
        for name in TABLES:
            (outdir / name).unlink(missing_ok=True)
    comm.barrier()
    rows = []
    for k in range(levels):
        lc, folder = level_config(cfg, k, where), outdir / f"level_{k}"
        s = finished_level(folder, lc, comm, petsc_options) if resume else None
        how = "reused"
        if s is None:
            ck = checkpoint.folder_for(folder)
            restart = ck if resume and _usable(ck, lc, comm) else None
            how = "run" if restart is None else "restarted"
            s = run_config(lc, folder, petsc_options, config_path, quiet=True, comm=comm,
                           force=force, restart=restart)
        errs = {key: v for key, v in s.items() if key.startswith("err_")}
        if not errs:
            raise UserError(f"{config_path}: the run reports no error norms for exact solution "
                            f"'{cfg['exact']['solution']}'")
        rows.append({"level": k, "h": s["h"], "tau": s["tau"], "ndofs": s["ndofs"],
                     "nsteps": s["nsteps"], "converged": s.get("converged", True), "run": how,
                     **errs})
        if report is not None:
            report(f"level {k + 1}/{levels} ({how}): {s['ndofs']} dofs x {s['nsteps']} steps, "
                   f"h = {s['h']:.4g}, tau = {s['tau']:.4g}: "
                   + ", ".join(f"{n} = {v:.3e}" for n, v in errs.items() if v is not None)
                   + ("" if s.get("converged", True) else " (did not converge)"))
    result = {"where": where, "config": str(config_path), "levels": rows,
              "rates": rates(rows, where)}
    result["warning"] = low_orders(result["rates"], where)
    result["moved_aside"] = set_aside(outdir, levels, comm)
    if comm.rank == 0:            # convergence.json last: where it is, the study is whole
        write_text_atomic(outdir / "convergence.csv", csv_table(rows))
        _plot(rows, where, outdir / "convergence.png")
        write_json_atomic(outdir / "convergence.json", result)
    return result


def set_aside(outdir: Path, levels: int, comm=MPI.COMM_WORLD) -> list[str]:
    """Move the folders ``level_K`` (K ≥ ``levels``) of an earlier study with more levels to
    ``level_K.previous`` (an older one is deleted); returns their names.  A level folder that
    another run is writing (its lock is held) is refused with one line, nothing moved."""
    from .io import _FolderLock
    err, moved = None, []
    if comm.rank == 0:
        extra = sorted((e for e in os.listdir(outdir)
                        if (m := re.fullmatch(r"level_(\d+)", e)) and int(m.group(1)) >= levels
                        and (outdir / e).is_dir() and not (outdir / e).is_symlink()),
                       key=lambda e: int(e.split("_")[1]))
        for name in extra:
            lock = _FolderLock(outdir / f".{name}.lock")
            try:
                holder = lock.acquire()
                if holder is not None:
                    err = (f"{outdir / name}: another run is writing this level of an earlier "
                           f"study ({holder}); wait for it or choose another --out")
                    break
                previous = outdir / f"{name}.previous"
                if previous.exists() or previous.is_symlink():
                    shutil.rmtree(previous) if previous.is_dir() else previous.unlink()
                os.rename(outdir / name, previous)
                moved.append(name)
            except OSError as e:
                err = f"{outdir / name}: cannot move this level of an earlier study aside " \
                      f"({e.strerror})"
                break
            finally:
                lock.release()
    err = comm.bcast(err, root=0)
    if err:
        raise UserError(err)
    return comm.bcast(moved, root=0)


def csv_table(rows: list) -> str:
    """The rows as CSV: numbers at full precision (repr), text as it is (quoted only where
    CSV needs it), a missing value empty.  (Every cell was repr()'d: the run column read
    'run' with its quotes, a missing value None.)"""
    import csv
    import io
    cols = list(rows[0])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(["" if r.get(c) is None else repr(r[c]) if isinstance(r[c], float)
                    else r[c] for c in cols])
    return buf.getvalue()


def _plot(rows, where, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    scale = "tau" if where == "time" else "h"
    x = [r[scale] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name in [k for k in rows[0] if k.startswith("err_")]:
        y = [r[name] for r in rows]
        if all(v and v > 0 for v in y):
            ax.loglog(x, y, "o-", label=name)
    first = next((rows[0][k] for k in rows[0] if k.startswith("err_") and rows[0][k]), None)
    if first:
        for p in (1, 2, 3):  # reference slopes through the first error
            ax.loglog(x, [first * (xi / x[0]) ** p for xi in x], "k:", lw=0.8, alpha=0.5)
            ax.annotate(f"order {p}", (x[-1], first * (x[-1] / x[0]) ** p), fontsize=7)
    ax.set_xlabel(scale)
    ax.set_ylabel("error")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(f"refinement in {where}")
    fig.tight_layout()
    tmp = path.with_name("." + path.name)
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)
