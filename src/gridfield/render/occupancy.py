"""An occupancy grid over the scene box, updated from the density during training (Instant-NGP /
nerfacc style), used by the ray marcher to skip empty space.

The grid keeps an exponential moving average of the opacity ``sigma * step`` at jittered points of
each cell and marks a cell occupied when its value exceeds ``min(threshold, mean)``. Until the first
update every cell is occupied; the first update evaluates every cell, later ones a fixed budget of
cells (half uniform, half among the occupied ones), so their cost does not grow with the grid.

Example::

    occ = OccupancyGrid(aabb, resolution=128)
    occ.update(lambda x: field.density(x), step_size=0.01)   # every few training steps
    occ.query(points)                                         # [N] bool
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CELLS_PER_UPDATE = 1 << 16  # cells evaluated per occupancy update after the first (a fixed budget)


class OccupancyGrid(nn.Module):
    """Binary occupancy ``[R, R, R]`` (x index slowest) over ``aabb = [xmin, ymin, zmin, xmax, ymax, zmax]``.

    Buffers: ``aabb [6]``, ``ema [R^3]`` (float opacity estimate), ``binary [R, R, R]`` (bool).
    Not differentiable; updates run under ``torch.no_grad``.
    """

    def __init__(self, aabb: Tensor, resolution: int = 128, threshold: float = 0.01, decay: float = 0.95):
        super().__init__()
        if resolution < 1:
            raise ValueError(f"occupancy resolution must be >= 1, got {resolution}")
        self.resolution, self.threshold, self.decay = resolution, threshold, decay
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).clone())
        self.register_buffer("ema", torch.zeros(resolution**3))
        self.register_buffer("binary", torch.ones(resolution, resolution, resolution, dtype=torch.bool))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("carved", torch.ones(resolution**3, dtype=torch.bool))

    def cell_index(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Flat cell index ``[N]`` of world points ``[N, 3]`` and whether they lie inside the box ``[N]``."""
        lo, hi = self.aabb[:3], self.aabb[3:]
        u = (x - lo) / (hi - lo)
        inside = ((u >= 0) & (u <= 1)).all(-1)
        ijk = (u * self.resolution).long().clamp(0, self.resolution - 1)
        r = self.resolution
        return (ijk[:, 0] * r + ijk[:, 1]) * r + ijk[:, 2], inside

    def query(self, x: Tensor) -> Tensor:
        """``[N, 3]`` world points -> ``[N]`` bool: inside the box and in an occupied cell."""
        idx, inside = self.cell_index(x)
        return self.binary.reshape(-1)[idx] & inside

    def cell_centers(self, jitter: bool = True, cells: Tensor | None = None) -> Tensor:
        """World positions ``[M, 3]`` of the flat cell indices ``cells`` (all ``R^3`` cells by default),
        uniformly jittered inside each cell if ``jitter``, else at the cell centres."""
        r = self.resolution
        if cells is None:
            cells = torch.arange(r**3, device=self.aabb.device)
        ijk = torch.stack([cells // (r * r), (cells // r) % r, cells % r], -1).float()
        ijk = ijk + (torch.rand_like(ijk) if jitter else 0.5)
        lo, hi = self.aabb[:3], self.aabb[3:]
        return lo + ijk / r * (hi - lo)

    @property
    def n_updates(self) -> int:
        """Updates so far (a host-side copy of the ``updates`` buffer: reading it costs no device sync)."""
        if getattr(self, "_n_updates", None) is None:
            self._n_updates = int(self.updates)
        return self._n_updates

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._n_updates = self._candidates = None  # re-read from the loaded buffers

    @torch.no_grad()
    def update(self, density_fn: Callable[[Tensor], Tensor], step_size: float, chunk: int = 1 << 18,
               warmup: bool | None = None, cells: int | None = None) -> None:
        """EMA update from ``density_fn`` (``[N, 3]`` world -> ``[N]``) at jittered points of the cells.

        The first update (``warmup``, default: when there was none yet) evaluates every cell and
        replaces the estimate. Later ones evaluate a fixed budget of ``cells`` cells (default
        :data:`CELLS_PER_UPDATE`, so the cost does not grow with the grid): half drawn uniformly from
        the cells carving left, half from the cells occupied now (Instant-NGP / nerfacc); every cell
        decays by ``decay``, a drawn cell keeps ``max(decayed, new draws)``. Occupied: above
        ``min(threshold, mean)``. On CUDA the draw of occupied cells is one host sync per update.
        """
        n = self.resolution**3
        budget = CELLS_PER_UPDATE if cells is None else int(cells)
        warm = self.n_updates == 0 if warmup is None else warmup
        idx = None if warm or budget >= n else self._draw(budget)
        x = self.cell_centers(jitter=True, cells=idx)
        occ = torch.cat([density_fn(x[s : s + chunk]).reshape(-1) for s in range(0, x.shape[0], chunk)])
        occ = occ.float() * step_size
        if warm:
            self.ema.copy_(occ)
        else:
            new = self.ema * self.decay
            if idx is None:
                new = torch.maximum(new, occ)
            else:
                new.scatter_reduce_(0, idx, occ, reduce="amax")  # a cell drawn twice keeps its largest draw
            self.ema.copy_(new)
        thr = self.ema.mean().clamp(max=self.threshold)  # a tensor: no host sync
        self.binary.copy_(((self.ema > thr) & self.carved).reshape(self.binary.shape))
        self.updates += 1
        self._n_updates = self.n_updates + 1

    def _draw(self, budget: int) -> Tensor:
        """``budget`` flat cell indices: half uniform over the uncarved cells, half over the occupied ones."""
        dev = self.aabb.device
        if getattr(self, "_candidates", None) is None:
            self._candidates = torch.nonzero(self.carved)[:, 0]
        occupied = torch.nonzero(self.binary.reshape(-1))[:, 0]
        pools = [p for p in (self._candidates, occupied) if p.numel() > 0]
        if not pools:
            return torch.randint(self.resolution**3, (budget,), device=dev)
        k = budget // len(pools)
        return torch.cat([p[torch.randint(p.numel(), (k,), device=dev)] for p in pools])

    @torch.no_grad()
    def carve(self, c2w: Tensor, K, alphas: Tensor, near: float) -> None:
        """Space carving from training masks (a visual hull): a cell stays occupied only if, in every
        view ``c2w [N, 4, 4]`` (intrinsics ``K``, or a list of one per view) whose image contains its
        centre, the alpha mask ``alphas [N, H, W]`` is non-zero within the cell's footprint (a max-pool
        dilation sized for a cell at distance ``near``). Carved cells stay empty in later updates."""
        Ks = list(K) if isinstance(K, (list, tuple)) else [K] * c2w.shape[0]
        centres = self.cell_centers(jitter=False)
        half = 0.5 * float((self.aabb[3:] - self.aabb[:3]).norm()) / self.resolution
        rad = max(1, math.ceil(max(max(k.fx, k.fy) for k in Ks) * half / max(near, 1e-3)))
        masks = F.max_pool2d((alphas > 0).float().unsqueeze(1), 2 * rad + 1, stride=1, padding=rad)[:, 0] > 0
        keep = self.carved.clone()
        for i in range(c2w.shape[0]):
            k = Ks[i]
            w2c = torch.linalg.inv(c2w[i].double()).float().to(centres.device)
            p = centres @ w2c[:3, :3].T + w2c[:3, 3]
            depth = -p[:, 2]
            u = k.fx * p[:, 0] / depth.clamp_min(1e-6) + k.cx
            v = -k.fy * p[:, 1] / depth.clamp_min(1e-6) + k.cy
            inside = (depth > 0) & (u >= 0) & (u < k.width) & (v >= 0) & (v < k.height)
            m = masks[i].to(centres.device)
            hit = m[v.long().clamp(0, k.height - 1), u.long().clamp(0, k.width - 1)]
            keep &= ~inside | hit
        self.carved.copy_(keep)
        self.binary &= keep.reshape(self.binary.shape)
        self._candidates = None

    def occupied_aabb(self, margin_cells: int = 1) -> Tensor:
        """The world box ``[6]`` around occupied cells, grown by ``margin_cells``; the full box if none."""
        occ = self.binary.nonzero()
        if occ.numel() == 0:
            return self.aabb.clone()
        r = self.resolution
        lo_i = (occ.amin(0) - margin_cells).clamp(0, r)
        hi_i = (occ.amax(0) + 1 + margin_cells).clamp(0, r)
        lo, hi = self.aabb[:3], self.aabb[3:]
        size = (hi - lo) / r
        return torch.cat([lo + lo_i * size, lo + hi_i * size])

    def occupied_fraction(self) -> float:
        """Fraction of occupied cells (a cheap progress indicator)."""
        return float(self.binary.float().mean())
