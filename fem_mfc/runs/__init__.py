"""Runners: one module per formulation, each ``run(cfg, ctx) -> summary dict``."""
