"""DenseGrid against torch.nn.functional.grid_sample, support reproduction, gradcheck."""

import pytest
import torch
import torch.nn.functional as F

from gridfield.grids import DenseGrid
from gridfield.grids.base import interpolate


def grid_sample_ref(grid: DenseGrid, level: int, x: torch.Tensor) -> torch.Tensor:
    """Independent evaluation with grid_sample(align_corners=True); ``[N, F]``."""
    t = grid.level_table(level)
    d = x.shape[1]
    if d == 1:  # grid_sample has no 1D mode: a 1-row 2D image
        t = t.unsqueeze(2)
        g = torch.stack([x[:, 0], torch.zeros_like(x[:, 0])], -1).view(1, 1, -1, 2)
    else:
        g = x.view(1, *([1] * (d - 1)), -1, d)
    return F.grid_sample(t, g, mode="bilinear", align_corners=True).reshape(t.shape[1], -1).T


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_dense_matches_grid_sample(dim):
    torch.manual_seed(dim)
    grid = DenseGrid(dim, [3, 7, 16], features_per_level=3, init_scale=1.0).double()
    x = torch.rand(500, dim, dtype=torch.float64) * 2 - 1
    x[:4] = torch.tensor([-1.0, 1.0, 0.0, 1.0 - 1e-12]).unsqueeze(1)  # borders and nodes
    out = grid(x)
    for level in range(3):
        ref = grid_sample_ref(grid, level, x)
        torch.testing.assert_close(out[:, 3 * level : 3 * level + 3], ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_dense_support_reproduces_forward(dim):
    torch.manual_seed(0)
    grid = DenseGrid(dim, [4, 9], features_per_level=2, init_scale=1.0).double()
    x = torch.rand(200, dim, dtype=torch.float64) * 2 - 1
    terms = grid.support(x)
    assert len(terms) == 2
    manual = []
    for t in terms:
        assert t.index.shape == t.weight.shape == (200, 2**dim)
        torch.testing.assert_close(t.weight.sum(1), torch.ones(200, dtype=torch.float64))
        assert (t.weight >= 0).all()
        manual.append(interpolate(grid.features, t.index, t.weight))
    torch.testing.assert_close(torch.cat(manual, 1), grid(x), rtol=0, atol=0)


def test_dense_gradcheck():
    torch.manual_seed(0)
    grid = DenseGrid(2, [5, 8], features_per_level=2, init_scale=1.0).double()
    x = (torch.rand(20, 2, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    w = grid.features.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x_: grid(x_), (x,))
    call = lambda w_: torch.func.functional_call(grid, {"features": w_}, (x.detach(),))  # noqa: E731
    assert torch.autograd.gradcheck(call, (w,))


def test_dense_bad_input():
    with pytest.raises(ValueError, match="dim 1, 2 or 3"):
        DenseGrid(4)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        DenseGrid(2)(torch.zeros(5, 3))
