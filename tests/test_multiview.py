"""MultiViewCollator: the published NeuroVFM batch layout, against hand-derived values and a slow loop."""

from __future__ import annotations


import numpy as np
import pytest

torch = pytest.importorskip("torch")
from itemdata import LABELS, cached_dataset  # noqa: E402
from neurovfm import _core  # noqa: E402
from neurovfm.datasets import ImageDataset, StudyAwareBatchSampler  # noqa: E402
from neurovfm._threads import thread_limit  # noqa: E402
from neurovfm.datasets.multiview import MultiViewCollator  # noqa: E402
from neurovfm.errors import DatasetError  # noqa: E402


def _item(study, name, size, flags, label=1.0, start=0):
    n = size[0] * size[1] * size[2]
    assert len(flags) == n
    return {
        "img": (torch.arange(n * 1024, dtype=torch.float32).reshape(n, 1024) + start),
        "coords": torch.tensor([[d, h, w] for d in range(size[0]) for h in range(size[1]) for w in range(size[2])])
        .reshape(-1, 3)
        .to(torch.int32),
        "filtered": torch.tensor(flags, dtype=torch.uint8),
        "size": torch.tensor(size, dtype=torch.int32),
        "path": f"{study}/{name}",
        "study": study,
        "image": name,
        "mode": "ct",
        "window": "brain",
        "label": label,
        "index": 0,
    }


def three_items():
    """Study A: 2 series (4 tokens, 2 background; 3 tokens, 1 background); study B: 1 series (2 tokens, 0)."""
    return [
        _item("A", "s1", (1, 2, 2), [1, 0, 0, 1], label=0.0, start=0),
        _item("A", "s2", (1, 1, 3), [0, 1, 0], label=0.0, start=10**6),
        _item("B", "s3", (2, 1, 1), [0, 0], label=1.0, start=2 * 10**6),
    ]


def slow_reference(items, remove_background=True, internal=False, draws=None):
    """The layout by a plain loop over studies, series and tokens (``draws``: 0/1 keep draws per token)."""
    groups = []
    for it in items:
        if groups and groups[-1][0]["study"] == it["study"]:
            groups[-1].append(it)
        else:
            groups.append([it])
    order = [it for g in groups for it in g]
    kept, series_len, study_len, pos = [], [], [], 0
    for g in groups:
        total = 0
        for it in g:
            n = 0
            for t in range(it["img"].shape[0]):
                ok = not (remove_background and int(it["filtered"][t]))
                if draws is not None and not draws[pos]:
                    ok = False
                if ok:
                    kept.append(pos)
                    n += 1
                pos += 1
            series_len.append(n)
            total += n
        study_len.append(total)

    def cu(lens):
        out = [0]
        for v in lens:
            out.append(out[-1] + v)
        return torch.tensor(out, dtype=torch.int32)

    img = torch.cat([it["img"] for it in order])
    coords = torch.cat([it["coords"] for it in order])
    filt = torch.cat([it["filtered"] for it in order])
    idx = torch.tensor(kept, dtype=torch.long)
    if internal:
        img, coords, filt, idx = img[idx], coords[idx], filt[idx], torch.tensor([], dtype=torch.long)
    return {
        "img": img,
        "coords": coords,
        "filtered": filt,
        "size": torch.stack([it["size"] for it in order]),
        "path": [it["path"] for it in order],
        "mode": [it["mode"] for it in order],
        "study": [g[0]["study"] for g in groups],
        "label": torch.tensor([g[0]["label"] for g in groups], dtype=torch.float32),
        "series_masks_indices": idx,
        "series_cu_seqlens": cu(series_len),
        "series_max_len": max(series_len),
        "study_cu_seqlens": cu(study_len),
        "study_max_len": max(study_len),
    }


def assert_same(got, want):
    assert set(got) == set(want)
    for k, v in want.items():
        if torch.is_tensor(v):
            assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
            assert torch.equal(got[k], v), k
        else:
            assert type(got[k]) is type(v) and got[k] == v, k


