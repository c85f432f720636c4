"""Inference straight from raw scans: :class:`ScanDataset`."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from ..data.batch import ScanJob, discover_scans
from ..data.preprocess import CT_WINDOW_NAMES, tokenize
from ..data.scan import prepare_scan
from ..errors import DatasetError, InvalidArgumentError, ModeMismatchWarning
from .collate import collate_packed

__all__ = ["ScanDataset"]

#: What a DataLoader with a batch size and torch's default collate gets (as ImageDataset's hint).
DEFAULT_COLLATE_HINT = (
    "ScanDataset items have different token counts and a geometry field, which torch's default "
    "collate cannot stack: pass DataLoader(dataset, ..., collate_fn=dataset.collate_fn) "
    "(collate_packed; or neurovfm.datasets.collate_padded), or batch_size=None for single items"
)


class ScanDataset(Dataset[dict[str, Any]]):
    """Prepared tokens of raw scans, for inference DataLoaders (no cache needed).

    Parameters
    ----------
    paths_or_manifest
        A list of paths (files, folders: every usable series :func:`~neurovfm.data.find_series`
        finds in them, glob patterns), or one manifest CSV (columns ``path``, ``mode``[, ``id``]).
    mode
        ``'ct'`` or ``'mri'`` for every scan (a manifest row's ``mode`` overrides it).
    window
        For CT, which window the item's ``img`` holds: ``'brain'`` (default), ``'blood'`` or ``'bone'``.
    derived
        Derived/secondary series of a folder (:func:`~neurovfm.data.find_series`):
        ``'auto'`` (default: used only when the folder holds no usable acquisition),
        ``'include'`` or ``'skip'``.
    storage_options
        For URL paths (``s3://...``: an object or a prefix of series), the options of their
        fsspec filesystem (default: the backend's standard environment).

    Each item is a dict like :class:`ImageDataset`'s: ``img`` float32 ``[N, 1024]`` (the
    values :func:`~neurovfm.data.prepare_for_inference` gives, in [0, 1]), ``coords``
    int32 ``[N, 3]``, ``filtered`` uint8 ``[N]`` (1 = a token with background), ``size``
    int32 ``[3]``, ``path``, ``mode``, ``series_uid``, and ``geometry``, the
    :class:`~neurovfm.data.OutputGeometry` of the tokens' grid (token ``(d, h, w)`` to
    patient coordinates: :func:`~neurovfm.data.token_to_patient`). Series that are not usable
    (localizers, derived images the ``derived`` policy leaves out, broken series) are left out (:attr:`skipped` lists them
    with the reason). A scan whose header or values contradict its mode gets a
    :class:`~neurovfm.errors.ModeMismatchWarning`. Works with DataLoader workers (each
    worker's kernels use one thread, by neurovfm's thread policy).
    """

    def __init__(
        self,
        paths_or_manifest: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        mode: str | None = None,
        *,
        window: str = "brain",
        derived: str = "auto",
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if mode is not None:
            mode = mode.lower()
            if mode not in ("ct", "mri"):
                raise InvalidArgumentError(f"mode must be 'ct' or 'mri', got {mode!r}")
        if window not in CT_WINDOW_NAMES:
            raise InvalidArgumentError(f"window must be one of {', '.join(CT_WINDOW_NAMES)}, got {window!r}")
        self.window = window
        if isinstance(paths_or_manifest, (str, os.PathLike)):
            p = os.fspath(paths_or_manifest)
            if p.lower().endswith(".csv") and os.path.isfile(p):
                jobs = discover_scans([], mode, manifest=p, derived=derived, storage_options=storage_options)
            else:
                jobs = discover_scans([p], mode, derived=derived, storage_options=storage_options)
        else:
            jobs = discover_scans(list(paths_or_manifest), mode, derived=derived, storage_options=storage_options)
        self.storage_options = dict(storage_options or {})
        self.jobs: list[ScanJob] = [j for j in jobs if not j.status]
        #: (path, series_uid, reason) of the series left out.
        self.skipped: list[tuple[str, str, str]] = [(j.path, j.series_uid, j.reason) for j in jobs if j.status]
        missing = [j.path for j in self.jobs if j.mode is None]
        if missing:
            raise InvalidArgumentError(f"no mode for {missing[0]} (give mode= or a manifest 'mode' column)")
        #: The collate function for a DataLoader over this dataset (variable token counts):
        #: :func:`~neurovfm.datasets.collate_packed` (each scan its own image; ``path``,
        #: ``mode``, ``series_uid`` and ``geometry`` as lists).
        self.collate_fn: Callable[..., dict[str, Any] | None] = collate_packed

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Items ``indices`` (what a DataLoader with a batch size asks for). With torch's
        default collate, which cannot stack them, raises :class:`DatasetError` saying to pass
        ``collate_fn=dataset.collate_fn`` (before any scan is read)."""
        try:
            fetcher = sys._getframe(1).f_locals.get("self")
        except (AttributeError, ValueError):  # pragma: no cover - not CPython
            fetcher = None
        if getattr(fetcher, "collate_fn", None) is torch.utils.data.default_collate:
            raise DatasetError(DEFAULT_COLLATE_HINT)
        return [self[i] for i in indices]

    def __getitem__(self, index: int) -> dict[str, Any]:
        j = self.jobs[index]
        mode = str(j.mode)
        r = prepare_scan(
            j.record or j.path, mode, j.series_uid or None, tokenize=False, storage_options=self.storage_options
        )
        for m in r.mode_warnings:
            warnings.warn(ModeMismatchWarning(f"{j.path}: {m}"), stacklevel=2)
        # only the item's window is tokenized
        tok = tokenize(r.arrays[CT_WINDOW_NAMES.index(self.window) if mode == "ct" else 0], r.filtered)
        return {
            "img": torch.from_numpy(tok.img),
            "coords": torch.from_numpy(tok.coords),
            "filtered": torch.from_numpy(r.filtered),
            "size": torch.from_numpy(r.size),
            "path": j.path,
            "mode": mode,
            "series_uid": j.series_uid,
            "geometry": r.geometry,
        }
