"""Index arithmetic of tiny-cuda-nn's multiresolution Grid encoding (Instant-NGP), in plain PyTorch.

Pure functions; no state. Every convention below was checked against tiny-cuda-nn
(``NVlabs/tiny-cuda-nn``, ``include/tiny-cuda-nn/common_device.h`` and
``include/tiny-cuda-nn/encodings/grid.h``, 2023 versions with ``HashType``; the older
``fast_hash`` versions agree on everything used here) and is cited where it is used. Nothing is copied: the
CUDA code works in ``uint32`` with implicit wrap-around; here the same numbers are computed in
``int64`` tensors and masked to 32 bits after every product, so the results are bit-identical
for every point whose grid coordinates fit in C's ``int`` (``(uint32_t)(int)floor(pos)`` in tcnn).

Only the "coherent prime" hash (tcnn's default ``"hash": "CoherentPrime"``) and linear
interpolation are implemented.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

UINT32_MASK = 0xFFFFFFFF

# common_device.h, coherent_prime_hash: factor i multiplies grid coordinate i; factor 0 is 1 so that
# neighbours along the first axis stay neighbours in memory ("coherent").
COHERENT_PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)

# common_device.h, grid_index: MAX_BASES[d] is the largest resolution whose dense stride
# resolution**d still fits in uint32; beyond it tcnn sets stride = 0xFFFFFFFF (always hash).
_MAX_BASES = (0x0, 0xFFFFFFFF, 0xFFFF, 0x659)


def _mul_u32(c: Tensor, b: int | Tensor) -> Tensor:
    """``(uint32_t)c * b`` in C for ``int64`` ``c`` with ``|c| <= 2**31`` and ``0 <= b < 2**32``.

    ``|c * b| < 2**63`` cannot overflow int64, and masking the two's-complement product keeps its
    value mod ``2**32``, which is the uint32 product of ``c mod 2**32`` and ``b``.
    """
    return (c * b) & UINT32_MASK


def coherent_prime_hash(coords: Tensor) -> Tensor:
    """tcnn's ``coherent_prime_hash``: ``XOR_i (coords[..., i] * primes[i])`` in uint32 arithmetic.

    coords: ``[..., d]`` int64 (``d <= 7``), read modulo ``2**32`` (signed values with ``|c| < 2**31``,
    as produced by :func:`pos_fract`, or uint32 values below ``2**31``).
    Returns ``[...]`` int64 in ``[0, 2**32)``.
    """
    d = coords.shape[-1]
    if d > len(COHERENT_PRIMES):
        raise ValueError(f"coherent_prime_hash supports up to {len(COHERENT_PRIMES)} dims, got {d}")
    out = torch.zeros_like(coords[..., 0])
    for i in range(d):
        out = out ^ _mul_u32(coords[..., i], COHERENT_PRIMES[i])
    return out


def grid_scale(level: int, per_level_scale: float, base_resolution: int) -> float:
    """tcnn's ``grid_scale``: ``exp2f(level * log2(per_level_scale)) * base_resolution - 1``.

    Evaluated in float32 exactly like tcnn (``std::log2`` of the float ``per_level_scale``,
    ``exp2f``), so that ``ceil`` below yields tcnn's resolutions; returned as the exact float32
    value in a Python float. (The ``- 1`` makes ``base_resolution`` count vertices, per tcnn.)
    """
    f32 = torch.float32
    log2_scale = torch.log2(torch.tensor(per_level_scale, dtype=f32))
    s = torch.exp2(torch.tensor(float(level), dtype=f32) * log2_scale)
    return float(s * torch.tensor(float(base_resolution), dtype=f32) - torch.tensor(1.0, dtype=f32))


def grid_resolution(scale: float) -> int:
    """tcnn's ``grid_resolution``: ``(uint32_t)ceilf(scale) + 1`` vertices per axis."""
    return int(math.ceil(scale)) + 1


