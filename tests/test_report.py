"""``gridfield report``: one self-contained page from run folders and benchmark results.

The page is generated from two tiny image runs and a benchmark result of the repository, opened in
headless Chromium (``tests/_browser.py``; skipped without a browser, failed under ``CI=true``), and
checked as a reader sees it: the metrics table has one row per run with the runs' own numbers, the
benchmark's table has one row per result of the JSON file, every picture decoded (``naturalWidth >
0``) and nothing is loaded from elsewhere. Without a browser: the refusals (mixed tasks, folders that
are not gridfield runs), the table extraction on a hand-written result and the run records.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from _browser import chrome
from gridfield.cli import main
from gridfield.errors import InputError
from gridfield.report.html import ReportConfig, run
from gridfield.report.runs import read_inputs
from gridfield.report.tables import benchmark_tables, fmt, metrics_table

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "results" / "mulfagrid_holdout.json"
IMG = ["image", "camera", "--param-budget", "3000", "--max-size", "32", "--steps", "20", "--batch-size", "256",
       "--eval-every", "5", "--no-progress", "--checkpoint-every", "0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    with pytest.MonkeyPatch.context() as mp:  # plain PyTorch: nothing to compile for two 32-pixel fits
        mp.setenv("GRIDFIELD_FAST", "0")
        return _fit_two(tmp_path_factory)


def _fit_two(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    assert main([*IMG, "--model", "dense", "--out", str(root / "dense")]) == 0
    assert main([*IMG, "--model", "planes", "--out", str(root / "planes")]) == 0
    return {"root": root, "dense": root / "dense", "planes": root / "planes"}


def metrics(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def test_runs_record_task_machine_and_date(runs):
    m = metrics(runs["dense"])
    assert m["task"] == "image" and re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$", m["date"])
    assert {"cpu", "cores", "torch_threads", "device", "torch", "python"} <= set(m["machine"])


def test_report_in_the_browser(runs, tmp_path):
    out = tmp_path / "report.html"
    assert main(["report", str(runs["dense"]), str(runs["planes"]), str(BENCH), "--out", str(out)]) == 0
    text = out.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text), "the page loads something from elsewhere"
    bench = json.loads(BENCH.read_text())
    driver = chrome(1200, 900)
    try:
        driver.get(out.as_uri())
        tables = driver.execute_script("""
            return Array.from(document.querySelectorAll('table')).map(t => ({
              title: t.previousElementSibling ? t.previousElementSibling.textContent : '',
              head: Array.from(t.querySelectorAll('thead th')).map(th => th.textContent),
              rows: Array.from(t.querySelectorAll('tbody tr')).map(
                tr => Array.from(tr.querySelectorAll('td')).map(td => td.textContent))}));""")
        images = driver.execute_script("""
            return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt]);""")
    finally:
        driver.quit()
    by_title = {t["title"]: t for t in tables}
    runs_table = by_title["image runs"]
    assert [r[0] for r in runs_table["rows"]] == ["dense", "planes"]
    psnr_col = runs_table["head"].index("psnr")
    for row, name in zip(runs_table["rows"], ("dense", "planes")):
        assert row[psnr_col] == fmt(metrics(runs[name])["psnr"])
    results = by_title["results"]
    assert len(results["rows"]) == len(bench["results"])
    assert [r[results["head"].index("model")] for r in results["rows"]] == [r["model"] for r in bench["results"]]
    # 2 runs x (reconstruction, error map) + the training curves, every one decoded
    assert len(images) == 5, images
    assert all(complete and w > 0 and h > 0 for complete, w, h, _ in images), images
    assert sum(alt == "training curves" for *_, alt in images) == 1
    for name in ("dense", "planes"):  # each run's machine and date
        assert metrics(runs[name])["date"] in text and metrics(runs[name])["machine"]["cpu"] in text


def test_report_refuses_what_it_cannot_compare(runs, tmp_path, capsys):
    fake_sdf = tmp_path / "sdf_run"
    shutil.copytree(runs["dense"], fake_sdf)
    m = metrics(fake_sdf)
    m["task"] = "sdf"
    (fake_sdf / "metrics.json").write_text(json.dumps(m))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "metrics.json").write_text("{}")
    (tmp_path / "broken.json").write_text("{not json")
    out = tmp_path / "r.html"
    cases = [
        ([runs["dense"], fake_sdf], "different tasks"),
        ([tmp_path / "plain"], "not a gridfield output folder"),
        ([runs["dense"] / "metrics.json"], "give its folder"),
        ([tmp_path / "broken.json"], "not valid JSON"),
        ([tmp_path / "missing"], "not found"),
        ([runs["dense"], runs["dense"]], "given twice"),
        ([], "at least one"),
    ]
    for inputs, needle in cases:
        capsys.readouterr()
        assert main(["report", *map(str, inputs), "--out", str(out)]) == 2, inputs
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and needle in err, (inputs, err)
    assert main(["report", str(runs["dense"]), "--out", str(tmp_path / "r.txt")]) == 2
    assert not out.exists() and not (tmp_path / "r.txt").exists()


def test_old_runs_without_machine_or_date_still_report(runs, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(runs["planes"], old)
    m = metrics(old)
    for k in ("task", "machine", "date"):
        del m[k]
    (old / "metrics.json").write_text(json.dumps(m))
    (r,), _ = read_inputs([old])
    assert r.task == "image" and r.machine is None and r.date_source == "file time"
    text = run(ReportConfig((old,), tmp_path / "old.html")).read_text()
    assert "not recorded" in text and "(file time)" in text


def test_benchmark_tables_are_found_by_shape():
    data = {"machine": {"cpu": "x"}, "note": "n", "settings": {"steps": 3, "sizes": [1, 2]},
            "results": [{"model": "a", "psnr": 30.0, "spec": {"k": 1}}, {"model": "b", "psnr": 31.5}],
            "models": {"a": {"params": 10, "images": {"i1": {"psnr": 1.0}, "i2": {"psnr": 2.0}}}, "b": {"params": 20}}}
    tables = {t.title: t for t in benchmark_tables(data, "demo")}
    assert list(tables) == ["demo", "settings", "results", "models", "models / a / images"]
    assert tables["demo"].rows == [["note", "n"]]
    assert tables["settings"].rows == [["steps", 3], ["sizes", [1, 2]]]
    assert tables["results"].columns == ["model", "psnr"] and tables["results"].best == {"psnr": 1}
    assert tables["models"].rows == [["a", 10], ["b", 20]]
    assert tables["models / a / images"].rows == [["i1", 1.0], ["i2", 2.0]]


def test_metrics_table_marks_the_best_run(runs):
    rs, _ = read_inputs([runs["dense"], runs["planes"]])
    t = metrics_table(rs)
    psnrs = [metrics(runs[n])["psnr"] for n in ("dense", "planes")]
    assert t.best["psnr"] == psnrs.index(max(psnrs))
    with pytest.raises(InputError, match="at least one"):
        read_inputs([])
