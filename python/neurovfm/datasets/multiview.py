"""``MultiViewCollator``: the published NeuroVFM batch layout, built without per-series loops.

A drop-in for ``neurovfm.datasets.MultiViewCollator`` of the published NeuroVFM code
(GitHub ``MLNeurosurg/neurovfm``): same constructor, same output keys, dtypes and
values. The items of :class:`~neurovfm.datasets.ImageDataset` carry every key it reads
under the published names (``img``, ``coords``, ``filtered`` = token background flags,
``size``, ``path``, ``study``, ``mode``, ``label``); no renaming is needed, and the extra
keys (``image``, ``window``, ``index``, ``crop``, ...) are ignored, as the published
collator ignores ``window`` and ``conversation``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from .. import _core
from .._threads import get_num_threads
from ..errors import DatasetError

__all__ = ["MultiViewCollator"]


#: Outputs of at least this many bytes come from neurovfm's large-buffer allocator
#: (``_core.empty``: huge pages, freed buffers kept for reuse); smaller ones from torch.
_RECYCLE_MIN_BYTES = 4 << 20

#: Element types the row kernel copies (as bytes); others (complex, quantized) go to torch.cat.
_ROW_DTYPES = frozenset(
    {
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    }
)


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype, device=device)``; a large CPU one in memory from
    ``_core.empty``, which goes back to neurovfm's buffer cache when the tensor is freed.

    A fresh allocation of a batch's size costs a page fault per 4 KiB page (the kernel
    zeroes each one) and an unmap when freed: several times the copy that fills it. The
    cached buffers are already mapped (in 2 MiB pages), so a batch costs its copy only.
    The tensor is an ordinary one (``_base`` None, contiguous); its storage, being
    borrowed, cannot be resized."""
    nbytes = math.prod(shape) * dtype.itemsize
    if device.type != "cpu" or nbytes < _RECYCLE_MIN_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    flat = torch.frombuffer(_core.empty(np.dtype(np.uint8), (nbytes,)), dtype=dtype)
    stride = [1] * len(shape)
    for k in range(len(shape) - 2, -1, -1):  # contiguous, as torch.empty's
        stride[k] = stride[k + 1] * max(shape[k + 1], 1)
    return torch.empty((0,), dtype=dtype).set_(flat.untyped_storage(), 0, shape, stride)


def _same_rows(parts: list[torch.Tensor]) -> bool:
    """The parts are contiguous CPU tensors of one dtype (one the kernel copies) and row shape."""
    first = parts[0]
    return (
        first.ndim >= 1
        and first.dtype in _ROW_DTYPES
        and all(
            p.device.type == "cpu"
            and p.dtype == first.dtype
            and p.ndim == first.ndim
            and p.shape[1:] == first.shape[1:]
            and p.layout == torch.strided
            and p.is_contiguous()
            and not p.requires_grad
            for p in parts
        )
    )


