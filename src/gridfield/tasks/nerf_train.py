"""NeRF training on the training core: random rays, occupancy-grid marching, coarse to fine.

:class:`NerfTask` supplies the loop's step: before it, the occupancy grid is updated from the density
every ``occ_every`` steps and dense grids are refit at the progress milestones :data:`REFITS`
(higher resolution, box shrunk to the occupied cells; the spec is replaced by
:meth:`~gridfield.presets.specs.RadianceSpec.refit`); the step renders packed samples and takes the
squared error (plus, optionally, Mip-NeRF 360's distortion loss against floaters and a total variation of
the dense density grid). Learning rates decay as ``0.1^progress`` or in Instant-NGP's steps (:func:`lr_schedule`;
fused Adam).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from gridfield.data.blender import BlenderSplit
from gridfield.fields.radiance import RadianceField, dense_resolution, refit_dense, total_variation
from gridfield.metrics import psnr_from_mse
from gridfield.presets.specs import RadianceSpec
from gridfield.render.occupancy import OccupancyGrid
from gridfield.render.pipeline import RenderSettings, render_camera, render_rays
from gridfield.render.rays import Intrinsics, rays_from_pixels
from gridfield.training import TrainConfig, TrainTask, distributed, exponential, multistep, train
from gridfield.training.schedule import Schedule

REFITS = (0.1, 0.2, 0.3)  # progress at which dense grids double their voxel count (3 times, from 1/8)
CURVE_SECONDS = (30.0, 60.0, 120.0, 180.0, 300.0, 450.0, 600.0, 900.0, 1200.0)  # time-to-PSNR points


@dataclass(frozen=True)
class Curve:
    """Test views rendered during training at the training-clock times ``seconds`` (a time-to-PSNR
    curve: the rows of ``history.json`` with ``curve_psnr``); their rendering is not training time."""

    views: BlenderSplit
    seconds: tuple[float, ...] = CURVE_SECONDS


@dataclass(frozen=True)
class NerfSchedule:
    """The NeRF-specific step options (see ``NerfConfig`` for their meaning)."""

    batch_rays: int = 4096
    tv_weight: float = 0.0
    step_ratio: float = 0.5
    occ_every: int = 16
    occ_start: int = 32
    resolution: int = 128
    lr_schedule: str = "exp"
    distortion_weight: float = 0.0


def lr_schedule(name: str) -> Schedule:
    """The learning-rate schedule ``name``: ``exp`` (``0.1^progress``, DVGO) or ``step`` (flat, x0.33 at 50, 75
    and 90% of the run, Instant-NGP / nerfacc)."""
    if name == "exp":
        return exponential(0.1)
    if name == "step":
        return multistep((0.5, 0.75, 0.9), 0.33)
    raise ValueError(f"unknown learning-rate schedule {name!r} (exp or step)")


def step_size(field: RadianceField, spec: RadianceSpec, ratio: float, unit: float = 1.0) -> float:
    """Marching step: ``ratio`` voxels of the dense density grid, or of a ``resolution`` lattice (``unit``
    world units per field unit: the contracted space's inner radius, where steps are warped distances)."""
    res = dense_resolution(field.density_grid)
    ext = float((field.aabb[3:] - field.aabb[:3]).max())
    return ratio * ext / ((res - 1) if res else spec.resolution) * unit


def refit_plan(resolution: int) -> list[tuple[float, int]]:
    """(progress, resolution) milestones: voxel count x2 at each of :data:`REFITS`, ending at ``resolution``."""
    return [(p, round(resolution * 2 ** ((k + 1 - len(REFITS)) / 3))) for k, p in enumerate(REFITS)]


class NerfTask(TrainTask):
    """Radiance-field training on the rays of ``data`` (``batch_rays`` per rank)."""

    eval_every = 100  # history rows: the running training PSNR (no extra rendering)

    def __init__(self, field: RadianceField, occ: OccupancyGrid, data: BlenderSplit, spec: RadianceSpec,
                 settings: RenderSettings, opts: NerfSchedule, curve: Curve | None = None):
        self.fused = field.aabb.device.type in ("cpu", "cuda")
        self.schedule = lr_schedule(opts.lr_schedule)
        self.module, self.occ, self.spec, self.settings, self.opts = field, occ, spec, settings, opts
        dev = field.aabb.device
        self.n, self.h, self.w, _ = data.images.shape
        self.pixels = data.images.reshape(-1, 3).to(dev)
        cams = data.cameras()
        self.c2w, self.K = data.c2w.to(dev), (cams if isinstance(cams, Intrinsics) else cams.to(dev))
        self.plan = refit_plan(opts.resolution) if dense_resolution(field.density_grid) else []
        self.samples = torch.zeros((), dtype=torch.int64)
        self.last_mse = torch.tensor(float("nan"))
        self.curve, self.curve_done = curve, 0  # curve points rendered so far

    def step_begin(self, step: int, p: float) -> bool:
        changed = False
        if self.plan and p >= self.plan[0][0]:
            field = self.module
            box = self.occ.occupied_aabb(margin_cells=3) if self.occ.n_updates > 0 else field.aabb
            box = torch.cat([torch.maximum(box[:3], field.aabb[:3]), torch.minimum(box[3:], field.aabb[3:])])
            self._refit(self.plan.pop(0)[1], box)
            changed = True
        o = self.opts
        if step >= o.occ_start and (step - o.occ_start) % o.occ_every == 0:
            self.occ.update(self.module.density, self.settings.step)
        return changed

    def _refit(self, res: int, box: torch.Tensor) -> None:
        refit_dense(self.module, box, res)
        self.spec = self.spec.refit(res, self.module.aabb.tolist())
        self.settings = replace(self.settings, step=step_size(self.module, self.spec, self.opts.step_ratio,
                                                              self.settings.step_unit))

    def batch_loss(self, step: int, gen: torch.Generator):
        info, dev = distributed.current(), self.module.aabb.device
        n = self.opts.batch_rays * info.world
        idx = torch.randint(self.n * self.h * self.w, (n,), generator=gen)[info.shard(n)].to(dev)
        img, pix = idx // (self.h * self.w), idx % (self.h * self.w)
        o, d = rays_from_pixels(self.c2w[img], self.K, pix % self.w, pix // self.w, frames=img)
        dw, tv = self.opts.distortion_weight, self.opts.tv_weight
        out = render_rays(self.module, o, d, self.occ, self.module.aabb, self.settings, stratified=True,
                          distortion=dw > 0)
        mse = (out["rgb"] - self.pixels[idx]).square().mean()
        self.samples += out["n_samples"].cpu()
        self.last_mse = mse.detach()
        loss = mse + dw * out["distortion"].mean() if dw > 0 else mse
        return (loss + tv * total_variation(self.module.density_grid) if tv > 0 else loss), {"mse": self.last_mse}

    def evaluate(self, step: int) -> dict[str, Any]:
        mse = float(self.last_mse)
        out = {"train_psnr": psnr_from_mse(max(mse, 1e-10))} if math.isfinite(mse) else {}
        c = self.curve
        due = 0 if c is None or step == 0 else sum(t <= self.seconds for t in c.seconds[self.curve_done :])
        if due:
            self.curve_done += due
            out["curve_psnr"] = self.curve_psnr()
        return out

    @torch.no_grad()
    def curve_psnr(self) -> float:
        """Mean PSNR over the curve's views (the standard protocol's per-view mean)."""
        v, dev = self.curve.views, self.module.aabb.device
        values = []
        for i in range(v.images.shape[0]):
            rgb = render_camera(self.module, v.c2w[i].to(dev), v.camera(i), self.occ, self.module.aabb,
                                self.settings)["rgb"]
            values.append(psnr_from_mse(max(float((rgb.cpu() - v.images[i]).square().mean()), 1e-10)))
        return sum(values) / len(values)

    def postfix(self, loss: float, logs: dict) -> dict[str, str]:
        mse = float(logs["mse"])
        return {"loss": f"{mse:.4f}", "psnr": f"{psnr_from_mse(max(mse, 1e-10)):.2f}",
                "occ": f"{self.occ.occupied_fraction():.3f}"}

    def state_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "occ": self.occ.state_dict(),
                "plan": [list(p) for p in self.plan], "samples": self.samples, "last_mse": self.last_mse,
                "curve_done": self.curve_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        spec = RadianceSpec.from_dict(state["spec"])
        if spec.resolution != self.spec.resolution or spec.density != self.spec.density:
            self._refit(int(spec.density.kwargs["resolutions"][0]), torch.tensor(spec.aabb))
        self.spec = spec
        self.occ.load_state_dict(state["occ"])
        self.plan = [(float(p), int(r)) for p, r in state["plan"]]
        self.samples, self.last_mse = state["samples"], state["last_mse"]
        self.curve_done = int(state.get("curve_done", 0))


def train_nerf(field: RadianceField, occ: OccupancyGrid, data: BlenderSplit, spec: RadianceSpec,
               train_cfg: TrainConfig, opts: NerfSchedule, settings: RenderSettings, curve: Curve | None = None,
               **train_kwargs) -> tuple[RadianceSpec, RenderSettings, dict]:
    """Train ``field`` in place on ``data``; returns the final spec, render settings and training stats.

    ``train_kwargs`` (``hooks``, ``state_path``, ``resume_key``) go to :func:`gridfield.training.train`.
    """
    task = NerfTask(field, occ, data, spec, settings, opts, curve)
    res = train(task, train_cfg, train_cfg.lr_grid or spec.lr_grid, train_cfg.lr_other or spec.lr_other,
                **train_kwargs)
    rays = res.steps * opts.batch_rays
    mse = float(task.last_mse)
    stats = {"steps": res.steps, "train_seconds": res.seconds, "rays_per_second": rays / max(res.seconds, 1e-9),
             "samples_per_ray": int(task.samples) / max(rays, 1), "final_loss": mse,
             "final_train_psnr": psnr_from_mse(max(mse, 1e-10)), "resumed_from": res.resumed_from,
             "history": res.history}
    return task.spec, task.settings, stats


def settings_dict(settings: RenderSettings) -> dict:
    """Render settings as plain data (what a checkpoint stores)."""
    return asdict(settings)
