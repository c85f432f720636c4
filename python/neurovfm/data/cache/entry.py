"""One cache entry: its files, its sidecar, the rule of a valid entry, the encoding of a
raw scan and the zero-copy open. The only module that knows the on-disk format
(docs/cache.md); the builder (:mod:`neurovfm.data.cache.manager`) and the dataset
(:mod:`neurovfm.datasets`) both go through it.

Layout of image ``<image>`` of a study, in ``processed/<study>/``::

    <image>.pt            MRI: uint8 volume [1, D, H, W]
    <image>_brain.pt      CT: one file per window (brain, blood, bone)
    <image>_blood.pt
    <image>_bone.pt
    <image>_mask.pt       uint8 token background flags [D/4, H/16, W/16]: 1 = the 4x16x16
                          token holds background (file name and key ``mask`` kept from the
                          published NeuroVFM format)
    <image>.json          the sidecar: shape, spacing, view, mode, windows, source
                          fingerprint, pipeline version, file sizes, offsets and CRC-32s
    <image>.failed.json   why the last build of this image failed
    .<image>.lock         the builders' lock file

Every function takes the entry's folder (``processed/<study>``) rather than an object,
so this module imports nothing of the cache builder or the dataset.
"""

from __future__ import annotations

import json
import logging
import mmap
from collections import OrderedDict
import math
import os
import re
import socket
import tempfile
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import numpy as np
import numpy.typing as npt

from ...errors import CacheEntryError
from . import ptfile
from .fingerprint import FolderWalks, source_fingerprint, source_matches
from .._files import atomic_write_bytes, try_lock, unlink
from ..geometry import OutputGeometry, grid_geometry
from ..preprocess import CT_WINDOW_NAMES

#: ``checked`` of :func:`open_file`: path -> (stamp, dtype, shape, count, offset).
CheckedFiles = dict[str, tuple[tuple[Any, ...], np.dtype[Any], tuple[int, ...], int, int]]

log = logging.getLogger("neurovfm")


class MapCache:
    """The open memory maps of one process's recently read cache files (a bounded LRU).

    A mapping kept open keeps its page tables: reading the same file again costs one
    ``stat`` (to see that it was not replaced: size, mtime and inode) instead of an
    ``open`` + ``mmap`` and a page fault per 4 KiB touched. At most ``capacity`` files
    stay mapped (each holds one descriptor); an evicted mapping closes when its last
    view is gone. ``capacity=0`` maps every file anew (docs/cache.md, section 4)."""

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = int(capacity)
        self._maps: OrderedDict[str, tuple[tuple[int, int, int], mmap.mmap]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._maps)

    def map(self, path: str, expected_bytes: int) -> tuple[mmap.mmap, os.stat_result]:
        """``ptfile.map_file(path, expected_bytes)``, from the cache when the file is unchanged."""
        if self.capacity <= 0:
            return ptfile.map_file(path, expected_bytes)
        st = os.stat(path)
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        hit = self._maps.get(path)
        if hit is not None and hit[0] == key and st.st_size == expected_bytes:
            self._maps.move_to_end(path)
            return hit[1], st
        self._maps.pop(path, None)
        mm, st = ptfile.map_file(path, expected_bytes)
        self._maps[path] = ((st.st_size, st.st_mtime_ns, st.st_ino), mm)
        while len(self._maps) > self.capacity:
            self._maps.popitem(last=False)
        return mm, st

    def clear(self) -> None:
        self._maps.clear()


__all__ = [
    "PIPELINE_VERSION",
    "TOKEN_BACKGROUND",
    "CacheEntryError",
    "Encoded",
    "MapCache",
    "SidecarCache",
    "volume_keys",
    "file_names",
    "sidecar_path",
    "failed_path",
    "lock_path",
    "token_grid",
    "read_sidecar",
    "FolderWalks",
    "source_fingerprint",
    "source_matches",
    "sidecar_status",
    "files_status",
    "encode_scan",
    "write_entry",
    "entry_status",
    "build_entry",
    "open_file",
    "token_background",
    "sidecar_geometry",
    "try_lock",
]

