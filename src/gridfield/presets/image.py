"""Image presets: a sensible configuration of each 2D model near a parameter budget.

:data:`IMAGE_PRESETS` is a small table ``name -> spec function``; a spec function returns a
:class:`~gridfield.presets.specs.FieldSpec` (checkpoints store its ``to_dict()`` and rebuild the field
without this table). Add a model with one function and one table line.

Resulting counts for RGB (``out_dim = 3``) at the default 300K budget (``count_parameters``):

=========  ===========================================================  =======
model      configuration                                                params
=========  ===========================================================  =======
dense      one 316^2 level, F = 3 = colours, identity decoder           299,568
hash       14 levels, F = 2, T = 14 (2^14 rows), base 16, finest 1024,  286,387
           MLP decoder 64 x 2 (Instant-NGP style)
planes     line factors u(x) * v(y) (K-Planes product) at 64, 128,      299,463
           256, 512, F = 155 per level, linear decoder
=========  ===========================================================  =======

The exact count of a spec is ``count_parameters(image_field(...))``; ``gridfield image`` reports it
(``tests/test_presets.py`` asserts these and the other models' counts).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn

from gridfield.errors import InputError
from gridfield.functional.hashing import grid_resolution, grid_scale, level_params
from gridfield.grids.mulfa_kernel import MulFAKernel
from gridfield.models import count_parameters, grid_classes, reference_classes
from gridfield.presets.specs import FieldSpec

MLP_WIDTH, MLP_LAYERS = 64, 2


def decoder_params(decoder: str, in_dim: int, out_dim: int) -> int:
    """Trainable scalars of ``decoder`` (``identity``, ``linear``, ``mlp`` with the default width)."""
    if decoder == "identity":
        return 0
    if decoder == "linear":
        return in_dim * out_dim + out_dim
    if decoder == "mlp":
        dims = [in_dim] + [MLP_WIDTH] * MLP_LAYERS + [out_dim]
        return sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))
    raise InputError(f"unknown decoder {decoder!r}; choose one of ['identity', 'linear', 'mlp']")


def _spec(model: str, out_dim: int, decoder: str, **grid_kwargs: Any) -> FieldSpec:
    return FieldSpec(model, 2, out_dim, decoder, None, grid_kwargs)


def dense_spec(out_dim: int, budget: int, decoder: str | None) -> FieldSpec:
    """One dense level, the largest ``R`` within budget; by default the features are the colours.

    Default decoder ``identity`` (``F = out_dim``; DVGO/Plenoxels style: linear, and free of the
    random mixing a linear decoder adds, which slowed some initialisations 10x); ``linear``:
    ``F = out_dim``; ``mlp``: ``F = 4``.
    """
    decoder = decoder or "identity"
    f = 4 if decoder == "mlp" else out_dim
    r = math.isqrt(max(4 * f, budget - decoder_params(decoder, f, out_dim)) // f)
    return _spec("dense", out_dim, decoder, resolutions=r, features_per_level=f)


HASH_FINEST = 1024  # finest level of the image preset: above Kodak's 768 px, the astronaut's 512


def hash_grid_params(dim: int, n_levels: int, features: int, log2_hashmap_size: int, base: int,
                     finest: float) -> int:
    """Feature count of a :class:`~gridfield.grids.hash.HashGrid` (tcnn's per-level table sizes)."""
    b = math.exp(math.log(finest / base) / (n_levels - 1)) if n_levels > 1 else 1.0
    return features * sum(level_params(grid_resolution(grid_scale(lv, b, base)), dim, log2_hashmap_size)
                          for lv in range(n_levels))


def hash_levels(out_dim: int, budget: int, decoder: str, per_level: int = 0) -> tuple[int, int]:
    """``(n_levels, T)`` of the largest Instant-NGP image grid (F = 2, base 16, finest 1024) that fits
    ``budget`` with ``decoder`` and ``per_level`` more parameters per level (a MulFAGrid's kernels);
    ``n_levels`` in 12..16, ties: more levels."""
    best, best_count = (16, 8), -1
    for levels in range(16, 11, -1):
        grid_budget = budget - decoder_params(decoder, 2 * levels, out_dim) - per_level * levels
        for t in range(8, 25):
            n = hash_grid_params(2, levels, 2, t, 16, HASH_FINEST)
            if n > grid_budget:
                break
            if n > best_count:
                best, best_count = (levels, t), n
    return best


def hash_spec(out_dim: int, budget: int, decoder: str | None) -> FieldSpec:
    """Instant-NGP image settings (F = 2, base 16, finest 1024, MLP decoder) filling the budget
    (:func:`hash_levels`). At 300K/RGB: 14 levels, ``T = 14``: 280,176 grid + 6,211 MLP = 286,387 params.
    """
    decoder = decoder or "mlp"
    levels, t = hash_levels(out_dim, budget, decoder)
    return _spec("hash", out_dim, decoder, n_levels=levels, features_per_level=2, log2_hashmap_size=t,
                 base_resolution=16, finest_resolution=float(HASH_FINEST))


def planes_spec(out_dim: int, budget: int, decoder: str | None) -> FieldSpec:
    """2D line factors ``u(x) * v(y)`` (K-Planes product) at 64..512 with the largest ``F`` in budget."""
    decoder = decoder or "linear"
    res = [64, 128, 256, 512]
    per_f = 2 * sum(res) + len(res) * (out_dim if decoder != "mlp" else MLP_WIDTH)
    fixed = decoder_params(decoder, 0, out_dim)
    f = max(1, (budget - fixed) // per_f)
    return _spec("planes", out_dim, decoder, resolutions=res, features_per_level=f, aggregate="product")


#: The kernel network of the multi-resolution MulFAGrid presets (docs/mulfagrid.md, "Presets"): one
#: multiplicative filter layer of width 16 on two Fourier octaves of the level's grid coordinates.
MULFA_HASH_KERNEL = {"frequencies": 2, "width": 16, "layers": 1}


def mulfagrid_hash_spec(out_dim: int, budget: int, decoder: str | None, form: str = "stable") -> FieldSpec:
    """MulFAGrid on the hash preset's levels (:func:`hash_levels`, the kernels counted in the budget):
    each level's n-linear weights replaced by its learned kernel (:data:`MULFA_HASH_KERNEL`); MLP decoder."""
    decoder = decoder or "mlp"
    per_level = count_parameters(MulFAKernel(2, 2, **MULFA_HASH_KERNEL))
    levels, t = hash_levels(out_dim, budget, decoder, per_level)
    return _spec("mulfagrid", out_dim, decoder, layout="hash", form=form, n_levels=levels, features_per_level=2,
                 log2_hashmap_size=t, base_resolution=16, finest_resolution=float(HASH_FINEST),
                 **MULFA_HASH_KERNEL)


def mulfagrid_spec(out_dim: int, budget: int, decoder: str | None, form: str = "stable") -> FieldSpec:
    """One dense level wrapped by MulFAGrid (kernel L=4, 3 layers of 16), largest ``R`` in budget.

    Identity decoder by default (``F = out_dim``: a learned linear decoder trained together with the
    kernel was erratic in our runs). Train the kernel with ``lr_other = MULFA_KERNEL_LR``
    (see docs/mulfagrid.md).
    """
    decoder = decoder or "identity"
    f = 4 if decoder == "mlp" else out_dim
    kernel = count_parameters(MulFAKernel(2, 2))
    r = math.isqrt(max(4 * f, budget - kernel - decoder_params(decoder, f, out_dim)) // f)
    return _spec("mulfagrid", out_dim, decoder, resolutions=r, features_per_level=f, form=form)


def _widest(model: str, out_dim: int, budget: int, width_key: str = "width", **kwargs: Any) -> FieldSpec:
    """The widest ``width`` (multiple of 8) of reference ``model`` within ``budget`` parameters."""
    best = _spec(model, out_dim, "identity", **{width_key: 8}, **kwargs)
    for w in range(16, 1025, 8):
        spec = _spec(model, out_dim, "identity", **{width_key: w}, **kwargs)
        if count_parameters(spec.build()) > budget:
            break
        best = spec
    return best


MULFA_KERNEL_LR = 1e-2
IMAGE_PRESETS_EXTRA: dict[str, Callable[[int, int, str | None], FieldSpec]] = {
    "mulfagrid": mulfagrid_hash_spec,  # the best variant on images (docs/mulfagrid.md)
    "mulfagrid-paper": lambda o, b, d: mulfagrid_hash_spec(o, b, d, form="paper"),
    "mulfagrid-dense": mulfagrid_spec,
    "ffmlp": lambda o, b, d: _widest("ffmlp", o, b, depth=3, num_features=256, seed=0),
    "mfn": lambda o, b, d: _widest("mfn-fourier", o, b, n_layers=3),
}


#: model name -> spec function ``(out_dim, param_budget, decoder or None) -> FieldSpec``.
IMAGE_PRESETS: dict[str, Callable[[int, int, str | None], FieldSpec]] = {
    "dense": dense_spec,
    "hash": hash_spec,
    "planes": planes_spec,
    **IMAGE_PRESETS_EXTRA,
}


#: model name -> Adam learning rates ``(lr_grid, lr_other)`` that work with its preset (measured on
#: astronaut crops; grids with one node per few pixels like a large step, product factors too).
IMAGE_LR: dict[str, tuple[float, float]] = {
    "dense": (1e-1, 1e-2),
    "hash": (1e-2, 1e-2),
    "planes": (1e-1, 1e-2),
    "mulfagrid": (1e-2, MULFA_KERNEL_LR),  # lr_other trains the kernel (and any decoder)
    "mulfagrid-paper": (1e-2, MULFA_KERNEL_LR),
    "mulfagrid-dense": (1e-1, MULFA_KERNEL_LR),
    "ffmlp": (1e-2, 5e-3),  # no grid: only lr_other is used
    "mfn": (1e-2, 1e-2),
}


def image_lr(model: str) -> tuple[float, float]:
    """Recommended ``(lr_grid, lr_other)`` for ``model``'s image preset (default ``(1e-2, 1e-3)``)."""
    return IMAGE_LR.get(model, (1e-2, 1e-3))


def image_models() -> list[str]:
    """Models with an image preset whose grid module is available."""
    available = set(grid_classes()) | set(reference_classes()) | {"mulfagrid-paper", "mulfagrid-dense"}
    return [m for m in IMAGE_PRESETS if m in available]


def image_field_spec(model: str, out_dim: int = 3, param_budget: int = 300_000,
                     decoder: str | None = None) -> FieldSpec:
    """The :class:`FieldSpec` of ``model``'s image preset; unknown/unavailable models raise ``InputError``."""
    if model not in image_models():
        raise InputError(f"unknown model {model!r} for image; choose one of {', '.join(image_models())}")
    if decoder is not None:
        decoder_params(decoder, 1, 1)  # validates the name
    if param_budget < 1000:
        raise InputError(f"param_budget must be at least 1000, got {param_budget}")
    return IMAGE_PRESETS[model](out_dim, param_budget, decoder)


def image_field(model: str, out_dim: int, param_budget: int = 300_000, decoder: str | None = None) -> nn.Module:
    """A 2D field of ``model`` with ``out_dim`` outputs near ``param_budget`` parameters (see table)."""
    return image_field_spec(model, out_dim, param_budget, decoder).build()
