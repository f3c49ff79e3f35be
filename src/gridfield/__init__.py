"""gridfield: grid-based neural fields in one formalism, with the grid tangent kernel toolkit.

Every grid model computes ``g(x) = D(sum_{k in U(x)} phi(x, k) w_k)``; see ``docs/design.md``.
Importing the package does no work: no compilation, no GPU, no downloads.
"""

from gridfield.grids.base import Grid, Support

__all__ = ["Grid", "Support", "__version__"]
__version__ = "0.1.0"
