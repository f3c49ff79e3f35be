"""Stateless tensor ops shared by grids, fields and renderers."""

from gridfield.functional.interp import corner_offsets, nlinear_weights, scale_to_grid

__all__ = ["corner_offsets", "nlinear_weights", "scale_to_grid"]
