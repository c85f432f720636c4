"""CacheManager: a memory-mapped uint8 cache of preprocessed volumes.

Layout (SPEC 5)::

    processed/<study>/<image>.pt          MRI: uint8 volume [1, D, H, W]
    processed/<study>/<image>_brain.pt    CT: one file per window (brain, blood, bone)
    processed/<study>/<image>_blood.pt
    processed/<study>/<image>_bone.pt
    processed/<study>/<image>_mask.pt     uint8 token background flags [D/4, H/16, W/16] (1 = background)
    processed/<study>/<image>.json        sidecar: shape, spacing, view, mode, windows, source
                                          fingerprint, pipeline version, file sizes and CRC-32s
    processed/<study>/<image>.failed.json why the last build of this image failed

Every ``.pt`` file is what ``torch.save(tensor)`` writes and loads with
``torch.load(path, weights_only=True, mmap=True)``. The sidecar is written
last: an image is cached when its sidecar exists, matches the source and the
pipeline version, and every file has the recorded size and CRC-32 (checked on
every read: a corrupt file is never served). Every file is written
under a temporary name and renamed, so a build killed at any moment leaves
nothing that reads as valid, and a rerun completes it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _core
from .._threads import available_cpus, get_num_threads, thread_limit
from . import ptfile
from .metadata import DatasetMetadata, ImageRecord
from .preprocess import CT_WINDOWS

__all__ = ["CacheManager", "BuildSummary", "PIPELINE_VERSION", "shard_from_env"]

log = logging.getLogger("neurovfm")

#: Bump whenever cached numbers would change: older entries become stale (and are rebuilt).
#: neurovfm-2: quantised from the float64 values (the reference's bytes; docs/numbers.md) and
#: one resampling order for every entry point.
PIPELINE_VERSION = "neurovfm-2"
WINDOW_NAMES = tuple(w[0] for w in CT_WINDOWS)


def shard_from_env(environ=None):
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


def _in_shard(key: str, shard) -> bool:
    if shard is None:
        return True
    i, n = shard
    return zlib.crc32(key.encode()) % n == i


def _fingerprint(path: str) -> dict:
    """Size and modification time of a file, or of every file under a folder."""
    st = os.stat(path)
    if not os.path.isdir(path):
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
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


def _atomic_write_bytes(path: str, data: bytes, prefix: str | None = None) -> None:
    folder = os.path.dirname(path)
    if prefix is None:
        prefix = "." + os.path.basename(path) + "."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _try_lock(fd: int, blocking: bool) -> bool:
    """Exclusive lock on an open file (released when it is closed or the process dies)."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _tmp_prefix(image: str) -> str:
    """Prefix of every temporary file of an image's entry: ``.<image>.<8 random>.tmp``."""
    return f".{image}."


def _remove_leftovers(folder: str, image: str) -> None:
    """Delete the temporary files an interrupted build of ``image`` left (caller holds its lock).

    Matches exactly ``.<image>.<mkstemp's 8 characters>.tmp``, so the temporary
    files of an image whose name merely starts with ``image`` are left alone."""
    pattern = re.compile(re.escape(_tmp_prefix(image)) + r"[a-z0-9_]{8}\.tmp")
    for fn in os.listdir(folder):
        if pattern.fullmatch(fn):
            _unlink(os.path.join(folder, fn))


