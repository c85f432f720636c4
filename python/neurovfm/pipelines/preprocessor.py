"""``StudyPreprocessor``: load a study (files or a folder) into one packed encoder batch.

A drop-in for the published ``neurovfm.pipelines.StudyPreprocessor``: the same
constructor, the same ``load_study(study_path, modality)`` and ``__call__``, the same
batch keys and dtypes. The numbers come from the library's one recipe, :func:`neurovfm.data.scan.prepare_scan`
(:func:`~neurovfm.data.load_image` + :func:`~neurovfm.data.prepare_for_inference`), and
:func:`neurovfm.data.tokenize`.

Packing rules (one study per batch):

* one series per MRI volume; three per CT volume, the brain, blood and bone windows
  in that order, named ``<stem>_BrainWindow``, ``<stem>_BloodWindow``,
  ``<stem>_BoneWindow`` (``stem`` as ``pathlib.Path.stem``: ``"head.nii.gz"`` gives
  ``"head.nii"``, as the published code names them); an MRI series is named by its path;
* ``img`` float32 ``[N, 1024]`` and ``coords`` int64 ``[N, 3]``: the series' tokens
  concatenated in order; with ``remove_background`` only the tokens whose background
  flag is 0;
* ``series_cu_seqlens`` int32: 0 then the cumulative token counts;
  ``series_max_len``: the largest count (int); ``study_cu_seqlens`` int32
  ``[0, N]``; ``study_max_len``: the number of series (int), as published;
* ``series_masks_indices``: an empty tensor (as published, also when
  ``remove_background=False``); ``mode``, ``path``, ``size`` (``(D, H, W)`` voxels
  after preprocessing): lists, one entry per series.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import numpy.typing as npt

from .._threads import get_num_threads
from ..data.preprocess import CT_WINDOW_NAMES, tokenize
from ..data.scan import prepare_scan
from ..data.series import SeriesRecord, check_derived
from ..errors import DicomSeriesError, ImageReadError, ImageTooSmallError, InvalidArgumentError, InvalidTypeError

__all__ = ["StudyPreprocessor"]

logger = logging.getLogger(__name__)

#: The only patch size and target spacing the pipeline supports (docs/numbers.md):
#: the kernels cut 4x16x16 tokens of a volume resampled to 1x1x4 mm.
SUPPORTED_PATCH_SIZE = (4, 16, 16)
SUPPORTED_TARGET_SPACING = (1.0, 1.0, 4.0)

#: Series names of the CT windows, as published: ``BrainWindow``, ``BloodWindow``, ``BoneWindow``.
_WINDOW_NAMES = tuple(f"{name.capitalize()}Window" for name in CT_WINDOW_NAMES)
_NIFTI_SUFFIXES = (".nii.gz", ".nii")

StudyPath = Union[str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]]]


@dataclass(frozen=True)
class _Source:
    """One volume of the study: a file (or folder) path, or a discovered DICOM series."""

    name: str  # the path the batch names it by
    path: str
    series: SeriesRecord | None = None


@dataclass(frozen=True)
class _Loaded:
    name: str
    arrays: list[npt.NDArray[np.float32]]  # [1, D, H, W] each
    flags: npt.NDArray[np.uint8]


def _check_triple(value: object, supported: tuple[float, ...], what: str) -> tuple[float, ...]:
    msg = f"{what} must be {supported} (the only one this pipeline supports), got {value!r}"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise InvalidArgumentError(msg)
    try:
        ok = all(not isinstance(v, bool) and float(v) == s for v, s in zip(value, supported))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InvalidArgumentError(msg)
    return supported


def _check_modality(modality: object) -> str:
    m = modality.lower() if isinstance(modality, str) else None
    if m not in ("ct", "mri"):
        raise InvalidArgumentError(f"modality must be 'ct' or 'mri' (any case), got {modality!r}")
    return m


def _is_nifti_name(name: str) -> bool:
    return name.lower().endswith(_NIFTI_SUFFIXES)


def _folder_sources(folder: str, derived: str) -> tuple[list[_Source], list[SeriesRecord]]:
    """The usable series :func:`~neurovfm.data.find_series` finds under ``folder`` (NIfTI
    files and DICOM series, sub-folders included) under the ``derived`` policy, sorted
    by name. A DICOM series is named by its folder (by its file when it is one file; by
    ``<folder>/<UID>`` when its folder holds several)."""
    from ..data.series import find_series

    records = find_series(folder, derived=derived)
    for r in records:
        if not r.usable and not r.broken:
            logger.warning("%s: skipped series %s: %s", r.path, r.name, r.reason)
        elif r.reason:
            logger.info("%s: series %s: %s", r.path, r.name, r.reason)
    # a broken series (unreadable, missing or duplicate slices) is an error when it is read
    usable = [r for r in records if r.usable or r.broken]
    per_path: dict[str, int] = {}
    for r in usable:
        per_path[r.path] = per_path.get(r.path, 0) + 1
    found = []
    for r in usable:
        name = r.path if per_path[r.path] == 1 else os.path.join(r.path, r.series_uid or "series")
        found.append(_Source(name, r.path, r))
    found.sort(key=lambda src: src.name)
    return found, [r for r in records if not r.usable]


def _sources(study_path: object, derived: str) -> list[_Source]:
    if isinstance(study_path, (str, os.PathLike)):
        p = Path(study_path)
        if not p.exists():
            from ..data.sources import check_exists

            check_exists(str(p))
        if p.is_dir():
            srcs, unused = _folder_sources(str(p), derived)
            if not srcs:
                hint = "; derived='include' would use its derived series" if any(r.derived for r in unused) else ""
                raise ImageReadError(p, f"no usable NIfTI file or DICOM series in this study folder{hint}")
            return srcs
        return [_Source(str(p), str(p))]
    if isinstance(study_path, (bytes, bytearray)) or not isinstance(study_path, Sequence):
        raise InvalidTypeError(f"study_path must be a path or a list of paths, got {type(study_path).__name__}")
    if len(study_path) == 0:
        raise InvalidArgumentError("study_path is an empty list: no images to load")
    out = []
    for item in study_path:
        if not isinstance(item, (str, os.PathLike)):
            raise InvalidTypeError(f"study_path entries must be paths, got {type(item).__name__}")
        out.append(_Source(str(Path(item)), str(Path(item))))
    return out


def _load_one(src: _Source, mode: str, threads: int) -> _Loaded | None:
    if src.series is not None and src.series.broken:  # an error, never a silently wrong volume
        raise (DicomSeriesError if src.series.kind == "dicom" else ImageReadError)(src.series.path, src.series.reason)
    try:
        r = prepare_scan(
            src.series if src.series is not None else src.path, mode, tokenize=False, check_mode=False, threads=threads
        )
    except ImageTooSmallError as err:  # skipped, as published (its load_image gives None)
        logger.warning("%s, skipped", err)
        return None
    return _Loaded(src.name, r.arrays, r.filtered)


class StudyPreprocessor:
    """Load a study (one or more CT or MR volumes) as one packed batch for the encoder.

    Parameters
    ----------
    patch_size
        Must be ``(4, 16, 16)``, the only token shape the pipeline supports.
    target_spacing
        Must be ``(1, 1, 4)`` mm, the only spacing the pipeline supports.
    remove_background
        Drop the tokens that hold any background voxel (default). When false, every
        token is kept.
    num_workers
        Volumes loaded at once (threads; the kernels release the GIL). ``None``:
        up to the number of volumes, at most :func:`neurovfm.get_num_threads`.
        The kernel threads are shared among them, so the total stays the same.
    derived
        The policy for derived/secondary series of a study folder
        (:func:`neurovfm.data.find_series`): ``'auto'`` (default), ``'include'`` or ``'skip'``.

    Raises
    ------
    ~neurovfm.errors.InvalidArgumentError
        For another patch size or spacing, or a ``num_workers`` below 1.
    """

    def __init__(
        self,
        patch_size: Sequence[int] = SUPPORTED_PATCH_SIZE,
        target_spacing: Sequence[float] = SUPPORTED_TARGET_SPACING,
        remove_background: bool = True,
        num_workers: int | None = None,
        derived: str = "auto",
    ) -> None:
        self.patch_size = tuple(int(v) for v in _check_triple(patch_size, SUPPORTED_PATCH_SIZE, "patch_size"))
        self.target_spacing = _check_triple(target_spacing, SUPPORTED_TARGET_SPACING, "target_spacing")
        if not isinstance(remove_background, (bool, np.bool_)):
            raise InvalidTypeError(f"remove_background must be a bool, got {type(remove_background).__name__}")
        self.remove_background = bool(remove_background)
        if num_workers is not None and (
            isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1
        ):
            raise InvalidArgumentError(f"num_workers must be a positive integer or None, got {num_workers!r}")
        self.num_workers = num_workers
        self.derived = check_derived(derived)

    def load_study(self, study_path: StudyPath, modality: str) -> dict[str, Any]:
        """Load and tokenize every volume of a study; return the packed batch.

        Parameters
        ----------
        study_path
            A file (NIfTI, DICOM, any format :func:`neurovfm.data.load_image` reads),
            a list of them (DICOM folders allowed), or a study folder: every usable
            series :func:`neurovfm.data.find_series` finds under it (NIfTI files and
            DICOM series of any file name, sub-folders included; derived/secondary
            series by the ``derived`` policy), sorted by name.
        modality
            ``'ct'`` or ``'mri'`` (any case).

        Returns
        -------
        dict with ``img``, ``coords``, ``series_masks_indices``, ``series_cu_seqlens``,
        ``series_max_len``, ``study_cu_seqlens``, ``study_max_len``, ``mode``,
        ``path``, ``size`` (see the module documentation). A volume too small for one
        token is skipped with a logged warning, as published.

        Raises
        ------
        ~neurovfm.errors.InvalidArgumentError
            A modality other than 'ct'/'mri', or an empty list.
        ~neurovfm.errors.ImageNotFoundError
            A path that does not exist.
        ~neurovfm.errors.ImageReadError
            A file that cannot be read, a folder with no images, or
            (:class:`~neurovfm.errors.ImageTooSmallError`) no volume large enough.
        """
        import torch

        mode = _check_modality(modality)
        sources = _sources(study_path, self.derived)
        total = get_num_threads()
        workers = min(len(sources), self.num_workers if self.num_workers is not None else total)
        per_worker = max(1, total // workers)
        if workers == 1:
            loaded = [_load_one(s, mode, per_worker) for s in sources]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="neurovfm-study") as pool:
                loaded = list(pool.map(lambda s: _load_one(s, mode, per_worker), sources))

        imgs: list[npt.NDArray[Any]] = []
        coords: list[npt.NDArray[Any]] = []
        lengths: list[int] = []
        paths: list[str] = []
        sizes: list[tuple[int, ...]] = []
        for vol in loaded:
            if vol is None:
                continue
            keep = vol.flags == 0 if self.remove_background else None
            for i, arr in enumerate(vol.arrays):
                tok = tokenize(arr)
                img, crd = (tok.img[keep], tok.coords[keep]) if keep is not None else (tok.img, tok.coords)
                imgs.append(img)
                coords.append(crd)
                lengths.append(int(img.shape[0]))
                paths.append(f"{Path(vol.name).stem}_{_WINDOW_NAMES[i]}" if mode == "ct" else vol.name)
                sizes.append(tuple(int(d) for d in arr.shape[-3:]))
        if not lengths:
            where = os.fspath(study_path) if isinstance(study_path, (str, os.PathLike)) else sources[0].name
            raise ImageTooSmallError(where, "no volume of the study holds one 4x16x16 token after preprocessing")

        cu = np.zeros(len(lengths) + 1, np.int32)
        np.cumsum(lengths, out=cu[1:])
        img_t = torch.from_numpy(np.concatenate(imgs).astype(np.float32, copy=False))
        coords_t = torch.from_numpy(np.concatenate(coords).astype(np.int64, copy=False))
        logger.info(
            "loaded study: %d series, %d tokens (background %s)",
            len(lengths),
            int(cu[-1]),
            "removed" if self.remove_background else "kept",
        )
        return {
            "img": img_t,
            "coords": coords_t,
            "series_masks_indices": torch.tensor([]),
            "series_cu_seqlens": torch.from_numpy(cu),
            "series_max_len": max(lengths),
            "study_cu_seqlens": torch.tensor([0, int(cu[-1])], dtype=torch.int32),
            "study_max_len": len(lengths),
            "mode": [mode] * len(lengths),
            "path": paths,
            "size": sizes,
        }

    def __call__(self, study_path: StudyPath, modality: str) -> dict[str, Any]:
        """Same as :meth:`load_study`."""
        return self.load_study(study_path, modality)
