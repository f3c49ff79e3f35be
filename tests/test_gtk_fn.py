"""gtk_fn against a plain torch.func reference (whole-batch jacrev + einsum), for every implementation.

The reference differentiates ``f(params, x)`` for the whole batch at once (no per-point assumption, no
hooks, no sparse algebra) and contracts the Jacobians with einsum; everything is float64.
"""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev

from _gtk_models import one_torch_thread, small_field  # noqa: F401 (autouse fixture)
from gridfield.errors import InputError
from gridfield.fields import Field, LinearDecoder, MLPDecoder
from gridfield.fields.radiance import RadianceField
from gridfield.grids import DenseGrid
from gridfield.gtk import GTK, Implementation, bound, eigenspectrum, gtk, gtk_fn
from gridfield.models import make_grid

IMPLEMENTATIONS = list(Implementation)
TOL = 1e-10


# ----------------------------------------------------------------------------------------------
# The reference
# ----------------------------------------------------------------------------------------------
def reference(call, params: dict, names: list[str], x1, x2=None, channels="trace") -> np.ndarray:
    """``J(x1) J(x2)^T`` from ``jacrev`` of the whole batch, contracted with einsum."""
    fixed = {k: v.detach() for k, v in params.items() if k not in names}
    var = {k: params[k].detach() for k in names}

    def jac(x):
        j = jacrev(lambda v: call({**fixed, **v}, x).reshape(x.shape[0], -1))(var)
        return torch.cat([j[k].reshape(x.shape[0], j[k].shape[1], -1) for k in names], 2)  # [n, m, P]

    j1 = jac(x1)
    j2 = j1 if x2 is None else jac(x2)
    full = torch.einsum("imp,jnp->ijmn", j1, j2)
    if channels == "full":
        return full.numpy()
    diag = torch.diagonal(full, dim1=2, dim2=3)  # [n1, n2, m]
    return (diag if channels == "diagonal" else diag.mean(-1)).numpy()


def module_call(module):
    return lambda p, x: functional_call(module, p, (x,))


def dense_of(g: GTK) -> np.ndarray:
    m = g.matrix
    return m.toarray() if hasattr(m, "toarray") else np.asarray(m)


def rel(a, b) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def check_all(f, call, params, names, x1, x2=None, channels=("trace",), wrt="all", **kw):
    """gtk_fn(f) == reference for every implementation and channel mode; returns the AUTO results."""
    out = {}
    for ch in channels:
        ref = reference(call, params, names, x1, x2, ch)
        assert np.abs(ref).max() > 0
        for impl in IMPLEMENTATIONS:
            g = gtk_fn(f, wrt=wrt, implementation=impl, channels=ch, **kw)(x1, x2)
            assert g.shape == ref.shape, (impl, ch)
            assert rel(dense_of(g), ref) < TOL, (impl, ch, rel(dense_of(g), ref))
            assert g.info["wrt_names"] == names
            out[(impl, ch)] = g
    return out


def points(n, d, seed=0, lo=-1.0, hi=1.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=gen, dtype=torch.float64) * (hi - lo) + lo


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------
def test_plain_mlp_module_and_pure_function():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    params = dict(mlp.named_parameters())
    x1, x2 = points(7, 3), points(5, 3, seed=1)
    res = check_all(mlp, module_call(mlp), params, list(params), x1, x2, channels=("trace", "diagonal", "full"))
    assert res[(Implementation.AUTO, "trace")].implementation == "jacobian_contraction"  # no grid
    assert "dense torch.func part alone" in res[(Implementation.STRUCTURED, "trace")].info["note"]

    # the same network as a pure tensor function f(params, x): no module at all
    p = {"w1": mlp[0].weight.detach().T.clone(), "b1": mlp[0].bias.detach().clone(),
         "w2": mlp[2].weight.detach().T.clone(), "b2": mlp[2].bias.detach().clone()}

    def f(prm, x):
        return torch.tanh(x @ prm["w1"] + prm["b1"]) @ prm["w2"] + prm["b2"]

    for impl in (Implementation.JACOBIAN_CONTRACTION, Implementation.NTK_VECTOR_PRODUCTS, Implementation.AUTO):
        g = gtk_fn(f, p, implementation=impl)(x1, x2)
        assert rel(g.matrix, reference(f, p, list(p), x1, x2)) < TOL
    g = gtk_fn(f, p, wrt=["w2", "b*"])(x1)
    assert g.info["wrt_names"] == ["b1", "w2", "b2"]
    assert rel(g.matrix, reference(f, p, ["b1", "w2", "b2"], x1)) < TOL


