"""The ``fem-mfc`` command line: ``info``, ``run``, ``refine``, ``schema``.

User errors (bad config, missing file, divergent solve) print one line and exit with status 2;
arguments that start with ``-`` and are not ours are PETSc options (``-snes_monitor``,
``-ksp_type preonly``), inserted into PETSc's options database before the solve.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

from .errors import UserError

PROG = "fem-mfc"


def split_petsc_options(tokens: list[str]) -> dict:
    """Turn ``['-snes_monitor', '-ksp_type', 'gmres']`` into ``{'snes_monitor': '', ...}``."""
    opts, i = {}, 0
    while i < len(tokens):
        t = tokens[i]
        if not t.startswith("-") or t in ("-", "--"):
            raise UserError(f"unexpected argument '{t}' (PETSc options look like -name [value])")
        name = t.lstrip("-")
        val = ""
        if i + 1 < len(tokens) and (not tokens[i + 1].startswith("-") or _is_number(tokens[i + 1])):
            val = tokens[i + 1]
            i += 1
        opts[name] = val
        i += 1
    return opts


def _is_number(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


def apply_petsc_options(opts: dict) -> None:
    """Insert options into PETSc's global options database."""
    from petsc4py import PETSc
    db = PETSc.Options()
    for k, v in opts.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        db.setValue(k, "" if v is None else str(v))


def versions() -> dict:
    import dolfinx
    import pyvista
    from mpi4py import MPI
    from petsc4py import PETSc
    import ufl
    from . import __version__
    return {"fem_mfc": __version__, "dolfinx": dolfinx.__version__,
            "ufl": ufl.__version__,
            "petsc": ".".join(map(str, PETSc.Sys.getVersion())),
            "mpi": MPI.Get_library_version().splitlines()[0].strip().strip("\x00").split(",")[0],
            "mpi4py": __import__("mpi4py").__version__, "pyvista": pyvista.__version__,
            "python": sys.version.split()[0], "ranks": MPI.COMM_WORLD.size}


def cmd_info(args) -> int:
    from mpi4py import MPI
    v = versions()
    if MPI.COMM_WORLD.rank == 0:
        width = max(map(len, v))
        for k, x in v.items():
            print(f"{k:<{width}}  {x}")
    return 0


def _common_summary(cfg, config_path, ctx, t0):
    from mpi4py import MPI
    return {"formulation": cfg["run"]["formulation"], "title": cfg["run"]["title"],
            "config": str(config_path), "ranks": MPI.COMM_WORLD.size,
            "wall_time_s": time.perf_counter() - t0, "versions": versions()}


def run_config(cfg: dict, outdir, petsc_options: dict | None = None, config_path="<dict>",
               quiet: bool = False, comm=None) -> dict:
    """Run a validated config into ``outdir``; return the summary (also written as JSON)."""
    from mpi4py import MPI
    from . import config as config_mod
    from . import runners
    from .io import RunContext
    comm = comm or MPI.COMM_WORLD
    t0 = time.perf_counter()
    opts = dict(cfg["solver"]["petsc_options"])
    opts.update(petsc_options or {})
    apply_petsc_options(opts)
    try:
        runner = runners.get(cfg["run"]["formulation"])
    except (ImportError, AttributeError) as e:
        raise UserError(f"formulation '{cfg['run']['formulation']}' is not available in this "
                        f"build ({e})") from None
    ctx = RunContext.create(outdir, comm=comm, petsc_options=opts, cfg=cfg, quiet=quiet)
    try:
        ctx.log.info("fem-mfc run: %s -> %s (%d ranks)", config_path, ctx.outdir, comm.size)
        result = runner(cfg, ctx)
        summary = _common_summary(cfg, config_path, ctx, t0)
        summary.update(result)
        summary["wall_time_s"] = time.perf_counter() - t0
        if comm.rank == 0:
            from .io import write_text_atomic
            write_text_atomic(ctx.path("config.toml"), config_mod.dumps(cfg))
        ctx.log.info("done in %.2f s", summary["wall_time_s"])
        ctx.commit(summary)
    except BaseException:
        ctx.abort()
        raise
    return summary


def cmd_run(args, petsc_tokens) -> int:
    from . import config
    cfg = config.load(args.config)
    out = args.out or str(Path("results") / Path(args.config).stem)
    run_config(cfg, out, split_petsc_options(petsc_tokens), args.config, quiet=args.quiet)
    return 0


def cmd_refine(args, petsc_tokens) -> int:
    from . import config
    from .refine import refinement_study
    cfg = config.load(args.config)
    out = args.out or str(Path("results") / (Path(args.config).stem + "_refine"))
    refinement_study(cfg, out, levels=args.levels, where=args.where,
                     petsc_options=split_petsc_options(petsc_tokens), config_path=args.config)
    return 0


def cmd_schema(args) -> int:
    from .config import schema_markdown
    print(schema_markdown())
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Deep learning as mean-field control, "
                                "solved as PDEs with DOLFINx/PETSc. Unknown -options are passed "
                                "to PETSc.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions of DOLFINx, PETSc, MPI, PyVista; number of ranks")
    r = sub.add_parser("run", help="run a configured problem")
    r.add_argument("config", help="TOML config file")
    r.add_argument("--out", help="output folder (default results/<config name>)")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    f = sub.add_parser("refine", help="mesh/time refinement study against the exact solution")
    f.add_argument("config")
    f.add_argument("--levels", type=int, default=3)
    f.add_argument("--in", dest="where", choices=("space", "time", "both"), default="both")
    f.add_argument("--out")
    sub.add_parser("schema", help="print the config reference (Markdown)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    args, rest = p.parse_known_args(argv)
    try:
        if args.command == "info":
            if rest:
                p.error(f"unrecognised arguments: {' '.join(rest)}")
            return cmd_info(args)
        if args.command == "schema":
            return cmd_schema(args)
        if args.command == "refine" and args.levels < 2:
            raise UserError("--levels: expected at least 2 levels to measure a rate")
        if args.command == "run":
            return cmd_run(args, rest)
        if args.command == "refine":
            return cmd_refine(args, rest)
    except UserError as e:
        from mpi4py import MPI
        if MPI.COMM_WORLD.rank == 0:
            print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; earlier results left intact", file=sys.stderr)
        return 130
    return 0
