"""Task commands on the training core: interrupt + --resume, atomic outputs, one-line errors."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from gridfield.cli import main
from gridfield.outdir import MARKER
from gridfield.tasks.image_fit import ImageTask
from gridfield.tasks.nerf_train import NerfTask

pytestmark = pytest.mark.usefixtures("one_thread")
IMAGE = ["image", "camera", "--model", "dense", "--max-size", "32", "--param-budget", "3000", "--steps", "30",
         "--batch-size", "256", "--eval-every", "10", "--no-progress", "--checkpoint-every", "0"]


def _interrupt_at(monkeypatch, cls, at: int):
    original = cls.batch_loss

    def batch_loss(self, step, gen):
        if step == at:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, step, gen)

    monkeypatch.setattr(cls, batch_loss.__name__, batch_loss)


def _state(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_image_interrupt_then_resume_is_bit_exact(tmp_path, monkeypatch, capsys):
    assert main([*IMAGE, "--out", str(tmp_path / "straight")]) == 0
    with monkeypatch.context() as m:
        _interrupt_at(m, ImageTask, 12)
        assert main([*IMAGE, "--out", str(tmp_path / "run")]) == 130
    assert "--resume" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["straight"]
    assert main([*IMAGE, "--out", str(tmp_path / "run"), "--resume"]) == 0
    a, b = _state(tmp_path / "straight" / "checkpoint.pt"), _state(tmp_path / "run" / "checkpoint.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert main([*IMAGE, "--out", str(tmp_path / "run"), "--resume"]) == 2  # the state is gone after success
    assert "no saved training state" in capsys.readouterr().err


def test_resume_with_other_options_is_refused(tmp_path, monkeypatch, capsys):
    with monkeypatch.context() as m:
        _interrupt_at(m, ImageTask, 3)
        assert main([*IMAGE, "--out", str(tmp_path / "run")]) == 130
    assert main([*IMAGE, "--out", str(tmp_path / "run"), "--resume", "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: --resume") and "seed" in err and not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory):
    pytest.importorskip("trimesh")
    from gridfield.data.scene_maker import make_scene

    return make_scene("torus_knot", tmp_path_factory.mktemp("scene") / "s", views=8, test_views=2, size=16)


def _nerf(scene, out, *extra):
    return ["nerf", str(scene), "--resolution", "16", "--batch-rays", "256", "--occ-resolution", "16",
            "--occ-start", "4", "--occ-every", "4", "--turntable-frames", "0", "--no-progress",
            "--checkpoint-every", "0", "--out", str(out), *extra]


def test_nerf_interrupt_leaves_no_output_and_resumes(tmp_path, tiny_scene, monkeypatch, capsys):
    before = sorted(p.name for p in tmp_path.iterdir())
    with monkeypatch.context() as m:
        _interrupt_at(m, NerfTask, 5)
        assert main(_nerf(tiny_scene, tmp_path / "out", "--steps", "12")) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written, no temp folders
    assert main(_nerf(tiny_scene, tmp_path / "out", "--steps", "12", "--resume")) == 0
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"metrics.json", "checkpoint.pt", "test_000.png", MARKER} <= names
    # the resumed run crossed the dense refits (at 10/20/30% progress) and ends where a straight run ends
    assert main(_nerf(tiny_scene, tmp_path / "straight", "--steps", "12")) == 0
    a, b = _state(tmp_path / "straight" / "checkpoint.pt"), _state(tmp_path / "out" / "checkpoint.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nerf_divergence_is_one_line(tmp_path, tiny_scene, capsys):
    code = main(_nerf(tiny_scene, tmp_path / "out", "--steps", "40", "--lr-grid", "1e30", "--lr-other", "1e30"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: training diverged"), err
    assert "step" in err[0] and "--lr-grid" in err[0] and not (tmp_path / "out").exists()


def test_image_command_under_torchrun_two_ranks(tmp_path):
    """The CLI under torchrun (2 gloo ranks): one output folder, written once by rank 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        str(30500 + os.getpid() % 1000), "-m", "gridfield.cli", *IMAGE, "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["steps"] == 30 and m["psnr"] > 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_nerf_lr_schedule_step_reaches_its_milestones(tmp_path, tiny_scene):
    """--lr-schedule step: flat, then x0.33 at 50, 75 and 90% of the steps (the history's lr_grid)."""
    assert main(_nerf(tiny_scene, tmp_path / "out", "--steps", "20", "--model", "hash", "--lr-grid", "0.01",
                      "--lr-schedule", "step")) == 0
    hist = json.loads((tmp_path / "out" / "history.json").read_text())
    last = [r for r in hist if "lr_grid" in r][-1]
    assert last["step"] == 20 and last["lr_grid"] == pytest.approx(0.01 * 0.33**3)
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["config"]["lr_schedule"] == "step"


def test_nerf_distortion_weight_enters_the_loss(tmp_path, tiny_scene):
    """--distortion-weight: the history's loss is the squared error (from train_psnr) plus the weighted
    distortion loss, which is positive wherever a ray has weight; with weight 0 the two are equal."""
    def loss_minus_mse(out, *extra):
        assert main(_nerf(tiny_scene, out, "--steps", "20", "--model", "hash", *extra)) == 0
        row = [r for r in json.loads((out / "history.json").read_text()) if "loss" in r][-1]
        return row["loss"] - 10 ** (-row["train_psnr"] / 10)

    assert loss_minus_mse(tmp_path / "off") == pytest.approx(0.0, abs=1e-6)
    assert loss_minus_mse(tmp_path / "on", "--distortion-weight", "1.0") > 1e-4
    m = json.loads((tmp_path / "on" / "metrics.json").read_text())
    assert m["config"]["distortion_weight"] == 1.0
