"""Frozen model specs: plain data that names a model and rebuilds it.

* :class:`GridSpec`: one grid (a name of :func:`gridfield.models.grid_classes` and its kwargs);
* :class:`FieldSpec`: what :func:`gridfield.models.build_field` takes (grid + decoder, or a non-grid
  reference model);
* :class:`RadianceSpec`: a :class:`~gridfield.fields.radiance.RadianceField` (density grid, colour
  grid or None, field settings, scene box, learning rates).

Specs are immutable and hashable (kwargs are a :class:`Kwargs` mapping, lists are stored as tuples);
changing one means making a new one (:func:`dataclasses.replace`, :meth:`RadianceSpec.refit`).
``to_dict()`` gives plain data with a ``"kind"`` tag (what checkpoints store); ``from_dict`` checks
every key and raises :class:`~gridfield.errors.InputError` naming the bad one. The dicts have the keys
of the untagged specs checkpoints stored before, so those load too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import torch
from torch import nn

from gridfield.errors import InputError
from gridfield.fields.radiance import RadianceField
from gridfield.grids.base import Grid
from gridfield.models import build_field, make_grid

_SCALARS = (bool, int, float, str, type(None))


def _freeze(value: Any, where: str) -> Any:
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise InputError(f"{where}: unsupported value {value!r} of type {type(value).__name__} "
                     "(use numbers, strings, None or lists of them)")


def _thaw(value: Any) -> Any:
    return [_thaw(v) for v in value] if isinstance(value, tuple) else value


class Kwargs(Mapping[str, Any]):
    """Immutable, hashable keyword arguments; sequences are stored as tuples (:meth:`to_dict`: lists)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None, where: str = "kwargs") -> None:
        if data is not None and not isinstance(data, Mapping):
            raise InputError(f"{where} must be a mapping, got {type(data).__name__}")
        items = {}
        for k, v in (data or {}).items():
            if not isinstance(k, str):
                raise InputError(f"{where}: key {k!r} is not a string")
            items[k] = _freeze(v, f"{where}.{k}")
        object.__setattr__(self, "_data", items)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Kwargs is immutable")

    def __copy__(self) -> Kwargs:
        return self  # immutable: a copy is the same object (copy.deepcopy of specs and states works)

    def __deepcopy__(self, memo: dict) -> Kwargs:
        return self

    def __reduce__(self):
        return (Kwargs, (self.to_dict(),))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return "Kwargs(" + ", ".join(f"{k}={v!r}" for k, v in self._data.items()) + ")"

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (tuples back to lists): what the constructors were given before."""
        return {k: _thaw(v) for k, v in self._data.items()}


def _check(owner: str, key: str, value: Any, kinds: type | tuple[type, ...]) -> None:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise InputError(f"{owner}.{key} must be {names}, got {type(value).__name__} {value!r}")


def _keys(owner: str, d: Any, required: Sequence[str], optional: Sequence[str] = ()) -> None:
    if not isinstance(d, Mapping):
        raise InputError(f"{owner} must be a dict, got {type(d).__name__}")
    missing = [k for k in required if k not in d]
    unknown = [k for k in d if k not in required and k not in optional and k != "kind"]
    if missing or unknown:
        parts = ([f"missing keys {missing}"] if missing else []) + ([f"unknown keys {unknown}"] if unknown else [])
        raise InputError(f"{owner}: {', '.join(parts)}")


def _check_kind(cls: type, d: Mapping) -> None:
    if d.get("kind", cls.KIND) != cls.KIND:
        raise InputError(f"{cls.__name__}.kind must be {cls.KIND!r}, got {d['kind']!r}")


@dataclass(frozen=True)
class GridSpec:
    """One grid: model name and constructor kwargs (the input dimension is given at build time)."""

    model: str
    kwargs: Kwargs = Kwargs()
    KIND: ClassVar[str] = "grid"

    def __post_init__(self) -> None:
        _check("GridSpec", "model", self.model, str)
        object.__setattr__(self, "kwargs", Kwargs(self.kwargs, "GridSpec.kwargs"))

    def build(self, dim: int) -> Grid:
        """The (untrained) grid for ``dim``-D inputs; ``ValueError`` when it cannot be built."""
        return make_grid(self.model, dim, **self.kwargs.to_dict())

    def with_kwargs(self, **kwargs: Any) -> GridSpec:
        """A new spec with ``kwargs`` replaced."""
        return replace(self, kwargs={**self.kwargs, **kwargs})

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.KIND, "model": self.model, "kwargs": self.kwargs.to_dict()}

    @classmethod
    def from_dict(cls, d: Any, where: str = "GridSpec") -> GridSpec:
        """From :meth:`to_dict`'s dict, or an old ``(model, kwargs)`` pair."""
        if isinstance(d, (list, tuple)) and len(d) == 2:
            return cls(d[0], d[1])
        _keys(where, d, ("model", "kwargs"))
        _check_kind(cls, d)
        return cls(d["model"], d["kwargs"])


