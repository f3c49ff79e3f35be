"""What :func:`gridfield.gtk.gtk_fn` differentiates: ``f`` as ``f(params, x)``, its parameters, the grids it
calls (found by type, whatever their attribute names) and the ``wrt`` selection."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import torch
from torch import Tensor, nn
from torch.func import functional_call

from gridfield.errors import InputError
from gridfield.grids.base import Grid

GROUPS = ("grid", "other", "all")


class _Method(nn.Module):
    """Calls ``getattr(inner, method)(x)``: lets ``functional_call`` run a bound method such as
    ``RadianceField.density`` (``functional_call`` always calls ``forward``)."""

    def __init__(self, inner: nn.Module, method: str) -> None:
        super().__init__()
        self.inner, self.method = inner, method

    def forward(self, x: Tensor) -> Tensor:
        return getattr(self.inner, self.method)(x)


@dataclass
class GridInfo:
    """One grid the model contains: its path (``"rf.density_grid"``) and table attribute -> params key."""

    name: str
    grid: Grid
    tables: dict[str, str] = field(default_factory=dict)


class Model:
    """``f`` as ``call(params, x)`` over a dict of named tensors.

    f: an ``nn.Module`` (called as ``f(x)``; ``params`` default to its named parameters), a bound method
    of one (``field.density``), or a function ``f(params, x)`` (``params`` required).
    """

    def __init__(self, f, params: Mapping[str, Tensor] | None) -> None:
        self.module: nn.Module | None = None
        self._prefix = ""
        if isinstance(f, nn.Module):
            if type(f).forward is nn.Module.forward:
                raise InputError(f"{type(f).__name__} has no forward(); pass the method to differentiate, "
                                 f"e.g. gtk_fn(model.density), or a function f(params, x)")
            self.module, self._runner, self.label = f, f, type(f).__name__
        elif inspect.ismethod(f) and isinstance(f.__self__, nn.Module):
            self.module, self._prefix = f.__self__, "inner."
            self._runner = _Method(f.__self__, f.__func__.__name__)
            self.label = f"{type(f.__self__).__name__}.{f.__func__.__name__}"
        elif callable(f):
            if params is None:
                raise InputError("gtk_fn(f, params): a function f(params, x) needs its params, a dict "
                                 "{name: tensor} (for an nn.Module pass the module itself)")
            self._runner, self.label = f, getattr(f, "__name__", type(f).__name__)
        else:
            raise InputError(f"gtk_fn expects an nn.Module, a bound method of one, or a function "
                             f"f(params, x); got {type(f).__name__}")
        self.base = _check_params(params, "params") if params is not None else None

    # -- parameters ---------------------------------------------------------------------------
    def params(self, override: Mapping[str, Tensor] | None = None) -> tuple[dict[str, Tensor], set[str]]:
        """``(params, trainable names)``, detached. A module's own parameters count as trainable when
        they require grad; explicitly given tensors always do."""
        out: dict[str, Tensor] = {}
        trainable: set[str] = set()
        if self.module is not None:
            for k, v in self.module.named_parameters():
                out[k] = v.detach()
                if v.requires_grad:
                    trainable.add(k)
        for given in (self.base, None if override is None else _check_params(override, "params")):
            if given:
                if self.module is not None:
                    unknown = sorted(set(given) - set(out))
                    if unknown:
                        raise InputError(f"params names {unknown[:5]} are not parameters of {self.label}; "
                                         f"it has {_names_hint(out)}")
                out.update({k: v.detach() for k, v in given.items()})
                trainable |= set(given)
        if not out:
            raise InputError(f"{self.label} has no parameters to differentiate")
        return out, trainable

    def call(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """``f(params, x)``."""
        if self.module is None:
            return self._runner(params, x)
        p = {self._prefix + k: v for k, v in params.items()} if self._prefix else params
        return functional_call(self._runner, p, (x,))

    # -- grids --------------------------------------------------------------------------------
    def module_grids(self) -> list[GridInfo]:
        """The outermost ``Grid`` submodules of a module, by type (nested grids belong to their parent)."""
        if self.module is None:
            return []
        found: list[GridInfo] = []
        for name, mod in self.module.named_modules():
            if isinstance(mod, Grid) and not any(name.startswith(g.name + ".") or g.name == ""
                                                 for g in found):
                pre = f"{name}." if name else ""
                found.append(GridInfo(name, mod, {a: pre + a for a in mod.grid_param_names}))
        return found


def _check_params(params, what: str) -> dict[str, Tensor]:
    if not isinstance(params, Mapping):
        raise InputError(f"{what} must be a dict {{name: tensor}}, got {type(params).__name__}")
    bad = [k for k, v in params.items() if not isinstance(v, Tensor) or not v.is_floating_point()]
    if bad:
        raise InputError(f"{what} entries must be floating-point tensors; not so: {bad[:5]}")
    return dict(params)


def _names_hint(names: Iterable[str], limit: int = 12) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def resolve_wrt(wrt, params: Mapping[str, Tensor], trainable: set[str], grid_keys: set[str]) -> list[str]:
    """Parameter names selected by ``wrt`` (in ``params`` order).

    wrt: a group (``"grid"``: the tables of every grid the model contains; ``"other"``: every other
    trainable parameter; ``"all"``: both), an exact name, a glob (``"decoder.*"``), or a list of these.
    """
    items = [wrt] if isinstance(wrt, str) else list(wrt) if isinstance(wrt, Iterable) else None
    if not items or not all(isinstance(i, str) for i in items):
        raise InputError(f"wrt must be a group {list(GROUPS)}, a parameter name, a glob, or a list of "
                         f"these; got {wrt!r}")
    grid = [k for k in params if k in grid_keys]
    other = [k for k in params if k not in grid_keys and k in trainable]
    chosen: set[str] = set()
    for item in items:
        if item == "grid":
            if not grid:
                raise InputError("wrt='grid' but the model calls no gridfield Grid (found by type); use "
                                 "wrt='all' for its empirical NTK")
            hit = grid
        elif item == "other":
            hit = other
        elif item == "all":
            hit = grid + other
        else:
            hit = [k for k in params if fnmatchcase(k, item)]
        if not hit:
            raise InputError(f"wrt item {item!r} matches no parameter; groups: {list(GROUPS)}; "
                             f"parameters: {_names_hint(params)}")
        chosen |= set(hit)
    return [k for k in params if k in chosen]


class GridCalls:
    """Records every call of an outermost grid during ``f(params, x)``; optionally replaces its output
    ``h`` by ``h + delta`` (``delta`` zero, differentiable) and its support at the call's inputs.

    Module grids get their own hooks; for a plain function, a global module hook finds the grids called
    (by type), for the duration of the call only.
    """

    def __init__(self, grids: list[GridInfo], params: Mapping[str, Tensor], with_delta: bool,
                 with_support: bool) -> None:
        self.grids, self.with_delta, self.with_support = grids, with_delta, with_support
        self.ids = {id(v): k for k, v in params.items()}
        self.calls: list[dict] = []
        self._depth = 0
        self._handles: list = []

    def __enter__(self) -> GridCalls:
        if self.grids:
            for g in self.grids:
                self._handles.append(g.grid.register_forward_hook(self._record))
        else:
            self._handles.append(nn.modules.module.register_module_forward_pre_hook(self._pre))
            self._handles.append(nn.modules.module.register_module_forward_hook(self._post))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _pre(self, mod, args):
        if isinstance(mod, Grid):
            self._depth += 1

    def _post(self, mod, args, out):
        if not isinstance(mod, Grid):
            return None
        self._depth -= 1
        return self._record(mod, args, out) if self._depth == 0 else None

    def _record(self, mod: Grid, args, out: Tensor):
        tables = {}
        for attr in mod.grid_param_names:
            key = self.ids.get(id(getattr(mod, attr)))
            if key is not None:
                tables[attr] = key
        u = args[0]
        entry = {"grid": mod, "tables": tables, "rows": int(u.shape[0]), "width": int(out.shape[-1]),
                 "feat": {a: int(getattr(mod, a).shape[-1]) for a in tables}}
        if self.with_support:
            with torch.no_grad():
                entry["terms"] = mod.support(u.detach())
        if self.with_delta:
            delta = torch.zeros_like(out).requires_grad_(True)
            entry["delta"] = delta
            self.calls.append(entry)
            return out + delta
        self.calls.append(entry)
        return None


def discover(model: Model, params: Mapping[str, Tensor], x1: Tensor) -> list[GridInfo]:
    """The grids ``f`` calls on one point and the params keys of their tables (by tensor identity)."""
    grids = model.module_grids()
    with torch.no_grad(), GridCalls(grids, params, with_delta=False, with_support=False) as rec:
        model.call(params, x1[:1])
    if grids:
        for g in grids:
            g.tables = {a: k for a, k in g.tables.items() if k in params}
        return grids
    infos: dict[int, GridInfo] = {}
    for c in rec.calls:
        g = c["grid"]
        if id(g) not in infos and c["tables"]:
            key = next(iter(c["tables"].values()))
            attr = next(iter(c["tables"]))
            name = key[: -len(attr) - 1] if key.endswith("." + attr) else type(g).__name__
            infos[id(g)] = GridInfo(name, g, dict(c["tables"]))
    return list(infos.values())


def param_dtype(params: Mapping[str, Tensor]) -> torch.dtype:
    return next(iter(params.values())).dtype


Call = Callable[[Mapping[str, Tensor], Tensor], Tensor]
