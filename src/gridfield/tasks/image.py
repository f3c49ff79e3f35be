"""``gridfield image`` and ``gridfield image-render``: fit a 2D image, render a fitted one at any size.

The fitting itself (:class:`~gridfield.tasks.image_fit.ImageTask`, :func:`fit_image`) runs on the
training core; this module holds the commands, the checkpoint format and the outputs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
import tyro
from torch import nn

from gridfield import checkpoints, memory, presets
from gridfield.data.images import DEFAULT_IMAGE, load_image
from gridfield.errors import InputError
from gridfield.models import count_parameters
from gridfield.outdir import check_out_file, write_file_atomically
from gridfield.report.figures import save_error_map, save_image, save_psnr_curve
from gridfield.tasks.common import apply_backend, finish_run, run_record, start_run
from gridfield.tasks.image_fit import FitResult, fit_image, holdout_mask, render_image
from gridfield.training import Nested, check_options, config_dict, resume_key, seed_everything, train_defaults

__all__ = ["FitResult", "ImageConfig", "RenderConfig", "fit_image", "holdout_mask", "load_checkpoint",
           "read_checkpoint", "render_image", "run", "run_render", "save_checkpoint"]

CHECKPOINT_FORMAT = "gridfield.image/1"


def save_checkpoint(path: str | Path, field: nn.Module, spec: presets.FieldSpec, shape: Sequence[int],
                    config: dict | None = None) -> None:
    """Save ``field``'s state with the ``spec`` that rebuilds it (stored as ``spec.to_dict()``)."""
    torch.save({"format": CHECKPOINT_FORMAT, "spec": spec.to_dict(), "shape": list(shape), "config": config or {},
                "state_dict": checkpoints.cpu_state(field)}, path)


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict; ``InputError`` if missing, not an image checkpoint, or lacking keys."""
    ck = checkpoints.read_checkpoint(path, CHECKPOINT_FORMAT, "image")
    checkpoints.require_keys(ck, path, {"spec": dict, "shape": (list, tuple), "state_dict": dict})
    shape = ck["shape"]
    if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise InputError(f"checkpoint {str(path)!r}: 'shape' must be [H, W, C] positive integers, got {shape}")
    return ck


def load_checkpoint(path: str | Path) -> nn.Module:
    """Rebuild the field saved by :func:`save_checkpoint` (on CPU, in eval mode), checked before building."""
    ck = read_checkpoint(path)
    build = lambda spec: presets.FieldSpec.from_dict(spec).build()
    return checkpoints.build_checked(path, ck["spec"], ck["state_dict"], build, what="the image field").eval()


@dataclass
class ImageConfig:
    """Fit a grid model to an image and write metrics, figures and a checkpoint to --out."""

    image: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="IMAGE")] = DEFAULT_IMAGE
    """Image file (PNG/JPEG/TIFF/EXR) or built-in scikit-image name (astronaut, camera, coffee, ...)."""
    model: str = "hash"
    """Grid model: dense, hash or planes (any model with an image preset)."""
    decoder: Literal["identity", "linear", "mlp"] | None = None
    """Decoder after the grid; default: the model preset's (linear for dense/planes, mlp for hash)."""
    param_budget: int = 300_000
    """Approximate number of trainable parameters of the preset."""
    max_size: int | None = 512
    """Downscale so the longer side is at most this many pixels (None: full resolution)."""
    batch_size: int | None = 16384
    """Pixels per step and process (random, with replacement); None (or >= the image): every training pixel."""
    holdout: float = 0.0
    """Fraction of pixels held out for testing (0: none); reports test_psnr."""
    holdout_pattern: Literal["random", "regular"] = "random"
    """Held-out pixels: random subset, or a regular sub-lattice (see holdout_mask)."""
    eval_every: int = 50
    """Evaluate the full image every this many steps (PSNR curve)."""
    train: Nested = train_defaults(steps=300)


