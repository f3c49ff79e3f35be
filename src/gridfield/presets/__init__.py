"""Model specs in one registry: every task's models at their standard parameter budgets.

``get(task, model, **options) -> spec`` and ``models(task) -> list[str]`` for the tasks ``image``
(:mod:`.image`, options ``out_dim``, ``param_budget``, ``decoder``), ``sdf`` (:mod:`.sdf`,
``param_budget``, ``decoder``), ``nerf`` (:mod:`.nerf`, ``resolution``, ``appearance``,
``aabb_scale``, ``step``, ``alpha_init``) and ``analyses`` (:mod:`.analyses`, no options). A spec is a
frozen :class:`FieldSpec`, :class:`RadianceSpec` or :class:`GridSpec` (:mod:`.specs`); ``spec.build()``
makes the module. Importing this package computes no spec and builds nothing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from gridfield.errors import InputError
from gridfield.presets import analyses, image, nerf, sdf
from gridfield.presets.image import image_field, image_field_spec, image_lr, image_models
from gridfield.presets.specs import FieldSpec, GridSpec, Kwargs, RadianceSpec, build_spec, spec_from_dict

__all__ = ["FieldSpec", "GridSpec", "Kwargs", "RadianceSpec", "TASKS", "build_spec", "get", "image_field",
           "image_field_spec", "image_lr", "image_models", "models", "spec_from_dict"]

TASKS = ("image", "sdf", "nerf", "analyses")


def _entry(task: str) -> tuple[Callable[..., Any], Callable[[], list[str]]]:
    """``(spec function, models function)`` of ``task``."""
    table = {"image": (image.image_field_spec, image.image_models),
             "sdf": (sdf.sdf_field_spec, sdf.sdf_models),
             "nerf": (nerf.model_spec, nerf.nerf_models),
             "analyses": (analyses.analysis_spec, analyses.analysis_models)}
    if task not in table:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return table[task]


def models(task: str) -> list[str]:
    """Model names of ``task`` (those whose grid module is available; the analyses: all of them)."""
    return _entry(task)[1]()


def get(task: str, model: str, **options: Any) -> FieldSpec | RadianceSpec | GridSpec:
    """The spec of ``model`` for ``task``; an unknown model or option raises ``InputError`` listing the choices."""
    fn = _entry(task)[0]
    try:
        inspect.signature(fn).bind(model, **options)
    except TypeError:
        names = list(inspect.signature(fn).parameters)[1:]
        raise InputError(f"bad options {sorted(options)} for {task}; choose from {', '.join(names)}") from None
    return fn(model, **options)
