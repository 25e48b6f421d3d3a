"""The ``fem-mfc`` command line: ``info``, ``run``, ``refine``, ``schema``.

Exit status: 0 success; 2 bad input (a bad config, a missing or unreadable file, a run that
would not fit in memory, a PETSc error from an option: one line naming the key or file and
what was expected, no traceback, earlier results untouched); 3 the run finished but its solve
did not meet its tolerance or its checks (results written, summary.json flagged
``"converged": false``); 130/143 interrupted.

Arguments that start with ``-`` and are not ours are PETSc options (``-mfc_snes_monitor``,
``-ksp_type gmres``), scoped to the run (:mod:`fem_mfc.pipeline`); ``-help`` prints PETSc's
help for the solvers the run creates.  Options that nothing read are reported at the end
(misspelt names).
"""
from __future__ import annotations

import argparse
import sys
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


def cmd_info(args) -> int:
    from mpi4py import MPI

    from .pipeline import versions
    v = versions(full=True)
    if MPI.COMM_WORLD.rank == 0:
        width = max(map(len, v))
        for k, x in v.items():
            print(f"{k:<{width}}  {x}")
    return 0


def _report_unused(user_options: dict) -> None:
    """A warning line for every user option no solver read (like PETSc's -options_left)."""
    from mpi4py import MPI

    from .compat import unused_petsc_options
    if not user_options or MPI.COMM_WORLD.rank != 0:
        return
    left = unused_petsc_options()
    if left is None:
        return
    names = [n for n in user_options if n in left and n not in ("help", "options_left")]
    for n in names:
        print(f"{PROG}: warning: PETSc option -{n} was not used (misspelt, or not for this "
              "formulation's solvers?)", file=sys.stderr)


# Options that act on the whole process (at PetscFinalize or on every object) rather than on a
# solver: inserted for the process, not scoped to the run.
PROCESS_OPTIONS = ("log_view", "log_view_memory", "log_view_gpu_time", "log_trace", "log_all",
                   "help", "options_left", "options_view", "info", "malloc_debug",
                   "malloc_dump", "malloc_view", "memory_view", "objects_dump", "history")


def process_options(opts: dict) -> dict:
    """Insert the process-wide options among ``opts`` for the rest of the process (starting
    PETSc's logging when -log_view asks for it); return the others."""
    from petsc4py import PETSc
    db = PETSc.Options()
    rest = {}
    for k, v in opts.items():
        if k in PROCESS_OPTIONS:
            db.setValue(k, "" if v is None else str(v))
            if k.startswith("log_"):
                PETSc.Log.begin()
        else:
            rest[k] = v
    return rest


def cmd_run(args, petsc_tokens) -> int:
    from . import config
    from .pipeline import EXIT_OK, EXIT_UNCONVERGED, run_config
    cfg = config.load(args.config)
    out = args.out or str(Path("results") / Path(args.config).stem)
    opts = process_options(split_petsc_options(petsc_tokens))
    summary = run_config(cfg, out, opts, args.config, quiet=args.quiet, force=args.force,
                         on_finish=lambda: _report_unused(opts), restart=args.restart)
    if not summary.get("converged", True):
        _flagged(summary, out)
        return EXIT_UNCONVERGED
    return EXIT_OK


def _flagged(summary: dict, out) -> None:
    from mpi4py import MPI
    if MPI.COMM_WORLD.rank == 0:
        for line in summary.get("flags", ["the run did not converge"]):
            print(f"{PROG}: warning: {line}", file=sys.stderr)
        print(f"{PROG}: results written to {out} and flagged \"converged\": false "
              "(exit status 3)", file=sys.stderr, flush=True)


def cmd_refine(args, petsc_tokens) -> int:
    from . import config
    from .pipeline import EXIT_OK, EXIT_UNCONVERGED
    from .refine import level_config, refinement_study
    cfg = config.load(args.config)
    config.check_resources(level_config(cfg, args.levels - 1, args.where), force=args.force)
    out = args.out or str(Path("results") / (Path(args.config).stem + "_refine"))
    opts = process_options(split_petsc_options(petsc_tokens))
    result = refinement_study(cfg, out, levels=args.levels, where=args.where,
                              petsc_options=opts, config_path=args.config, force=args.force)
    _report_unused(opts)
    bad = [r for r in result["levels"] if not r.get("converged", True)]
    if bad:
        _flagged({"flags": [f"level {r['level']} did not converge" for r in bad]}, out)
        return EXIT_UNCONVERGED
    return EXIT_OK


def cmd_schema(args) -> int:
    from .config import schema_markdown
    print(schema_markdown())
    return 0


def parser() -> argparse.ArgumentParser:
    # No "-h": a PETSc option such as -heat_ksp_view must not be read as -h + "eat...";
    # --help is ours, -help is PETSc's.
    p = argparse.ArgumentParser(prog=PROG, add_help=False, allow_abbrev=False,
                                description="Deep learning as mean-field control, solved as "
                                "PDEs with DOLFINx/PETSc. Unknown -options are passed to "
                                "PETSc.")
    p.add_argument("--help", action="help", help="show this help message and exit")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, **kw):
        c = sub.add_parser(name, add_help=False, allow_abbrev=False, **kw)
        c.add_argument("--help", action="help", help="show this help message and exit")
        return c

    command("info", help="versions of DOLFINx, PETSc, MPI, PyVista; number of ranks")
    r = command("run", help="run a configured problem")
    r.add_argument("config", help="TOML config file")
    r.add_argument("--out", help="output folder (default results/<config name>)")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    r.add_argument("--force", action="store_true",
                   help="run even if the memory estimate exceeds the available memory")
    r.add_argument("--restart", metavar="DIR",
                   help="continue from the checkpoint in DIR (or beside output folder DIR)")
    f = command("refine", help="mesh/time refinement study against the exact solution")
    f.add_argument("config")
    f.add_argument("--levels", type=int, default=3)
    f.add_argument("--in", dest="where", choices=("space", "time", "both"), default="both")
    f.add_argument("--out")
    f.add_argument("--force", action="store_true",
                   help="run even if the memory estimate exceeds the available memory")
    command("schema", help="print the config reference (Markdown)")
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
        _error(str(e))
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; earlier results left intact", file=sys.stderr)
        return 130
    except Exception as e:                  # PETSc errors from user options are input errors
        from petsc4py import PETSc
        if isinstance(e, PETSc.Error):
            _error(f"PETSc error {getattr(e, 'ierr', '')} (check the PETSc options: an "
                   f"unknown solver type or an invalid value?)")
            return 2
        raise
    return 0


def _error(message: str) -> None:
    from mpi4py import MPI
    if MPI.COMM_WORLD.rank == 0:
        print(f"{PROG}: error: {message.splitlines()[0] if message else 'failed'}",
              file=sys.stderr, flush=True)
