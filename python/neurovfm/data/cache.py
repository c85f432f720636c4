"""CacheManager: builds and reads the memory-mapped uint8 cache of preprocessed volumes.

The format of an entry (its files, sidecar, validity rule, encoding and zero-copy open)
belongs to :mod:`neurovfm.data.entry` (docs/cache.md); this module runs builds over a
dataset (workers, shards, the summary, the ``processed`` flags of ``metadata.json``),
converts a cache built by the published code (:meth:`CacheManager.import_published`;
the conversion of one image is :mod:`neurovfm.data.published_cache`'s) and serves
entries as float32 (:meth:`CacheManager.load_image`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np

from .. import _core
from .._threads import available_cpus, get_num_threads, thread_limit
from ..errors import InvalidArgumentError, NotInDatasetError
from . import entry
from .entry import PIPELINE_VERSION
from .preprocess import CT_WINDOW_NAMES
from .metadata import DatasetMetadata, ImageRecord, MetadataNotFoundError
from . import published_cache
from .published_cache import ImportSummary

__all__ = ["CacheManager", "BuildSummary", "ImportSummary", "PIPELINE_VERSION", "shard_from_env"]

log = logging.getLogger("neurovfm")

#: What building one image gives: ("done", previous status) | ("skipped" | "busy", None) | ("failed", reason).
_Result = tuple[str, str | None]
#: An image to build: (study, mode, record).
_Target = tuple[str, str, ImageRecord]
_T = TypeVar("_T")


def check_study_names(metadata: DatasetMetadata, names: Iterable[str] | None, metadata_path: str) -> set[str] | None:
    """The set of ``names`` (None: every study); :class:`~neurovfm.errors.NotInDatasetError` (a ``KeyError``)
    naming those not in the metadata. Shared by the builder and the dataset."""
    if names is None:
        return None
    wanted = {str(s) for s in names}
    unknown = sorted(wanted - {s.name for s in metadata})
    if unknown:
        raise NotInDatasetError(f"unknown studies (not in {metadata_path}): {unknown}")
    return wanted


def shard_from_env(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """(index, count) of this builder from SLURM array or torchrun variables, or None."""
    env = os.environ if environ is None else environ
    if "SLURM_ARRAY_TASK_ID" in env:
        tid = int(env["SLURM_ARRAY_TASK_ID"])
        if "SLURM_ARRAY_TASK_COUNT" in env:
            lo = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            return tid - lo, int(env["SLURM_ARRAY_TASK_COUNT"])
        if "SLURM_ARRAY_TASK_MAX" in env:
            lo = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            return tid - lo, int(env["SLURM_ARRAY_TASK_MAX"]) - lo + 1
    if "WORLD_SIZE" in env and "RANK" in env and int(env["WORLD_SIZE"]) > 1:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    return None


def resolve_shard(shard: Any) -> tuple[int, int] | None:
    """``shard`` as ``(i, n)`` with ``0 <= i < n``; None: from the environment
    (:func:`shard_from_env`). :class:`InvalidArgumentError` for anything else."""
    if shard is None:
        return shard_from_env()
    try:
        i, n = (int(x) for x in shard)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise InvalidArgumentError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
    return i, n


def resolve_workers(num_workers: int | None) -> int:
    """``num_workers``, or the CPUs this process may use; >= 1."""
    workers = num_workers if num_workers is not None else available_cpus()
    if workers < 1:
        raise InvalidArgumentError(f"num_workers must be >= 1, got {num_workers!r}")
    return workers


def _in_shard(key: str, shard: tuple[int, int] | None) -> bool:
    if shard is None:
        return True
    i, n = shard
    return zlib.crc32(key.encode()) % n == i


@dataclass
class BuildSummary:
    """What a build did. ``failed`` maps ``study/image`` to the reason;
    ``repaired`` lists the entries of ``done`` that were corrupt before."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    busy: list[str] = field(default_factory=list)  # being built by another builder
    repaired: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return len(self.done) / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        repaired = f" ({len(self.repaired)} of them were corrupt)" if self.repaired else ""
        lines = [
            f"cache build: {len(self.done)} built{repaired}, {len(self.skipped)} already cached, "
            f"{len(self.failed)} failed, {len(self.busy)} left to other builders, "
            f"{self.seconds:.1f} s ({self.images_per_second:.2f} images/s)"
        ]
        for key in sorted(self.repaired):
            lines.append(f"  repaired {key}: its cached files failed the size or checksum check")
        for key, reason in sorted(self.failed.items()):
            lines.append(f"  failed {key}: {reason}")
        for text in self.warnings:
            lines.append(f"  warning: {text}")
        return "\n".join(lines)


