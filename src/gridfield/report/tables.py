"""Tables of a report: the runs' metrics, and every table found in a benchmark result file.

A benchmark file has no fixed layout; :func:`benchmark_tables` finds its tables by shape: a list of
records (``"results": [{...}, ...]``) is one table, a mapping of names to records (``"models":
{"dense": {...}, ...}``) is one table with a name column, the numbers and strings directly in a mapping
are a two-column table; nested mappings are walked, and a record's own tables (a model's per-image
results) follow its table, but not its details (a row's ``spec`` or ``config``). ``machine`` entries are
not tables (the report shows them as the machine line).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gridfield.report.runs import Run

#: Metrics compared per task, in order (a column appears when at least one run has it).
METRICS = {
    "image": ("model", "params", "steps", "psnr", "test_psnr", "full_psnr", "ssim", "train_seconds", "shape"),
    "sdf": ("mesh", "model", "params", "steps", "iou_grid", "iou_points", "chamfer_l1", "chamfer_l2", "fscore@0.01",
            "fscore@0.002", "normal_consistency", "train_seconds"),
    "nerf": ("model", "appearance", "params", "steps", "psnr", "ssim", "train_seconds", "rays_per_second",
             "final_resolution", "n_test_views"),
}
#: Metrics where more is better (+1) or less is better (-1): the best run's value is marked.
BETTER = {"psnr": 1, "test_psnr": 1, "full_psnr": 1, "ssim": 1, "iou_grid": 1, "iou_points": 1, "chamfer_l1": -1,
          "chamfer_l2": -1, "fscore@0.01": 1, "fscore@0.002": 1, "normal_consistency": 1, "train_seconds": -1,
          "rays_per_second": 1}
MAX_ROWS = 500


@dataclass
class Table:
    """A titled table: ``columns`` and ``rows`` (lists of cell values); ``best[column] = row index``."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    best: dict[str, int]
    note: str = ""


def is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _cell(v: Any) -> bool:
    """Shown in a cell: a scalar, or a short list of scalars."""
    return is_scalar(v) or (isinstance(v, list) and len(v) <= 8 and all(is_scalar(x) for x in v))


def fmt(v: Any) -> str:
    """A cell as text: floats to 2 decimals (>= 1) or 4 significant digits, big numbers grouped."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v).lower()
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if abs(v) >= 10_000:
            return f"{v:,.0f}"
        return f"{v:.2f}" if abs(v) >= 1 else f"{v:.4g}"
    if isinstance(v, list):
        return " x ".join(fmt(x) for x in v) if all(isinstance(x, int) for x in v) else ", ".join(map(fmt, v))
    return str(v)


def _best(columns: list[str], rows: list[list[Any]]) -> dict[str, int]:
    best = {}
    for j, c in enumerate(columns):
        sign = BETTER.get(c)
        vals = [(r[j], i) for i, r in enumerate(rows)
                if isinstance(r[j], (int, float)) and not isinstance(r[j], bool) and math.isfinite(r[j])]
        if sign and len(vals) > 1:
            best[c] = max(vals, key=lambda t: sign * t[0])[1]
    return best


def metrics_table(runs: list[Run]) -> Table:
    """One row per run: its name and the task's :data:`METRICS` that any run has."""
    task = runs[0].task
    columns = [c for c in METRICS[task] if any(c in r.metrics for r in runs)]
    rows = [[r.name] + [r.metrics.get(c) for c in columns] for r in runs]
    columns = ["run", *columns]
    return Table(f"{task} runs", columns, rows, _best(columns, rows))


def _records_table(title: str, records: list[tuple[str | None, dict]]) -> Table:
    """Rows from records (optionally named); columns: every cell-like key, in first-seen order."""
    columns: list[str] = []
    for _, rec in records:
        columns += [k for k, v in rec.items() if _cell(v) and k not in columns]
    named = any(name is not None for name, _ in records)
    rows = [([name] if named else []) + [rec.get(c) for c in columns] for name, rec in records[:MAX_ROWS]]
    cols = (["name"] if named else []) + columns
    note = f"first {MAX_ROWS} of {len(records)} rows" if len(records) > MAX_ROWS else ""
    return Table(title, cols, rows, _best(cols, rows), note)


def _is_records(d: dict) -> bool:
    """A mapping of names to records (dicts with at least one cell)."""
    return bool(d) and all(isinstance(v, dict) and any(_cell(x) for x in v.values()) for v in d.values())


def benchmark_tables(data: dict, title: str = "") -> list[Table]:
    """Every table of a benchmark result object (see the module docstring), in file order."""
    tables: list[Table] = []

    def nested(records: list[tuple[str | None, dict]], where: str) -> None:
        for i, (name, rec) in enumerate(records[:MAX_ROWS]):
            for k, v in rec.items():  # nested tables (per-model images), not per-row details (spec, config)
                many = (isinstance(v, list) and v and all(isinstance(x, dict) for x in v)) or \
                    (isinstance(v, dict) and _is_records(v))
                if k != "machine" and many:
                    visit(v, f"{where} / {name if name is not None else f'[{i}]'} / {k}")

    def visit(v: Any, where: str) -> None:
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            records = [(None, x) for x in v]
        elif isinstance(v, dict) and _is_records(v):
            records = list(v.items())
        else:
            if isinstance(v, dict):
                walk(v, where)
            return
        tables.append(_records_table(where, records))
        nested(records, where)

    def walk(obj: dict, path: str) -> None:
        pairs = [(k, v) for k, v in obj.items() if _cell(v)]
        if pairs:
            tables.append(Table(path or title or "summary", ["key", "value"], [[k, v] for k, v in pairs], {}))
        for k, v in obj.items():
            if k != "machine" and not _cell(v):
                visit(v, f"{path} / {k}" if path else k)

    walk(data, "")
    return tables


def machines(data: Any) -> list[dict]:
    """Every ``machine`` mapping in a benchmark result (distinct ones, in file order)."""
    found: list[dict] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k == "machine" and isinstance(v, dict) and v not in found:
                    found.append(v)
                else:
                    walk(v)
        elif isinstance(obj, list):
            for x in obj:
                walk(x)

    walk(data)
    return found
