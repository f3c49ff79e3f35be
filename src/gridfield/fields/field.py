"""A field = a grid (``U``, ``phi``, ``w``) followed by a decoder ``D``."""

from __future__ import annotations

from torch import Tensor, nn

from gridfield.grids.base import Grid


class Field(nn.Module):
    """``g(x) = D(grid(x))``: ``[N, d]`` in ``[-1, 1]^d`` -> ``[N, out_dim]``.

    Parameters are split by name into grid features (``grid.<table>``, what the paper's GTK
    differentiates) and everything else (kernel and decoder parameters).
    """

    def __init__(self, grid: Grid, decoder: nn.Module) -> None:
        super().__init__()
        self.grid = grid
        self.decoder = decoder
        self.in_dim = grid.in_dim
        self.out_dim = decoder.out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.grid(x))

    def grid_parameters(self) -> dict[str, nn.Parameter]:
        """Grid-feature tables, named as in ``named_parameters()`` (``grid.features``...)."""
        return {f"grid.{k}": v for k, v in self.grid.grid_parameters().items()}

    def other_parameters(self) -> dict[str, nn.Parameter]:
        """Kernel and decoder parameters (everything not in :meth:`grid_parameters`)."""
        grid = self.grid_parameters()
        return {k: v for k, v in self.named_parameters() if k not in grid}

    @property
    def linear_in_grid(self) -> bool:
        """True when the GTK cannot change during training, so ``G(t) = G(0)`` exactly (Theorem 2).

        That needs an output linear in the grid features with everything else fixed: a grid with a sum
        aggregation, no trainable kernel parameters, and an identity or frozen linear decoder. A
        trained linear decoder ``A`` changes the GTK (it contains ``A^T A``); an MLP decoder, a product
        factorization or a jointly trained kernel make it False too.
        """
        trained_kernel = any(p.requires_grad for p in self.grid.kernel_parameters().values())
        trained_decoder = any(p.requires_grad for p in self.decoder.parameters())
        return (self.grid.linear_in_features and getattr(self.decoder, "linear", False)
                and not trained_kernel and not trained_decoder)
