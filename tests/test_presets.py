"""The model-spec registry: every preset builds with its documented parameter count, specs are frozen
plain data that round-trip through ``to_dict``, refits make new specs, and bad input names the key."""

import dataclasses
import json

import pytest
import torch

from gridfield import presets
from gridfield.errors import InputError
from gridfield.models import build_field, count_parameters
from gridfield.presets import FieldSpec, GridSpec, Kwargs, RadianceSpec, spec_from_dict
from gridfield.render.occupancy import OccupancyGrid
from gridfield.render.outputs import CHECKPOINT_FORMAT as NERF
from gridfield.tasks.image import CHECKPOINT_FORMAT as IMAGE
from gridfield.tasks.image import load_checkpoint
from gridfield.tasks.nerf import load_nerf
from gridfield.tasks.sdf import CHECKPOINT_FORMAT as SDF
from gridfield.tasks.sdf import load_sdf_checkpoint

#: (task, model, options, trainable parameters), counted on main before the registry existed
#: (image RGB at 300K: the table in ``presets/image.py``; SDF at 2M; NeRF at resolution 128).
COUNTS = [
    ("image", "dense", {}, 299_568), ("image", "hash", {}, 286_387), ("image", "planes", {}, 299_463),
    ("image", "mulfagrid", {}, 289_313), ("image", "mulfagrid-paper", {}, 289_313),
    ("image", "mulfagrid-dense", {}, 298_652), ("image", "mulfagrid-dense", {"out_dim": 1}, 299_093),
    ("image", "ffmlp", {}, 288_867), ("image", "mfn", {}, 297_651),
    ("image", "dense", {"out_dim": 1}, 299_209), ("image", "hash", {"out_dim": 1}, 286_257),
    ("image", "planes", {"out_dim": 1}, 298_221), ("image", "mulfagrid", {"out_dim": 1}, 289_183),
    ("image", "ffmlp", {"out_dim": 1}, 288_321), ("image", "mfn", {"out_dim": 1}, 297_025),
    ("sdf", "dense", {}, 1_946_737), ("sdf", "hash", {}, 1_533_969), ("sdf", "planes", {}, 2_070_209),
    ("sdf", "mulfagrid", {}, 1_536_281), ("sdf", "mulfagrid-paper", {}, 1_536_281),
    ("sdf", "mulfagrid-dense", {}, 1_950_196), ("nerf", "mulfagrid-hash", {}, 12_210_419),
    ("nerf", "dense", {}, 3_413_635), ("nerf", "hash", {}, 12_205_795), ("nerf", "planes", {}, 844_691),
    ("nerf", "mulfagrid", {}, 7_085_748),
    ("nerf", "dense", {"appearance": "sh"}, 7_340_032), ("nerf", "hash", {"appearance": "sh"}, 12_200_172),
    ("nerf", "hash-small", {}, 3_406_419), ("nerf", "hash-large", {}, 42_292_947),
    ("nerf", "planes", {"appearance": "sh"}, 839_516), ("nerf", "mulfagrid", {"appearance": "sh"}, 7_080_573),
]
#: analysis grids in 2D (grid features only) and 3D
ANALYSIS_COUNTS = {"dense": (2688, 74_752), "hash": (1152, 1536), "planes": (224, 8064),
                   "planes-product": (224, 8064), "mulfagrid": (5619, 78_211)}


def all_specs():
    out = [presets.get(task, model, **opts) for task, model, opts, _ in COUNTS]
    return out + [presets.get("analyses", m) for m in presets.models("analyses")]


def test_models_of_every_task():
    assert presets.models("image") == ["dense", "hash", "planes", "mulfagrid", "mulfagrid-paper", "mulfagrid-dense",
                                       "ffmlp", "mfn"]
    assert presets.models("sdf") == ["dense", "hash", "planes", "mulfagrid", "mulfagrid-paper", "mulfagrid-dense"]
    assert presets.models("nerf") == ["dense", "hash", "planes", "mulfagrid", "hash-small", "hash-large",
                                      "mulfagrid-hash"]
    assert presets.models("analyses") == list(ANALYSIS_COUNTS)
    assert {t for t, *_ in COUNTS} | {"analyses"} == set(presets.TASKS)
    for task in ("image", "sdf", "nerf"):  # every model is counted
        assert set(presets.models(task)) <= {m for t, m, *_ in COUNTS if t == task}


@pytest.mark.parametrize(("task", "model", "opts", "count"), COUNTS,
                         ids=[f"{t}-{m}-{'-'.join(map(str, o.values()))}" for t, m, o, _ in COUNTS])
def test_every_preset_builds_with_its_parameter_count(task, model, opts, count):
    spec = presets.get(task, model, **opts)
    assert isinstance(spec, RadianceSpec if task == "nerf" else FieldSpec)
    assert count_parameters(spec.build()) == count


@pytest.mark.parametrize("model", list(ANALYSIS_COUNTS))
def test_analysis_grids_build_in_2d_and_3d(model):
    spec = presets.get("analyses", model)
    assert isinstance(spec, GridSpec)
    assert (count_parameters(spec.build(2)), count_parameters(spec.build(3))) == ANALYSIS_COUNTS[model]


