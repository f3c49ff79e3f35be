"""What a run or a benchmark records about the machine it ran on (no work at import)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: torch.device | str | None = None) -> dict:
    """CPU, cores, torch threads, the device (the GPU's name on CUDA; default: the first GPU when there is
    one, else ``"cpu"``), torch, Python and OS versions."""
    if device is None:
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": name,
            "torch": torch.__version__, "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}"}
