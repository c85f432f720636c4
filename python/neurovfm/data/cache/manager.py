"""CacheManager: builds and reads the memory-mapped uint8 cache of preprocessed volumes.

The format of an entry (its files, sidecar, validity rule, encoding and zero-copy open)
belongs to :mod:`neurovfm.data.cache.entry` (docs/cache.md); this module runs builds over a
dataset on :mod:`neurovfm.data.runner` (workers, shards, progress; here: the summary, the
``processed`` flags of ``metadata.json``) and converts a cache built by the published code
(:meth:`CacheManager.import_published`; the conversion of one image is
:mod:`neurovfm.data.cache.published`'s). Serving entries as float32
(:meth:`CacheManager.load_image`), stats and verify are :mod:`neurovfm.data.cache.reader`'s.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import cast

from ..._threads import get_num_threads, thread_limit
from ...errors import NotInDatasetError
from ..metadata import DatasetMetadata, ImageRecord
from ..runner import Progress, in_shard, resolve_shard, resolve_workers, run_jobs, shard_from_env
from . import entry, published
from .entry import PIPELINE_VERSION
from .published import ImportSummary
from .reader import CacheReader

__all__ = [
    "CacheReader",
    "CacheManager",
    "BuildSummary",
    "ImportSummary",
    "PIPELINE_VERSION",
    "check_study_names",
    "resolve_shard",
    "resolve_workers",
    "shard_from_env",
]

log = logging.getLogger("neurovfm")

#: What building one image gives: ("done", previous status) | ("skipped" | "busy", None) | ("failed", reason).
_Result = tuple[str, str | None]
#: An image to build: (study, mode, record).
_Target = tuple[str, str, ImageRecord]


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
        busy = f", {len(self.busy)} skipped (another builder is building them)" if self.busy else ""
        rate = f" ({self.images_per_second:.2f} images/s)" if self.done else ""
        lines = [
            f"cache build: {len(self.done)} built{repaired}, {len(self.skipped)} already cached, "
            f"{len(self.failed)} failed{busy}, {self.seconds:.1f} s{rate}"
        ]
        for key in sorted(self.repaired):
            lines.append(f"  repaired {key}: its cached files failed the size or checksum check")
        for key, reason in sorted(self.failed.items()):
            lines.append(f"  failed {key}: {reason}")
        for text in self.warnings:
            lines.append(f"  warning: {text}")
        return "\n".join(lines)


class CacheManager(CacheReader):
    """Builds and reads ``data_dir/processed/`` (see the module docstring; the reading
    side is :class:`~neurovfm.data.cache.reader.CacheReader`'s).

    Parameters
    ----------
    data_dir
        The dataset folder; it must hold ``metadata.json``
        (:meth:`DatasetMetadata.save`, or ``neurovfm metadata DATA_DIR --modes FILE``).
    """

    # -- build -------------------------------------------------------------
    def _targets(self, study_names: Iterable[str] | None, shard: tuple[int, int] | None) -> list[_Target]:
        out: list[_Target] = []
        wanted = check_study_names(self.metadata, study_names, self.metadata_path)
        for study in self.metadata:
            if wanted is not None and study.name not in wanted:
                continue
            for rec in study.images:
                if in_shard(f"{study.name}/{rec.name}", shard):
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
        executor: str | None = None,
        ray_address: str | None = None,
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
        executor
            ``"serial"``, ``"threads"`` (default: threads when several workers run) or
            ``"ray"``: each image a Ray task of one CPU on the cluster at ``ray_address``
            (:mod:`neurovfm.data.ray_executor`; the dataset folder must be one every
            node sees). The processed flags are set by this process, as in a local run.
        """
        shard = resolve_shard(shard)
        workers = resolve_workers(num_workers)
        if executor == "ray":
            from ..ray_executor import connect

            connect(ray_address)
        per_image = threads_per_image or (1 if workers > 1 or executor == "ray" else get_num_threads())
        targets = self._targets(study_names, shard)
        os.makedirs(self.processed_dir, exist_ok=True)
        summary = BuildSummary()

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

        work = functools.partial(_build_job, self.data_dir, self.processed_dir, force, per_image)
        self._run(targets, workers, work, record, flags, summary, "cache", progress, executor)
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
        executor: str | None = None,
    ) -> None:
        """Run ``work`` on every target (the runner: ``workers`` threads), ``record`` each
        result under its ``study/image`` key (it returns the progress bar's counts), then set
        the processed ``flags`` in metadata.json, and time the ``summary`` and print it (with
        ``progress``): what a build and an import share."""
        t0 = time.perf_counter()
        bar = Progress(len(targets), f"neurovfm {what}", "img", enabled=progress)
        try:
            run_jobs(
                targets,
                work,
                lambda t, res: record(f"{t[0]}/{t[2].name}", res),
                workers=workers,
                executor=executor,
                progress=bar,
                name=f"neurovfm-{what}",
            )
        finally:
            bar.close()
            summary.seconds = time.perf_counter() - t0
            try:
                self._set_flags(flags())
            except OSError as err:  # full disk, read-only dataset: the cache itself is consistent
                summary.warnings.append(f"{self.metadata_path}: processed flags not updated ({err})")
                if not progress:  # else the printed summary says it
                    log.warning("%s", summary.warnings[-1])
        if progress:  # else the caller prints the summary it gets, if it wants it: never twice
            print(summary, file=sys.stderr)

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
        # an image named <image>_metadata: <image>_metadata.json is its sidecar, not a published one
        clash = frozenset(
            f"{s.name}/{im.name}"
            for s in self.metadata
            for im in s.images
            if f"{im.name}_metadata" in {other.name for other in s.images}
        )
        work = functools.partial(_import_job, self.data_dir, self.processed_dir, trust_pickle, clash)

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

        with published.allow_numpy_integers():
            self._run(targets, workers, work, record, flags, summary, "import", progress)
        return summary


def _build_job(data_dir: str, processed_dir: str, force: bool, per_image: int, t: _Target) -> _Result:
    """Build the entry of target ``t`` (a runner job: module level, picklable arguments);
    an unexpected exception becomes its failure record."""
    study, mode, rec = t
    try:
        with thread_limit(per_image):
            return entry.build_entry(
                os.path.join(processed_dir, study),
                study,
                rec.name,
                mode,
                os.path.join(data_dir, rec.path),
                rec.path,
                force,
                rec.series_uid,
            )
    except Exception as err:  # pragma: no cover - defensive
        return "failed", f"{type(err).__name__}: {err}"


def _import_job(data_dir: str, processed_dir: str, trust_pickle: bool, clash: frozenset[str], t: _Target) -> _Result:
    """Import the published files of target ``t`` (a runner job, as :func:`_build_job`);
    ``clash``: the images whose ``<image>_metadata.json`` is another image's sidecar."""
    study, mode, rec = t
    try:
        return published.import_entry(
            os.path.join(processed_dir, study),
            study,
            rec.name,
            mode,
            os.path.join(data_dir, rec.path),
            rec.path,
            trust_pickle,
            read_sidecar=f"{study}/{rec.name}" not in clash,
        )
    except Exception as err:  # pragma: no cover - defensive
        return "failed", f"{type(err).__name__}: {err}"
