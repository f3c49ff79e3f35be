"""``gridfield`` command line: one subcommand per task or analysis (typed configs via tyro).

Each subcommand is a module exposing a config dataclass (fields documented; tyro turns the docstrings
into help text) and ``run(cfg)``. Add a subcommand by adding a line to :data:`COMMANDS`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import signal
import sys
import threading

from gridfield.errors import InputError

# name -> (module, config class, run function)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "image": ("gridfield.tasks.image", "ImageConfig", "run"),
    "sdf": ("gridfield.tasks.sdf", "SDFConfig", "run"),
    "image-render": ("gridfield.tasks.image", "RenderConfig", "run_render"),
    "gtk-spectra": ("gridfield.analyses.spectra", "SpectraConfig", "run"),
    "gtk-bound-map": ("gridfield.analyses.bound_map", "BoundMapConfig", "run"),
    "gtk-error-maps": ("gridfield.analyses.error_maps", "ErrorMapsConfig", "run"),
    "gtk-theory": ("gridfield.analyses.theory", "TheoryConfig", "run"),
    "gtk-ranking": ("gridfield.analyses.ranking", "RankingConfig", "run"),
    "nerf": ("gridfield.tasks.nerf", "NerfConfig", "run"),
    "make-scene": ("gridfield.tasks.nerf", "MakeSceneConfig", "run_make_scene"),
    "render": ("gridfield.tasks.nerf_export", "RenderVideoConfig", "run_render_video"),
    "export-mesh": ("gridfield.tasks.nerf_export", "ExportMeshConfig", "run_export_mesh"),
    "view": ("gridfield.viewer.command", "ViewConfig", "run"),
    "report": ("gridfield.report.html", "ReportConfig", "run"),
}


def _load() -> dict[str, tuple[type, object]]:
    table = {}
    for name, (mod, cfg, fn) in COMMANDS.items():
        m = importlib.import_module(mod)
        table[name] = (getattr(m, cfg), getattr(m, fn))
    return table


class _ParseError(Exception):
    """A command-line parsing error, already reduced to one line."""


def _parse(tyro, configs: dict[str, type], args: list[str]):
    """Parse with tyro; its (boxed, multi-line) error report becomes one :class:`_ParseError` line."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            return tyro.extras.subcommand_cli_from_dict(
                configs, args=args, prog="gridfield",
                description="Grid-based neural fields: fitting tasks and grid tangent kernel analyses.",
            )
    except SystemExit as e:
        if not e.code:  # --help and friends: show what tyro wrote and exit normally
            sys.stderr.write(buf.getvalue())
            raise
        raise _ParseError(_one_line(buf.getvalue()) or f"invalid arguments {args}") from None


def _one_line(report: str) -> str:
    """``Title: body`` from tyro's box (body up to its first rule), whitespace collapsed."""
    lines = [ln.strip().strip("│╭╮╰╯").strip() for ln in report.strip().splitlines()]
    title = lines[0].strip("─ ").strip() if lines else ""
    body = []
    for ln in lines[1:]:
        if ln and set(ln) <= set("─ "):
            break
        body.append(ln)
    text = " ".join(" ".join(body).split())
    if title and title.lower() not in text.lower():
        text = f"{title.lower()}: {text}" if text else title
    return text


def main(argv: list[str] | None = None) -> int:
    """Entry point. Bad input prints ``error: ...`` on one line and returns exit status 2."""
    import tyro

    table = _load()
    args = sys.argv[1:] if argv is None else argv
    if not args:  # the main job runs with no arguments: default to the image task
        args = ["image"]
    try:
        cfg = _parse(tyro, {name: cls for name, (cls, _) in table.items()}, args)
    except _ParseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run = next(fn for cls, fn in table.values() if isinstance(cfg, cls))
    main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        run(cfg)
    except (InputError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print("error: " + str(e).replace("\n", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        sys.unraisablehook = _quiet  # objects the interrupt left half-built may complain when collected
        saved = "; the training state is saved: rerun the same command with --resume to continue" if str(e) else ""
        print(f"interrupted{' ' + str(e) if str(e) else ''}{saved}; no output was written", file=sys.stderr)
        return 130
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return 0


def _quiet(unraisable) -> None:
    """After an interrupt: drop the "Exception ignored in __del__" reports of objects it cut short (e.g. an
    image writer interrupted in its constructor), so the interrupt stays one line."""


def _terminate(signum, frame) -> None:
    """SIGTERM outside the training loop: unwind like Ctrl-C, so temporary folders are removed."""
    raise KeyboardInterrupt


def entry() -> None:
    """Console-script wrapper: exit with :func:`main`'s status."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
