"""The formulations fem_mfc runs: one entry per ``[run] formulation``.

Each :class:`Formulation` entry says which runner solves it (imported lazily, so that
``fem-mfc info`` and config errors stay fast), which config sections it reads, which exact
solutions it has (``[exact] solution``), whether ``fem-mfc refine`` applies, and whether its
problem needs noise (σ > 0).  The config schema (:mod:`fem_mfc.config`), the run pipeline
(:mod:`fem_mfc.pipeline`), refinement studies and the documentation read this table; nothing
else lists formulations.

A runner is ``run(cfg, ctx) -> summary``: it takes the validated config and a
:class:`fem_mfc.io.RunContext`, solves, writes fields and figures through ``ctx`` and returns
the dict that becomes ``summary.json``.  A runner whose solve did not meet its tolerance or
its checks says so with ``summary["converged"] = False`` (and ``summary["checks"]``); the
pipeline then flags the run and exits with status 3.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    name: str
    runner: str                       # "module:function"
    summary: str                      # one line for docs and `fem-mfc schema`
    sections: tuple = ()              # config sections besides run/mesh/output/solver
    exact: tuple = ()                 # supported [exact] solutions
    needs_noise: bool = False         # σ > 0 required

    @property
    def refinable(self) -> bool:
        return bool(self.exact)

    def load(self):
        mod, fn = self.runner.split(":")
        return getattr(importlib.import_module(mod), fn)


_CONTROL = ("problem", "rho0", "discretisation", "exact")
ENTRIES = (
    Entry("heat", "fem_mfc.runs.heat:run",
          "uncontrolled Fokker-Planck (the platform smoke problem)",
          ("problem", "rho0", "discretisation", "exact"), ("heat-gaussian",)),
    Entry("hjb-fp", "fem_mfc.runs.control:run",
          "MODEL 2: backward HJB + forward FP from one discrete Lagrangian", _CONTROL,
          ("lq-gaussian", "manufactured")),
    Entry("cole-hopf", "fem_mfc.runs.control:run",
          "MODEL 4: the same problem through chi = exp(-u/2eps), Gamma = rho/chi", _CONTROL,
          ("lq-gaussian", "manufactured"), needs_noise=True),
    Entry("qhd", "fem_mfc.runs.qhd:run",
          "MODEL 3: quantum hydrodynamics (rho, S) with the Bohm potential",
          _CONTROL + ("qhd",), ("lq-gaussian",), needs_noise=True),
    Entry("nls", "fem_mfc.runs.nls:run",
          "MODEL 4: real-time NLS / Gross-Pitaevskii, Psi = q + ip",
          ("problem", "discretisation", "exact", "nls"), ("soliton", "free-gaussian")),
    Entry("classifier", "fem_mfc.runs.classifier:run",
          "MODEL 2/8: label-blind K-class network trained on a data set",
          ("problem", "data", "network", "training")),
    Entry("generative", "fem_mfc.runs.generative:run",
          "MODEL 8: flow to N(0, I) with the KL terminal cost",
          ("problem", "data", "network", "training", "generative")),
)
FORMULATIONS = {e.name: e for e in ENTRIES}
NAMES = tuple(FORMULATIONS)


def get(name: str) -> Entry:
    return FORMULATIONS[name]


def runner(name: str):
    """The runner of formulation ``name`` (ImportError if not available in this build)."""
    return FORMULATIONS[name].load()


__all__ = ["Entry", "FORMULATIONS", "NAMES", "get", "runner"]