class CacheManager:
    """Builds and reads ``data_dir/processed/`` (see the module docstring).

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

    # -- build -------------------------------------------------------------
    def _targets(self, study_names: Iterable[str] | None, shard: tuple[int, int] | None) -> list[_Target]:
        out: list[_Target] = []
        wanted = check_study_names(self.metadata, study_names, self.metadata_path)
        for study in self.metadata:
            if wanted is not None and study.name not in wanted:
                continue
            for rec in study.images:
                if _in_shard(f"{study.name}/{rec.name}", shard):
                    out.append((study.name, study.mode, rec))
        return out

    def build_cache(
        self,
        num_workers: int | None = None,
        force: bool = False,
        study_names: Iterable[str] | None = None,
        shard: tuple[int, int] | None = None,
        progress: bool = True,
        threads_per_image: int | None = None,
    ) -> BuildSummary:
        """Fill ``processed/`` for every image (or those of ``study_names``).

        Parameters
        ----------
        num_workers
            Images processed at once (threads: the kernels release the GIL).
            Default: the CPUs this process may use.
        force
            Rebuild images that are already cached and valid.
        shard
            ``(i, n)``: build only this builder's share of the images (a stable
            hash of ``study/image``). Default: from ``SLURM_ARRAY_TASK_ID`` /
            ``SLURM_ARRAY_TASK_COUNT`` or torchrun's ``RANK`` / ``WORLD_SIZE``
            when set. Builders may share one folder at once.
        threads_per_image
            Kernel threads per image (default 1 when several workers run).
        """
        shard = resolve_shard(shard)
        workers = resolve_workers(num_workers)
        per_image = threads_per_image or (1 if workers > 1 else get_num_threads())
        targets = self._targets(study_names, shard)
        os.makedirs(self.processed_dir, exist_ok=True)
        summary = BuildSummary()

        def work(t: _Target) -> _Result:
            study, mode, rec = t
            with thread_limit(per_image):
                return self._build_one(study, mode, rec, force)

        def record(key: str, res: _Result) -> dict[str, int]:
            status, reason = res
            if status == "done":
                summary.done.append(key)
                if reason == "corrupt":
                    summary.repaired.append(key)
            elif status == "skipped":
                summary.skipped.append(key)
            elif status == "busy":
                summary.busy.append(key)
            else:
                summary.failed[key] = cast(str, reason)  # a failure always has its reason
            return {"done": len(summary.done), "failed": len(summary.failed)}

        def flags() -> dict[str, bool]:
            changes = {k: True for k in summary.done + summary.skipped}
            changes.update({k: False for k in summary.failed})
            return changes

        self._run(targets, workers, work, record, flags, summary, "cache", progress)
        return summary

    def _run(
        self,
        targets: list[_Target],
        workers: int,
        work: Callable[[_Target], _Result],
        record: Callable[[str, _Result], dict[str, int]],
        flags: Callable[[], dict[str, bool]],
        summary: BuildSummary | ImportSummary,
        what: str,
        progress: bool,
    ) -> None:
        """Run ``work`` on every target (``workers`` threads), ``record`` each result under
        its ``study/image`` key (it returns the progress bar's counts), then set the
        processed ``flags`` in metadata.json, and time, log and (with ``progress``) print
        the ``summary``: what a build and an import share."""
        t0 = time.perf_counter()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(targets), desc=f"neurovfm {what}", unit="img", file=sys.stderr)

        def done(t: _Target, res: _Result) -> None:
            counts = record(f"{t[0]}/{t[2].name}", res)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(**counts, refresh=False)

        try:
            if workers == 1:
                for t in targets:
                    done(t, _call(work, t))
            else:
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"neurovfm-{what}") as ex:
                    futs = {ex.submit(_call, work, t): t for t in targets}
                    for fut in as_completed(futs):
                        done(futs[fut], fut.result())
        finally:
            if bar is not None:
                bar.close()
            summary.seconds = time.perf_counter() - t0
            try:
                self._set_flags(flags())
            except OSError as err:  # full disk, read-only dataset: the cache itself is consistent
                summary.warnings.append(f"{self.metadata_path}: processed flags not updated ({err})")
                log.warning("%s", summary.warnings[-1])
        log.info("%s", summary)
        if progress:
            print(summary, file=sys.stderr)

    def _build_one(self, study: str, mode: str, rec: ImageRecord, force: bool) -> _Result:
        """("done", previous status) | ("skipped" | "busy", None) | ("failed", reason)."""
        source = os.path.join(self.data_dir, rec.path)
        return entry.build_entry(self._dir(study), study, rec.name, mode, source, rec.path, force, rec.series_uid)

    def _set_flags(self, changes: dict[str, bool]) -> None:
        """Set the processed flags ``{"study/image": flag}`` in metadata.json, under its lock."""
        if not changes:
            return
        lock = os.path.join(self.data_dir, ".metadata.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            entry.try_lock(fd, blocking=True)
            meta = DatasetMetadata.from_file(self.metadata_path)  # others may have written it
            for study in meta:
                for rec in study.images:
                    key = f"{study.name}/{rec.name}"
                    if key in changes:
                        rec.processed = changes[key]
            meta.save(self.metadata_path)
            self.metadata = meta
        finally:
            os.close(fd)

    # -- import ------------------------------------------------------------
    def import_published(
        self,
        trust_pickle: bool = False,
        num_workers: int | None = None,
        study_names: Iterable[str] | None = None,
        shard: tuple[int, int] | None = None,
        progress: bool = True,
    ) -> ImportSummary:
        """Convert a cache built by the published NeuroVFM code in ``processed/`` into this
        library's entries, in place and without reading the scans (docs/cache.md,
        "Importing a cache built by the published code").

        For every image of ``metadata.json`` (or of ``study_names``): its published files
        (``<image>.pt`` or ``<image>_brain|blood|bone.pt``, each a dict holding a uint8
        ``[D, H, W]`` volume, and ``<image>_mask.pt``, the voxel background mask) are read
        and checked (shapes whole tokens, the windows alike, mode and window names as in
        ``metadata.json``, mask values 0/1 and consistent with the volumes, the published
        ``<image>_metadata.json`` when present), then written as an entry: the volumes'
        bytes as they are, the token flags reduced from the voxel mask, the sidecar last
        with the scan's fingerprint (the scan must exist). An image that fails a check is
        reported in ``failed`` with the file and the reason, and its files are left as
        they were; valid entries are ``skipped``, images without published files
        ``missing``. The ``processed`` flags of ``metadata.json`` are updated as by
        :meth:`build_cache`.

        Parameters
        ----------
        trust_pickle
            The files are pickles. They are read with ``torch.load(weights_only=True)``
            (NumPy integer scalars allowed); a file that needs more is refused unless
            this is True, which loads it with ``weights_only=False`` and so runs the code
            pickled in it: only for a cache you built yourself.
        num_workers
            Images converted at once (threads). Default: the CPUs this process may use.
        shard
            ``(i, n)``: only this process's share, as in :meth:`build_cache` (default
            from SLURM or torchrun variables).

        Raises ``ImportError`` when PyTorch is not installed (the files are torch pickles).
        """
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise ImportError(
                "importing a published cache needs PyTorch to read its files (torch pickles): "
                "pip install 'neurovfm[torch]'"
            )
        shard = resolve_shard(shard)
        workers = resolve_workers(num_workers)
        targets = self._targets(study_names, shard)
        summary = ImportSummary()

        def work(t: _Target) -> _Result:
            study, mode, rec = t
            images = {im.name for im in self.metadata.get_study(study).images}
            return published_cache.import_entry(
                self._dir(study),
                study,
                rec.name,
                mode,
                os.path.join(self.data_dir, rec.path),
                rec.path,
                trust_pickle,
                read_sidecar=f"{rec.name}_metadata" not in images,
            )

        def record(key: str, res: _Result) -> dict[str, int]:
            status, reason = res
            if status == "done":
                summary.imported.append(key)
                if reason == "trusted":
                    summary.trusted.append(key)
            elif status in ("skipped", "missing", "busy"):
                getattr(summary, status).append(key)
            else:
                summary.failed[key] = cast(str, reason)
            return {"imported": len(summary.imported), "failed": len(summary.failed)}

        def flags() -> dict[str, bool]:
            changes = {k: True for k in summary.imported + summary.skipped}
            changes.update({k: False for k in list(summary.failed) + summary.missing})
            return changes

        with published_cache.allow_numpy_integers():
            self._run(targets, workers, work, record, flags, summary, "import", progress)
        return summary

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
        (:class:`~neurovfm.data.ptfile.PtFormatError` or
        :class:`~neurovfm.data.entry.CacheEntryError`) when the file fails its size,
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


def _call(fn: Callable[[_T], _Result], arg: _T) -> _Result:
    """Run fn(arg) and turn an unexpected exception into a failure record."""
    try:
        return fn(arg)
    except Exception as err:  # pragma: no cover - defensive
        return "failed", f"{type(err).__name__}: {err}"
