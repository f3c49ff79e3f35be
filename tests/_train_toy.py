"""A tiny regression task for the training-core tests (also run by torchrun in test_training.py)."""

from __future__ import annotations

import sys

import torch

from gridfield.models import build_field
from gridfield.training import TrainConfig, TrainTask, distributed, train


class ToyTask(TrainTask):
    """Fit ``sin(3 x) cos(2 y)`` with a small dense grid + MLP from random batches of a fixed pool."""

    eval_every = 5

    def __init__(self, batch: int, seed: int = 0):
        torch.manual_seed(seed)
        self.module = build_field("dense", 2, 1, "mlp", {"width": 8, "hidden_layers": 1},
                                  resolutions=[5, 9], features_per_level=2)
        g = torch.Generator().manual_seed(123)
        self.x = torch.rand(512, 2, generator=g) * 2 - 1
        self.y = (torch.sin(3 * self.x[:, :1]) * torch.cos(2 * self.x[:, 1:]))
        self.batch = batch

    def batch_loss(self, step, gen):
        info = distributed.current()
        idx = torch.randint(len(self.x), (self.batch * info.world,), generator=gen)[info.shard(self.batch * info.world)]
        return (self.module(self.x[idx]) - self.y[idx]).pow(2).mean(), {}

    def evaluate(self, step):
        with torch.no_grad():
            return {"mse": float((self.module(self.x) - self.y).pow(2).mean())}


def flat(module) -> torch.Tensor:
    """Every parameter, flattened and concatenated."""
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


if __name__ == "__main__":  # torchrun --nproc-per-node N _train_toy.py BATCH STEPS OUT
    batch, steps, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(1)
    info = distributed.setup(torch.device("cpu"))
    task = ToyTask(batch)
    train(task, TrainConfig(steps=steps, progress=False), 5e-2, 1e-2)
    if info.is_main:
        torch.save(flat(task.module), out)
    distributed.teardown()
