"""Grid models. Each exposes ``support(x)`` (U and phi), ``forward(x)`` (features) and its grid features
by parameter name (``grid_param_names``)."""

from gridfield.grids.base import Grid, Support
from gridfield.grids.dense import DenseGrid
from gridfield.grids.hash import HashGrid
from gridfield.grids.mulfagrid import MulFAGrid
from gridfield.grids.planes import PlaneGrid

__all__ = ["Grid", "Support", "DenseGrid", "HashGrid", "MulFAGrid", "PlaneGrid"]
