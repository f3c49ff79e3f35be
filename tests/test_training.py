"""The training core (gridfield.training): schedules, hook order, divergence, resume, torchrun/DDP."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _train_toy import ToyTask, flat
from gridfield.errors import InputError
from gridfield.training import DivergedError, Hook, TrainConfig, cosine, exponential, multistep, progress, train

HERE = Path(__file__).resolve().parent


def test_progress_and_schedules():
    assert progress(30, 100) == 0.3
    assert progress(30, 100, seconds=6.0, time_budget=10.0) == 0.6  # whichever ends first
    c = cosine(final=0.01)
    assert c(0.0) == pytest.approx(1.0) and c(1.0) == pytest.approx(0.01)
    assert cosine(final=0.0)(0.5) == pytest.approx(0.5)
    assert cosine(final=0.01, warmup=0.1)(0.05) == pytest.approx(0.5)
    assert exponential(0.1)(0.5) == pytest.approx(0.1**0.5) and exponential(0.1)(1.0) == pytest.approx(0.1)
    s = multistep((0.5, 0.75, 0.9), 0.33)  # Instant-NGP / nerfacc: flat, then x0.33 at each milestone
    assert [s(p) for p in (0.0, 0.499, 0.5, 0.8, 0.95)] == pytest.approx([1, 1, 0.33, 0.33**2, 0.33**3])
    w = multistep((0.5,), 0.1, warmup=0.2)  # linear warm-up from 1%
    assert [w(0.0), w(0.1), w(0.2), w(0.6)] == pytest.approx([0.01, 0.505, 1.0, 0.1])


def test_hook_order_and_lr_follow_the_schedule():
    seen = []

    class Probe(Hook):
        def step_pre_backward(self, step, module, loss):
            seen.append(("pre", step, all(p.grad is None for p in module.parameters())))

        def step_post_backward(self, step, module, loss):
            seen.append(("post", step, all(p.grad is not None for p in module.parameters())))

    task = ToyTask(16)
    res = train(task, TrainConfig(steps=4, progress=False), 0.1, 0.01,
                hooks=[Probe(), lambda s, m, loss: seen.append(("end", s, True))])
    assert seen[:3] == [("pre", 0, True), ("post", 0, True), ("end", 0, True)]
    assert [s for s in seen if s[0] == "end"][-1][1] == 3 and all(ok for *_, ok in seen)
    assert res.steps == 4 and [h["step"] for h in res.history] == [0, 4]
    assert res.history[-1]["lr_grid"] == pytest.approx(0.1 * cosine()(3 / 4))


def test_time_budget_stops_early():
    res = train(ToyTask(16), TrainConfig(steps=10**7, time_budget=0.5, progress=False), 0.1, 0.01)
    assert 1 <= res.steps < 10**7 and res.seconds >= 0.5


def test_divergence_is_one_clear_error():
    with pytest.raises(DivergedError, match=r"loss became (nan|inf) by step \d+; lower --lr-grid"):
        train(ToyTask(16), TrainConfig(steps=50, progress=False), 1e30, 1e30)


def test_resume_is_bit_exact(tmp_path):
    """SIGINT at step 7 saves the state; --resume then ends with exactly the uninterrupted parameters."""
    straight = ToyTask(32)
    train(straight, TrainConfig(steps=20, progress=False), 5e-2, 1e-2)
    state = tmp_path / ".run.resume.pt"
    cfg = TrainConfig(steps=20, progress=False, checkpoint_every=0)
    first = ToyTask(32)
    key = {"model": "toy", "steps": 20}

    def interrupt(step, module, loss):
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train(first, cfg, 5e-2, 1e-2, hooks=[interrupt], state_path=state, resume_key=key)
    assert state.is_file()
    second = ToyTask(32, seed=99)  # a fresh process would build the field anew
    res = train(second, TrainConfig(steps=20, progress=False, resume=True), 5e-2, 1e-2, state_path=state,
                resume_key=key)
    assert res.resumed_from == 8 and res.steps == 20
    assert torch.equal(flat(second.module), flat(straight.module))
    with pytest.raises(InputError, match="other options"):
        train(ToyTask(32), TrainConfig(steps=20, progress=False, resume=True), 5e-2, 1e-2, state_path=state,
              resume_key={"model": "toy", "steps": 21})
    with pytest.raises(InputError, match="no saved training state"):
        train(ToyTask(32), TrainConfig(steps=20, progress=False, resume=True), 5e-2, 1e-2,
              state_path=tmp_path / "missing.pt")


def test_torchrun_two_gloo_processes_match_one_with_twice_the_batch(tmp_path):
    """2 ranks x batch 16 (DDP, gloo) == 1 process x batch 32 on the same samples, to 1e-6 (float32 sums)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    out = tmp_path / "ddp.pt"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--tee", "3",
                        "--master-port", str(29500 + os.getpid() % 1000), str(HERE / "_train_toy.py"), "16", "20",
                        str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]  # --tee: the ranks' own output too
    single = ToyTask(32)
    train(single, TrainConfig(steps=20, progress=False), 5e-2, 1e-2)
    ddp = torch.load(out)
    assert not torch.equal(ddp, flat(ToyTask(32).module))  # it trained
    gap = float((ddp - flat(single.module)).abs().max())
    assert torch.allclose(ddp, flat(single.module), atol=1e-6, rtol=1e-5), gap
