"""Collate functions for items with different token counts.

* :func:`collate_padded`: ``img [B, Nmax, 1024]``, padding marked as background
  (``filtered = 1``) and in ``padding_mask``, with ``lengths``.

``filtered`` (the key of the published NeuroVFM code) holds the token background flags:
1 = the 4x16x16 token holds background.
* :func:`collate_packed`: all tokens concatenated ``[T, 1024]`` with cumulative
  sequence lengths per image and per study (the varlen attention layout of
  FlashAttention / ``torch.nn.attention`` nested tensors), optional removal of
  background tokens and random patch drop.

Both drop ``None`` items (images skipped by ``ImageDataset(on_error="skip")``)
and return ``None`` when nothing is left. Every key that is not a token tensor
(``path``, ``study``, ``image``, ``mode``, ``window``, ``crop``, ...) becomes a
list in batch order; ``label`` becomes a tensor when every label is numeric
(int64 for ints/bools, float32 otherwise; multilabel lists of one length give
``[B, K]``), else a list.

Use options with ``functools.partial``, e.g.
``collate_fn=functools.partial(collate_packed, drop_background=True)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from ..errors import DatasetError

__all__ = ["collate_packed", "collate_padded", "labels_to_tensor", "check_default_collatable"]

_TOKEN_KEYS = ("img", "coords", "filtered", "size")


def labels_to_tensor(labels: list[Any]) -> torch.Tensor | list[Any]:
    """A tensor of the labels when they are all numbers (or equal-length lists of numbers), else the list."""
    if not labels:
        return labels

    def num(v: object) -> bool:
        return isinstance(v, numbers.Number) and not isinstance(v, complex)

    if all(num(v) for v in labels):
        if all(isinstance(v, (bool, numbers.Integral)) for v in labels):
            return torch.tensor([int(v) for v in labels], dtype=torch.int64)
        return torch.tensor([float(v) for v in labels], dtype=torch.float32)
    if all(isinstance(v, (list, tuple)) for v in labels):
        k = {len(v) for v in labels}
        if len(k) == 1 and all(num(x) for v in labels for x in v):
            if all(isinstance(x, (bool, numbers.Integral)) for v in labels for x in v):
                return torch.tensor([[int(x) for x in v] for v in labels], dtype=torch.int64)
            return torch.tensor([[float(x) for x in v] for v in labels], dtype=torch.float32)
    if torch.is_tensor(labels[0]) and all(torch.is_tensor(v) and v.shape == labels[0].shape for v in labels):
        return torch.stack(labels)
    return list(labels)


def _items(batch: Iterable[dict[str, Any] | None]) -> list[dict[str, Any]] | None:
    items = [b for b in batch if b is not None]
    return items or None


def _metadata(items: list[dict[str, Any]], out: dict[str, Any]) -> dict[str, Any]:
    keys: list[str] = []
    for it in items:
        for k in it:
            if k not in _TOKEN_KEYS and k not in keys:
                keys.append(k)
    for k in keys:
        vals = [it.get(k) for it in items]
        out[k] = labels_to_tensor(vals) if k == "label" else vals
    return out


def _as_tensor(x: Any) -> torch.Tensor:
    return x if torch.is_tensor(x) else torch.as_tensor(x)


def _batch_tensors(specs: Sequence[tuple[Iterable[int], torch.dtype]]) -> list[torch.Tensor]:
    """Uninitialised tensors of these (shape, dtype). In a DataLoader worker they are views
    of one block of shared memory (each at a 64-byte boundary), so that sending the batch
    to the main process copies nothing (as torch's default_collate) and costs one segment
    to create, map and free, not one per tensor; elsewhere large ones come from neurovfm's
    buffer cache (no fresh page faults), as MultiViewCollator's."""
    shapes = [tuple(int(v) for v in shape) for shape, _ in specs]
    dtypes = [dtype for _, dtype in specs]
    if torch.utils.data.get_worker_info() is not None:
        offsets, total = [], 0
        for shape, dtype in zip(shapes, dtypes):
            total = -(-total // 64) * 64
            offsets.append(total)
            total += math.prod(shape) * dtype.itemsize
        try:  # torch's stubs: _new_shared is private and unannotated; set_ has no overload without a stride
            storage = torch.UntypedStorage._new_shared(max(total, 1))  # type: ignore[no-untyped-call]
            return [
                torch.empty(0, dtype=dtype).set_(storage, off // dtype.itemsize, shape)  # type: ignore[call-overload]
                for shape, off, dtype in zip(shapes, offsets, dtypes)
            ]
        except (AttributeError, RuntimeError):  # pragma: no cover - older torch: moved to shared memory when sent
            pass
    from .multiview import _empty

    return [_empty(shape, dtype, torch.device("cpu")) for shape, dtype in zip(shapes, dtypes)]


def collate_padded(batch: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Stack items, padding to the longest: ``img [B, Nmax, 1024]`` (zeros),
    ``coords [B, Nmax, 3]`` (zeros), ``filtered [B, Nmax]`` (1 = background or
    padding), ``padding_mask [B, Nmax]`` bool (True = padding), ``lengths [B]``
    int64, ``size [B, 3]`` int32, and the metadata lists.

    Items with ``tokenize=False`` (``img [1, D, H, W]``) are zero-padded to
    ``[B, 1, Dmax, Hmax, Wmax]``; their token tensors are padded as above.
    """
    items = _items(batch)
    if items is None:
        return None
    imgs = [_as_tensor(it["img"]) for it in items]
    coords = [_as_tensor(it["coords"]) for it in items]
    token_background = [_as_tensor(it["filtered"]) for it in items]
    B = len(items)
    counts = [len(f) for f in token_background]
    nmax = max(counts) if B else 0
    if imgs[0].dim() == 2:
        img_shape = [B, nmax, imgs[0].shape[1]]
    elif imgs[0].dim() == 4:
        img_shape = [B] + [max(im.shape[k] for im in imgs) for k in range(4)]
    else:
        raise DatasetError(f"collate_padded: img must be [N, 1024] or [1, D, H, W], got {tuple(imgs[0].shape)}")
    out_img, out_coords, out_background, padding_mask, lengths, size = _batch_tensors(
        [
            (img_shape, imgs[0].dtype),
            ((B, nmax, 3), coords[0].dtype),
            ((B, nmax), torch.uint8),
            ((B, nmax), torch.bool),
            ((B,), torch.int64),
            ((B, 3), torch.int32),
        ]
    )
    if imgs[0].dim() == 2:
        for b, im in enumerate(imgs):
            out_img[b, : im.shape[0]] = im
            out_img[b, im.shape[0] :] = 0
    else:
        out_img.zero_()
        for b, im in enumerate(imgs):
            out_img[b, : im.shape[0], : im.shape[1], : im.shape[2], : im.shape[3]] = im
    lengths.copy_(torch.tensor(counts, dtype=torch.int64))
    torch.ge(torch.arange(nmax)[None, :], lengths[:, None], out=padding_mask)
    for b, it in enumerate(items):
        size[b] = _as_tensor(it["size"])
    for b in range(B):
        n = int(lengths[b])
        out_coords[b, :n] = coords[b]
        out_coords[b, n:] = 0
        out_background[b, :n] = token_background[b]
        out_background[b, n:] = 1
    out = {
        "img": out_img,
        "coords": out_coords,
        "filtered": out_background,
        "padding_mask": padding_mask,
        "lengths": lengths,
        "size": size,
    }
    return _metadata(items, out)


def collate_packed(
    batch: Sequence[dict[str, Any] | None],
    drop_background: bool = False,
    patch_drop: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict[str, Any] | None:
    """Concatenate the tokens of all items (varlen layout).

    Items are reordered so that the images of a study are consecutive (studies
    in order of first appearance; StudyAwareBatchSampler already gives that
    order). Returns ``img [T, 1024]``, ``coords [T, 3]``, ``filtered [T]``,
    ``image_index [T]`` (int64, the item each token belongs to), ``cu_seqlens``
    (int32 ``[B + 1]``, per image), ``cu_seqlens_study`` (int32 ``[S + 1]``),
    ``max_seqlen`` and ``max_seqlen_study`` (ints), ``lengths [B]``,
    ``study_index [B]`` (int64, study position of each image), ``size [B, 3]``
    and the metadata lists (in the new order).

    Parameters
    ----------
    drop_background
        Remove tokens with ``filtered == 1`` (an image may then have 0 tokens).
    patch_drop
        Fraction in ``[0, 1)`` of each image's (remaining) tokens to drop at
        random: ``n - floor(n * patch_drop)`` tokens are kept, in raster order.
    generator
        ``torch.Generator`` for ``patch_drop``; default: torch's global generator
        (seeded differently in each DataLoader worker).
    """
    if not 0.0 <= float(patch_drop) < 1.0:
        raise DatasetError(f"patch_drop must be in [0, 1), got {patch_drop!r}")
    items = _items(batch)
    if items is None:
        return None
    # group images of one study together, studies in order of first appearance
    studies: dict[Any, list[int]] = {}
    for j, it in enumerate(items):
        studies.setdefault(it.get("study"), []).append(j)
    order = [j for js in studies.values() for j in js]
    items = [items[j] for j in order]
    keeps: list[torch.Tensor | None] = []
    for it in items:
        im, background = _as_tensor(it["img"]), _as_tensor(it["filtered"])
        if im.dim() != 2:
            raise DatasetError(f"collate_packed needs token items [N, 1024] (tokenize=True), got {tuple(im.shape)}")
        keep: torch.Tensor | None = None
        if drop_background:
            keep = torch.nonzero(background == 0).flatten()
        if patch_drop > 0:
            n = len(background) if keep is None else len(keep)
            k = n - int(n * float(patch_drop))
            sel = torch.randperm(n, generator=generator)[:k].sort().values
            keep = sel if keep is None else keep[sel]
        keeps.append(keep)
    lengths = torch.tensor(
        [len(_as_tensor(it["filtered"])) if kp is None else len(kp) for it, kp in zip(items, keeps)], dtype=torch.int64
    )
    B, S = len(items), len(studies)
    total = int(lengths.sum())
    im0 = _as_tensor(items[0]["img"])
    out_img, out_coords, out_background, image_index, cu, cu_s, out_lengths, study_index, size = _batch_tensors(
        [
            ((total, im0.shape[1]), im0.dtype),
            ((total, 3), _as_tensor(items[0]["coords"]).dtype),
            ((total,), torch.uint8),
            ((total,), torch.int64),
            ((B + 1,), torch.int32),
            ((S + 1,), torch.int32),
            ((B,), torch.int64),
            ((B,), torch.int64),
            ((B, 3), torch.int32),
        ]
    )
    cu[0] = 0
    torch.cumsum(lengths, 0, out=cu[1:])
    out_lengths.copy_(lengths)
    for j, (it, keep) in enumerate(zip(items, keeps)):
        a, b = int(cu[j]), int(cu[j + 1])
        for src, dst in ((it["img"], out_img), (it["coords"], out_coords), (it["filtered"], out_background)):
            src = _as_tensor(src)
            if keep is None:
                dst[a:b] = src
            else:
                torch.index_select(src, 0, keep, out=dst[a:b])
    per_study = torch.tensor([int(lengths[i : i + len(js)].sum()) for i, js in _starts(studies)], dtype=torch.int64)
    cu_s[0] = 0
    torch.cumsum(per_study, 0, out=cu_s[1:])
    study_index.copy_(torch.repeat_interleave(torch.arange(S), torch.tensor([len(js) for js in studies.values()])))
    image_index.copy_(torch.repeat_interleave(torch.arange(B), lengths))
    for j, it in enumerate(items):
        size[j] = _as_tensor(it["size"])
    out = {
        "img": out_img,
        "coords": out_coords,
        "filtered": out_background,
        "image_index": image_index,
        "cu_seqlens": cu,
        "cu_seqlens_study": cu_s,
        "max_seqlen": int(lengths.max()) if B else 0,
        "max_seqlen_study": int(per_study.max()) if S else 0,
        "lengths": out_lengths,
        "study_index": study_index,
        "size": size,
    }
    return _metadata(items, out)


def _starts(studies: dict[Any, list[int]]) -> Iterator[tuple[int, list[int]]]:
    i = 0
    for js in studies.values():
        yield i, js
        i += len(js)


DEFAULT_COLLATE_HINT = (
    "ImageDataset items have different token counts and None fields (window of MRI, label "
    "without labels), which torch's default collate cannot stack: pass "
    "DataLoader(dataset, ..., collate_fn=dataset.collate_fn) (collate_packed; or "
    "neurovfm.datasets.collate_padded), or batch_size=None for single items"
)


def check_default_collatable(items: list[Any]) -> None:
    """Raise :class:`DatasetError` with :data:`DEFAULT_COLLATE_HINT` when torch's default
    collate cannot stack these items (a None item or field, token tensors of different
    shapes): the message says which collate function to pass instead."""
    if not _stackable(items):
        raise DatasetError(DEFAULT_COLLATE_HINT)


def _stackable(items: list[Any]) -> bool:
    """Whether torch's default collate can stack these items (no None, equal token shapes)."""
    if any(it is None for it in items):
        return False
    if not all(isinstance(it, dict) for it in items):
        return True  # a transform made something else: leave it to the collate
    if any(v is None for it in items for v in it.values()):
        return False
    return all(
        torch.is_tensor(it.get(k)) and it[k].shape == items[0][k].shape
        for k in ("img", "coords", "filtered")
        if torch.is_tensor(items[0].get(k))
        for it in items
    )
