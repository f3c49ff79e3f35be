"""The output-folder contract: gridfield never deletes a file it did not write.

Every command that writes a folder (``--out``) goes through :func:`check_out_dir` before any work and
:func:`write_dir_atomically` at the end:

- ``--out`` may not be the current directory, one of its parents, the home directory or ``/``, an
  existing file, a path below a file, or a place the user cannot write;
- an existing folder is replaced only when it is empty, or when it is a previous gridfield output:
  it holds the marker :data:`MARKER` (written by gridfield, listing the files it wrote) and nothing
  that the marker does not list. Anything else stops the command before training, with one line;
- outputs are written into a temporary sibling folder and swapped into place at the end, so a
  folder appears whole or not at all (an interrupt or an error leaves ``--out`` as it was); the new
  folder's permissions follow the user's umask.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from gridfield.errors import InputError

MARKER = ".gridfield-output.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _listing(folder: Path) -> set[str]:
    """Relative POSIX paths of every file, link and folder below ``folder``."""
    found = set()
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        for name in dirs + files:
            found.add((rel / name).as_posix())
    return found


def _marked_listing(folder: Path) -> set[str] | None:
    """What the marker of ``folder`` says gridfield wrote there (None: no readable marker)."""
    try:
        data = json.loads((folder / MARKER).read_text())
        return set(data["files"]) | {MARKER}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _existing_ancestor(path: Path, label: str) -> Path:
    """The nearest existing parent of ``path``; ``InputError`` (``label`` names the path) when it is a file."""
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{label} lies below {str(ancestor)!r}, which is a file")
    return ancestor


def _probe_writable(folder: Path, label: str, verb: str) -> None:
    """Create and remove a temporary folder in ``folder``: the only test that holds for root (whom
    permission bits do not stop) and for read-only or virtual file systems (``/proc``, a read-only mount)."""
    try:
        probe = tempfile.mkdtemp(prefix=".gridfield-probe-", dir=folder)
    except OSError as e:
        raise InputError(f"{label} cannot be {verb}: cannot write in {str(folder)!r} "
                         f"({e.strerror or type(e).__name__})") from None
    os.rmdir(probe)


def check_out_dir(out: Path | str, option: str = "--out") -> Path:
    """Absolute ``out`` after checking that gridfield may write (and later replace) it.

    Raises :class:`InputError` naming the folder and the reason when it is the current directory,
    one of its parents, home or ``/``; an existing file or a path below one; unwritable; or an
    existing non-empty folder that is not exactly a previous gridfield output.
    """
    if str(out).strip() == "":
        raise InputError(f"{option} is empty; name a new folder for the outputs")
    path = Path(os.path.abspath(Path(out).expanduser()))
    cwd = Path.cwd().resolve()
    resolved = path.resolve()
    protected = {cwd, *cwd.parents, Path.home().resolve(), Path("/")}
    if resolved in protected:
        raise InputError(f"{option} {str(out)!r} is the current directory, one of its parents or the home "
                         "directory; gridfield writes its outputs into a folder of their own, name a new one")
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {str(out)!r} exists and is not a directory")
    if path.is_symlink() and not path.exists():
        raise InputError(f"{option} {str(out)!r} is a broken symbolic link; remove it or name a new folder")
    ancestor = _existing_ancestor(path, f"{option} {str(out)!r}")
    if not path.is_dir():
        _probe_writable(ancestor, f"{option} {str(out)!r}", "created")
    if path.is_dir():
        present = _listing(path)
        if present:
            marked = _marked_listing(path)
            if marked is None:
                raise InputError(f"{option} {str(out)!r} is a non-empty folder that gridfield did not write; "
                                 "choose a new folder (gridfield never deletes files it did not write)")
            extra = sorted(present - marked)
            if extra:
                shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
                raise InputError(f"{option} {str(out)!r} is a previous gridfield output with files added since "
                                 f"({shown}); move them or choose a new folder")
        _probe_writable(path.parent, f"{option} {str(out)!r}", "replaced")
    return path


def write_dir_atomically(out: Path | str, write: Callable[[Path], None], option: str = "--out") -> Path:
    """Call ``write(tmp)`` on a fresh temporary folder beside ``out``, then swap it into place.

    ``out`` is checked with :func:`check_out_dir` (again, right before the swap). The marker listing
    what was written is added; the folder gets the umask's permissions. On any error, interrupt
    included, the temporary folder and any parent folders created for it are removed and ``out`` is
    left as it was. Returns the absolute path of ``out``.
    """
    out = check_out_dir(out, option)
    created = [p for p in reversed(out.parents) if not p.exists()]
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        os.chmod(tmp, 0o777 & ~_umask())
        write(tmp)
        files = sorted(_listing(tmp) - {MARKER})
        (tmp / MARKER).write_text(json.dumps({"writer": "gridfield", "files": files}, indent=1) + "\n")
        check_out_dir(out, option)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "d")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise
    return out


def _remove_empty(created: list[Path]) -> None:
    """Remove the folders a failed write created (deepest first), where they are still empty."""
    for p in reversed(created):
        if p.is_dir() and not any(p.iterdir()):
            p.rmdir()


def check_out_file(path: Path | str, option: str = "--out") -> Path:
    """Absolute ``path`` after checking that a file may be written there (before any work).

    Raises :class:`InputError` naming ``option`` when ``path`` exists and is not a regular file (a
    folder, a FIFO, a broken link), lies below a file, or its nearest existing folder cannot be written.
    """
    path = Path(os.path.abspath(Path(path).expanduser()))
    if (path.exists() and not path.is_file()) or (path.is_symlink() and not path.exists()):
        raise InputError(f"{option} {str(path)!r} exists and is not a regular file")
    ancestor = _existing_ancestor(path, f"{option} {str(path)!r}")
    _probe_writable(ancestor, f"{option} {str(path)!r}", "written")
    return path


def write_file_atomically(path: Path | str, write: Callable[[Path], None], option: str = "file") -> Path:
    """Call ``write(tmp)`` on a temporary file name beside ``path`` (same suffix), then rename it.

    ``path`` is checked with :func:`check_out_file` (``option`` names it in errors). On any error ``path``
    is left as it was.
    """
    path = check_out_file(path, option)
    created = [p for p in reversed(path.parents) if not p.exists()]
    fd, name = None, None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        os.chmod(name, 0o666 & ~_umask())
        write(Path(name))
        os.replace(name, path)
    except BaseException:
        if name is not None:
            Path(name).unlink(missing_ok=True)
        _remove_empty(created)
        raise
    return path
