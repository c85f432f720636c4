"""The reading side of a dataset's cache: :class:`CacheReader` (the base of
:class:`~neurovfm.data.CacheManager`) opens ``metadata.json``, says whether an entry is
valid, serves entries as float32 (:meth:`CacheReader.load_image`) or as zero-copy uint8
views (:meth:`CacheReader.open_uint8`), counts (:meth:`CacheReader.get_cache_stats`) and
verifies them. The format is :mod:`neurovfm.data.cache.entry`'s.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from ... import _core
from ..._threads import get_num_threads
from ...errors import InvalidArgumentError
from ..metadata import DatasetMetadata, MetadataNotFoundError
from ..preprocess import CT_WINDOW_NAMES
from . import entry

__all__ = ["CacheReader"]

log = logging.getLogger("neurovfm")


class CacheReader:
    """Reads ``data_dir/processed/``; :class:`~neurovfm.data.CacheManager` also builds it.

    Parameters
    ----------
    data_dir
        The dataset folder; it must hold ``metadata.json``
        (:meth:`DatasetMetadata.save`, or ``neurovfm metadata DATA_DIR --modes FILE``).
    """

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = os.path.abspath(os.fspath(data_dir))
        self.metadata_path = os.path.join(self.data_dir, "metadata.json")
        if not os.path.exists(self.metadata_path):
            raise MetadataNotFoundError(
                f"{self.metadata_path}: no metadata.json. Create it first with "
                f"DatasetMetadata.from_directory({self.data_dir!r}, mode_mapping).save() "
                f"or `python -m neurovfm metadata {self.data_dir} --modes MODES.csv`"
            )
        self.metadata = DatasetMetadata.from_file(self.metadata_path)
        self.processed_dir = os.path.join(self.data_dir, "processed")
        self._sidecars = entry.SidecarCache()
        # Reads reuse a DICOM folder's walk while the folder's own (mtime, inode) stay the
        # same (entry.source_matches); builds and verify always walk it.
        self._folders: entry.FolderWalks = {}

    # -- paths (the layout is entry's) ---------------------------------------
    def _dir(self, study: str) -> str:
        return os.path.join(self.processed_dir, study)

    def file_names(self, image: str, mode: str) -> dict[str, str]:
        """Cache files of an image: {key: file name}; keys are windows (CT) or 'volume'
        (MRI), and 'mask' (the token background flags)."""
        return entry.file_names(image, mode)

    def sidecar_path(self, study: str, image: str) -> str:
        return entry.sidecar_path(self._dir(study), image)

    def _source(self, study: str, image: str) -> str | None:
        """Path of the scan of ``study/image``; None when the metadata does not hold it."""
        try:
            rec = self.metadata.get_study(study).image(image)
        except KeyError:
            return None
        return os.path.join(self.data_dir, rec.path)

    # -- validity (the rule is entry's) --------------------------------------
    def entry_status(self, study: str, image: str, verify: bool = False) -> str:
        """``'valid'``, ``'missing'``, ``'stale'`` (source or pipeline changed) or ``'corrupt'``
        (a file's size, or with ``verify`` its CRC-32, differs from the sidecar's)."""
        rec = self.metadata.get_study(study).image(image)
        side = self._sidecars.get(self.sidecar_path(study, image))
        status = entry.sidecar_status(side, os.path.join(self.data_dir, rec.path))
        if status != "valid" or side is None:
            return status
        return entry.files_status(self._dir(study), side, verify)

    # -- read --------------------------------------------------------------
    def _valid_sidecar(self, study: str, image: str) -> dict[str, Any] | None:
        """The sidecar of a valid entry by the sidecar's account (entry.sidecar_status:
        version and source fingerprint); None otherwise. Files are checked when opened."""
        source = self._source(study, image)
        side = self._sidecars.get(self.sidecar_path(study, image))
        if source is None or entry.sidecar_status(side, source, self._folders) != "valid":
            return None
        return side

    def load_image(
        self, study: str, image: str, window: str | None = None, as_numpy: bool = False
    ) -> dict[str, Any] | list[dict[str, Any]] | None:
        """A cached image as float32 ``[1, D, H, W]`` in ``[0, 1]`` (``uint8 / 255``).

        Returns a dict (``data``, ``mask``, ``view``, ``mode``, ``window``,
        ``shape``, ``spacing``, ``geometry``: the :class:`~neurovfm.data.OutputGeometry`
        of ``data``'s grid, ``None`` for an entry imported from a published cache, which
        records no origin or direction); ``mask`` is the uint8 token background flags
        ``[D/4, H/16, W/16]`` (1 = the token holds background; the key keeps the
        published name). For CT with ``window=None`` a list of three such dicts
        (brain, blood, bone). ``None`` when the image is not cached, stale (its
        source or the pipeline changed), or its files fail the size, shape and
        CRC-32 checks made on every read (never serves a corrupt file;
        ``build_cache`` rebuilds it). Tensors are torch tensors unless ``as_numpy``.
        """
        side = self._valid_sidecar(study, image)
        if side is None:
            return None
        mode = side["mode"]
        if mode == "ct":
            if window is None:
                wins = list(CT_WINDOW_NAMES)
            elif window in CT_WINDOW_NAMES:
                wins = [window]
            else:
                raise InvalidArgumentError(f"window must be one of {CT_WINDOW_NAMES} or None, got {window!r}")
        else:
            if window is not None:
                raise InvalidArgumentError(f"{study}/{image} is MRI: window must be None, got {window!r}")
            wins = ["volume"]
        folder = self._dir(study)
        try:
            token_background = entry.token_background(folder, side)
            out = []
            for key in wins:
                u8 = entry.open_file(folder, side, key)
                data = _core.dequantize_u8(u8, get_num_threads())
                out.append(
                    {
                        "data": data,
                        "mask": token_background,
                        "view": side["view"],
                        "mode": mode,
                        "window": key if mode == "ct" else None,
                        "shape": tuple(side["shape"]),
                        "spacing": tuple(side["spacing"]),
                        "geometry": entry.sidecar_geometry(side),
                    }
                )
        except (OSError, ValueError) as err:
            log.warning("cache entry %s/%s is corrupt and is not served: %s", study, image, err)
            return None
        if not as_numpy:
            import torch

            for d in out:
                d["data"] = torch.from_numpy(d["data"])
                d["mask"] = torch.from_numpy(d["mask"].copy())
        if mode == "ct" and window is None:
            return out
        return out[0]

    def open_uint8(self, study: str, image: str, key: str) -> tuple[np.ndarray | None, dict[str, Any] | None]:
        """Zero-copy read-only uint8 view of one cached file (key: window, 'volume' or
        'mask', the token background flags), and the sidecar.

        ``(None, None)`` when the image is not cached (or stale); a ``ValueError``
        (:class:`~neurovfm.data.cache.ptfile.PtFormatError` or
        :class:`~neurovfm.data.cache.entry.CacheEntryError`) when the file fails its size,
        shape or CRC-32 check."""
        side = self._valid_sidecar(study, image)
        if side is None:
            return None, None
        return entry.open_file(self._dir(study), side, key), side

    # -- stats / verify ----------------------------------------------------
    def get_cache_stats(self) -> dict[str, Any]:
        """Counts and bytes: studies, images, cached (valid), coverage, failed, stale, bytes on disk.

        The keys of the published NeuroVFM ``CacheManager.get_cache_stats`` are there with
        its meanings: ``total_studies``, ``total_images``, ``cached_images`` and
        ``cache_coverage`` (``cached_images / total_images``, 0.0 for no image; the same
        value as ``coverage``). An image counts as cached when its entry is valid (not
        missing, stale or corrupt), where the published code counts files that exist."""
        total_images = cached = failed = stale = 0
        for study in self.metadata:
            for rec in study.images:
                total_images += 1
                st = self.entry_status(study.name, rec.name)
                if st == "valid":
                    cached += 1
                elif st in ("stale", "corrupt"):
                    stale += 1
                if st != "valid" and os.path.exists(entry.failed_path(self._dir(study.name), rec.name)):
                    failed += 1
        nbytes = 0
        if os.path.isdir(self.processed_dir):
            for root, _dirs, files in os.walk(self.processed_dir):
                for fn in files:
                    try:
                        nbytes += os.path.getsize(os.path.join(root, fn))
                    except OSError:
                        pass
        coverage = cached / total_images if total_images else 0.0
        return {
            "total_studies": len(self.metadata),
            "total_images": total_images,
            "cached_images": cached,
            "coverage": coverage,
            "cache_coverage": coverage,
            "failed_images": failed,
            "stale_images": stale,
            "bytes_on_disk": nbytes,
        }

    def verify(self) -> dict[str, str]:
        """Check every entry, CRC-32 included: {'study/image': status} for those not valid."""
        out: dict[str, str] = {}
        for study in self.metadata:
            for rec in study.images:
                st = self.entry_status(study.name, rec.name, verify=True)
                if st != "valid":
                    out[f"{study.name}/{rec.name}"] = st
        return out
