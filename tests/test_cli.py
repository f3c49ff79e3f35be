"""``gridfield image`` / ``image-render``: outputs, one-line errors, nothing half-written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from gridfield.cli import main
from gridfield.data.images import load_image
from gridfield.outdir import MARKER, write_dir_atomically

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def small_png(tmp_path) -> Path:
    """32x32 RGB crop of the astronaut, as a PNG file."""
    img = (load_image("astronaut")[80:112, 220:252].numpy() * 255 + 0.5).astype(np.uint8)
    path = tmp_path / "small.png"
    iio.imwrite(path, img)
    return path


TINY = ["--model", "dense", "--param-budget", "3100", "--steps", "30", "--eval-every", "10", "--no-progress"]


def test_image_run_writes_outputs_and_render(tmp_path, small_png, capsys):
    out = tmp_path / "run"
    assert main(["image", str(small_png), *TINY, "--holdout", "0.2", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"metrics.json", "reconstruction.png", "error_map.png", "psnr_curve.png", "checkpoint.pt"} <= names
    m = json.loads((out / "metrics.json").read_text())
    for key in ("model", "params", "steps", "psnr", "ssim", "train_seconds", "test_psnr", "image", "shape",
                "device", "seed", "config"):
        assert key in m, key
    assert m["model"] == "dense" and m["params"] == 32 * 32 * 3 and m["shape"] == [32, 32, 3]
    assert m["test_psnr"] < m["psnr"]
    recon = iio.imread(out / "reconstruction.png")
    assert recon.shape == (32, 32, 3)
    # the PNG is the clamped field quantised to 8 bits: its PSNR against the input matches metrics.json
    target = iio.imread(small_png).astype(np.float64) / 255
    mse = np.mean((recon / 255.0 - target) ** 2)
    assert -10 * np.log10(mse) == pytest.approx(m["full_psnr"], abs=0.3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary dirs left
    png = tmp_path / "big.png"
    assert main(["image-render", str(out / "checkpoint.pt"), "--height", "50", "--width", "40", "--out", str(png)]) == 0
    assert iio.imread(png).shape == (50, 40, 3)
    assert main(["image-render", str(out / "checkpoint.pt"), "--width", "64", "--out", str(png)]) == 0
    assert iio.imread(png).shape == (64, 64, 3)  # aspect ratio kept


def _bad_inputs(tmp_path: Path, small_png: Path) -> dict[str, list[str]]:
    (tmp_path / "junk.png").write_bytes(b"\x89PNG but not really")
    iio.imwrite(tmp_path / "tiny.png", np.zeros((4, 4, 3), np.uint8))
    nan = np.full((16, 16), 0.5, np.float32)
    nan[2, 2] = np.nan
    iio.imwrite(tmp_path / "nan.tif", nan)
    (tmp_path / "empty.png").write_bytes(b"")
    return {
        "not found": ["image", str(tmp_path / "missing.png")],
        "cannot read": ["image", str(tmp_path / "junk.png")],
        "too small": ["image", str(tmp_path / "tiny.png")],
        "NaN": ["image", str(tmp_path / "nan.tif")],
        "cannot read image": ["image", str(tmp_path / "empty.png")],
        "unknown model": ["image", str(small_png), "--model", "nope"],
        "nrecognized": ["image", str(small_png), "--no-such-option", "3"],
        "invalid choice": ["image", str(small_png), "--holdout-pattern", "diagonal"],
        "--steps": ["image", str(small_png), "--steps", "0"],
        "--holdout": ["image", str(small_png), "--holdout", "1.5"],
        "parsing --steps": ["image", str(small_png), "--steps", "many"],
        "not usable": ["image", str(small_png), "--device", "nosuchdevice"],
        "checkpoint": ["image-render", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "out" / "r.png")],
    }


def test_bad_inputs_give_one_line_error_and_write_nothing(tmp_path, small_png, capsys):
    cases = _bad_inputs(tmp_path, small_png)
    before = sorted(p.name for p in tmp_path.iterdir())
    for msg, args in cases.items():
        capsys.readouterr()
        rc = main([*args, "--out", str(tmp_path / "out")] if args[0] == "image" else args)
        err = capsys.readouterr().err.strip()
        assert rc == 2, (args, err)
        assert err.startswith("error: ") and "\n" not in err and msg in err, (msg, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, args  # nothing written


def test_failure_while_writing_keeps_previous_output(tmp_path, small_png, monkeypatch):
    out = tmp_path / "run"
    write_dir_atomically(out, lambda d: (d / "old.txt").write_text("previous run"))  # a previous output

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("gridfield.tasks.image.save_psnr_curve", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        main(["image", str(small_png), *TINY, "--steps", "2", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "old.txt"]
    assert (out / "old.txt").read_text() == "previous run"
    with pytest.raises(RuntimeError, match="disk full"):  # new parent folders are removed too
        main(["image", str(small_png), *TINY, "--steps", "2", "--out", str(tmp_path / "a" / "b" / "run")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "small.png"]


def test_console_script_tiny_run(tmp_path, small_png):
    exe = Path(sys.executable).with_name("gridfield")
    if not exe.exists():
        pytest.skip(f"console script not installed at {exe}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    ok = subprocess.run([str(exe), "image", str(small_png), *TINY, "--steps", "5", "--out", str(out)],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((out / "metrics.json").read_text())["steps"] == 5
