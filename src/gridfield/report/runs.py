"""What ``gridfield report`` reads: task run folders and benchmark result files, checked.

A run folder is a gridfield output (its ``.gridfield-output.json`` marker, see
:mod:`gridfield.outdir`) of ``gridfield image``, ``sdf`` or ``nerf``: ``metrics.json`` (numbers,
``spec``, ``config`` and, since they were added, ``task``, ``machine`` and ``date``), ``history.json``
(the training curve, when the task records one) and the task's pictures. A benchmark result is a JSON
object written by ``benchmarks/*.py`` (``benchmarks/results/*.json``). Every problem is one
:class:`~gridfield.errors.InputError` naming the path.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gridfield.errors import InputError, regular_file
from gridfield.outdir import MARKER

TASKS = ("image", "sdf", "nerf")
#: The pictures compared side by side, per task: (file in the run folder, caption).
PICTURES = {
    "image": (("reconstruction.png", "reconstruction"), ("error_map.png", "error map")),
    "sdf": (("preview.png", "extracted mesh"), ("sdf_slices.png", "SDF slices")),
    "nerf": (("test_000.png", "test view 0"), ("error_000.png", "error, test view 0"),
             ("depth_000.png", "depth, test view 0")),
}
_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "image/png", b"GIF87a": "image/gif", b"GIF89a": "image/gif"}


@dataclass
class Run:
    """One task run: its folder, display ``name``, ``task``, ``metrics`` and ``history`` (None when the
    task records none), ``pictures`` ``[(caption, path or None)]``, ``machine`` (None when not recorded)
    and ``date`` (``date_source``: ``"metrics.json"`` or ``"file time"``)."""

    path: Path
    name: str
    task: str
    metrics: dict
    history: list[dict] | None
    pictures: list[tuple[str, Path | None]]
    machine: dict | None
    date: str
    date_source: str


@dataclass
class Benchmark:
    """One benchmark result file: its path, ``name`` and the parsed JSON object ``data``."""

    path: Path
    name: str
    data: dict = field(repr=False)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{what} {str(path)!r} is not UTF-8 text; it is damaged or not written by gridfield") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{what} {str(path)!r} is not valid JSON (line {e.lineno}: {e.msg})") from None
    except OSError as e:
        raise InputError(f"cannot read {what} {str(path)!r}: {e.strerror or type(e).__name__}") from None


def guess_task(metrics: dict) -> str | None:
    """The task of a ``metrics.json``: its ``task`` entry, else recognised from the task's own keys."""
    if metrics.get("task") in TASKS:
        return metrics["task"]
    if "psnr_per_view" in metrics:
        return "nerf"
    if "iou_grid" in metrics:
        return "sdf"
    if "full_psnr" in metrics:
        return "image"
    return None


def picture_type(path: Path) -> str | None:
    """``"image/png"`` or ``"image/gif"`` from the file's signature, None for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    return next((mime for sig, mime in _SIGNATURES.items() if head.startswith(sig)), None)


def read_run(path: str | Path) -> Run:
    """Read and check one run folder (see the module docstring)."""
    p = Path(path)
    if not p.is_dir():
        raise InputError(f"{str(p)!r} is not a folder; give the --out folder of gridfield image, sdf or nerf")
    marker = p / MARKER
    if not marker.is_file():
        raise InputError(f"{str(p)!r} is not a gridfield output folder (no {MARKER}); give the --out folder of "
                         "gridfield image, sdf or nerf")
    mark = _read_json(marker, "output marker")
    if not isinstance(mark, dict) or mark.get("writer") != "gridfield":
        raise InputError(f"{str(marker)!r} is not a gridfield output marker; give a folder gridfield wrote")
    metrics_path = p / "metrics.json"
    if not metrics_path.is_file():
        raise InputError(f"{str(p)!r} is a gridfield output without metrics.json (an analysis or a scene, not a "
                         "run); give the --out folder of gridfield image, sdf or nerf")
    metrics = _read_json(regular_file(metrics_path, "metrics file"), "metrics file")
    if not isinstance(metrics, dict):
        raise InputError(f"{str(metrics_path)!r} is not a JSON object; the run folder is damaged")
    task = guess_task(metrics)
    if task is None:
        raise InputError(f"{str(metrics_path)!r} is not the metrics of gridfield image, sdf or nerf (no task)")
    history = None
    if (p / "history.json").is_file():
        history = _read_json(p / "history.json", "training history")
        if not (isinstance(history, list) and all(isinstance(h, dict) for h in history)):
            raise InputError(f"{str(p / 'history.json')!r} is not a list of rows; the run folder is damaged")
    pictures = [(caption, p / name if picture_type(p / name) else None) for name, caption in PICTURES[task]]
    machine = metrics.get("machine") if isinstance(metrics.get("machine"), dict) else None
    if isinstance(metrics.get("date"), str):
        date, source = metrics["date"], "metrics.json"
    else:
        mtime = datetime.datetime.fromtimestamp(metrics_path.stat().st_mtime).astimezone()
        date, source = mtime.isoformat(timespec="seconds"), "file time"
    return Run(p, p.name, task, metrics, history, pictures, machine, date, source)


def read_benchmark(path: str | Path) -> Benchmark:
    """Read one benchmark result file (a JSON object); a run's ``metrics.json`` is refused (give its folder)."""
    p = regular_file(path, "benchmark result")
    data = _read_json(p, "benchmark result")
    if not isinstance(data, dict) or not data:
        raise InputError(f"{str(p)!r} is not a benchmark result (a JSON object, as benchmarks/results/*.json)")
    if guess_task(data) is not None and "config" in data:
        raise InputError(f"{str(p)!r} is a run's metrics.json; give its folder ({str(p.parent)!r}) instead")
    return Benchmark(p, data.get("benchmark") if isinstance(data.get("benchmark"), str) else p.stem, data)


def read_inputs(paths: list[str | Path]) -> tuple[list[Run], list[Benchmark]]:
    """Run folders and benchmark files from ``paths`` (folders are runs, ``.json`` files benchmarks).

    Refuses, with one line, an empty list, a path that is neither, and runs of more than one task.
    """
    if not paths:
        raise InputError("give at least one run folder (gridfield image/sdf/nerf --out) or benchmark .json file")
    runs, benches = [], []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            runs.append(read_run(p))
        elif p.suffix.lower() == ".json" or p.is_file():
            benches.append(read_benchmark(p))
        else:
            raise InputError(f"{str(p)!r} not found; give run folders and benchmark .json files")
    seen: set[Path] = set()
    for r in runs:
        if r.path.resolve() in seen:
            raise InputError(f"run folder {str(r.path)!r} is given twice")
        seen.add(r.path.resolve())
    tasks = sorted({r.task for r in runs})
    if len(tasks) > 1:
        shown = ", ".join(f"{r.name} ({r.task})" for r in runs)
        raise InputError(f"the runs are of different tasks ({shown}); a report compares runs of one task")
    _unique_names(runs)
    return runs, benches


def _unique_names(runs: list[Run]) -> None:
    """Runs with the same folder name are told apart by their parent folders."""
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.name] = seen.get(r.name, 0) + 1
    for r in runs:
        if seen[r.name] > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.name}"
