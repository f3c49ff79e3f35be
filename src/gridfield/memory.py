"""Memory guard: estimate a large allocation from the request and refuse it before allocating.

The rule (docs/design.md): every allocation whose size follows from a request (an option such as
``--height``, a file's header, a checkpoint's spec) is estimated first, and the request is refused with
:class:`~gridfield.errors.InputError` naming the number, the option and what to change when the
estimate exceeds the memory available now (these machines may have no swap, so "try and see" ends in
the OOM killer, not in an exception).

- :func:`available_bytes`: what the OS (or the CUDA device) can give now.
- :func:`guard`: the refusal, one line: ``"--height 1000000 --width 1000000 would need 12.0 TB for the
  render (1000000 x 1000000 x 3); this machine has 21.3 GB available; lower --height/--width"``.
- ``estimate_*``: small, documented byte counts of the big allocations of each command, for the
  callers to pass to :func:`guard`. They count the large arrays a step holds at its peak and ignore
  anything that does not grow with the request (so they are lower bounds within a small factor).
- :func:`meta_module` / :func:`module_bytes`: a module's parameters and buffers built without
  memory (on ``torch.device("meta")``), for checking a spec before building it;
  :func:`allocation_guard` refuses tensor allocations past a limit while a module is built for real.

Units in messages are decimal (1 GB = 10^9 bytes).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterator

import torch
from torch.overrides import TorchFunctionMode

from gridfield.errors import InputError

#: Used when the platform reports nothing (no /proc/meminfo, no sysconf, no Windows API).
FALLBACK_BYTES = 4 * 1024**3


# ----------------------------------------------------------------------------------------------
# How much is available
# ----------------------------------------------------------------------------------------------
def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            text = fh.read().strip()
        return None if text in ("", "max") else int(text)
    except (OSError, ValueError):
        return None


def _cgroup_available() -> int | None:
    """Room left under this process's cgroup memory limit (v2, then v1); None when unlimited."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:  # v1 reports "unlimited" as ~2^63
            return max(0, limit - usage)
    return None


def _sysconf_available() -> int | None:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        pass
    try:  # macOS has no SC_AVPHYS_PAGES: half the physical memory is a sane guess
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE")) // 2
    except (AttributeError, OSError, ValueError):
        return None


def _windows_available() -> int | None:
    if sys.platform != "win32":
        return None
    try:
        import ctypes  # deferred: Windows only

        class MemoryStatus(ctypes.Structure):
            _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                        ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                        ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                        ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                        ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

        status = MemoryStatus()
        status.dwLength = ctypes.sizeof(MemoryStatus)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
            return int(status.ullAvailPhys)
    except Exception:  # noqa: BLE001 - any failure: fall back
        pass
    return None


def available_bytes(device=None) -> int:
    """Bytes that can be allocated now on ``device`` (default: the CPU's main memory).

    CPU: ``MemAvailable`` from ``/proc/meminfo`` (Linux), capped by the cgroup memory limit when one is
    set (containers); elsewhere ``sysconf`` (available pages; macOS: half the physical memory), the
    Windows ``GlobalMemoryStatusEx``, or :data:`FALLBACK_BYTES`. CUDA: the device's free memory from
    ``torch.cuda.mem_get_info``. ``"meta"``: unlimited.
    """
    kind = device_type(device)
    if kind == "cuda":
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    if kind == "meta":
        return 1 << 62
    found = _meminfo_available()
    if found is None:
        found = _windows_available() if sys.platform == "win32" else _sysconf_available()
    if found is None:
        found = FALLBACK_BYTES
    cgroup = _cgroup_available()
    return min(found, cgroup) if cgroup is not None else found


def device_type(device) -> str:
    """``"cpu"``, ``"cuda"``, ``"meta"``, ... of a device, a device string or None (the CPU)."""
    if device is None:
        return "cpu"
    if isinstance(device, str):
        return device.split(":")[0]
    return getattr(device, "type", "cpu")


# ----------------------------------------------------------------------------------------------
# The refusal
# ----------------------------------------------------------------------------------------------
def format_bytes(n: float) -> str:
    """``n`` bytes in decimal units with one decimal: ``"4.0 TB"``, ``"21.3 GB"``, ``"512 B"``."""
    n = float(n)
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def guard(nbytes: float, what: str, option: str, fix: str | None = None, device=None) -> None:
    """Raise :class:`InputError` when ``nbytes`` exceeds :func:`available_bytes` of ``device``.

    ``option``: the request as the user wrote it, e.g. ``"--height 1000000 --width 1000000"`` (or
    ``"image 'big.tif'"``); ``what``: the allocation, e.g. ``"the render (1000000 x 1000000 x 3)"``;
    ``fix``: what to do, by default ``"lower "`` and the ``--options`` named in ``option``. The message:
    ``"<option> would need <n> for <what>; this machine has <m> available; <fix>"``. Allocates nothing.
    """
    limit = available_bytes(device)
    if nbytes > limit:
        if fix is None:
            flags = re.findall(r"--[A-Za-z0-9][\w-]*", option)
            fix = f"lower {'/'.join(flags)}" if flags else "make the request smaller"
        where = "" if device_type(device) == "cpu" else f" on {device}"
        raise InputError(f"{option} would need {format_bytes(nbytes)} for {what}; this machine has "
                         f"{format_bytes(limit)} available{where}; {fix}")


