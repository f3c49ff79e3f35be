"""The memory guard (#17): what is available, the one-line refusal, and estimates checked against the
real allocations of small cases (tensor sizes, NumPy's traced peak, a meta build of 80 GB)."""

from __future__ import annotations

import resource
import sys
import tracemalloc

import numpy as np
import pytest
import torch

from gridfield import memory
from gridfield.errors import InputError


def _fixed(monkeypatch, nbytes: int) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: nbytes)


# ----------------------------------------------------------------------------------------------
# available_bytes, format_bytes, guard
# ----------------------------------------------------------------------------------------------
def test_available_bytes_is_positive_and_below_the_physical_memory():
    avail = memory.available_bytes()
    assert avail > 0
    if sys.platform.startswith("linux"):
        total = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
        assert avail <= total
    assert memory.available_bytes("meta") > 1 << 60


def test_available_bytes_falls_back_without_proc_meminfo(monkeypatch):
    monkeypatch.setattr(memory, "_meminfo_available", lambda: None)
    monkeypatch.setattr(memory, "_cgroup_available", lambda: None)
    assert memory.available_bytes() > 0  # sysconf (or the fixed fallback)
    monkeypatch.setattr(memory, "_sysconf_available", lambda: None)
    monkeypatch.setattr(memory, "_windows_available", lambda: None)
    assert memory.available_bytes() == memory.FALLBACK_BYTES
    monkeypatch.setattr(memory, "_cgroup_available", lambda: 123)
    assert memory.available_bytes() == 123  # a container's limit caps what the host reports


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_available_bytes_on_cuda_is_the_free_device_memory():
    free, total = torch.cuda.mem_get_info()
    assert 0 < memory.available_bytes("cuda") <= total
    assert abs(memory.available_bytes("cuda:0") - free) < 256 << 20


@pytest.mark.parametrize("n, text", [(0, "0 B"), (512, "512 B"), (1500, "1.5 kB"), (21.3e9, "21.3 GB"),
                                     (4e12, "4.0 TB"), (2.5e15, "2.5 PB")])
def test_format_bytes(n, text):
    assert memory.format_bytes(n) == text


def test_guard_refuses_with_the_number_the_request_and_the_option(monkeypatch):
    _fixed(monkeypatch, 21_300_000_000)
    with pytest.raises(InputError) as err:
        memory.guard(4.0e12, "the render (1000000 x 1000000)", "--height 1000000 --width 1000000")
    assert str(err.value) == ("--height 1000000 --width 1000000 would need 4.0 TB for the render (1000000 x 1000000); "
                              "this machine has 21.3 GB available; lower --height/--width")
    with pytest.raises(InputError, match=r"^image 'a\.png' would need 30\.0 GB for decoding it; this machine has "
                                         r"21\.3 GB available; use a smaller image$"):
        memory.guard(30e9, "decoding it", "image 'a.png'", "use a smaller image")
    with pytest.raises(InputError, match=r"; make the request smaller$"):
        memory.guard(30e9, "x", "max_bytes=None")
    memory.guard(21_300_000_000, "just fits", "--size 1")  # equal is allowed


# ----------------------------------------------------------------------------------------------
# Estimates against real allocations
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("H, W, C", [(7, 5, 3), (64, 48, 1), (33, 65, 4)])
def test_estimate_render_bytes_counts_the_render_tensors(H, W, C):
    from gridfield.data.images import pixel_coords

    coords = pixel_coords(H, W)
    out = torch.empty(H, W, C)
    file_bytes = np.empty((H, W, C), np.uint8)
    assert coords.nbytes == H * W * 8 and out.nbytes == H * W * C * 4
    # coordinates + their construction temporaries; output chunks, cat, clamp; two float copies and the bytes
    expect = 2 * coords.nbytes + 3 * out.nbytes + 2 * out.nbytes + file_bytes.nbytes
    assert memory.estimate_render_bytes(H, W, C) == expect
    assert memory.estimate_render_bytes(1_000_000, 1_000_000, 1) == pytest.approx(3.7e13)


def test_estimate_grid_bytes_equals_a_dense_grids_table():
    from gridfield.models import make_grid

    for dim, res, feats in [(2, 17, 3), (3, 9, 2)]:
        grid = make_grid("dense", dim, resolutions=[res], features_per_level=feats)
        table = sum(p.nbytes for p in grid.grid_parameters().values())
        assert memory.estimate_grid_bytes(res, feats, dim, copies=1) == table
        assert memory.estimate_grid_bytes(res, feats, dim) == 4 * table  # + gradient and two Adam moments
    assert memory.estimate_grid_bytes(100000, 13) == pytest.approx(2.08e17)