@dataclass
class BuildSummary:
    """What a build did. ``failed`` maps ``study/image`` to the reason;
    ``repaired`` lists the entries of ``done`` that were corrupt before."""

    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)
    busy: list = field(default_factory=list)  # being built by another builder
    repaired: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
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
            raise FileNotFoundError(
                f"{self.metadata_path}: no metadata.json. Create it first with "
                f"DatasetMetadata.from_directory({self.data_dir!r}, mode_mapping).save() "
                f"or `python -m neurovfm metadata {self.data_dir} --modes MODES.csv`"
            )
        self.metadata = DatasetMetadata.from_file(self.metadata_path)
        self.processed_dir = os.path.join(self.data_dir, "processed")
        self._sidecars = {}

    # -- paths -------------------------------------------------------------
    def _dir(self, study: str) -> str:
        return os.path.join(self.processed_dir, study)

    def file_names(self, image: str, mode: str) -> dict:
        """Cache files of an image: {key: file name}; keys are windows (CT) or 'volume' (MRI), and 'mask'."""
        if mode == "ct":
            names = {w: f"{image}_{w}.pt" for w in WINDOW_NAMES}
        else:
            names = {"volume": f"{image}.pt"}
        names["mask"] = f"{image}_mask.pt"
        return names

    def sidecar_path(self, study: str, image: str) -> str:
        return os.path.join(self._dir(study), f"{image}.json")

    def _failed_path(self, study: str, image: str) -> str:
        return os.path.join(self._dir(study), f"{image}.failed.json")

    # -- validity ----------------------------------------------------------
    def _read_sidecar(self, study: str, image: str):
        """The sidecar as a dict (None when absent or unreadable); parsed files
        are remembered while their size and modification time stay the same."""
        path = self.sidecar_path(study, image)
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        hit = self._sidecars.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        try:
            with open(path) as f:
                side = json.load(f)
        except (OSError, ValueError):
            return None
        if len(self._sidecars) > 4096:
            self._sidecars.clear()
        self._sidecars[path] = (key, side)
        return side

    def entry_status(self, study: str, image: str, verify: bool = False) -> str:
        """``'valid'``, ``'missing'``, ``'stale'`` (source or pipeline changed) or ``'corrupt'``."""
        rec = self.metadata.get_study(study).image(image)
        side = self._read_sidecar(study, image)
        if side is None:
            return "missing"
        if side.get("version") != PIPELINE_VERSION:
            return "stale"
        try:
            if side.get("source") != _fingerprint(os.path.join(self.data_dir, rec.path)):
                return "stale"
        except OSError:
            return "stale"
        folder = self._dir(study)
        for info in side.get("files", {}).values():
            p = os.path.join(folder, info["name"])
            try:
                if os.path.getsize(p) != info["bytes"]:
                    return "corrupt"
                if verify:
                    if "file_crc32" in info:  # every byte, headers included
                        if ptfile.file_crc32(p) != info["file_crc32"]:
                            return "corrupt"
                    else:
                        ptfile.open_tensor(p, verify=True)
            except (OSError, ValueError):
                return "corrupt"
        return "valid" if side.get("files") else "corrupt"

    # -- build -------------------------------------------------------------
    def _targets(self, study_names, shard):
        out = []
        wanted = None if study_names is None else set(study_names)
        if wanted is not None:
            unknown = sorted(wanted - {s.name for s in self.metadata})
            if unknown:
                raise KeyError(f"unknown studies (not in {self.metadata_path}): {unknown}")
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
        if shard is None:
            shard = shard_from_env()
        if shard is not None:
            i, n = (int(x) for x in shard)
            if not (n >= 1 and 0 <= i < n):
                raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
            shard = (i, n)
        workers = num_workers if num_workers is not None else available_cpus()
        if workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers!r}")
        per_image = threads_per_image or (1 if workers > 1 else get_num_threads())
        targets = self._targets(study_names, shard)
        os.makedirs(self.processed_dir, exist_ok=True)
        summary = BuildSummary()
        t0 = time.perf_counter()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(targets), desc="neurovfm cache", unit="img", file=sys.stderr)

        def work(t):
            study, mode, rec = t
            with thread_limit(per_image):
                return self._build_one(study, mode, rec, force)

        try:
            if workers == 1:
                results = ((t, _call(work, t)) for t in targets)
                for t, res in results:
                    self._record(summary, t, res, bar)
            else:
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="neurovfm-cache") as ex:
                    futs = {ex.submit(_call, work, t): t for t in targets}
                    for fut in as_completed(futs):
                        self._record(summary, futs[fut], fut.result(), bar)
        finally:
            if bar is not None:
                bar.close()
            summary.seconds = time.perf_counter() - t0
            try:
                self._update_flags(summary)
            except OSError as err:  # full disk, read-only dataset: the cache itself is consistent
                summary.warnings.append(f"{self.metadata_path}: processed flags not updated ({err})")
                log.warning("%s", summary.warnings[-1])
        log.info("%s", summary)
        if progress:
            print(summary, file=sys.stderr)
        return summary

    @staticmethod
    def _record(summary, t, res, bar):
        study, _mode, rec = t
        key = f"{study}/{rec.name}"
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
            summary.failed[key] = reason
        if bar is not None:
            bar.update(1)
            bar.set_postfix(done=len(summary.done), failed=len(summary.failed), refresh=False)

    def _build_one(self, study: str, mode: str, rec: ImageRecord, force: bool):
        """("done", previous status) | ("skipped" | "busy", None) | ("failed", reason)."""
        folder = self._dir(study)
        try:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(os.path.join(folder, f".{rec.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:  # processed/ is read-only (or full): a valid entry is still fine
            if not force and self.entry_status(study, rec.name, verify=True) == "valid":
                return "skipped", None
            return "failed", f"cannot write the cache in {folder}: {type(err).__name__}: {err}"
        try:
            if not _try_lock(fd, blocking=False):
                return "busy", None
            _remove_leftovers(folder, rec.name)  # of an interrupted build (we hold the lock)
            before = self.entry_status(study, rec.name, verify=True)
            if before == "valid" and not force:
                return "skipped", None
            if before == "corrupt":
                log.warning("cache entry %s/%s is corrupt (size or checksum): rebuilding it", study, rec.name)
            if before != "valid":
                # never leave a stale or corrupt entry readable while (or if) the rebuild fails
                _unlink(self.sidecar_path(study, rec.name))
            source = os.path.join(self.data_dir, rec.path)
            try:
                fingerprint = _fingerprint(source)
                self._write_entry(study, mode, rec, source, fingerprint)
            except Exception as err:  # recorded, the build goes on
                reason = f"{type(err).__name__}: {err}"
                if isinstance(err, OSError) and not err.filename:  # e.g. ENOSPC from a write
                    reason += f" (writing the cache in {folder})"
                side = {"version": PIPELINE_VERSION, "reason": reason, "time": time.time()}
                try:
                    _atomic_write_bytes(
                        self._failed_path(study, rec.name), json.dumps(side).encode(), _tmp_prefix(rec.name)
                    )
                except OSError as err2:  # e.g. the disk is full: the summary still has it
                    log.warning("%s/%s: could not record the failure (%s)", study, rec.name, err2)
                return "failed", reason
            _unlink(self._failed_path(study, rec.name))
            return "done", before
        finally:
            os.close(fd)  # releases the lock

    def _write_entry(self, study, mode, rec, source, fingerprint):
        """Write every file of the entry under a temporary name, then rename them
        into place and write the sidecar last. A failure before the renames (a
        full disk, say) leaves a valid older entry (``force``) as it was."""
        from .io import load_image
        from .preprocess import prepare_for_inference

        folder = self._dir(study)
        img = load_image(source)
        prep = prepare_for_inference(img, mode, quantize=True)
        if prep is None:
            raise ValueError(f"{source}: volume {img.GetSize()} is smaller than one 4x16x16 token after preprocessing")
        arrs, mask, view = prep
        d, h, w = arrs[0].shape[1:]
        keys = list(WINDOW_NAMES) if mode == "ct" else ["volume"]
        payloads = dict(zip(keys, arrs))
        payloads["mask"] = mask.reshape(d // 4, h // 16, w // 16)
        names = self.file_names(rec.name, mode)
        files, tmps = {}, {}
        try:
            for key, arr in payloads.items():
                fd, tmps[key] = tempfile.mkstemp(prefix=_tmp_prefix(rec.name), suffix=".tmp", dir=folder)
                os.close(fd)
                files[key] = {"name": names[key], **ptfile.write_tensor(tmps[key], arr)}
            _unlink(self.sidecar_path(study, rec.name))  # the old entry stops being valid first
            for key, tmp in tmps.items():
                os.replace(tmp, os.path.join(folder, names[key]))
        except BaseException:
            for tmp in tmps.values():
                _unlink(tmp)
            raise
        side = {
            "version": PIPELINE_VERSION,
            "study": study,
            "image": rec.name,
            "mode": mode,
            "view": int(view),
            "shape": [1, int(d), int(h), int(w)],
            "spacing": [float(x) for x in img.GetSpacing()],
            "windows": list(WINDOW_NAMES) if mode == "ct" else None,
            "source": fingerprint,
            "source_path": rec.path,
            "files": files,
            "host": socket.gethostname(),
            "time": time.time(),
        }
        _atomic_write_bytes(self.sidecar_path(study, rec.name), json.dumps(side, indent=1).encode(), _tmp_prefix(rec.name))

    def _update_flags(self, summary: BuildSummary) -> None:
        """Set the processed flags in metadata.json (this process owns the update)."""
        changes = {k: True for k in summary.done + summary.skipped}
        changes.update({k: False for k in summary.failed})
        if not changes:
            return
        lock = os.path.join(self.data_dir, ".metadata.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _try_lock(fd, blocking=True)
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

    # -- read --------------------------------------------------------------
    def load_image(
        self, study: str, image: str, window: str | None = None, as_numpy: bool = False
    ) -> dict[str, Any] | list[dict[str, Any]] | None:
        """A cached image as float32 ``[1, D, H, W]`` in ``[0, 1]`` (``uint8 / 255``).

        Returns a dict (``data``, ``mask``, ``view``, ``mode``, ``window``,
        ``shape``, ``spacing``); for CT with ``window=None`` a list of three
        such dicts (brain, blood, bone). ``None`` when the image is not cached,
        stale, or its files fail the size, structure and CRC-32 checks made on
        every read (never serves a
        corrupt file; ``build_cache`` rebuilds it). Tensors are torch tensors
        unless ``as_numpy``.
        """
        side = self._read_sidecar(study, image)
        if side is None or side.get("version") != PIPELINE_VERSION:
            return None
        mode = side["mode"]
        if mode == "ct":
            if window is None:
                wins = list(WINDOW_NAMES)
            elif window in WINDOW_NAMES:
                wins = [window]
            else:
                raise ValueError(f"window must be one of {WINDOW_NAMES} or None, got {window!r}")
        else:
            if window is not None:
                raise ValueError(f"{study}/{image} is MRI: window must be None, got {window!r}")
            wins = ["volume"]
        folder = self._dir(study)
        try:
            # The token flags are small: kept with the (cached) sidecar.
            mask = side.get("_mask")
            if mask is None:
                mask = np.array(self._open(folder, side, "mask"))
                mask.flags.writeable = False
                side["_mask"] = mask
            out = []
            for key in wins:
                u8 = self._open(folder, side, key)
                data = _core.dequantize_u8(u8, get_num_threads())
                out.append(
                    {
                        "data": data,
                        "mask": mask,
                        "view": side["view"],
                        "mode": mode,
                        "window": key if mode == "ct" else None,
                        "shape": tuple(side["shape"]),
                        "spacing": tuple(side["spacing"]),
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
        """Zero-copy read-only uint8 view of one cached file (key: window, 'volume' or 'mask'), and the sidecar.

        ``(None, None)`` when the image is not cached; :class:`ptfile.PtFormatError`
        (a ``ValueError``) when the file fails its size or CRC-32 check."""
        side = self._read_sidecar(study, image)
        if side is None or side.get("version") != PIPELINE_VERSION:
            return None, None
        return self._open(self._dir(study), side, key), side

    @staticmethod
    def _open(folder, side, key):
        info = side["files"].get(key)
        if info is None:
            raise ValueError(f"no cached file for {key!r}")
        p = os.path.join(folder, info["name"])
        if "offset" in info:
            arr = ptfile.open_at(p, info["offset"], info["dtype"], info["shape"], info["bytes"], info.get("crc32"))
        else:
            if os.path.getsize(p) != info["bytes"]:
                raise ValueError(f"{p}: size {os.path.getsize(p)} differs from the recorded {info['bytes']}")
            arr = ptfile.open_tensor(p, verify=True)
        expect = tuple(side["shape"]) if key != "mask" else (
            side["shape"][1] // 4, side["shape"][2] // 16, side["shape"][3] // 16)
        if arr.shape != expect:
            raise ValueError(f"{p}: shape {arr.shape}, expected {expect}")
        return arr

    # -- stats / verify ----------------------------------------------------
    def get_cache_stats(self) -> dict:
        """Counts and bytes: studies, images, cached (valid), coverage, failed, stale, bytes on disk."""
        total_images = cached = failed = stale = 0
        for study in self.metadata:
            for rec in study.images:
                total_images += 1
                st = self.entry_status(study.name, rec.name)
                if st == "valid":
                    cached += 1
                elif st in ("stale", "corrupt"):
                    stale += 1
                if st != "valid" and os.path.exists(self._failed_path(study.name, rec.name)):
                    failed += 1
        nbytes = 0
        if os.path.isdir(self.processed_dir):
            for root, _dirs, files in os.walk(self.processed_dir):
                for fn in files:
                    try:
                        nbytes += os.path.getsize(os.path.join(root, fn))
                    except OSError:
                        pass
        return {
            "total_studies": len(self.metadata),
            "total_images": total_images,
            "cached_images": cached,
            "coverage": cached / total_images if total_images else 0.0,
            "failed_images": failed,
            "stale_images": stale,
            "bytes_on_disk": nbytes,
        }

    def verify(self) -> dict:
        """Check every entry, CRC-32 included: {'study/image': status} for those not valid."""
        out = {}
        for study in self.metadata:
            for rec in study.images:
                st = self.entry_status(study.name, rec.name, verify=True)
                if st != "valid":
                    out[f"{study.name}/{rec.name}"] = st
        return out


def _call(fn, arg):
    """Run fn(arg) and turn an unexpected exception into a failure record."""
    try:
        return fn(arg)
    except Exception as err:  # pragma: no cover - defensive
        return "failed", f"{type(err).__name__}: {err}"