#: Bump whenever cached numbers would change: older entries become stale (and are rebuilt).
#: neurovfm-2: quantised from the float64 values (the reference's bytes; docs/numbers.md) and
#: one resampling order for every entry point. neurovfm-3: that order puts the slice axis
#: last (docs/numbers.md, "Resampling order"): scans whose slice axis shrank most (thin
#: slices) have other bytes in the last place of some voxels.
PIPELINE_VERSION = "neurovfm-3"
#: Sidecar key (and file suffix) of the token background flags: ``mask`` in the published format.
TOKEN_BACKGROUND = "mask"


# --- layout ----------------------------------------------------------------------------------


def volume_keys(mode: str) -> tuple[str, ...]:
    """Keys of the volume files of an entry: the CT windows, or ``("volume",)`` for MRI."""
    return CT_WINDOW_NAMES if mode == "ct" else ("volume",)


def file_names(image: str, mode: str) -> dict[str, str]:
    """``{key: file name}`` of an entry: the volume keys and ``"mask"`` (the token background flags)."""
    names = {k: (f"{image}_{k}.pt" if mode == "ct" else f"{image}.pt") for k in volume_keys(mode)}
    names[TOKEN_BACKGROUND] = f"{image}_mask.pt"
    return names


def sidecar_path(folder: str, image: str) -> str:
    return os.path.join(folder, f"{image}.json")


def failed_path(folder: str, image: str) -> str:
    return os.path.join(folder, f"{image}.failed.json")


def lock_path(folder: str, image: str) -> str:
    return os.path.join(folder, f".{image}.lock")


def _tmp_prefix(image: str) -> str:
    """Prefix of every temporary file of an image's entry: ``.<image>.<8 random>.tmp``."""
    return f".{image}."


def token_grid(shape: Sequence[int]) -> tuple[int, int, int]:
    """The token grid ``(D/4, H/16, W/16)`` of a volume shape ``[1, D, H, W]``."""
    return int(shape[1]) // 4, int(shape[2]) // 16, int(shape[3]) // 16


def remove_leftovers(folder: str, image: str) -> None:
    """Delete the temporary files an interrupted build of ``image`` left (caller holds its lock).

    Matches exactly ``.<image>.<mkstemp's 8 characters>.tmp``, so the temporary
    files of an image whose name merely starts with ``image`` are left alone."""
    pattern = re.compile(re.escape(_tmp_prefix(image)) + r"[a-z0-9_]{8}\.tmp")
    for fn in os.listdir(folder):
        if pattern.fullmatch(fn):
            unlink(os.path.join(folder, fn))


# --- the sidecar -----------------------------------------------------------------------------


def read_sidecar(path: str) -> dict[str, Any] | None:
    """The sidecar as a dict; None when absent, unreadable or not a JSON object."""
    try:
        with open(path) as f:
            side = json.load(f)
    except (OSError, ValueError):
        return None
    return side if isinstance(side, dict) else None


class SidecarCache:
    """Parsed sidecars of one process, reused while a sidecar's (mtime, size, inode) stay
    the same: one ``stat`` per lookup. Not pickled (each process has its own)."""

    LIMIT = 4096

    def __init__(self) -> None:
        self._hits: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        hit = self._hits.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        side = read_sidecar(path)
        if side is None:
            return None
        if len(self._hits) > self.LIMIT:
            self._hits.clear()
        self._hits[path] = (key, side)
        return side

    def forget(self, path: str) -> None:
        self._hits.pop(path, None)

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._hits = {}


# --- validity (docs/cache.md, section 4) -----------------------------------------------------


