"""``gridfield report RUN_DIR... --out report.html``: one self-contained page comparing runs of one task.

The page has a metrics table (the best value of each metric in bold), the training curves of every
run on one figure (from ``history.json``), the runs' pictures side by side (renders and error maps),
each run's model spec, configuration, machine and date, and the tables of any benchmark result files
(``benchmarks/results/*.json``) given with the runs. Pictures are embedded (base64 ``data:`` URLs) and
the style is inline: the file opens anywhere, offline, and can be shared alone. Written atomically.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

from gridfield.errors import InputError
from gridfield.outdir import write_file_atomically
from gridfield.report.runs import Benchmark, Run, picture_type, read_inputs
from gridfield.report.tables import Table, benchmark_tables, fmt, machines, metrics_table

#: History columns that are bookkeeping, not curves.
_NOT_CURVES = {"step", "seconds", "lr_grid", "lr_other"}
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#222}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .55rem;text-align:right}th{background:#f4f4f6}
td:first-child,th:first-child{text-align:left}td.best{font-weight:700}
.pictures{display:flex;flex-wrap:wrap;gap:1rem}figure{margin:0;max-width:100%}
.pictures figure{flex:0 1 420px}.pictures img{width:100%;image-rendering:pixelated;border:1px solid #eee}
.curves img{max-width:100%}
figcaption{font-size:.85rem;color:#555}pre{background:#f7f7f9;padding:.6rem;overflow:auto;font-size:.8rem}
.meta{color:#555;font-size:.9rem}.missing{color:#a00}
"""