def _byte_rows(t: torch.Tensor) -> npt.NDArray[np.uint8]:
    """A C-contiguous CPU tensor as a uint8 array ``[len(t), row bytes]`` sharing its memory."""
    row = math.prod(t.shape[1:]) * t.element_size()
    return t.reshape(-1).view(torch.uint8).numpy().reshape(int(t.shape[0]), row)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(parts)``: parts of one dtype and row shape by one pass of
    ``_core.concat_rows`` into :func:`_empty` memory (non-temporal stores, threads
    :func:`neurovfm.get_num_threads`, the same bytes for any count); others by torch
    (type promotion included)."""
    if not _same_rows(parts):
        return torch.cat(parts)
    first = parts[0]
    out = _empty((sum(int(p.shape[0]) for p in parts), *first.shape[1:]), first.dtype, first.device)
    _core.concat_rows([_byte_rows(p) for p in parts], _byte_rows(out), get_num_threads())
    return out


def _take(parts: list[torch.Tensor], index: torch.Tensor, offsets: list[int], bounds: list[int]) -> torch.Tensor:
    """``torch.cat(parts)[index]`` for ``index`` int64 and sorted: ``offsets[s]`` is part
    ``s``'s first row in the concatenation, ``bounds[s]`` its first position in ``index``
    (both with the total last). Each part's rows by ``torch.index_select`` straight into
    :func:`_empty` memory, no concatenation first.

    torch's intra-op threads, not neurovfm's kernel threads: in a process running torch
    ops they are already awake, and a scattered gather gains from a second thread (the
    bench measured ~1 ms less on a 2-core machine than the same copy in C++)."""
    first = parts[0]
    shape = (int(index.shape[0]), *first.shape[1:])
    small = math.prod(shape) * first.element_size() < _RECYCLE_MIN_BYTES
    if small or not _same_rows(parts) or index.device.type != "cpu":
        return torch.cat(parts).index_select(0, index)  # small (coords): two ops, not one per part
    out = _empty(shape, first.dtype, first.device)
    for s, part in enumerate(parts):
        a, b = bounds[s], bounds[s + 1]
        if b > a:
            torch.index_select(part, 0, index[a:b] - offsets[s], out=out[a:b])
    return out


def _labels(labels: list[Any], device: torch.device) -> torch.Tensor | list[Any]:
    """Float32 labels ``[B]`` (``[B, K]`` for lists/tuples/1-d tensors); the list when not numeric."""
    try:
        if all(torch.is_tensor(v) for v in labels):
            return torch.stack(labels).to(dtype=torch.float32, device=device)
        return torch.tensor(labels, dtype=torch.float32, device=device)
    except (TypeError, ValueError, RuntimeError):
        return list(labels)


class MultiViewCollator:
    """Packs items (one image series each) into the varlen layout the NeuroVFM encoder reads.

    Consecutive items with equal ``study`` form one study (as ``itertools.groupby``: a
    study split by another study's item counts twice, as in the published code; use
    :class:`~neurovfm.datasets.StudyAwareBatchSampler` to keep a study's items together).
    ``None`` items and items whose ``img`` is ``None`` are dropped.

    Returns a dict with (S = series, B = studies, T = all tokens, K = kept tokens):

    * ``img`` ``[T, 1024]``, ``coords`` ``[T, 3]``, ``filtered`` ``[T]``: the items'
      tensors concatenated (``[K, ...]`` when ``apply_masks_internally``);
      ``size`` ``[S, 3]`` stacked; ``path``, ``mode``: lists of S; ``study``: list of B
      (one per study); ``label``: float32 ``[B]`` (``[B, L]`` for list labels), the
      first item's label of each study.
    * ``series_masks_indices``: int64 ``[K]`` positions in ``img`` of the kept tokens
      (empty when ``apply_masks_internally``, the masks being applied already).
    * ``series_cu_seqlens`` int32 ``[S + 1]`` and ``study_cu_seqlens`` int32 ``[B + 1]``:
      cumulative kept-token counts; ``series_max_len``, ``study_max_len``: Python ints.

    A token is kept when it is foreground (``filtered == 0``) and survives the patch
    drop: with ``patch_drop_rate = p > 0``, one ``torch.bernoulli`` draw of keep
    probability ``1 - p`` for every token of the batch in order, background included.
    With the default global generator this consumes the same random numbers and gives
    the same masks as the published collator (one draw per series, in order, on CPU);
    pass ``generator=`` for a private, seeded stream.

    Differences from the published collator (deliberate):

    * ``remove_background=False`` keeps every token (the published code raises
      ``NotImplementedError``); the patch drop then applies to all tokens.
    * Series token counts are the items' token counts; an item whose ``prod(size)``,
      ``len(coords)`` or ``len(filtered)`` differs from ``len(img)`` raises
      :class:`~neurovfm.errors.DatasetError` (the published code silently misaligns).
    * Labels that are not numeric (``None``: :class:`ImageDataset` without labels;
      strings) stay a list instead of raising.
    * ``img`` is written once, not concatenated per study and then again for the batch:
      by a C++ row kernel (``_core.concat_rows``: threads :func:`neurovfm.get_num_threads`,
      the same bytes for any count), or with masks applied, each item's kept rows by
      ``torch.index_select`` straight into the output. When it is large (4 MiB or more, on CPU), its memory comes from neurovfm's buffer
      cache (huge pages, already mapped; it returns there when the tensor is freed, or
      when a DataLoader worker moves it to shared memory): a fresh allocation of a batch's
      size costs several times the copy in page faults. Such a tensor cannot be
      ``resize_``-d (its storage is borrowed); in every other respect it is an ordinary
      contiguous tensor. Tokens of mixed dtypes, non-contiguous or requiring grad, or on
      another device, are concatenated by ``torch.cat`` as before.
    * An empty batch holds CPU tensors (the published one allocates them on CUDA when
      available, which DataLoader workers cannot do) and also carries ``size``
      (int32 ``[0, 3]``), ``path``, ``mode`` and ``study`` (empty lists).
    """

    def __init__(
        self,
        remove_background: bool = True,
        patch_drop_rate: float = 0.0,
        apply_masks_internally: bool = False,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        p = float(patch_drop_rate)
        if not 0.0 <= p <= 1.0:
            raise DatasetError(f"patch_drop_rate must be in [0, 1], got {patch_drop_rate!r}")
        self.remove_background = bool(remove_background)
        self.patch_drop_rate = p
        self.apply_masks_internally = bool(apply_masks_internally)
        self.generator = generator

    def __repr__(self) -> str:
        return (
            f"MultiViewCollator(remove_background={self.remove_background}, "
            f"patch_drop_rate={self.patch_drop_rate}, apply_masks_internally={self.apply_masks_internally})"
        )

    @staticmethod
    def _empty() -> dict[str, Any]:
        i32 = torch.int32
        return {
            "img": torch.tensor([]),
            "coords": torch.tensor([]),
            "label": torch.tensor([]),
            "filtered": torch.tensor([]),
            "series_masks_indices": torch.tensor([], dtype=torch.long),
            "series_cu_seqlens": torch.zeros(1, dtype=i32),
            "series_max_len": 0,
            "study_cu_seqlens": torch.zeros(1, dtype=i32),
            "study_max_len": 0,
            "size": torch.zeros((0, 3), dtype=i32),
            "path": [],
            "mode": [],
            "study": [],
        }

    def __call__(self, batch: Sequence[Any]) -> dict[str, Any]:
        items = [it for it in batch if it is not None and it.get("img") is not None]
        if not items:
            return self._empty()

        imgs, coords, flags, sizes, lengths = [], [], [], [], []
        paths, modes, studies, labels, study_starts = [], [], [], [], []
        prev: Any = object()
        for s, it in enumerate(items):
            n = int(it["img"].shape[0])
            if int(it["coords"].shape[0]) != n or int(it["filtered"].shape[0]) != n:
                raise DatasetError(
                    f"item {it.get('path')!r}: img has {n} tokens but coords {tuple(it['coords'].shape)} "
                    f"and filtered {tuple(it['filtered'].shape)}"
                )
            imgs.append(it["img"])
            coords.append(it["coords"])
            flags.append(it["filtered"])
            sizes.append(it["size"])
            lengths.append(n)
            paths.append(it["path"])
            modes.append(it["mode"])
            st = it["study"]
            if s == 0 or st != prev:
                study_starts.append(s)
                studies.append(st)
                labels.append(it["label"])
                prev = st
        n_series = len(items)
        device = imgs[0].device

        size = torch.stack(sizes)
        for k, (dims, n) in enumerate(zip(size.reshape(n_series, -1).tolist(), lengths)):
            if (h := math.prod(dims)) != n:
                raise DatasetError(f"item {paths[k]!r}: size {size[k].tolist()} holds {h} tokens but img has {n}")

        filtered = torch.cat(flags)
        n_tok = int(filtered.shape[0])
        keep = filtered == 0 if self.remove_background else None
        if self.patch_drop_rate > 0:
            probs = torch.full((n_tok,), 1.0 - self.patch_drop_rate, dtype=torch.float32, device=device)
            drawn = torch.bernoulli(probs, generator=self.generator).to(torch.bool)
            keep = drawn if keep is None else keep & drawn

        # series offsets in the concatenation; kept tokens before each: where it falls among
        # the (sorted) kept positions
        offsets = list(itertools.accumulate(lengths, initial=0))
        idx: torch.Tensor | None = None
        if keep is None:
            cu = offsets
        else:
            idx = torch.nonzero(keep).flatten()
            cu = torch.searchsorted(idx, torch.tensor(offsets, dtype=torch.int64, device=idx.device)).tolist()
        study_cu = [cu[s] for s in study_starts] + [cu[-1]]
        series_max = max(b - a for a, b in itertools.pairwise(cu))
        study_max = max(b - a for a, b in itertools.pairwise(study_cu))

        if self.apply_masks_internally:
            if idx is None:  # every token kept: the concatenation is the result
                img, crd, flt = _cat(imgs), torch.cat(coords), filtered
            else:
                img, crd, flt = _take(imgs, idx, offsets, cu), _take(coords, idx, offsets, cu), filtered[idx]
            masks = torch.tensor([], dtype=torch.long, device=device)
        else:
            img, crd, flt = _cat(imgs), torch.cat(coords), filtered
            masks = torch.arange(n_tok, device=device) if idx is None else idx

        return {
            "img": img,
            "coords": crd,
            "filtered": flt,
            "path": paths,
            "mode": modes,
            "size": size,
            "study": studies,
            "label": _labels(labels, device),
            "series_masks_indices": masks,
            "series_cu_seqlens": torch.tensor(cu, dtype=torch.int32, device=device),
            "series_max_len": series_max,
            "study_cu_seqlens": torch.tensor(study_cu, dtype=torch.int32, device=device),
            "study_max_len": study_max,
        }
