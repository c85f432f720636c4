"""Importing a cache built by the published NeuroVFM code (GitHub ``MLNeurosurg/neurovfm``).

The published ``CacheManager.build_cache`` writes, per image, in ``processed/<study>/``::

    <image>.pt              MRI: torch.save of {'data': uint8 [D, H, W], 'view', 'shape',
                            'spacing', 'mode': 'mri', 'window': None}
    <image>_brain.pt, ...   CT: the same dict per window ('window': 'brain', 'blood', 'bone')
    <image>_mask.pt         torch.save of a uint8 [D, H, W] voxel mask, 1 = background voxel
    <image>_metadata.json   its sidecar: source_file, mode, shape, spacing, view (windows)

Its file names are this library's entry files (docs/cache.md, section 2), so an image is
converted in place: the published files are read and checked (:func:`read_published`,
in :mod:`neurovfm.data.cache.published_read`),
then the entry is written by :func:`neurovfm.data.cache.entry.write_entry` (temporary names,
renames, the sidecar last). Nothing is recomputed from the scan: the volumes are the
published bytes with a leading axis, the token background flags the reduction of the
voxel mask (a token is background when any of its 4x16x16 voxels is). The checks, the
safe loading and what a crash leaves are in docs/cache.md ("Importing a cache built by
the published code"). torch is imported only when a file is read.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...errors import CacheEntryError
from .._files import atomic_write_bytes, try_lock, unlink
from . import entry
from .published_read import (
    allow_numpy_integers,
    published_sidecar_path,
    read_published,
    safe_load_globals,
    token_flags,
)

__all__ = [
    "ImportSummary",
    "import_entry",
    "read_published",
    "token_flags",
    "safe_load_globals",
    "allow_numpy_integers",
    "published_sidecar_path",
]

#: What importing one image gives: ("done" | "skipped" | "missing" | "busy", None) | ("failed", reason).
ImportResult = tuple[str, str | None]


@dataclass
class ImportSummary:
    """What an import did (:meth:`neurovfm.data.CacheManager.import_published`).

    ``imported``: images converted into this library's entries; ``skipped``: images that
    already had a valid entry; ``missing``: images of ``metadata.json`` without published
    files (and without an entry); ``failed``: ``{"study/image": reason}`` (the files were
    left as they were); ``busy``: images another process held the lock of;
    ``trusted``: the imported images whose files needed ``trust_pickle``."""

    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    busy: list[str] = field(default_factory=list)
    trusted: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        trusted = f" ({len(self.trusted)} of them loaded with --trust-pickle)" if self.trusted else ""
        busy = f"{len(self.busy)} skipped (another process is importing them), " if self.busy else ""
        lines = [
            f"cache import: {len(self.imported)} imported{trusted}, {len(self.skipped)} already cached, "
            f"{len(self.missing)} missing (no published files), {len(self.failed)} failed, "
            f"{busy}{self.seconds:.1f} s"
        ]
        for key in sorted(self.missing):
            lines.append(f"  missing {key}: no published files (`neurovfm cache build` builds it from its scan)")
        for key, reason in sorted(self.failed.items()):
            lines.append(f"  failed {key}: {reason}")
        for text in self.warnings:
            lines.append(f"  warning: {text}")
        return "\n".join(lines)


# --- one image ----------------------------------------------------------------------------------


def _backup_path(folder: str, image: str, key: str) -> str:
    """A second name (hard link) of a published file while its image is converted."""
    return os.path.join(folder, f".{image}.published-{key}.pt")


def _restore_backups(folder: str, image: str, keys: list[str], names: Mapping[str, str], committed: bool) -> None:
    """The published files back under their names (``committed`` False: the entry was not
    written), or their second names removed (it was)."""
    for key in keys:
        b = _backup_path(folder, image, key)
        if not os.path.exists(b):
            continue
        orig = os.path.join(folder, names[key])
        # rename() of two names of one file does nothing: then only the second name goes
        if committed or (os.path.exists(orig) and os.path.samefile(b, orig)):
            unlink(b)
        else:
            os.replace(b, orig)


def _entry_valid(folder: str, image: str, source: str) -> tuple[bool, dict[str, Any] | None]:
    status, side = entry.entry_status(folder, image, source)
    return status == "valid", side


def import_entry(
    folder: str,
    study: str,
    image: str,
    mode: str,
    source: str,
    source_path: str,
    trust_pickle: bool = False,
    read_sidecar: bool = True,
) -> ImportResult:
    """Convert the published files of one image into this library's entry, under its lock.

    Returns ``("done", None)``, ``("skipped", None)`` (already a valid entry),
    ``("missing", None)`` (no published file), ``("busy", None)`` (another process holds
    the image's lock) or ``("failed", reason)``: the reason names the file; the files are
    left as they were and the reason is written to ``<image>.failed.json``. With
    ``read_sidecar`` the published ``<image>_metadata.json`` is checked when present and
    removed once the entry is written (its fields are kept in the sidecar's ``imported``);
    pass False when that name is the sidecar of another image (``<image>_metadata``)."""
    names = entry.file_names(image, mode)
    keys = list(names)
    pub_side = published_sidecar_path(folder, image) if read_sidecar else None
    if not os.path.isdir(folder):
        return "missing", None
    try:
        fd = os.open(entry.lock_path(folder, image), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:  # a read-only processed/: a valid entry is still fine
        if _entry_valid(folder, image, source)[0]:
            return "skipped", None
        return "failed", f"cannot write the cache in {folder}: {type(err).__name__}: {err}"
    try:
        if not try_lock(fd, blocking=False):
            return "busy", None
        entry.remove_leftovers(folder, image)
        # An import stopped before its sidecar was written (write_entry removes the old sidecar
        # before its renames) gets its published files back; after it, the second names go.
        committed = os.path.exists(entry.sidecar_path(folder, image))
        _restore_backups(folder, image, keys, names, committed=committed)
        valid, side = _entry_valid(folder, image, source)
        if valid:
            if side is not None and "imported" in side and pub_side is not None:
                unlink(pub_side)  # left by an import stopped after its sidecar was written
            return "skipped", None
        present = [k for k in keys if os.path.exists(os.path.join(folder, names[k]))]
        if not present:
            return "missing", None
        try:
            absent = [names[k] for k in keys if k not in present]
            if absent:
                raise CacheEntryError(
                    f"{folder}: the published entry of {image!r} is incomplete: no {', '.join(absent)}"
                )
            try:
                fingerprint = entry.source_fingerprint(source)
            except OSError as err:
                raise CacheEntryError(
                    f"{source}: the scan is not there ({err.strerror or err}); an entry is valid only while its "
                    "scan is (its size and time are recorded), so it is not imported"
                ) from None
            enc, published, trusted = read_published(folder, image, mode, source_path, trust_pickle, pub_side)
            provenance = {
                "from": "the published NeuroVFM cache",
                "published_sidecar": published or None,
                "trusted_pickle": trusted,
            }
            _write(folder, study, image, mode, enc, fingerprint, source_path, provenance, keys, names)
        except Exception as err:  # recorded, the import goes on
            reason = f"{type(err).__name__}: {err}"
            record = {"version": entry.PIPELINE_VERSION, "reason": reason, "time": time.time()}
            with contextlib.suppress(OSError):
                atomic_write_bytes(entry.failed_path(folder, image), json.dumps(record).encode(), f".{image}.")
            return "failed", reason
        if pub_side is not None:
            unlink(pub_side)
        unlink(entry.failed_path(folder, image))
        return "done", "trusted" if trusted else None
    finally:
        os.close(fd)  # releases the lock


def _write(
    folder: str,
    study: str,
    image: str,
    mode: str,
    enc: entry.Encoded,
    fingerprint: dict[str, int],
    source_path: str,
    provenance: dict[str, Any],
    keys: list[str],
    names: Mapping[str, str],
) -> None:
    """write_entry, with the published files kept under second names (hard links) until
    the sidecar is written: an import stopped between the renames is undone by the next
    one. Where hard links are not supported the files are replaced without them."""
    linked = True
    for key in keys:
        b = _backup_path(folder, image, key)
        unlink(b)
        try:
            os.link(os.path.join(folder, names[key]), b)
        except OSError:
            linked = False
            break
    if not linked:
        for key in keys:
            unlink(_backup_path(folder, image, key))
    try:
        entry.write_entry(folder, study, image, mode, enc, fingerprint, source_path, extra={"imported": provenance})
    except BaseException:
        _restore_backups(folder, image, keys, names, committed=False)
        raise
    _restore_backups(folder, image, keys, names, committed=True)
