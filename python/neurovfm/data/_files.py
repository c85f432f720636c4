"""Small file-system helpers: delete if present, atomic write, file lock, a JSON object file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

__all__ = [
    "TMP_TAG",
    "unlink",
    "atomic_write",
    "atomic_write_bytes",
    "remove_temporaries",
    "try_lock",
    "read_json_object",
]

#: In the name of every temporary file :func:`atomic_write` makes (before the suffix a
#: writer may need, e.g. ``.nii.gz``), so that a killed run's leftovers can be found.
TMP_TAG = ".neurovfm-tmp"


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def atomic_write(
    path: str,
    write: Callable[[str], object],
    suffix: str = TMP_TAG,
    public: bool = True,
    prefix: str | None = None,
) -> None:
    """``write(tmp)`` a file under a temporary name in ``path``'s folder (hidden, ``suffix``
    last: a writer that picks the format by extension gets it), then rename it to ``path``;
    the temporary file is removed when ``write`` fails. ``public``: the file gets the
    permissions the umask gives a new file (a temporary file is created private).
    ``prefix``: of the temporary name (default ``.<name of path>.``)."""
    if prefix is None:
        prefix = "." + os.path.basename(path) + "."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=os.path.dirname(path) or ".")
    os.close(fd)
    try:
        write(tmp)
        if public:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        unlink(tmp)
        raise


def remove_temporaries(folder: str) -> None:
    """Remove what :func:`atomic_write` left in ``folder`` when its process was killed."""
    with os.scandir(folder) as it:
        stale = [e.path for e in it if e.name.startswith(".") and TMP_TAG in e.name]
    for p in stale:
        try:
            os.unlink(p)
        except OSError:
            pass


def atomic_write_bytes(path: str, data: bytes, prefix: str | None = None) -> None:
    """Write ``data`` under a temporary name in ``path``'s folder (private, ``.tmp``), then
    rename it to ``path``."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write, ".tmp", public=False, prefix=prefix)


def try_lock(fd: int, blocking: bool) -> bool:
    """Exclusive lock on an open file (released when it is closed or the process dies)."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False


def read_json_object(path: str, error: Callable[[str], Exception], what: str, not_object: str) -> dict[str, Any]:
    """The JSON object in the file ``path``. Raises ``error(f"{path}: not a JSON {what} (...)")``
    when it does not parse and ``error(f"{path}: {not_object}")`` when it is not an object."""
    with open(path) as f:
        try:
            data = json.load(f)
        except ValueError as err:
            raise error(f"{path}: not a JSON {what} ({err})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: {not_object}")
    return data