@pytest.mark.parametrize("internal", [False, True])
def test_hand_derived_values(internal):
    out = MultiViewCollator(apply_masks_internally=internal)(three_items())
    # kept: series 1 tokens 1, 2; series 2 tokens 0, 2 (global 4, 6); series 3 both (global 7, 8)
    assert out["series_cu_seqlens"].tolist() == [0, 2, 4, 6]
    assert out["series_cu_seqlens"].dtype == torch.int32 and out["study_cu_seqlens"].dtype == torch.int32
    assert out["study_cu_seqlens"].tolist() == [0, 4, 6]
    assert (out["series_max_len"], out["study_max_len"]) == (2, 4)
    assert type(out["series_max_len"]) is int and type(out["study_max_len"]) is int
    assert out["study"] == ["A", "B"] and out["path"] == ["A/s1", "A/s2", "B/s3"] and out["mode"] == ["ct"] * 3
    assert out["label"].tolist() == [0.0, 1.0] and out["label"].dtype == torch.float32
    assert out["size"].tolist() == [[1, 2, 2], [1, 1, 3], [2, 1, 1]] and out["size"].dtype == torch.int32
    kept = [1, 2, 4, 6, 7, 8]
    if internal:
        assert out["series_masks_indices"].numel() == 0
        assert out["img"].shape == (6, 1024) and out["filtered"].tolist() == [0] * 6
        assert out["img"][:, 0].tolist() == [1024.0, 2048.0, 10**6, 10**6 + 2048.0, 2 * 10**6, 2 * 10**6 + 1024.0]
        assert out["coords"].dtype == torch.int32 and out["coords"][2].tolist() == [0, 0, 0]
    else:
        assert out["series_masks_indices"].tolist() == kept and out["series_masks_indices"].dtype == torch.long
        assert out["img"].shape == (9, 1024) and out["filtered"].tolist() == [1, 0, 0, 1, 0, 1, 0, 0, 0]


@pytest.mark.parametrize("internal", [False, True])
@pytest.mark.parametrize("remove_background", [True, False])
def test_matches_slow_loop(internal, remove_background):
    items = three_items() + [_item("A", "s4", (2, 2, 2), [0, 1, 1, 1, 0, 0, 1, 0], label=0.0, start=7)]
    got = MultiViewCollator(remove_background, apply_masks_internally=internal)(items)
    assert_same(got, slow_reference(items, remove_background, internal))
    assert got["study"] == ["A", "B", "A"]  # consecutive items only form a study, as groupby


def test_keep_all_tokens_without_background_removal():
    out = MultiViewCollator(remove_background=False)(three_items())
    assert out["series_cu_seqlens"].tolist() == [0, 4, 7, 9] and out["study_cu_seqlens"].tolist() == [0, 7, 9]
    assert out["series_masks_indices"].tolist() == list(range(9))
    assert (out["series_max_len"], out["study_max_len"]) == (4, 7)


@pytest.mark.parametrize("internal", [False, True])
@pytest.mark.parametrize("remove_background", [True, False])
def test_patch_drop_seeded(internal, remove_background):
    items = [_item(f"s{i // 2}", f"i{i}", (3, 4, 5), [(i + t) % 3 == 0 for t in range(60)]) for i in range(5)]
    p = 0.4
    draws = torch.bernoulli(torch.full((300,), 1 - p), generator=torch.Generator().manual_seed(7)).tolist()
    col = MultiViewCollator(remove_background, p, internal, generator=torch.Generator().manual_seed(7))
    got = col(items)
    assert_same(got, slow_reference(items, remove_background, internal, draws))
    assert 0 < int(got["series_cu_seqlens"][-1]) < (200 if remove_background else 300)
    assert not torch.equal(col(items)["series_cu_seqlens"], got["series_cu_seqlens"])  # the stream goes on


def test_patch_drop_global_rng_is_one_draw_per_series_in_order():
    """Without a generator: the global stream, consumed as the published collator does
    (one bernoulli per series over all its tokens, in batch order)."""
    items = [_item("a", f"i{i}", (2, 3, 5), [t % 4 == 0 for t in range(30)]) for i in range(3)]
    torch.manual_seed(3)
    per_series = [torch.bernoulli(torch.full((30,), 0.5)) for _ in items]
    torch.manual_seed(3)
    got = MultiViewCollator(patch_drop_rate=0.5)(items)
    assert_same(got, slow_reference(items, True, False, torch.cat(per_series).tolist()))


