"""ImageDataset: training items of 4x16x16 tokens read from the memory-mapped cache.

An item is built by one fused C++ pass over the cached uint8 volume (crop, H/W
swap, flips, uint8 -> float32 and tokenisation, plus the token flags and
coordinates of the result): no intermediate float volume, no copy of the cache.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import json
import logging
import mmap
import multiprocessing
import os
import random
import struct
from collections.abc import Mapping
from typing import Callable

import numpy as np
import torch

from .. import _core
from .._threads import get_num_threads
from ..data import ptfile
from ..data.cache import PIPELINE_VERSION, WINDOW_NAMES
from ..data.metadata import DatasetMetadata
from ..errors import (
    ImageNotFoundError,
    ImageReadError,
    ImageTooSmallError,
    NeuroVFMError,
)

__all__ = ["PATCH", "ImageDataset", "load_study_labels"]

log = logging.getLogger("neurovfm")

#: Token (patch) size in voxels, (d, h, w).
PATCH = (4, 16, 16)
#: A random crop is kept when more than this fraction of its tokens is foreground.
CROP_MIN_FOREGROUND = 0.1
#: Random crops tried before falling back to the whole volume.
CROP_TRIES = 5

_U64 = (1 << 64) - 1
_DTYPES = {torch.float32: "float32", torch.uint8: "uint8", "float32": "float32", "uint8": "uint8"}


# --- labels ------------------------------------------------------------------------------------


def _scalar(text: str):
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def _is_number(text: str) -> bool:
    return not isinstance(_scalar(text), str)


def load_study_labels(study_labels) -> dict:
    """``{study: label}`` from a dict, a JSON object file or a CSV file.

    CSV: the first column is the study id. With one more column the label is that
    value (an int or float when it parses as one, else the string); with several
    it is a multilabel list of 0/1 ints. A first row whose label cells are not
    all numbers is a header. Blank lines and lines starting with ``#`` are skipped.
    """
    if isinstance(study_labels, Mapping):
        return {str(k): v for k, v in study_labels.items()}
    path = os.fspath(study_labels)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: label file not found")
    if path.lower().endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the JSON labels must be an object {{study: label}}")
        return {str(k): v for k, v in data.items()}
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and r[0].strip() and not r[0].lstrip().startswith("#")]
    if not rows:
        return {}
    if not all(_is_number(c) for c in rows[0][1:]) or len(rows[0]) < 2:
        header, rows = rows[0], rows[1:]
        if len(header) < 2:
            raise ValueError(f"{path}: expected 'study,label' (or 'study,label1,label2,...') columns")
    width = len(rows[0]) if rows else 0
    out = {}
    for row in rows:
        study = row[0].strip()
        if len(row) != width:
            raise ValueError(f"{path}: study {study!r} has {len(row) - 1} label columns, expected {width - 1}")
        if study in out:
            raise ValueError(f"{path}: study {study!r} appears twice")
        cells = row[1:]
        if len(cells) == 1:
            out[study] = _scalar(cells[0])
        else:
            vals = [_scalar(c) for c in cells]
            if any(v not in (0, 1) or isinstance(v, str) for v in vals):
                raise ValueError(f"{path}: multilabel row of study {study!r} must hold 0/1 values, got {cells}")
            out[study] = [int(v) for v in vals]
    return out


# --- the epoch, shared with DataLoader workers -------------------------------------------------


class _SharedEpoch:
    """An integer in shared memory: ``set_epoch`` in the main process reaches
    persistent DataLoader workers (fork, spawn or forkserver)."""

    def __init__(self, value: int = 0):
        self._v = multiprocessing.RawValue("q", int(value))

    @property
    def value(self) -> int:
        return int(self._v.value)

    @value.setter
    def value(self, v: int) -> None:
        self._v.value = int(v)

    def __getstate__(self):
        from multiprocessing import context

        if context.get_spawning_popen() is not None:  # starting a worker: share
            return {"shared": self._v}
        return {"value": self.value}  # any other pickle: a plain copy

    def __setstate__(self, state):
        if "shared" in state:
            self._v = state["shared"]
        else:
            self._v = multiprocessing.RawValue("q", int(state["value"]))


# --- the dataset ---------------------------------------------------------------------------------


class _Entry:
    __slots__ = ("image", "label", "mode", "path", "study")

    def __init__(self, study, image, mode, path, label):
        self.study, self.image, self.mode, self.path, self.label = study, image, mode, path, label


class ImageDataset(torch.utils.data.Dataset):
    """Images of a dataset folder as training items of 4x16x16 tokens.

    Parameters
    ----------
    data_dir
        The dataset folder (``metadata.json``, ``raw/``, ``processed/``).
    use_cache
        Read the cache built by :class:`neurovfm.data.cache.CacheManager`
        (memory-mapped, never copied). ``False``: always process the raw file.
    fallback_to_raw
        On a cache miss (or a corrupt cache entry), process the raw file with the
        core pipeline and quantise it as the cache does (``uint8(v * 255)`` of the float64 value), so
        the item equals the cached one. ``False``: raise
        :class:`~neurovfm.errors.ImageNotFoundError` naming the image.
    mode_filter
        ``'ct'`` or ``'mri'``: only images of studies of that mode.
    transform
        Callable applied to the item dict last; its result is the item.
    ct_window_probs
        Probabilities of the brain, blood and bone windows, drawn per CT item.
    random_crop
        A token-aligned box, each side uniform in ``[1, min(max_crop_size[k],
        side_k)]`` tokens and its position uniform, kept when more than 10% of
        its tokens are foreground; after 5 rejected boxes, the whole volume.
    augment
        With p=0.5 swap the H and W axes, then flip each of the three axes with
        p=0.5 (voxel flips: patches are flipped inside too).
    max_crop_size
        Largest crop, in tokens, per axis (d, h, w) of the cached volume.
    tokenize
        ``True``: ``img`` is ``[N, 1024]`` (each row a patch ``[4, 16, 16]``);
        ``False``: ``[1, D, H, W]``.
    study_labels
        A dict, a JSON object file or a CSV file (see :func:`load_study_labels`).
    img_dtype
        ``torch.float32`` (``uint8 / 255``, default) or ``torch.uint8`` (the cached
        bytes, for dividing on the GPU); the strings ``"float32"``/``"uint8"`` too.
    seed
        Base seed. An item's random draws come from ``(seed, epoch, index)``
        alone: the same whatever worker builds it, different per epoch
        (:meth:`set_epoch`). ``None``: a fresh seed per dataset object.
    missing_label
        A study without a label when labels are given: ``"error"`` (default,
        ``KeyError`` naming the studies), ``"skip"`` (drop its images) or
        ``"none"`` (label ``None``).
    on_error
        A bad or missing image: ``"raise"`` (default: the library error naming
        it) or ``"skip"`` (``__getitem__`` logs a warning and returns ``None``;
        the collate functions drop ``None`` items).
    studies
        Only these studies (an iterable of names).
    threads
        Kernel threads per item (default :func:`neurovfm.get_num_threads`: 1
        inside DataLoader workers).

    Items are dicts: ``img``, ``coords`` int32 ``[N, 3]`` (token index d, h, w in
    the item's grid), ``filtered`` uint8 ``[N]`` (1 = background token), ``size``
    int32 ``[3]`` (the item's token grid), ``path`` (``"study/image"``),
    ``study``, ``image``, ``mode``, ``window`` (CT window name, else ``None``),
    ``label``, ``index``, and what was done: ``crop`` (``((d, h, w) start,
    (d, h, w) size)`` in tokens of the cached grid), ``transpose`` (H and W
    swapped after the crop) and ``flips`` (d, h, w axes of the result flipped
    after the swap).

    Draw order per item, from :meth:`rng` (reproducible): ``random()`` for the
    window (CT only); per crop try ``randint(1, hi_k)`` for the three sizes then
    ``randint(0, side_k - size_k)`` for the three starts; then four ``random() <
    0.5`` (swap, flip d, h, w).
    """

    def __init__(
        self,
        data_dir,
        use_cache: bool = True,
        fallback_to_raw: bool = True,
        mode_filter: str | None = None,
        transform: Callable | None = None,
        ct_window_probs=(0.7, 0.15, 0.15),
        random_crop: bool = False,
        augment: bool = False,
        max_crop_size=(20, 20, 20),
        tokenize: bool = True,
        study_labels=None,
        *,
        img_dtype=torch.float32,
        seed: int | None = None,
        missing_label: str = "error",
        on_error: str = "raise",
        studies=None,
        threads: int | None = None,
    ):
        self.data_dir = os.path.abspath(os.fspath(data_dir))
        meta_path = os.path.join(self.data_dir, "metadata.json")
        if not os.path.exists(meta_path):
            raise FileNotFoundError(
                f"{meta_path}: no metadata.json. Create it with DatasetMetadata.from_directory"
                f"({self.data_dir!r}, mode_mapping).save() or `python -m neurovfm metadata {self.data_dir} "
                "--modes MODES.csv`, then build the cache with CacheManager(data_dir).build_cache()"
            )
        self.metadata = DatasetMetadata.from_file(meta_path)
        self.processed_dir = os.path.join(self.data_dir, "processed")
        self.use_cache = bool(use_cache)
        self.fallback_to_raw = bool(fallback_to_raw)
        if mode_filter is not None:
            mf = str(mode_filter).lower()
            if mf not in ("ct", "mri"):
                raise ValueError(f"mode_filter must be 'ct', 'mri' or None, got {mode_filter!r}")
            mode_filter = mf
        self.mode_filter = mode_filter
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.transform = transform
        self.ct_window_probs = _check_probs(ct_window_probs)
        self._cum = list(np.cumsum(self.ct_window_probs) / sum(self.ct_window_probs))
        self.random_crop = bool(random_crop)
        self.augment = bool(augment)
        mcs = tuple(int(v) for v in max_crop_size)
        if len(mcs) != 3 or min(mcs) < 1:
            raise ValueError(f"max_crop_size must be 3 positive token counts (d, h, w), got {max_crop_size!r}")
        self.max_crop_size = mcs
        self.tokenize = bool(tokenize)
        if img_dtype not in _DTYPES:
            raise ValueError(f"img_dtype must be torch.float32, torch.uint8, 'float32' or 'uint8', got {img_dtype!r}")
        self.img_dtype = _DTYPES[img_dtype]
        if missing_label not in ("error", "skip", "none"):
            raise ValueError(f"missing_label must be 'error', 'skip' or 'none', got {missing_label!r}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.missing_label = missing_label
        self.on_error = on_error
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        self.threads = threads
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (1 << 63))
        self.seed = int(seed)
        self._epoch = _SharedEpoch(0)
        self.labels = None if study_labels is None else load_study_labels(study_labels)

        wanted = None if studies is None else {str(s) for s in studies}
        if wanted is not None:
            unknown = sorted(wanted - {s.name for s in self.metadata})
            if unknown:
                raise KeyError(f"unknown studies (not in {meta_path}): {unknown}")
        entries, unlabelled = [], []
        for st in self.metadata:
            if wanted is not None and st.name not in wanted:
                continue
            if mode_filter is not None and st.mode != mode_filter:
                continue
            label = None
            if self.labels is not None:
                if st.name in self.labels:
                    label = self.labels[st.name]
                elif missing_label == "error":
                    unlabelled.append(st.name)
                    continue
                elif missing_label == "skip":
                    continue
            for rec in st.images:
                entries.append(_Entry(st.name, rec.name, st.mode, rec.path, label))
        if unlabelled:
            raise KeyError(
                f"{len(unlabelled)} studies have no label: {unlabelled[:20]}"
                + (" ..." if len(unlabelled) > 20 else "")
                + " (pass missing_label='skip' or 'none' to allow this)"
            )
        self._entries = entries
        self._sides: dict = {}  # index -> sidecar (per process; re-read when a file fails)
        self._layouts: dict = {}  # path -> ((size, mtime, inode), data offset, dtype, shape)

    # -- sizes and grouping -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def study_of(self, index: int) -> str:
        return self._entries[index].study

    def study_groups(self) -> list:
        """``[(study, [indices])]`` in dataset order (a study's images are consecutive)."""
        groups: dict = {}
        for i, e in enumerate(self._entries):
            groups.setdefault(e.study, []).append(i)
        return list(groups.items())

    @property
    def epoch(self) -> int:
        return self._epoch.value

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds each item's draws (reaches persistent workers too)."""
        self._epoch.value = int(epoch)

    # -- reading ------------------------------------------------------------------------------
    def _sidecar_path(self, i: int) -> str:
        e = self._entries[i]
        return os.path.join(self.processed_dir, e.study, f"{e.image}.json")

    def _sidecar(self, i: int, fresh: bool = False):
        side = None if fresh else self._sides.get(i)
        if side is None:
            try:
                with open(self._sidecar_path(i)) as f:
                    side = json.load(f)
            except (OSError, ValueError):
                return None
            if side.get("version") != PIPELINE_VERSION or not side.get("files"):
                return None
            self._sides[i] = side
        return side

    def _open_cached(self, i: int, key: str):
        """(uint8 [1, D, H, W] view, uint8 flags [d, h, w] view) from the cache; None when the
        image is not cached; a string (the reason) when its entry fails the checks."""
        e = self._entries[i]
        problem = None
        for fresh in (False, True):
            side = self._sidecar(i, fresh)
            if side is None:
                return problem
            folder = os.path.join(self.processed_dir, e.study)
            try:
                shape = tuple(side["shape"])
                grid = (shape[1] // 4, shape[2] // 16, shape[3] // 16)
                vol = self._map(folder, side["files"][key])
                flags = self._map(folder, side["files"]["mask"])
                if vol.shape != shape or flags.shape != grid:
                    raise ValueError(f"cached shapes {vol.shape} / {flags.shape}, sidecar says {shape} / {grid}")
                return vol, flags
            except (OSError, ValueError, KeyError) as err:
                self._sides.pop(i, None)
                problem = f"{type(err).__name__}: {err}"
                if fresh:
                    log.warning("cache entry %s/%s is unusable: %s", e.study, e.image, err)
        return problem

    def _map(self, folder: str, info: dict) -> np.ndarray:
        """Zero-copy read-only view of a cached ``.pt`` file (``info``: its sidecar record).
        The first time a file is seen (per process, per size, mtime and inode) its whole
        structure is checked, and the CRC-32 of its data against the sidecar's; later
        calls only map it at the data offset found then."""
        path, nbytes = os.path.join(folder, info["name"]), info["bytes"]
        fd = os.open(path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            if st.st_size != nbytes:
                raise ValueError(f"{path}: size {st.st_size} differs from the recorded {nbytes}")
            stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
            layout = self._layouts.get(path)
            if layout is not None and layout[0] == stamp:
                _, offset, dtype, shape, count = layout
                mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
                return np.frombuffer(mm, dtype=dtype, count=count, offset=offset).reshape(shape)
        finally:
            os.close(fd)  # the mmap holds its own descriptor
        arr = ptfile.open_tensor(path, verify="crc32" not in info)
        if "crc32" in info and ptfile.crc32(arr.reshape(-1).view(np.uint8)) != info["crc32"]:
            raise ptfile.PtFormatError(f"{path}: checksum differs from the sidecar's: the data is corrupt or replaced")
        base = np.frombuffer(_mmap_of(arr), dtype=np.uint8)
        offset = arr.__array_interface__["data"][0] - base.__array_interface__["data"][0]
        self._layouts[path] = (stamp, offset, arr.dtype, arr.shape, arr.size)
        return arr

    def _from_raw(self, i: int, key: str):
        """Process the raw file as the cache build does: (uint8 volume, uint8 flags grid)."""
        from ..data.io import load_image
        from ..data.preprocess import prepare_for_inference

        e = self._entries[i]
        source = os.path.join(self.data_dir, e.path)
        # The cache's bytes, quantised from the float64 values in the kernels' pass.
        prep = prepare_for_inference(load_image(source), e.mode, quantize=True)
        if prep is None:
            raise ImageTooSmallError(source, "smaller than one 4x16x16 token after preprocessing")
        arrs, mask, _view = prep
        vol = arrs[WINDOW_NAMES.index(key) if e.mode == "ct" else 0]
        d, h, w = vol.shape[1:]
        return vol, mask.reshape(d // 4, h // 16, w // 16)

    def _threads(self) -> int:
        return self.threads if self.threads is not None else get_num_threads()

    def _volume(self, i: int, key: str):
        e = self._entries[i]
        if self.use_cache:
            got = self._open_cached(i, key)
            if isinstance(got, tuple):
                return got
            if isinstance(got, str) and not self.fallback_to_raw:
                raise ImageReadError(
                    self._sidecar_path(i),
                    f"the cache entry of {e.study}/{e.image} is corrupt and is not served ({got}); "
                    "rebuild it with CacheManager(data_dir).build_cache()",
                )
            if not self.fallback_to_raw:
                raise ImageNotFoundError(
                    f"{e.study}/{e.image}: not in the cache {os.path.join(self.processed_dir, e.study)} "
                    "(build it with CacheManager(data_dir).build_cache(), or pass fallback_to_raw=True)"
                )
        return self._from_raw(i, key)

    # -- randomness -----------------------------------------------------------------------------
    def rng(self, index: int, epoch: int | None = None) -> random.Random:
        """The generator of item ``index`` at ``epoch`` (default: the current one).

        A Mersenne Twister (:class:`random.Random`) seeded with a BLAKE2b digest of
        ``(seed, epoch, index)`` (64 bits each): cheap to create per item, the same
        in every process, independent of which worker builds the item.
        """
        ep = self.epoch if epoch is None else int(epoch)
        key = struct.pack("<QQQ", self.seed & _U64, ep & _U64, int(index) & _U64)
        return random.Random(int.from_bytes(hashlib.blake2b(key, digest_size=32).digest(), "little"))

    def _window(self, rng) -> int:
        u = rng.random()
        k = bisect.bisect_right(self._cum, u)
        if k >= 3:  # rounding: the last window with a non-zero probability
            k = max(j for j in range(3) if self.ct_window_probs[j] > 0)
        return k

    def _crop(self, rng, flags):
        side = flags.shape
        hi = [min(m, s) for m, s in zip(self.max_crop_size, side)]
        for _ in range(CROP_TRIES):
            size = [rng.randint(1, h) for h in hi]
            start = [rng.randint(0, s - z) for s, z in zip(side, size)]
            box = flags[start[0]:start[0] + size[0], start[1]:start[1] + size[1], start[2]:start[2] + size[2]]
            if np.count_nonzero(box == 0) > CROP_MIN_FOREGROUND * box.size:
                return tuple(start), tuple(size)
        return (0, 0, 0), tuple(int(v) for v in side)

    # -- items ----------------------------------------------------------------------------------
    def __getitem__(self, index):
        return self.get_item(index)

    def get_item(self, index: int, epoch: int | None = None):
        """Item ``index`` as drawn at ``epoch`` (default: the current epoch)."""
        ep = self.epoch if epoch is None else int(epoch)
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        try:
            item = self._item(index, ep)
        except Exception as err:
            e = self._entries[index]
            lib = err
            if not isinstance(err, NeuroVFMError):
                lib = ImageReadError(f"{e.study}/{e.image} ({os.path.join(self.data_dir, e.path)})",
                                     f"{type(err).__name__}: {err}")
            elif hasattr(err, "add_note"):
                err.add_note(f"while reading item {index}: {e.study}/{e.image}")
            if self.on_error == "skip":
                log.warning("skipping %s/%s: %s", e.study, e.image, lib)
                return None
            if lib is err:
                raise
            raise lib from err
        if self.transform is not None:
            item = self.transform(item)
        return item

    def _item(self, index: int, epoch: int) -> dict:
        e = self._entries[index]
        rng = self.rng(index, epoch)
        window = WINDOW_NAMES[self._window(rng)] if e.mode == "ct" else None
        vol, flags = self._volume(index, window or "volume")
        if self.random_crop:
            start, size = self._crop(rng, flags)
        else:
            start, size = (0, 0, 0), tuple(int(v) for v in flags.shape)
        transpose, flips = False, (False, False, False)
        if self.augment:
            transpose = rng.random() < 0.5
            flips = (rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.5)
        img, coords, filtered, grid = _core.make_item(
            vol, flags, start, size, transpose, flips, self.img_dtype, self.tokenize, self._threads()
        )
        return {
            "img": torch.from_numpy(img),
            "coords": torch.from_numpy(coords),
            "filtered": torch.from_numpy(filtered),
            "size": torch.from_numpy(grid),
            "path": f"{e.study}/{e.image}",
            "study": e.study,
            "image": e.image,
            "mode": e.mode,
            "window": window,
            "label": e.label,
            "index": index,
            "crop": (start, size),
            "transpose": transpose,
            "flips": flips,
        }

    def __repr__(self) -> str:
        return (f"ImageDataset({self.data_dir!r}, {len(self)} images, {len(self.study_groups())} studies, "
                f"random_crop={self.random_crop}, augment={self.augment}, tokenize={self.tokenize}, "
                f"img_dtype={self.img_dtype})")


def _mmap_of(arr: np.ndarray):
    """The mmap object under a view returned by ptfile.open_tensor."""
    b = arr
    while isinstance(b, (np.ndarray, memoryview)):
        b = b.base if isinstance(b, np.ndarray) else b.obj
    if not isinstance(b, mmap.mmap):
        raise ValueError("not a memory-mapped array")
    return b


def _check_probs(probs) -> tuple:
    try:
        p = tuple(float(v) for v in probs)
    except (TypeError, ValueError):
        raise ValueError(f"ct_window_probs must be 3 probabilities, got {probs!r}") from None
    if len(p) != 3:
        raise ValueError(f"ct_window_probs must be 3 probabilities (brain, blood, bone), got {len(p)}")
    if any(not np.isfinite(v) or v < 0 for v in p):
        raise ValueError(f"ct_window_probs must be non-negative, got {p}")
    if abs(sum(p) - 1.0) > 1e-6:
        raise ValueError(f"ct_window_probs must sum to 1, got {p} (sum {sum(p)!r})")
    return p
