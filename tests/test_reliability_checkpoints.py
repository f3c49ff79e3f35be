"""Checkpoints that load but are inconsistent (#17): one InputError naming the problem, never a
KeyError/TypeError or a huge allocation; a valid checkpoint round-trips bit for bit."""

from __future__ import annotations

import resource
import time

import pytest
import torch
from torch import nn

from gridfield import checkpoints, memory
from gridfield.checkpoints import build_checked, cpu_state, read_checkpoint, require_keys
from gridfield.errors import InputError
from gridfield.models import build_field

FMT = "gridfield.test/1"
SPEC = {"model": "dense", "in_dim": 2, "out_dim": 3, "decoder": "linear", "grid_kwargs": {"resolutions": [5, 9],
                                                                                          "features_per_level": 2}}


def build(spec):
    return build_field(spec["model"], spec["in_dim"], spec["out_dim"], spec["decoder"], None, **spec["grid_kwargs"])


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    field = build(SPEC)
    with torch.no_grad():
        for p in field.parameters():
            p.normal_()
    ck = {"format": FMT, "spec": SPEC, "shape": [9, 9, 3], "state_dict": cpu_state(field)}
    path = tmp_path / "ck.pt"
    torch.save(ck, path)
    return path, ck, field


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_a_valid_checkpoint_round_trips(saved):
    path, _, field = saved
    ck = read_checkpoint(path, FMT, "test")
    require_keys(ck, path, {"spec": dict, "shape": list, "state_dict": dict})
    again = build_checked(path, ck["spec"], ck["state_dict"], build).eval()
    x = torch.rand(64, 2) * 2 - 1
    assert torch.equal(again(x), field(x))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), field.state_dict().values()))


@pytest.mark.parametrize("drop, message", [
    (["state_dict"], r"^checkpoint '.*ck\.pt' has no 'state_dict' entry; it is incomplete or from another gridfield "
                     r"version; write it again with the same gridfield$"),
    (["spec"], r"has no 'spec' entry"),
    (["shape"], r"has no 'shape' entry"),
    (["spec", "shape"], r"has no 'spec', 'shape' entries"),
])
def test_missing_entries_are_named(saved, drop, message):
    path, ck, _ = saved
    torch.save({k: v for k, v in ck.items() if k not in drop}, path)
    ck = read_checkpoint(path, FMT, "test")
    with pytest.raises(InputError, match=message):
        require_keys(ck, path, {"spec": dict, "shape": list, "state_dict": dict})


@pytest.mark.parametrize("key, value, message", [
    ("spec", "dense", r"'spec' is a str, expected a dict; the file is damaged or was not written by gridfield"),
    ("spec", [1, 2], r"'spec' is a list, expected a dict"),
    ("shape", {"h": 9}, r"'shape' is a dict, expected a list"),
    ("state_dict", torch.zeros(3), r"'state_dict' is a Tensor, expected a dict"),
])
def test_entries_of_the_wrong_type_are_named(saved, key, value, message):
    path, ck, _ = saved
    torch.save({**ck, key: value}, path)
    with pytest.raises(InputError, match=message):
        require_keys(read_checkpoint(path, FMT, "test"), path, {"spec": dict, "shape": list, "state_dict": dict})


@pytest.mark.parametrize("spec, message", [
    ("dense", r"its spec does not describe a model gridfield can build \(TypeError: string indices"),
    ({k: v for k, v in SPEC.items() if k != "grid_kwargs"},
     r"its spec does not describe .*\(KeyError: 'grid_kwargs'\)"),
    ({**SPEC, "model": "nope"}, r"its spec .*unknown model 'nope'"),
    ({**SPEC, "grid_kwargs": {"resolutions": "x"}}, r"its spec does not describe a model gridfield can build"),
])
def test_a_spec_that_cannot_be_built_is_one_error(saved, spec, message):
    path, ck, _ = saved
    with pytest.raises(InputError, match=rf"^checkpoint '.*ck\.pt': {message}"):
        build_checked(path, spec, ck["state_dict"], build)


def test_weights_that_do_not_match_the_spec_are_named(saved):
    path, ck, _ = saved
    state = ck["state_dict"]
    table = next(k for k in state if "features" in k)
    cases = [
        ({k: v for k, v in state.items() if k != table}, rf"\(missing {table}\)"),
        ({**state, "extra.weight": torch.zeros(2)}, r"\(unexpected extra\.weight\)"),
        ({**state, table: torch.zeros(7, 2)},
         rf"\(shape of {table} \[7, 2\] in the file, \[{state[table].shape[0]}, 2\] "
                                              r"for its spec\)"),
        ({**state, table: [1.0, 2.0]}, rf"weight '{table}' is a list, not a tensor"),
        ([1, 2], r"its weights are a list, expected a dict of tensors"),
    ]
    for bad, message in cases:
        with pytest.raises(InputError, match=rf"^checkpoint '.*ck\.pt'.*{message}"):
            build_checked(path, SPEC, bad, build)
    many = {f"x{i}": torch.zeros(1) for i in range(5)}
    with pytest.raises(InputError, match=r"unexpected x0, x1, x2 and 2 more"):
        build_checked(path, SPEC, {**state, **many}, build)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused(saved, bad):
    path, ck, _ = saved
    state = dict(ck["state_dict"])
    key = next(k for k in state if k.startswith("decoder") and k.endswith("weight"))
    state[key] = state[key].clone()
    state[key][0, 0] = bad
    with pytest.raises(InputError, match=rf"^checkpoint '.*ck\.pt' has non-finite values in {key}; "):
        build_checked(path, SPEC, state, build)
    build_checked(path, SPEC, state, build, finite=False)  # an explicit opt-out loads


