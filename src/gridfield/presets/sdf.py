"""SDF presets: each 3D grid model near a parameter budget (``[N, 3] -> [N, 1]`` signed distance)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from gridfield.errors import InputError
from gridfield.grids.mulfa_kernel import MulFAKernel
from gridfield.models import count_parameters, grid_classes
from gridfield.presets.image import MULFA_HASH_KERNEL
from gridfield.presets.specs import FieldSpec, Kwargs

MLP = Kwargs({"width": 64, "hidden_layers": 2})


def _spec(model: str, decoder: str, grid_kwargs: dict, decoder_kwargs: Kwargs | None = None) -> FieldSpec:
    return FieldSpec(model, 3, 1, decoder, decoder_kwargs, grid_kwargs)


def _dense(budget: int) -> FieldSpec:
    """Three dense levels ``R/4, R/2, R`` with ``F = 2`` and the largest ``R`` in budget; linear decoder."""
    r = max(8, int((budget / (2 * (1 + 1 / 8 + 1 / 64))) ** (1 / 3)))
    return _spec("dense", "linear", {"resolutions": [r // 4, r // 2, r], "features_per_level": 2})


def _hash(budget: int) -> FieldSpec:
    """8 levels, ``F = 2``, base 16, finest 512, the largest table ``2^T`` in budget, MLP 64x2.

    (Instant-NGP's 16 levels up to 2048 cost twice the time per step; on a CPU budget the 8-level
    version reached a higher IoU.)
    """

    def spec(t: int) -> FieldSpec:
        return _spec("hash", "mlp", {"n_levels": 8, "features_per_level": 2, "log2_hashmap_size": t,
                                     "base_resolution": 16, "per_level_scale": (512 / 16) ** (1 / 7)}, MLP)

    t = 10
    while t < 24 and count_parameters(spec(t + 1).build()) <= budget:
        t += 1
    return spec(t)


def _planes(budget: int) -> FieldSpec:
    """Tri-plane sum at 64/128/256 with ``F`` nearest the budget; MLP decoder (EG3D style)."""
    res = [64, 128, 256]
    f = max(1, round(budget / (3 * sum(r * r for r in res))))
    return _spec("planes", "mlp", {"resolutions": res, "features_per_level": f, "aggregate": "sum"}, MLP)


def _mulfagrid_dense(budget: int) -> FieldSpec:
    """Stable MulFAGrid on the dense preset's layout (``R/4, R/2, R``, ``F = 2``); linear decoder."""
    spec = _dense(budget)
    return replace(spec, model="mulfagrid", grid_kwargs={**spec.grid_kwargs, "layout": "dense", "form": "stable"})


def _mulfagrid_hash(budget: int, form: str = "stable") -> FieldSpec:
    """MulFAGrid on the hash preset's levels (its kernels in the budget: the table shrinks if they do not
    fit), each level's kernel :data:`~gridfield.presets.image.MULFA_HASH_KERNEL`; MLP 64x2."""
    kernels = 8 * count_parameters(MulFAKernel(3, 2, **MULFA_HASH_KERNEL))
    spec = _hash(budget - kernels)
    return replace(spec, model="mulfagrid", grid_kwargs={**spec.grid_kwargs, "layout": "hash", "form": form,
                                                         **MULFA_HASH_KERNEL})


#: model name -> spec function ``param_budget -> FieldSpec``; ``mulfagrid`` is the best variant on SDFs.
SDF_PRESETS: dict[str, Callable[[int], FieldSpec]] = {
    "dense": _dense, "hash": _hash, "planes": _planes, "mulfagrid": _mulfagrid_hash,
    "mulfagrid-paper": lambda b: _mulfagrid_hash(b, "paper"), "mulfagrid-dense": _mulfagrid_dense,
}


def sdf_models() -> list[str]:
    """Models with an SDF preset whose grid module is available."""
    available = grid_classes()
    return [m for m in SDF_PRESETS if m.split("-")[0] in available]


def sdf_field_spec(model: str, param_budget: int = 2_000_000, decoder: str | None = None) -> FieldSpec:
    """The :class:`FieldSpec` (in_dim 3, out_dim 1) of ``model``'s SDF preset; ``decoder`` overrides its decoder."""
    if model not in sdf_models():
        raise InputError(f"unknown model {model!r} for sdf; choose one of {', '.join(sdf_models())}")
    if decoder not in (None, "identity", "linear", "mlp"):
        raise InputError(f"unknown decoder {decoder!r}; choose one of identity, linear, mlp")
    spec = SDF_PRESETS[model](param_budget)
    if decoder is not None:
        spec = replace(spec, decoder=decoder, decoder_kwargs=MLP if decoder == "mlp" else None)
    return spec
