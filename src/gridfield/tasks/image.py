"""2D image fitting: ``g(x, y) -> colour`` on pixel centres, with an optional held-out pixel set.

:func:`fit_image` is the training loop (Adam with separate grid / other learning rates, cosine
decay, full-image or mini-batch steps, hooks); :func:`render_image` evaluates a field on any
``H x W`` lattice; :func:`save_checkpoint` / :func:`load_checkpoint` store a field with the spec
that rebuilds it. The CLI commands ``gridfield image`` and ``gridfield image-render`` are
:class:`ImageConfig` / :func:`run` and :class:`RenderConfig` / :func:`run_render`.

Outputs are raw (no sigmoid, so a linear model stays linear for the GTK); they are clamped to
``[0, 1]`` only for metrics and images.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro
from torch import Tensor, nn

from gridfield import checkpoints, presets
from gridfield.data.images import DEFAULT_IMAGE, pixel_coords
from gridfield.errors import InputError
from gridfield.metrics import psnr, psnr_from_mse, ssim
from gridfield.outdir import check_out_dir
from gridfield.tasks.train import (
    call_hooks,
    make_optimizer,
    make_scheduler,
    resolve_device,
    seed_everything,
    write_dir_atomically,
)

CHECKPOINT_FORMAT = "gridfield.image/1"


@dataclass
class FitResult:
    """What :func:`fit_image` returns: the trained field, final metrics, evaluation history."""

    field: nn.Module
    metrics: dict
    history: list[dict] = dc_field(default_factory=list)


def holdout_mask(H: int, W: int, fraction: float, pattern: str = "random",
                 generator: torch.Generator | None = None) -> Tensor:
    """Held-out pixels ``[H * W]`` bool (row-major; True = test), about ``fraction`` of the image.

    ``random``: exactly ``round(fraction * H * W)`` pixels drawn without replacement.
    ``regular``: a sub-lattice with stride ``s`` in both axes (pixels with ``i % s == j % s == 0``):
    for ``fraction >= 0.5`` the lattice is the TRAINING set with ``s = round(1 / sqrt(1 - fraction))``
    (``0.75`` -> train on every other pixel per axis, a 2x super-resolution test); below 0.5 it is
    the TEST set with ``s = round(1 / sqrt(fraction))``. The actual fraction is ``mask.float().mean()``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    n = H * W
    mask = torch.zeros(n, dtype=torch.bool)
    if fraction == 0.0:
        return mask
    if pattern == "random":
        k = min(n - 1, max(1, round(fraction * n)))
        mask[torch.randperm(n, generator=generator)[:k]] = True
        return mask
    if pattern != "regular":
        raise ValueError(f"holdout pattern must be 'random' or 'regular', got {pattern!r}")
    i = torch.arange(H).view(H, 1)
    j = torch.arange(W).view(1, W)
    if fraction >= 0.5:
        s = max(2, round(1 / math.sqrt(1 - fraction)))
        return ~((i % s == 0) & (j % s == 0)).reshape(-1)
    s = max(2, round(1 / math.sqrt(fraction)))
    return ((i % s == 0) & (j % s == 0)).reshape(-1)


@torch.no_grad()
def render_image(field: nn.Module, H: int, W: int, chunk: int = 1 << 18, clamp: bool = True) -> Tensor:
    """Evaluate ``field`` at the pixel centres of an ``H x W`` image: ``[H, W, out_dim]`` (float32).

    Any resolution works (the field is continuous on ``[-1, 1]^2``); ``clamp`` clips to ``[0, 1]``.
    Evaluated in chunks of ``chunk`` pixels, without gradients.
    """
    p0 = next(field.parameters())
    x = pixel_coords(H, W, device=p0.device).to(p0.dtype)
    out = torch.cat([field(x[s : s + chunk]) for s in range(0, x.shape[0], chunk)])
    out = out.float().reshape(H, W, -1).cpu()
    return out.clamp(0, 1) if clamp else out


def _evaluate(field, x, y, test, chunk=1 << 18) -> dict:
    with torch.no_grad():
        pred = torch.cat([field(x[s : s + chunk]) for s in range(0, x.shape[0], chunk)]).clamp(0, 1)
    out = {"psnr": psnr(pred[~test], y[~test])}
    if test.any():
        out["test_psnr"] = psnr(pred[test], y[test])
    return out | {"_pred": pred}