def test_grid_group_of_a_model_without_grids_is_refused():
    mlp = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    with pytest.raises(InputError, match="calls no gridfield Grid"):
        gtk_fn(mlp, wrt="grid")(points(3, 3))


@pytest.mark.parametrize("name", ["dense", "hash", "planes", "planes-product", "mulfagrid"])
def test_grid_with_mlp_decoder(name):
    field = small_field(name, "mlp", dim=2, out=2)
    params = dict(field.named_parameters())
    x1, x2 = points(9, 2), points(6, 2, seed=1)
    x1[0] = torch.tensor([-1.0, 1.0])
    grid_names = list(field.grid_parameters())
    other = [k for k in params if k not in grid_names]
    for wrt, names in (("all", list(params)), ("grid", grid_names)):
        res = check_all(field, module_call(field), params, names, x1, channels=("trace", "diagonal"), wrt=wrt)
        auto = res[(Implementation.AUTO, "trace")]
        assert auto.implementation == "structured" and auto.info["grids"] == ["grid"]
    check_all(field, module_call(field), params, other, x1, x2, wrt="other")
    # the structured kernel of the paper's GTK equals gtk() (the engine's own path)
    g = gtk_fn(field, wrt="grid")(x1)
    assert rel(dense_of(g), gtk(field, x1, wrt="grid").dense()) < TOL


def test_full_channels_and_cross_kernel_on_a_hash_field():
    field = small_field("hash", "mlp", dim=2, out=3)
    params = dict(field.named_parameters())
    check_all(field, module_call(field), params, list(params), points(5, 2), points(4, 2, seed=3),
              channels=("full",))


class Radiance(nn.Module):
    """Density and colour of a radiance field as one output ``[n, 4]`` of ``(x, d)`` ``[n, 6]``."""

    def __init__(self, rf: RadianceField) -> None:
        super().__init__()
        self.rf = rf

    def forward(self, xd):
        x, d = xd[:, :3], F.normalize(xd[:, 3:], dim=-1)
        return torch.cat([self.rf.density(x)[:, None], self.rf.color(x, d)], -1)


def radiance_field() -> RadianceField:
    torch.manual_seed(0)
    density = make_grid("dense", 3, resolutions=[3], features_per_level=2)
    color = make_grid("hash", 3, n_levels=2, features_per_level=2, log2_hashmap_size=5, base_resolution=3)
    rf = RadianceField(density, color, aabb=torch.tensor([-1.5] * 3 + [1.5] * 3), appearance="mlp",
                       width=8, hidden_layers=1, view_degree=1, step=0.5).double()
    with torch.no_grad():
        for p in rf.grid_parameters().values():
            p.normal_(0, 0.5)
    return rf


