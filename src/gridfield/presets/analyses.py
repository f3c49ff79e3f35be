"""The GTK analyses' model line-up: small grids (resolutions 8..32, about the same number of rows each).

Each entry is a :class:`~gridfield.presets.specs.GridSpec`: the analyses build it in 1D, 2D or 3D and
choose the decoder themselves (``gridfield.analyses.common.build``).
"""

from __future__ import annotations

from gridfield.errors import InputError
from gridfield.presets.specs import GridSpec

ANALYSIS_GRIDS: tuple[tuple[str, GridSpec], ...] = (
    ("dense", GridSpec("dense", {"resolutions": [8, 16, 32], "features_per_level": 2})),
    ("hash", GridSpec("hash", {"n_levels": 3, "features_per_level": 2, "log2_hashmap_size": 8,
                               "base_resolution": 8})),
    ("planes", GridSpec("planes", {"resolutions": [8, 16, 32], "features_per_level": 2})),
    ("planes-product", GridSpec("planes", {"resolutions": [8, 16, 32], "features_per_level": 2,
                                           "aggregate": "product"})),
    ("mulfagrid", GridSpec("mulfagrid", {"resolutions": [8, 16, 32], "features_per_level": 2})),
)


def analysis_models() -> list[str]:
    """Names of the line-up, in figure order (including models whose grid module is unavailable)."""
    return [name for name, _ in ANALYSIS_GRIDS]


def analysis_spec(model: str) -> GridSpec:
    """The :class:`GridSpec` of analysis model ``model``."""
    specs = dict(ANALYSIS_GRIDS)
    if model not in specs:
        raise InputError(f"unknown model {model!r} for analyses; choose one of {', '.join(specs)}")
    return specs[model]
