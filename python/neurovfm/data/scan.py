"""The recipe, written once: a source becomes prepared tokens (:func:`prepare_scan`).

read (a path, or a series :func:`~neurovfm.data.find_series` found) -> the mode guard
(header and values) -> reorient, resample, crop (:mod:`neurovfm.data.io`) ->
:func:`~neurovfm.data.prepare_for_inference` -> the too-small refusal -> tokens.

Every caller of the library goes through here: ``prepare`` and :func:`prepare_many`,
``ScanDataset``, the cache entry (``quantize=True``: the cache's uint8 values),
``StudyPreprocessor.load_study`` and the QA montage. It is the one caller of
:func:`~neurovfm.data.prepare_for_inference` inside the library.

:func:`mode_value_conflict` is the value check of the mode guard: a scan whose values
contradict its mode (air in HU given as ``'mri'``, no negative value given as ``'ct'``)
gets a :class:`~neurovfm.errors.ModeMismatchWarning` from the caller, as does one whose
DICOM Modality contradicts it (:func:`~neurovfm.data.series.header_mode_conflict`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .._threads import thread_limit
from ..errors import ImageTooSmallError
from .geometry import OutputGeometry, output_geometry
from .preprocess import CT_WINDOW_NAMES

if TYPE_CHECKING:
    from .series import SeriesRecord

__all__ = ["PreparedScan", "mode_conflicts", "mode_value_conflict", "prepare_scan"]

#: Value check: share of voxels at or below -900 (air in HU) above which an 'mri' scan looks like a CT.
AIR_HU = -900.0
AIR_SHARE = 0.20


# --- the mode guard -----------------------------------------------------------------------------


def mode_value_conflict(array: npt.ArrayLike, mode: str) -> str:
    """Why the raw voxel values (as read, before resampling) contradict ``mode``, or ''.

    ``'mri'``: more than 20% of the voxels at or below -900 (air in Hounsfield units).
    ``'ct'``: no negative value at all in a non-constant volume (CT has air at -1000).
    One pass over the voxels (a min, a max and a count)."""
    a = np.asarray(array)
    if a.size == 0:
        return ""
    if mode == "mri":
        if a.dtype.kind == "u":
            return ""
        share = float(np.count_nonzero(a <= AIR_HU)) / a.size
        if share > AIR_SHARE:
            return (
                f"{100 * share:.0f}% of the voxels are <= {AIR_HU:g} (air in CT Hounsfield units) "
                "but the mode is 'mri' (pass --mode ct for a CT)"
            )
        return ""
    if mode == "ct":
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi > lo:
            return (
                f"no negative value (range {lo:g}..{hi:g}): a CT in Hounsfield units has air at -1000, "
                "but the mode is 'ct' (pass --mode mri for an MRI)"
            )
    return ""


def mode_conflicts(modality: str, array: npt.ArrayLike, mode: str) -> list[str]:
    """The header and value reasons why a scan contradicts ``mode`` (empty when none)."""
    from .series import header_mode_conflict

    out = [header_mode_conflict(modality, mode), mode_value_conflict(array, mode)]
    return [m for m in out if m]


# --- one scan -----------------------------------------------------------------------------------


@dataclass
class PreparedScan:
    """What :func:`prepare_scan` made of one scan."""

    #: C arrays ``[1, D, H, W]`` (3 CT windows: brain, blood, bone; or 1 MRI volume):
    #: float32 in [0, 1], or uint8 ``uint8(v * 255)`` with ``quantize``.
    arrays: list[npt.NDArray[Any]]
    #: The token background flags, uint8 ``[N]`` (1 = the token holds background).
    filtered: npt.NDArray[np.uint8]
    #: The token grid ``[D/4, H/16, W/16]``, int32.
    size: npt.NDArray[np.int32]
    channels: list[str]
    view: int
    spacing: list[float]
    foreground: float  # share of tokens without background
    foreground_voxels: float  # share of voxels in the foreground mask (NaN when not computed)
    #: ``[C, N, 1024]`` and ``[N, 3]`` int32 (None when ``tokenize=False``).
    tokens: npt.NDArray[Any] | None = None
    coords: npt.NDArray[np.int32] | None = None
    mode_warnings: list[str] = field(default_factory=list)
    input_shape: tuple[int, ...] = ()  # as read, (z, y, x); () when not read whole
    input_spacing: tuple[float, ...] = ()
    input_dtype: str = ""
    input_direction: tuple[float, ...] = ()
    times: dict[str, float] = field(default_factory=dict)
    #: The preprocessed SimpleITK image (its geometry places the outputs in patient space).
    image: Any = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(D, H, W)`` of the arrays."""
        d, h, w = (int(v) for v in self.arrays[0].shape[-3:])
        return d, h, w

    @property
    def geometry(self) -> OutputGeometry:
        """Where the arrays (and the tokens) lie in the patient (:mod:`neurovfm.data.geometry`)."""
        return output_geometry(self.image, self.view)

    def payload(self, mode: str, source: str) -> dict[str, Any]:
        """The dict ``neurovfm prepare -o`` saves (``.npz``/``.pt``): the tokens (every
        token: :func:`~neurovfm.data.untokenize` gives the arrays back), their flags and
        grid, and the arrays' geometry (:meth:`OutputGeometry.from_dict` reads it back)."""
        geom = self.geometry.as_dict()
        return {
            "tokens": self.tokens,
            "coords": self.coords,
            "filtered": self.filtered,
            "size": self.size,
            "channels": self.channels,
            "mode": mode,
            "view": int(self.view),
            **geom,
            "source": source,
        }