@dataclass(frozen=True)
class FieldSpec:
    """A grid model and its decoder, or a non-grid reference model (``decoder`` then unused)."""

    model: str
    in_dim: int
    out_dim: int
    decoder: str = "linear"
    decoder_kwargs: Kwargs | None = None
    grid_kwargs: Kwargs = Kwargs()
    KIND: ClassVar[str] = "field"

    def __post_init__(self) -> None:
        for key, kinds in (("model", str), ("in_dim", int), ("out_dim", int), ("decoder", str)):
            _check("FieldSpec", key, getattr(self, key), kinds)
        if self.decoder_kwargs is not None:
            object.__setattr__(self, "decoder_kwargs", Kwargs(self.decoder_kwargs, "FieldSpec.decoder_kwargs"))
        object.__setattr__(self, "grid_kwargs", Kwargs(self.grid_kwargs, "FieldSpec.grid_kwargs"))

    def build(self) -> nn.Module:
        """The (untrained) :class:`~gridfield.fields.field.Field` (or reference model)."""
        dec = None if self.decoder_kwargs is None else self.decoder_kwargs.to_dict()
        return build_field(self.model, self.in_dim, self.out_dim, self.decoder, dec, **self.grid_kwargs.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.KIND, "model": self.model, "in_dim": self.in_dim, "out_dim": self.out_dim,
                "decoder": self.decoder,
                "decoder_kwargs": None if self.decoder_kwargs is None else self.decoder_kwargs.to_dict(),
                "grid_kwargs": self.grid_kwargs.to_dict()}

    @classmethod
    def from_dict(cls, d: Any) -> FieldSpec:
        _keys("FieldSpec", d, ("model", "in_dim", "out_dim", "decoder", "grid_kwargs"), ("decoder_kwargs",))
        _check_kind(cls, d)
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass(frozen=True)
class RadianceSpec:
    """A radiance field: density grid, colour grid (None: one shared grid), ``RadianceField`` settings
    (appearance, step, sigma_scale, alpha_init), scene box ``aabb`` (6 floats), Adam learning rates,
    the preset's model name and final resolution."""

    density: GridSpec
    color: GridSpec | None
    field: Kwargs
    aabb: tuple[float, ...]
    lr_grid: float
    lr_other: float
    model: str
    resolution: int
    KIND: ClassVar[str] = "radiance"

    def __post_init__(self) -> None:
        _check("RadianceSpec", "density", self.density, GridSpec)
        _check("RadianceSpec", "color", self.color, (GridSpec, type(None)))
        object.__setattr__(self, "field", Kwargs(self.field, "RadianceSpec.field"))
        _check("RadianceSpec", "aabb", self.aabb, (list, tuple))
        if len(self.aabb) != 6:
            raise InputError(f"RadianceSpec.aabb must have 6 numbers, got {list(self.aabb)}")
        for i, v in enumerate(self.aabb):
            _check("RadianceSpec", f"aabb[{i}]", v, (int, float))
        object.__setattr__(self, "aabb", tuple(float(v) for v in self.aabb))
        for key in ("lr_grid", "lr_other"):
            _check("RadianceSpec", key, getattr(self, key), (int, float))
            object.__setattr__(self, key, float(getattr(self, key)))
        _check("RadianceSpec", "model", self.model, str)
        _check("RadianceSpec", "resolution", self.resolution, int)

    def build(self) -> RadianceField:
        """The (untrained) :class:`~gridfield.fields.radiance.RadianceField` (``InputError`` for bad grids)."""
        def grid(g: GridSpec | None):
            if g is None:
                return None
            try:
                return g.build(3)
            except (ValueError, TypeError) as e:
                raise InputError(f"cannot build the {g.model} grid: {e}") from None

        return RadianceField(grid(self.density), grid(self.color), torch.tensor(list(self.aabb)),
                             **self.field.to_dict())

    def refit(self, resolution: int, aabb: Sequence[float]) -> RadianceSpec:
        """A new spec with the grids at one level of ``resolution`` and the box ``aabb`` (coarse to fine)."""
        color = None if self.color is None else self.color.with_kwargs(resolutions=[resolution])
        return replace(self, density=self.density.with_kwargs(resolutions=[resolution]), color=color,
                       aabb=tuple(aabb))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.KIND, "density": self.density.to_dict(),
                "color": None if self.color is None else self.color.to_dict(), "field": self.field.to_dict(),
                "aabb": list(self.aabb), "lr_grid": self.lr_grid, "lr_other": self.lr_other,
                "model": self.model, "resolution": self.resolution}

    @classmethod
    def from_dict(cls, d: Any) -> RadianceSpec:
        names = [f.name for f in fields(cls)]
        _keys("RadianceSpec", d, names)
        _check_kind(cls, d)
        grids = {k: None if d[k] is None else GridSpec.from_dict(d[k], f"RadianceSpec.{k}")
                 for k in ("density", "color")}
        return cls(**{**{k: d[k] for k in names}, **grids})


SPEC_TYPES = (GridSpec, FieldSpec, RadianceSpec)


def spec_from_dict(d: Any) -> GridSpec | FieldSpec | RadianceSpec:
    """Any spec from its ``to_dict()`` (by ``"kind"``; untagged old dicts: radiance if they have ``density``)."""
    if not isinstance(d, Mapping):
        raise InputError(f"a spec must be a dict, got {type(d).__name__}")
    kind = d.get("kind", "radiance" if "density" in d else "field")
    for cls in SPEC_TYPES:
        if cls.KIND == kind:
            return cls.from_dict(d)
    raise InputError(f"spec kind must be one of {[c.KIND for c in SPEC_TYPES]}, got {kind!r}")


def build_spec(spec: FieldSpec | RadianceSpec | Mapping) -> nn.Module:
    """Build the module a spec describes (a spec dict is read with :func:`spec_from_dict` first)."""
    if isinstance(spec, Mapping):
        spec = spec_from_dict(spec)
    return spec.build()
