"""``gridfield sdf``: fit a signed distance field to a mesh; IoU, Chamfer, F-score, ``mesh.ply``.

The models come from the registry (``gridfield.presets.get("sdf", model)``); the fitting
(:class:`~gridfield.tasks.sdf_fit.SDFTask`, :func:`fit_sdf`) runs on the training core. This module
holds the command (load, normalize, sample, fit, evaluate, write ``--out`` atomically) and the
checkpoint format.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import tyro
from torch import nn

from gridfield import checkpoints, memory, presets
from gridfield.errors import InputError
from gridfield.models import count_parameters
from gridfield.tasks.common import apply_backend, finish_run, run_record, start_run
from gridfield.tasks.sdf_fit import SDFTask, eikonal_loss, fit_sdf, predict, sdf_loss, set_output_bias, tensor_sampler
from gridfield.training import (
    Nested,
    check_options,
    config_dict,
    finite,
    resume_key,
    seed_everything,
    train,
    train_defaults,
)

__all__ = ["SDFConfig", "SDFTask", "eikonal_loss", "fit_sdf", "load_sdf_checkpoint", "predict", "run", "sdf_loss",
           "set_output_bias", "tensor_sampler"]

CHECKPOINT_FORMAT = "gridfield.sdf/1"


def load_sdf_checkpoint(path: str | Path):
    """Rebuild ``(field, Normalization)`` from ``run``'s ``checkpoint.pt`` (CPU, eval mode).

    ``field`` maps unit-frame points to unit-frame distances; original-frame distances are
    ``field(norm.to_unit(p)) / norm.scale``. The file is checked before anything is built.
    """
    from gridfield.data.meshes import Normalization  # deferred: needs the optional mesh extra

    ck = checkpoints.read_checkpoint(path, CHECKPOINT_FORMAT, "SDF")
    checkpoints.require_keys(ck, path, {"spec": dict, "state_dict": dict, "normalization": dict})
    norm = ck["normalization"]
    try:
        center, scale = np.asarray(norm["center"], dtype=np.float64).reshape(3), float(norm["scale"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"checkpoint {str(path)!r}: 'normalization' needs a 3-vector 'center' and a 'scale'") from None
    if not (np.isfinite(center).all() and math.isfinite(scale) and scale > 0):
        raise InputError(f"checkpoint {str(path)!r}: 'normalization' is not finite/positive: {norm}")
    build = lambda spec: presets.FieldSpec.from_dict(spec).build()
    field = checkpoints.build_checked(path, ck["spec"], ck["state_dict"], build, what="the SDF field")
    return field.eval(), Normalization(center, scale)


@dataclass
class SDFConfig:
    """Fit a grid model to a mesh's signed distance field; write metrics, mesh, figures, checkpoint."""

    mesh: Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="MESH_OR_BUILTIN")] = "torus_knot"
    """Mesh file (OBJ, PLY, OFF, STL, GLB) or a built-in shape (torus_knot)."""
    model: str = "dense"
    """Grid model: dense, hash, planes, mulfagrid (hash layout; mulfagrid-paper, mulfagrid-dense)."""
    decoder: Literal["identity", "linear", "mlp"] | None = None
    """Decoder after the grid; default: the model preset's."""
    param_budget: int = 2_000_000
    """Approximate number of trainable parameters of the preset."""
    batch_size: int = 1 << 14
    """Training points per step and process (drawn from the cached sample pool)."""
    loss: Literal["l1", "mape"] = "l1"
    """Data term: l1 or mape (|e| / (|sdf| + 0.01), Instant-NGP; unstable with MLP decoders here)."""
    eikonal: float = 0.0
    """Weight of the eikonal term mean (|grad f| - 1)^2 (0: off; needs double backward)."""
    samples: int = 1 << 21
    """Size of the cached training-sample pool."""
    ratio: tuple[float, float, float] = (4.0, 3.0, 1.0)
    """Sample mixture: surface : surface + noise : uniform in the box."""
    sigma: float = 0.01
    """Std of the Gaussian noise of near-surface samples (unit frame)."""
    iou_resolution: int = 256
    """Lattice resolution of iou_grid (256, 512 or 1024; evaluated in chunks)."""
    iou_points: int = 1_000_000
    """Uniform random points for iou_points."""
    mesh_resolution: int = 256
    """Marching-cubes resolution of the exported mesh.ply."""
    chamfer_points: int = 100_000
    """Surface samples per mesh for Chamfer, F-score and normal consistency."""
    eval_every: int = 50
    """Running IoU estimate (on 2^16 held-out uniform points) every this many steps."""
    train: Nested = train_defaults(steps=500, lr_grid=1e-2, lr_other=1e-2)


