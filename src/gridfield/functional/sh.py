"""Real spherical harmonics up to degree 3 (the constants used by Plenoxels and 3D Gaussian splatting).

``sh_basis(d, degree)`` evaluates the ``(degree + 1)^2`` basis functions at unit directions; radiance
is ``sigmoid(sum_k Y_k(d) c_k)`` per colour channel (:func:`sh_to_rgb`).

Example::

    Y = sh_basis(dirs, 2)                  # [N, 9]
    rgb = sh_to_rgb(coefs.view(N, 3, 9), Y)
"""

from __future__ import annotations

import torch
from torch import Tensor

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
      -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def sh_basis(dirs: Tensor, degree: int) -> Tensor:
    """Real SH basis ``[N, (degree + 1)^2]`` at unit directions ``[N, 3]`` (degree 0 to 3); differentiable."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [C2[0] * xy, C2[1] * yz, C2[2] * (2 * zz - xx - yy), C2[3] * xz, C2[4] * (xx - yy)]
    if degree >= 3:
        out += [C3[0] * y * (3 * xx - yy), C3[1] * xy * z, C3[2] * y * (4 * zz - xx - yy),
                C3[3] * z * (2 * zz - 3 * xx - 3 * yy), C3[4] * x * (4 * zz - xx - yy),
                C3[5] * z * (xx - yy), C3[6] * x * (xx - 3 * yy)]
    return torch.stack(out, dim=-1)


def sh_to_rgb(coefs: Tensor, basis: Tensor) -> Tensor:
    """``sigmoid(sum_k basis_k c_{ck})``: coefs ``[N, 3, K]``, basis ``[N, K]`` -> ``[N, 3]``."""
    return torch.sigmoid((coefs * basis.unsqueeze(1)).sum(-1))