def run(cfg: ImageConfig) -> dict:
    """CLI entry: validate, load, fit, then write outputs into ``--out`` atomically; returns metrics."""
    check_options(("--eval-every", cfg.eval_every, cfg.eval_every >= 1, ">= 1"),
                  ("--batch-size", cfg.batch_size, cfg.batch_size is None or cfg.batch_size >= 1, ">= 1"),
                  ("--holdout", cfg.holdout, 0.0 <= cfg.holdout < 1.0, "in [0, 1)"),
                  ("--max-size", cfg.max_size, cfg.max_size is None or cfg.max_size >= 8, ">= 8"),
                  ("--param-budget", cfg.param_budget, cfg.param_budget >= 1000, ">= 1000"))
    if cfg.model not in presets.models("image"):
        raise InputError(f"unknown model {cfg.model!r}; choose one of {', '.join(presets.models('image'))}")
    t = cfg.train
    ctx = start_run(t, Path("outputs") / "image" / f"{Path(cfg.image).stem}-{cfg.model}")
    img = load_image(cfg.image, max_size=cfg.max_size)
    H, W, C = img.shape
    try:
        spec = presets.get("image", cfg.model, out_dim=C, param_budget=cfg.param_budget, decoder=cfg.decoder)
        seed_everything(t.seed)  # the initialisation depends on the seed too
        field = apply_backend(spec.build().to(ctx.device), t.backend)
    except ValueError as e:  # e.g. an identity decoder on a grid whose features are not the colours
        raise InputError(f"cannot build model {cfg.model!r} with decoder {cfg.decoder!r}: {e}") from None
    lr_grid, lr_other = presets.image_lr(cfg.model)
    lr_grid, lr_other = t.lr_grid or lr_grid, t.lr_other or lr_other
    config = config_dict(cfg)
    key = resume_key(config)
    res = fit_image(field, img, batch_size=cfg.batch_size, lr_grid=lr_grid, lr_other=lr_other, holdout=cfg.holdout,
                    holdout_pattern=cfg.holdout_pattern, eval_every=cfg.eval_every, train_cfg=t,
                    state_path=ctx.state, resume_key=key)
    if not ctx.dist.is_main:
        finish_run(ctx, lambda d: None)
        return res.metrics
    pred = render_image(field, H, W)
    m = res.metrics
    metrics = {"model": cfg.model, "params": count_parameters(field), "steps": m["steps"],
               **{k: m[k] for k in ("psnr", "ssim", "train_seconds")},
               **({"test_psnr": m["test_psnr"]} if "test_psnr" in m else {}),
               "full_psnr": m["full_psnr"], "holdout_fraction": m["holdout_fraction"],
               "image": cfg.image, "shape": [H, W, C], "device": str(ctx.device), "seed": t.seed,
               "lr_grid": lr_grid, "lr_other": lr_other, "batch_size": cfg.batch_size, "world_size": ctx.dist.world,
               "spec": spec.to_dict(), "config": config, **run_record("image", ctx.device)}

    def write(d: Path) -> None:
        (d / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        save_image(d / "reconstruction.png", pred)
        save_error_map(d / "error_map.png", pred, img, title=f"{cfg.model}: {metrics['full_psnr']:.2f} dB")
        save_psnr_curve(d / "psnr_curve.png", res.history, label=cfg.model)
        (d / "history.json").write_text(json.dumps(res.history, indent=1) + "\n")
        save_checkpoint(d / "checkpoint.pt", field, spec, [H, W, C], config)

    finish_run(ctx, write)
    print(f"{cfg.model}: {metrics['params']:,} params, PSNR {metrics['psnr']:.2f} dB"
          + (f", held-out {metrics['test_psnr']:.2f} dB" if "test_psnr" in metrics else "")
          + (f", SSIM {metrics['ssim']:.4f}" if metrics["ssim"] is not None else "")
          + f", {metrics['train_seconds']:.1f} s -> {ctx.out}")
    return metrics


@dataclass
class RenderConfig:
    """Render a saved image checkpoint at any resolution into a PNG."""

    checkpoint: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="CHECKPOINT")]
    """checkpoint.pt written by `gridfield image`."""
    height: int | None = None
    """Output height in pixels; default: the fitted image's (or kept to the width's aspect ratio)."""
    width: int | None = None
    """Output width in pixels; default: the fitted image's (or kept to the height's aspect ratio)."""
    out: Path = Path("render.png")
    """Output image file (.png, .jpg, .tif)."""


def run_render(cfg: RenderConfig) -> dict:
    """CLI entry of ``gridfield image-render``: writes ``cfg.out`` atomically; returns its size."""
    if cfg.out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        raise InputError(f"--out {str(cfg.out)!r} must end in .png, .jpg or .tif")
    if any(v is not None and v < 2 for v in (cfg.height, cfg.width)):
        raise InputError(f"--height/--width must be >= 2, got {cfg.height} x {cfg.width}")
    check_out_file(cfg.out)
    H0, W0, C = read_checkpoint(cfg.checkpoint)["shape"]
    H = cfg.height or (max(2, round(cfg.width * H0 / W0)) if cfg.width else H0)
    W = cfg.width or (max(2, round(H * W0 / H0)) if cfg.height else W0)
    memory.guard(memory.estimate_render_bytes(H, W, C), f"the render ({H} x {W} x {C})",
                 f"--height {H} --width {W}")
    img = render_image(load_checkpoint(cfg.checkpoint), H, W)
    write_file_atomically(cfg.out, lambda tmp: save_image(tmp, img), "--out")
    print(f"rendered {H}x{W} -> {cfg.out}")
    return {"height": H, "width": W, "out": str(cfg.out)}
