"""Reading and writing the tasks' checkpoints (one tagged dict per file, tensors on the CPU).

A checkpoint is trusted only after it has been checked: :func:`read_checkpoint` (a regular file that
fits in memory, unpickled with ``weights_only=True``, of the expected ``format``), :func:`require_keys`
(the entries a task needs, of the right types) and :func:`build_checked` (the stored spec rebuilds a
module whose every state key and shape matches the stored weights, that fits in memory and whose
weights are finite). Every failure is one :class:`~gridfield.errors.InputError` naming the file and
the problem; no ``KeyError``/``TypeError`` and no attempt at a huge allocation.

Example (a task's loader)::

    ck = read_checkpoint(path, "gridfield.image/1", "image")
    require_keys(ck, path, {"spec": dict, "state_dict": dict, "shape": list})
    field = build_checked(path, ck["spec"], ck["state_dict"], build_spec).eval()
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from gridfield import memory
from gridfield.errors import InputError, regular_file


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` detached and moved to the CPU (what a checkpoint stores)."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def read_checkpoint(path: str | Path, fmt: str, what: str) -> dict:
    """Load a checkpoint dict whose ``"format"`` is ``fmt``; ``InputError`` naming the file otherwise.

    ``what`` names the kind in the error (``"image"``, ``"SDF"``, ``"NeRF"``). Refuses a path that is
    not a regular file (a FIFO would block) and a file larger than the available memory before
    reading it. Loads with ``weights_only=True`` (no arbitrary code from the file).
    """
    p = regular_file(path, "checkpoint")
    memory.guard(os.path.getsize(p), "loading it", f"checkpoint {str(p)!r}",
                 "the file is larger than the memory; load it on a larger machine")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: the error says it all
            warnings.simplefilter("ignore")
            ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        code = re.search(r"GLOBAL ([\w.]+)", str(e))
        why = type(e).__name__ + (f": it refers to the Python object {code.group(1)}, which is refused (checkpoints "
                                  "are read without running code from them)" if code else
                                  "; the file is damaged or not a checkpoint")
        raise InputError(f"cannot read checkpoint {str(p)!r}: {why}") from None
    if not isinstance(ck, dict) or ck.get("format") != fmt:
        raise InputError(f"{str(p)!r} is not a gridfield {what} checkpoint (format {fmt})")
    return ck


_ALIASES = {dict: (Mapping,), list: (list, tuple), tuple: (list, tuple)}


def _type_names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join("a dict" if t in (dict, Mapping) else "a list" if t in (list, tuple) else
                       f"a {getattr(t, '__name__', t)}" for t in types)


def require_keys(ck: Mapping, path: str | Path, keys: Iterable[str] | Mapping[str, type | tuple[type, ...]],
                 part: str | None = None) -> None:
    """Raise :class:`InputError` unless checkpoint ``ck`` (read from ``path``) has every key in ``keys``.

    ``keys``: names, or a mapping from name to the type(s) its value must have (``{"spec": dict,
    "shape": (list, tuple)}``; ``dict`` accepts any mapping, ``list`` any list or tuple). The message
    names the file and every missing key, or the first entry of the wrong type; ``part`` names a nested
    dict (``"its occupancy grid"``) when ``ck`` is one.
    """
    where = f"checkpoint {str(path)!r}" + (f" ({part})" if part else "")
    if not isinstance(ck, Mapping):
        raise InputError(f"{where} is {_type_names(type(ck))}, expected a dict; the file is damaged or was not "
                         "written by gridfield")
    names = list(keys)
    missing = [k for k in names if k not in ck]
    if missing:
        shown = ", ".join(repr(k) for k in missing)
        raise InputError(f"{where} has no {shown} entr{'y' if len(missing) == 1 else 'ies'}; it is incomplete or "
                         "from another gridfield version; write it again with the same gridfield")
    if isinstance(keys, Mapping):
        for k, types in keys.items():
            allowed = tuple(x for t in (types if isinstance(types, tuple) else (types,))
                            for x in _ALIASES.get(t, (t,)))
            if not isinstance(ck[k], allowed):
                raise InputError(f"{where}: {k!r} is {_type_names(type(ck[k]))}, expected {_type_names(types)}; "
                                 "the file is damaged or was not written by gridfield")


def _shape(t) -> list[int]:
    return list(t.shape)


def _listed(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_state(path: str | Path, state: Any, expected: Mapping[str, torch.Tensor], finite: bool = True) -> None:
    """Raise :class:`InputError` unless ``state`` (a checkpoint's weights) fits ``expected`` (the
    ``state_dict()`` of the module its spec builds, typically on meta): the same keys, each a tensor of
    the same shape; with ``finite``, no NaN or infinite value in a floating tensor."""
    where = f"checkpoint {str(path)!r}"
    if not isinstance(state, Mapping):
        raise InputError(f"{where}: its weights are {_type_names(type(state))}, expected a dict of tensors")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise InputError(f"{where}: weight {bad[0]!r} is {_type_names(type(state[bad[0]]))}, not a tensor; "
                         "the file is damaged or was not written by gridfield")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {_shape(state[k])} in the file, {_shape(expected[k])} for its spec"
                  for k in expected if k in state and _shape(state[k]) != _shape(expected[k])]
    if missing or unexpected or mismatched:
        parts = ([f"missing {_listed(missing)}"] if missing else []) + \
                ([f"unexpected {_listed(unexpected)}"] if unexpected else []) + \
                ([f"shape of {_listed(mismatched)}"] if mismatched else [])
        raise InputError(f"{where}: its weights do not match the model its spec describes ({'; '.join(parts)}); "
                         "the file is damaged or the spec was edited")
    if finite:
        for k, v in state.items():
            if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()):
                raise InputError(f"checkpoint {str(path)!r} has non-finite values in {k}; the training it "
                                 "comes from diverged; train again (e.g. with a lower learning rate)")


def _rebuild(path, spec, build: Callable[[Any], torch.nn.Module], meta: bool):
    where = f"checkpoint {str(path)!r}"
    try:
        if meta:
            return memory.meta_module(lambda: build(spec)), None
        return build(spec), None
    except InputError as e:
        return None, InputError(f"{where}: its spec is invalid: {e}")
    except Exception as e:  # noqa: BLE001 - whatever a bad spec makes the builder raise
        text = str(e).strip().splitlines()
        why = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
        return None, InputError(f"{where}: its spec does not describe a model gridfield can build ({why}); "
                                "the file is damaged or from another gridfield version")


def build_checked(path: str | Path, spec: Any, state: Any, build: Callable[[Any], torch.nn.Module], *,
                  device=None, finite: bool = True, what: str = "the model") -> torch.nn.Module:
    """``build(spec)`` with the weights ``state`` loaded, after checking both without using memory.

    1. ``build(spec)`` runs on ``torch.device("meta")`` (see :func:`gridfield.memory.meta_module`): an
       invalid spec (any exception) becomes one error naming the file; no memory is used.
    2. Every key and shape of the built module's state is compared with ``state`` (missing,
       unexpected and mismatched entries are named), and ``state`` must be finite (``finite``).
    3. The module's parameter and buffer bytes are checked against the available memory
       (:func:`gridfield.memory.guard`), so a spec asking for e.g. 80 GB is refused here.
    4. The module is built for real (under :func:`gridfield.memory.allocation_guard`), the state is
       loaded (``strict``) and the module moved to ``device`` (checked against the device's memory).

    When the builder cannot run on meta at all, step 4 comes first, guarded, then 2. Returns the module
    in the mode ``build`` left it (call ``.eval()``). ``what`` names the module in messages.
    """
    where = f"checkpoint {str(path)!r}"
    if not isinstance(state, Mapping):
        raise InputError(f"{where}: its weights are {_type_names(type(state))}, expected a dict of tensors")
    skeleton, err = _rebuild(path, spec, build, meta=True)
    if err is not None:
        raise err
    module = None
    if skeleton is None:  # the builder needs real tensors: build for real under the allocation guard
        with memory.allocation_guard(f"{what} its spec describes", where,
                                     "the file is damaged, or was written on a larger machine"):
            module, err = _rebuild(path, spec, build, meta=False)
        if err is not None:
            raise err
        skeleton = module
    if not isinstance(skeleton, torch.nn.Module):
        raise InputError(f"{where}: its spec built {_type_names(type(skeleton))}, not a torch module")
    expected = skeleton.state_dict()
    need = memory.module_bytes(skeleton)
    if module is None:
        name, shape, _ = memory.largest_tensor(skeleton)
        memory.guard(need, f"{what} its spec describes (largest tensor {name} {list(shape)})", where,
                     "the file is damaged, or was written on a larger machine")
    check_state(path, state, expected, finite)
    if module is None:
        with memory.allocation_guard(f"{what} its spec describes", where,
                                     "the file is damaged, or was written on a larger machine"):
            module, err = _rebuild(path, spec, build, meta=False)
        if err is not None:
            raise err
    try:
        module.load_state_dict(dict(state), strict=True)
    except (RuntimeError, TypeError, ValueError) as e:
        text = str(e).strip().splitlines()
        why = text[0] if text else type(e).__name__
        raise InputError(f"{where}: its weights cannot be loaded into {what} ({why})") from None
    if device is not None and memory.device_type(device) != "cpu":
        memory.guard(need, f"{what} on {device}", where, "use a device with more free memory, or the CPU",
                     device=device)
        module = module.to(device)
    return module
