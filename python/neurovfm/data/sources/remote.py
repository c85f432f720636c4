"""Scans in object storage (``s3://``, ``gs://``, ``https://``, any fsspec URL), through
`fsspec <https://filesystem-spec.readthedocs.io>`_ (the ``neurovfm[cloud]`` extra: fsspec,
s3fs, gcsfs).

The readers parse headers with SimpleITK and decode from files, so a remote scan is
*staged*: its bytes are copied, in 8 MiB blocks (bounded memory whatever the file's size),
into a private temporary folder, read there exactly as a local file (the same bytes), and
the copy is removed as soon as the volume is in memory. A prefix holding a DICOM series is
listed once (one ``find``), and a series that :func:`~neurovfm.data.find_series` found is
staged from its own file list, never by listing its prefix again. Every transfer is
retried on transient errors (3 tries, backoff); a missing object is
:class:`~neurovfm.errors.ImageNotFoundError` at once.

Credentials and endpoint come from each backend's standard environment (for S3 the AWS
variables: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ...), or
from ``storage_options`` (passed to the fsspec filesystem, e.g. ``{"anon": True}`` or
``{"client_kwargs": {"endpoint_url": ...}}``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import posixpath
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeGuard, TypeVar

from ...errors import ImageNotFoundError, ImageReadError, InvalidArgumentError

__all__ = ["RemoteFiles", "is_url", "join", "list_files", "staged", "url_fs"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
#: Block size of a transfer: what a remote read holds in memory at once.
BLOCK = 8 << 20
#: Tries per transfer and the first back-off (doubled each time).
TRIES, BACKOFF_S = 3, 0.5
#: Files transferred at once when a series is staged.
PARALLEL = 8
_T = TypeVar("_T")


def is_url(source: object) -> TypeGuard[str]:
    """True for a URL string with a scheme other than ``file://`` (``s3://b/k``, ...)."""
    return isinstance(source, str) and bool(_URL.match(source)) and not source.lower().startswith("file://")


def join(url: str, *parts: str) -> str:
    """``url`` and path parts joined with ``/``."""
    return posixpath.join(url.rstrip("/"), *parts) if parts else url


def url_fs(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) for ``url``; ImportError naming the extra when
    fsspec (or the backend) is not installed."""
    try:
        fsspec: Any = importlib.import_module("fsspec")  # an optional extra: typed as Any
    except ImportError:
        raise ImportError(f"{url}: reading URLs needs fsspec: pip install 'neurovfm[cloud]'") from None
    try:
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except ImportError as err:
        raise ImportError(f"{url}: {err} (pip install 'neurovfm[cloud]')") from None
    except ValueError as err:  # an unknown protocol
        raise InvalidArgumentError(f"{url}: {err}") from None
    return fs, path


def _transient(err: BaseException) -> bool:
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    return isinstance(err, (OSError, TimeoutError, ConnectionError)) or type(err).__name__ in (
        "ClientError",
        "EndpointConnectionError",
        "ReadTimeoutError",
        "ServerDisconnectedError",
    )


def retried(what: str, call: Callable[[], _T]) -> _T:
    """``call()``, tried again on a transient error (:data:`TRIES` tries, backoff); the
    library's errors naming ``what`` otherwise."""
    delay = BACKOFF_S
    for attempt in range(TRIES):
        try:
            return call()
        except FileNotFoundError:
            raise ImageNotFoundError(2, f"{what}: no such object", what) from None
        except PermissionError as err:
            raise ImageReadError(what, f"permission denied ({err})") from None
        except Exception as err:  # noqa: BLE001 - sorted below: transient or not
            if not _transient(err) or attempt == TRIES - 1:
                raise ImageReadError(what, f"cannot read it: {type(err).__name__}: {err}") from None
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def _copy(fs: Any, path: str, url: str, dest: str) -> None:
    """One object to ``dest``, :data:`BLOCK` bytes at a time, retried as a whole."""

    def once() -> None:
        with fs.open(path, "rb", block_size=BLOCK) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, BLOCK)

    os.makedirs(os.path.dirname(dest), exist_ok=True)
    retried(url, once)


class RemoteFiles:
    """The files under a URL prefix (or the one object it names), listed once."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = url_fs(self.url, self.storage_options)
        self.root = self.root.rstrip("/")
        found = retried(url, lambda: self.fs.find(self.root, withdirs=False, detail=True))
        #: Relative path ('' for the object itself) -> size in bytes.
        self.files: dict[str, int] = {}
        for p, info in sorted(found.items()):
            rel = posixpath.relpath(p, self.root) if p != self.root else ""
            if rel.startswith(".."):
                continue
            self.files["" if rel == "." else rel] = int(info.get("size") or 0)
        if not self.files:
            raise ImageNotFoundError(2, f"{url}: no such object or prefix (nothing is listed under it)", url)

    @property
    def is_file(self) -> bool:
        return list(self.files) == [""]

    def url_of(self, rel: str) -> str:
        return join(self.url, rel) if rel else self.url

    def stage(self, dest: str, rels: Sequence[str] | None = None) -> str:
        """Copy ``rels`` (default: every file) under ``dest``, keeping their relative paths;
        the local path of the object, or of the folder."""
        rels = list(self.files) if rels is None else list(rels)
        if self.is_file:
            local = os.path.join(dest, posixpath.basename(self.root) or "object")
            _copy(self.fs, self.root, self.url, local)
            return local
        jobs = [(join(self.root, r), self.url_of(r), os.path.join(dest, *r.split("/"))) for r in rels]
        if len(jobs) == 1:
            _copy(self.fs, *jobs[0])
        else:
            with ThreadPoolExecutor(max_workers=min(PARALLEL, len(jobs)), thread_name_prefix="neurovfm-get") as ex:
                list(ex.map(lambda j: _copy(self.fs, *j), jobs))
        return dest


def list_files(url: str, storage_options: Mapping[str, Any] | None = None) -> RemoteFiles:
    """:class:`RemoteFiles` of ``url`` (one listing)."""
    return RemoteFiles(url, storage_options)


@contextlib.contextmanager
def staged(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    files: Sequence[str] | None = None,
) -> Iterator[str]:
    """A local copy of ``url`` (an object, or every file under a prefix) for the ``with``
    block; removed after it. ``files``: the file URLs to copy (a series' own list: the
    prefix is then not listed at all), kept at their paths relative to ``url``."""
    with tempfile.TemporaryDirectory(prefix="neurovfm-remote-") as tmp:
        if files is not None:
            fs, root = url_fs(url, storage_options)
            base = url.rstrip("/")
            for f in files:
                if not f.startswith(base + "/") and f != base:
                    raise InvalidArgumentError(f"{f}: not under {url}")
            jobs = []
            for f in files:
                rel = f[len(base) + 1 :] if f != base else posixpath.basename(base)
                _, p = url_fs(f, storage_options)
                jobs.append((p, f, os.path.join(tmp, *rel.split("/"))))
            with ThreadPoolExecutor(max_workers=max(1, min(PARALLEL, len(jobs)))) as ex:
                list(ex.map(lambda j: _copy(fs, *j), jobs))
            yield tmp if len(files) != 1 or files[0] != base else jobs[0][2]
            return
        yield RemoteFiles(url, storage_options).stage(tmp)