@dataclass
class ReportConfig:
    """Write one self-contained HTML page comparing runs of one task (and benchmark result tables)."""

    inputs: Annotated[tuple[Path, ...], tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR_OR_JSON")]
    """Run folders of gridfield image, sdf or nerf (all of one task) and/or benchmarks/results/*.json files."""
    out: Path = Path("report.html")
    """The HTML file to write (replaced atomically)."""
    title: str | None = None
    """Page title; default: what is compared."""


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def data_url(data: bytes, mime: str) -> str:
    """``data:`` URL of ``data``."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def table_html(t: Table, level: int = 3) -> str:
    """A :class:`~gridfield.report.tables.Table` as an HTML table under a heading (cells escaped)."""
    head = "".join(f"<th>{_e(c)}</th>" for c in t.columns)
    body = []
    for i, row in enumerate(t.rows):
        cells = []
        for c, v in zip(t.columns, row):
            best = ' class="best"' if t.best.get(c) == i else ""
            cells.append(f"<td{best}>{_e(fmt(v))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    note = f'<p class="meta">{_e(t.note)}</p>' if t.note else ""
    return (f"<h{level}>{_e(t.title)}</h{level}>\n<table><thead><tr>{head}</tr></thead>\n"
            f"<tbody>{''.join(body)}</tbody></table>{note}\n")


def curves_png(runs: Sequence[Run]) -> bytes | None:
    """PNG of every run's training curves on one figure (one panel per quantity), None without history."""
    keys: list[str] = []
    for r in runs:
        for row in r.history or []:
            keys += [k for k, v in row.items() if k not in _NOT_CURVES and k not in keys
                     and isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not keys:
        return None
    keys = sorted(keys, key=lambda k: (k == "loss", k))[:4]  # the task's metrics first, the loss last
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6 * len(keys), 3.6), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for ax, key in zip(axes, keys):
        for r, c in zip(runs, colors):
            pts = [(h["step"], h[key]) for h in r.history or [] if isinstance(h.get(key), (int, float))
                   and isinstance(h.get("step"), (int, float))]
            if pts:
                ax.plot(*zip(*pts), "-o", ms=3, color=c, label=r.name)
        ax.set_xlabel("training step")
        ax.set_title(key)
        ax.grid(True, alpha=0.3)
        if key == "loss":
            ax.set_yscale("log")
    axes[0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _machine_line(machine: dict | None) -> str:
    if not machine:
        return "not recorded (run written before gridfield recorded it)"
    return ", ".join(f"{k} {v}" for k, v in machine.items())


def _picture(path: Path | None, caption: str) -> str:
    if path is None:
        return f'<figure><p class="missing">missing</p><figcaption>{_e(caption)}</figcaption></figure>'
    url = data_url(path.read_bytes(), picture_type(path))
    return f'<figure><img src="{url}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'


def runs_html(runs: list[Run]) -> str:
    """The runs' sections: metrics, curves, pictures, details."""
    parts = ["<h2>Metrics</h2>", table_html(metrics_table(runs))]
    png = curves_png(runs)
    parts.append("<h2>Training curves</h2>")
    if png is None:
        parts.append('<p class="meta">No run has a training history (history.json): '
                     'runs written before gridfield recorded one.</p>')
    else:
        parts.append(f'<figure class="curves"><img src="{data_url(png, "image/png")}" alt="training curves"></figure>')
        missing = [r.name for r in runs if not r.history]
        if missing:
            parts.append(f'<p class="meta">Without history.json: {_e(", ".join(missing))}.</p>')
    parts.append("<h2>Renders and error maps</h2>")
    for k, (caption, _) in enumerate(runs[0].pictures):
        parts.append(f"<h3>{_e(caption)}</h3><div class=\"pictures\">")
        parts += [_picture(r.pictures[k][1], r.name) for r in runs]
        parts.append("</div>")
    parts.append("<h2>Runs</h2>")
    for r in runs:
        spec = r.metrics.get("spec")
        parts.append(f"<h3>{_e(r.name)}</h3><p class=\"meta\">folder {_e(r.path.resolve())}<br>"
                     f"date {_e(r.date)}{' (file time)' if r.date_source == 'file time' else ''}<br>"
                     f"machine: {_e(_machine_line(r.machine))}</p>")
        parts.append(f"<details open><summary>model spec</summary><pre>{_e(json.dumps(spec, indent=1))}</pre></details>"
                     if spec is not None else '<p class="meta">no model spec in metrics.json</p>')
        if isinstance(r.metrics.get("config"), dict):
            parts.append(f"<details><summary>configuration</summary>"
                         f"<pre>{_e(json.dumps(r.metrics['config'], indent=1))}</pre></details>")
    return "\n".join(parts)


def benchmark_html(b: Benchmark) -> str:
    """One benchmark file's section: where and when, and every table in it."""
    ms = machines(b.data)
    when = "; ".join(_machine_line(m) for m in ms) if ms else "machine not recorded"
    parts = [f"<h2>Benchmark {_e(b.name)}</h2><p class=\"meta\">{_e(b.path.name)}: {_e(when)}</p>"]
    parts += [table_html(t) for t in benchmark_tables(b.data, b.name)]
    return "\n".join(parts)


def page(runs: list[Run], benches: list[Benchmark], title: str | None = None) -> str:
    """The whole HTML document."""
    if title is None:
        what = [f"{len(runs)} {runs[0].task} run{'s' if len(runs) != 1 else ''}"] if runs else []
        what += [f"{len(benches)} benchmark result{'s' if len(benches) != 1 else ''}"] if benches else []
        title = "gridfield report: " + " and ".join(what)
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    body = [f"<h1>{_e(title)}</h1><p class=\"meta\">generated {_e(now)} by gridfield report</p>"]
    if runs:
        body.append(runs_html(runs))
    body += [benchmark_html(b) for b in benches]
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{_CSS}</style></head>\n"
            f"<body>\n{chr(10).join(body)}\n</body></html>\n")


def run(cfg: ReportConfig) -> Path:
    """CLI entry of ``gridfield report``: read and check every input, then write ``--out`` atomically."""
    if cfg.out.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"--out {str(cfg.out)!r} must end in .html")
    if cfg.out.is_dir():
        raise InputError(f"--out {str(cfg.out)!r} is a folder; name the .html file to write")
    runs, benches = read_inputs(list(cfg.inputs))
    text = page(runs, benches, cfg.title)
    out = write_file_atomically(cfg.out, lambda tmp: tmp.write_text(text, encoding="utf-8"), "--out")
    print(f"report of {len(runs)} run(s) and {len(benches)} benchmark file(s) -> {out}")
    return out