def fit_image(
    field: nn.Module,
    image: Tensor,  # [H, W, C]
    *,
    steps: int = 2000,
    batch_size: int | None = None,
    lr_grid: float = 1e-2,
    lr_other: float = 1e-3,
    holdout: float = 0.0,
    holdout_pattern: Literal["random", "regular"] = "random",
    seed: int = 0,
    progress: bool = True,
    hooks: Sequence[Any] | None = None,
    eval_every: int = 100,
) -> FitResult:
    """Fit ``field`` (``[N, 2] -> [N, C]``) to ``image`` ``[H, W, C]`` by Adam on the mean squared error.

    Each step uses every training pixel (``batch_size=None``, or a batch at least as large as the
    training set) or ``batch_size`` pixels drawn with replacement. Learning rates decay by a cosine
    to 1% (:func:`gridfield.tasks.train.cosine_factor`); hooks: see :mod:`gridfield.tasks.train`.
    ``holdout`` > 0 trains on the other pixels only (see :func:`holdout_mask`) and reports
    ``test_psnr`` on the held-out ones. Every ``eval_every`` steps (and at 0 and the end) the full
    image is evaluated into ``history``. The field is trained in place, on its own device.

    metrics: ``psnr`` (training pixels), ``test_psnr`` (held-out pixels, hold-out mode only),
    ``full_psnr`` and ``ssim`` (whole image), ``train_seconds`` (the loop without evaluations),
    ``holdout_fraction``, ``steps``.
    """
    if image.ndim != 3 or image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"fit_image expects an [H, W, C] image, got shape {tuple(image.shape)}")
    if steps < 1 or (batch_size is not None and batch_size < 1) or eval_every < 1:
        raise ValueError(f"need steps >= 1, batch_size >= 1 (or None), eval_every >= 1; got "
                         f"{steps}, {batch_size}, {eval_every}")
    if not torch.isfinite(image).all():
        raise ValueError("fit_image: the image contains NaN or infinite values")
    H, W, C = image.shape
    gen = seed_everything(seed)
    p0 = next(field.parameters())
    x = pixel_coords(H, W, device=p0.device).to(p0.dtype)
    y = image.reshape(-1, C).to(p0.device, p0.dtype)
    test = holdout_mask(H, W, holdout, holdout_pattern, gen).to(p0.device)
    train_x, train_y = x[~test], y[~test]
    if batch_size is not None and batch_size >= train_x.shape[0]:
        batch_size = None
    opt = make_optimizer(field, lr_grid, lr_other)
    sched = make_scheduler(opt, steps)
    history, seconds = [{"step": 0, **_strip(_evaluate(field, x, y, test))}], 0.0
    bar = _progress(steps, progress)
    for step in range(steps):
        t0 = time.perf_counter()
        if batch_size is None:
            bx, by = train_x, train_y
        else:
            idx = torch.randint(train_x.shape[0], (batch_size,), generator=gen).to(p0.device)
            bx, by = train_x[idx], train_y[idx]
        loss = (field(bx) - by).pow(2).mean()
        call_hooks(hooks, "step_pre_backward", step, field, loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        call_hooks(hooks, "step_post_backward", step, field, loss)
        opt.step()
        sched.step()
        seconds += time.perf_counter() - t0
        call_hooks(hooks, "step_end", step, field, loss)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the learning rates")
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            ev = _strip(_evaluate(field, x, y, test))
            history.append({"step": step + 1, "loss": loss.item(), "lr_grid": opt.param_groups[0]["lr"],
                            "seconds": seconds, **ev})
        if bar is not None:
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(psnr=f"{float(psnr_from_mse(loss.item())):.2f}")
    if bar is not None:
        bar.close()
    ev = _evaluate(field, x, y, test)
    pred = ev.pop("_pred").reshape(H, W, C).cpu()
    image = image.to(pred.dtype)
    metrics = {**ev, "full_psnr": psnr(pred, image), "ssim": ssim(pred, image) if min(H, W) >= 11 else None,
               "train_seconds": seconds, "steps": steps, "holdout_fraction": float(test.float().mean())}
    return FitResult(field, metrics, history)


def _strip(ev: dict) -> dict:
    return {k: v for k, v in ev.items() if not k.startswith("_")}


def _progress(steps: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc="fit", unit="step", dynamic_ncols=True)


def save_checkpoint(path: str | Path, field: nn.Module, spec: presets.FieldSpec, shape: Sequence[int],
                    config: dict | None = None) -> None:
    """Save ``field``'s state with the ``spec`` that rebuilds it (stored as ``spec.to_dict()``)."""
    torch.save({"format": CHECKPOINT_FORMAT, "spec": spec.to_dict(), "shape": list(shape), "config": config or {},
                "state_dict": checkpoints.cpu_state(field)}, path)


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict; ``InputError`` if missing or not a gridfield image checkpoint."""
    return checkpoints.read_checkpoint(path, CHECKPOINT_FORMAT, "image")


def load_checkpoint(path: str | Path) -> nn.Module:
    """Rebuild the field saved by :func:`save_checkpoint` (on CPU, in eval mode)."""
    ck = read_checkpoint(path)
    field = presets.FieldSpec.from_dict(ck["spec"]).build()
    field.load_state_dict(ck["state_dict"])
    return field.eval()


# ----------------------------------------------------------------------------------------------
# Command line: ``gridfield image`` and ``gridfield image-render``
# ----------------------------------------------------------------------------------------------


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
    steps: int = 300
    """Optimizer steps."""
    batch_size: int | None = 16384
    """Pixels per step (random, with replacement); None (or >= the image): every training pixel."""
    lr_grid: float | None = None
    """Adam learning rate of the grid features (cosine decay to 1%); None: the model's preset."""
    lr_other: float | None = None
    """Adam learning rate of decoder and kernel parameters (cosine decay to 1%); None: the preset."""
    holdout: float = 0.0
    """Fraction of pixels held out for testing (0: none); reports test_psnr."""
    holdout_pattern: Literal["random", "regular"] = "random"
    """Held-out pixels: random subset, or a regular sub-lattice (see holdout_mask)."""
    eval_every: int = 50
    """Evaluate the full image every this many steps (PSNR curve)."""
    seed: int = 0
    """Random seed (initialisation, batches, hold-out set)."""
    device: str = "auto"
    """Torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ..."""
    out: Path | None = None
    """Output directory; default outputs/image/<image>-<model>. Replaced atomically at the end."""
    progress: bool = True
    """Show a progress bar with the training PSNR."""


def _validate(cfg: ImageConfig) -> torch.device:
    if cfg.model not in presets.models("image"):
        raise InputError(f"unknown model {cfg.model!r}; choose one of {', '.join(presets.models('image'))}")
    checks = [(cfg.steps >= 1, "--steps must be >= 1", cfg.steps),
              (cfg.eval_every >= 1, "--eval-every must be >= 1", cfg.eval_every),
              (cfg.batch_size is None or cfg.batch_size >= 1, "--batch-size must be >= 1", cfg.batch_size),
              (cfg.lr_grid is None or cfg.lr_grid > 0, "--lr-grid must be > 0", cfg.lr_grid),
              (cfg.lr_other is None or cfg.lr_other > 0, "--lr-other must be > 0", cfg.lr_other),
              (0.0 <= cfg.holdout < 1.0, "--holdout must be in [0, 1)", cfg.holdout),
              (cfg.max_size is None or cfg.max_size >= 8, "--max-size must be >= 8", cfg.max_size),
              (cfg.param_budget >= 1000, "--param-budget must be >= 1000", cfg.param_budget)]
    for ok, msg, value in checks:
        if not ok:
            raise InputError(f"{msg}, got {value}")
    dev = resolve_device(cfg.device)
    if cfg.out is not None:
        check_out_dir(cfg.out)
    return dev


def _config_dict(cfg: Any) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()}


