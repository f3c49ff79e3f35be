"""3D signed-distance-field fitting from a mesh: the training loop and ``gridfield sdf``.

The models come from the registry (``gridfield.presets.get("sdf", model)``, :mod:`gridfield.presets.sdf`);
:func:`fit_sdf` is the reusable loop (Adam, cosine decay, L1 or MAPE loss, optional eikonal term,
progress bar with a running IoU estimate); :func:`run` is the CLI (load, normalize, sample,
fit, evaluate, write ``--out`` atomically).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro
from torch import Tensor, nn

from gridfield import presets
from gridfield.checkpoints import cpu_state, read_checkpoint
from gridfield.errors import InputError
from gridfield.outdir import check_out_dir
from gridfield.tasks.train import call_hooks, cosine_factor, make_optimizer, resolve_device, seed_everything

Sampler = Callable[[int, torch.Generator], tuple[Tensor, Tensor]]


def sdf_loss(pred: Tensor, target: Tensor, kind: str = "mape", eps: float = 1e-2) -> Tensor:
    """Mean ``|pred - target|`` (``l1``) or ``|pred - target| / (|target| + eps)`` (``mape``, Instant-NGP)."""
    err = (pred - target).abs()
    if kind == "l1":
        return err.mean()
    if kind == "mape":
        return (err / (target.abs() + eps)).mean()
    raise InputError(f"unknown loss {kind!r}; choose l1 or mape")


def eikonal_loss(field: nn.Module, x: Tensor) -> Tensor:
    """``mean (|grad_x f(x)| - 1)^2`` with ``create_graph=True`` (differentiable: double backward)."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(field(x).sum(), x, create_graph=True)
    return (g.norm(dim=-1) - 1).pow(2).mean()


def tensor_sampler(points: Tensor, sdf: Tensor) -> Sampler:
    """Sampler drawing ``batch`` rows (with replacement) from a fixed pool ``[M, 3]``, ``[M]``."""

    def sample(batch: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        i = torch.randint(len(points), (batch,), generator=gen).to(points.device)
        return points[i], sdf[i]

    return sample


@torch.no_grad()
def set_output_bias(field: nn.Module, value: float) -> bool:
    """Set the bias of the decoder's last linear layer to ``value`` (returns False if it has none).

    Starting the SDF at the mean training target (positive: most of the box is outside) keeps
    grid cells that no sample reaches from starting with a sign flip (floaters).
    """
    last = [m for m in field.decoder.modules() if isinstance(m, nn.Linear)]
    if not last or last[-1].bias is None:
        return False
    last[-1].bias.fill_(value)
    return True


@torch.no_grad()
def predict(field: nn.Module, x: Tensor, chunk: int = 1 << 18) -> Tensor:
    """``[N]`` SDF values of ``field`` at ``x`` ``[N, 3]``, in chunks (no graph)."""
    return torch.cat([field(x[i : i + chunk]).reshape(-1) for i in range(0, len(x), chunk)])


def fit_sdf(field: nn.Module, sampler: Sampler, steps: int = 1000, batch: int = 1 << 16,
            lr_grid: float = 1e-2, lr_other: float = 1e-2, loss: str = "l1", eikonal: float = 0.0,
            val: tuple[Tensor, Tensor] | None = None, eval_every: int = 50, seed: int = 0,
            progress: bool = False, hooks: Sequence[Any] | None = None,
            max_seconds: float | None = None) -> list[dict]:
    """Fit ``field`` (``[N, 3] -> [N, 1]``) to SDF samples in place; returns the history.

    ``sampler(batch, generator) -> (x [B, 3], sdf [B])``. ``val = (x [M, 3], inside [M] bool)``
    gives the running IoU estimate (``sdf < 0`` vs ``inside``) every ``eval_every`` steps. The
    ``eikonal`` weight adds :func:`eikonal_loss` on the batch (double backward through the grid).
    Adam (two learning rates) with cosine decay to 1% over the run. ``max_seconds``: a wall-clock
    budget; after 10 steps the run is shortened to the steps that fit (the cosine follows).
    """
    gen = seed_everything(seed)
    opt = make_optimizer(field, lr_grid, lr_other)
    horizon = [steps]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_factor(s, horizon[0]))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="fit sdf", unit="step", dynamic_ncols=True)
    history, iou_est, t0, step, t_eval = [], float("nan"), time.perf_counter(), 0, 0.0
    while step < horizon[0]:
        x, y = sampler(batch, gen)
        total = sdf_loss(field(x).reshape(-1), y, loss)
        if eikonal > 0:
            total = total + eikonal * eikonal_loss(field, x)
        opt.zero_grad(set_to_none=True)
        call_hooks(hooks, "step_pre_backward", step, field, total)
        total.backward()
        call_hooks(hooks, "step_post_backward", step, field, total)
        opt.step()
        sched.step()
        call_hooks(hooks, "step_end", step, field, total)
        total = float(total.detach())
        if max_seconds is not None and step == 9:  # budget minus the evaluations still to come
            per_step = (time.perf_counter() - t0 - t_eval) / 10
            per_eval = t_eval / len(range(0, 10, eval_every)) if val is not None else 0.0
            n = int(max_seconds / (per_step + per_eval / eval_every))
            horizon[0] = max(10, min(steps, n))
            if bar is not None:
                bar.total = horizon[0]
        last = step == horizon[0] - 1
        if val is not None and (step % eval_every == 0 or last):
            t1 = time.perf_counter()
            a, b = predict(field, val[0]) < 0, val[1]
            iou_est = float((a & b).sum() / (a | b).sum().clamp_min(1))
            history.append({"step": step, "loss": total, "iou_est": iou_est})
            t_eval += time.perf_counter() - t1 if step < 10 else 0.0
        if bar is not None:
            bar.set_postfix(loss=f"{total:.4f}", iou=f"{iou_est:.4f}", refresh=False)
            bar.update(1)
        step += 1
    if bar is not None:
        bar.close()
    return history