def test_radiance_field_density_and_colour():
    rf = radiance_field()
    model = Radiance(rf)
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(0)
    xd = torch.cat([torch.rand(8, 3, generator=gen, dtype=torch.float64) * 3 - 1.5,
                    torch.randn(8, 3, generator=gen, dtype=torch.float64)], 1)
    grid_names = ["rf.density_grid.features", "rf.color_grid.features"]
    for wrt, names in (("all", list(params)), ("grid", grid_names)):
        res = check_all(model, module_call(model), params, names, xd, channels=("trace", "diagonal"), wrt=wrt)
        assert res[(Implementation.AUTO, "trace")].info["grids"] == ["rf.density_grid", "rf.color_grid"]
    # the density alone, as a bound method of the field (RadianceField has no forward)
    dens = rf.density
    names = list(dict(rf.named_parameters()))
    res = check_all(dens, lambda p, x: functional_call(Radiance(rf), {f"rf.{k}": v for k, v in p.items()},
                                                       (torch.cat([x, x], 1),))[:, 0],
                    dict(rf.named_parameters()), names, xd[:, :3])
    assert res[(Implementation.AUTO, "trace")].out_dim == 1
    with pytest.raises(InputError, match="has no forward"):
        gtk_fn(rf)
    # gtk() takes a module containing grids through gtk_fn, the operator included
    g = gtk(model, xd, wrt="grid")
    op = gtk(model, xd, wrt="all", implementation="operator")
    assert g.implementation == "structured" and op.implementation == "operator"
    assert rel(g.dense(), reference(module_call(model), params, grid_names, xd)) < TOL
    v = np.random.default_rng(0).normal(size=(8, 2))
    assert rel(op.matrix @ v, reference(module_call(model), params, list(params), xd) @ v) < TOL


class OddModel(nn.Module):
    """A user's model: grids under unusual names (one in a ModuleDict, one called twice), a skip input."""

    def __init__(self) -> None:
        super().__init__()
        self.zz_encoder_7 = DenseGrid(2, resolutions=[4], features_per_level=2)
        self.bank = nn.ModuleDict({"fine": make_grid("hash", 2, n_levels=2, features_per_level=2,
                                                     log2_hashmap_size=4, base_resolution=3)})
        self.head = MLPDecoder(2 + 4 + 2, 2, width=8, hidden_layers=1)

    def forward(self, x):
        fine = self.bank["fine"]
        h = torch.cat([self.zz_encoder_7(x), fine(x) * fine(-x), x], 1)  # the hash grid twice
        return torch.tanh(self.head(h))


def test_user_module_with_unusual_grid_names_and_a_grid_called_twice():
    torch.manual_seed(1)
    model = OddModel().double()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("features"):
                p.normal_()
    params = dict(model.named_parameters())
    x1, x2 = points(8, 2), points(5, 2, seed=2)
    grid_names = ["zz_encoder_7.features", "bank.fine.features"]
    res = check_all(model, module_call(model), params, grid_names, x1, x2, wrt="grid")
    assert res[(Implementation.AUTO, "trace")].info["grids"] == ["zz_encoder_7", "bank.fine"]
    check_all(model, module_call(model), params, list(params), x1, wrt="all")
    # wrt by exact names, globs and groups
    for wrt, names in ((["bank.fine.features"], ["bank.fine.features"]),
                       ("head.*", [k for k in params if k.startswith("head.")]),
                       (["zz_*", "head.2.bias"], ["zz_encoder_7.features", "head.2.bias"]),
                       ("other", [k for k in params if k not in grid_names])):
        g = gtk_fn(model, wrt=wrt)(x1)
        assert g.info["wrt_names"] == names
        assert rel(dense_of(g), reference(module_call(model), params, names, x1)) < TOL
    with pytest.raises(InputError, match="matches no parameter"):
        gtk_fn(model, wrt=["grid", "decoder.*"])(x1)
    # a plain function over the same module: the grids are found by type while it runs
    call = module_call(model)
    g = gtk_fn(call, params, wrt=grid_names, implementation="structured")(x1, x2)
    assert g.info["grids"] == ["zz_encoder_7", "bank.fine"]
    assert rel(dense_of(g), reference(call, params, grid_names, x1, x2)) < TOL


class Leaky(nn.Module):
    """A grid table that also enters the output outside the grid's forward."""

    def __init__(self) -> None:
        super().__init__()
        self.grid = DenseGrid(2, resolutions=[3], features_per_level=1)
        self.out = LinearDecoder(1, 1)

    def forward(self, x):
        return self.out(self.grid(x)) + self.grid.features.square().sum() * x[:, :1]


