"""What a run or a benchmark records about the machine it ran on (no work at import)."""

from __future__ import annotations

import os
import platform
import time
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


def speed_probe(seconds: float = 0.3) -> dict:
    """How fast this machine is right now, in the current torch threads: float32 matmul GFLOP/s (1024^2) and
    copy bandwidth GB/s (64 MiB, read + write), each the best of repeats over about ``seconds``. Shared
    machines vary by day; a benchmark records this beside its timings so that days can be compared."""
    def best(fn, work: float) -> float:
        fn()  # warm-up
        rates, t_end = [], time.perf_counter() + seconds / 2
        while not rates or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            fn()
            rates.append(work / max(time.perf_counter() - t0, 1e-9))
        return max(rates)

    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    x = torch.empty(16 * 2**20)
    y = torch.empty_like(x)
    return {"matmul_gflops": round(best(lambda: a @ b, 2 * n**3) / 1e9, 1),
            "copy_gbps": round(best(lambda: y.copy_(x), 2 * x.numel() * 4) / 1e9, 1)}
