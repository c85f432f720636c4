"""ImageDataset: training items of 4x16x16 tokens read from the memory-mapped cache.

An item is built by one fused C++ pass over the cached uint8 volume (crop, H/W
swap, flips, uint8 -> float32 and tokenisation, plus the token background flags and
coordinates of the result): no intermediate float volume, no copy of the cache.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import random
import struct
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch

from .. import _core
from .._threads import get_num_threads
from ..data.cache import entry
from ..data.cache import check_study_names
from ..data.preprocess import CT_WINDOW_NAMES
from ..data.geometry import OutputGeometry, grid_geometry
from ..data.metadata import DatasetMetadata, EmptyDatasetError, MetadataNotFoundError
from ..errors import ImageNotFoundError, ImageReadError, NeuroVFMError
from .collate import check_default_collatable, collate_packed, collate_padded
from .epoch import SharedEpoch
from ..errors import DatasetError, DatasetIndexError, InvalidTypeError, MissingLabelError
from .labels import load_study_labels, read_study_labels
from .options import check_class_to_idx, check_probs, load_study_conversations, map_labels

__all__ = ["PATCH", "ImageDataset", "load_study_labels"]

log = logging.getLogger("neurovfm")

#: Token (patch) size in voxels, (d, h, w).
PATCH = (4, 16, 16)
#: A random crop is kept when more than this fraction of its tokens is foreground.
CROP_MIN_FOREGROUND = 0.1
#: Random crops tried before falling back to the whole volume.
CROP_TRIES = 5

_U64 = (1 << 64) - 1
#: A cached volume, its token background flags and its geometry (None when not recorded).
_Volume = tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], OutputGeometry | None]
_DTYPES = {torch.float32: "float32", torch.uint8: "uint8", "float32": "float32", "uint8": "uint8"}


def _foreground_table(token_background: npt.NDArray[np.uint8]) -> list[Any]:
    """Summed-area table of the foreground tokens (flag 0) as nested lists, one larger
    per axis: the foreground count of any box is 8 look-ups (what a crop try checks)."""
    fg = np.asarray(token_background) == 0
    table = np.zeros(tuple(n + 1 for n in fg.shape), np.int64)
    table[1:, 1:, 1:] = fg.cumsum(0).cumsum(1).cumsum(2)
    out: list[Any] = table.tolist()
    return out


# --- the dataset ---------------------------------------------------------------------------------


#: Cache files a dataset keeps mapped per process (entry.MapCache): an item of an image read
#: recently (a small dataset, several crops per epoch) skips the mmap and its page faults.
#: ``NEUROVFM_MAP_CACHE=0`` maps every file anew.
_MAP_CACHE_FILES = int(os.environ.get("NEUROVFM_MAP_CACHE", "32"))


class _Entry:
    __slots__ = ("folder", "image", "label", "mode", "path", "series_uid", "sidecar", "source", "study")

    def __init__(self, study: str, image: str, mode: str, path: str, label: Any, series_uid: str | None = None) -> None:
        self.study, self.image, self.mode, self.path, self.label = study, image, mode, path, label
        self.series_uid = series_uid
        self.folder = self.source = self.sidecar = ""  # set by the dataset (absolute paths, once)


class ImageDataset(torch.utils.data.Dataset[Any]):
    """Images of a dataset folder as training items of 4x16x16 tokens.

    **Batching needs a collate function.** Items hold different token counts and
    ``None`` fields, so ``DataLoader(dataset, batch_size=4)`` with PyTorch's default
    collate cannot work (the dataset then raises :class:`DatasetError` with this hint).
    Pass ``collate_fn=dataset.collate_fn`` (:func:`~neurovfm.datasets.collate_packed`,
    or :func:`~neurovfm.datasets.collate_padded` with ``tokenize=False``; set the
    attribute to choose another), or ``batch_size=None`` for single items.

    Parameters
    ----------
    data_dir
        The dataset folder (``metadata.json``, ``raw/``, ``processed/``).
    use_cache
        Read the cache built by :class:`neurovfm.data.cache.CacheManager`
        (memory-mapped, never copied). ``False``: always process the raw file.
    fallback_to_raw
        On a cache miss (no entry, or a stale one: its scan changed or an older
        pipeline built it) or a corrupt cache entry, encode the raw file as the cache
        build does (:func:`neurovfm.data.cache.entry.encode_scan`), so the item equals the
        cached one. ``False``: raise :class:`~neurovfm.errors.ImageNotFoundError`
        (a miss) or :class:`~neurovfm.errors.ImageReadError` (corrupt) naming the image.
    mode_filter
        ``'ct'`` or ``'mri'``: only images of studies of that mode.
    transform
        Callable applied to the item dict last; its result is the item.
    ct_window_probs
        Probabilities of the brain, blood and bone windows, drawn per CT item;
        ``None`` (the default, as in the published code): ``(0.7, 0.15, 0.15)``.
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
        A dict, a JSON object file, a CSV file or a pandas DataFrame (see
        :func:`load_study_labels`; ``label_columns`` then names the label columns).
    use_original_labels, class_to_idx
        With ``use_original_labels=False`` and a ``class_to_idx`` dict, string labels
        become ``class_to_idx[label]`` (the published behaviour); a string label it
        lacks raises :class:`DatasetError`. Default: labels as given.
    study_conversations
        ``{study: [turns]}`` (a dict or a JSON object file): each item carries its
        study's list as ``conversation`` (``[]`` for a study without one).
    img_dtype
        ``torch.float32`` (``uint8 / 255``, default) or ``torch.uint8`` (the cached
        bytes, for dividing on the GPU); the strings ``"float32"``/``"uint8"`` too.
    seed
        Base seed. An item's random draws come from ``(seed, epoch, index)``
        alone: the same whatever worker builds it, different per epoch
        (:meth:`set_epoch`). ``None``: a fresh seed per dataset object.
    missing_label
        A study without a label when labels are given: ``"error"`` (default,
        :class:`MissingLabelError`, a ``KeyError``, naming the studies), ``"skip"`` (drop its images) or
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
    the item's grid), ``filtered`` uint8 ``[N]``: the token background flags (1 = the
    token holds background; the key keeps the published name), ``size``
    int32 ``[3]`` (the item's token grid), ``path`` (``"study/image"``),
    ``study``, ``image``, ``mode``, ``window`` (CT window name, else ``None``),
    ``label``, ``conversation``, ``index``, and what was done: ``crop`` (``((d, h, w) start,
    (d, h, w) size)`` in tokens of the cached grid), ``transpose`` (H and W
    swapped after the crop) and ``flips`` (d, h, w axes of the result flipped
    after the swap); ``geometry``: the :class:`~neurovfm.data.OutputGeometry` of the
    item's own ``[D, H, W]`` grid, crop, swap and flips included (token ``(d, h, w)`` to
    patient coordinates: :func:`~neurovfm.data.token_to_patient`), or ``None`` for an
    entry whose sidecar records no origin and direction (imported from a published
    cache, which has none).

    Draw order per item, from :meth:`rng` (reproducible): ``random()`` for the
    window (CT only); per crop try ``randint(1, hi_k)`` for the three sizes then
    ``randint(0, side_k - size_k)`` for the three starts; then four ``random() <
    0.5`` (swap, flip d, h, w).

    Errors: bad arguments raise :class:`DatasetError` (a ``ValueError``) or
    :class:`~neurovfm.errors.InvalidTypeError` (a ``TypeError``); a dataset left with no image after
    filtering raises :class:`~neurovfm.data.metadata.EmptyDatasetError` (a ``ValueError``).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        use_cache: bool = True,
        fallback_to_raw: bool = True,
        mode_filter: str | None = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        ct_window_probs: Iterable[float] | None = None,
        random_crop: bool = False,
        augment: bool = False,
        max_crop_size: Iterable[int] = (20, 20, 20),
        tokenize: bool = True,
        study_labels: Mapping[Any, Any] | str | os.PathLike[str] | Any | None = None,
        *,
        use_original_labels: bool = True,
        class_to_idx: Mapping[Any, Any] | None = None,
        study_conversations: Mapping[Any, Any] | str | os.PathLike[str] | None = None,
        img_dtype: torch.dtype | str = torch.float32,
        seed: int | None = None,
        missing_label: str = "error",
        on_error: str = "raise",
        studies: Iterable[str] | None = None,
        threads: int | None = None,
    ) -> None:
        self.data_dir = os.path.abspath(os.fspath(data_dir))
        meta_path = os.path.join(self.data_dir, "metadata.json")
        if not os.path.exists(meta_path):
            raise MetadataNotFoundError(
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
                raise DatasetError(f"mode_filter must be 'ct', 'mri' or None, got {mode_filter!r}")
            mode_filter = mf
        self.mode_filter = mode_filter
        if transform is not None and not callable(transform):
            raise InvalidTypeError(f"transform must be callable, got {type(transform).__name__}")
        self.transform = transform
        self.ct_window_probs = check_probs(ct_window_probs)
        self._cum = list(np.cumsum(self.ct_window_probs) / sum(self.ct_window_probs))
        self.random_crop = bool(random_crop)
        self.augment = bool(augment)
        try:
            mcs = tuple(int(v) for v in max_crop_size)
        except (TypeError, ValueError):
            mcs = ()
        if len(mcs) != 3 or min(mcs) < 1:
            raise DatasetError(f"max_crop_size must be 3 positive token counts (d, h, w), got {max_crop_size!r}")
        self.max_crop_size = mcs
        self.tokenize = bool(tokenize)
        if img_dtype not in _DTYPES:
            raise DatasetError(f"img_dtype must be torch.float32, torch.uint8, 'float32' or 'uint8', got {img_dtype!r}")
        self.img_dtype = _DTYPES[img_dtype]
        if missing_label not in ("error", "skip", "none"):
            raise DatasetError(f"missing_label must be 'error', 'skip' or 'none', got {missing_label!r}")
        if on_error not in ("raise", "skip"):
            raise DatasetError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.missing_label = missing_label
        self.on_error = on_error
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise DatasetError(f"threads must be a positive integer or None, got {threads!r}")
        self.threads = threads
        if seed is None:
            seed = int(cast(int, np.random.SeedSequence().entropy) % (1 << 63))
        self.seed = int(seed)
        self._epoch = SharedEpoch(0)
        self.use_original_labels = bool(use_original_labels)
        self.class_to_idx = check_class_to_idx(class_to_idx)
        self.labels: dict[str, Any] | None = None
        self.label_columns: list[str] | None = None
        if study_labels is not None:
            self.labels, self.label_columns = read_study_labels(study_labels)
        #: {study: conversation turns}; an item's ``conversation`` ([] for a study without one).
        self.study_conversations = {} if study_conversations is None else load_study_conversations(study_conversations)
        #: The collate function for a DataLoader over this dataset (variable token counts).
        self.collate_fn: Callable[..., dict[str, Any] | None] = collate_packed if self.tokenize else collate_padded

        wanted = check_study_names(self.metadata, studies, meta_path)
        item_labels = map_labels(self.labels or {}, self.class_to_idx, self.use_original_labels)
        entries: list[_Entry] = []
        unlabelled: list[str] = []
        for st in self.metadata:
            if wanted is not None and st.name not in wanted:
                continue
            if mode_filter is not None and st.mode != mode_filter:
                continue
            label: Any = None
            if self.labels is not None:
                if st.name in item_labels:
                    label = item_labels[st.name]
                elif missing_label == "error":
                    unlabelled.append(st.name)
                    continue
                elif missing_label == "skip":
                    continue
            for rec in st.images:
                entries.append(_Entry(st.name, rec.name, st.mode, rec.path, label, rec.series_uid))
        if unlabelled:
            raise MissingLabelError(
                f"{len(unlabelled)} studies have no label: {unlabelled[:20]}"
                + (" ..." if len(unlabelled) > 20 else "")
                + " (pass missing_label='skip' or 'none' to allow this)"
            )
        if not entries:
            raise EmptyDatasetError(
                f"{meta_path}: no image left ({len(self.metadata)} studies; mode_filter={mode_filter!r}, "
                f"studies={None if wanted is None else sorted(wanted)!r}, "
                f"labels for {'all' if self.labels is None else len(self.labels)} studies, "
                f"missing_label={missing_label!r}): an empty dataset cannot be trained on"
            )
        for e in entries:
            e.folder = os.path.join(self.processed_dir, e.study)
            e.source = os.path.join(self.data_dir, e.path)
            e.sidecar = entry.sidecar_path(e.folder, e.image)
        self._entries = entries
        # Per process: parsed sidecars by index (re-read when a file fails), file stamps whose
        # CRC-32 was checked, fingerprints of DICOM folders (see neurovfm.data.cache.entry).
        self._sides: dict[int, dict[str, Any]] = {}
        self._checked: dict[str, Any] = {}
        self._folders: dict[str, Any] = {}
        self._maps = entry.MapCache(_MAP_CACHE_FILES)

    # -- sizes and grouping -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    @property
    def image_index(self) -> list[tuple[str, str, str]]:
        """``[(study, image, mode)]`` per index (the published attribute)."""
        return [(e.study, e.image, e.mode) for e in self._entries]

    def study_of(self, index: int) -> str:
        return self._entries[index].study

    def study_groups(self) -> list[tuple[str, list[int]]]:
        """``[(study, [indices])]`` in dataset order (a study's images are consecutive)."""
        groups: dict[str, list[int]] = {}
        for i, e in enumerate(self._entries):
            groups.setdefault(e.study, []).append(i)
        return list(groups.items())

    @property
    def epoch(self) -> int:
        return self._epoch.value

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds each item's draws (reaches persistent workers too)."""
        self._epoch.value = int(epoch)

    # -- reading (the format is neurovfm.data.cache.entry's) ----------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_sides"], state["_checked"], state["_folders"] = {}, {}, {}  # per process
        state["_maps"] = entry.MapCache(_MAP_CACHE_FILES)
        return state

    def _open_cached(self, i: int, key: str) -> _Volume | str | None:
        """(uint8 [1, D, H, W] view, uint8 token background [d, h, w] view, geometry) from
        the cache; ``None``: no valid entry by the sidecar (missing or stale); a string (the
        reason): its files fail the checks."""
        e = self._entries[i]
        problem: str | None = None
        for fresh in (False, True):
            side = None if fresh else self._sides.get(i)
            if side is None:
                side = entry.read_sidecar(e.sidecar)
            if entry.sidecar_status(side, e.source, self._folders) != "valid":
                self._sides.pop(i, None)
                if fresh:  # a rebuild after the file failure, or stale / missing
                    return problem
                continue
            side = cast("dict[str, Any]", side)  # 'valid': a sidecar was read
            self._sides[i] = side
            try:
                vol = entry.open_file(e.folder, side, key, self._checked, self._maps)
                flags = entry.token_background(e.folder, side, self._checked)
                return vol, flags, entry.sidecar_geometry(side)
            except (OSError, ValueError) as err:
                self._sides.pop(i, None)
                problem = f"{type(err).__name__}: {err}"
                if fresh:
                    log.warning("cache entry %s/%s is unusable: %s", e.study, e.image, err)
        return problem

    def _threads(self) -> int:
        return self.threads if self.threads is not None else get_num_threads()

    def _volume(self, i: int, key: str) -> _Volume:
        """(uint8 volume [1, D, H, W], uint8 token background [d, h, w], its geometry or
        ``None``) of image ``i``: from the cache, else (``fallback_to_raw``) encoded from the
        raw scan."""
        e = self._entries[i]
        if self.use_cache:
            got = self._open_cached(i, key)
            if isinstance(got, tuple):
                return got
            if isinstance(got, str) and not self.fallback_to_raw:
                raise ImageReadError(
                    e.sidecar,
                    f"the cache entry of {e.study}/{e.image} is corrupt and is not served ({got}); "
                    "rebuild it with CacheManager(data_dir).build_cache()",
                )
            if not self.fallback_to_raw:
                raise ImageNotFoundError(
                    f"{e.study}/{e.image}: not in the cache {os.path.join(self.processed_dir, e.study)}, "
                    "or stale (its scan changed, or an older pipeline built it): build it with "
                    "CacheManager(data_dir).build_cache(), or pass fallback_to_raw=True"
                )
        enc = entry.encode_scan(e.source, e.mode, self._threads(), e.series_uid)
        geom = None
        if enc.origin is not None and enc.direction is not None:
            shape = enc.volumes[key].shape[-3:]
            geom = grid_geometry(enc.spacing, enc.origin, enc.direction, enc.view, shape)
        return enc.volumes[key], enc.token_background, geom

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

    def _window(self, rng: random.Random) -> int:
        u = rng.random()
        k = bisect.bisect_right(self._cum, u)
        if k >= 3:  # rounding: the last window with a non-zero probability
            k = max(j for j in range(3) if self.ct_window_probs[j] > 0)
        return k

    def _crop(
        self, rng: random.Random, token_background: npt.NDArray[np.uint8], table: list[Any]
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """A crop box by the documented draws; ``table``: :func:`_foreground_table` of the flags."""
        side = token_background.shape
        hi = [min(m, s) for m, s in zip(self.max_crop_size, side)]
        randint = rng.randint
        for _ in range(CROP_TRIES):
            z0, z1, z2 = randint(1, hi[0]), randint(1, hi[1]), randint(1, hi[2])
            a0, a1, a2 = randint(0, side[0] - z0), randint(0, side[1] - z1), randint(0, side[2] - z2)
            b0, b1, b2 = a0 + z0, a1 + z1, a2 + z2
            # foreground tokens in the box, from the summed-area table (8 corners)
            fg = (
                table[b0][b1][b2] - table[a0][b1][b2] - table[b0][a1][b2] - table[b0][b1][a2]
                + table[a0][a1][b2] + table[a0][b1][a2] + table[b0][a1][a2] - table[a0][a1][a2]
            )  # fmt: skip
            if fg > CROP_MIN_FOREGROUND * (z0 * z1 * z2):
                return (a0, a1, a2), (z0, z1, z2)
        return (0, 0, 0), (int(side[0]), int(side[1]), int(side[2]))

    # -- items ----------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> Any:
        return self.get_item(index)

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """Items ``indices`` (what a DataLoader with a batch size asks for). When the loader
        would stack them with PyTorch's default collate, which cannot batch items of
        different token counts or with ``None`` fields, raises :class:`DatasetError`
        saying to pass ``collate_fn=dataset.collate_fn`` (instead of an error deep inside
        PyTorch)."""
        items = [self[i] for i in indices]
        try:
            fetcher = sys._getframe(1).f_locals.get("self")
        except (AttributeError, ValueError):  # pragma: no cover - not CPython
            fetcher = None
        if getattr(fetcher, "collate_fn", None) is torch.utils.data.default_collate:
            check_default_collatable(items)
        return items

    def get_item(self, index: int, epoch: int | None = None) -> Any:
        """Item ``index`` as drawn at ``epoch`` (default: the current epoch)."""
        ep = self.epoch if epoch is None else int(epoch)
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise DatasetIndexError(f"index {index} out of range for {len(self)} images")
        try:
            item = self._item(index, ep)
        except Exception as err:
            e = self._entries[index]
            lib = err
            if not isinstance(err, NeuroVFMError):
                lib = ImageReadError(
                    f"{e.study}/{e.image} ({os.path.join(self.data_dir, e.path)})", f"{type(err).__name__}: {err}"
                )
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

    def _item(self, index: int, epoch: int) -> dict[str, Any]:
        e = self._entries[index]
        ct = e.mode == "ct"
        rng = self.rng(index, epoch) if ct or self.random_crop or self.augment else None  # else no draw
        window = CT_WINDOW_NAMES[self._window(rng)] if rng is not None and ct else None
        vol, token_background, geom = self._volume(index, window or "volume")
        if rng is not None and self.random_crop:
            # kept with the cached sidecar, as its flags (no sidecar: read from the raw scan)
            side = self._sides.get(index)
            table = side.get("_foreground_table") if side is not None else None
            if table is None:
                table = _foreground_table(token_background)
                if side is not None:
                    side["_foreground_table"] = table
            start, size = self._crop(rng, token_background, table)
        else:
            start, size = (0, 0, 0), tuple(int(v) for v in token_background.shape)
        transpose, flips = False, (False, False, False)
        if rng is not None and self.augment:
            transpose = rng.random() < 0.5
            flips = (rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.5)
        if geom is not None and (self.random_crop or self.augment):
            geom = geom.item(start, size, transpose, flips)
        img, coords, item_background, grid = _core.make_item(
            vol, token_background, start, size, transpose, flips, self.img_dtype, self.tokenize, self._threads()
        )
        return {
            "img": torch.from_numpy(img),
            "coords": torch.from_numpy(coords),
            "filtered": torch.from_numpy(item_background),  # the token background flags
            "size": torch.from_numpy(grid),
            "path": f"{e.study}/{e.image}",
            "study": e.study,
            "image": e.image,
            "mode": e.mode,
            "window": window,
            "label": e.label,
            "conversation": self.study_conversations.get(e.study, []),
            "index": index,
            "crop": (start, size),
            "transpose": transpose,
            "flips": flips,
            "geometry": geom,
        }

    def __repr__(self) -> str:
        return (
            f"ImageDataset({self.data_dir!r}, {len(self)} images, {len(self.study_groups())} studies, "
            f"random_crop={self.random_crop}, augment={self.augment}, tokenize={self.tokenize}, "
            f"img_dtype={self.img_dtype})"
        )
