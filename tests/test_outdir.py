"""The output-folder contract (gridfield.outdir): never delete a file gridfield did not write."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gridfield.errors import InputError
from gridfield.outdir import MARKER, check_out_dir, write_dir_atomically


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path below ``root`` with its bytes (None for folders)."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[p.relative_to(root).as_posix()] = p.read_bytes() if p.is_file() else None
    return out


def _user_files(root: Path) -> dict[str, bytes | None]:
    (root / "data").mkdir(parents=True)
    (root / "data" / "f").write_text("hi")
    (root / "notes.txt").write_text("keep me")
    (root / "kept").mkdir()
    (root / "kept" / "ours.txt").write_text("mine")
    return _snapshot(root)


def _write(d: Path) -> None:
    (d / "metrics.json").write_text("{}")
    (d / "sub").mkdir()
    (d / "sub" / "a.png").write_bytes(b"png")


@pytest.mark.parametrize("target", [".", "", "..", "~"])
def test_refuses_cwd_parents_home(tmp_path, monkeypatch, target):
    work = tmp_path / "x"
    before = _user_files(work)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(work))
    with pytest.raises(InputError, match="--out"):
        write_dir_atomically(target, _write)
    assert _snapshot(work) == before


def test_refuses_foreign_folder_and_added_files(tmp_path):
    before = _user_files(tmp_path / "x")
    with pytest.raises(InputError, match="did not write"):
        write_dir_atomically(tmp_path / "x" / "kept", _write)
    assert _snapshot(tmp_path / "x") == before
    run = tmp_path / "run"
    write_dir_atomically(run, _write)
    assert (run / MARKER).is_file() and (run / "sub" / "a.png").read_bytes() == b"png"
    write_dir_atomically(run, _write)  # a previous gridfield output is replaced
    (run / "sub" / "mine.txt").write_text("user")
    with pytest.raises(InputError, match="mine.txt"):
        write_dir_atomically(run, _write)
    assert (run / "sub" / "mine.txt").read_text() == "user"


def test_refuses_files_and_paths_below_files(tmp_path):
    (tmp_path / "f").write_text("x")
    for target in (tmp_path / "f", tmp_path / "f" / "below"):
        with pytest.raises(InputError):
            check_out_dir(target)
    assert (tmp_path / "f").read_text() == "x"


def test_error_and_interrupt_leave_nothing(tmp_path):
    def boom(d):
        (d / "half.png").write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_dir_atomically(tmp_path / "a" / "b" / "out", boom)
    assert list(tmp_path.iterdir()) == []


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = write_dir_atomically(tmp_path / "out", _write)
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == 0o755


@pytest.mark.parametrize("command", ["image", "sdf"])
def test_cli_out_dot_keeps_user_files(tmp_path, command):
    """The reported repro: ``gridfield image camera --steps 3 --out .`` deleted the current folder."""
    work = tmp_path / "x"
    before = _user_files(work)
    args = {"image": ["image", "camera", "--steps", "3", "--max-size", "32"],
            "sdf": ["sdf", "--steps", "2", "--samples", "2000", "--iou-resolution", "16", "--iou-points", "1000",
                    "--mesh-resolution", "16", "--chamfer-points", "100", "--param-budget", "5000"]}[command]
    for out in (".", "", "kept", "data"):
        r = subprocess.run([sys.executable, "-m", "gridfield.cli", *args, "--no-progress", "--out", out],
                           cwd=work, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr
        assert _snapshot(work) == before