def level_params(resolution: int, dim: int, log2_hashmap_size: int) -> int:
    """Rows of the table at one level (tcnn grid.h constructor, hash grid type).

    ``resolution**dim`` (capped at ``UINT32_MAX // 2`` when the float power exceeds it), rounded up
    to a multiple of 8 ("make sure memory accesses will be aligned"), then ``min(., 2**T)``.
    """
    max_params = UINT32_MASK // 2
    n = max_params if float(resolution) ** dim > float(max_params) else resolution**dim
    n = -(-n // 8) * 8
    return min(n, 1 << log2_hashmap_size)


def is_hashed(resolution: int, dim: int, hashmap_size: int) -> bool:
    """Whether tcnn's ``grid_index`` hashes at this level: ``hashmap_size < stride``.

    ``stride = resolution**dim`` (or ``0xFFFFFFFF`` past ``MAX_BASES``, common_device.h). Older tcnn
    versions grew the stride only ``while stride <= hashmap_size``; both give the same decision.
    """
    stride = resolution**dim if resolution <= _MAX_BASES[dim] else UINT32_MASK
    return hashmap_size < stride


def axis_factors(resolution: int, dim: int, hashed: bool) -> list[int]:
    """Per-axis multipliers of tcnn's ``grid_index``: the primes when hashed, else the dense strides
    ``resolution**j`` (axis 0 fastest), grown in uint32 arithmetic as tcnn does."""
    if hashed:
        return list(COHERENT_PRIMES[:dim])
    return [(resolution**j) & UINT32_MASK for j in range(dim)]


def _corner_grid(t: Tensor) -> Tensor:
    """``[..., d, 2]`` per-axis values -> list of ``d`` broadcastable views over ``[..., 2, .., 2]``.

    Axis ``j`` varies along tensor dim ``-1 - j`` so that flattening gives corner ``k = sum_j b_j 2**j``.
    """
    d = t.shape[-2]
    lead = t.shape[:-2]
    return [t[..., j, :].reshape(*lead, *([1] * (d - 1 - j)), 2, *([1] * j)) for j in range(d)]


def cell_corner_rows(cell: Tensor, factors: Tensor, hashed: Tensor, hashmap_size: Tensor) -> Tensor:
    """Rows of each level's table for the ``2**d`` corners of each cell (tcnn's ``grid_index``).

    cell: ``[N, L, d]`` int64 lower corners (signed, ``|c| < 2**31``, from :func:`pos_fract`);
    factors: ``[L, d]`` int64 from :func:`axis_factors`; hashed: ``[L]`` bool; hashmap_size: ``[L]``
    int64. Corner ``k`` is ``cell + ((k >> j) & 1)_j`` (axis 0 fastest, tcnn's loop order).
    Dense levels: ``sum_j corner_j * resolution**j``; hashed levels: :func:`coherent_prime_hash`;
    both in uint32 arithmetic, then ``% hashmap_size`` (so a corner one past the last vertex wraps
    around, as in tcnn). Both maps combine per-axis terms, so the products are taken per axis on
    ``[N, L, d, 2]`` and combined by broadcasting. Returns ``[N, L, 2**d]`` int64.
    """
    n, n_levels, d = cell.shape
    shifted = torch.stack([cell, cell + 1], -1)  # [N, L, d, 2]
    terms = _corner_grid(_mul_u32(shifted, factors.unsqueeze(-1)))  # each product < 2**63
    summed, xored = terms[0], terms[0]
    for t in terms[1:]:
        summed, xored = summed + t, xored ^ t
    expand = [1] * d
    rows = torch.where(hashed.view(1, n_levels, *expand), xored, summed & UINT32_MASK)
    return (rows % hashmap_size.view(1, n_levels, *expand)).reshape(n, n_levels, 2**d)


def cell_corner_weights(frac: Tensor) -> Tensor:
    """n-linear weights ``[..., 2**d]`` of the corners, in :func:`cell_corner_rows` order.

    frac: ``[..., d]``; corner ``k`` gets ``prod_j (frac_j if (k >> j) & 1 else 1 - frac_j)``, multiplied
    in axis order as in tcnn. Sums to 1; differentiable (any order) in ``frac``.
    """
    terms = _corner_grid(torch.stack([1 - frac, frac], -1))
    out = terms[0]
    for t in terms[1:]:
        out = out * t
    return out.reshape(*frac.shape[:-1], 2 ** frac.shape[-1])


def pos_fract(x01: Tensor, scales: Tensor) -> tuple[Tensor, Tensor]:
    """tcnn's ``pos_fract`` with linear interpolation: ``pos = x01 * scale + 0.5``, floor and fraction.

    x01: ``[N, d]`` in tcnn's ``[0, 1]`` domain; scales: ``[L]`` (one per level, :func:`grid_scale`).
    Returns ``(cell [N, L, d] int64, frac [N, L, d])``; ``cell`` holds ``(int)floor(pos)``, signed;
    tcnn stores it as ``uint32_t``, i.e. modulo ``2**32``, which is how the functions above read it.
    ``frac`` is differentiable in ``x01`` (the floor is a constant). The ``+ 0.5`` staggers the
    levels (Instant-NGP appendix A); tcnn notes it "can cause wraparound indexing in dense grids".
    tcnn computes ``pos`` with one float32 ``fmaf``; here it is two roundings in ``x01.dtype``.
    """
    pos = x01.unsqueeze(1) * scales.view(1, -1, 1) + 0.5
    floor = torch.floor(pos.detach())
    return floor.long(), pos - floor
