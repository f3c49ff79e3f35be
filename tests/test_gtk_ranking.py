"""``gridfield gtk-ranking`` (gridfield.analyses.ranking): statistics, parameter matching, kernel quantities
against independent computations, and a smoke run of the command (and of the Kodak benchmark's page)."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch.func import functional_call, jacrev

from _gtk_models import one_torch_thread  # noqa: F401 (autouse fixture)
from gridfield.analyses import ranking as rk
from gridfield.cli import main
from gridfield.data.images import load_image, pixel_coords
from gridfield.models import count_parameters

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


# -- statistics ----------------------------------------------------------------------------------------
def test_spearman_matches_scipy_with_ties_and_missing_values():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 5, 9).astype(float)  # ties
        b = a + rng.normal(0, 2, 9)
        assert rk.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    a, b = np.array([1.0, np.nan, 3.0, 2.0, 5.0]), np.array([2.0, 7.0, np.nan, 1.0, 4.0])
    assert rk.spearman(a, b) == pytest.approx(spearmanr([1, 2, 5], [2, 1, 4]).statistic)  # pairs with a nan dropped
    assert np.isnan(rk.spearman([1, 2, 3], [4, 4, 4]))  # constant
    assert np.isnan(rk.spearman([1, 2], [3, 4]))  # fewer than 3 pairs


def test_bootstrap_interval_draws_every_axis_with_replacement():
    """The documented draw order (one ``integers(0, k, k)`` per axis, per resample), replayed by hand."""
    vals = np.array([[1.0, 2.0, 4.0], [8.0, 16.0, 32.0]])

    def stat(di, dj):
        m = vals[np.ix_(di, dj)].mean()
        return np.array([m, np.nan if m > 15 else m])

    ci = rk.bootstrap_interval(stat, (2, 3), resamples=200, seed=7, level=90.0)
    rng = np.random.default_rng(7)
    means = np.array([vals[np.ix_(rng.integers(0, 2, 2), rng.integers(0, 3, 3))].mean() for _ in range(200)])
    np.testing.assert_allclose(ci[0], np.percentile(means, [5, 95]))
    np.testing.assert_allclose(ci[1], np.percentile(means[means <= 15], [5, 95]))  # nan draws left out
    assert np.isnan(rk.bootstrap_interval(lambda d: np.array([np.nan]), (3,), 10)).all()


def test_rank_statistics_and_bootstrap_on_a_hand_computed_cube():
    """3 models, 2 images, 2 seeds: the quantity ranks the models exactly as the PSNR on image 0 and
    exactly reversed on image 1, so rho = +1 and -1 per image (and per block), mean 0; drawing the two
    images with replacement gives means -1, 0, +1 (probabilities 1/4, 1/2, 1/4): the 95% interval is [-1, 1]."""
    q = np.array([1.0, 2.0, 3.0])[:, None, None] * np.ones((3, 2, 2))
    p = np.stack([np.array([20.0, 21.0, 25.0])[:, None] * np.ones((1, 2)),
                  np.array([30.0, 26.0, 22.0])[:, None] * np.ones((1, 2))], 1)
    p[:, :, 1] += 0.1  # the seeds differ a little, not in rank
    mean, pooled, block = rk.rank_statistics(q, p)
    assert mean == pytest.approx(0.0) and block == pytest.approx(0.0)
    qm, pm = q.mean(2).ravel(), p.mean(2).ravel()
    assert pooled == pytest.approx(spearmanr(qm, pm).statistic)
    s = rk.correlation_summary(q, p, ["a", "b"], ("image", "seed"), resamples=400, seed=1)
    assert s["per_image"] == pytest.approx({"a": 1.0, "b": -1.0})
    assert s["ci95"] == pytest.approx([-1.0, 1.0])
    # seeds alone resampled: every draw has the same rankings, so the interval collapses to the value
    assert rk.correlation_summary(q, p, ["a", "b"], ("seed",), 50)["ci95"] == pytest.approx([0.0, 0.0])


def test_aggregate_means_bounds_geometrically_and_counts_flags():
    runs = [{"model": "m", "image": "i", "seed": s, "params": 10, "ntk_bound": b, "ntk_effective_rank": e,
             "ntk_floored": f, "test_psnr": t}
            for s, b, e, f, t in ((0, 1.0, 2.0, True, 20.0), (1, 100.0, 4.0, False, 23.0))]
    (row,) = rk.aggregate(runs)
    assert row["ntk_bound"] == pytest.approx(10.0) and row["ntk_effective_rank"] == pytest.approx(3.0)
    assert row["ntk_floored"] == "1/2" and row["seeds"] == 2 and row["test_psnr_spread"] == pytest.approx(3.0)
    c = rk.cube(runs, "ntk_bound", "model", ["m", "x"], ["i"], [0, 1])
    assert c.shape == (2, 1, 2) and np.allclose(c[0, 0], np.log([1.0, 100.0])) and np.isnan(c[1]).all()


# -- models --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,budget", [(32, 2500), (64, 6000)])
def test_every_model_matches_the_budget(size, budget):
    """The command's default and the benchmark's setting: every model within 5% of the budget."""
    counts = {n: count_parameters(rk.build(n, rk.match_budget(n, budget, size), size)) for n in rk.MODELS}
    assert len(counts) >= 8
    off = {n: c / budget - 1 for n, c in counts.items()}
    assert max(abs(v) for v in off.values()) <= 0.05, off


def test_line_up_has_the_issue_models():
    kinds = {(m.model, m.kwargs.get("aggregate"), m.kwargs.get("form"), m.kwargs.get("layout"))
             for m in rk.MODELS.values()}
    for need in [("dense", None, None, None), ("hash", None, None, None), ("planes", "sum", None, None),
                 ("planes", "product", None, None), ("mulfagrid", None, "stable", "hash"),
                 ("mulfagrid", None, "paper", "hash"), ("ffmlp", None, None, None), ("mfn", None, None, None)]:
        assert need in kinds


# -- kernel quantities against independent computations -----------------------------------------------
def explicit_jacobian(model, x, only=None) -> np.ndarray:
    """``[n, P]`` Jacobian of the (single) output wrt all parameters (or the tensors in ``only``), jacrev."""
    names = [k for k, p in model.named_parameters() if only is None or any(p is q for q in only)]
    params = {k: p.detach() for k, p in model.named_parameters() if k in names}
    jac = jacrev(lambda prm: functional_call(model, prm, (x,)))(params)
    return torch.cat([jac[k].reshape(x.shape[0], -1) for k in names], 1).detach().numpy()


@pytest.mark.parametrize("name,size_kw", [("mulfagrid", {"log2_hashmap_size": 6, "finest_resolution": 8}),
                                          ("mfn", {"width": 10})])
def test_kernel_quantities_against_a_dense_jacobian(name, size_kw):
    """On an 8x8 lattice: the NTK (and the grid GTK) of ``lattice_kernels`` equal ``J J^T`` from jacrev;
    the bounds equal ``sqrt(2 y^T Gn^-1 y / n)`` (and with the ridge) solved with NumPy on the
    trace-normalized ``Gn``; effective rank, alignment and high-frequency share of ``H G H`` equal their
    definitions (eigenvalues by NumPy, the spectrum by an explicit DFT matrix)."""
    size = 8
    model = rk.build(name, size_kw, size, seed=3)
    m64 = model.double()
    x = pixel_coords(size, size).double()
    kernels = rk.lattice_kernels(model, size)
    j = explicit_jacobian(m64, x)
    np.testing.assert_allclose(kernels["ntk"], j @ j.T, rtol=1e-9, atol=1e-12 * np.abs(j @ j.T).max())
    if name == "mulfagrid":
        jg = explicit_jacobian(m64, x, only=list(m64.grid_parameters().values()))
        np.testing.assert_allclose(kernels["gtk"], jg @ jg.T, rtol=1e-9, atol=1e-12 * np.abs(jg @ jg.T).max())
    else:
        assert set(kernels) == {"ntk"}
    idx = rk.training_points(size, size, 0.5, 3, size * size).numpy()
    g = kernels["ntk"][np.ix_(idx, idx)]
    gn = g / (np.trace(g) / len(g))
    assert np.linalg.eigvalsh(gn)[0] > 2e-6  # the default floor (1e-6 trace(G)/n) does not act
    y = torch.rand(len(idx), 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        r0 = y - m64(x[idx])
    q = rk.target_quantities(g, y, r0, ridge=1e-2)
    yc = (y - y.mean()).numpy()[:, 0]
    assert q["bound"] == pytest.approx(np.sqrt(2 * r0.numpy()[:, 0] @ np.linalg.solve(gn, r0.numpy()[:, 0]) / len(g)),
                                       rel=1e-8)
    assert q["bound_centered"] == pytest.approx(np.sqrt(2 * yc @ np.linalg.solve(gn, yc) / len(g)), rel=1e-8)
    assert q["bound_ridge"] == pytest.approx(np.sqrt(2 * yc @ np.linalg.solve(gn + 1e-2 * np.eye(len(g)), yc)
                                                     / len(g)), rel=1e-8)
    assert not q["floored"]
    h = np.eye(len(g)) - 1 / len(g)
    gc = h @ g @ h
    lam = np.linalg.eigvalsh(gc)
    spec = rk.spectrum_quantities(rk.center_kernel(g), topk=4)
    assert spec["effective_rank"] == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-8)
    assert spec["topk_energy"] == pytest.approx(np.sort(lam)[::-1][:4].sum() / lam.sum(), rel=1e-8)
    assert rk.alignment(rk.center_kernel(g), y) == pytest.approx(yc @ gc @ yc / (np.linalg.norm(gc) * yc @ yc),
                                                                   rel=1e-10)
    # the high-frequency share of the centred lattice kernel from the explicit DFT matrix
    full = kernels["ntk"]
    hf = np.eye(len(full)) - 1 / len(full)
    rows, cols = np.divmod(np.arange(size * size), size)  # row-major pixels
    fr = np.fft.fftfreq(size) * size
    om_r, om_c = np.meshgrid(fr, fr, indexing="ij")
    dft = np.exp(-2j * np.pi * (np.outer(om_r.ravel(), rows) + np.outer(om_c.ravel(), cols)) / size)
    s = np.einsum("wi,ij,wj->w", dft, hf @ full @ hf, dft.conj()).real / len(full)
    high = np.hypot(om_r, om_c).ravel() > 2.0
    assert rk.hf_share(rk.center_kernel(full), (size, size), 2.0) == pytest.approx(s[high].sum() / s.sum(), rel=1e-8)


def test_prepare_image_is_the_luminance_centre_crop():
    img = rk.prepare_image("astronaut", 16)
    full = load_image("astronaut", max_size=24)
    top, left = (full.shape[0] - 16) // 2, (full.shape[1] - 16) // 2
    lum = full[top : top + 16, left : left + 16, :3] @ torch.tensor([0.299, 0.587, 0.114])
    assert img.shape == (16, 16, 1) and torch.allclose(img[..., 0], lum)


def test_prepare_image_on_kodak(shared_data):
    path = shared_data / "kodak" / "kodim01.png"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    img = rk.prepare_image(path, 64)
    assert img.shape == (64, 64, 1) and 0 <= float(img.min()) < float(img.max()) <= 1


# -- the command and the benchmark page ----------------------------------------------------------------
TINY = ["--models", "dense", "hash", "mfn", "--images", "camera", "astronaut", "--size", "12", "--budget", "600",
        "--seeds", "0", "1", "--steps", "5", "--resamples", "20"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranking") / "out"
    assert main(["gtk-ranking", "--out", str(out), *TINY]) == 0
    return out, json.loads((out / "gtk_ranking.json").read_text())


def test_cli_smoke_run_writes_the_figure_and_the_numbers(tiny_run):
    out, saved = tiny_run
    assert (out / "gtk_ranking.png").stat().st_size > 0
    assert len(saved["runs"]) == 3 * 2 * 2
    assert {(r["model"], r["image"], r["seed"]) for r in saved["runs"]} == {
        (m, i, s) for m in ("dense", "hash", "mfn") for i in ("camera", "astronaut") for s in (0, 1)}
    mfn = next(r for r in saved["runs"] if r["model"] == "mfn")
    assert "ntk_bound" in mfn and "gtk_bound" not in mfn  # the MLP has no grid GTK
    for r in saved["runs"]:
        assert r["n_train"] == 72 and np.isfinite(r["test_psnr"]) and r["ntk_bound"] > 0
    corr = saved["correlations"]
    assert {"ntk_bound", "gtk_bound", "ntk_effective_rank", "ntk_hf_fraction", "train_psnr"} <= set(corr)
    c = corr["ntk_bound"]
    assert -1 <= c["mean"] <= 1 and c["ci95"][0] <= c["ci95"][1] and set(c["per_image"]) == {"camera", "astronaut"}
    assert np.isnan(corr["gtk_bound"]["mean"])  # two grid models: too few to rank


def test_cli_bad_options_are_one_line(capsys, tmp_path):
    assert main(["gtk-ranking", "--out", str(tmp_path / "a"), "--models", "dense", "nope", "hash"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and err[0].startswith("error: ")
    assert main(["gtk-ranking", "--out", str(tmp_path / "b"), "--size", "200"]) == 2
    assert "--size" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_benchmark_page_from_saved_cells(tiny_run):
    """``benchmarks/gtk_models.py``'s analysis and page from cells in its JSON format (no Kodak needed)."""
    _, saved = tiny_run
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("gtk_models", BENCH / "gtk_models.py")
        gm = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(gm)
    finally:
        sys.path.remove(str(BENCH))
    cfg = rk.RankingConfig(models=("dense", "hash", "mfn"), images=("camera", "astronaut"), size=12, budget=600,
                           seeds=(0, 1), steps=5, resamples=20)
    payload = {"settings": gm.settings_of(cfg), "sizes": saved["sizes"], "params": saved["params"],
               "runs": saved["runs"], "sessions": [{"start": "now", "machine": gm.machine(), "cells": 12,
                                                    "seconds": 1.0}]}
    result = gm.report(payload, cfg, write=False)
    page = gm.markdown(result, cfg, "x\n<!-- BEGIN reading -->\nmine\n<!-- END reading -->\n")
    assert "<!-- BEGIN reading -->\nmine\n<!-- END reading -->" in page
    assert "| NTK: bound B (targets y - O(0)) |" in page and "figures/gtk_models.png" in page