@pytest.fixture
def machine_of_24_gb(monkeypatch):
    """The same answer on every machine (a big one must not try the 80 GB for real)."""
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 24_000_000_000)


def test_a_spec_needing_80_gb_is_refused_without_allocating(saved, machine_of_24_gb):
    path, ck, _ = saved
    huge = {**SPEC, "in_dim": 3, "grid_kwargs": {"resolutions": [2154], "features_per_level": 2}}
    before, t0 = _rss(), time.perf_counter()
    with pytest.raises(InputError, match=r"^checkpoint '.*ck\.pt' would need 80\.0 GB for the model its spec describes "
                                         r"\(largest tensor grid\.features \[9993948264, 2\]\); this machine has "
                                         r"24\.0 GB available; the file is damaged, "
                                         r"or was written on a larger machine$"):
        build_checked(path, huge, ck["state_dict"], build)
    assert time.perf_counter() - t0 < 10 and _rss() - before < 1e9


def test_a_builder_that_cannot_run_on_meta_is_built_under_the_allocation_guard(saved, machine_of_24_gb):
    path, ck, _ = saved

    def needs_values(spec):  # .item() on a large tensor: impossible on meta, so it is built for real
        assert torch.zeros(spec["n"]).sum().item() == 0
        return build(SPEC)

    before = _rss()
    with pytest.raises(InputError, match=r"^checkpoint '.*ck\.pt' would need more than 80\.0 GB for the model its spec "
                                         r"describes; this machine has 24\.0 GB available"):
        build_checked(path, {"n": 20_000_000_000}, ck["state_dict"], needs_values)
    assert _rss() - before < 1e9
    model = build_checked(path, {"n": 10}, ck["state_dict"], needs_values)
    assert isinstance(model, nn.Module)


def test_files_that_are_not_checkpoints(tmp_path, monkeypatch, saved):
    path, _, _ = saved
    with pytest.raises(InputError, match=r"checkpoint '.*nope\.pt' not found"):
        read_checkpoint(tmp_path / "nope.pt", FMT, "test")
    with pytest.raises(InputError, match=r"checkpoint '.*' is a directory, not a regular file"):
        read_checkpoint(tmp_path, FMT, "test")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match=r"cannot read checkpoint '.*junk\.pt': "):
        read_checkpoint(tmp_path / "junk.pt", FMT, "test")
    with pytest.raises(InputError, match=r"is not a gridfield image checkpoint \(format gridfield\.image/1\)"):
        read_checkpoint(path, "gridfield.image/1", "image")

    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('executed')",))

    torch.save({"format": FMT, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match=r"cannot read checkpoint '.*evil\.pt': UnpicklingError"):
        read_checkpoint(tmp_path / "evil.pt", FMT, "test")
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 100)
    with pytest.raises(InputError, match=r"^checkpoint '.*ck\.pt' would need \d+\.\d kB for loading it; this machine "
                                         r"has 100 B available; the file is larger than the memory"):
        read_checkpoint(path, FMT, "test")


# ----------------------------------------------------------------------------------------------
# NeRF checkpoints (render/outputs.py)
# ----------------------------------------------------------------------------------------------
AABB = torch.tensor([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5])


def build_radiance(spec):
    from gridfield.fields.radiance import RadianceField
    from gridfield.models import make_grid

    grid = make_grid("dense", 3, resolutions=[spec["resolution"]], features_per_level=16)
    return RadianceField(grid, None, torch.tensor(spec["aabb"]), width=16, hidden_layers=1)


@pytest.fixture
def nerf_ck(tmp_path):
    from gridfield.render.occupancy import OccupancyGrid
    from gridfield.render.outputs import save_checkpoint

    torch.manual_seed(0)
    spec = {"resolution": 6, "aabb": AABB.tolist()}
    field = build_radiance(spec)
    occ = OccupancyGrid(AABB, resolution=4)
    with torch.no_grad():
        occ.ema.uniform_()
    path = tmp_path / "nerf.pt"
    save_checkpoint(path, field, occ, spec, {"near": 2.0, "far": 6.0, "step": 0.01, "background": [1.0, 1.0, 1.0]},
                    {"radius": 4.0, "elevation": 30.0, "K": {}})
    return path, field, occ


