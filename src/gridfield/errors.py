"""User-facing errors: the CLI prints these as one line and exits non-zero (no stack trace).

Also the two checks every loader shares: :func:`regular_file` (an input path is a regular file, before
it is opened) and :func:`missing_extra` (the message for an optional dependency that is not installed).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class InputError(ValueError):
    """Bad user input (file, shape, value, option). The message names the problem and what to do."""


def missing_extra(module: str, extra: str, needed_by: str, reason: ImportError | None = None) -> InputError:
    """The one-line error for an optional dependency that cannot be imported (raise it ``from None``).

    ``module``: what failed to import (``"trimesh"``); ``extra``: the pip extra that installs it
    (``"mesh"``); ``needed_by``: what needs it, as the start of the sentence (``"gridfield sdf"``).
    Example: ``"gridfield sdf needs the mesh extra (trimesh is not installed): pip install 'gridfield[mesh]'"``.
    """
    why = "is not installed" if reason is None or isinstance(reason, ModuleNotFoundError) else \
        f"cannot be imported: {str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__}"
    return InputError(f"{needed_by} needs the {extra} extra ({module} {why}): pip install 'gridfield[{extra}]'")


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def regular_file(path: str | os.PathLike, what: str, hint: str = "") -> Path:
    """``Path(path)`` after checking, without opening it, that it is an existing regular file.

    For every input file: a FIFO or a device (``/dev/zero``) would block or never end, a directory
    cannot be read. Symbolic links are followed. Raises :class:`InputError` naming ``what``
    (``"image"``, ``"mesh file"``, ...), the path and what it is; ``hint`` is appended to "not found".
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise InputError(f"{what} {str(p)!r} not found{hint}") from None
    except OSError as e:
        raise InputError(f"cannot access {what} {str(p)!r}: {e.strerror or type(e).__name__}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "a special file")
        raise InputError(f"{what} {str(p)!r} is {kind}, not a regular file; give a file")
    return p