def test_empty_batch_and_dropped_items():
    for batch in ([], [None], [{"img": None}]):
        out = MultiViewCollator()(batch)
        assert out["img"].shape == (0,) and out["label"].shape == (0,) and out["filtered"].numel() == 0
        assert out["series_masks_indices"].dtype == torch.long and out["series_masks_indices"].numel() == 0
        assert out["series_cu_seqlens"].tolist() == [0] and out["series_cu_seqlens"].dtype == torch.int32
        assert out["study_cu_seqlens"].tolist() == [0] and out["study_cu_seqlens"].dtype == torch.int32
        assert (out["series_max_len"], out["study_max_len"]) == (0, 0)
        assert out["size"].shape == (0, 3) and out["path"] == out["mode"] == out["study"] == []
    items = three_items()
    assert_same(MultiViewCollator()([None, *items, {"img": None}]), MultiViewCollator()(items))


def test_all_background_series_and_labels():
    items = three_items()
    items[1]["filtered"][:] = 1
    out = MultiViewCollator()(items)
    assert out["series_cu_seqlens"].tolist() == [0, 2, 2, 4] and out["study_cu_seqlens"].tolist() == [0, 2, 4]
    for it, lab in zip(items, ([1, 0], [1, 0], [0, 1])):
        it["label"] = lab
    assert MultiViewCollator()(items)["label"].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    for it in items:
        it["label"] = torch.tensor(2)
    assert MultiViewCollator()(items)["label"].tolist() == [2.0, 2.0]
    for it in items:
        it["label"] = None  # ImageDataset without labels: kept as a list
    assert MultiViewCollator()(items)["label"] == [None, None]


def test_errors():
    items = three_items()
    items[0]["size"] = torch.tensor([1, 2, 3], dtype=torch.int32)
    with pytest.raises(DatasetError, match=r"size \[1, 2, 3\] holds 6 tokens but img has 4"):
        MultiViewCollator()(items)
    items = three_items()
    items[2]["filtered"] = items[2]["filtered"][:1]
    with pytest.raises(DatasetError, match="img has 2 tokens but coords"):
        MultiViewCollator()(items)
    with pytest.raises(DatasetError, match=r"patch_drop_rate must be in \[0, 1\]"):
        MultiViewCollator(patch_drop_rate=1.5)
    assert "apply_masks_internally=True" in repr(MultiViewCollator(apply_masks_internally=True))


def test_imagedataset_items(tmp_path_factory, scan_dir):
    """Real ImageDataset items (study-aware batches) carry every key the collator reads."""
    ds = ImageDataset(cached_dataset(tmp_path_factory, scan_dir), random_crop=True, study_labels=LABELS, seed=0)
    batch = next(iter(StudyAwareBatchSampler(ds, batch_size=2, seed=1)))
    items = [ds[i] for i in batch]
    for internal in (False, True):
        assert_same(MultiViewCollator(apply_masks_internally=internal)(items), slow_reference(items, True, internal))


# --- the row kernel (_core.concat_rows) and the large-output path ----------------------------


def _parts(rows, row_shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 250, (n, *row_shape), generator=g).to(dtype) for n in rows]


@pytest.mark.parametrize(
    ("rows", "row_shape", "dtype"),
    [
        ([3000, 0, 2100, 1, 2500], (1024,), torch.float32),  # 30 MB: non-temporal stores, many blocks
        ([700, 0, 5], (1024,), torch.uint8),  # small: plain copies
        ([9, 4, 0, 7], (3,), torch.int32),  # 12-byte rows (coords)
        ([5, 6, 1], (3, 1), torch.uint8),  # 3-byte rows: nothing aligned
        ([4100, 3900], (3, 345), torch.int16),  # odd row bytes, above the streaming size
        ([0, 0], (8,), torch.float64),  # nothing at all
    ],
)
def test_concat_rows_any_thread_count_equals_torch_cat(rows, row_shape, dtype):
    parts = _parts(rows, row_shape, dtype, sum(rows))
    want = torch.cat(parts).numpy()
    arrays = [p.numpy() for p in parts]
    for threads in (1, 2, 3):
        out = np.full(want.shape, 7, dtype=want.dtype)
        _core.concat_rows(arrays, out, threads)
        assert out.tobytes() == want.tobytes()
    # into an output that is not 16- or 32-byte aligned (the streaming stores' head)
    row = want.itemsize * int(np.prod(want.shape[1:]))
    out = np.zeros(want.nbytes + 1, np.uint8)[1:].reshape(want.shape[0], row)
    _core.concat_rows([np.ascontiguousarray(a).view(np.uint8).reshape(a.shape[0], row) for a in arrays], out, 2)
    assert out.tobytes() == want.tobytes()


