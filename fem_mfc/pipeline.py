"""One run, whatever the formulation: validated config → resource estimate → PETSc options
scoped to the run → runner → verdict → outputs.

:func:`run_config` is what ``fem-mfc run`` and ``fem-mfc refine`` (one call per level) do:

1. refuse a run whose memory estimate exceeds the memory available (``force`` overrides;
   :func:`fem_mfc.config.check_resources`);
2. insert the run's PETSc options — the config's ``[solver] petsc_options`` and the command
   line's, the latter winning — into PETSc's options database for the duration of the run
   only (:func:`fem_mfc.options.inserted`): a second run in the same process starts clean;
3. stage the output folder (:class:`fem_mfc.io.RunContext`), call the formulation's runner
   (:mod:`fem_mfc.registry`);
4. the verdict: a runner reports ``converged`` and named ``checks``; a run whose solve did not
   meet its tolerance or whose checks failed is written as usual but flagged
   ``"converged": false`` in summary.json, with a warning line naming the figure, and the
   command exits with status 3 (:data:`EXIT_UNCONVERGED`);
5. write summary.json and config.toml (which reproduces the run) and swap the folder in.

Runners build their mesh with :func:`build_mesh`, which checks every formula of the config on
it before anything is assembled.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path

from .errors import ConfigError, UserError

EXIT_OK, EXIT_INPUT, EXIT_UNCONVERGED = 0, 2, 3


def build_mesh(cfg: dict, comm):
    """The config's mesh (:func:`fem_mfc.mesh.build`) with every formula of the config checked
    on it (:func:`fem_mfc.checks.check_formulas`; ConfigError naming the key)."""
    from . import mesh as meshmod
    from .checks import check_formulas
    md = meshmod.build(cfg["mesh"], comm)
    check_formulas(cfg, md.mesh)
    return md


def versions(full: bool = False) -> dict:
    """Versions of the stack (``full``: also PyVista, which is slow to import)."""
    import sys

    from mpi4py import MPI
    from petsc4py import PETSc

    import dolfinx
    import ufl

    from . import __version__
    out = {"fem_mfc": __version__, "dolfinx": dolfinx.__version__, "ufl": ufl.__version__,
           "petsc": ".".join(map(str, PETSc.Sys.getVersion())),
           "mpi": MPI.Get_library_version().splitlines()[0].strip().strip("\x00").split(",")[0],
           "mpi4py": __import__("mpi4py").__version__,
           "python": sys.version.split()[0], "ranks": MPI.COMM_WORLD.size}
    out.update(source())                   # the same for every run of this process
    if full:
        import pyvista
        out["pyvista"] = pyvista.__version__
    return out


@functools.lru_cache(maxsize=1)
def source() -> dict:
    """Which code ran: ``fem_mfc_source``, a SHA-256 over the package's Python files (their
    paths and contents: two runs with the same hash ran the same code), and where the package
    sits in a git checkout, ``git_commit`` and ``git_dirty`` (uncommitted changes to it).
    Without them two summaries of one config that disagree could not be told apart."""
    import hashlib
    import subprocess
    pkg = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(pkg.rglob("*.py")):
        h.update(str(f.relative_to(pkg)).encode() + b"\0" + f.read_bytes() + b"\0")
    out = {"fem_mfc_source": h.hexdigest()[:16]}
    try:
        def git(*args):
            return subprocess.run(["git", "-C", str(pkg.parent), *args], capture_output=True,
                                  text=True, timeout=10)
        head = git("rev-parse", "HEAD")
        if head.returncode == 0:
            out["git_commit"] = head.stdout.strip()
            dirty = git("status", "--porcelain", "--untracked-files=no", "--", str(pkg))
            out["git_dirty"] = bool(dirty.stdout.strip()) if dirty.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def bound(value: float, limit: float, hint: str, relation: str = "<=") -> dict:
    """One of a run's ``checks``: {value, limit, relation, ok, hint}, ``ok`` when ``value
    relation limit`` ("<=" an upper bound, ">=" a lower one); :func:`verdict` reads them."""
    ok = value <= limit if relation == "<=" else value >= limit
    return {"value": value, "limit": limit, "relation": relation, "ok": bool(ok), "hint": hint}


def verdict(summary: dict) -> list[str]:
    """Why a run is not a success: one line per failed figure (empty: success)."""
    out = []
    if summary.get("converged") is False:
        why = summary.get("reason") or "the solve did not meet its tolerance"
        out.append(f"the solve did not converge ({why}; residual "
                   f"{summary.get('residual', float('nan')):.3g})")
    for name, c in (summary.get("checks") or {}).items():
        if not c.get("ok", True):
            out.append(f"check '{name}' failed: {c.get('value'):.4g} "
                       f"{c.get('relation', 'vs')} {c.get('limit'):.4g}"
                       + (f" ({c['hint']})" if c.get("hint") else ""))
    return out


def solve_line(method: str, converged: bool, iterations, reason: str, residual: float,
               checks: dict | None) -> str:
    """The run.log line of a solve's outcome, written once its checks are known: a solve that
    met its tolerance and failed a check is not "converged" (Picard's log said "picard:
    converged after 11 iterations" and the run then failed its value identity check and was
    flagged converged = false)."""
    its = iterations or 0
    if not converged:
        return (f"{method}: did not converge after {its} iterations ({reason}), "
                f"residual {residual:.3e}")
    failed = [name for name, c in (checks or {}).items() if not c.get("ok", True)]
    if not failed:
        return f"{method}: converged after {its} iterations ({reason}), residual {residual:.3e}"
    return (f"{method}: met its tolerance after {its} iterations ({reason}), residual "
            f"{residual:.3e}, but failed the check{'s' if len(failed) > 1 else ''} "
            f"{', '.join(failed)}: not converged")


def run_settings(cfg: dict, petsc_options: dict | None = None) -> dict:
    """The PETSc options of a run: the config's ``[solver] petsc_options``, overridden by
    ``petsc_options`` (the command line's), names without '-' and values as strings."""
    from . import options
    settings = options.normalise(cfg["solver"]["petsc_options"])
    settings.update(options.normalise(petsc_options))
    return settings


def reproducing(cfg: dict, settings: dict) -> dict:
    """The config that reproduces a run: ``cfg`` with the run's PETSc options — those of its
    ``[solver] petsc_options`` and of the command line, as inserted (names without '-') — in
    ``[solver] petsc_options`` (command-line options used to be lost: a run with
    ``-mfc_snes_rtol 1e-3`` stored rtol 1e-10's config)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()}
    out["solver"] = dict(cfg["solver"], petsc_options=dict(settings))
    return out


def run_config(cfg: dict, outdir, petsc_options: dict | None = None, config_path="<dict>",
               quiet: bool = False, comm=None, force: bool = False, on_finish=None,
               restart=None, print_flags: bool = True) -> dict:
    """Run a validated config into ``outdir``; return the summary (also written as JSON).
    ``summary["converged"]`` is False when the run is flagged (exit status 3 for the CLI).
    ``on_finish()`` is called while the run's PETSc options are still inserted; ``restart``:
    a checkpoint folder to continue from (:mod:`fem_mfc.checkpoint`).  ``print_flags=False``:
    the flags of a flagged run go to run.log only, not to the console (the CLI prints them
    itself, once, when the run ends).  A config error found while running names the config
    file ``config_path`` as those found when loading it do (it named the key only)."""
    try:
        return _run_config(cfg, outdir, petsc_options, config_path, quiet, comm, force,
                           on_finish, restart, print_flags)
    except ConfigError as e:
        located = e.located(config_path if config_path != "<dict>" else None)
        if located is e:
            raise
        raise located from None


def _run_config(cfg, outdir, petsc_options, config_path, quiet, comm, force, on_finish,
                restart, print_flags) -> dict:
    from mpi4py import MPI

    from . import compat, options, registry
    from . import config as config_mod
    from .io import RunContext, write_text_atomic
    comm = comm or MPI.COMM_WORLD
    t0 = time.perf_counter()
    compat.fast_jit_lookup()
    config_mod.check_resources(cfg, force=force)
    try:
        runner = registry.runner(cfg["run"]["formulation"])
    except (ImportError, AttributeError) as e:
        raise UserError(f"formulation '{cfg['run']['formulation']}' is not available in this "
                        f"build ({e})") from None
    settings = run_settings(cfg, petsc_options)
    with options.inserted(settings=settings):
        if restart is not None:
            from . import checkpoint
            restart = checkpoint.resolve(restart)
            checkpoint.read_meta(restart, cfg)     # refused before anything runs
        ctx = RunContext.create(outdir, comm=comm, petsc_options=settings, cfg=cfg,
                                quiet=quiet)
        ctx.restart = restart
        try:
            ctx.log.info("fem-mfc run: %s -> %s (%d ranks)", config_path, ctx.outdir,
                         comm.size)
            from . import checkpoint
            for ck in {checkpoint.folder_for(ctx.outdir), *([restart] if restart else [])}:
                checkpoint.remove_stale(ck, comm, ctx.log)   # of killed runs (ours locked)
            # the contents of the files the run reads (mesh, rho0), before it reads them:
            # refine --resume reuses the run only for the same contents
            inputs = comm.bcast(checkpoint.input_digests(cfg) if comm.rank == 0 else None,
                                root=0)
            result = runner(cfg, ctx)
            if ctx.animation:
                result["animations"] = ctx.render_animations()
            summary = {"formulation": cfg["run"]["formulation"], "title": cfg["run"]["title"],
                       "config": str(config_path), "ranks": comm.size}
            summary.update(result)
            if inputs:
                summary["input_sha256"] = inputs
            problems = verdict(summary)
            if problems and options.missing_value() is not None:
                raise options.missing_value()      # a solver swallowed PETSc's error
            summary["converged"] = not problems
            if problems:
                summary["flags"] = problems
                for line in problems:
                    ctx.log.info("warning: %s", line, extra={"console": print_flags})
            summary["wall_time_s"] = time.perf_counter() - t0
            summary["versions"] = versions()
            summary["petsc_options"] = settings
            if comm.rank == 0:
                write_text_atomic(ctx.path("config.toml"), config_mod.dumps(reproducing(cfg,
                                                                                  settings)))
            ctx.log.info("done in %.2f s%s", summary["wall_time_s"],
                         "" if not problems else " (flagged: converged = false)")
            ctx.commit(summary)
        except BaseException as e:
            ctx.abort()
            missing = options.missing_value() if isinstance(e, Exception) else None
            if missing is not None and missing is not e:
                raise missing from None              # the cause of the failure
            raise
        if on_finish is not None:
            on_finish()
    return summary


__all__ = ["run_config", "reproducing", "run_settings", "build_mesh", "verdict", "versions",
           "solve_line",
           "EXIT_OK", "EXIT_INPUT", "EXIT_UNCONVERGED"]
