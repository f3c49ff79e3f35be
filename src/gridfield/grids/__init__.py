"""Grid models. Each exposes ``support(x)`` (U and phi), ``forward(x)`` (features) and its grid features
by parameter name (``grid_param_names``)."""

from gridfield.grids.base import Grid, Support
from gridfield.grids.dense import DenseGrid

__all__ = ["Grid", "Support", "DenseGrid"]
