"""NeRF presets: each 3D grid model as a :class:`~gridfield.presets.specs.RadianceSpec`.

dense: DVGO/Plenoxels style, a 1-channel density grid and an appearance grid (12 features + MLP, or
27 SH coefficients), starting at half the final ``resolution`` (coarse to fine: training replaces the
spec by :meth:`RadianceSpec.refit`). hash / planes / mulfagrid: one shared grid with Instant-NGP style
heads.

hash: Instant-NGP's NeRF configuration (Mueller et al. 2022, sec. 5.4 and its ``base.json``): 16 levels
of 2 features, a 2^19-row table per level, base resolution 16, finest resolution 2048 across
Instant-NGP's unit cube (which holds 3 NeRF-synthetic units, so ``2048 * 2 s / 3`` across the box
``[-s, s]^3``); a density MLP with one hidden layer of 64 whose first of 16 outputs is the density
(truncated exp), a colour MLP of 2 x 64 on the other 15 outputs and the degree-4 (16-coefficient)
spherical-harmonics encoding of the view direction; Adam at 1e-2 for everything. ``hash-small``
(2^17 rows) and ``hash-large`` (2^21 rows) change only the table size; ``mulfagrid-hash`` is the hash
preset with a MulFA kernel on each level (``presets.image.MULFA_HASH_KERNEL``). mulfagrid: one dense level
of ``3 resolution / 4`` (96^3 at the default 128) with 8 features and the same 1-layer kernel.
"""

from __future__ import annotations

import math

from gridfield.errors import InputError
from gridfield.models import grid_classes
from gridfield.presets.image import MULFA_HASH_KERNEL
from gridfield.presets.specs import GridSpec, RadianceSpec

NERF_MODELS = ("dense", "hash", "planes", "mulfagrid", "hash-small", "hash-large", "mulfagrid-hash")
HASH_TABLES = {"hash": 19, "hash-small": 17, "hash-large": 21}  # log2 rows per level
NGP_FINEST_PER_UNIT = 2048 / 3  # Instant-NGP: 2048 across its unit cube = 3 NeRF-synthetic units
ALPHA_INIT = 1e-2  # opacity per marching step of the untrained field


def nerf_models() -> list[str]:
    """Models with a NeRF preset whose grid module is available."""
    available = grid_classes()
    return [m for m in NERF_MODELS if m.split("-")[0] in available]


def _grids(model: str, resolution: int, appearance: str, side: float
           ) -> tuple[GridSpec, GridSpec | None, float, float]:
    """``(density grid, colour grid or None, lr_grid, lr_other)`` of ``model`` in a box of edge ``side``."""
    r0 = max(8, resolution // 2)
    if model == "dense":
        return (GridSpec("dense", {"resolutions": [r0], "features_per_level": 1}),
                GridSpec("dense", {"resolutions": [r0], "features_per_level": 12 if appearance == "mlp" else 27}),
                0.1, 1e-3)
    if model in HASH_TABLES:
        finest = float(max(32, round(NGP_FINEST_PER_UNIT * side)))
        return (GridSpec("hash", {"n_levels": 16, "features_per_level": 2, "log2_hashmap_size": HASH_TABLES[model],
                                  "base_resolution": 16, "finest_resolution": finest}), None, 1e-2, 1e-2)
    if model == "mulfagrid-hash":  # the hash preset's levels, each with a MulFA kernel
        finest = float(max(32, round(NGP_FINEST_PER_UNIT * side)))
        return (GridSpec("mulfagrid", {"layout": "hash", "n_levels": 16, "features_per_level": 2,
                                       "log2_hashmap_size": 19, "base_resolution": 16, "finest_resolution": finest,
                                       **MULFA_HASH_KERNEL}), None, 1e-2, 1e-2)
    if model == "planes":
        return (GridSpec("planes", {"resolutions": [resolution // 4, resolution], "features_per_level": 16,
                                    "aggregate": "product"}), None, 2e-2, 1e-2)
    # one dense level of 3/4 the finest scale (96^3 at 128), 8 features, the image presets' 1-layer kernel:
    # chosen on lego at 120 s (docs/nerf.md, "MulFAGrid preset")
    return (GridSpec("mulfagrid", {"resolutions": [max(8, 3 * resolution // 4)], "features_per_level": 8,
                                   **MULFA_HASH_KERNEL}), None, 2e-2, 1e-2)


def model_spec(model: str, resolution: int = 128, appearance: str | None = None, aabb_scale: float = 1.5,
               step: float | None = None, alpha_init: float | None = None) -> RadianceSpec:
    """The :class:`RadianceSpec` of ``model``'s radiance field in the box ``[-aabb_scale, aabb_scale]^3``.

    ``step``: the marching step the density is scaled for (default: half a voxel of the starting
    grid, as ``gridfield nerf`` with ``--step-ratio 0.5``); ``alpha_init``: default :data:`ALPHA_INIT`.
    """
    if model not in nerf_models():
        raise InputError(f"unknown model {model!r} for nerf; choose one of {', '.join(nerf_models())}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 4:
        raise InputError(f"resolution must be a whole number >= 4, got {resolution!r}")
    if appearance not in (None, "sh", "mlp"):
        raise InputError(f"unknown appearance {appearance!r}; choose sh or mlp")
    if not (isinstance(aabb_scale, (int, float)) and math.isfinite(aabb_scale) and aabb_scale > 0):
        raise InputError(f"aabb_scale must be a finite positive number, got {aabb_scale!r}")
    s = aabb_scale
    step = step if step is not None else 2 * s / max(8, resolution // 2) * 0.5
    app = appearance or "mlp"
    density, color, lr_grid, lr_other = _grids(model, resolution, app, 2 * s)
    field = {"appearance": app, "step": step, "sigma_scale": 1.0 / step,
             "alpha_init": ALPHA_INIT if alpha_init is None else alpha_init}
    if model in HASH_TABLES or model == "mulfagrid-hash":
        field |= {"density_activation": "trunc_exp", "view_degree": 3}
    return RadianceSpec(density, color, field, (-s, -s, -s, s, s, s), lr_grid, lr_other, model, resolution)
