"""StudyAwareBatchSampler: batches of whole studies, DDP-aware.

How a sampler builds one epoch (every rank computes the same global plan from
``seed`` and the epoch, then takes its share):

1. Studies in dataset order, or (``shuffle``) permuted by a generator seeded
   with ``(seed, epoch)``.
2. Packing, in that order: a batch takes studies while it holds at most
   ``batch_size`` images; a study with more than ``batch_size`` images is a
   batch of its own. This gives ``B`` global batches.
3. Equal batch counts across the ``R`` ranks, so that DDP steps stay in lock step:

   * ``drop_last=True``: the last packed batch is dropped when it holds fewer
     than ``batch_size`` images, then the batch list is cut to a multiple of
     ``R`` (at most ``R - 1`` more batches dropped). Every study is seen at
     most once.
   * ``drop_last=False`` and ``shuffle=True``: the list is padded to a multiple
     of ``R`` by repeating batches from its start (whole studies repeated,
     as ``DistributedSampler`` pads by repetition).
   * ``drop_last=False`` and ``shuffle=False`` (evaluation): no study is
     repeated. Batches holding several studies are split (the batch with the
     most images first, cut where its halves are most even) until the count is
     a multiple of ``R``. Only when there are too few studies for that (fewer
     studies than ranks, say) are batches repeated, with a warning.

4. Rank ``r`` takes global batches ``r, r + R, r + 2R, ...``: ranks hold
   disjoint studies (except repeated padding), each the same number of batches.

The published NeuroVFM sampler (same constructor) differs: its ``drop_last`` drops
the last packed batch of each rank whatever its size (a full one too) and nothing
else, it pads by repeating studies (not batches) before packing, so ranks may
yield different batch counts, and its ``len()`` is an estimate. Here ``drop_last``
drops only a last batch smaller than ``batch_size`` and keeps the ranks in lock step.

``len()`` is that exact per-rank count for the current epoch (packing depends on
the order, so it may change with the epoch when shuffling).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import DatasetError, InvalidTypeError

__all__ = ["StudyAwareBatchSampler", "study_groups_of"]

log = logging.getLogger("neurovfm")

#: ``[(study, [indices])]``, studies in order of first appearance.
_StudyGroups = list[tuple[Any, list[int]]]


def study_groups_of(source: Any) -> _StudyGroups:
    """``[(study, [indices])]`` from a dataset with ``study_groups()`` or a sequence
    of study keys, one per item (items of a study in order of first appearance)."""
    if hasattr(source, "study_groups"):
        return [(s, list(ix)) for s, ix in source.study_groups()]
    if isinstance(source, (Sequence, np.ndarray)) and not isinstance(source, (str, bytes)):
        groups: dict[Any, list[int]] = {}
        for i in range(len(source)):
            groups.setdefault(source[i], []).append(i)
        return list(groups.items())
    raise InvalidTypeError("dataset must have study_groups() or be a sequence of study keys")


def _dist_defaults(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    if num_replicas is None or rank is None:
        world, me = 1, 0
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                world, me = dist.get_world_size(), dist.get_rank()
        except ImportError:  # pragma: no cover - torch always present with datasets
            pass
        num_replicas = world if num_replicas is None else num_replicas
        rank = me if rank is None else rank
    num_replicas, rank = int(num_replicas), int(rank)
    if num_replicas < 1:
        raise DatasetError(f"num_replicas must be >= 1, got {num_replicas}")
    if not 0 <= rank < num_replicas:
        raise DatasetError(f"rank must be in [0, {num_replicas}), got {rank}")
    return num_replicas, rank


def _pack(groups: _StudyGroups, batch_size: int) -> list[list[int]]:
    """Global batches (lists of study positions) from study sizes, in order."""
    batches: list[list[int]] = []
    cur: list[int] = []
    n = 0
    for s, (_name, idx) in enumerate(groups):
        k = len(idx)
        if k > batch_size:
            if cur:
                batches.append(cur)
                cur, n = [], 0
            batches.append([s])
            continue
        if n + k > batch_size and cur:
            batches.append(cur)
            cur, n = [], 0
        cur.append(s)
        n += k
    if cur:
        batches.append(cur)
    return batches


def _split_to(batches: list[list[int]], groups: _StudyGroups, target: int) -> tuple[list[list[int]], bool]:
    """Split multi-study batches (largest first) until there are ``target`` batches."""
    batches = [list(b) for b in batches]
    while len(batches) < target:
        best: int | None = None
        best_n = -1
        for j, b in enumerate(batches):
            if len(b) > 1:
                n = sum(len(groups[s][1]) for s in b)
                if n > best_n:
                    best, best_n = j, n
        if best is None:
            return batches, False
        b = batches[best]
        sizes = [len(groups[s][1]) for s in b]
        total, acc, cut = sum(sizes), 0, 1
        gap: int | None = None
        for c in range(1, len(b)):
            acc += sizes[c - 1]
            g = abs(total - 2 * acc)
            if gap is None or g < gap:
                cut, gap = c, g
        batches[best : best + 1] = [b[:cut], b[cut:]]
    return batches, True


class StudyAwareBatchSampler:
    """Batches of dataset indices that hold whole studies only (see the module docstring).

    Parameters
    ----------
    dataset
        An :class:`~neurovfm.datasets.ImageDataset` (anything with
        ``study_groups()``), or a sequence giving the study of each index.
    batch_size
        Most images per batch; a larger study is a batch of its own.
    shuffle
        Permute the studies each epoch (generator seeded by ``(seed, epoch)``,
        the same on every rank).
    seed
        Base seed of the permutation.
    drop_last
        Drop instead of pad/split when equalising the ranks' batch counts, and
        drop a last batch smaller than ``batch_size``.
    num_replicas, rank
        DDP world size and this rank; default from ``torch.distributed`` when it
        is initialised, else 1 and 0.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise DatasetError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.num_replicas, self.rank = _dist_defaults(num_replicas, rank)
        self.groups = study_groups_of(dataset)
        self.epoch = 0
        self._plan_cache: tuple[tuple[int, int, bool, int, bool, int], list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next iteration (also sets the dataset's epoch when it has one)."""
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)

    # -- the plan -------------------------------------------------------------------------------
    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All ranks' batches for ``epoch`` (lists of study positions), rank r taking r, r + R, ..."""
        ep = self.epoch if epoch is None else int(epoch)
        key = (ep, self.batch_size, self.shuffle, self.seed, self.drop_last, self.num_replicas)
        if self._plan_cache is not None and self._plan_cache[0] == key:
            return self._plan_cache[1]
        groups = self.groups
        order = np.arange(len(groups))
        if self.shuffle:
            order = np.random.default_rng([self.seed, ep]).permutation(len(groups))
        ordered = [groups[s] for s in order]
        batches = [[int(order[s]) for s in b] for b in _pack(ordered, self.batch_size)]
        R = self.num_replicas
        if self.drop_last:
            if batches and sum(len(groups[s][1]) for s in batches[-1]) < self.batch_size:
                batches = batches[:-1]
            batches = batches[: len(batches) // R * R]
        elif batches and len(batches) % R:
            target = -(-len(batches) // R) * R
            if not self.shuffle:
                batches, ok = _split_to(batches, groups, target)
                if not ok:
                    log.warning(
                        "StudyAwareBatchSampler: %d studies cannot fill %d batches on %d ranks without "
                        "repeating studies; batches are repeated",
                        len(groups),
                        target,
                        R,
                    )
            base = list(batches)
            while len(batches) < target:
                batches.append(base[(len(batches) - len(base)) % len(base)])
        self._plan_cache = (key, batches)
        return batches

    def rank_batches(self, rank: int | None = None, epoch: int | None = None) -> list[list[int]]:
        """Batches of dataset indices of ``rank`` (default this rank) at ``epoch``."""
        r = self.rank if rank is None else int(rank)
        plan = self.global_batches(epoch)
        return [[i for s in b for i in self.groups[s][1]] for b in plan[r :: self.num_replicas]]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.rank_batches())

    def __len__(self) -> int:
        return len(self.global_batches()) // self.num_replicas

    def __repr__(self) -> str:
        return (
            f"StudyAwareBatchSampler({len(self.groups)} studies, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, rank {self.rank}/{self.num_replicas}, epoch {self.epoch})"
        )
