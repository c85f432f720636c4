"""``MultiBlockCollator``: the Vol-JEPA multi-block masks of the published NeuroVFM code.

A drop-in for ``neurovfm.datasets.MultiBlockCollator`` of the published NeuroVFM code
(GitHub ``MLNeurosurg/neurovfm``): same ``cfgs_mask`` dict, same return value
``(batch, pred_masks, pred_init_masks, enc_masks)`` and, for the same step and the same
state of torch's global random generator, the same index tensors. Written from its
behaviour (no code taken over); the per-sample work is integer arithmetic on small
NumPy arrays and the index tensors of the whole batch are built in one pass.

Random-number contract (what makes the masks equal to the published ones)
--------------------------------------------------------------------------
Two streams are used, in exactly this order and with exactly these calls; anything
else is computed without touching a generator.

Step generator ``g``: one call of the collator takes ``seed = step()`` (a
``multiprocessing.Value('i', -1)`` incremented under its lock, so the first call gets
0 and DataLoader workers forked from one collator share the count), then
``g = torch.Generator(); g.manual_seed(seed)`` and, for every sample ``b`` in order:

1. ``torch.randint(len(cfgs), (1,), generator=g)``: the mask configuration;
2. ``torch.rand(1, generator=g)``: the block's H x W scale;
3. ``torch.rand(1, generator=g)``: the block's aspect ratio.

torch's global (default) generator, per sample, per attempt (at most 5 attempts):

4. for each of the ``npred`` blocks, until the block is accepted:
   ``torch.randint(0, H - h + 1, (1,))`` (top) then ``torch.randint(0, W - w + 1, (1,))``
   (left). Each is one 32-bit draw of the generator, so tries that cannot pass (their
   ratio level is above every position's block sum) are consumed by one
   ``torch.randint(0, 2, (2 * tries,))`` instead: the same draws, the same state after;
5. only when the encoder mask's foreground fraction exceeds ``enc_mask_scale[mode]``:
   ``torch.randint(0, D - n + 1, (1,))`` (first of the ``n`` dropped depth slices);
6. ``torch.bernoulli(p)`` with ``p`` float32 ``[D * H * W]`` filled with
   ``1 - drop_rate`` (drawn even when ``drop_rate == 0``, where it keeps everything).

Steps 4-6 do not use the step generator (as in the published code): equal masks need
equal global generator states too, which seeded DataLoader workers (``worker_init_fn``
/ ``generator``, or ``torch.manual_seed`` in the main process) provide.

Mask semantics (per sample of token grid ``D x H x W``)
------------------------------------------------------
Every block spans the full depth and an ``h x w`` patch (sizes from steps 2-3; the
scale range is multiplied by the sample's foreground fraction). The encoder mask is
the grid minus the union of the blocks (their complement when ``switch_enc_pred``),
minus ``n`` consecutive depth slices when its foreground fraction is above
``enc_mask_scale``, minus the Bernoulli drop; the predictor mask is the rest. With the
background filter on (``remove_background`` and foreground fraction ``>=
min_filt_ratio``), background tokens (``filtered != 0``) leave all three masks, and a
block is accepted only when its ``~filtered`` sum reaches ``ratio`` times the
volume's (``ratio`` from ``init_ratio`` = 0.95, minus 0.05 every 5 rejections, any
block once below 0.1). ``~`` is the bitwise not of the flags' dtype, as in the
published code: for the uint8 flags of the datasets (1 = background) it weighs
foreground 255 and background 254 (so the check and the depth drop are almost never
triggered); for bool flags it is the foreground count. An attempt whose encoder mask
is empty, whose predictor mask is empty, or whose encoder/context ratio is outside
[0.05, 0.5] is redrawn; after 5 failed attempts the sample's three masks are
``tensor([0])``.

Differences from the published collator (deliberate)
----------------------------------------------------
* ``switch_enc_pred`` may be a bool (the published code then fails: it zips it as a
  list); a bool means the same value for every configuration.
* A sample whose background-filter weight sums to 0 (all-background bool flags) gets the
  fallback masks instead of a ``ZeroDivisionError``.
* An empty batch, or ``len(cfgs_mask) != 1``, raise ``ValueError`` (published:
  ``IndexError`` / ``AssertionError``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from multiprocessing import Value
from typing import Any

import numpy as np
import numpy.typing as npt
import torch


from ..errors import DatasetError

__all__ = ["MultiBlockCollator", "pretraining_mask_config"]


def pretraining_mask_config(**over: Any) -> dict[str, Any]:
    """The one mask configuration the published DataModule gives its pretraining system's
    ``MultiBlockCollator`` (a new dict; ``over`` replaces keys, e.g. ``drop_rate``)."""
    cfg: dict[str, Any] = {
        "hw_pred_mask_scale": [{"mri": [0.7, 0.7], "ct": [0.75, 0.75]}, {"mri": [0.25, 0.25], "ct": [0.2, 0.2]}],
        "d_pred_mask_scale": (1.0, 1.0),
        "enc_mask_scale": {"mri": 0.25, "ct": 0.2},
        "drop_rate": 0.0,
        "aspect_ratio": [(0.3, 3.0)],
        "npred": [1],
        "max_depth_scale": 1.0,
        "remove_background": True,
        "min_filt_ratio": 0.0,
        "switch_enc_pred": [False],
    }
    cfg.update(over)
    return cfg


_MIN_ENC_FRAC = 0.05
_MAX_ENC_FRAC = 0.5
_MAX_ATTEMPTS = 5

BoolArray = npt.NDArray[np.bool_]
MaskTriple = list[Any]  # [indices int64 tensor (or None), cu_seqlens int32 tensor, max_seqlen int]


def _collate_series(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The batch part of the published collator: items concatenated, one entry per item."""
    if not batch:
        raise ValueError("MultiBlockCollator: empty batch")
    if any(isinstance(item["study"], list) for item in batch) or "img" not in batch[0]:
        raise NotImplementedError("MultiBlockCollator: items must be single series with an 'img' key")

    def present(key: str) -> list[Any]:
        return [item[key] for item in batch if item[key] is not None]

    out: dict[str, Any] = {
        "img": torch.cat(present("img"), dim=0),
        "coords": torch.cat(present("coords"), dim=0),
        "filtered": torch.cat(present("filtered"), dim=0),
        "size": torch.stack(present("size"), dim=0),
        "path": present("path"),
        "label": present("label"),
        "study": present("study"),
        "mode": present("mode"),
    }
    labels = out["label"]
    if not labels:
        # unlabelled items (label None: no study_labels): the published dataset gives them
        # label 0, so its pretraining batches carry float16 zeros; the same here
        out["label"] = torch.zeros(len(batch)).half()
    elif len(labels) < len(batch):
        raise DatasetError(f"MultiBlockCollator: {len(batch) - len(labels)} of {len(batch)} items have no label")
    elif isinstance(labels[0], int):
        out["label"] = torch.tensor(labels).half()
    else:
        out["label"] = torch.vstack([torch.as_tensor(v) for v in labels]).half()
    return out