def _check(cfg: SDFConfig) -> None:
    check_options(("--batch-size", cfg.batch_size, cfg.batch_size >= 1, ">= 1"),
                  ("--samples", cfg.samples, cfg.samples >= 1000, ">= 1000"),
                  ("--eikonal", cfg.eikonal, finite(cfg.eikonal) and cfg.eikonal >= 0, "finite and >= 0"),
                  ("--sigma", cfg.sigma, finite(cfg.sigma) and cfg.sigma > 0, "finite and > 0"),
                  ("--ratio", cfg.ratio, all(map(finite, cfg.ratio)) and min(cfg.ratio) >= 0 and sum(cfg.ratio) > 0,
                   "finite, >= 0 and not all 0"),
                  ("--iou-resolution", cfg.iou_resolution, cfg.iou_resolution >= 8, ">= 8"),
                  ("--mesh-resolution", cfg.mesh_resolution, cfg.mesh_resolution >= 8, ">= 8"),
                  ("--iou-points", cfg.iou_points, cfg.iou_points >= 1, ">= 1"),
                  ("--chamfer-points", cfg.chamfer_points, cfg.chamfer_points >= 1, ">= 1"),
                  ("--eval-every", cfg.eval_every, cfg.eval_every >= 1, ">= 1"),
                  ("--param-budget", cfg.param_budget, cfg.param_budget >= 1000, ">= 1000"))
    if cfg.model not in presets.models("sdf"):
        raise InputError(f"unknown model {cfg.model!r} for sdf; choose one of {', '.join(presets.models('sdf'))}")
    memory.guard(memory.estimate_sample_bytes(cfg.samples), f"the pool of {cfg.samples:,} training samples",
                 f"--samples {cfg.samples}")
    for option, res in (("--iou-resolution", cfg.iou_resolution), ("--mesh-resolution", cfg.mesh_resolution)):
        memory.guard(memory.estimate_lattice_bytes(res), f"the {res}^3 evaluation lattice", f"{option} {res}")


def field_fn(field: nn.Module) -> Callable:
    """NumPy view of a field: float32 ``[M, 3]`` points -> ``[M]`` SDF values (no graph, chunked)."""
    dev = next(field.parameters()).device
    return lambda p: predict(field, torch.from_numpy(p).to(dev)).cpu().numpy()


def run(cfg: SDFConfig) -> dict:
    """CLI entry: validate, load, fit, evaluate, then write ``--out`` atomically; returns metrics.

    Outputs: ``metrics.json``, ``mesh.ply`` (original frame), ``sdf_slices.png``, ``preview.png``,
    ``history.json``, ``checkpoint.pt`` (spec + state dict + normalization).
    """
    from gridfield.data.meshes import cached_samples, load_mesh, normalize  # deferred: optional mesh extra
    from gridfield.metrics_sdf import evaluate_sdf, ground_truth  # deferred: optional mesh extra
    from gridfield.report.sdf_figures import save_preview, save_slices  # deferred: optional mesh extra

    _check(cfg)
    t = cfg.train
    ctx = start_run(t, Path("outputs") / "sdf" / f"{Path(cfg.mesh).stem}-{cfg.model}")
    mesh, name = load_mesh(cfg.mesh)
    unit, norm = normalize(mesh)
    spec = presets.get("sdf", cfg.model, param_budget=cfg.param_budget, decoder=cfg.decoder)
    pts, sdf = cached_samples(unit, name, cfg.samples, cfg.ratio, cfg.sigma, t.seed)
    seed_everything(t.seed)
    field = apply_backend(spec.build().to(ctx.device), t.backend)
    set_output_bias(field, float(sdf.mean()))
    gt = ground_truth(unit, name, cfg.iou_resolution, cfg.iou_points, t.seed)
    dev = ctx.device
    sampler = tensor_sampler(torch.from_numpy(pts).to(dev), torch.from_numpy(sdf).to(dev))
    val = (torch.from_numpy(gt["val_points"]).to(dev), torch.from_numpy(gt["val_inside"]).to(dev))
    config = config_dict(cfg)
    key = resume_key(config)
    task = SDFTask(field, sampler, cfg.batch_size, cfg.loss, cfg.eikonal, val, cfg.eval_every)
    res = train(task, t, t.lr_grid, t.lr_other, state_path=ctx.state, resume_key=key)
    if not ctx.dist.is_main:
        finish_run(ctx, lambda d: None)
        return {}
    field.eval()
    ev, volume, pred_mesh = evaluate_sdf(field_fn(field), unit, gt, cfg.iou_resolution, cfg.mesh_resolution,
                                         cfg.chamfer_points)
    metrics = {"mesh": name, "model": cfg.model, **ev, "params": count_parameters(field),
               "train_seconds": res.seconds, "steps": res.steps, "watertight": bool(mesh.is_watertight),
               "device": str(dev), "world_size": ctx.dist.world, "spec": spec.to_dict(), "config": config,
               **run_record("sdf", dev)}
    metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    export = pred_mesh.copy()
    export.vertices = norm.from_unit(pred_mesh.vertices)

    def write(d: Path) -> None:
        (d / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (d / "history.json").write_text(json.dumps(res.history, indent=1) + "\n")
        export.export(d / "mesh.ply")
        save_slices(d / "sdf_slices.png", volume, unit, title=f"{name}, {cfg.model}")
        save_preview(d / "preview.png", pred_mesh, title=f"{name}, {cfg.model}: IoU {ev['iou_grid']:.4f}")
        torch.save({"format": CHECKPOINT_FORMAT, "spec": spec.to_dict(), "config": config,
                    "normalization": {"center": norm.center.tolist(), "scale": float(norm.scale)},
                    "state_dict": checkpoints.cpu_state(field)}, d / "checkpoint.pt")

    finish_run(ctx, write)
    print(f"{name} / {cfg.model}: {metrics['params']:,} params, iou_grid {ev['iou_grid']:.4f}, "
          f"iou_points {ev['iou_points']:.4f}, chamfer_l1 {ev['chamfer_l1']:.2e}, {res.seconds:.1f} s -> {ctx.out}")
    return metrics
