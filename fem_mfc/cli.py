"""The ``fem-mfc`` command line: ``info``, ``run``, ``refine``, ``predict``, ``sample``,
``schema``.

Exit status: 0 success; 2 bad input (a bad config, a missing or unreadable file, a run that
would not fit in memory, a PETSc error from an option, a full disk: one line naming the key,
file or folder and what was expected, no traceback, earlier results untouched); 3 the run
finished but its solve did not meet its tolerance or its checks (results written,
summary.json flagged ``"converged": false``); 130/143/129 interrupted (SIGINT/TERM/HUP: one
line, also before the run has started writing, :func:`_early_signals`);
141 standard output's reader went away (``fem-mfc schema | head``).

Under an MPI launcher (``mpirun -n N python3 -m fem_mfc ...``) every rank exits: a user error
raised on every rank is printed once (rank 0) and every rank exits 2 through MPI_Finalize; one
raised on some ranks only is printed by the rank that has it, which then calls MPI_Abort(2);
any other exception prints its traceback and calls MPI_Abort(1) (never a rank left waiting in
a collective).  Each rank also asks the kernel to kill it when its launcher dies
(``PR_SET_PDEATHSIG``), so that a launcher killed by SIGKILL leaves no rank behind.

Arguments that start with ``-`` and are not ours are PETSc options (``-mfc_snes_monitor``,
``-ksp_type gmres``), scoped to the run (:mod:`fem_mfc.pipeline`); ``-help`` prints PETSc's
help for the solvers the run creates.  Options that nothing read are reported at the end
(misspelt names).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import time
from pathlib import Path

from .errors import (
    INTERRUPTS,
    PROG,
    DiskFullError,
    SolverError,
    UserError,
    interrupted,
    last_line,
    launcher_rank,
    process_rank,
    warning,
)

# -- MPI hygiene ---------------------------------------------------------------------------------
_LAUNCHER_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
# How long a rank with a user error waits for the other ranks to report the same error before
# it concludes that the error is its own and aborts the job (FEM_MFC_ERROR_WAIT_S).
ERROR_WAIT_S = 5.0
_PR_SET_PDEATHSIG = 1


def _launcher_size() -> int:
    for k in _LAUNCHER_SIZE_VARS:
        v = os.environ.get(k)
        if v is not None and v.strip().isdigit():
            return int(v)
    return 1


def die_with_launcher() -> bool:
    """Under an MPI launcher, have the kernel SIGKILL this rank when its parent (mpirun/prterun
    or its daemon) dies: a launcher killed abruptly cannot end its ranks itself, and a rank
    without its runtime would otherwise run on, re-parented to PID 1, or wait forever in a
    collective.  (A launcher that gets SIGINT/SIGTERM/SIGHUP ends its ranks by itself, with
    SIGTERM first, so that they can delete their staging folders.)  Linux only; True if set."""
    if launcher_rank() is None or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() == 1:          # the launcher died before we asked: we are an orphan
        os._exit(128 + int(signal.SIGKILL))
    return True


die_with_launcher()

_error_comm = None      # a duplicate of COMM_WORLD, only for agreeing on errors (see _fail)


def _start_error_comm() -> None:
    """Under a launcher with more than one rank, duplicate COMM_WORLD (collectively, at the
    same point on every rank) for :func:`_fail`'s agreement: its barrier must never match a
    collective the run itself has in flight."""
    global _error_comm
    if _error_comm is not None or launcher_rank() is None or _launcher_size() < 2:
        return
    from mpi4py import MPI
    _error_comm = MPI.COMM_WORLD.Dup()


def _all_ranks_agree(comm, timeout: float) -> bool:
    """Do all ranks of ``comm`` reach this point within ``timeout`` seconds?"""
    req = comm.Ibarrier()
    end = time.monotonic() + timeout
    while True:
        if req.Test():
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.01)


def _fail(message: str, code: int = 2) -> int:
    """Report a user error and return ``code``; under MPI make sure every rank ends.

    If every rank has the error (the usual case: errors are decided collectively), rank 0
    prints it and every rank returns ``code`` and finalizes MPI normally.  If the other ranks
    do not report an error within :data:`ERROR_WAIT_S` seconds, this rank prints it and aborts
    the job with MPI_Abort(code) -- the other ranks may be waiting for it in a collective."""
    comm = _error_comm
    if comm is None or comm.Get_size() == 1:
        _error(message)
        return code
    wait = float(os.environ.get("FEM_MFC_ERROR_WAIT_S", ERROR_WAIT_S))
    if _all_ranks_agree(comm, wait):
        _error(message)
        return code
    _error(message, any_rank=True)
    _abort(code)
    return code                    # not reached


def _abort(code: int) -> None:
    """Flush and end the whole MPI job (MPI_Abort)."""
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:  # noqa: BLE001
            pass
    from mpi4py import MPI
    MPI.COMM_WORLD.Abort(code)


def _fatal() -> None:
    """An unexpected exception (a bug): under MPI with more than one rank, print its traceback
    and abort every rank (a rank that returned would wait forever in MPI_Finalize for the
    others, which may be waiting for it in a collective)."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized() \
            or mpi.COMM_WORLD.Get_size() == 1:
        return
    import traceback
    traceback.print_exc()
    _abort(1)


