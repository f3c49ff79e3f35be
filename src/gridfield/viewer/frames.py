"""The viewer's pictures as pure functions: a view (or a camera) in, an ``[H, W, 3]`` uint8 picture out.

No viser and no browser here, so every picture the viewer shows can be compared with the tasks' own
renderers (``tests/test_viewer.py``): an image view at zoom 1 is ``gridfield image-render``'s picture,
a NeRF view is :func:`gridfield.render.pipeline.render_camera`'s (RGB) or the task's depth map
(:func:`gridfield.render.outputs.depth_image`), the SDF mesh is the marching cubes of the task's
lattice (:func:`gridfield.metrics_sdf.marching_cubes`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from gridfield.metrics_sdf import lattice_chunks, marching_cubes
from gridfield.render import outputs
from gridfield.render.pipeline import render_camera
from gridfield.render.rays import Intrinsics
from gridfield.report.figures import to_uint8
from gridfield.tasks.sdf import field_fn

#: Colour outside the fitted image (letterbox, zoomed out or panned past the border).
IMAGE_BACKGROUND = (0.16, 0.16, 0.18)


def image_window(shape: Sequence[int], width: int, height: int, center: tuple[float, float] = (0.0, 0.0),
                 zoom: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Field coordinates of the columns ``[width]`` and rows ``[height]`` of a view of an image field.

    At zoom 1 the fitted image (``shape = [H0, W0, C]``) fills the view's largest rectangle of its
    aspect ratio, centred, and its pixel centres there are exactly those of ``render_image`` at that
    size (``-1 + 2 j / (w - 1)``); ``zoom`` magnifies about ``center`` (field coordinates, ``[-1, 1]``).
    """
    H0, W0 = int(shape[0]), int(shape[1])
    if width * H0 >= height * W0:  # the view is wider than the image: the height fills it
        h, w = height, max(2, min(width, round(height * W0 / H0)))
    else:
        w, h = width, max(2, min(height, round(width * H0 / W0)))
    px, py = 2.0 / (w - 1) / zoom, 2.0 / (h - 1) / zoom
    j0, i0 = (width - w) // 2, (height - h) // 2
    cx, cy = float(center[0]), float(center[1])
    xs = torch.linspace(cx - (j0 + (w - 1) / 2) * px, cx + (width - 1 - j0 - (w - 1) / 2) * px, width)
    ys = torch.linspace(cy - (i0 + (h - 1) / 2) * py, cy + (height - 1 - i0 - (h - 1) / 2) * py, height)
    return xs, ys


@torch.no_grad()
def image_frame(field: nn.Module, shape: Sequence[int], width: int, height: int,
                center: tuple[float, float] = (0.0, 0.0), zoom: float = 1.0, chunk: int = 1 << 18) -> np.ndarray:
    """A ``width x height`` view of an image field (see :func:`image_window`): uint8 ``[height, width, 3]``.

    Grey fields are shown grey, an alpha channel is composited on :data:`IMAGE_BACKGROUND`, and points
    outside ``[-1, 1]^2`` get that colour too.
    """
    xs, ys = image_window(shape, width, height, center, zoom)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    x = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)
    p0 = next(field.parameters())
    x = x.to(device=p0.device, dtype=p0.dtype)
    out = torch.cat([field(x[s : s + chunk]) for s in range(0, x.shape[0], chunk)]).float().cpu().clamp(0, 1)
    bg = torch.tensor(IMAGE_BACKGROUND)
    c = out.shape[-1]
    rgb = out[:, :1].expand(-1, 3) if c <= 2 else out[:, :3]
    if c in (2, 4):
        alpha = out[:, -1:]
        rgb = rgb * alpha + bg * (1 - alpha)
    inside = (x.cpu().abs() <= 1 + 1e-6).all(-1, keepdim=True)
    rgb = torch.where(inside, rgb, bg)
    return to_uint8(rgb.reshape(height, width, 3))


def nerf_frame(field, occ, settings, c2w: torch.Tensor, K: Intrinsics, mode: str = "rgb") -> np.ndarray:
    """One NeRF camera (OpenGL ``c2w [4, 4]``, intrinsics ``K``) as the task renders it: uint8 ``[H, W, 3]``.

    ``mode="rgb"``: the composited colour (:func:`~gridfield.render.pipeline.render_camera`);
    ``"depth"``: the task's depth picture (turbo colours near to far, white background).
    """
    if mode not in ("rgb", "depth"):
        raise ValueError(f"mode must be 'rgb' or 'depth', got {mode!r}")
    dev = field.aabb.device
    r = render_camera(field, c2w.to(dev), K, occ, field.aabb, settings)
    img = r["rgb"] if mode == "rgb" else outputs.depth_image(r["depth"], r["opacity"], settings.near, settings.far)
    return outputs.to_uint8(img)


def sdf_volume(field: nn.Module, resolution: int) -> np.ndarray:
    """The SDF on the ``resolution^3`` lattice of ``linspace(-1, 1)`` (unit frame): ``[R, R, R]`` float32."""
    fn = field_fn(field)
    return np.concatenate([fn(p) for p in lattice_chunks(resolution)]).reshape([resolution] * 3)


def sdf_mesh(field: nn.Module, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """The zero level set (marching cubes on :func:`sdf_volume`, unit frame): ``(vertices [V, 3] float32,
    faces [F, 3] int32)``, both empty when the field has no sign change."""
    mesh = marching_cubes(sdf_volume(field, resolution))
    return np.asarray(mesh.vertices, dtype=np.float32), np.asarray(mesh.faces, dtype=np.int32)


def sdf_slice(field: nn.Module, axis: int, coord: float, resolution: int) -> np.ndarray:
    """The SDF on the plane ``x[axis] = coord``: ``[R, R]``, entry ``[a, b]`` at the ``a``-th and ``b``-th
    ``linspace(-1, 1, R)`` values of the two other axes, in increasing axis order."""
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    t = np.linspace(-1, 1, resolution, dtype=np.float32)
    a, b = np.meshgrid(t, t, indexing="ij")
    cols = [a.ravel(), b.ravel()]
    cols.insert(axis, np.full(a.size, coord, np.float32))
    return field_fn(field)(np.stack(cols, axis=1)).reshape(resolution, resolution)


def slice_colors(values: np.ndarray, clip: float = 0.25) -> np.ndarray:
    """SDF values ``[R, R]`` -> uint8 ``[R, R, 3]``: ``RdBu_r`` clipped to ``[-clip, clip]`` (blue inside,
    red outside, as ``sdf_slices.png``), black on the zero level (pixels whose sign differs from a
    neighbour's)."""
    import matplotlib

    v = np.asarray(values, dtype=np.float64)
    rgb = matplotlib.colormaps["RdBu_r"](np.clip(v, -clip, clip) / (2 * clip) + 0.5)[..., :3]
    neg = v < 0
    edge = np.zeros_like(neg)
    edge[1:] |= neg[1:] != neg[:-1]
    edge[:, 1:] |= neg[:, 1:] != neg[:, :-1]
    rgb[edge] = 0.0
    return to_uint8(rgb)