def sidecar_status(side: dict[str, Any] | None, source: str, folders: FolderWalks | None = None) -> str:
    """What the sidecar alone says of an entry: ``'missing'`` (no readable sidecar),
    ``'stale'`` (another pipeline version, or the scan ``source`` changed), ``'corrupt'``
    (no files recorded) or ``'valid'``. The files are checked by :func:`files_status`
    or when :func:`open_file` maps them."""
    if side is None:
        return "missing"
    if side.get("version") != PIPELINE_VERSION:
        return "stale"
    if not source_matches(source, side.get("source"), folders):
        return "stale"
    files = side.get("files")
    return "valid" if isinstance(files, dict) and files else "corrupt"


def files_status(folder: str, side: dict[str, Any], verify: bool = False) -> str:
    """``'valid'`` when every recorded file has its recorded size (and, with ``verify``,
    its CRC-32: of the whole file, or of the tensor data for older sidecars), else ``'corrupt'``."""
    for info in side["files"].values():
        try:
            p = os.path.join(folder, info["name"])
            if os.path.getsize(p) != info["bytes"]:
                return "corrupt"
            if verify:
                if "file_crc32" in info:  # every byte, headers included
                    if ptfile.file_crc32(p) != info["file_crc32"]:
                        return "corrupt"
                else:
                    ptfile.open_tensor(p, verify=True)
        except (OSError, ValueError, KeyError, TypeError):
            return "corrupt"
    return "valid"


# --- encoding a raw scan ---------------------------------------------------------------------


class Encoded(NamedTuple):
    """A scan encoded as the cache stores it."""

    volumes: dict[str, npt.NDArray[np.uint8]]  # key -> uint8 [1, D, H, W] (CT windows, or "volume")
    token_background: npt.NDArray[np.uint8]  # uint8 [D/4, H/16, W/16], 1 = the token holds background
    view: int
    spacing: tuple[float, ...]
    #: The preprocessed image's origin and direction (the sidecar records them: the
    #: items' geometry); ``None`` for an imported published cache, which has neither.
    origin: tuple[float, ...] | None = None
    direction: tuple[float, ...] | None = None


def encode_scan(source: str, mode: str, threads: int | None = None, series_uid: str | None = None) -> Encoded:
    """Read and preprocess ``source`` and quantise it as the cache stores it:
    ``prepare_for_inference(..., quantize=True)``, i.e. ``uint8(v * 255)`` of the float64
    values (docs/numbers.md). :class:`~neurovfm.errors.ImageTooSmallError` when the volume
    holds no whole token. ``threads``: kernel threads (default: the current setting);
    ``series_uid``: the series of a DICOM folder that holds several."""
    from ..scan import prepare_scan

    r = prepare_scan(source, mode, series_uid, quantize=True, tokenize=False, check_mode=False, threads=threads)
    img = r.image
    return Encoded(
        dict(zip(volume_keys(mode), r.arrays)),
        r.filtered.reshape(tuple(int(v) for v in r.size)),
        r.view,
        tuple(r.spacing),
        tuple(float(x) for x in img.GetOrigin()),
        tuple(float(x) for x in img.GetDirection()),
    )


# --- writing ---------------------------------------------------------------------------------