def split_petsc_options(tokens: list[str]) -> dict:
    """Turn ``['-snes_monitor', '-ksp_type', 'gmres']`` into ``{'snes_monitor': '', ...}``."""
    opts, i = {}, 0
    while i < len(tokens):
        t = tokens[i]
        if t.startswith("--") and len(t) > 2:
            # PETSc's options take one dash: this is a misspelt option of ours (--restrat
            # for --restart ran from scratch and deleted the checkpoint it was to continue)
            raise UserError(f"unknown option '{t}' (see {PROG} --help; PETSc options start "
                            "with one dash)")
        if not t.startswith("-") or t in ("-", "--"):
            raise UserError(f"unexpected argument '{t}' (PETSc options look like -name [value])")
        name = t.lstrip("-")
        if "=" in name:
            # -ksp_type=cg is the name "ksp_type=cg" to PETSc: nothing read it, the run went
            # on with the default and exited 0 after a warning
            key, _, value = name.partition("=")
            raise UserError(f"PETSc option '{t}': PETSc takes the value after a space "
                            f"(-{key} {value})")
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


def _ignore_sigpipe() -> None:
    """Once PETSc is initialised: a write to a pipe whose reader is gone raises SIGPIPE, which
    PETSc's signal handler turns into MPI_Abort(59) with a screenful of banners (fem-mfc info
    | head -1, a -mfc_snes_monitor run piped into head).  Ignored, the write fails with EPIPE:
    PETSc's own output drops it, ours ends as :func:`main` says."""
    with contextlib.suppress(ValueError, OSError, AttributeError):   # (not the main thread)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def cmd_info(args) -> int:
    from mpi4py import MPI

    from .pipeline import versions
    v = versions(full=True)
    _ignore_sigpipe()
    if MPI.COMM_WORLD.rank == 0:
        width = max(map(len, v))
        for k, x in v.items():
            print(f"{k:<{width}}  {x}")
    return 0


def _report_unused(user_options: dict, config_options: dict | None = None) -> None:
    """A warning line for every user option no solver read (like PETSc's -options_left): the
    command line's, and the config's ``[solver] petsc_options`` (those were silent)."""
    from mpi4py import MPI

    from .compat import unused_petsc_options
    if not (user_options or config_options) or MPI.COMM_WORLD.rank != 0:
        return
    left = unused_petsc_options()
    if left is None:
        return
    skip = ("help", "options_left")
    for n in user_options:
        if n in left and n not in skip:
            print(f"{PROG}: warning: PETSc option -{n} was not used (misspelt, or not for "
                  "this formulation's solvers?)", file=sys.stderr)
    for n in config_options or {}:
        if n in left and n not in skip and n not in user_options:
            print(f"{PROG}: warning: [solver] petsc_options: {n} was not used (misspelt, "
                  "without its solver's prefix, or not for this formulation's solvers?)",
                  file=sys.stderr)


