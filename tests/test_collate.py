"""collate_padded / collate_packed, and DataLoaders over a real-scan cache."""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import neurovfm.datasets as nds
from hypothesis import given, settings
from hypothesis import strategies as st
from itemdata import LABELS, cached_dataset
from neurovfm.datasets import (
    ImageDataset,
    StudyAwareBatchSampler,
    collate_packed,
    collate_padded,
    labels_to_tensor,
)


def _item(n, study, seed, label=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand((n, 1024), generator=g)
    if dtype == torch.uint8:
        img = (img * 255).to(torch.uint8)
    return {
        "img": img,
        "coords": torch.stack([torch.arange(n), torch.arange(n) % 3, torch.zeros(n, dtype=torch.int64)], 1).to(
            torch.int32
        ),
        "filtered": (torch.rand(n, generator=g) < 0.4).to(torch.uint8),
        "size": torch.tensor([n, 1, 1], dtype=torch.int32),
        "path": f"{study}/img{seed}",
        "study": study,
        "mode": "ct",
        "window": "brain",
        "label": label,
    }


sizes_st = st.lists(st.tuples(st.integers(0, 40), st.sampled_from("abc")), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(spec=sizes_st, dtype=st.sampled_from([torch.float32, torch.uint8]))
def test_padded(spec, dtype):
    items = [_item(n, s, i, dtype=dtype) for i, (n, s) in enumerate(spec)]
    b = collate_padded(items)
    nmax = max(n for n, _ in spec)
    assert b["img"].shape == (len(items), nmax, 1024) and b["img"].dtype == dtype
    assert b["lengths"].tolist() == [n for n, _ in spec]
    for j, it in enumerate(items):
        n = len(it["filtered"])
        assert torch.equal(b["img"][j, :n], it["img"]) and not b["img"][j, n:].any()
        assert torch.equal(b["coords"][j, :n], it["coords"]) and not b["coords"][j, n:].any()
        assert torch.equal(b["filtered"][j, :n], it["filtered"]) and bool((b["filtered"][j, n:] == 1).all())
        assert b["padding_mask"][j].tolist() == [False] * n + [True] * (nmax - n)
    assert b["path"] == [it["path"] for it in items] and b["window"] == ["brain"] * len(items)
    assert b["label"].dtype == torch.int64 and b["size"].shape == (len(items), 3)


@settings(max_examples=60, deadline=None)
@given(spec=sizes_st, drop_bg=st.booleans(), patch_drop=st.sampled_from([0.0, 0.25, 0.5, 0.9]))
def test_packed(spec, drop_bg, patch_drop):
    items = [_item(n, s, i, label=[1, 0]) for i, (n, s) in enumerate(spec)]
    g = torch.Generator().manual_seed(0)
    b = collate_packed(items, drop_background=drop_bg, patch_drop=patch_drop, generator=g)
    # images regrouped by study, studies in order of first appearance
    order = [j for s in dict.fromkeys(s for _, s in spec) for j, (_, t) in enumerate(spec) if t == s]
    assert b["path"] == [items[j]["path"] for j in order]
    cu = b["cu_seqlens"].tolist()
    assert b["cu_seqlens"].dtype == torch.int32 and cu[0] == 0 and cu[-1] == b["img"].shape[0]
    for k, j in enumerate(order):
        it = items[j]
        rows = b["img"][cu[k] : cu[k + 1]]
        keep = torch.arange(len(it["filtered"]))
        if drop_bg:
            keep = keep[it["filtered"] == 0]
        n = len(keep)
        assert len(rows) == n - int(n * patch_drop)
        # every kept row is one of the item's rows (in raster order), never a background one when dropped
        idx = b["coords"][cu[k] : cu[k + 1], 0].long()
        assert bool((idx[1:] > idx[:-1]).all())
        assert torch.equal(rows, it["img"][idx])
        assert set(idx.tolist()) <= set(keep.tolist())
        assert bool((b["image_index"][cu[k] : cu[k + 1]] == k).all())
    # per study
    studies = list(dict.fromkeys(s for _, s in spec))
    cus = b["cu_seqlens_study"].tolist()
    assert len(cus) == len(studies) + 1 and cus[-1] == cu[-1]
    for si, s in enumerate(studies):
        members = [k for k, j in enumerate(order) if spec[j][1] == s]
        assert cus[si] == cu[members[0]] and cus[si + 1] == cu[members[-1] + 1]
        assert b["study_index"][members].tolist() == [si] * len(members)
    assert b["max_seqlen"] == max(np.diff(cu)) and b["max_seqlen_study"] == max(np.diff(cus))
    assert b["label"].shape == (len(items), 2)
    # the generator makes patch drop reproducible
    again = collate_packed(
        items, drop_background=drop_bg, patch_drop=patch_drop, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(again["img"], b["img"])


def test_collate_edge_cases():
    with pytest.raises(ValueError, match="patch_drop"):
        collate_packed([_item(3, "a", 0)], patch_drop=1.0)
    assert collate_packed([None, None]) is None and collate_padded([]) is None
    b = collate_packed([None, _item(2, "a", 0)])
    assert b["study"] == ["a"] and b["img"].shape == (2, 1024)
    vol = dict(_item(1, "a", 0), img=torch.zeros((1, 4, 16, 32)))
    with pytest.raises(ValueError, match="tokenize"):
        collate_packed([vol])
    vol2 = dict(_item(2, "a", 1), img=torch.ones((1, 8, 16, 16)))
    p = collate_padded([vol, vol2])
    assert p["img"].shape == (2, 1, 8, 16, 32) and p["img"][1].sum() == 8 * 16 * 16
    assert labels_to_tensor([1, 2.5]).dtype == torch.float32
    assert labels_to_tensor([1, None]) == [1, None]
    assert labels_to_tensor(["x", "y"]) == ["x", "y"]
    assert labels_to_tensor([[0, 1], [1, 1]]).shape == (2, 2)
    assert labels_to_tensor([True, False]).dtype == torch.int64


# --- DataLoaders over the real-scan cache --------------------------------------------------------


@pytest.fixture(scope="module")
def ds_root(tmp_path_factory, scan_dir):
    return cached_dataset(tmp_path_factory, scan_dir)


@pytest.mark.parametrize(
    "collate", [collate_padded, functools.partial(collate_packed, drop_background=True, patch_drop=0.3)]
)
def test_dataloader_two_workers(ds_root, collate):
    ds = ImageDataset(ds_root, random_crop=True, augment=True, study_labels=LABELS, seed=0)
    sampler = StudyAwareBatchSampler(ds, batch_size=2, seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=2, collate_fn=collate)
    seen = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        assert ds.epoch == epoch
        batches = list(loader)
        assert len(batches) == len(sampler)
        for b in batches:
            assert b["img"].dtype == torch.float32 and b["label"].dtype == torch.int64
            assert b["label"].tolist() == [LABELS[s] for s in b["study"]]
            seen += b["path"]
    assert sorted(seen) == sorted([ds[i]["path"] for i in range(len(ds))] * 2)  # every image once per epoch


@pytest.mark.parametrize("collate", [collate_padded, collate_packed])
def test_worker_batches_are_one_shared_block_equal_to_in_process(ds_root, collate):
    """In a worker, a batch's tensors are views of one shared-memory block (one segment
    sent per batch); their values are those of the same collate in the main process."""
    ds = ImageDataset(ds_root, study_labels=LABELS, seed=0, img_dtype=torch.uint8)
    batches = [[0, 1, 2], [3, 4]]
    loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=1, collate_fn=collate)
    for idx, b in zip(batches, loader):
        want = collate([ds[i] for i in idx])
        tensors = {k: v for k, v in b.items() if torch.is_tensor(v) and k != "label"}
        assert {k for k, v in want.items() if torch.is_tensor(v)} - {"label"} == set(tensors)
        for k, v in tensors.items():
            assert v.dtype == want[k].dtype and torch.equal(v, want[k]), k
        assert len({v.untyped_storage().data_ptr() for v in tensors.values()}) == 1
        assert all(v.is_shared() for v in tensors.values())


def test_training_example_runs_as_written(ds_root, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("study,label\n" + "".join(f"{s},{v}\n" for s, v in LABELS.items()))
    code = nds.TRAINING_EXAMPLE
    assert '"path/to/dataset"' in code and '"path/to/labels.csv"' in code
    code = code.replace('"path/to/dataset"', repr(str(ds_root))).replace('"path/to/labels.csv"', repr(str(labels)))
    ns: dict = {"__name__": "__main__"}  # run as a script (the example guards its loop for spawn)
    exec(compile(code, "TRAINING_EXAMPLE", "exec"), ns)
    assert ns["tokens"].dtype == torch.float32 and ns["tokens"].shape[1] == 1024
    assert ns["cu_seqlens"][-1] == ns["tokens"].shape[0]
    assert ns["labels_b"].dtype == torch.int64


def test_training_example_runs_under_spawn(ds_root, tmp_path):
    """As a script with the spawn start method (macOS, Windows): workers re-import it."""
    import subprocess
    import sys

    from conftest import package_env

    labels = tmp_path / "labels.csv"
    labels.write_text("study,label\n" + "".join(f"{s},{v}\n" for s, v in LABELS.items()))
    code = nds.TRAINING_EXAMPLE.replace('"path/to/dataset"', repr(str(ds_root)))
    code = code.replace('"path/to/labels.csv"', repr(str(labels)))
    guard = 'if __name__ == "__main__":'
    assert code.count(guard) == 1
    code = code.replace(guard, guard + '\n    import multiprocessing\n    multiprocessing.set_start_method("spawn")')
    code += '\n    print("spawned", multiprocessing.get_start_method(), tokens.shape[1])\n'
    (tmp_path / "train.py").write_text(code)
    out = subprocess.run(
        [sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True, env=package_env(), timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["spawned", "spawn", "1024"], out.stdout
