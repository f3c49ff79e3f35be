"""Data-parallel training with ``torch.distributed`` (``torchrun --nproc-per-node N``, DDP).

A run started by torchrun sees ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in its environment;
:func:`setup` then joins the process group (gloo on CPU, NCCL on CUDA). Every rank draws the same
global batch from the same seeded generator and keeps its own slice (:meth:`DistInfo.shard`), so N
processes with batch B see exactly the samples of one process with batch N*B; DDP averages the
gradients. Rank 0 evaluates, shows progress and writes the outputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gridfield.errors import InputError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world`` (1 without torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the one that evaluates and writes)."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's slice of a global batch of ``n`` items (``n`` must divide by ``world``)."""
        per = n // self.world
        return slice(self.rank * per, (self.rank + 1) * per)


def current() -> DistInfo:
    """This process's place in the running process group (rank 0 of 1 when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()


def setup(device: torch.device) -> DistInfo:
    """Join the torchrun process group when the environment names one; returns this rank's place.

    On CUDA each rank takes the GPU ``LOCAL_RANK``. Without torchrun (no ``WORLD_SIZE``, or 1) this
    does nothing.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        try:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        except (RuntimeError, ValueError) as e:
            raise InputError(f"cannot join the torchrun process group: {str(e).splitlines()[0]}") from None
    return current()


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` under torchrun on CUDA, else ``device``."""
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def broadcast_float(value: float, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank (so all ranks stop at the same step under a time budget)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return float(t)


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    """Leave the process group (no-op without one), after a barrier: a rank that destroyed its group while
    another still finished its work aborted now and then under load ("terminate called without an active
    exception" in gloo, about 1 run in 10 on the busy 2-core machine)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
