"""Small file-system helpers: delete if present, atomic write, file lock, a JSON object file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

__all__ = ["unlink", "atomic_write_bytes", "try_lock", "read_json_object"]


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def atomic_write_bytes(path: str, data: bytes, prefix: str | None = None) -> None:
    """Write ``data`` under a temporary name in ``path``'s folder, then rename it to ``path``."""
    if prefix is None:
        prefix = "." + os.path.basename(path) + "."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        unlink(tmp)
        raise


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
