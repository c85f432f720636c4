"""StudyAwareBatchSampler: properties over many study layouts, seeds and world sizes."""

from __future__ import annotations

from collections import Counter

import pytest

pytest.importorskip("torch")
from hypothesis import given, settings
from hypothesis import strategies as st
from neurovfm.datasets import StudyAwareBatchSampler


def _keys(sizes):
    """One study key per item: study s has sizes[s] consecutive items."""
    return [f"s{s}" for s, n in enumerate(sizes) for _ in range(n)]


def _run(keys, R, **kw):
    samplers = [StudyAwareBatchSampler(keys, num_replicas=R, rank=r, **kw) for r in range(R)]
    return samplers, [list(s) for s in samplers]


def _check_layout(keys, R, batch_size, shuffle, drop_last, seed, epoch):
    sizes = Counter(keys)
    samplers, per_rank = _run(keys, R, batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    for s in samplers:
        s.set_epoch(epoch)
    per_rank = [list(s) for s in samplers]
    counts = {len(b) for b in per_rank}
    # every rank: the same number of batches, and len() is exact
    assert len(counts) == 1
    assert all(len(s) == len(b) for s, b in zip(samplers, per_rank))
    studies_per_rank = []
    for batches in per_rank:
        seen = []
        for batch in batches:
            assert batch, "empty batch"
            assert len(set(batch)) == len(batch)
            studies = Counter(keys[i] for i in batch)
            # whole studies only, at most batch_size images unless a single big study
            for s, n in studies.items():
                assert n == sizes[s]
            assert len(batch) <= batch_size or len(studies) == 1
            seen += list(studies)
        studies_per_rank.append(seen)
    all_seen = Counter(s for seen in studies_per_rank for s in seen)
    total_batches = sum(len(b) for b in per_rank)
    packed = samplers[0].global_batches()
    assert len(packed) == total_batches
    if drop_last:
        # nothing repeated; at most R - 1 batches plus one short last batch dropped
        assert all(c == 1 for c in all_seen.values())
    else:
        assert set(all_seen) == set(sizes)  # coverage
        if not shuffle and len(sizes) >= total_batches:
            assert all(c == 1 for c in all_seen.values())  # evaluation: each study exactly once
        if shuffle:
            extra = sum(all_seen.values()) - len(sizes)
            assert extra <= sum(len(b) for b in packed[-(R - 1) :]) if R > 1 else extra == 0
    # disjoint across ranks when nothing is repeated
    if all(c == 1 for c in all_seen.values()):
        for a in range(R):
            for b in range(a + 1, R):
                assert not set(studies_per_rank[a]) & set(studies_per_rank[b])
    return per_rank


layouts = st.lists(st.integers(min_value=1, max_value=9), min_size=0, max_size=40)


@settings(max_examples=400, deadline=None)
@given(
    sizes=layouts,
    R=st.sampled_from([1, 2, 3, 8]),
    batch_size=st.integers(min_value=1, max_value=12),
    shuffle=st.booleans(),
    drop_last=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    epoch=st.integers(min_value=0, max_value=5),
)
def test_sampler_properties(sizes, R, batch_size, shuffle, drop_last, seed, epoch):
    keys = _keys(sizes)
    first = _check_layout(keys, R, batch_size, shuffle, drop_last, seed, epoch)
    # deterministic from (seed, epoch): a fresh set of samplers agrees
    again = _check_layout(keys, R, batch_size, shuffle, drop_last, seed, epoch)
    assert first == again


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=30),
    batch_size=st.integers(min_value=1, max_value=10),
)
def test_packing_in_order_is_greedy(sizes, batch_size):
    keys = _keys(sizes)
    s = StudyAwareBatchSampler(keys, batch_size=batch_size, shuffle=False, num_replicas=1, rank=0)
    batches = list(s)
    assert [i for b in batches for i in b] == list(range(len(keys)))  # dataset order, all once
    for b, nxt in zip(batches, batches[1:]):
        first_study = keys[nxt[0]]
        n_next = keys.count(first_study)
        assert len(b) + n_next > batch_size or len(b) > batch_size  # the next study did not fit


def test_set_epoch_reshuffles_identically_on_all_ranks():
    keys = _keys([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7])
    ranks = [StudyAwareBatchSampler(keys, batch_size=8, seed=42, num_replicas=3, rank=r) for r in range(3)]
    orders = []
    for epoch in range(3):
        for s in ranks:
            s.set_epoch(epoch)
        plans = [s.global_batches() for s in ranks]
        assert plans[0] == plans[1] == plans[2]
        orders.append(plans[0])
        assert len({len(s) for s in ranks}) == 1
    assert orders[0] != orders[1] != orders[2]
    ranks[0].set_epoch(1)
    assert ranks[0].global_batches() == orders[1]
    other = StudyAwareBatchSampler(keys, batch_size=8, seed=43, num_replicas=3, rank=0)
    other.set_epoch(1)
    assert other.global_batches() != orders[1]


def test_big_studies_and_equalisation_rules():
    keys = _keys([10, 1, 1, 10, 2])
    s = StudyAwareBatchSampler(keys, batch_size=4, shuffle=False, num_replicas=1, rank=0)
    assert [len(b) for b in s] == [10, 2, 10, 2]
    # two ranks, 4 batches: nothing to do
    two = [StudyAwareBatchSampler(keys, batch_size=4, shuffle=False, num_replicas=2, rank=r) for r in range(2)]
    assert [len(t) for t in two] == [2, 2]
    # three ranks, no shuffle: multi-study batches are split so that no study repeats
    keys3 = _keys([10, 1, 1, 10, 1, 1])
    three = [list(StudyAwareBatchSampler(keys3, batch_size=4, shuffle=False, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(b) for b in three] == [2, 2, 2]
    assert sorted(i for b in three for batch in b for i in batch) == list(range(len(keys3)))
    # more ranks than studies without shuffling: batches repeat (warned)
    eight = [StudyAwareBatchSampler(keys, batch_size=4, shuffle=False, num_replicas=8, rank=r) for r in range(8)]
    assert {len(e) for e in eight} == {1}
    # drop_last: a short last batch and the remainder are dropped
    d = StudyAwareBatchSampler(_keys([2, 2, 1]), batch_size=4, shuffle=False, drop_last=True, num_replicas=1, rank=0)
    assert list(d) == [[0, 1, 2, 3]]


def test_arguments_and_dataset_groups(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        StudyAwareBatchSampler(["a"], batch_size=0)
    with pytest.raises(ValueError, match="rank"):
        StudyAwareBatchSampler(["a"], batch_size=1, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas"):
        StudyAwareBatchSampler(["a"], batch_size=1, num_replicas=0, rank=0)
    with pytest.raises(TypeError, match="study"):
        StudyAwareBatchSampler(object(), batch_size=1)
    s = StudyAwareBatchSampler(["a", "a", "b"], batch_size=2)
    assert (s.num_replicas, s.rank) == (1, 0)  # torch.distributed not initialised
    assert len(s) == len(list(s)) == 2 and "StudyAwareBatchSampler(" in repr(s)
    assert list(StudyAwareBatchSampler([], batch_size=2)) == []

    class Groups:
        def __init__(self):
            self.epoch = None

        def study_groups(self):
            return [("x", [0, 1]), ("y", [2])]

        def set_epoch(self, e):
            self.epoch = e

    g = Groups()
    s = StudyAwareBatchSampler(g, batch_size=3, shuffle=False)
    assert list(s) == [[0, 1, 2]]
    s.set_epoch(4)
    assert g.epoch == 4
