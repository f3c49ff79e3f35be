"""Benchmark helpers: the machine speed probe, the orbit contact sheet (against the frames written into a
video by imageio) and nerf_lego's reuse rule for the learning-rate schedule."""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _report  # noqa: E402
import nerf_captures  # noqa: E402
import nerf_lego  # noqa: E402
from gridfield.machine import speed_probe  # noqa: E402


def test_speed_probe_and_its_text():
    p = speed_probe(seconds=0.05)
    assert p["matmul_gflops"] > 0.1 and p["copy_gbps"] > 0.01
    assert _report.probe_text({"probe": {"matmul_gflops": 119.6, "copy_gbps": 10.8}}) == "probe 120 GFLOP/s, 11 GB/s"
    assert _report.probe_text({}) == ""  # records from before the probe


def test_orbit_sheet_tiles_evenly_spaced_frames(tmp_path):
    iio = pytest.importorskip("imageio.v3")
    colours = np.linspace(0, 255, 10).round().astype(np.uint8)
    frames = np.stack([np.full((32, 16, 3), c, np.uint8) for c in colours])  # flat grey frames
    iio.imwrite(tmp_path / "v.gif", frames, loop=0)
    out = nerf_captures.orbit_sheet(tmp_path / "v.gif", tmp_path / "sheet.png", n=4, cols=3, width=16)
    sheet = iio.imread(out)
    assert sheet.shape[:2] == (64, 48)  # 2 rows of 3 tiles (the last two blank), 16x32 each
    centres = [sheet[16 + 32 * (i // 3), 8 + 16 * (i % 3), 0] for i in range(6)]
    picked = colours[[0, 3, 6, 9]]  # frames 0, 3, 6 and 9 of 10
    assert np.abs(np.array(centres[:4], int) - picked).max() <= 2 and centres[4] == centres[5] == 255
    known = nerf_captures.orbit_sheet(tmp_path / "v.gif", tmp_path / "known.png", n=4, cols=3, width=16, frames=10)
    assert np.array_equal(iio.imread(known), sheet)  # the caller's frame count picks the same frames


def test_nerf_lego_reuses_a_run_only_with_its_schedule(tmp_path):
    args = argparse.Namespace(resolution=128, batch_rays=4096, downscale=1, test_views=10, curve_views=10,
                              time_budget=300.0, lr_schedule="exp")
    config = {"model": "hash", "resolution": 128, "batch_rays": 4096, "downscale": 1, "test_views": 10,
              "curve_views": 10, "train": {"time_budget": 300.0}}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"config": config}))  # a run from before --lr-schedule: the exponential decay
    assert nerf_lego.finished(path, args, "hash") is not None
    assert nerf_lego.finished(path, argparse.Namespace(**{**vars(args), "lr_schedule": "step"}), "hash") is None
    path.write_text(json.dumps({"config": {**config, "lr_schedule": "step"}}))
    assert nerf_lego.finished(path, args, "hash") is None