CHECKPOINT_FORMAT = "gridfield.sdf/1"


def load_sdf_checkpoint(path: str | Path):
    """Rebuild ``(field, Normalization)`` from ``run``'s ``checkpoint.pt`` (CPU, eval mode).

    ``field`` maps unit-frame points to unit-frame distances; original-frame distances are
    ``field(norm.to_unit(p)) / norm.scale``.
    """
    import numpy as np

    from gridfield.data.meshes import Normalization

    ck = read_checkpoint(path, CHECKPOINT_FORMAT, "SDF")
    field = presets.FieldSpec.from_dict(ck["spec"]).build()
    field.load_state_dict(ck["state_dict"])
    norm = ck["normalization"]
    return field.eval(), Normalization(np.asarray(norm["center"], dtype=np.float64), float(norm["scale"]))


@dataclass
class SDFConfig:
    """Fit a grid model to a mesh's signed distance field; write metrics, mesh, figures, checkpoint."""

    mesh: Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="MESH_OR_BUILTIN")] = "torus_knot"
    """Mesh file (OBJ, PLY, OFF, STL, GLB) or a built-in shape (torus_knot)."""
    model: str = "dense"
    """Grid model: dense, hash, planes or mulfagrid (those installed)."""
    decoder: Literal["identity", "linear", "mlp"] | None = None
    """Decoder after the grid; default: the model preset's."""
    param_budget: int = 2_000_000
    """Approximate number of trainable parameters of the preset."""
    steps: int = 500
    """Optimizer steps (at most; see --time-budget)."""
    time_budget: float | None = None
    """Training wall-clock budget in seconds (steps shortened to fit, estimated after 10 steps)."""
    batch_size: int = 1 << 14
    """Training points per step (drawn from the cached sample pool)."""
    lr_grid: float = 1e-2
    """Adam learning rate of the grid features (cosine decay to 1%)."""
    lr_other: float = 1e-2
    """Adam learning rate of decoder and kernel parameters (cosine decay to 1%)."""
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
    seed: int = 0
    """Random seed (samples, initialisation, batches)."""
    device: str = "auto"
    """Torch device: auto (cuda if available, else cpu), cpu, cuda, ..."""
    out: Path | None = None
    """Output directory; default outputs/sdf/<mesh>-<model>. Replaced atomically at the end."""
    progress: bool = True
    """Show a progress bar with the loss and the running IoU estimate."""


def _validate(cfg: SDFConfig) -> torch.device:
    checks = [(cfg.steps >= 1, "--steps must be >= 1", cfg.steps),
              (cfg.batch_size >= 1, "--batch-size must be >= 1", cfg.batch_size),
              (cfg.samples >= 1000, "--samples must be >= 1000", cfg.samples),
              (cfg.lr_grid > 0 and cfg.lr_other > 0, "learning rates must be > 0", (cfg.lr_grid, cfg.lr_other)),
              (cfg.eikonal >= 0, "--eikonal must be >= 0", cfg.eikonal),
              (cfg.sigma > 0, "--sigma must be > 0", cfg.sigma),
              (cfg.iou_resolution >= 8, "--iou-resolution must be >= 8", cfg.iou_resolution),
              (cfg.mesh_resolution >= 8, "--mesh-resolution must be >= 8", cfg.mesh_resolution),
              (cfg.iou_points >= 1 and cfg.chamfer_points >= 1, "point counts must be >= 1",
               (cfg.iou_points, cfg.chamfer_points)),
              (cfg.eval_every >= 1, "--eval-every must be >= 1", cfg.eval_every),
              (cfg.time_budget is None or cfg.time_budget > 0, "--time-budget must be > 0", cfg.time_budget),
              (cfg.param_budget >= 1000, "--param-budget must be >= 1000", cfg.param_budget)]
    for ok, msg, value in checks:
        if not ok:
            raise InputError(f"{msg}, got {value}")
    dev = resolve_device(cfg.device)
    if cfg.out is not None:
        check_out_dir(cfg.out)
    return dev