def test_concat_rows_refuses_bad_arguments():
    a, b = np.zeros((4, 8), np.float32), np.zeros((2, 8), np.float32)
    out = np.zeros((6, 8), np.float32)
    _core.concat_rows([a, b], out)
    with pytest.raises(ValueError, match="does not have the rows of out"):
        _core.concat_rows([a, np.zeros((2, 8), np.float64)], out)
    with pytest.raises(ValueError, match="does not have the rows of out"):
        _core.concat_rows([a, np.zeros((2, 9), np.float32)], out)
    with pytest.raises(ValueError, match="is not C-contiguous"):
        _core.concat_rows([a, np.zeros((8, 2), np.float32).T], out)
    with pytest.raises(ValueError, match="out has 5 rows, the parts 6"):
        _core.concat_rows([a, b], np.zeros((5, 8), np.float32))
    with pytest.raises(ValueError, match="C-contiguous and writeable"):
        _core.concat_rows([a, b], np.zeros((8, 6), np.float32).T)
    ro = np.zeros((6, 8), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="C-contiguous and writeable"):
        _core.concat_rows([a, b], ro)
    with pytest.raises(TypeError, match="out must be a NumPy array"):
        _core.concat_rows([a, b], [[0.0] * 8] * 6)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        _core.concat_rows([a, b], out, 0)


def _big_items(dtype=torch.float32, seed=0):
    """Items of a batch large enough (~14 MB of float32 tokens) for the recycled-memory path."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i, (d, h) in enumerate(((9, 12), (12, 9), (6, 10), (10, 8))):
        n = d * h * h
        it = _item(f"s{i // 2}", f"i{i}", (d, h, h), [0] * n, label=float(i // 2))
        it["img"] = (torch.rand((n, 1024), generator=g) * 255).to(dtype)
        it["filtered"] = (torch.rand(n, generator=g) < 0.4).to(torch.uint8)
        items.append(it)
    return items


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.bfloat16])
@pytest.mark.parametrize("internal", [False, True])
def test_large_batches_match_the_slow_loop_at_any_thread_count(dtype, internal):
    items = _big_items(dtype)
    want = slow_reference(items, True, internal)
    torch_threads = torch.get_num_threads()
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)  # the masked gather runs on torch's threads
        try:
            with thread_limit(threads):
                got = MultiViewCollator(apply_masks_internally=internal)(items)
        finally:
            torch.set_num_threads(torch_threads)
        assert_same(got, want)
        img = got["img"]
        assert img._base is None and img.is_contiguous() and img.stride() == want["img"].stride()
        assert img.untyped_storage().nbytes() == img.numel() * img.element_size()
    # patch drop: the same draws as the loop reference
    p = 0.3
    n_tok = sum(len(it["img"]) for it in items)
    draws = torch.bernoulli(torch.full((n_tok,), 1 - p), generator=torch.Generator().manual_seed(4)).tolist()
    got = MultiViewCollator(True, p, internal, generator=torch.Generator().manual_seed(4))(items)
    assert_same(got, slow_reference(items, True, internal, draws))


def test_large_output_memory_is_reused_and_can_be_shared():
    """The img of a large batch lives in neurovfm's buffer cache: freed, the next batch reuses
    it; moved to shared memory (what a DataLoader worker does), it keeps its values."""
    items = _big_items()
    col = MultiViewCollator()
    _core.release_cached_buffers()
    first = col(items)["img"]
    ptr, want = first.data_ptr(), first.clone()
    del first
    second = col(items)["img"]
    assert second.data_ptr() == ptr and torch.equal(second, want)
    second.share_memory_()
    assert second.is_shared() and torch.equal(second, want)
    third = col(items)["img"]  # the buffer went back to the cache when the storage moved
    assert third.data_ptr() == ptr and torch.equal(second, want) and torch.equal(third, want)


def test_parts_the_kernel_does_not_take_go_through_torch():
    """Mixed dtypes (promoted as torch.cat does), non-contiguous tokens, and tokens that
    require grad give what the concatenation gives."""
    items = _big_items()
    items[1]["img"] = items[1]["img"].to(torch.float64)
    items[2]["img"] = items[2]["img"].t().contiguous().t()  # column-major
    for internal in (False, True):
        got = MultiViewCollator(apply_masks_internally=internal)(items)
        assert_same(got, slow_reference(items, True, internal))
        assert got["img"].dtype == torch.float64
    items = _big_items()
    items[0]["img"].requires_grad_(True)
    got = MultiViewCollator()(items)
    assert torch.equal(got["img"], torch.cat([it["img"] for it in items])) and got["img"].requires_grad
