"""HashGrid against a separately written scalar tcnn formula, grid_sample, hand-computed layouts."""

import itertools
import math
import struct

import pytest
import torch
import torch.nn.functional as F

from conftest import fast_path_missing
from gridfield.functional.hashing import axis_factors, cell_corner_rows, coherent_prime_hash
from gridfield.grids import HashGrid
from gridfield.grids.base import interpolate
from gridfield.models import make_grid

MASK = 0xFFFFFFFF
PRIMES = (1, 2654435761, 805459861)  # tcnn common_device.h, coherent_prime_hash


def f32(v: float) -> float:
    """Round a Python float to float32 (emulates one float32 operation)."""
    return struct.unpack("f", struct.pack("f", v))[0]


def direct_encode(point, table, dim, n_levels, t, base, b):
    """tcnn's Grid encoding for one point, written out with Python scalars and ints.

    ``table`` is a list of rows (lists of floats). Returns the level-major feature list.
    """
    out, offset = [], 0
    for level in range(n_levels):
        scale = f32(f32(f32(2.0 ** f32(level * f32(math.log2(f32(b))))) * base) - 1.0)
        res = math.ceil(scale) + 1
        size = min(((res**dim + 7) // 8) * 8, 2**t)
        hashed = res**dim > size
        pos = [((x + 1) * 0.5) * scale + 0.5 for x in point]
        cell = [math.floor(p) for p in pos]
        frac = [p - c for p, c in zip(pos, cell)]
        acc = [0.0] * len(table[0])
        for bits in itertools.product((0, 1), repeat=dim):
            c = [(cell[j] + bits[j]) & MASK for j in range(dim)]
            if hashed:
                h = 0
                for j in range(dim):
                    h ^= (c[j] * PRIMES[j]) & MASK
            else:
                h = sum(c[j] * res**j for j in range(dim)) & MASK
            w = math.prod(frac[j] if bits[j] else 1 - frac[j] for j in range(dim))
            row = table[offset + h % size]
            acc = [a + w * r for a, r in zip(acc, row)]
        out += acc
        offset += size
    return out


CONFIGS = [  # dim, n_levels, T, base, per_level_scale: mixes dense, boundary (res**d == 2**T), hashed
    (1, 6, 5, 4, 2.0),
    (2, 5, 8, 4, 2.0),
    (2, 4, 7, 4, 1.5),
    (2, 4, 9, 5, 1.7),
    (3, 4, 10, 3, 2.0),
    (3, 3, 11, 4, 2.3),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_hash_matches_direct_formula(cfg):
    dim, n_levels, t, base, b = cfg
    torch.manual_seed(0)
    grid = HashGrid(dim, n_levels, 2, t, base, b, init_scale=1.0).double()
    assert grid.hashed_levels() and len(grid.hashed_levels()) < n_levels
    x = torch.rand(24, dim, dtype=torch.float64) * 2 - 1
    special = [[-1.0] * dim, [1.0] * dim, [1.0] + [-1.0] * (dim - 1), [1 - 1e-9] * dim, [-1.3] + [1.2] * (dim - 1)]
    x = torch.cat([x, torch.tensor(special, dtype=torch.float64)])
    table = grid.features.tolist()
    ref = torch.tensor([direct_encode(p, table, dim, n_levels, t, base, b) for p in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(grid(x), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grid.reference_forward(x), ref, rtol=1e-12, atol=1e-12)


def test_hash_and_corner_rows_against_python_ints():
    torch.manual_seed(0)
    c = torch.randint(-(2**31) + 1, 2**31 - 1, (200, 3), dtype=torch.int64)  # C ints, read as uint32
    c[0] = torch.tensor([-1, -1, 2**31 - 2])
    u = (c & MASK).tolist()
    expect = [(a * PRIMES[0]) ^ ((b * PRIMES[1]) & MASK) ^ ((d * PRIMES[2]) & MASK) for a, b, d in u]
    assert coherent_prime_hash(c).tolist() == expect
    for res, size, hashed in [(70000, 1000, False), (13, 4096, False), (70000, 2**19, True)]:
        factors = torch.tensor([axis_factors(res, 3, hashed)])  # dense strides overflow uint32 at 70000
        rows = cell_corner_rows(c[:, None], factors, torch.tensor([hashed]), torch.tensor([size]))[:, 0].tolist()
        for cell, got in zip(u, rows):
            for k in range(8):
                v = [(cell[j] + ((k >> j) & 1)) & MASK for j in range(3)]
                if hashed:
                    h = (v[0] * PRIMES[0]) ^ ((v[1] * PRIMES[1]) & MASK) ^ ((v[2] * PRIMES[2]) & MASK)
                else:
                    h = (v[0] + v[1] * res + v[2] * res * res) & MASK
                assert got[k] == h % size


def test_border_vertex_wraps_like_tcnn():
    # Level 0 of a 2D grid with base 4: scale 3, resolution 4, 16 rows, dense. At x01 = (1, 0),
    # pos = (3.5, 0.5): the cell's upper corner along axis 0 is vertex 4, one past the last (3).
    grid = HashGrid(2, n_levels=1, log2_hashmap_size=8, base_resolution=4)
    (term,) = grid.support(torch.tensor([[1.0, -1.0]]))
    # corners (3,0) (4,0) (3,1) (4,1) -> rows 3, 4 (= vertex (0,1), aliased), 7, 8 (= vertex (0,2))
    assert term.index.tolist() == [[3, 4, 7, 8]]
    torch.testing.assert_close(term.weight, torch.tensor([[0.25, 0.25, 0.25, 0.25]]))


def level_as_image(grid: HashGrid, level: int) -> torch.Tensor:
    """A dense level's rows as a grid_sample input ``[1, F, *[R]*d]`` (row = sum_j i_j R**j)."""
    r, d, off = grid.resolutions[level], grid.in_dim, grid.offsets[level]
    t = grid.features[off : off + r**d].reshape(*([r] * d), -1)  # [i_{d-1}, ..., i_0, F]
    return t.permute(d, *range(d)).unsqueeze(0)


@pytest.mark.parametrize("dim", [2, 3])
def test_dense_levels_match_grid_sample(dim):
    torch.manual_seed(dim)
    grid = HashGrid(dim, n_levels=4, features_per_level=3, log2_hashmap_size=3 * dim + 2,
                    base_resolution=3, per_level_scale=1.8, init_scale=1.0).double()
    dense_levels = [lv for lv in range(4) if lv not in grid.hashed_levels()]
    assert len(dense_levels) >= 2
    x = torch.rand(3000, dim, dtype=torch.float64) * 2 - 1
    out = grid(x)
    for lv in dense_levels:
        r = grid.resolutions[lv]
        pos = (x + 1) / 2 * grid.scales[lv] + 0.5  # tcnn's vertex coordinates
        keep = (pos < r - 1).all(1)  # cells whose corners all exist (no wraparound)
        assert keep.sum() > 100
        g = (pos[keep] * 2 / (r - 1) - 1).view(1, *([1] * (dim - 1)), -1, dim)
        ref = F.grid_sample(level_as_image(grid, lv), g, mode="bilinear", align_corners=True)
        ref = ref.reshape(3, -1).T
        torch.testing.assert_close(out[keep, 3 * lv : 3 * lv + 3], ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_support_and_fast_path(dim):
    torch.manual_seed(0)
    grid = HashGrid(dim, n_levels=5, log2_hashmap_size=7, base_resolution=4, per_level_scale=1.9,
                    init_scale=1.0).double()
    x = (torch.rand(300, dim, dtype=torch.float64) * 2 - 1).requires_grad_()
    terms = grid.support(x)
    manual = []
    for lv, t in enumerate(terms):
        assert t.index.shape == t.weight.shape == (300, 2**dim) and t.channels == slice(2 * lv, 2 * lv + 2)
        lo, hi = grid.offsets[lv], grid.offsets[lv + 1]
        assert ((t.index >= lo) & (t.index < hi)).all()
        assert (t.weight >= 0).all()
        torch.testing.assert_close(t.weight.sum(1), torch.ones(300, dtype=torch.float64), rtol=0, atol=1e-14)
        manual.append(interpolate(grid.features, t.index, t.weight))
    ref = torch.cat(manual, 1)
    fast = grid(x)
    torch.testing.assert_close(grid.reference_forward(x), ref, rtol=0, atol=0)
    torch.testing.assert_close(fast, ref, rtol=1e-14, atol=1e-15)
    v = torch.randn_like(ref)  # backward through a random cotangent, and double backward in x
    g_ref = torch.autograd.grad((ref * v).sum(), (x, grid.features), create_graph=True)
    g_fast = torch.autograd.grad((fast * v).sum(), (x, grid.features), create_graph=True)
    for a, b in zip(g_ref, g_fast):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    u = torch.randn_like(x)
    gg_ref = torch.autograd.grad((g_ref[0] * u).sum(), grid.features)[0]
    gg_fast = torch.autograd.grad((g_fast[0] * u).sum(), grid.features)[0]
    torch.testing.assert_close(gg_ref, gg_fast, rtol=1e-12, atol=1e-14)


def test_layout_instant_ngp_configs():
    # tcnn defaults (per_level_scale 2): resolutions 16 * 2**l; dense while R**3 <= 2**19.
    g = HashGrid(3, n_levels=16, features_per_level=2, log2_hashmap_size=19, base_resolution=16)
    assert g.resolutions == [16 * 2**lv for lv in range(16)]
    assert g.level_sizes == [4096, 32768, 262144] + [524288] * 13
    assert g.offsets[:5] == [0, 4096, 36864, 299008, 823296]
    assert g.offsets[-1] == 7114752 and g.features.shape == (7114752, 2)
    assert g.hashed_levels() == list(range(3, 16))
    # paper NeRF config: N_max = 2048 -> b = 2**(7/15); level sizes rounded up to multiples of 8
    g = HashGrid(3, n_levels=16, log2_hashmap_size=19, base_resolution=16, finest_resolution=2048)
    assert g.per_level_scale == pytest.approx(2 ** (7 / 15))
    assert g.resolutions[:6] == [16, 23, 31, 43, 59, 81] and g.resolutions[-1] == 2048
    assert g.level_sizes[:6] == [4096, 12168, 29792, 79512, 205384, 524288]  # 23**3 = 12167 -> 12168
    assert g.hashed_levels() == list(range(5, 16))
    assert g.offsets[-1] == 4096 + 12168 + 29792 + 79512 + 205384 + 11 * 524288
    init = HashGrid(2, n_levels=2, log2_hashmap_size=10).features
    assert init.abs().max() <= 1e-4 and init.abs().max() > 5e-5  # tcnn: uniform(-1e-4, 1e-4)


def away_from_faces(grid: HashGrid, n: int, dim: int, margin: float = 0.05) -> torch.Tensor:
    x = torch.rand(40 * n, dim, dtype=torch.float64) * 1.8 - 0.9
    ok = torch.ones(len(x), dtype=torch.bool)
    for s in grid.scales:
        frac = torch.frac((x + 1) / 2 * s + 0.5)
        ok &= ((frac > margin) & (frac < 1 - margin)).all(1)
    return x[ok][:n]


@pytest.mark.parametrize("dim", [2, 3])
def test_hash_gradcheck(dim):
    torch.manual_seed(dim)
    grid = HashGrid(dim, n_levels=3, log2_hashmap_size=6, base_resolution=3, init_scale=1.0).double()
    assert grid.hashed_levels()
    x = away_from_faces(grid, 8, dim).requires_grad_()
    assert len(x) == 8
    assert torch.autograd.gradcheck(grid, (x,))
    w = grid.features.detach().clone().requires_grad_()
    call = lambda w_: torch.func.functional_call(grid, {"features": w_}, (x.detach(),))  # noqa: E731
    assert torch.autograd.gradcheck(call, (w,))


def test_hash_bad_input():
    with pytest.raises(ValueError, match="dim 1, 2 or 3"):
        HashGrid(4)
    with pytest.raises(ValueError, match="log2_hashmap_size"):
        HashGrid(2, log2_hashmap_size=0)
    with pytest.raises(ValueError, match="not both"):
        HashGrid(2, per_level_scale=1.5, finest_resolution=512)
    grid = HashGrid(2, n_levels=2, log2_hashmap_size=8)
    with pytest.raises(ValueError, match=r"\[N, 2\].*\(5, 3\)"):
        grid(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        grid.support(torch.zeros(5))
    # non-finite points give NaN rows (no host sync to check them; the loss turns NaN and training stops)
    x = torch.tensor([[0.0, float("nan")], [0.3, -0.2], [float("inf"), 0.1]])
    out = grid(x)
    assert out[[0, 2]].isnan().all()
    torch.testing.assert_close(out[1:2], grid(x[1:2]))
    assert isinstance(make_grid("hash", 2, n_levels=2, log2_hashmap_size=8), HashGrid)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_cpp_support_equals_plain_pytorch_support(cfg, dtype):
    """The C++ support (used without x-gradients, e.g. by the GTK) gives the same rows and weights."""
    from gridfield.fast import FastPathUnavailable

    dim, n_levels, t, base, b = cfg
    grid = HashGrid(dim, n_levels, 2, t, base, b, backend="fast").to(dtype)
    x = torch.rand(500, dim, dtype=dtype) * 2 - 1
    special = [[-1.0] * dim, [1.0] * dim, [1.0] + [-1.0] * (dim - 1), [1 - 1e-7] * dim, [-1.3] + [1.2] * (dim - 1)]
    x = torch.cat([x, torch.tensor(special, dtype=dtype)])
    try:
        index, weight = grid.all_levels_support(x)
    except FastPathUnavailable as err:  # no compiler here (CI sets GRIDFIELD_REQUIRE_FAST: then a failure)
        fast_path_missing(str(err))
    ref_index, ref_weight = grid.reference_support(x)
    assert index.dtype == ref_index.dtype == torch.int64 and weight.dtype == ref_weight.dtype == dtype
    assert torch.equal(index, ref_index)
    torch.testing.assert_close(weight, ref_weight, rtol=0, atol=0)
    # with x-gradients recorded the plain support runs (its weights carry the graph)
    xg = x.clone().requires_grad_()
    assert grid.all_levels_support(xg)[1].requires_grad
