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

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import DatasetError

__all__ = ["MultiViewCollator"]


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
        lens = torch.tensor(lengths, dtype=torch.int64)
        bad = torch.nonzero(size.reshape(n_series, -1).to(torch.int64).prod(1) != lens).flatten()
        if bad.numel():
            k = int(bad[0])
            raise DatasetError(
                f"item {paths[k]!r}: size {size[k].tolist()} holds {int(size[k].prod())} tokens "
                f"but img has {lengths[k]}"
            )

        filtered = torch.cat(flags)
        n_tok = int(filtered.shape[0])
        keep = ~filtered.to(torch.bool) if self.remove_background else None
        if self.patch_drop_rate > 0:
            probs = torch.full((n_tok,), 1.0 - self.patch_drop_rate, dtype=torch.float32, device=device)
            drawn = torch.bernoulli(probs, generator=self.generator).to(torch.bool)
            keep = drawn if keep is None else keep & drawn

        # kept tokens before each series start: cumsum of keep, read at the series offsets
        offsets = torch.zeros(n_series + 1, dtype=torch.int64)
        torch.cumsum(lens, 0, out=offsets[1:])
        if keep is None:
            cu = offsets
        else:
            before = torch.zeros(n_tok + 1, dtype=torch.int64, device=device)
            torch.cumsum(keep, 0, out=before[1:])
            cu = before[offsets.to(device)]
        starts = torch.tensor([*study_starts, n_series], dtype=torch.int64, device=cu.device)
        series_cu = cu.to(torch.int32)
        study_cu = cu[starts].to(torch.int32)
        series_max = int((cu[1:] - cu[:-1]).max())
        study_max = int((study_cu[1:] - study_cu[:-1]).max())

        if self.apply_masks_internally:
            if keep is None:  # every token kept: the concatenation is the result
                img, crd, flt = torch.cat(imgs), torch.cat(coords), filtered
            else:
                idx = torch.nonzero(keep).flatten()
                flt = filtered[idx]
                img, crd = self._gather(imgs, idx, offsets, cu), self._gather(coords, idx, offsets, cu)
            masks = torch.tensor([], dtype=torch.long, device=device)
        else:
            img, crd, flt = torch.cat(imgs), torch.cat(coords), filtered
            masks = torch.arange(n_tok, device=device) if keep is None else torch.nonzero(keep).flatten()

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
            "series_cu_seqlens": series_cu,
            "series_max_len": series_max,
            "study_cu_seqlens": study_cu,
            "study_max_len": study_max,
        }

    @staticmethod
    def _gather(parts: list[torch.Tensor], idx: torch.Tensor, offsets: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
        """The rows ``idx`` (global, sorted) of ``torch.cat(parts)``, gathered from each part
        straight into the output (no full concatenation first)."""
        first = parts[0]
        if any(p.dtype != first.dtype or p.device != first.device for p in parts):
            return torch.cat(parts)[idx]  # mixed dtypes: torch.cat promotes them
        out = torch.empty((int(idx.shape[0]), *first.shape[1:]), dtype=first.dtype, device=first.device)
        off, ends = offsets.tolist(), cu.tolist()
        for s, part in enumerate(parts):
            a, b = ends[s], ends[s + 1]
            if b > a:
                torch.index_select(part, 0, idx[a:b] - off[s], out=out[a:b])
        return out