# ----------------------------------------------------------------------------------------------
# Estimates of the commands' big allocations
# ----------------------------------------------------------------------------------------------
def estimate_render_bytes(height: int, width: int, channels: int = 3, itemsize: int = 4) -> int:
    """Peak bytes of rendering a 2D field into an ``height x width x channels`` image and saving it.

    Counts, per pixel: the pixel-centre coordinates (2 floats) and their two construction temporaries,
    the field's output chunks, their concatenation and the clamped copy (``3 x channels`` floats of
    ``itemsize`` bytes), and the 8-bit conversion for the file (two float temporaries and the bytes).
    The model's own activations are per chunk and not counted.
    Example: the render tensor alone is ``estimate_render_bytes(H, W, C) >= torch.empty(H, W, C).nbytes``.
    """
    pixels = int(height) * int(width)
    coords = 4 * itemsize  # [HW, 2] coordinates + two 1-float temporaries (meshgrid copies)
    out = 3 * channels * itemsize  # chunks, cat, clamp
    save = channels * (2 * 4 + 1)  # float temporaries of the uint8 conversion + the bytes
    return pixels * (coords + out + save)


def estimate_grid_bytes(resolution: int, features: int, dim: int = 3, copies: int = 4, itemsize: int = 4) -> int:
    """Bytes of a dense grid's feature table while it trains: ``resolution^dim x features`` values of
    ``itemsize`` bytes, times ``copies`` (4: the parameter, its gradient and Adam's two moments; 1: the
    table alone, e.g. for rendering a checkpoint). For ``nerf --resolution`` sum the density and
    appearance grids (e.g. ``features = 1 + 12``); a hash grid's table does not grow with the
    resolution (its size is ``2^log2_hashmap_size`` rows per level)."""
    return int(resolution) ** int(dim) * int(features) * int(itemsize) * int(copies)


