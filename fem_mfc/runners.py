"""The registry of runnable formulations: ``[run] formulation`` -> ``run(cfg, ctx) -> summary``.

A runner takes the validated config (``fem_mfc.config``) and a :class:`fem_mfc.io.RunContext`,
solves, writes its fields/figures through ``ctx`` and returns the dict that becomes
``summary.json`` (the CLI adds the common keys: ranks, wall time, versions, config name).
Runners are imported lazily so that ``fem-mfc info`` and config errors stay fast.
"""
from __future__ import annotations

import importlib

RUNNERS = {
    "heat": "fem_mfc.runs.heat:run",
    "hjb-fp": "fem_mfc.runs.control:run",
    "cole-hopf": "fem_mfc.runs.control:run",
    "qhd": "fem_mfc.runs.qhd:run",
    "nls": "fem_mfc.runs.nls:run",
    "classifier": "fem_mfc.learning.run:run_classifier",
    "generative": "fem_mfc.learning.run:run_generative",
}

# Formulations whose [exact] solutions support `fem-mfc refine` (runner returns error norms).
REFINABLE = {"heat", "hjb-fp", "cole-hopf", "qhd", "nls"}


def get(formulation: str):
    """Return the runner function for ``formulation`` (ImportError if not available yet)."""
    target = RUNNERS[formulation]
    mod, fn = target.split(":")
    return getattr(importlib.import_module(mod), fn)