def run(cfg: ImageConfig) -> dict:
    """CLI entry: validate, load, fit, then write outputs into ``cfg.out`` atomically; returns metrics."""
    from gridfield.data.images import load_image
    from gridfield.models import count_parameters
    from gridfield.report.figures import save_error_map, save_image, save_psnr_curve

    dev = _validate(cfg)
    img = load_image(cfg.image, max_size=cfg.max_size)
    H, W, C = img.shape
    try:
        spec = presets.get("image", cfg.model, out_dim=C, param_budget=cfg.param_budget, decoder=cfg.decoder)
        seed_everything(cfg.seed)  # the initialisation depends on the seed too
        field = spec.build().to(dev)
    except ValueError as e:  # e.g. an identity decoder on a grid whose features are not the colours
        raise InputError(f"cannot build model {cfg.model!r} with decoder {cfg.decoder!r}: {e}") from None
    out = check_out_dir(cfg.out or Path("outputs") / "image" / f"{Path(cfg.image).stem}-{cfg.model}")
    lr_grid, lr_other = presets.image_lr(cfg.model)
    lr_grid, lr_other = cfg.lr_grid or lr_grid, cfg.lr_other or lr_other
    try:
        res = fit_image(field, img, steps=cfg.steps, batch_size=cfg.batch_size, lr_grid=lr_grid,
                        lr_other=lr_other, holdout=cfg.holdout, holdout_pattern=cfg.holdout_pattern,
                        seed=cfg.seed, progress=cfg.progress, eval_every=cfg.eval_every)
    except FloatingPointError as e:
        raise InputError(f"training diverged: {e}") from None
    pred = render_image(field, H, W)
    metrics = {"model": cfg.model, "params": count_parameters(field), "steps": cfg.steps,
               **{k: res.metrics[k] for k in ("psnr", "ssim", "train_seconds")},
               **({"test_psnr": res.metrics["test_psnr"]} if "test_psnr" in res.metrics else {}),
               "full_psnr": res.metrics["full_psnr"], "holdout_fraction": res.metrics["holdout_fraction"],
               "image": cfg.image, "shape": [H, W, C], "device": str(dev), "seed": cfg.seed,
               "lr_grid": lr_grid, "lr_other": lr_other, "batch_size": cfg.batch_size,
               "spec": spec.to_dict(), "config": _config_dict(cfg)}

    def write(d: Path) -> None:
        (d / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        save_image(d / "reconstruction.png", pred)
        save_error_map(d / "error_map.png", pred, img, title=f"{cfg.model}: {metrics['full_psnr']:.2f} dB")
        save_psnr_curve(d / "psnr_curve.png", res.history, label=cfg.model)
        (d / "history.json").write_text(json.dumps(res.history, indent=1) + "\n")
        save_checkpoint(d / "checkpoint.pt", field, spec, [H, W, C], _config_dict(cfg))

    write_dir_atomically(out, write)
    print(f"{cfg.model}: {metrics['params']:,} params, PSNR {metrics['psnr']:.2f} dB"
          + (f", held-out {metrics['test_psnr']:.2f} dB" if "test_psnr" in metrics else "")
          + (f", SSIM {metrics['ssim']:.4f}" if metrics["ssim"] is not None else "")
          + f", {metrics['train_seconds']:.1f} s -> {out}")
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
    """CLI entry of ``gridfield image-render``: writes ``cfg.out``; returns its size."""
    from gridfield.report.figures import save_image

    if cfg.out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        raise InputError(f"--out {str(cfg.out)!r} must end in .png, .jpg or .tif")
    if any(v is not None and v < 2 for v in (cfg.height, cfg.width)):
        raise InputError(f"--height/--width must be >= 2, got {cfg.height} x {cfg.width}")
    H0, W0 = read_checkpoint(cfg.checkpoint)["shape"][:2]
    H = cfg.height or (max(2, round(cfg.width * H0 / W0)) if cfg.width else H0)
    W = cfg.width or (max(2, round(H * W0 / H0)) if cfg.height else W0)
    img = render_image(load_checkpoint(cfg.checkpoint), H, W)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = cfg.out.with_name(f".{cfg.out.stem}.tmp{cfg.out.suffix}")
    try:
        save_image(tmp, img)
        os.replace(tmp, cfg.out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"rendered {H}x{W} -> {cfg.out}")
    return {"height": H, "width": W, "out": str(cfg.out)}