# Options that act on the whole process (at PetscFinalize or on every object) rather than on a
# solver: inserted for the process, not scoped to the run.
PROCESS_OPTIONS = ("log_view", "log_view_memory", "log_view_gpu_time", "log_trace", "log_all",
                   "help", "options_left", "options_view", "info", "malloc_debug",
                   "malloc_dump", "malloc_view", "memory_view", "objects_dump", "history")


def process_options(opts: dict) -> dict:
    """Insert the process-wide options among ``opts`` for the rest of the process (starting
    PETSc's logging when -log_view asks for it); return the others."""
    from petsc4py import PETSc
    _ignore_sigpipe()
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
    cfg = config.load(args.config)     # (a bad config fails before PETSc starts: 0.3 s, not 0.9)
    _rearm_early_signals()
    from .io import _pause
    _pause("run:loaded")                   # (a test hook: every rank, before the run's handlers)
    out = args.out or str(Path("results") / Path(args.config).stem)
    opts = process_options(split_petsc_options(petsc_tokens))
    from .options import normalise
    from_config = normalise(cfg["solver"]["petsc_options"])
    summary = run_config(cfg, out, opts, args.config, quiet=args.quiet, force=args.force,
                         on_finish=lambda: _report_unused(opts, from_config),
                         restart=args.restart, print_flags=False)
    _pause("run:finished")                 # (a test hook: the run in place, the CLI not done)
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
    _rearm_early_signals()
    config.check_resources(level_config(cfg, args.levels - 1, args.where), force=args.force)
    out = args.out or str(Path("results") / (Path(args.config).stem + "_refine"))
    opts = process_options(split_petsc_options(petsc_tokens))
    result = refinement_study(cfg, out, levels=args.levels, where=args.where,
                              petsc_options=opts, config_path=args.config, force=args.force,
                              resume=args.resume, report=None if args.quiet else _say)
    _report_unused(opts)
    if not args.quiet:
        rates = "; ".join(f"{n} " + ", ".join("-" if r is None else f"{r:.2f}" for r in rs)
                          for n, rs in result["rates"].items())
        _say(f"observed orders: {rates}; convergence.json, .csv, .png in {out}")
    if result.get("moved_aside"):
        warning(f"{out}: moved {', '.join(result['moved_aside'])} of an earlier study with "
                f"more levels aside (as {result['moved_aside'][0]}.previous, …)")
    if result.get("warning"):
        warning(result["warning"])
    bad = [r for r in result["levels"] if not r.get("converged", True)]
    if bad:
        _flagged({"flags": [f"level {r['level']} did not converge" for r in bad]}, out)
        return EXIT_UNCONVERGED
    return EXIT_OK


def _say(line: str) -> None:
    """A progress line of a command that runs quietly (refine's levels), on rank 0."""
    if process_rank() == 0:
        print(f"{PROG}: {line}", file=sys.stderr, flush=True)


