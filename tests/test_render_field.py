"""Radiance field pieces: the dense gather fast path against the grid's reference, coarse-to-fine
refitting against an exactly representable field, SH orthonormality, the initial opacity."""

import math

import torch

from gridfield.fields.radiance import RadianceField, refit_dense, total_variation
from gridfield.functional.sh import sh_basis
from gridfield.models import make_grid


def test_dense_fast_path_matches_reference_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    grid = make_grid("dense", 3, resolutions=[7], features_per_level=5)
    with torch.no_grad():
        grid.features.normal_(generator=g)
    x = torch.rand(300, 3, generator=g) * 2.2 - 1.1  # some outside: clamped like the reference
    cot = torch.randn(300, 5, generator=g)
    fast = grid(x)  # the fused kernel (backend "auto")
    (gf,) = torch.autograd.grad((fast * cot).sum(), grid.features)
    ref = grid.reference_forward(x)  # the plain-PyTorch formalism, not the grid's (fast) forward
    (gr,) = torch.autograd.grad((ref * cot).sum(), grid.features)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gf, gr, rtol=1e-5, atol=1e-5)


def test_refit_reproduces_a_linear_field_on_the_shrunk_box():
    aabb = torch.tensor([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5])
    a = torch.tensor([0.3, -0.7, 1.1])
    field = RadianceField(make_grid("dense", 3, resolutions=[9], features_per_level=1),
                          make_grid("dense", 3, resolutions=[9], features_per_level=2), aabb, step=0.05)
    ar = torch.linspace(-1.5, 1.5, 9)
    k2, k1, k0 = torch.meshgrid(ar, ar, ar, indexing="ij")
    nodes = torch.stack([k0, k1, k2], -1).reshape(-1, 3)  # row = i0 + 9 i1 + 81 i2
    with torch.no_grad():
        field.density_grid.features.copy_((nodes @ a)[:, None])
        field.color_grid.features.copy_(torch.stack([nodes @ a, nodes[:, 2]], -1))
    box = torch.tensor([-0.5, -1.0, 0.0, 1.0, 0.5, 1.2])
    assert refit_dense(field, box, 13, 11)
    assert field.density_grid.resolutions == [13] and field.color_grid.resolutions == [11]
    x = box[:3] + torch.rand(200, 3) * (box[3:] - box[:3])
    torch.testing.assert_close(field.density_grid(field.to_unit(x))[:, 0], x @ a, atol=1e-5, rtol=0)
    torch.testing.assert_close(field.color_grid(field.to_unit(x))[:, 1], x[:, 2], atol=1e-5, rtol=0)


def test_total_variation_of_a_ramp():
    grid = make_grid("dense", 3, resolutions=[5], features_per_level=1)
    with torch.no_grad():  # value = 2 * i0: squared step 4 along axis 0 only
        grid.features.copy_((2.0 * (torch.arange(125) % 5)).float()[:, None])
    assert math.isclose(total_variation(grid).item(), 4.0, rel_tol=1e-6)


def test_sh_basis_is_orthonormal_on_the_sphere():
    n = 20000
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = i * math.pi * (3 - math.sqrt(5))
    r = torch.sqrt(1 - z * z)
    d = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)
    Y = sh_basis(d, 3)
    gram = Y.T @ Y * (4 * math.pi / n)
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=2e-3, rtol=0)


def test_untrained_opacity_per_step_is_alpha_init():
    aabb = torch.tensor([-1.0, -1, -1, 1, 1, 1])
    for app in ("sh", "mlp"):
        f = RadianceField(make_grid("dense", 3, resolutions=[8], features_per_level=1),
                          make_grid("dense", 3, resolutions=[8], features_per_level=27 if app == "sh" else 12),
                          aabb, appearance=app, alpha_init=1e-3, step=0.02)
        x = torch.rand(100, 3) * 2 - 1
        alpha = 1 - torch.exp(-f.density(x) * 0.02)
        torch.testing.assert_close(alpha, torch.full_like(alpha, 1e-3), rtol=1e-2, atol=0)
        d = torch.nn.functional.normalize(torch.randn(100, 3), dim=-1)
        rgb = f.color(x, d)
        assert rgb.shape == (100, 3) and ((rgb > 0) & (rgb < 1)).all()


def test_trunc_exp_is_exp_with_a_clamped_gradient():
    from gridfield.functional.activations import trunc_exp

    x = torch.tensor([-3.0, 0.0, 2.0, 14.0, 20.0], dtype=torch.float64, requires_grad=True)
    y = trunc_exp(x)
    torch.testing.assert_close(y, torch.exp(x.detach()))
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, torch.exp(x.detach().clamp(max=15.0)))  # autograd's exp' = exp below 15


def test_shared_layout_trunc_exp_density_fast_head_matches_reference():
    """A hash field with Instant-NGP's density activation: untrained opacity ``alpha_init``; the chunked
    density head (fast path) gives the reference's values and gradients."""
    aabb = torch.tensor([-1.0, -1, -1, 1, 1, 1])
    torch.manual_seed(0)
    f = RadianceField(make_grid("hash", 3, n_levels=4, log2_hashmap_size=10, init_scale=1e-4), None, aabb,
                      alpha_init=1e-2, step=0.01, density_activation="trunc_exp", view_degree=3)
    x = torch.rand(300, 3) * 2 - 1
    d = torch.nn.functional.normalize(torch.randn(300, 3), dim=-1)
    alpha = 1 - torch.exp(-f.density(x) * 0.01)
    torch.testing.assert_close(alpha, torch.full_like(alpha, 1e-2), rtol=0.2, atol=0)  # the MLP's bias varies it
    outs = []
    for backend in ("auto", "reference"):
        f.backend = backend
        f.zero_grad()
        sigma, geo = f.density_and_geo(x)
        loss = sigma.sum() + f.color(x, d, geo).square().sum()
        loss.backward()
        outs.append((sigma.detach(), geo.detach(), [p.grad.clone() for p in f.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-6)
    for a, b in zip(outs[0][2], outs[1][2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
