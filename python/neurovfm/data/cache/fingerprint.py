"""Whether a scan changed since its cache entry was built: its fingerprint (a file's size
and modification time; a DICOM folder's file count, total size and newest time), recorded
in the entry's sidecar and compared on every read (docs/cache.md, section 4).
"""

from __future__ import annotations

import os
import stat

__all__ = ["FolderWalks", "source_fingerprint", "source_matches"]

#: ``folders`` of :func:`source_matches`: folder -> ((mtime_ns, inode), its fingerprint).
FolderWalks = dict[str, tuple[tuple[int, int], dict[str, int]]]


def source_fingerprint(path: str) -> dict[str, int]:
    """Size and modification time of a file, or file count, total size and newest
    modification time of every file under a folder (a DICOM series)."""
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return _folder_fingerprint(path)


def _folder_fingerprint(path: str) -> dict[str, int]:
    count, total, newest = 0, 0, 0
    for root, _dirs, files in os.walk(path):
        for fn in files:
            try:
                s = os.stat(os.path.join(root, fn))
            except OSError:
                continue
            count += 1
            total += s.st_size
            newest = max(newest, s.st_mtime_ns)
    return {"files": count, "size": total, "mtime_ns": newest}


def source_matches(source: str, recorded: object, folders: FolderWalks | None = None) -> bool:
    """Whether the scan ``source`` still has the ``recorded`` fingerprint.

    A file costs one ``stat``. A folder is walked; with ``folders`` (a dict the caller
    keeps per process) the walk is reused while the folder's own (mtime, inode) stay the
    same, i.e. until a file is added, removed or renamed in it."""
    try:
        st = os.stat(source)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return recorded == {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if folders is None:
        return recorded == _folder_fingerprint(source)
    key = (st.st_mtime_ns, st.st_ino)
    hit = folders.get(source)
    if hit is None or hit[0] != key:
        hit = (key, _folder_fingerprint(source))
        folders[source] = hit
    return recorded == hit[1]