def cmd_predict(args) -> int:
    """Apply the model a run trained (:mod:`fem_mfc.learning.saved`) to the points of a CSV
    file: a classifier (feedback: its ``model/``; dictionary: its ``weights.npz``) labels
    them (the labels and the final features), a generative flow transports them forward to
    its base (the log-density and the final point), into ``--out`` (default
    ``POINTS.predicted.csv``; ``-``: standard output), one line on stderr."""
    from mpi4py import MPI

    import numpy as np

    from .learning import saved
    points = Path(args.points)
    out = args.out if args.out is not None else str(
        points.with_name(points.stem + ".predicted.csv"))
    if out != "-" and Path(out).absolute() == points.absolute():
        raise UserError(f"--out: expected a file other than the points file {points}")
    comm = MPI.COMM_WORLD
    model = saved.load(args.run, comm)
    X, labels = saved.read_points(points, model.data_dim)
    _ignore_sigpipe()
    pred = model.predict(X)
    _write_output(comm, out, lambda: saved.predictions_text(pred), "the predictions")
    into = "standard output" if out == "-" else out
    points_ = f"{len(X)} point{'s' if len(X) != 1 else ''}"
    if model.kind == "generative":
        line = (f"{points_} transported by the generative flow of {args.run} ({model.N} "
                f"layers) to its base N(0, s^2 I) into {into}; mean log-density "
                f"{pred.log_density.mean():.6g} nats per point (the data's units)")
    else:
        line = (f"{points_} labelled by the {model.kind} network of {args.run} ({model.N} "
                f"layers) into {into}")
    if labels is not None and model.kind != "generative":
        right = int(np.count_nonzero(pred.labels == labels))
        line += f"; accuracy {right / len(X):.4g} ({right}/{len(X)}) against the label column"
        unknown = sorted(set(labels) - set(model.classes))
        if unknown:
            warning(f"{points}: labels {', '.join(unknown[:5])} are not classes of the model "
                    f"(its classes: {', '.join(model.classes)}); counted as wrong")
    if pred.off_mesh:
        line += (f"; {pred.off_mesh} started outside the mesh and "
                 + ("was " if pred.off_mesh == 1 else "were ")
                 + ("evaluated at its nearest point (the flow's density is not defined "
                    "there)" if model.kind == "generative" else
                    "moved onto it (the flow is confined to the training domain)"))
    if not args.quiet:
        _say(line)
    return 0


def cmd_sample(args) -> int:
    """Draw N new samples from the generative flow a run trained (its ``model/``): base
    samples pulled back through the flow, in the data's units, into ``--out`` (default:
    standard output), one line on stderr."""
    from mpi4py import MPI

    from .learning import saved
    n = _integer(args.n, "N", 1, "a positive integer (the number of samples)")
    seed = None if args.seed is None else _integer(args.seed, "--seed", 0,
                                                   "a non-negative integer")
    comm = MPI.COMM_WORLD
    model = saved.load(args.run, comm, formulations=("generative",), use="sample")
    _samples_fit(n, model.N)
    _ignore_sigpipe()
    X = model.sample(n, seed)
    out = args.out
    _write_output(comm, out, lambda: saved.samples_text(X), "the samples")
    if not args.quiet:
        _say(f"{n} sample{'s' if n != 1 else ''} drawn from the generative flow of "
             f"{args.run} ({model.N} layers, seed {model.seed if seed is None else seed}) "
             f"into {'standard output' if out == '-' else out}")
    return 0


def _samples_fit(n: int, layers: int) -> None:
    """Refuse N samples whose points would not fit in memory (as a run's
    ``generative.samples``: every rank holds every point; they were a MemoryError)."""
    from .config import BYTES_PER_POINT_LAYER, _fmt_bytes, available_memory
    need, have = float(n) * BYTES_PER_POINT_LAYER * (layers + 1), available_memory()
    if need > have:
        raise UserError(f"N: expected a number of samples that fits in memory: {n} samples "
                        f"need about {_fmt_bytes(need)}, {_fmt_bytes(have)} available")


def _integer(text: str, name: str, least: int, expected: str) -> int:
    """The integer command-line argument ``name`` (at least ``least``), or a UserError."""
    try:
        v = int(text)
    except ValueError:
        v = None
    if v is None or v < least:
        raise UserError(f"{name}: expected {expected}, got {text!r}")
    return v


def _write_output(comm, out: str, text, what: str) -> None:
    """Rank 0 writes ``text()`` into file ``out`` atomically (``-``: standard output); its
    failure is every rank's one-line UserError naming the file."""
    from .learning import saved
    err = None
    if comm.rank == 0:
        try:
            saved.write_table(out, text())
        except BrokenPipeError:
            raise
        except OSError as e:
            err = (f"{'standard output' if out == '-' else out}: cannot write {what} "
                   f"({e.strerror or e})")
    err = comm.bcast(err, root=0)
    if err:
        raise UserError(err)