def write_entry(
    folder: str,
    study: str,
    image: str,
    mode: str,
    enc: Encoded,
    fingerprint: dict[str, int],
    source_path: str,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write every file of the entry under a temporary name, then rename them into place
    and write the sidecar last. A failure before the renames (a full disk, say) leaves a
    valid older entry as it was. ``extra``: more sidecar fields (e.g. ``imported``, the
    provenance of an entry converted from a published cache); never replaces one above."""
    names = file_names(image, mode)
    payloads = {**enc.volumes, TOKEN_BACKGROUND: enc.token_background}
    files: dict[str, dict[str, Any]] = {}
    tmps: dict[str, str] = {}
    try:
        for key, arr in payloads.items():
            fd, tmps[key] = tempfile.mkstemp(prefix=_tmp_prefix(image), suffix=".tmp", dir=folder)
            os.close(fd)
            files[key] = {"name": names[key], **ptfile.write_tensor(tmps[key], arr)}
        unlink(sidecar_path(folder, image))  # the old entry stops being valid first
        for key, tmp in tmps.items():
            os.replace(tmp, os.path.join(folder, names[key]))
    except BaseException:
        for tmp in tmps.values():
            unlink(tmp)
        raise
    shape = next(iter(enc.volumes.values())).shape
    side = {
        "version": PIPELINE_VERSION,
        "study": study,
        "image": image,
        "mode": mode,
        "view": enc.view,
        "shape": [int(v) for v in shape],
        "spacing": list(enc.spacing),
        **({"origin": list(enc.origin), "direction": list(enc.direction)} if enc.origin and enc.direction else {}),
        "windows": list(CT_WINDOW_NAMES) if mode == "ct" else None,
        "source": fingerprint,
        "source_path": source_path,
        "files": files,
        "host": socket.gethostname(),
        "time": time.time(),
    }
    for key, value in (extra or {}).items():
        side.setdefault(key, value)
    atomic_write_bytes(sidecar_path(folder, image), json.dumps(side, indent=1).encode(), _tmp_prefix(image))


def token_background(folder: str, side: dict[str, Any], checked: CheckedFiles | None = None) -> npt.NDArray[np.uint8]:
    """The token background flags of a valid sidecar's entry (read-only ``[d, h, w]``): read
    (:func:`open_file`) once, then kept with the (cached) sidecar. They are small; a rebuilt
    entry replaces its volume files too, which their next open sees (a new stamp fails the
    recorded CRC-32), and the sidecar is then read again, without them."""
    flags = side.get("_token_background")
    if flags is None:
        flags = np.array(open_file(folder, side, TOKEN_BACKGROUND, checked))
        flags.flags.writeable = False
        side["_token_background"] = flags
    return cast("npt.NDArray[np.uint8]", flags)


def sidecar_geometry(side: dict[str, Any]) -> OutputGeometry | None:
    """The :class:`~neurovfm.data.OutputGeometry` of a valid sidecar's volume, kept with
    the (cached) sidecar; ``None`` when it records no origin and direction (an entry
    imported from a published cache, or built before they were recorded)."""
    geom = side.get("_geometry")
    if geom is None and "origin" in side and "direction" in side:
        geom = grid_geometry(side["spacing"], side["origin"], side["direction"], side["view"], side["shape"][-3:])
        side["_geometry"] = geom
    return geom


def entry_status(folder: str, image: str, source: str) -> tuple[str, dict[str, Any] | None]:
    """The status of the entry of ``image`` in ``folder`` by every rule, files CRC-checked
    (section 4 of docs/cache.md: what a builder decides on), and its sidecar."""
    side = read_sidecar(sidecar_path(folder, image))
    st = sidecar_status(side, source)
    return (files_status(folder, side, verify=True) if st == "valid" and side is not None else st), side


def build_entry(
    folder: str,
    study: str,
    image: str,
    mode: str,
    source: str,
    source_path: str,
    force: bool,
    series_uid: str | None = None,
) -> tuple[str, str | None]:
    """Build one entry under its lock (docs/cache.md, section 5).

    Returns ``("done", status before)``, ``("skipped", None)``, ``("busy", None)`` (another
    builder holds the lock) or ``("failed", reason)`` (also written to ``<image>.failed.json``)."""

    def status() -> str:
        return entry_status(folder, image, source)[0]

    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(lock_path(folder, image), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:  # processed/ is read-only (or full): a valid entry is still fine
        if not force and status() == "valid":
            return "skipped", None
        return "failed", f"cannot write the cache in {folder}: {type(err).__name__}: {err}"
    try:
        if not try_lock(fd, blocking=False):
            return "busy", None
        remove_leftovers(folder, image)  # of an interrupted build (we hold the lock)
        before = status()
        if before == "valid" and not force:
            return "skipped", None
        if before == "corrupt":
            log.warning("cache entry %s/%s is corrupt (size or checksum): rebuilding it", study, image)
        if before != "valid":
            # never leave a stale or corrupt entry readable while (or if) the rebuild fails
            unlink(sidecar_path(folder, image))
        try:
            fingerprint = source_fingerprint(source)
            enc = encode_scan(source, mode, series_uid=series_uid)
            write_entry(folder, study, image, mode, enc, fingerprint, source_path)
        except Exception as err:  # recorded, the build goes on
            reason = f"{type(err).__name__}: {err}"
            if isinstance(err, OSError) and not err.filename:  # e.g. ENOSPC from a write
                reason += f" (writing the cache in {folder})"
            record = {"version": PIPELINE_VERSION, "reason": reason, "time": time.time()}
            try:
                atomic_write_bytes(failed_path(folder, image), json.dumps(record).encode(), _tmp_prefix(image))
            except OSError as err2:  # e.g. the disk is full: the summary still has it
                log.warning("%s/%s: could not record the failure (%s)", study, image, err2)
            return "failed", reason
        unlink(failed_path(folder, image))
        return "done", before
    finally:
        os.close(fd)  # releases the lock


# --- the zero-copy open ----------------------------------------------------------------------


def open_file(
    folder: str,
    side: dict[str, Any],
    key: str,
    checked: CheckedFiles | None = None,
    maps: MapCache | None = None,
) -> npt.NDArray[np.uint8]:
    """Zero-copy, read-only uint8 view of file ``key`` of an entry (a volume key, or
    ``"mask"`` for the token background flags), memory-mapped at the offset the sidecar
    records; its size, dtype and shape checked against the sidecar.

    The CRC-32 of the tensor data is checked on every call when ``checked`` is None
    (``CacheManager.load_image``); with a dict (kept per process by the caller) once per
    file and (size, mtime, inode) stamp, so that later opens of the same file cost one
    ``fstat`` and one ``mmap`` (the dataset); with ``maps`` (also per process) a recently
    read file's mapping is reused: one ``stat``. Raises :class:`CacheEntryError` or
    :class:`~neurovfm.data.cache.ptfile.PtFormatError` (both ``ValueError``) or ``OSError``."""
    try:
        info = side["files"].get(key)
        if info is None:
            raise CacheEntryError(f"{folder}: the sidecar of {side.get('image')!r} records no {key!r} file")
        path = os.path.join(folder, info["name"])
        if "offset" not in info:  # a sidecar without offsets: parse the archive
            if os.path.getsize(path) != info["bytes"]:
                raise CacheEntryError(f"{path}: size {os.path.getsize(path)} differs from the recorded {info['bytes']}")
            return _checked_shape(path, ptfile.open_tensor(path, verify=True), side, key)
        mm, st = maps.map(path, info["bytes"]) if maps is not None else ptfile.map_file(path, info["bytes"])
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino, info["offset"], info.get("crc32"))
        if checked is not None:
            hit = checked.get(path)
            if hit is not None and hit[0] == stamp:  # checked before: map it, nothing else
                _, dtype, shape, count, offset = hit
                return np.frombuffer(mm, dtype=dtype, count=count, offset=offset).reshape(shape)
        dtype, shape = np.dtype(info["dtype"]), tuple(int(v) for v in info["shape"])
        count, offset = math.prod(shape), int(info["offset"])
        arr = _checked_shape(path, ptfile.view_at(mm, path, offset, dtype, shape, info.get("crc32")), side, key)
    except (KeyError, TypeError, AttributeError) as err:
        raise CacheEntryError(
            f"{folder}: malformed sidecar of {side.get('image')!r} ({type(err).__name__}: {err})"
        ) from None
    if checked is not None:
        checked[path] = (stamp, dtype, shape, count, offset)
    return arr


def _checked_shape(path: str, arr: npt.NDArray[Any], side: dict[str, Any], key: str) -> npt.NDArray[np.uint8]:
    want = tuple(side["shape"]) if key != TOKEN_BACKGROUND else token_grid(side["shape"])
    if arr.shape != want or arr.dtype != np.uint8:
        raise CacheEntryError(f"{path}: {arr.dtype} {arr.shape}, the sidecar says uint8 {want}")
    return arr