def test_estimate_lattice_bytes_covers_a_slab_and_the_stored_occupancy():
    from gridfield.metrics_sdf import lattice_chunks

    for r in (16, 100, 1100):
        slab = next(iter(lattice_chunks(r)))  # [M, 3] float32
        stored = r**3 if r <= 512 else 0  # one bool per node
        est = memory.estimate_lattice_bytes(r)
        assert est >= slab.nbytes * 80 / 12 + 3 * stored
        assert est <= 2 * (slab.nbytes * 80 / 12 + 3 * stored) + r * r * 16
    assert memory.estimate_lattice_bytes(100000) > 8e11  # one 100000^2 slab: refused on any machine today


def test_estimate_image_bytes_is_at_least_numpys_traced_peak(tmp_path):
    from PIL import Image

    from gridfield.data.images import load_image

    rng = np.random.default_rng(0)
    cases = [("rgb.png", rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), None),
             ("ga.png", rng.integers(0, 256, (96, 128, 2), dtype=np.uint8), "LA"),
             ("g16.png", rng.integers(0, 65536, (96, 128), dtype=np.uint16), None)]
    for name, arr, mode in cases:
        Image.fromarray(arr, mode).save(tmp_path / name)
        c = 1 if arr.ndim == 2 else arr.shape[2]
        tracemalloc.start()
        load_image(str(tmp_path / name))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        est = memory.estimate_image_bytes(96, 128, c, arr.itemsize)
        assert peak <= est <= 4 * peak, (name, peak, est)


def test_estimate_scene_bytes_covers_the_rays_of_one_view():
    from gridfield.render.rays import Intrinsics, camera_rays

    size, ss = 16, 2
    o, d = camera_rays(torch.eye(4), Intrinsics.from_fov(size * ss, size * ss, 0.7))
    assert memory.estimate_scene_bytes(size, ss) >= 3 * (o.nbytes + d.nbytes)  # float32 + float64 copies


# ----------------------------------------------------------------------------------------------
# Modules without memory; the allocation guard
# ----------------------------------------------------------------------------------------------
def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_meta_module_sizes_an_80_gb_grid_without_allocating():
    from gridfield.models import build_field

    before = _rss()
    dense = memory.meta_module(
        lambda: build_field("dense", 3, 3, "linear", None, resolutions=[2154], features_per_level=2))
    hashed = memory.meta_module(lambda: build_field("hash", 3, 3, "linear", None, n_levels=16, features_per_level=2,
                                                     log2_hashmap_size=31, base_resolution=16))
    assert memory.module_bytes(dense) == 2154**3 * 2 * 4 + 2 * 3 * 4 + 3 * 4  # table + linear decoder
    assert memory.format_bytes(memory.module_bytes(dense)) == "80.0 GB" and memory.module_bytes(hashed) > 100e9
    name, shape, nbytes = memory.largest_tensor(dense)
    assert name.endswith("features") and shape == (2154**3, 2) and nbytes == 2154**3 * 2 * 4
    assert _rss() - before < 1e9, "nothing of that size was allocated"


def test_allocation_guard_refuses_before_allocating():
    with pytest.raises(InputError, match=r"^the checkpoint would need more than 80\.0 GB for the model; "
                                         r"this machine has 1\.0 GB available; shrink it$"):
        with memory.allocation_guard("the model", "the checkpoint", "shrink it", limit=1e9):
            torch.empty(20_000_000_000)
    with memory.allocation_guard("the model", "the checkpoint", limit=1e9):
        t = torch.zeros(1000, 1000)  # 4 MB: fine
    assert t.shape == (1000, 1000) and t.device.type == "cpu"


def test_gtk_reference_estimate_counts_the_basis_and_refuses_n_200000(monkeypatch):
    from gridfield.fields import Field, make_decoder
    from gridfield.gtk import gtk
    from gridfield.gtk.reference import reference_bytes, reference_jacobian
    from gridfield.models import make_grid

    grid = make_grid("dense", 2, resolutions=[8], features_per_level=1)
    field = Field(grid, make_decoder("identity", 1, 1))
    names = list(field.grid_parameters())
    x = torch.rand(300, 2) * 2 - 1
    jac = reference_jacobian(field, x, names)
    n_par = jac.shape[1]
    est = reference_bytes(field, x, names)
    assert est >= 300**2 * 4 + jac.nbytes  # the float32 identity basis and the float64 result
    big = torch.rand(200_000, 2) * 2 - 1
    assert reference_bytes(field, big, names) >= 200_000**2 * 4  # 160 GB of basis
    import gridfield.gtk._checks as checks

    monkeypatch.setattr(checks, "available_bytes", lambda: 24_000_000_000)  # a big machine must not try 160 GB
    before = _rss()
    with pytest.raises(InputError, match=r"the dense reference Jacobian \(jacrev over 200000 x 1 outputs and "
                                         rf"{n_par} parameters, with its 200000 x 200000 basis\) would need about "
                                         r"\d+\.\d\d GiB, over the budget .*use implementation='structured'"):
        gtk(field, big, implementation="reference")
    assert _rss() - before < 1e9
