"""The gtk-* analyses at tiny sizes: outputs written, numbers consistent with direct computations."""

import json

import numpy as np

from _gtk_models import one_torch_thread  # noqa: F401 (autouse fixture)
from gridfield.analyses.bound_map import BoundMapConfig, two_point_quadratic
from gridfield.analyses.bound_map import run as run_bound_map
from gridfield.analyses.spectra import SpectraConfig
from gridfield.analyses.spectra import run as run_spectra
from gridfield.cli import main


def test_two_point_quadratic_closed_form():
    g = np.array([[2.0, 0.5], [0.5, 1.0]])
    ys = np.array([[1.0, 0.0], [0.3, -0.7]])
    det = 2.0 - 0.25
    expected = [(g[1, 1] * a * a - 2 * g[0, 1] * a * b + g[0, 0] * b * b) / det for a, b in ys]
    q, singular = two_point_quadratic(g, ys, 1e-6)
    np.testing.assert_allclose(q, expected, rtol=1e-12)
    assert not singular
    q1, singular = two_point_quadratic(np.ones((2, 2)), ys, 1e-6)  # rank one: ridge
    assert singular and np.isfinite(q1).all()


def test_spectra_and_bound_map_write_outputs(tmp_path):
    p = run_spectra(SpectraConfig(out=tmp_path / "a", models=("dense", "planes"), n1d=16, side2d=6))
    saved = json.loads((tmp_path / "a" / "gtk_spectra.json").read_text())
    assert saved["lattices"]["1d"]["skipped"] == ["planes"]  # planes need 2D inputs
    d2 = saved["lattices"]["2d"]["models"]
    assert set(d2) == {"dense", "planes"} and all((tmp_path / "a").glob("*.png"))
    assert len(p["figures"]) == 4
    for m in d2.values():  # G is PSD, so every S(omega) = e^H G e / n is >= 0
        f = np.array(m["fourier_normalized"])
        assert f.min() >= -1e-9
    b = run_bound_map(BoundMapConfig(out=tmp_path / "b", models=("dense", "hash"), seeds=2, resolution=5))
    assert b["models"]["dense"]["mean_over_square"] > 0 and (tmp_path / "b" / "gtk_bound_map_differences.png").exists()


def test_cli_bad_input_is_one_line(capsys, tmp_path):
    assert main(["gtk-spectra", "--models", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nope" in err[0]
    assert main(["gtk-bound-map", "--x1", "3", "0", "--out", str(tmp_path)]) == 2
    assert "outside the domain" in capsys.readouterr().err