def test_spec_builds_what_build_field_builds_with_the_same_initialisation():
    spec = presets.get("sdf", "hash")
    torch.manual_seed(0)
    a = spec.build()
    torch.manual_seed(0)
    b = build_field("hash", 3, 1, "mlp", {"width": 64, "hidden_layers": 2}, n_levels=8, features_per_level=2,
                    log2_hashmap_size=17, base_resolution=16, per_level_scale=(512 / 16) ** (1 / 7))
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_to_dict_round_trips_and_is_plain_data():
    for spec in all_specs():
        d = spec.to_dict()
        json.dumps(d)  # plain data: numbers, strings, lists, dicts
        assert d["kind"] == spec.KIND
        assert type(spec).from_dict(d) == spec == spec_from_dict(d)
        assert hash(type(spec).from_dict(d)) == hash(spec)


def test_specs_are_frozen():
    spec, radiance = presets.get("image", "dense"), presets.get("nerf", "dense")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.model = "hash"
    with pytest.raises(dataclasses.FrozenInstanceError):
        radiance.aabb = (0.0,) * 6
    with pytest.raises(TypeError):
        spec.grid_kwargs["resolutions"] = 3
    with pytest.raises(AttributeError):
        spec.grid_kwargs._data = {}
    assert isinstance(radiance.density.kwargs["resolutions"], tuple)  # lists are stored as tuples
    assert radiance.density.kwargs.to_dict()["resolutions"] == [64]  # and given back as lists
    assert len({spec, presets.get("image", "dense"), radiance}) == 2  # hashable, equal by value


def test_refit_returns_a_new_spec_and_leaves_the_old_one():
    old = presets.get("nerf", "dense")
    before = old.to_dict()
    box = (-1.0, -0.5, -0.25, 1.0, 0.5, 0.25)
    new = old.refit(128, box)
    assert new is not old and old.to_dict() == before
    assert old.density.kwargs["resolutions"] == old.color.kwargs["resolutions"] == (64,)
    assert new.density.kwargs["resolutions"] == new.color.kwargs["resolutions"] == (128,)
    assert new.aabb == box and old.aabb == (-1.5, -1.5, -1.5, 1.5, 1.5, 1.5)
    assert dataclasses.replace(new, density=old.density, color=old.color, aabb=old.aabb) == old
    assert count_parameters(new.build()) == 27_268_739
    shared = presets.get("nerf", "hash")
    assert shared.refit(64, box).color is None


def test_bad_dicts_name_the_key():
    good = presets.get("image", "dense").to_dict()
    for key, value in [("in_dim", "2"), ("out_dim", True), ("model", 3), ("grid_kwargs", [1]),
                       ("decoder_kwargs", "wide"), ("kind", "radiance")]:
        with pytest.raises(InputError, match=f"FieldSpec\\.{key} "):
            FieldSpec.from_dict({**good, key: value})
    with pytest.raises(InputError, match=r"FieldSpec\.grid_kwargs\.resolutions: unsupported value"):
        FieldSpec.from_dict({**good, "grid_kwargs": {"resolutions": {"a": 1}}})
    with pytest.raises(InputError, match="missing keys \\['out_dim'\\]"):
        FieldSpec.from_dict({k: v for k, v in good.items() if k != "out_dim"})
    with pytest.raises(InputError, match="unknown keys \\['width'\\]"):
        FieldSpec.from_dict({**good, "width": 3})
    rad = presets.get("nerf", "hash").to_dict()
    for key, value in [("aabb", [0, 1]), ("lr_grid", "fast"), ("resolution", 1.5), ("density", 7),
                       ("color", ["dense"])]:
        with pytest.raises(InputError, match=f"RadianceSpec\\.{key} "):
            RadianceSpec.from_dict({**rad, key: value})
    with pytest.raises(InputError, match="must be a dict"):
        spec_from_dict([1, 2])


def test_unknown_names_list_the_choices():
    with pytest.raises(InputError, match="for image; choose one of dense, hash, planes"):
        presets.get("image", "nope")
    with pytest.raises(InputError, match="for sdf; choose one of dense, hash"):
        presets.get("sdf", "nope")
    with pytest.raises(InputError, match="for nerf; choose one of dense, hash"):
        presets.get("nerf", "nope")
    with pytest.raises(InputError, match="for analyses; choose one of dense, hash, planes, planes-product"):
        presets.get("analyses", "nope")
    with pytest.raises(InputError, match="unknown task 'video'; choose one of image, sdf, nerf, analyses"):
        presets.models("video")
    with pytest.raises(InputError, match="bad options \\['budget'\\] for image; choose from out_dim, param_budget"):
        presets.get("image", "hash", budget=1000)


