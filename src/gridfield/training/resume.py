"""Resumable training state: saved atomically, checked against the run's options on resume, and the
SIGINT/SIGTERM guard that turns an interrupt into "save the state at the end of this step, then stop".
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from pathlib import Path
from typing import Any

import torch

from gridfield.errors import InputError
from gridfield.outdir import write_file_atomically

STATE_FORMAT = "gridfield.train-state/1"


def state_dir() -> Path:
    """Folder of resumable training states: ``$GRIDFIELD_STATE_DIR``, default ``~/.cache/gridfield/resume``."""
    return Path(os.environ.get("GRIDFIELD_STATE_DIR") or Path.home() / ".cache" / "gridfield" / "resume")


def state_path_for(out: Path) -> Path:
    """The resumable state of the run writing ``out``: ``<state_dir>/<name>-<hash of the absolute path>.pt``.

    It lives outside the output folder and its parents, so an interrupted or failed run leaves the
    user's folders exactly as they were; a run that completes removes it.
    """
    out = Path(os.path.abspath(out))
    return state_dir() / f"{out.name}-{hashlib.sha1(str(out).encode()).hexdigest()[:12]}.pt"


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors and plain data) to ``path`` atomically (a crash keeps the previous one)."""
    write_file_atomically(path, lambda tmp: torch.save({"format": STATE_FORMAT, **state}, tmp))


def load_state(path: Path, key: dict[str, Any]) -> dict[str, Any]:
    """Read the state at ``path``; ``InputError`` when unreadable or saved with other options than ``key``."""
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise InputError(f"cannot read the saved training state {str(path)!r}: {type(e).__name__}") from None
    need = ("step", "seconds", "module", "optimizer", "gen", "torch_rng", "task", "history", "key")
    if not isinstance(st, dict) or st.get("format") != STATE_FORMAT or any(k not in st for k in need):
        raise InputError(f"{str(path)!r} is not a gridfield training state; run without --resume")
    diff = sorted(k for k in set(key) | set(st["key"]) if key.get(k) != st["key"].get(k))
    if diff:
        shown = ", ".join(f"{k}: saved {st['key'].get(k)!r}, now {key.get(k)!r}" for k in diff[:3])
        raise InputError(f"--resume: the saved state {str(path)!r} was made with other options ({shown}); "
                         "rerun with the same options, or without --resume to start again")
    return st


class InterruptGuard:
    """Context manager: the first SIGINT/SIGTERM sets :attr:`requested` (the loop saves and stops at the
    end of the step); a second one interrupts at once. Outside the main thread it does nothing."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()
