"""When to render: a quick preview while the view changes, the full resolution once it settles.

A :class:`Progressive` schedule is plain state, driven by the clock it is given (tests pass their own):
``moved(now)`` when the camera moves (the view keeps changing), ``changed()`` when a setting changes (a
single change: render it at full resolution straight away), ``next(now)`` the render to do now
(``"preview"``, ``"full"`` or None) and ``done(ticket)`` once it has been shown.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

PREVIEW, FULL = "preview", "full"


@dataclass(frozen=True)
class Ticket:
    """A render to do: its ``quality`` (``"preview"`` or ``"full"``) and the view ``version`` it shows."""

    quality: str
    version: int


class Progressive:
    """Preview while the view moves, full resolution when it has been still for ``settle`` seconds.

    Thread-safe: viser's callbacks call :meth:`moved` / :meth:`changed` while a render thread asks
    :meth:`next`. Nothing is rendered twice: a full render of the current view ends the work until
    the next change.
    """

    def __init__(self, settle: float = 0.25):
        self.settle = settle
        self._lock = threading.Lock()
        self._version = 0  # bumped by every change of the view
        self._last_move = float("-inf")  # time of the last camera movement
        self._shown: Ticket | None = None  # the last render shown

    def moved(self, now: float) -> None:
        """The camera moved at time ``now``: preview until it settles."""
        with self._lock:
            self._version += 1
            self._last_move = now

    def changed(self) -> None:
        """A setting changed (resolution, RGB/depth, ...): render the view again."""
        with self._lock:
            self._version += 1

    def next(self, now: float) -> Ticket | None:
        """The render to do at time ``now``, or None when the picture shown is already the full one."""
        with self._lock:
            still = now - self._last_move >= self.settle
            shown = self._shown
            if shown is not None and shown.version == self._version and (shown.quality == FULL or not still):
                return None
            return Ticket(FULL if still else PREVIEW, self._version)

    def done(self, ticket: Ticket) -> None:
        """``ticket``'s picture is on screen."""
        with self._lock:
            self._shown = ticket

    def settled_at(self) -> float:
        """When the view will count as still (for a render loop that wants to sleep until then)."""
        with self._lock:
            return self._last_move + self.settle