def test_structured_checks_itself_and_auto_falls_back():
    torch.manual_seed(0)
    model = Leaky().double()
    with torch.no_grad():
        model.grid.features.normal_()
    x = points(6, 2)
    with pytest.raises(InputError, match="differs from autograd"):
        gtk_fn(model, wrt="grid", implementation="structured")(x)
    g = gtk_fn(model, wrt="grid")(x)
    assert g.implementation == "jacobian_contraction" and "differs from autograd" in g.info["fallback"]
    params = dict(model.named_parameters())
    assert rel(g.matrix, reference(module_call(model), params, ["grid.features"], x)) < TOL


def test_params_override_and_toolkit_interop():
    field = small_field("dense", "linear", dim=2, out=1)
    x = points(12, 2)
    kernel_fn = gtk_fn(field, wrt="grid")
    new = {"grid.features": field.grid.features.detach() * 2, "decoder.weight": field.decoder.weight.detach() * 3}
    g = kernel_fn(x, params=new)
    params = dict(field.named_parameters()) | new
    assert rel(dense_of(g), reference(module_call(field), params, ["grid.features"], x)) < TOL
    spec = eigenspectrum(kernel_fn(x))
    assert spec.lambda_max > 0
    b = bound(kernel_fn(x), torch.sin(3 * x[:, 0]).numpy())
    assert np.isfinite(b.value) and b.value > 0
    with pytest.raises(InputError, match="not parameters of"):
        kernel_fn(x, params={"nope": torch.zeros(1, dtype=torch.float64)})
    with pytest.raises(InputError, match="channels must be one of"):
        gtk_fn(field, channels="sum")
    with pytest.raises(InputError, match="implementation must be one of"):
        gtk_fn(field, implementation="fast")


# ----------------------------------------------------------------------------------------------
# Refusals name the bytes
# ----------------------------------------------------------------------------------------------
NEED = re.compile(r"would need ([\d.]+ [kMGTP]?B) \(([\d,]+) bytes\)")


def test_too_large_requests_are_refused_with_the_bytes_before_allocating():
    field = Field(DenseGrid(2, resolutions=[1000], features_per_level=1), LinearDecoder(1, 1)).double()
    x = points(100_000, 2)
    with pytest.raises(InputError) as err:  # a dense [1e5, 1e6] Jacobian: 800 GB
        gtk_fn(field, wrt="grid", implementation="jacobian_contraction")(x)
    msg = str(err.value)
    need = NEED.search(msg)
    assert need and int(need.group(2).replace(",", "")) >= 100_000 * 1_000_000 * 8, msg
    assert "dense Jacobians" in msg and "NTK_VECTOR_PRODUCTS" in msg and "available" in msg
    small = points(300, 2)
    coarse = Field(DenseGrid(2, resolutions=[3], features_per_level=1), LinearDecoder(1, 1)).double()
    for model, impl, what in ((coarse, "structured", "sparse kernel"),  # every pair shares a cell
                              (field, "ntk_vector_products", "NTK-vector product"),
                              (field, "jacobian_contraction", "dense Jacobians")):
        with pytest.raises(InputError, match=f"would need .* bytes\\) for .*{what}.*max_bytes") as err:
            gtk_fn(model, wrt="grid", implementation=impl, max_bytes=200_000)(small)
        assert "budget is 200.0 kB (max_bytes)" in str(err.value)
    with pytest.raises(InputError, match="dense kernel"):
        gtk_fn(coarse, wrt="grid", channels="diagonal", max_bytes=200_000)(small)


# ----------------------------------------------------------------------------------------------
# The tutorial page runs
# ----------------------------------------------------------------------------------------------
TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "gtk_tutorial.md"


def python_blocks(text: str) -> list[str]:
    """The ```python fenced blocks of a Markdown page, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_tutorial_runs(capsys):
    blocks = python_blocks(TUTORIAL.read_text())
    assert len(blocks) >= 8, "docs/gtk_tutorial.md lost its code blocks"
    scope: dict = {"__name__": "gtk_tutorial"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{TUTORIAL.name} block {i + 1}", "exec"), scope)  # noqa: S102 (our own page)
    out = capsys.readouterr().out
    assert "implementation='structured'" in out and "bound: smooth target" in out
