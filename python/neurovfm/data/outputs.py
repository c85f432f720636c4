"""Where :func:`~neurovfm.data.prepare_many` writes: a local folder, or a prefix in object
storage (``s3://bucket/out/``, any fsspec URL: :mod:`neurovfm.data.sources.remote`).

Either way an output is whole or absent. Locally each file is written to a temporary name
in the folder, then renamed; a killed run's temporaries are removed by the next. In object
storage each file is written to a local temporary file first and then uploaded as one
object (a single PUT, or a multipart upload that only becomes an object when it
completes), so a kill never leaves a partial object; the folder is listed once, when the
run starts, to know what is already done (a rerun resumes like a local one).
``summary.csv`` is uploaded last, when the run ends.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from ._files import TMP_TAG, atomic_write, remove_temporaries
from .sources import remote

__all__ = ["OutputDir"]


class OutputDir:
    """An output folder, local or remote (picklable: a worker elsewhere can write to it)."""

    def __init__(self, where: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> None:
        self.where = os.fspath(where)
        self.remote = remote.is_url(self.where)
        self.storage_options = dict(storage_options or {})
        #: Names (relative paths) already in a remote folder when the run started.
        self.existing: frozenset[str] = frozenset()
        if self.remote:
            self.where = self.where.rstrip("/")
            fs, root = remote.url_fs(self.where, self.storage_options)
            found = remote.retried(self.where, lambda: fs.find(root, withdirs=False))
            base = root.rstrip("/")
            self.existing = frozenset(posixpath.relpath(p, base) for p in found if p.startswith(base + "/"))
        else:
            os.makedirs(self.where, exist_ok=True)
            remove_temporaries(self.where)  # a killed run's leftovers

    def path(self, name: str) -> str:
        """Where output ``name`` goes (a local path or a URL)."""
        return remote.join(self.where, name) if self.remote else os.path.join(self.where, name)

    def exists(self, name: str) -> bool:
        return name in self.existing if self.remote else os.path.exists(self.path(name))

    def save(self, name: str, write: Callable[[str], None], suffix: str = "") -> str:
        """Output ``name`` made by ``write(local_path)``, whole or not at all; its path or URL."""
        if not self.remote:
            dest = self.path(name)
            atomic_write(dest, write, suffix + TMP_TAG)
            return dest
        with tempfile.TemporaryDirectory(prefix="neurovfm-out-") as tmp:
            local = os.path.join(tmp, posixpath.basename(name))
            write(local)
            return self.upload(local, name)

    def save_many(self, write: Callable[[str], list[str]]) -> list[str]:
        """Outputs made by ``write(local_prefix)`` (which returns their paths, in the order
        they must appear: the last one marks them complete); their paths or URLs."""
        if not self.remote:
            return write(self.where)
        with tempfile.TemporaryDirectory(prefix="neurovfm-out-") as tmp:
            return [self.upload(p, os.path.relpath(p, tmp)) for p in write(tmp)]

    def upload(self, local: str, name: str) -> str:
        url = self.path(name.replace(os.sep, "/"))
        fs, path = remote.url_fs(url, self.storage_options)
        remote.retried(url, lambda: fs.put_file(local, path))
        return url

    def fetch(self, name: str, dest: str) -> bool:
        """Copy output ``name`` to the local path ``dest`` (False when it is not there)."""
        if not self.remote:
            src = self.path(name)
            if not os.path.exists(src):
                return False
            shutil.copyfile(src, dest)
            return True
        if name not in self.existing:
            return False
        url = self.path(name)
        fs, path = remote.url_fs(url, self.storage_options)
        remote.retried(url, lambda: fs.get_file(path, dest))
        return True
