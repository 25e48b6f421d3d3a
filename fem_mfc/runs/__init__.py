"""Runners: one module per formulation, each ``run(cfg, ctx) -> summary dict``."""


def snapshot_steps(N: int, count: int = 5) -> list:
    """``count`` steps (or layers) out of 0..N, evenly spaced, first and last included, for
    the figures' snapshots (fewer when N < count − 1)."""
    import numpy as np
    return sorted(set(np.linspace(0, N, count).round().astype(int).tolist()))
