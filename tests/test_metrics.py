"""PSNR / SSIM against independent references (closed forms and scikit-image)."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from gridfield.metrics import gaussian_window, mse, psnr, psnr_from_mse, ssim, ssim_map


def _pair(h, w, c, noise, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(h, w, c, generator=g, dtype=torch.float64)
    a = torch.nn.functional.avg_pool2d(a.permute(2, 0, 1)[None], 3, 1, 1)[0].permute(1, 2, 0)  # some structure
    b = (a + noise * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return b, a


def test_psnr_closed_form_constant_error():
    target = torch.rand(20, 30, 3)
    for e in (0.1, 0.01, 0.003):
        assert psnr(target + e, target) == pytest.approx(-20 * math.log10(e), abs=1e-4)
    assert psnr(target, target) == math.inf
    assert psnr(target * 255 + 2.0, target * 255, data_range=255.0) == pytest.approx(20 * math.log10(255 / 2), abs=1e-4)


def test_psnr_matches_skimage():
    pred, target = _pair(33, 47, 3, 0.05)
    ref = peak_signal_noise_ratio(target.numpy(), pred.numpy(), data_range=1.0)
    assert psnr(pred, target) == pytest.approx(ref, rel=1e-9)


def test_psnr_from_mse_tensor_is_differentiable():
    m = torch.tensor(0.01, requires_grad=True)
    p = psnr_from_mse(m)
    p.backward()
    assert float(p.detach()) == pytest.approx(20.0)
    assert float(m.grad) == pytest.approx(-10 / (math.log(10) * 0.01))  # d/dm of -10 log10 m


@pytest.mark.parametrize("shape,noise",
                         [((64, 64, 3), 0.05), ((40, 57, 1), 0.2), ((23, 31, 4), 0.01), ((11, 11, 3), 0.1)])
def test_ssim_matches_skimage(shape, noise):
    pred, target = _pair(*shape, noise)
    ref = structural_similarity(pred.numpy(), target.numpy(), gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, data_range=1.0, channel_axis=-1)
    assert ssim(pred, target) == pytest.approx(ref, abs=1e-10)


def test_ssim_identity_and_symmetry():
    pred, target = _pair(32, 32, 3, 0.1)
    assert ssim(target, target) == pytest.approx(1.0, abs=1e-12)
    assert ssim(pred, target) == pytest.approx(ssim(target, pred), abs=1e-12)
    assert ssim(pred, target) < 1.0


def test_gaussian_window_matches_scipy():
    from scipy.ndimage import gaussian_filter1d

    impulse = np.zeros(11)
    impulse[5] = 1.0
    ref = gaussian_filter1d(impulse, 1.5, truncate=3.5, mode="constant")  # skimage's window for sigma 1.5
    assert np.allclose(gaussian_window().numpy(), ref, atol=1e-12)


def test_ssim_map_gradient_matches_finite_differences():
    pred, target = _pair(12, 13, 1, 0.1)
    pred.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: ssim_map(p, target).mean(), (pred,), fast_mode=True)


def test_bad_inputs():
    with pytest.raises(ValueError, match="differ in shape"):
        mse(torch.zeros(3, 3), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(10, 20, 3), torch.zeros(10, 20, 3))
    with pytest.raises(ValueError, match=r"\[H, W, C\]"):
        ssim(torch.zeros(20, 20), torch.zeros(20, 20))
