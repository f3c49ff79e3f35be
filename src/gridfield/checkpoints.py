"""Reading and writing the tasks' checkpoints (one tagged dict per file, tensors on the CPU)."""

from __future__ import annotations

from pathlib import Path

import torch

from gridfield.errors import InputError


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` detached and moved to the CPU (what a checkpoint stores)."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def read_checkpoint(path: str | Path, fmt: str, what: str) -> dict:
    """Load a checkpoint dict whose ``"format"`` is ``fmt``; ``InputError`` naming the file otherwise.

    ``what`` names the kind in the error (``"image"``, ``"SDF"``, ``"NeRF"``). Loads with
    ``weights_only=True`` (no arbitrary code from the file).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint {str(p)!r} not found")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise InputError(f"cannot read checkpoint {str(p)!r}: {type(e).__name__}") from None
    if not isinstance(ck, dict) or ck.get("format") != fmt:
        raise InputError(f"{str(p)!r} is not a gridfield {what} checkpoint (format {fmt})")
    return ck
