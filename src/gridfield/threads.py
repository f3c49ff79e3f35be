"""Thread-count control for small tensor work (no state: every change is restored on exit)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the enclosed tensor work on one torch thread (the previous count is restored afterwards).

    Small problems (hundreds of points) pay more for thread synchronization than they save; on a busy
    2-core machine two torch threads made the GTK analysis loops 10-40x slower (measured).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