def test_nerf_checkpoint_round_trips(nerf_ck):
    from gridfield.render.outputs import load_checkpoint

    path, field, occ = nerf_ck
    f2, o2, settings, camera = load_checkpoint(path, build_radiance)
    x = torch.rand(32, 3) * 2 - 1
    assert torch.equal(f2.density_and_geo(x)[0], field.density_and_geo(x)[0])
    assert torch.equal(o2.ema, occ.ema) and o2.resolution == 4
    assert settings.background == (1.0, 1.0, 1.0) and settings.near == 2.0 and camera["radius"] == 4.0
    assert not f2.training


def _edited(path, **changes):
    ck = torch.load(path, weights_only=True)
    for key, value in changes.items():
        if value is None:
            del ck[key]
        else:
            ck[key] = value(ck[key]) if callable(value) else value
    torch.save(ck, path)


NERF_CASES = [
    ({"occupancy": None}, r"^checkpoint '.*nerf\.pt' has no 'occupancy' entry"),
    ({"camera": None}, r"has no 'camera' entry"),
    ({"settings": "fast"}, r"'settings' is a str, expected a dict"),
    ({"occupancy": lambda o: {k: v for k, v in o.items() if k != "ema"}}, r"\(its occupancy grid\) has no 'ema' entry"),
    ({"occupancy": lambda o: {**o, "ema": torch.zeros(10)}}, r"the occupancy grid has 10 cells, not a cube R\^3"),
    ({"occupancy": lambda o: {**o, "aabb": torch.tensor([1.0, 1, 1, -1, -1, -1])}},
     r"the occupancy box \[1\.0, 1\.0, 1\.0, -1\.0, -1\.0, -1\.0\] is not \[xmin"),
    ({"occupancy": lambda o: {**o, "binary": torch.ones(3, 3, 3, dtype=torch.bool)}},
     r"shape of binary \[3, 3, 3\] in the file, \[4, 4, 4\] for its spec"),
    ({"settings": lambda s: {**s, "speed": 3}},
     r"unknown render settings 'speed' \(known: backend, background, contraction, far"),
    ({"settings": lambda s: {**s, "near": 7.0}}, r"implausible render settings \(near=7\.0, far=6\.0, step=0\.01"),
    ({"settings": lambda s: {**s, "step": float("nan")}}, r"implausible render settings \(step=nan\)"),
    ({"settings": lambda s: {**s, "background": [1.0]}}, r"implausible render settings \(background=\[1\.0\]\)"),
    ({"camera": lambda c: {k: v for k, v in c.items() if k != "radius"}}, r"\(its camera\) has no 'radius' entry"),
    ({"camera": lambda c: {**c, "radius": -1.0}}, r"implausible camera orbit \(radius -1\.0"),
    ({"camera": lambda c: {**c, "center": [0.0, float("nan"), 0.0]}}, r"implausible camera orbit \(center \[0\.0, nan"),
    ({"camera": lambda c: {**c, "sweep": 0.0}}, r"implausible camera orbit \(center .*sweep 0\.0; need"),
    ({"spec": lambda s: {**s, "resolution": 7}}, r"its weights do not match the model its spec describes \(shape of "
                                                 r"density_grid\.features"),
    ({"spec": lambda s: {**s, "resolution": 1300}}, r"would need \d+\.\d GB for the radiance field its spec describes"),
    ({"state_dict": lambda s: {**s, "density_grid.features": s["density_grid.features"] * float("nan")}},
     r"has non-finite values in density_grid\.features"),
]


@pytest.mark.parametrize("changes, message", [c for c in NERF_CASES], ids=[str(i) for i in range(len(NERF_CASES))])
def test_inconsistent_nerf_checkpoints_are_one_error(nerf_ck, monkeypatch, changes, message):
    from gridfield.render.outputs import load_checkpoint

    path, _, _ = nerf_ck
    _edited(path, **changes)
    if "would need" in message:
        monkeypatch.setattr(memory, "available_bytes", lambda device=None: 5_000_000_000)
    with pytest.raises(InputError, match=message) as err:
        load_checkpoint(path, build_radiance)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.filterwarnings("ignore")  # odd specs make torch warn about indexing on the way to the error
def test_checkpoints_module_has_no_stray_exceptions(saved):
    """Every public reader turns malformed input into InputError (a table of odd values)."""
    path, ck, _ = saved
    odd = [None, 3, "x", b"y", [], {}, {"a": 1}, torch.zeros(2)]
    for value in odd:
        with pytest.raises(InputError):
            build_checked(path, SPEC, value, build)
        with pytest.raises(InputError):
            build_checked(path, value, ck["state_dict"], build)
        try:
            checkpoints.require_keys({"spec": value}, path, {"spec": dict})
        except InputError:
            pass
