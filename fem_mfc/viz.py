"""Figures: PyVista renderings of fields (off-screen) and matplotlib line plots.

Fields are gathered to rank 0 (``gather_p1``) and rendered there; other ranks return at once.
PyVista with Debian's VTK 9.3 needs an X server even off-screen: :func:`ensure_display`
starts a private Xvfb when no ``DISPLAY`` is set (and stops it at exit).
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

_XVFB = None


def ensure_display() -> None:
    """Start a private Xvfb if there is no X display (needed by VTK 9.3 off-screen)."""
    global _XVFB
    if os.environ.get("DISPLAY") or _XVFB is not None:
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        return
    # -displayfd lets Xvfb choose a free display number and tell us which.
    r, w = os.pipe()
    _XVFB = subprocess.Popen([xvfb, "-displayfd", str(w), "-screen", "0", "1280x1024x24",
                              "-nolisten", "tcp"], pass_fds=(w,), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    os.close(w)
    num = b""
    t0 = time.time()
    while not num.endswith(b"\n") and time.time() - t0 < 20:
        chunk = os.read(r, 16)
        if not chunk:
            break
        num += chunk
    os.close(r)
    os.environ["DISPLAY"] = ":" + num.decode().strip()
    atexit.register(_stop_xvfb)


def _die_with_parent():
    """In the Xvfb child before exec: SIGTERM when the thread that started it (the run's main
    thread: figures are drawn there) dies.  atexit stops it after a run that ends normally,
    but an interrupted run ends with os._exit (its signal handler) or SIGKILL (its watchdog),
    and its Xvfb ran on, re-parented to PID 1."""
    try:
        import ctypes
        import signal
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop_xvfb():
    global _XVFB
    if _XVFB is not None:
        _XVFB.terminate()
        try:
            _XVFB.wait(5)
        except subprocess.TimeoutExpired:
            _XVFB.kill()
        _XVFB = None


def gather_p1(f):
    """Interpolate ``f`` to P1 and gather (points, cells, cell_type, values) on rank 0.

    Returns None on other ranks.  Works for scalar and vector functions.
    """
    import dolfinx
    import dolfinx.plot
    mesh = f.function_space.mesh
    shape = f.ufl_shape
    V1 = dolfinx.fem.functionspace(mesh, ("Lagrange", 1, shape))
    g = dolfinx.fem.Function(V1)
    g.interpolate(f)
    cells, types, x = dolfinx.plot.vtk_mesh(V1)
    bs = V1.dofmap.index_map_bs
    # vtk_mesh numbers points by the local dof numbering (owned first, then ghosts).
    vals = g.x.array.reshape(-1, bs) if bs > 1 else g.x.array
    ncell_loc = mesh.topology.index_map(mesh.topology.dim).size_local
    # keep owned cells only, then renumber to gathered global point ids
    per_cell = cells.reshape(-1, cells[0] + 1) if len(cells) else np.zeros((0, 1), int)
    per_cell = per_cell[:ncell_loc]
    comm = mesh.comm
    parts = comm.gather((x, vals, per_cell, types[:ncell_loc]), root=0)
    if comm.rank != 0:
        return None
    xs, vs, cs, ts = [], [], [], []
    off = 0
    for (xp, vp, cp, tp) in parts:
        xs.append(xp)
        vs.append(vp)
        c = cp.copy()
        c[:, 1:] += off
        cs.append(c)
        ts.append(tp)
        off += xp.shape[0]
    return (np.vstack(xs), np.concatenate([c.ravel() for c in cs]), np.concatenate(ts),
            np.concatenate(vs))


def _grid(data, name):
    import pyvista
    x, cells, types, vals = data
    grid = pyvista.UnstructuredGrid(cells, types, x)
    grid.point_data[name] = vals
    grid.set_active_scalars(name)
    return grid


def _plotter(shape=(1, 1), size=(800, 700)):
    ensure_display()
    import pyvista
    pyvista.OFF_SCREEN = True
    return pyvista.Plotter(off_screen=True, shape=shape, window_size=list(size))


def _add(plotter, grid, name, title, clim=None, warp=False, cmap="viridis", bar=True):
    dim3 = np.ptp(grid.points[:, 2]) > 0
    gdim1 = np.ptp(grid.points[:, 1]) == 0 and not dim3
    if gdim1:
        return False
    mesh = grid
    if warp and not dim3:
        s = float(np.ptp(grid.points[:, :2]))
        rng = float(np.ptp(grid.point_data[name])) or 1.0
        mesh = grid.warp_by_scalar(name, factor=0.4 * s / rng)
    if dim3:
        mesh = grid.clip(normal="y", origin=grid.center)   # the half behind the middle
    plotter.add_mesh(mesh, scalars=name, cmap=cmap, clim=clim, show_edges=False,
                     show_scalar_bar=bar,
                     scalar_bar_args={"title": name, "vertical": False, "width": 0.6,
                                      "height": 0.08, "position_x": 0.2, "position_y": 0.02,
                                      "fmt": "%.2g", "label_font_size": 11,
                                      "title_font_size": 12})
    plotter.add_text(title, font_size=10)
    if not dim3 and not warp:
        plotter.view_xy()
    return True


def plot_field(f, path: str | Path, title: str = "", name: str | None = None) -> None:
    """Render one scalar field to PNG (2D: coloured map; 3D: clipped; 1D: a line plot)."""
    data = gather_p1(f)
    if data is None:
        return
    name = name or f.name
    if np.ptp(data[0][:, 1]) == 0 and np.ptp(data[0][:, 2]) == 0:
        order = np.argsort(data[0][:, 0])
        line_plot(data[0][order, 0], {name: data[3][order]}, path, xlabel="x", title=title)
        return
    p = _plotter()
    _add(p, _grid(data, name), name, title)
    p.screenshot(str(path))
    p.close()


def plot_snapshots(functions, labels, path: str | Path, name: str = "rho",
                   shared_clim: bool = True) -> None:
    """A panel of snapshots of a field (e.g. the density at several layers) in one PNG."""
    datas = [gather_p1(f) for f in functions]
    if datas[0] is None:
        return
    if np.ptp(datas[0][0][:, 1]) == 0 and np.ptp(datas[0][0][:, 2]) == 0:
        order = np.argsort(datas[0][0][:, 0])
        line_plot(datas[0][0][order, 0], {lab: d[3][order] for d, lab in zip(datas, labels)},
                  path, xlabel="x", ylabel=name)
        return
    clim = None
    if shared_clim:
        clim = [min(d[3].min() for d in datas), max(d[3].max() for d in datas)]
    n = len(datas)
    cols = n if n <= 5 else 4
    rows = (n + cols - 1) // cols
    p = _plotter(shape=(rows, cols), size=(320 * cols, 300 * rows))
    for i, (d, lab) in enumerate(zip(datas, labels)):
        p.subplot(i // cols, i % cols)
        _add(p, _grid(d, name), name, lab, clim=clim, bar=not shared_clim or i == n - 1)
    p.screenshot(str(path))
    p.close()


def animate(functions, labels, path: str | Path, name: str = "rho", fps: int = 6) -> None:
    """An animated GIF of a field over time (e.g. densities flowing through the layers)."""
    datas = [gather_p1(f) for f in functions]
    if datas[0] is None:
        return
    import imageio.v2 as imageio
    clim = [min(d[3].min() for d in datas), max(d[3].max() for d in datas)]
    if np.ptp(datas[0][0][:, 1]) == 0 and np.ptp(datas[0][0][:, 2]) == 0:     # 1D: curves
        imageio.mimsave(str(path), _curve_frames(datas, labels, name, clim),
                        duration=1.0 / fps, loop=0)
        return
    frames = []
    for d, lab in zip(datas, labels):
        p = _plotter(size=(560, 500))
        _add(p, _grid(d, name), name, lab, clim=clim)
        frames.append(p.screenshot(return_img=True))
        p.close()
    imageio.mimsave(str(path), frames, duration=1.0 / fps, loop=0)


def _curve_frames(datas, labels, name, clim) -> list:
    """The frames of a 1D animation: the field against x0, one image per (data, label)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pad = 0.05 * (clim[1] - clim[0] or 1.0)
    frames = []
    for d, lab in zip(datas, labels):
        order = np.argsort(d[0][:, 0])
        fig, ax = plt.subplots(figsize=(5.6, 3.6), dpi=90)
        ax.plot(d[0][order, 0], d[3][order])
        ax.set_ylim(clim[0] - pad, clim[1] + pad)
        ax.set_xlabel("x0")
        ax.set_ylabel(name)
        ax.set_title(lab)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
        plt.close(fig)
    return frames


def line_plot(x, ys: dict, path: str | Path, xlabel="", ylabel="", title="", logx=False,
              logy=False, markers=False) -> None:
    """A matplotlib line plot of several named series (histories, convergence, invariants)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for label, y in ys.items():
        xx = x[label] if isinstance(x, dict) else x
        ax.plot(xx, y, "o-" if markers else "-", label=label, ms=4)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(ys) > 1:
        ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
