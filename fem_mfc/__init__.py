"""fem_mfc: deep learning as mean-field optimal control, solved as PDEs with DOLFINx.

The flow of a run: config (``config``) -> problem (``problem``) -> formulation (``forms``)
-> solver (``solvers``) -> outputs (``io``, ``viz``).  The mathematics is in
``docs/MODEL.md`` (copied from the project specification).
"""
__version__ = "0.1.0"