class _SampleMasks:
    """One sample's masks as flat bool arrays over its grid (``None``: the fallback)."""

    __slots__ = ("enc", "init", "pred")

    def __init__(self, enc: BoolArray | None, pred: BoolArray | None, init: BoolArray | None) -> None:
        self.enc, self.pred, self.init = enc, pred, init


class MultiBlockCollator:
    """Vol-JEPA multi-block mask collator (published configuration and output).

    Parameters
    ----------
    cfgs_mask:
        A list of exactly one dict with ``hw_pred_mask_scale`` (list of ``{mode: [lo,
        hi]}``), ``d_pred_mask_scale`` (stored, unused, as published), ``enc_mask_scale``
        (``{mode: fraction}``), ``drop_rate``, ``aspect_ratio`` (list of ``[lo, hi]``),
        ``npred`` (list of ints) and optionally ``max_depth_scale`` (unused),
        ``remove_background`` (False), ``min_filt_ratio`` (0.0), ``switch_enc_pred`` (list
        of bools, or a bool). The configurations are the lists zipped (shortest wins).
    apply_masks_internally:
        Index ``img``, ``coords`` and ``filtered`` by the context (``pred_init``) indices
        in the collator; ``pred_init_masks[0][0]`` is then ``None``.

    ``__call__(items)`` returns ``(batch, pred, pred_init, enc)``: ``batch`` has ``img``,
    ``coords``, ``filtered``, ``size`` (the items' tensors concatenated / stacked),
    ``path``, ``study``, ``mode`` (lists) and ``label`` (float16 ``[B]``, or ``[B, K]``);
    each mask is ``[[indices int64, cu_seqlens int32 [B + 1], max_seqlen int]]``.
    ``pred_init`` indices are token positions in ``batch['img']``; ``pred`` and ``enc``
    indices are positions in the concatenated context (``pred_init``) tokens.
    See the module docstring for the random-number contract.
    """

    def __init__(self, cfgs_mask: Sequence[Mapping[str, Any]], apply_masks_internally: bool = False) -> None:
        if len(cfgs_mask) != 1:
            raise ValueError(f"MultiBlockCollator: exactly one mask configuration is supported, got {len(cfgs_mask)}")
        m = cfgs_mask[0]
        self.d_pred_mask_scale = m["d_pred_mask_scale"]
        self.enc_mask_scale: Mapping[str, float] = m["enc_mask_scale"]
        self.drop_rate = float(m["drop_rate"])
        self.max_depth_scale = m.get("max_depth_scale", 1.0)
        self.remove_background = bool(m.get("remove_background", False))
        self.min_filt_ratio = m.get("min_filt_ratio", 0.0)
        self.init_ratio = 0.95
        switch = m.get("switch_enc_pred", False)
        switches = [switch] * len(m["npred"]) if isinstance(switch, bool) else list(switch)
        self.cfgs: list[tuple[Mapping[str, Sequence[float]], Sequence[float], int, bool]] = [
            (hw, ar, int(npred), bool(sw))
            for hw, ar, npred, sw in zip(m["hw_pred_mask_scale"], m["aspect_ratio"], m["npred"], switches)
        ]
        if not self.cfgs:
            raise ValueError("MultiBlockCollator: the mask configuration lists are empty")
        self.apply_masks_internally = apply_masks_internally
        self._itr_counter = Value("i", -1)  # shared by forked DataLoader workers

    # -- step counter --------------------------------------------------------------------

    def step(self) -> int:
        """Increment the shared step counter and return the new value (the seed of ``g``)."""
        counter = self._itr_counter
        with counter.get_lock():
            counter.value += 1
            return int(counter.value)

    @property
    def step_value(self) -> int:
        """The last step taken (-1 before the first call)."""
        return int(self._itr_counter.value)

    # -- one sample ----------------------------------------------------------------------

    def _sample(self, g: torch.Generator, dims: Sequence[int], flags: torch.Tensor, mode: str) -> _SampleMasks:
        depth, height, width = (int(v) for v in dims)
        n = depth * height * width
        hw_scale, aspect_range, npred, switch = self.cfgs[int(torch.randint(len(self.cfgs), (1,), generator=g).item())]

        filt_ratio = 1 - (flags.sum().item() / n)
        lo, hi = (v * filt_ratio for v in hw_scale[mode])
        r = torch.rand(1, generator=g).item()
        hw_keep = int(height * width * (lo + r * (hi - lo)))
        r = torch.rand(1, generator=g).item()
        aspect = aspect_range[0] + r * (aspect_range[1] - aspect_range[0])
        h = max(1, min(int(round(math.sqrt(hw_keep * aspect))), height))
        w = max(1, min(int(round(math.sqrt(hw_keep / aspect))), width))

        flags_np = flags.numpy().reshape(depth, height, width)
        fg = flags_np == 0  # the tokens the published `isin(., where(filtered))` keeps
        fg_hw = fg.sum(axis=0, dtype=np.int64)  # foreground count under each (h, w)
        active = self.remove_background and filt_ratio >= self.min_filt_ratio
        if active:
            weight = torch.bitwise_not(flags).numpy().reshape(depth, height, width)
            weight_hw = weight.sum(axis=0, dtype=np.int64)
            integral = np.zeros((height + 1, width + 1), dtype=np.int64)
            np.cumsum(np.cumsum(weight_hw, axis=0), axis=1, out=integral[1:, 1:])
            total_w = int(integral[-1, -1])
            # largest block sum over all positions (a rejection test can only pass at or below it)
            best_inside = int((integral[h:, w:] - integral[:-h, w:] - integral[h:, :-w] + integral[:-h, :-w]).max())
            init = fg.reshape(-1)
            n_init = int(fg_hw.sum())
            if total_w == 0:
                return _SampleMasks(None, None, None)
        else:
            total_w = best_inside = 0
            integral = np.zeros((1, 1), dtype=np.int64)
            init = np.ones(n, dtype=np.bool_)
            n_init = n
        denom = total_w if active else n
        p_keep = torch.full((n,), 1 - self.drop_rate)
        enc_target = self.enc_mask_scale[mode]

        for _ in range(_MAX_ATTEMPTS):
            hw_mask = np.ones((height, width), dtype=np.bool_)
            for _ in range(npred):
                ratio, tries = self.init_ratio, 0
                if active:
                    # Tries at a ratio level no block position can pass are rejected whatever
                    # they draw: consume their 2 draws each in one call (one 32-bit draw per
                    # element, as each (1,)-sized randint of range < 2**32) and skip the level.
                    skipped = 0
                    while not ratio < 0.1 and best_inside < total_w * ratio:
                        skipped += 5
                        ratio -= 0.05
                    if skipped:
                        torch.randint(0, 2, (2 * skipped,))
                while True:
                    top = int(torch.randint(0, height - h + 1, (1,)).item())
                    left = int(torch.randint(0, width - w + 1, (1,)).item())
                    if active and not ratio < 0.1:
                        inside = int(
                            integral[top + h, left + w]
                            - integral[top, left + w]
                            - integral[top + h, left]
                            + integral[top, left]
                        )
                        ok = not inside < total_w * ratio
                    else:
                        ok = True
                    if ok:
                        hw_mask[top : top + h, left : left + w] = False
                        break
                    tries += 1
                    if tries >= 5:
                        tries = 0
                        ratio -= 0.05
            if switch:
                hw_mask = ~hw_mask

            depth_keep = np.ones(depth, dtype=np.bool_)
            curr_frac = int(fg_hw[hw_mask].sum()) / denom
            if curr_frac > enc_target:
                n_drop = math.floor((1 - enc_target / curr_frac) * depth)
                first = int(torch.randint(0, depth - n_drop + 1, (1,)).item())
                depth_keep[first : first + n_drop] = False
            kept = torch.bernoulli(p_keep)

            enc = (depth_keep[:, None, None] & hw_mask[None]).reshape(-1)
            if self.drop_rate != 0:
                enc = enc & (kept.numpy() == 1)
            pred = ~enc
            if active:
                enc = enc & init
                pred = pred & init
            n_enc = int(np.count_nonzero(enc))
            if n_enc == 0 or n_init == 0 or not pred.any():
                continue
            frac = n_enc / n_init
            if frac > _MAX_ENC_FRAC or frac < _MIN_ENC_FRAC:
                continue
            return _SampleMasks(enc, pred, init)
        return _SampleMasks(None, None, None)

    # -- the batch -----------------------------------------------------------------------

    def masks(
        self, sizes: torch.Tensor, filtered: torch.Tensor, modes: Sequence[str], n_samples: int | None = None
    ) -> tuple[MaskTriple, MaskTriple, MaskTriple]:
        """Take one step and return ``(pred, pred_init, enc)`` for the first ``n_samples`` items.

        ``sizes`` ``[B, 3]`` token grids, ``filtered`` the concatenated token flags.
        """
        with torch.no_grad():
            seed = self.step()
            g = torch.Generator()
            g.manual_seed(seed)
            dims = sizes.tolist()
            count = len(dims) if n_samples is None else n_samples
            flags_all = filtered.detach().cpu()
            lens = [int(d[0]) * int(d[1]) * int(d[2]) for d in dims[:count]]
            total = sum(lens)
            enc_all = np.zeros(total, dtype=np.bool_)
            pred_all = np.zeros(total, dtype=np.bool_)
            init_all = np.zeros(total, dtype=np.bool_)
            n_enc = np.zeros(count, dtype=np.int64)
            n_pred = np.zeros(count, dtype=np.int64)
            n_init = np.zeros(count, dtype=np.int64)
            offset = 0
            for b in range(count):
                seqlen = lens[b]
                s = self._sample(g, dims[b], flags_all[offset : offset + seqlen], modes[b])
                if s.enc is None or s.pred is None or s.init is None:
                    enc_all[offset] = pred_all[offset] = init_all[offset] = True
                    n_enc[b] = n_pred[b] = n_init[b] = 1
                else:
                    enc_all[offset : offset + seqlen] = s.enc
                    pred_all[offset : offset + seqlen] = s.pred
                    init_all[offset : offset + seqlen] = s.init
                    n_enc[b] = np.count_nonzero(s.enc)
                    n_pred[b] = np.count_nonzero(s.pred)
                    n_init[b] = np.count_nonzero(s.init)
                offset += seqlen

            if count == 0:
                empty: MaskTriple = [[], [0], 0]
                return [list(empty)], [list(empty)], [list(empty)]
            # context rank of every token: pred/enc indices are positions among the context tokens
            rank = np.cumsum(init_all, dtype=np.int64) - 1
            init_idx = torch.from_numpy(np.flatnonzero(init_all).astype(np.int64, copy=False))
            pred_idx = torch.from_numpy(rank[pred_all])
            enc_idx = torch.from_numpy(rank[enc_all])

            def triple(idx: torch.Tensor | None, counts: npt.NDArray[np.int64]) -> MaskTriple:
                cu = np.zeros(count + 1, dtype=np.int32)
                np.cumsum(counts, out=cu[1:])
                return [idx, torch.from_numpy(cu), int(counts.max())]

            return [triple(pred_idx, n_pred)], [triple(init_idx, n_init)], [triple(enc_idx, n_enc)]

    def __call__(self, batch: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], MaskTriple, MaskTriple, MaskTriple]:
        with torch.no_grad():
            collated = _collate_series(batch)
            pred, pred_init, enc = self.masks(
                collated["size"], collated["filtered"], collated["mode"], n_samples=len(collated["label"])
            )
            if self.apply_masks_internally:
                idx = pred_init[0][0]
                for key in ("img", "coords", "filtered"):
                    collated[key] = collated[key][idx]
                pred_init[0][0] = None
            return collated, pred, pred_init, enc
