"""``gridfield view CHECKPOINT [--port P] [--host H]``: look at a trained field in the browser.

Checks the options and the address before loading anything, loads the checkpoint with its task's
loader (:func:`gridfield.viewer.scenes.load_scene`), starts the viser server
(:class:`gridfield.viewer.app.Viewer`), prints the address and serves until Ctrl-C (or SIGTERM),
which stops the server and exits with status 130 through the CLI.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from gridfield.errors import InputError, missing_extra
from gridfield.training import check_options, resolve_device
from gridfield.viewer.scenes import load_scene


@dataclass
class ViewConfig:
    """Open a trained image, SDF or NeRF checkpoint in a browser viewer (viser)."""

    checkpoint: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="CHECKPOINT")]
    """checkpoint.pt written by gridfield image, sdf or nerf."""
    port: int = 8080
    """TCP port to listen on (0: any free port)."""
    host: str = "127.0.0.1"
    """Address to listen on; the default serves this machine only (0.0.0.0: every interface)."""
    resolution: int = 512
    """Initial render width in pixels (image and NeRF views; a slider changes it)."""
    device: str = "auto"
    """Device of the NeRF renders: auto (CUDA when available), cpu, cuda, cuda:1, ..."""


def check_address(host: str, port: int) -> int:
    """The port to listen on, after checking that ``host:port`` can be bound now (``port`` 0: a free one).

    ``InputError`` naming the address for an unknown host, a port in use or one that needs privileges.
    """
    check_options(("--port", port, 0 <= port <= 65535, "in 0..65535"))
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise InputError(f"--host {host!r} is not an address of this machine ({e}); use 127.0.0.1, 0.0.0.0 or "
                         "one of its interfaces' addresses") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            why = {errno.EADDRINUSE: "the port is in use", errno.EACCES: "the port needs privileges",
                   errno.EADDRNOTAVAIL: "the address is not one of this machine's"}.get(e.errno, e.strerror)
            raise InputError(f"cannot listen on {host}:{port}: {why}; choose another --port or --host") from None
        return s.getsockname()[1]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def start(cfg: ViewConfig):
    """Check, load and start: the running :class:`~gridfield.viewer.app.Viewer` (tests stop it themselves)."""
    check_options(("--resolution", cfg.resolution, 16 <= cfg.resolution <= 8192, "in 16..8192"))
    port = check_address(cfg.host, cfg.port)
    try:
        import viser  # noqa: F401  # deferred: the optional view extra
    except ImportError as e:
        raise missing_extra("viser", "view", "gridfield view", e) from None
    scene = load_scene(cfg.checkpoint, resolve_device(cfg.device))
    from gridfield.viewer.app import Viewer  # deferred: imports viser (the optional view extra)

    return Viewer(scene, cfg.host, port, cfg.resolution, label=f"gridfield · {Path(cfg.checkpoint).name}")


def run(cfg: ViewConfig) -> None:
    """CLI entry of ``gridfield view``: serve until interrupted (Ctrl-C: exit status 130)."""
    viewer = start(cfg)
    try:
        note = "" if _is_loopback(cfg.host) else f" (listening on {cfg.host}: other machines can connect)"
        print(f"gridfield view: {viewer.scene.kind} checkpoint {str(cfg.checkpoint)!r} at {viewer.url}{note}; "
              "Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    finally:
        viewer.stop()
