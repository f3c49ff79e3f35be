"""``gridfield`` command line: one subcommand per task or analysis (typed configs via tyro).

Each subcommand is a module exposing a config dataclass (fields documented; tyro turns the docstrings
into help text) and ``run(cfg)``. Add a subcommand by adding a line to :data:`COMMANDS`.
"""

from __future__ import annotations

import importlib
import sys

from gridfield.errors import InputError

# name -> (module, config class, run function)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "image": ("gridfield.tasks.image", "ImageConfig", "run"),
}


def _load() -> dict[str, tuple[type, object]]:
    table = {}
    for name, (mod, cfg, fn) in COMMANDS.items():
        m = importlib.import_module(mod)
        table[name] = (getattr(m, cfg), getattr(m, fn))
    return table


def main(argv: list[str] | None = None) -> int:
    """Entry point. Bad input prints ``error: ...`` on one line and returns exit status 2."""
    import tyro

    table = _load()
    args = sys.argv[1:] if argv is None else argv
    if not args:  # the main job runs with no arguments: default to the image task
        args = ["image"]
    cfg = tyro.extras.subcommand_cli_from_dict(
        {name: cls for name, (cls, _) in table.items()}, args=args, prog="gridfield",
        description="Grid-based neural fields: fitting tasks and grid tangent kernel analyses.",
    )
    run = next(fn for cls, fn in table.values() if isinstance(cfg, cls))
    try:
        run(cfg)
    except (InputError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def entry() -> None:
    """Console-script wrapper: exit with :func:`main`'s status."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
