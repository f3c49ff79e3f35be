"""Fourier-feature MLP and MFN (FourierNet, GaborNet) against hand-written closed forms."""

import math

import numpy as np
import pytest
import torch

from gridfield.fields.references import FourierFeatureMLP, FourierNet, GaborNet, PositionalEncodingMLP
from gridfield.models import build_field


def params(module):
    return {n: p.detach().double().numpy() for n, p in module.named_parameters()}


def test_gaussian_feature_map_matches_definition():
    torch.manual_seed(0)
    m = FourierFeatureMLP(2, 3, num_features=4096, sigma=7.0, seed=3)
    b = m.B.numpy()
    assert abs(b.std() - 7.0) < 0.25 and abs(b.mean()) < 0.25  # B ~ N(0, sigma^2)
    x = np.random.default_rng(0).uniform(-1, 1, size=(5, 2))
    direct = np.array([[math.cos(2 * math.pi * (bj @ xi)) for bj in b] + [math.sin(2 * math.pi * (bj @ xi)) for bj in b]
                       for xi in x])
    got = m.encode(torch.from_numpy(x).float()).numpy()
    np.testing.assert_allclose(got, direct, atol=2e-4)
    assert torch.equal(FourierFeatureMLP(2, 3, seed=3).B, FourierFeatureMLP(2, 3, seed=3).B)


def test_positional_feature_map_matches_definition():
    m = PositionalEncodingMLP(3, 1, num_features=5, sigma=32.0)
    x = np.random.default_rng(1).uniform(-1, 1, size=(4, 3))
    freqs = [32.0 ** (j / 5) for j in range(5)]
    cos = [[math.cos(2 * math.pi * f * xi[a]) for a in range(3) for f in freqs] for xi in x]
    sin = [[math.sin(2 * math.pi * f * xi[a]) for a in range(3) for f in freqs] for xi in x]
    got = m.encode(torch.from_numpy(x).float()).numpy()
    np.testing.assert_allclose(got, np.concatenate([cos, sin], 1), atol=2e-5)


def test_ffmlp_is_mlp_of_features():
    torch.manual_seed(0)
    m = FourierFeatureMLP(2, 2, num_features=8, width=6, depth=1)
    p = params(m)
    x = np.random.default_rng(2).uniform(-1, 1, size=(7, 2))
    g = m.encode(torch.from_numpy(x).float()).double().numpy()
    h = np.maximum(g @ p["mlp.0.weight"].T + p["mlp.0.bias"], 0)
    got = m(torch.from_numpy(x).float()).detach().numpy()
    np.testing.assert_allclose(got, h @ p["mlp.2.weight"].T + p["mlp.2.bias"], rtol=1e-5, atol=1e-5)


def test_fouriernet_one_layer_hand_formula():
    torch.manual_seed(0)
    net = FourierNet(2, 3, width=4, n_layers=1, input_scale=10.0).double()
    p = params(net)
    x = np.random.default_rng(3).uniform(-1, 1, size=(6, 2))
    om, ph = p["filter_freq"], p["filter_phase"]
    z1 = np.sin(x @ om[0].T + ph[0])
    z2 = (z1 @ p["linears.0.weight"].T + p["linears.0.bias"]) * np.sin(x @ om[1].T + ph[1])
    np.testing.assert_allclose(net(torch.from_numpy(x)).detach().numpy(), z2 @ p["out.weight"].T + p["out.bias"],
                               rtol=1e-12, atol=1e-12)


def test_gabornet_one_layer_hand_formula():
    torch.manual_seed(1)
    net = GaborNet(2, 1, width=3, n_layers=1, input_scale=10.0).double()
    p = params(net)
    x = np.random.default_rng(4).uniform(-1, 1, size=(5, 2))

    def g(i, xi):
        env = np.exp(-0.5 * p["filter_gamma"][i] * ((xi[None] - p["filter_mu"][i]) ** 2).sum(-1))
        return np.sin(p["filter_freq"][i] @ xi + p["filter_phase"][i]) * env

    expect = [p["out.weight"] @ ((p["linears.0.weight"] @ g(0, xi) + p["linears.0.bias"]) * g(1, xi)) + p["out.bias"]
              for xi in x]
    np.testing.assert_allclose(net(torch.from_numpy(x)).detach().numpy(), np.array(expect), rtol=1e-12, atol=1e-12)
    assert (p["filter_gamma"] > 0).all()


def test_gabornet_gradcheck():
    torch.manual_seed(0)
    net = GaborNet(2, 1, width=3, n_layers=2, input_scale=4.0).double()
    x = torch.rand(4, 2, dtype=torch.float64) * 2 - 1
    names = ["filter_mu", "filter_gamma", "filter_freq"]
    ps = dict(net.named_parameters())
    inputs = tuple(ps[n].detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(lambda *a: torch.func.functional_call(net, dict(zip(names, a)), (x,)), inputs)


@pytest.mark.parametrize("name", ["ffmlp", "ffmlp-pe", "mfn", "mfn-fourier", "mfn-gabor"])
def test_build_field_interface(name):
    f = build_field(name, 2, 3, width=16)
    assert f.in_dim == 2 and f.out_dim == 3 and f.grid_parameters() == {} and not f.linear_in_grid
    assert set(f.other_parameters()) == {n for n, _ in f.named_parameters()}
    assert f(torch.zeros(4, 2)).shape == (4, 3)


def test_bad_input():
    with pytest.raises(ValueError, match="mapping 'basic'"):
        FourierFeatureMLP(2, 3, mapping="basic")
    with pytest.raises(ValueError, match="sigma > 0"):
        FourierFeatureMLP(2, 3, sigma=0)
    with pytest.raises(ValueError, match="n_layers >= 1"):
        FourierNet(2, 3, n_layers=0)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        FourierNet(2, 3)(torch.zeros(4, 3))


@pytest.mark.parametrize("name,kw,lr,target", [
    ("mfn-fourier", {"width": 64, "n_layers": 3, "input_scale": 64.0}, 1e-2, 45.0),  # measured 49.1 dB
    ("ffmlp", {"width": 64, "depth": 2, "num_features": 64, "sigma": 4.0}, 1e-2, 37.0),  # measured 41.1 dB
])
def test_fits_small_image(name, kw, lr, target, one_thread):
    """32x32 astronaut crop, 150 full-batch Adam steps, stated PSNR floor (dB)."""
    from skimage import data

    img = torch.from_numpy(data.astronaut()[40:104:2, 190:254:2].astype(np.float32) / 255)
    c = (torch.arange(32, dtype=torch.float32) + 0.5) * (2 / 32) - 1
    x = torch.stack(torch.meshgrid(c, c, indexing="xy"), -1).reshape(-1, 2)
    y = img.reshape(-1, 3)
    torch.manual_seed(0)
    f = build_field(name, 2, 3, **kw)
    opt = torch.optim.Adam(f.parameters(), lr=lr)
    for _ in range(150):
        loss = ((f(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    psnr = -10 * math.log10(((f(x) - y) ** 2).mean().item())
    assert psnr > target, psnr