def cmd_schema(args) -> int:
    from .config import schema_markdown
    if (launcher_rank() or 0) == 0:        # once under mpirun, as info and --help
        print(schema_markdown())
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors and --help are printed by rank 0 only under an MPI launcher."""

    def _print_message(self, message, file=None):
        if (launcher_rank() or 0) == 0:
            super()._print_message(message, file)

    def error(self, message):
        """Bad command-line input is one line, like every other bad input (the usage text
        before it made it three); ``--help`` shows the usage."""
        self._print_message(f"{self.prog}: error: {message} (see {self.prog} --help)\n",
                            sys.stderr)
        self.exit(2)


RUN_EPILOG = ("Other arguments that start with one '-' are PETSc options, with the prefix of "
              "their solve (-mfc_snes_monitor, -mfc_ksp_rtol 1e-8; see README); -help prints "
              "PETSc's help for the run's solvers. Exit status: 0 success; 2 bad input (one "
              "line, nothing written); 3 the solve ran but did not meet its tolerance or checks "
              "(results written, \"converged\": false); 130/143/129 interrupted (SIGINT/TERM/HUP).")
PREDICT_EPILOG = ("POINTS.csv: the d feature columns of the training data (header x1,...,xd "
                  "optional), optionally a label column (then the accuracy is reported). "
                  "A classifier run writes label,final_x1,...: the predicted label (as in the "
                  "data) and the final features x_N (standardised network coordinates); a "
                  "generative run log_density,final_x1,...: the model's log-density at the "
                  "point (nats, the data's units) and its image x_N in the base N(0, s^2 I). "
                  "Exit status: 0 success; 2 bad input (one line).")
SAMPLE_EPILOG = ("Draws z ~ N(0, s^2 I) on the mesh and runs the trained flow backward from "
                 "it (the flow was trained from the data to that base). Writes x1,...,xd in "
                 "the data's units; the run's seed and its number of samples redraw its "
                 "samples.csv. Exit status: 0 success; 2 bad input (one line); 3 a layer "
                 "could not be inverted.")
REFINE_EPILOG = ("Writes convergence.json, convergence.csv and convergence.png in --out; PETSc "
                 "options as for run. Exit status as for run (3: a level did not converge).")


def parser() -> argparse.ArgumentParser:
    # No "-h" option: a PETSc option such as -heat_ksp_view must not be read as -h + "eat..."
    # (a lone "-h" is turned into --help by _main); --help is ours, -help is PETSc's.
    p = _Parser(prog=PROG, add_help=False, allow_abbrev=False,
                                description="Deep learning as mean-field control, solved as "
                                "PDEs with DOLFINx/PETSc. Unknown -options are passed to "
                                "PETSc.")
    p.add_argument("--help", action="help", help="show this help message and exit")
    from . import __version__
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}",
                   help="print fem_mfc's version and exit (info: the whole stack's)")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, **kw):
        c = sub.add_parser(name, add_help=False, allow_abbrev=False, **kw)
        c.add_argument("--help", action="help", help="show this help message and exit")
        return c

    command("info", help="versions of DOLFINx, PETSc, MPI, PyVista; number of ranks")
    r = command("run", help="run a configured problem", epilog=RUN_EPILOG)
    r.add_argument("config", help="TOML config file")
    r.add_argument("--out", help="output folder (default results/<config name>)")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    r.add_argument("--force", action="store_true",
                   help="run even if the memory estimate exceeds the available memory")
    r.add_argument("--restart", metavar="DIR",
                   help="continue from the checkpoint in DIR (or beside output folder DIR)")
    f = command("refine", help="mesh/time refinement study against the exact solution",
                epilog=REFINE_EPILOG)
    f.add_argument("config", help="TOML config file with an [exact] solution")
    f.add_argument("--levels", type=int, default=3,
                   help="number of levels, each refined once more (at least 2; default 3)")
    f.add_argument("--in", dest="where", choices=("space", "time", "both"), default="both",
                   help="refine the mesh, the time step or both (default both)")
    f.add_argument("--out", help="output folder (default results/<config name>_refine)")
    f.add_argument("--force", action="store_true",
                   help="run even if the memory estimate exceeds the available memory")
    f.add_argument("--quiet", action="store_true",
                   help="no line per level (the levels' runs are always quiet)")
    f.add_argument("--resume", action="store_true",
                   help="continue a study in --out: reuse its converged levels, restart a "
                        "level from its checkpoint, run the rest")
    q = command("predict", help="label new points with a trained classifier run (or "
                "transport them through a generative run's flow)", epilog=PREDICT_EPILOG)
    q.add_argument("run", metavar="RUN_DIR", help="output folder of a classifier run (its "
                   "model/ or weights.npz) or of a generative run (its model/)")
    q.add_argument("points", metavar="POINTS.csv",
                   help="points in the data's units: columns x1..xd, optionally a label column")
    q.add_argument("--out", metavar="FILE", help="CSV of the labels and final features "
                   "(default POINTS.predicted.csv beside POINTS; '-': standard output)")
    q.add_argument("--quiet", action="store_true", help="no summary line")
    g = command("sample", help="draw new samples from a trained generative run",
                epilog=SAMPLE_EPILOG)
    g.add_argument("run", metavar="RUN_DIR", help="output folder of a generative run (its "
                   "model/)")
    g.add_argument("n", metavar="N", help="number of samples (at least 1)")
    g.add_argument("--seed", help="seed of the base samples (a non-negative integer; default "
                   "the run's)")
    g.add_argument("--out", metavar="FILE", default="-", help="CSV of the samples, written "
                   "atomically (default '-': standard output)")
    g.add_argument("--quiet", action="store_true", help="no summary line")
    command("schema", help="print the config reference (Markdown)")
    return p


def _early_signals(command: str | None) -> dict:
    """SIGTERM and SIGHUP before a run has installed its own handlers (importing DOLFINx,
    reading the config and the mesh, estimating the memory: seconds) ended the process with
    143 / 129 and no word; now rank 0 prints one line naming the signal and that nothing was
    written, the lock and staging folder rank 0 may have made are removed, and every rank
    exits with the same status (``os._exit``, as the run's handler: rank 0 at once, the others
    after ``RANK_EXIT_DELAY_S`` so that the launcher does not end rank 0 before its line; a
    rank waiting in a collective for one that exits is ended by its MPI launcher).  Signals
    ignored at start (``nohup``) stay ignored; after a run (its handlers restored: ours again)
    the line says no more than the signal — but after ``run`` has put its run in place
    (``fem_mfc.io.COMMITTED``) the signal ends nothing: the command ends with the run's own
    status (it ended 143, with the run complete in its folder).  Returns the handlers
    replaced ({signal: handler})."""
    run = command in ("run", "refine")
    told = []

    def handler(signum, frame):
        io = sys.modules.get("fem_mfc.io")        # (not imported yet: nothing made)
        if command == "run" and io is not None and io.COMMITTED[0]:
            if process_rank() == 0 and not told:
                told.append(signum)
                last_line(f"{PROG}: {signal.Signals(signum).name} after the run was written: "
                          "ending with its own status")
            return
        started = bool(io is not None and io.HANDLED[0])
        interrupted(f"{PROG}: interrupted ({signal.Signals(signum).name})"
                    + ("; nothing was written" if run and not started else ""),
                    process_rank(), _launcher_size())
        if io is not None:
            with contextlib.suppress(Exception):
                io.abandon_prepared()
        os._exit(128 + signum)

    replaced = {}
    for s in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):    # (ValueError: not the main thread)
            if signal.getsignal(s) == signal.SIG_DFL:
                replaced[s] = signal.signal(s, handler)
    _early_handler[:] = [handler] if replaced else []
    return replaced


_early_handler: list = []       # the early signals' handler while main() runs


def _rearm_early_signals() -> None:
    """Initialise PETSc (collective: every rank of a run or refine study comes here) and
    install the early handler again where it is still Python's choice: PETSc's initialisation
    puts a C handler of its own under Python's for SIGHUP, and a SIGHUP before the run's
    handlers was ignored (a serial run went on and exited 0)."""
    import dolfinx.fem.petsc  # noqa: F401
    for h in _early_handler:
        for s in (signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError, OSError):
                if signal.getsignal(s) is h:
                    signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    process = argv is None                      # the process's command (its exit status)
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    replaced = _early_signals(command)
    try:
        try:
            return _main(argv)
        finally:                 # (also after --help's SystemExit)
            io = sys.modules.get("fem_mfc.io")
            if process and command == "run" and io is not None and io.COMMITTED[0]:
                # the run is in place: the process ends with its status, not a signal's
                # (Python's own handlers are reset to the default ones while it exits)
                for s in INTERRUPTS:
                    with contextlib.suppress(ValueError, OSError):
                        signal.signal(s, signal.SIG_IGN)
                replaced = {}
            for s, h in replaced.items():      # (main called in-process: as it was)
                with contextlib.suppress(ValueError, OSError, TypeError):
                    signal.signal(s, h)
            if sys.stdout is not None:        # (None: started with stdout closed)
                sys.stdout.flush()
    except BrokenPipeError as e:
        return _stdout_failed(e)
    except OSError as e:         # the flush: stdout on a full disk (> /dev/full)
        if e.errno not in _WRITE_ERRNOS:
            raise
        return _stdout_failed(e)


_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG)


def _stdout_failed(e: OSError) -> int:
    """Standard output cannot take what we print.  A reader that is gone (fem-mfc schema |
    head -1): end as a program killed by SIGPIPE would (141), without Python's "Exception
    ignored ... BrokenPipeError" at exit; another failure (> /dev/full: a traceback) is one
    line, exit 2.  Either way stdout is pointed at /dev/null so that nothing fails again at
    exit."""
    with contextlib.suppress(OSError, AttributeError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    if isinstance(e, BrokenPipeError):
        return 128 + int(signal.SIGPIPE)
    _error(f"standard output: cannot write ({e.strerror or e})")
    return 2


def _main(argv: list[str]) -> int:
    # "-h" alone is a request for help, not a PETSc option (PETSc's is -help): it ran the
    # whole run and then said "PETSc option -h was not used"; "fem-mfc -h" said a command
    # was missing
    argv = ["--help" if a == "-h" else a for a in argv]
    p = parser()
    args, rest = p.parse_known_args(argv)
    try:
        if args.command in ("run", "refine", "predict", "sample"):
            _start_error_comm()
        if args.command == "info":
            if rest:
                p.error(f"unrecognised arguments: {' '.join(rest)}")
            return cmd_info(args)
        if args.command == "schema":
            if rest:
                p.error(f"unrecognised arguments: {' '.join(rest)}")
            return cmd_schema(args)
        if args.command in ("run", "refine"):
            _config_first(argv, args, rest)
        if args.command in ("run", "refine") and args.out is not None and not args.out.strip():
            # (an unset shell variable: the run went to results/<config name>)
            raise UserError("--out: expected a folder, got an empty name")
        if args.command == "refine" and args.levels < 2:
            raise UserError("--levels: expected at least 2 levels to measure a rate")
        if args.command == "run":
            return cmd_run(args, rest)
        if args.command == "refine":
            return cmd_refine(args, rest)
        if args.command == "predict":
            if rest:
                p.error(f"unrecognised arguments: {' '.join(rest)}")
            if args.out is not None and not args.out.strip():
                raise UserError("--out: expected a file name, got an empty name")
            return cmd_predict(args)
        if args.command == "sample":
            if rest:
                p.error(f"unrecognised arguments: {' '.join(rest)}")
            if not args.out.strip():
                raise UserError("--out: expected a file name, got an empty name")
            return cmd_sample(args)
    except SolverError as e:               # the solve ran and broke down: not bad input
        return _fail(str(e), 3)
    except UserError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        io = sys.modules.get("fem_mfc.io")
        if args.command == "run" and io is not None and io.COMMITTED[0]:
            # past the run's commit point (its summary written, the run in place): as for
            # SIGTERM, the run's own status (it said "earlier results left intact", 130)
            if (launcher_rank() or 0) == 0:
                last_line(f"{PROG}: SIGINT after the run was written: ending with its own "
                          "status")
            from .pipeline import EXIT_OK, EXIT_UNCONVERGED  # (imported by the run)
            return EXIT_OK if io.COMMITTED_CONVERGED[0] else EXIT_UNCONVERGED
        if (launcher_rank() or 0) == 0:
            last_line(f"{PROG}: interrupted; earlier results left intact")
        return 130
    except Exception as e:                  # PETSc errors from user options are input errors
        if args.command in ("info", "schema") and isinstance(e, OSError) \
                and not isinstance(e, BrokenPipeError):
            return _stdout_failed(e)            # (they write to stdout only)
        full = _disk_full(e, args)
        if full is not None:
            return _fail(str(full))
        PETSc = sys.modules.get("petsc4py.PETSc")  # not imported: not a PETSc error (and
        if PETSc is not None and isinstance(e, PETSc.Error):  # importing it is collective)
            return _fail(_petsc_error_line(e, rest))
        _fatal()
        raise
    return 0


def _config_first(argv: list[str], args, rest: list[str]) -> None:
    """Refuse a config argument that is the value of a PETSc option before it: ``run
    -heat_ksp_type cg c.toml`` took "cg" for the config ("cg: config file not found")."""
    try:
        i = argv.index(args.config, argv.index(args.command) + 1)
    except ValueError:
        return
    before = argv[i - 1]
    if (before.startswith("-") and not before.startswith("--") and before in rest
            and not Path(args.config).is_file()):
        raise UserError(f"'{args.config}' follows the PETSc option {before} and is not a "
                        f"config file: give the config first ({PROG} {args.command} "
                        "CONFIG.toml [options] [PETSc options])")


def _petsc_error_line(e, tokens) -> str:
    """One line for a PETSc error that ended a run: PETSc's own message and the command-line
    option that gave its value (they were reported as "PETSc error 86" only)."""
    from .compat import petsc_error_message
    ierr = getattr(e, "ierr", "")
    msg = petsc_error_message(ierr) if isinstance(ierr, int) else None
    try:
        opts = split_petsc_options(tokens)
    except UserError:
        opts = {}
    def gave(k, v) -> bool:         # the option whose value (or missing value) PETSc names
        if not msg or v is None:
            return False
        return str(v) in msg if str(v) else k.rsplit("_", 1)[-1] in msg.lower()
    culprits = [f"-{k} {v}" if str(v) else f"-{k} (no value)" for k, v in opts.items()
                if gave(k, v)]
    return (f"PETSc error {ierr}" + (f": {msg}" if msg else "")
            + (f" (from {', '.join(culprits)})" if culprits else
               " (check the PETSc options: an unknown solver type or an invalid value?)"))


def _disk_full(e: BaseException, args) -> DiskFullError | None:
    """A write that failed for want of space (ENOSPC, EDQUOT) anywhere in a run -- a figure,
    config.toml, a ParaView series -- as the one-line error naming the output folder."""
    from .io import is_disk_full
    if not is_disk_full(e):
        return None
    out = getattr(args, "out", None) or str(
        Path("results") / (Path(args.config).stem + ("_refine" if args.command == "refine"
                                                     else "")))
    name = Path(e.filename).name if isinstance(e, OSError) and e.filename else None
    return DiskFullError(Path(out).absolute(), name)


def _error(message: str, any_rank: bool = False) -> None:
    """Print the one-line error (on rank 0 only, unless ``any_rank``)."""
    if process_rank() == 0 or any_rank:
        print(f"{PROG}: error: {message.splitlines()[0] if message else 'failed'}",
              file=sys.stderr, flush=True)
