"""Shared helpers for benchmark scripts: machine description and writing results.

Each benchmark writes ``benchmarks/results/<name>.json`` and replaces its own section of
``docs/benchmarks.md`` (between ``<!-- BEGIN name -->`` and ``<!-- END name -->``), so several
benchmarks share one page without overwriting each other.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SHARED_DATA = ROOT.parent / "shared" / "data"


def machine() -> dict:
    """Where and when the numbers were measured (:func:`gridfield.machine.describe` plus the date) and how fast
    the machine was then (:func:`gridfield.machine.speed_probe`: matmul GFLOP/s and copy GB/s)."""
    from gridfield.machine import describe, speed_probe

    return {"date": _dt.date.today().isoformat(), **describe(), "probe": speed_probe()}


def lego_present(scene: Path) -> bool:
    """Whether the NeRF-synthetic scene ``scene`` is there; if not, say that the benchmark skips it."""
    if (Path(scene) / "transforms_train.json").is_file():
        return True
    print(f"skipping: lego scene not found at {scene}")
    return False


def probe_text(info: dict) -> str:
    """``"probe 120 GFLOP/s, 11 GB/s"`` from :func:`machine`'s record ('' for records without a probe)."""
    p = info.get("probe")
    return f"probe {p['matmul_gflops']:.0f} GFLOP/s, {p['copy_gbps']:.0f} GB/s" if p else ""


def write_results(name: str, payload: dict, markdown: str) -> None:
    """Save ``payload`` as JSON and put ``markdown`` into the ``name`` section of docs/benchmarks.md."""
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    fresh = ("# Benchmarks\n\nNumbers measured by the scripts in `benchmarks/`; "
             "each section says the machine and date.\n")
    text = DOC.read_text() if DOC.exists() else fresh
    block = f"{begin}\n{markdown.strip()}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of ``rows`` (dicts) restricted to ``columns``; floats to 2-4 significant places."""

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.2f}" if abs(v) >= 1 else f"{v:.4f}"
        return str(v)

    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "\n".join("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows)
