"""Build and load gridfield's C++ fast paths on first use, cached on disk; fall back cleanly.

Nothing is compiled at import: :func:`load_extension` compiles a source set the first time a fast path
asks for it (one message on stderr), and later processes load the cached library. The cache lives in
``$GRIDFIELD_CACHE`` (default ``~/.cache/gridfield``) under ``extensions/<name>-<hash>``, where the
hash covers the sources, the compiler flags, the torch version, the Python version and the checkout's
source folder (torch rebuilds whenever the source paths change, so two checkouts sharing one cache
would otherwise rebuild each other's library in turn), so an edit or an upgrade rebuilds and nothing
stale is loaded. A build lock left by a killed build (older than :data:`STALE_LOCK_SECONDS`) is removed.

Where a compiler, ninja or the torch headers are missing, or the build fails, :func:`load_extension`
returns ``None`` after one warning line and the caller uses its plain-PyTorch reference.

Backend choice, shared by every fast path: ``backend="auto" | "fast" | "reference"``; ``"auto"`` reads
``$GRIDFIELD_FAST`` (``0`` forces the references everywhere, ``1`` is the default: fast where it
exists). ``"fast"`` raises when the fast path cannot be built.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import time
import warnings
from functools import cache
from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parent / "csrc"
CFLAGS = ("-O3", "-fopenmp", "-fno-math-errno")
LDFLAGS = ("-fopenmp",)
BACKENDS = ("auto", "fast", "reference")


class FastPathUnavailable(RuntimeError):
    """Raised when ``backend="fast"`` is forced but the fast path cannot be built or does not apply."""


def cache_dir() -> Path:
    """Root of gridfield's on-disk cache (``$GRIDFIELD_CACHE`` or ``~/.cache/gridfield``)."""
    return Path(os.environ.get("GRIDFIELD_CACHE", Path.home() / ".cache" / "gridfield"))


def check_backend(backend: str) -> str:
    """Validate a backend name; resolve ``"auto"`` against ``$GRIDFIELD_FAST``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto" and os.environ.get("GRIDFIELD_FAST", "1").strip() in ("0", "false", "no", "off"):
        return "reference"
    return backend


def _digest(name: str, sources: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for s in sources:
        h.update((CSRC / s).read_bytes())
    h.update(" ".join(CFLAGS + LDFLAGS).encode())
    h.update(f"{torch.__version__}|{sys.version_info[:2]}|{platform.machine()}".encode())
    h.update(str(CSRC).encode())  # torch rebuilds when the source paths change: one build per checkout
    return f"{name}-{h.hexdigest()[:12]}"


def _ninja_on_path() -> None:
    """Let torch find the ``ninja`` that pip installed next to this Python (venv not activated)."""
    if shutil.which("ninja") is None:
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass


STALE_LOCK_SECONDS = 600  # a build takes about a minute; a lock older than this was left by a killed build


def _drop_stale_lock(build: Path) -> None:
    """Remove torch's build lock left by a build that was killed (else every later run waits on it)."""
    lock = build / "lock"
    try:
        if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            lock.unlink()
            print(f"gridfield: removed a stale build lock in {build} (an earlier build was interrupted)",
                  file=sys.stderr, flush=True)
    except OSError:
        pass


@cache
def load_extension(name: str, sources: tuple[str, ...]):
    """The compiled module for ``csrc/<sources>``, or ``None`` (one warning) when it cannot be built.

    sources: file names inside ``gridfield/fast/csrc`` (C++ with ``PYBIND11_MODULE``). Cached per
    process (``functools.cache``) and on disk (see the module doc).
    """
    try:
        from torch.utils import cpp_extension

        _ninja_on_path()
        tag = _digest(name, sources)
        build = cache_dir() / "extensions" / tag
        build.mkdir(parents=True, exist_ok=True)
        _drop_stale_lock(build)
        fresh = not any(build.glob(f"{name}*.so"))
        if fresh:
            print(f"gridfield: compiling the C++ fast path '{name}' (first use only, about a minute; "
                  f"cached in {build})", file=sys.stderr, flush=True)
        return cpp_extension.load(name=name, sources=[str(CSRC / s) for s in sources],
                                  extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS),
                                  build_directory=str(build), verbose=False)
    except Exception as err:  # compiler, ninja or headers missing, or a failed build
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        warnings.warn(f"gridfield: C++ fast path '{name}' unavailable ({first[:200]}); "
                      "using the plain PyTorch reference", RuntimeWarning, stacklevel=2)
        return None


def want_fast(backend: str, name: str, sources: tuple[str, ...], applies: bool = True, why: str = ""):
    """Resolve a backend request to the compiled module (use the fast path) or ``None`` (reference).

    applies: whether the fast path supports this call at all (device, dtype, configuration); when it
    does not, ``"auto"`` uses the reference and ``"fast"`` raises :class:`FastPathUnavailable` with ``why``.
    """
    backend = check_backend(backend)
    if backend == "reference":
        return None
    if not applies:
        if backend == "fast":
            raise FastPathUnavailable(f"fast path '{name}' does not apply here: {why}")
        return None
    mod = load_extension(name, tuple(sources))
    if mod is None and backend == "fast":
        raise FastPathUnavailable(f"fast path '{name}' could not be built (see the warning above)")
    return mod
