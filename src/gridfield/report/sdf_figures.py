"""Figures of the SDF task: axis-aligned SDF slices with zero level sets, and a shaded mesh preview.

Both use matplotlib's object API (Agg canvas: no display, no pyplot state). The preview is a simple
software renderer: dense area-uniform surface samples are projected orthographically, z-buffered per
pixel and Lambert-shaded by their face normals (robust for any mesh size, no OpenGL).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gridfield.data.meshes import inside


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def volume_slices(volume: np.ndarray) -> list[tuple[str, np.ndarray, float]]:
    """Middle slices of a ``[R, R, R]`` lattice volume: ``(axis name, [R, R] slice, coordinate)``."""
    r = volume.shape[0]
    i = r // 2
    c = float(np.linspace(-1, 1, r)[i])
    return [("x", volume[i], c), ("y", volume[:, i], c), ("z", volume[:, :, i], c)]


def _slice_points(axis: int, coord: float, r: int) -> np.ndarray:
    t = np.linspace(-1, 1, r, dtype=np.float32)
    a, b = np.meshgrid(t, t, indexing="ij")
    cols = [a.ravel(), b.ravel()]
    cols.insert(axis, np.full(a.size, coord, np.float32))
    return np.stack(cols, axis=1)


def save_slices(path: str | Path, volume: np.ndarray, ref_mesh=None, title: str = "",
                clip: float = 0.25) -> None:
    """Three middle slices of the fitted SDF ``volume`` ``[R, R, R]`` (unit frame, ``linspace(-1, 1, R)``).

    Colour: signed distance clipped to ``[-clip, clip]`` (blue inside, red outside); solid black: the
    fitted zero level set; dashed green: the reference surface (``ref_mesh``, by winding number).
    """
    r = volume.shape[0]
    fig = _figure(12, 4.4)
    axes = fig.subplots(1, 3)
    names = ("x", "y", "z")
    for k, (ax, (name, sl, c)) in enumerate(zip(axes, volume_slices(volume))):
        u, v = [n for n in names if n != name]
        im = ax.imshow(np.clip(sl, -clip, clip).T, origin="lower", extent=(-1, 1, -1, 1), cmap="RdBu_r",
                       vmin=-clip, vmax=clip)
        t = np.linspace(-1, 1, r)
        if sl.min() < 0 < sl.max():
            ax.contour(t, t, sl.T, levels=[0.0], colors="k", linewidths=1.2)
        if ref_mesh is not None:
            occ = inside(ref_mesh, _slice_points(k, c, r)).reshape(r, r).astype(float)
            if 0 < occ.mean() < 1:
                ax.contour(t, t, occ.T, levels=[0.5], colors="#2ca02c", linewidths=1.0, linestyles="--")
        ax.set_xlabel(f"{u} (unit frame)")
        ax.set_ylabel(f"{v} (unit frame)")
        ax.set_title(f"{name} = {c:+.3f}")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="signed distance (negative inside)")
    if title:
        fig.suptitle(f"{title}: fitted zero level (black), reference (green, dashed)")
    fig.savefig(path)


def render_mesh(mesh, size: int = 512, elev: float = 25.0, azim: float = 35.0,
                samples_per_pixel: float = 6.0, seed: int = 0) -> np.ndarray:
    """Grey-level ``[size, size]`` float image in ``[0, 1]`` of ``mesh`` (white background).

    Orthographic camera at elevation ``elev`` and azimuth ``azim`` (degrees) looking at the mesh
    centre; two-sided Lambert shading with a head light plus ambient.
    """
    import trimesh

    img = np.ones((size, size))
    if len(mesh.faces) == 0:
        return img
    n = int(samples_per_pixel * size * size)
    pts, face = trimesh.sample.sample_surface(mesh, n, seed=seed)
    nrm = np.asarray(mesh.face_normals)[face]
    e, a = np.radians(elev), np.radians(azim)
    view = np.array([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)])  # towards the camera
    right = np.cross([0.0, 1.0, 0.0], view)
    right /= np.linalg.norm(right)
    up = np.cross(view, right)
    p = pts - 0.5 * (mesh.bounds[0] + mesh.bounds[1])
    half = 1.05 * np.linalg.norm(p, axis=1).max()
    px = np.clip(((p @ right / half + 1) * 0.5 * size).astype(int), 0, size - 1)
    py = np.clip(((1 - p @ up / half) * 0.5 * size).astype(int), 0, size - 1)
    depth = -(p @ view)  # smaller is closer
    light = view + 0.4 * up + 0.3 * right
    shade = 0.15 + 0.85 * np.abs(nrm @ (light / np.linalg.norm(light)))
    pix = py * size + px
    order = np.lexsort((depth, pix))
    first = np.unique(pix[order], return_index=True)[1]
    img.reshape(-1)[pix[order][first]] = shade[order][first]
    return img


def save_preview(path: str | Path, mesh, title: str = "", size: int = 512) -> None:
    """Write a shaded preview of ``mesh`` (see :func:`render_mesh`) with an optional title."""
    fig = _figure(5, 5.3)
    ax = fig.add_axes((0, 0, 1, 0.94))
    ax.imshow(render_mesh(mesh, size), cmap="gray", vmin=0, vmax=1, interpolation="lanczos")
    ax.set_axis_off()
    if title:
        fig.suptitle(title if len(mesh.faces) else f"{title} (empty mesh)", fontsize=10)
    fig.savefig(path)