def test_options_change_the_spec():
    assert presets.get("image", "dense", decoder="linear").decoder == "linear"
    assert presets.get("sdf", "dense", decoder="mlp").decoder_kwargs == Kwargs({"width": 64, "hidden_layers": 2})
    spec = presets.get("nerf", "dense", resolution=32, aabb_scale=2.0, step=0.1, alpha_init=0.5)
    assert spec.field == {"appearance": "mlp", "step": 0.1, "sigma_scale": 10.0, "alpha_init": 0.5}
    assert spec.aabb == (-2.0,) * 3 + (2.0,) * 3 and spec.density.kwargs["resolutions"] == (16,)


def test_checkpoints_written_before_the_registry_still_load(tmp_path):
    """The untagged spec dicts that main stored (same keys, NeRF grids as ``(name, kwargs)`` pairs)."""
    image = {"model": "dense", "in_dim": 2, "out_dim": 3, "decoder": "identity",
             "grid_kwargs": {"resolutions": 9, "features_per_level": 3}}
    sdf = {"model": "hash", "in_dim": 3, "out_dim": 1, "decoder": "mlp",
           "decoder_kwargs": {"width": 64, "hidden_layers": 2},
           "grid_kwargs": {"n_levels": 2, "features_per_level": 2, "log2_hashmap_size": 8, "base_resolution": 4,
                           "per_level_scale": 2.0}}
    nerf = {"density": ("dense", {"resolutions": [12], "features_per_level": 1}),
            "color": ("dense", {"resolutions": [12], "features_per_level": 12}), "lr_grid": 0.1, "lr_other": 1e-3,
            "field": {"appearance": "mlp", "step": 0.1, "sigma_scale": 10.0, "alpha_init": 1e-2},
            "aabb": [-1.0, -1.1, -1.2, 1.0, 1.1, 1.2], "model": "dense", "resolution": 16}
    assert FieldSpec.from_dict(image) == FieldSpec("dense", 2, 3, "identity", None, image["grid_kwargs"])
    trained = {}
    for name, old in (("image", image), ("sdf", sdf), ("nerf", nerf)):
        trained[name] = spec_from_dict(old).build()
        with torch.no_grad():
            for p in trained[name].parameters():
                p.uniform_(-1, 1)
    state = {k: v.clone() for k, v in trained["image"].state_dict().items()}
    torch.save({"format": IMAGE, "spec": image, "shape": [8, 8, 3], "config": {}, "state_dict": state},
               tmp_path / "image.pt")
    torch.save({"format": SDF, "spec": sdf, "config": {}, "normalization": {"center": [0.0, 0.0, 0.0], "scale": 1.0},
                "state_dict": trained["sdf"].state_dict()}, tmp_path / "sdf.pt")
    occ = OccupancyGrid(torch.tensor(nerf["aabb"]), 8)
    torch.save({"format": NERF, "spec": nerf, "settings": {"near": 0.1, "far": 5.0, "step": 0.1},
                "camera": {"radius": 4.0, "elevation": 30.0}, "state_dict": trained["nerf"].state_dict(),
                "occupancy": occ.state_dict()},
               tmp_path / "nerf.pt")
    x = torch.rand(16, 3) * 2 - 1
    assert torch.equal(load_checkpoint(tmp_path / "image.pt")(x[:, :2]), trained["image"](x[:, :2]))
    assert torch.equal(load_sdf_checkpoint(tmp_path / "sdf.pt")[0](x), trained["sdf"](x))
    field = load_nerf(tmp_path / "nerf.pt")[0]
    assert torch.equal(field.aabb, trained["nerf"].aabb) and torch.equal(field.density(x), trained["nerf"].density(x))


def test_hash_nerf_preset_is_instant_ngp():
    """The hash NeRF model is Instant-NGP's configuration (16 levels x 2 features, 2^19 rows, base 16,
    finest 2048 across its unit cube of 3 NeRF-synthetic units; 1x64 density MLP, 16 outputs, truncated
    exp; 2x64 colour MLP on 15 features + the 16 degree-4 SH coefficients of the direction)."""
    from gridfield.grids.hash import HashGrid

    field = presets.get("nerf", "hash", aabb_scale=1.5).build()
    g = field.density_grid
    assert isinstance(g, HashGrid) and field.color_grid is None
    assert (g.n_levels, g.features_per_level, g.base_resolution) == (16, 2, 16)
    assert max(g.level_sizes) == 2**19 and g.resolutions[-1] in (2048, 2049)
    dims = [(m.in_features, m.out_features) for m in field.density_head if isinstance(m, torch.nn.Linear)]
    assert dims == [(32, 64), (64, 16)]
    dims = [(m.in_features, m.out_features) for m in field.color_head if isinstance(m, torch.nn.Linear)]
    assert dims == [(15 + 16, 64), (64, 64), (64, 3)]
    assert field.density_activation == "trunc_exp"
    for name, t in (("hash-small", 17), ("hash-large", 21)):
        assert max(presets.get("nerf", name).build().density_grid.level_sizes) == 2**t


def test_specs_survive_copy_deepcopy_and_pickle():
    import copy
    import pickle

    spec = presets.get("nerf", "hash")
    for other in (copy.copy(spec), copy.deepcopy({"s": spec})["s"], pickle.loads(pickle.dumps(spec))):
        assert other == spec and other.field["density_activation"] == "trunc_exp"