def estimate_lattice_bytes(resolution: int, chunk: int = 1 << 20, stored: bool | None = None) -> int:
    """Peak bytes of the SDF task's lattice IoU at ``resolution^3`` nodes (``sdf --iou-resolution``).

    Counts one slab of ``max(chunk, resolution^2)`` lattice points (float32 coordinates and their
    repeat/tile temporaries, the field's float32 input and output, libigl's float64 copy and winding
    numbers, two occupancy masks: 80 bytes per point), the ``[R, R]`` plane of the slab (16 bytes per
    node) and, when the ground-truth occupancy is stored (``stored``; default: ``resolution <= 512``,
    as :func:`gridfield.tasks.sdf` caches it), ``R^3`` booleans three times (computed, packed, unpacked).
    """
    r = int(resolution)
    plane = r * r
    slab = min(plane * max(1, int(chunk) // plane), r**3)  # whole [R, R] planes per slab
    stored = r <= 512 if stored is None else stored
    return slab * 80 + plane * 16 + (3 * r**3 if stored else 0)


def estimate_image_bytes(height: int, width: int, channels: int, itemsize: int = 1) -> int:
    """Peak bytes of loading an image of ``height x width x channels`` samples of ``itemsize`` bytes.

    Counts the decoded samples twice (16-bit colour PNGs are decoded in two passes, other decoders
    keep a copy), the float32 image (gray+alpha becomes 4 channels) and two float32 temporaries (the
    range check or clip, the downscaling input). Decoding happens at full size whatever ``max_size``.
    """
    pixels = int(height) * int(width)
    out_channels = 4 if channels == 2 else int(channels)
    return pixels * (2 * int(channels) * int(itemsize) + 3 * out_channels * 4)


def estimate_sample_bytes(n: int) -> int:
    """Peak bytes of drawing the SDF task's pool of ``n`` training samples (``sdf --samples``): float64
    surface points, their noisy copies, the uniform points and the concatenated pool (4 x 24 bytes),
    the float64 distances (8), the float32 points and distances kept (16) and their copy on the
    training device (16): 136 bytes per sample."""
    return int(n) * 136


def estimate_scene_bytes(size: int, supersample: int = 2) -> int:
    """Peak bytes of rendering one ``size x size`` view in the scene maker with ``supersample^2`` rays
    per pixel: 400 bytes per ray (pixel indices, float32 and float64 origins and directions, colour
    and hit buffers, the ray caster's per-ray results and candidates) plus the RGBA image (float64
    straight colour and alpha, the 8-bit copy: 41 bytes per pixel)."""
    rays = (int(size) * int(supersample)) ** 2
    return rays * 400 + int(size) ** 2 * 41


# ----------------------------------------------------------------------------------------------
# Modules built without memory, and a guard on allocations while building for real
# ----------------------------------------------------------------------------------------------
class _LargeOnMeta(TorchFunctionMode):
    """A torch function mode that puts every tensor factory call of ``threshold`` bytes or more on the
    meta device (no memory) and runs small ones normally (so ``.item()`` on scalars still works).
    ``limit``: instead, run the large ones for real but raise ``_TooLarge`` once their running total
    would exceed it (the guard used while building for real)."""

    def __init__(self, threshold: int, limit: float | None):
        super().__init__()
        self.threshold, self.limit, self.total = threshold, limit, 0
        self.factories = _factories()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in self.factories:
            return func(*args, **kwargs)
        try:
            probe = func(*args, **{**kwargs, "device": "meta"})
            nbytes = probe.numel() * probe.element_size()
        except Exception:  # noqa: BLE001 - not sizeable on meta: run it as asked
            return func(*args, **kwargs)
        if nbytes < self.threshold:
            return func(*args, **kwargs)
        self.total += nbytes
        if self.limit is None:
            return probe
        if self.total > self.limit:
            raise _TooLarge(self.total)
        return func(*args, **kwargs)


class _TooLarge(BaseException):
    """Raised inside :func:`allocation_guard` (a BaseException, so that a builder's ``except Exception``
    cannot swallow it) and turned into an InputError at its exit."""

    def __init__(self, total: int):
        super().__init__(total)
        self.total = total


def _factories() -> set:
    found = set()
    try:
        from torch.utils._device import _device_constructors  # deferred: private torch API, may be absent

        found |= set(_device_constructors())
    except Exception:  # noqa: BLE001 - private API: fall back to the common ones
        found |= {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.randint,
                  torch.empty_strided, torch.arange, torch.linspace, torch.eye}
    found |= {torch.Tensor.new_empty, torch.Tensor.new_zeros, torch.Tensor.new_ones, torch.Tensor.new_full}
    return found


def meta_module(build: Callable[[], object]):
    """``build()`` run without allocating its large tensors, or None when that is impossible.

    First under ``torch.device("meta")``; when the build needs real values (``.item()`` on a scalar it
    computes), again with only the tensors of 64 kB or more on meta. Exceptions other than the meta
    device's limitations propagate (an invalid spec fails here, before any memory is used); None means
    the build works only for real (guard it with :func:`allocation_guard`).
    """
    for attempt in ("meta", "large"):
        try:
            if attempt == "meta":
                with torch.device("meta"):
                    return build()
            with _LargeOnMeta(1 << 16, None):
                return build()
        except InputError:
            raise
        except (RuntimeError, NotImplementedError):  # the meta device's limits (or a real error: the
            continue                                 # caller's real build, guarded, reports it)
    return None


def module_bytes(module) -> int:
    """Bytes of a module's parameters and buffers (works on meta modules: nothing is read)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def largest_tensor(module) -> tuple[str, tuple[int, ...], int]:
    """``(name, shape, bytes)`` of a module's largest parameter or buffer (``("", (), 0)`` when empty)."""
    best = ("", (), 0)
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        n = t.numel() * t.element_size()
        if n > best[2]:
            best = (name, tuple(t.shape), n)
    return best


@contextlib.contextmanager
def allocation_guard(what: str, option: str, fix: str | None = None, limit: float | None = None,
                     device=None) -> Iterator[None]:
    """Refuse, with :func:`guard`'s message, tensor factory calls (``torch.empty``, ``zeros``, ``randn``,
    ``Tensor.new_zeros``, ...) of 64 kB or more whose running total would exceed ``limit`` (default:
    :func:`available_bytes` of ``device``), before they allocate. For building a module whose size
    cannot be known in advance; allocations that are not tensor factories (NumPy, ``clone``) pass."""
    cap = available_bytes(device) if limit is None else limit
    try:
        with _LargeOnMeta(1 << 16, cap):
            yield
    except _TooLarge as e:
        raise InputError(f"{option} would need more than {format_bytes(e.total)} for {what}; this machine "
                         f"has {format_bytes(cap)} available; {fix or 'make the request smaller'}") from None