def field_fn(field: nn.Module) -> Callable:
    """NumPy view of a field: float32 ``[M, 3]`` points -> ``[M]`` SDF values (no graph, chunked)."""
    dev = next(field.parameters()).device
    return lambda p: predict(field, torch.from_numpy(p).to(dev)).cpu().numpy()


def run(cfg: SDFConfig) -> dict:
    """CLI entry: validate, load, fit, evaluate, then write ``cfg.out`` atomically; returns metrics.

    Outputs: ``metrics.json``, ``mesh.ply`` (original frame), ``sdf_slices.png``, ``preview.png``,
    ``history.json``, ``checkpoint.pt`` (spec + state dict + normalization).
    """
    import json

    from gridfield.data.meshes import cached_samples, load_mesh, normalize
    from gridfield.metrics_sdf import evaluate_sdf, ground_truth
    from gridfield.models import count_parameters
    from gridfield.report.sdf_figures import save_preview, save_slices
    from gridfield.tasks.train import write_dir_atomically

    dev = _validate(cfg)
    mesh, name = load_mesh(cfg.mesh)
    out = check_out_dir(cfg.out or Path("outputs") / "sdf" / f"{name}-{cfg.model}")
    unit, norm = normalize(mesh)
    spec = presets.get("sdf", cfg.model, param_budget=cfg.param_budget, decoder=cfg.decoder)
    pts, sdf = cached_samples(unit, name, cfg.samples, cfg.ratio, cfg.sigma, cfg.seed)
    torch.manual_seed(cfg.seed)
    field = spec.build().to(dev)
    set_output_bias(field, float(sdf.mean()))
    gt = ground_truth(unit, name, cfg.iou_resolution, cfg.iou_points, cfg.seed)
    sampler = tensor_sampler(torch.from_numpy(pts).to(dev), torch.from_numpy(sdf).to(dev))
    val = (torch.from_numpy(gt["val_points"]).to(dev), torch.from_numpy(gt["val_inside"]).to(dev))
    t0 = time.perf_counter()
    history = fit_sdf(field, sampler, cfg.steps, cfg.batch_size, cfg.lr_grid, cfg.lr_other, cfg.loss,
                      cfg.eikonal, val, cfg.eval_every, cfg.seed, cfg.progress, max_seconds=cfg.time_budget)
    seconds = time.perf_counter() - t0
    field.eval()
    ev, volume, pred_mesh = evaluate_sdf(field_fn(field), unit, gt, cfg.iou_resolution, cfg.mesh_resolution,
                                         cfg.chamfer_points)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()}
    metrics = {"mesh": name, "model": cfg.model, **ev, "params": count_parameters(field),
               "train_seconds": seconds, "steps": history[-1]["step"] + 1, "watertight": bool(mesh.is_watertight),
               "device": str(dev), "spec": spec.to_dict(), "config": config}
    metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    export = pred_mesh.copy()
    export.vertices = norm.from_unit(pred_mesh.vertices)

    def write(d: Path) -> None:
        (d / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (d / "history.json").write_text(json.dumps(history, indent=1) + "\n")
        export.export(d / "mesh.ply")
        save_slices(d / "sdf_slices.png", volume, unit, title=f"{name}, {cfg.model}")
        save_preview(d / "preview.png", pred_mesh, title=f"{name}, {cfg.model}: IoU {ev['iou_grid']:.4f}")
        torch.save({"format": CHECKPOINT_FORMAT, "spec": spec.to_dict(), "config": config,
                    "normalization": {"center": norm.center.tolist(), "scale": float(norm.scale)},
                    "state_dict": cpu_state(field)},
                   d / "checkpoint.pt")

    write_dir_atomically(out, write)
    print(f"{name} / {cfg.model}: {metrics['params']:,} params, iou_grid {ev['iou_grid']:.4f}, "
          f"iou_points {ev['iou_points']:.4f}, chamfer_l1 {ev['chamfer_l1']:.2e}, {seconds:.1f} s -> {out}")
    return metrics
