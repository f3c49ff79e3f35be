"""benchmarks/tournament.py: cells resume (same settings are skipped, changed settings rerun, every finished
cell is on disk at once), and the tables average what was run, checked on hand-made cells."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import tournament  # noqa: E402


@pytest.fixture
def tmp_results(tmp_path, monkeypatch):
    monkeypatch.setattr(tournament, "RESULTS", tmp_path / "tournament.json")
    monkeypatch.setattr(tournament, "SHARED_DATA", tmp_path / "data")
    kodak = tmp_path / "data" / "kodak"
    kodak.mkdir(parents=True)
    for stem in ("kodim01", "kodim02"):
        (kodak / f"{stem}.png").write_bytes(b"")  # never read: the runner is replaced
    return tmp_path / "tournament.json"


def test_cells_resume_and_rerun_on_new_settings(tmp_results, monkeypatch):
    calls = []

    def fake(args, mode, model, path):
        calls.append((mode, model, path.stem))
        if len(calls) == 3:  # an interrupted run: the cells before it are already saved
            raise KeyboardInterrupt
        return {"psnr": 30.0 + len(calls), "ssim": 0.9, "steps": 10, "train_seconds": 1.0, "params": 100}

    monkeypatch.setattr(tournament, "run_image_cell", fake)
    args = tournament.parse_args(["--tasks", "image", "--modes", "steps", "--models", "hash", "mulfagrid"])
    results = tournament.load()
    with pytest.raises(KeyboardInterrupt):
        tournament.run_cells(args, results, "image")
    saved = json.loads(tmp_results.read_text())["cells"]
    assert sorted(saved) == ["image/steps/hash/kodim01", "image/steps/mulfagrid/kodim01"]

    calls.clear()
    tournament.run_cells(args, tournament.load(), "image")  # resumes: only kodim02's cells run
    assert calls == [("steps", "hash", "kodim02"), ("steps", "mulfagrid", "kodim02")]
    calls.clear()
    args = tournament.parse_args(["--tasks", "image", "--modes", "steps", "--models", "hash", "--image-steps", "5"])
    tournament.run_cells(args, tournament.load(), "image")  # new settings: rerun, not reused
    assert calls == [("steps", "hash", "kodim01"), ("steps", "hash", "kodim02")]
    assert json.loads(tmp_results.read_text())["cells"]["image/steps/hash/kodim01"]["settings"]["steps"] == 5


def test_a_changed_preset_reruns_its_cells(tmp_results, monkeypatch):
    calls = []

    def fake(args, mode, model, path):
        calls.append((model, path.stem))
        return {"psnr": 30.0, "ssim": 0.9, "steps": 10, "train_seconds": 1.0, "params": 100}

    monkeypatch.setattr(tournament, "run_image_cell", fake)
    args = tournament.parse_args(["--tasks", "image", "--modes", "steps", "--models", "hash", "dense"])
    tournament.run_cells(args, tournament.load(), "image")
    assert len(calls) == 4
    calls.clear()
    real = tournament.spec_fingerprint
    monkeypatch.setattr(tournament, "spec_fingerprint",  # as if the hash preset had changed
                        lambda task, model, a: real(task, model, a) + ("-new" if model == "hash" else ""))
    tournament.run_cells(args, tournament.load(), "image")
    assert calls == [("hash", "kodim01"), ("hash", "kodim02")]
    # the fingerprint follows the preset: another parameter budget is another spec
    other = tournament.parse_args(["--image-budget", "100000"])
    assert real("image", "hash", args) != real("image", "hash", other)
    assert real("image", "hash", args) != real("image", "dense", args)


def test_table_means_per_model_and_mode():
    def cell(model, mode, psnr, steps):
        return {"task": "image", "mode": mode, "model": model, "psnr": psnr, "ssim": 0.5, "steps": steps,
                "train_seconds": 2.0, "params": 1000}

    cells = [cell("hash", "steps", 30.0, 10), cell("hash", "steps", 32.0, 10), cell("hash", "time", 31.0, 7),
             cell("dense", "steps", 29.0, 10)]
    rows, cols = tournament.table(cells, "image")
    by = {r["model"]: r for r in rows}
    assert by["hash"]["steps: psnr"] == 31.0 and by["hash"]["steps: n"] == 2 and by["hash"]["time: psnr"] == 31.0
    assert "time: psnr" not in by["dense"] and by["dense"]["steps: psnr"] == 29.0
    assert cols[:2] == ["model", "params"] and "time: steps" in cols
    text = tournament.summary({"cells": {str(i): c for i, c in enumerate(cells)}})
    assert "31 (n=2)" in text and "29 (n=1)" in text
    assert "nerf" not in text
    nerf = {"settings": {"time_budget": 300.0},
            "results": [{"model": "hash", "psnr": 31.234, "n_test_views": 200},
                        {"model": "planes", "psnr": 30.5, "n_test_views": 200}]}
    lines = tournament.summary({"cells": {str(i): c for i, c in enumerate(cells)}}, nerf).splitlines()
    assert "nerf psnr (time)" in lines[0]
    hash_row = next(line for line in lines if line.startswith("| hash"))
    assert hash_row.endswith("| 31.23 (200 views) |")
    assert any(line.startswith("| planes") and "30.5 (200 views)" in line for line in lines)  # NeRF-only model