def prepare_scan(
    source: str | os.PathLike[str] | SeriesRecord | Any,
    mode: str,
    series_uid: str | None = None,
    *,
    quantize: bool = False,
    tokenize: bool = True,
    check_mode: bool = True,
    threads: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> PreparedScan:
    """Read, check the mode, preprocess, prepare and tokenize one scan.

    ``source``: a path :func:`~neurovfm.data.load_image` takes, a series
    :func:`~neurovfm.data.find_series` found (read from its files, without a second
    walk), or a volume in memory (a ``SimpleITK.Image``, a nibabel image, a
    :class:`~neurovfm.data.RawVolume`); ``series_uid`` picks the series of a folder that
    holds several.

    - ``check_mode``: read the volume whole and compare its DICOM Modality and values
      with ``mode``; the conflicts are returned in ``mode_warnings`` (not warned: the
      caller warns, from the thread it wants). Without it a NIfTI file may be streamed
      (decoded slab by slab into the resampler: less memory, the same bytes).
    - ``quantize``: ``arrays`` are the cache's ``uint8(v * 255)`` of the float64 values.
    - ``tokenize``: also the ``[C, N, 1024]`` tokens and their coordinates.
    - ``threads``: kernel threads (default: the current setting).
    - ``storage_options``: for a URL source, its fsspec filesystem's options.

    :class:`~neurovfm.errors.ImageTooSmallError` when the volume holds no whole
    4x16x16 token after resampling to 1x1x4 mm.
    """
    from . import sources
    from .io import load_image, preprocess_volume
    from .preprocess import _check_mode, prepare_for_inference
    from .preprocess import tokenize as tokenize_volume
    from .series import SeriesRecord as _Record

    if isinstance(source, _Record):
        name = source.path
    elif isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
    else:  # a volume in memory: read whole (there is no file to stream)
        name, check_mode = "<in-memory image>", True
    m = _check_mode(mode)
    with thread_limit(threads) if threads is not None else contextlib.nullcontext():
        t0 = time.perf_counter()
        vol = None
        if check_mode or isinstance(source, _Record):  # in memory: check_mode is set
            vol = sources.read(source, series_uid, storage_options)
        t1 = time.perf_counter()
        conflicts = mode_conflicts(vol.modality, vol.array, m) if check_mode and vol is not None else []
        t2 = time.perf_counter()
        img = (
            preprocess_volume(vol)
            if vol is not None
            else load_image(name, series_uid=series_uid, storage_options=storage_options)
        )
        t3 = time.perf_counter()
        res = prepare_for_inference(img, m, return_foreground=not quantize, quantize=quantize)
        if res is None:
            raise ImageTooSmallError(
                name,
                "too small for one 4x16x16 token after resampling to 1x1x4 mm "
                f"(size {tuple(img.GetSize())} in x, y, z)",
            )
        arrs, mask, view = res[0], res[1], res[2]
        fg = res[3] if len(res) > 3 else None
        t4 = time.perf_counter()
        toks = [tokenize_volume(a, mask) for a in arrs] if tokenize else []
        t5 = time.perf_counter()
    d, h, w = (int(v) for v in arrs[0].shape[-3:])
    n = int(mask.size)
    return PreparedScan(
        arrays=list(arrs),
        filtered=mask,
        size=np.asarray((d // 4, h // 16, w // 16), np.int32),
        channels=list(CT_WINDOW_NAMES) if m == "ct" else ["mri"],
        view=int(view),
        spacing=[float(s) for s in img.GetSpacing()],
        foreground=float(1.0 - mask.mean()) if n else 0.0,
        foreground_voxels=float(np.count_nonzero(fg) / fg.size) if fg is not None and fg.size else float("nan"),
        tokens=np.stack([t.img for t in toks]) if toks else None,
        coords=toks[0].coords if toks else None,
        mode_warnings=conflicts,
        input_shape=tuple(int(s) for s in vol.array.shape) if vol is not None else (),
        input_spacing=tuple(float(s) for s in vol.spacing) if vol is not None else (),
        input_dtype=np.dtype(vol.array.dtype).name if vol is not None else "",
        input_direction=tuple(float(x) for x in vol.direction) if vol is not None else (),
        times={"read": t1 - t0, "mode check": t2 - t1, "resample": t3 - t2, "prepare": t4 - t3, "tokenize": t5 - t4},
        image=img,
    )
