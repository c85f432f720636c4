"""ImageDataset and the fused item kernel against a short NumPy reference."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from itemdata import (
    LABELS,
    STUDIES,
    cached_dataset,
    copy_dataset,
    make_dataset,
    reference_item,
)
from neurovfm import _core
from neurovfm.datasets import ImageDataset, load_study_labels
from neurovfm.errors import ImageNotFoundError, ImageReadError


@pytest.fixture(scope="module")
def ds_root(tmp_path_factory, scan_dir):
    return cached_dataset(tmp_path_factory, scan_dir)


def _cached(root, item):
    """The cached uint8 volume and flags an item was made from (read with torch.load)."""
    study, image = item["path"].split("/")
    key = f"_{item['window']}" if item["mode"] == "ct" else ""
    p = os.path.join(root, "processed", study)
    vol = torch.load(os.path.join(p, f"{image}{key}.pt"), weights_only=True, mmap=True).numpy()
    flags = torch.load(os.path.join(p, f"{image}_mask.pt"), weights_only=True, mmap=True).numpy()
    return vol, flags


def _check(item, ref, dtype=np.float32):
    img = item["img"].numpy()
    assert img.dtype == dtype
    np.testing.assert_array_equal(img, ref["img"])
    np.testing.assert_array_equal(item["filtered"].numpy(), ref["filtered"])
    np.testing.assert_array_equal(item["coords"].numpy(), ref["coords"])
    np.testing.assert_array_equal(item["size"].numpy(), ref["size"])
    assert item["coords"].dtype == torch.int32 and item["filtered"].dtype == torch.uint8
    assert item["size"].dtype == torch.int32


# --- the kernel on synthetic volumes --------------------------------------------------------------


def _random_plan(rng, grid):
    size = [int(rng.integers(1, s + 1)) for s in grid]
    start = [int(rng.integers(0, s - z + 1)) for s, z in zip(grid, size)]
    return start, size, bool(rng.integers(2)), tuple(bool(b) for b in rng.integers(0, 2, 3))


@pytest.mark.parametrize("grid", [(1, 1, 1), (1, 3, 2), (2, 1, 5), (3, 7, 5), (5, 2, 3)])
@pytest.mark.parametrize("dtype", ["float32", "uint8"])
@pytest.mark.parametrize("tokens", [True, False])
def test_kernel_matches_reference(grid, dtype, tokens):
    rng = np.random.default_rng(sum(grid) * 7 + tokens)
    shape = (grid[0] * 4, grid[1] * 16, grid[2] * 16)
    base = rng.integers(0, 256, (shape[0] + 3, shape[1] + 5, shape[2] * 2), dtype=np.uint8)
    flags = rng.integers(0, 2, grid, dtype=np.uint8)
    views = [
        np.ascontiguousarray(base[: shape[0], : shape[1], : shape[2]])[None],  # the cache's [1, D, H, W]
        base[1 : shape[0] + 1, 2 : shape[1] + 2, 1 : 2 * shape[2] : 2],  # strided
        np.ascontiguousarray(base[: shape[0], : shape[1], : shape[2]])[::-1, :, ::-1],  # negative strides
    ]
    for vol in views:
        for _ in range(6):
            start, size, tr, flips = _random_plan(rng, grid)
            img, coords, filt, size_out = _core.make_item(vol, flags, start, size, tr, flips, dtype, tokens, 2)
            ref = reference_item(vol, flags, start, size, tr, flips, np.float32 if dtype == "float32" else np.uint8)
            np.testing.assert_array_equal(img, ref["img"] if tokens else ref["volume"])
            assert img.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(filt, ref["filtered"])
            np.testing.assert_array_equal(coords, ref["coords"])
            np.testing.assert_array_equal(size_out, ref["size"])


def test_uint8_to_float_is_exact_division_for_all_values():
    """float(x) / 255.0f bit for bit, for all 256 values and every path of the kernel."""
    vals = np.arange(256, dtype=np.uint8)
    vol = np.tile(vals.reshape(1, 16, 16), (4, 1, 1))[None]
    vol = np.concatenate([vol, vol[:, :, ::-1]], axis=1).reshape(1, 8, 16, 16)
    expect = vals.astype(np.float32) / np.float32(255)
    for tr in (False, True):
        for flips in [(False,) * 3, (True,) * 3]:
            img, *_ = _core.make_item(vol, None, None, None, tr, flips, "float32", True, 1)
            got = img.reshape(-1)
            assert np.array_equal(np.sort(got.view(np.uint32)), np.sort(np.tile(expect, 8).view(np.uint32)))
            back = np.rint(got * 255).astype(np.uint8)
            np.testing.assert_array_equal(got.view(np.uint32), expect[back].view(np.uint32))


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_kernel_same_bytes_for_1_2_7_threads(dtype):
    rng = np.random.default_rng(3)
    vol = rng.integers(0, 256, (1, 32, 176, 208), dtype=np.uint8)
    flags = rng.integers(0, 2, (8, 11, 13), dtype=np.uint8)
    for _ in range(4):
        plan = _random_plan(rng, flags.shape)
        outs = [_core.make_item(vol, flags, *plan, dtype, True, t) for t in (1, 2, 7)]
        for o in outs[1:]:
            for a, b in zip(outs[0], o):
                assert a.tobytes() == b.tobytes()


def test_kernel_errors():
    vol = np.zeros((1, 8, 32, 32), np.uint8)
    flags = np.zeros((2, 2, 2), np.uint8)
    with pytest.raises(TypeError, match="uint8"):
        _core.make_item(vol.astype(np.float32), flags)
    with pytest.raises(ValueError, match="multiple of"):
        _core.make_item(np.zeros((1, 8, 30, 32), np.uint8), None)
    with pytest.raises(ValueError, match="token grid"):
        _core.make_item(vol, np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="does not fit"):
        _core.make_item(vol, flags, (1, 0, 0), (2, 2, 2))
    with pytest.raises(ValueError, match="does not fit"):
        _core.make_item(vol, flags, (0, 0, 0), (0, 1, 1))
    with pytest.raises(ValueError, match="dtype"):
        _core.make_item(vol, flags, dtype="float16")
    with pytest.raises(ValueError, match=r"\[1, D, H, W\]"):
        _core.make_item(np.zeros((2, 8, 32, 32), np.uint8), None)


# --- items from the real-scan cache --------------------------------------------------------------


def test_items_equal_the_cached_volume_tokens(ds_root):
    ds = ImageDataset(ds_root, seed=1, study_labels=LABELS)
    expected = [(s, os.path.basename(p).replace(".nii.gz", "")) for s, (_, ps) in STUDIES.items() for p in ps]
    assert sorted(it["path"] for it in ds) == sorted(f"{s}/{i}" for s, i in expected)
    for item in ds:
        vol, flags = _cached(ds_root, item)
        _check(item, reference_item(vol, flags))
        assert item["study"] == item["path"].split("/")[0] and item["label"] == LABELS[item["study"]]
        assert item["mode"] == STUDIES[item["study"]][0]
        assert (item["window"] in ("brain", "blood", "bone")) == (item["mode"] == "ct")
        assert item["crop"] == ((0, 0, 0), tuple(flags.shape)) and item["transpose"] is False
        assert item["flips"] == (False, False, False)


def test_items_uint8_and_volume_layout(ds_root):
    ds8 = ImageDataset(ds_root, seed=2, img_dtype=torch.uint8, random_crop=True, augment=True)
    dsv = ImageDataset(ds_root, seed=2, tokenize=False, random_crop=True, augment=True)
    for i in range(len(ds8)):
        a, b = ds8[i], dsv[i]
        assert a["crop"] == b["crop"] and a["flips"] == b["flips"] and a["window"] == b["window"]
        vol, flags = _cached(ds_root, a)
        ref8 = reference_item(vol, flags, *a["crop"], a["transpose"], a["flips"], dtype=np.uint8)
        _check(a, ref8, np.uint8)
        ref = reference_item(vol, flags, *b["crop"], b["transpose"], b["flips"])
        assert tuple(b["img"].shape) == ref["volume"].shape
        np.testing.assert_array_equal(b["img"].numpy(), ref["volume"])
        np.testing.assert_array_equal(b["filtered"].numpy(), ref["filtered"])
    assert ImageDataset(ds_root, img_dtype="uint8").img_dtype == "uint8"


def test_crop_and_augment_items_match_rebuilt_reference(ds_root):
    ds = ImageDataset(ds_root, seed=5, random_crop=True, augment=True, max_crop_size=(3, 6, 5))
    seen_transpose, seen_flip, seen_crop = set(), set(), 0
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            vol, flags = _cached(ds_root, item)
            start, size = item["crop"]
            whole = tuple(start) == (0, 0, 0) and tuple(size) == flags.shape
            if not whole:
                seen_crop += 1
                for k in range(3):
                    assert 1 <= size[k] <= min((3, 6, 5)[k], flags.shape[k])
                    assert 0 <= start[k] <= flags.shape[k] - size[k]
                box = flags[start[0] : start[0] + size[0], start[1] : start[1] + size[1], start[2] : start[2] + size[2]]
                assert np.count_nonzero(box == 0) > 0.1 * box.size
            _check(item, reference_item(vol, flags, start, size, item["transpose"], item["flips"]))
            seen_transpose.add(item["transpose"])
            seen_flip.update((k, f) for k, f in enumerate(item["flips"]))
    assert seen_transpose == {False, True} and len(seen_flip) == 6 and seen_crop > 0


def test_item_geometry_places_voxels_where_the_reference_image_has_them(ds_root):
    """Each item's ``geometry`` (crop, swap and flips included) maps its voxel (d, h, w) to
    a patient point; SimpleITK's point-to-index map of the reference's preprocessed image,
    seen through the reference's view, finds the cached voxel there with the same value."""
    import reference as R
    from neurovfm.data import voxel_to_patient

    ds = ImageDataset(
        ds_root, seed=3, random_crop=True, augment=True, max_crop_size=(3, 6, 5), tokenize=False, img_dtype=torch.uint8
    )
    rng = np.random.default_rng(0)
    refs = {}
    seen = set()
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            if item["path"] not in refs:
                e = ds._entries[i]
                img = R.ref_load(os.path.join(ds.data_dir, e.path), e.series_uid)[1]
                refs[item["path"]] = (img, R.ref_prepare(img, item["mode"])[2])
            img, view = refs[item["path"]]
            geom = item["geometry"]
            vol = item["img"].numpy()[0]
            assert geom.shape == vol.shape
            cached, _flags = _cached(ds_root, item)
            t = {0: (0, 1, 2), 1: (1, 0, 2), 2: (2, 1, 0)}[view]
            dhw = [rng.integers(0, n, 40) for n in vol.shape]
            pts = voxel_to_patient(geom, *dhw)
            for k in range(40):
                x, y, z = img.TransformPhysicalPointToIndex(tuple(float(v) for v in pts[k]))
                zyx = (z, y, x)
                assert vol[dhw[0][k], dhw[1][k], dhw[2][k]] == cached[0][zyx[t[0]], zyx[t[1]], zyx[t[2]]]
            seen.add((item["transpose"], item["flips"]))
    assert len(seen) > 4  # swapped and flipped items were checked


def test_draws_replay_from_seed_epoch_index(ds_root):
    """The documented draw order, replayed from ImageDataset.rng(index, epoch)."""
    ds = ImageDataset(
        ds_root, seed=11, random_crop=True, augment=True, max_crop_size=(2, 4, 4), ct_window_probs=(0.2, 0.3, 0.5)
    )
    cum = np.cumsum([0.2, 0.3, 0.5])
    for epoch in (0, 3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            rng = ds.rng(i, epoch)
            if item["mode"] == "ct":
                assert item["window"] == ("brain", "blood", "bone")[int(np.searchsorted(cum, rng.random(), "right"))]
            _, flags = _cached(ds_root, item)
            crop = ((0, 0, 0), tuple(flags.shape))
            hi = [min(m, n) for m, n in zip((2, 4, 4), flags.shape)]
            for _ in range(5):
                size = [rng.randint(1, h) for h in hi]
                start = [rng.randint(0, n - z) for n, z in zip(flags.shape, size)]
                box = flags[start[0] : start[0] + size[0], start[1] : start[1] + size[1], start[2] : start[2] + size[2]]
                if np.count_nonzero(box == 0) > 0.1 * box.size:
                    crop = (tuple(start), tuple(size))
                    break
            assert item["crop"] == crop
            u = [rng.random() for _ in range(4)]
            assert item["transpose"] == (u[0] < 0.5) and item["flips"] == tuple(x < 0.5 for x in u[1:])
    # same seed -> same items; another seed or epoch -> other draws
    a = ImageDataset(ds_root, seed=11, random_crop=True, augment=True)
    b = ImageDataset(ds_root, seed=11, random_crop=True, augment=True)
    c = ImageDataset(ds_root, seed=12, random_crop=True, augment=True)

    def draws(d):
        return [(d[i]["crop"], d[i]["flips"], d[i]["transpose"], d[i]["window"]) for i in range(len(d))]

    assert draws(a) == draws(b)
    assert draws(a) != draws(c)
    b.set_epoch(1)
    assert draws(a) != draws(b)


def test_ct_window_probs(ds_root):
    for bad in [(0.5, 0.5), (0.5, 0.5, 0.1), (1.2, -0.2, 0.0), (float("nan"), 0.5, 0.5), "abc"]:
        with pytest.raises(ValueError, match="ct_window_probs"):
            ImageDataset(ds_root, ct_window_probs=bad)
    ImageDataset(ds_root, ct_window_probs=(0.3, 0.3, 0.4 + 5e-7))  # within 1e-6
    ds = ImageDataset(ds_root, ct_window_probs=(0, 0, 1), mode_filter="CT", seed=0)
    assert {ds.study_of(i) for i in range(len(ds))} == {"ct_body", "ct_head"}
    wins = set()
    for e in range(5):
        ds.set_epoch(e)
        wins |= {ds[i]["window"] for i in range(len(ds))}
    assert wins == {"bone"}
    ds = ImageDataset(ds_root, ct_window_probs=(0.5, 0.5, 0), mode_filter="ct", seed=0)
    wins = []
    for e in range(20):
        ds.set_epoch(e)
        wins += [ds[i]["window"] for i in range(len(ds))]
    assert set(wins) == {"brain", "blood"}
    assert all(it["window"] is None for it in ImageDataset(ds_root, mode_filter="mri"))
    with pytest.raises(ValueError, match="mode_filter"):
        ImageDataset(ds_root, mode_filter="pet")


def test_labels_csv_json_dict_and_missing(ds_root, tmp_path):
    (tmp_path / "scalar.csv").write_text("study,label\nct_body,1\nct_head,0\nmr_stroke,2.5\nmr_t1,x\n")
    (tmp_path / "multi.csv").write_text("ct_body,1,0,1\nct_head,0,0,0\nmr_stroke,1,1,1\nmr_t1,0,1,0\n")
    (tmp_path / "labels.json").write_text(json.dumps({"ct_body": [1, 0], "ct_head": 3}))
    (tmp_path / "bad.csv").write_text("ct_body,1,2\n")
    assert load_study_labels(tmp_path / "scalar.csv") == {"ct_body": 1, "ct_head": 0, "mr_stroke": 2.5, "mr_t1": "x"}
    assert load_study_labels(tmp_path / "multi.csv")["mr_t1"] == [0, 1, 0]
    with pytest.raises(ValueError, match="0/1"):
        load_study_labels(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="none.csv: label file not found"):
        load_study_labels(tmp_path / "none.csv")
    ds = ImageDataset(ds_root, study_labels=tmp_path / "multi.csv")
    assert ds[0]["label"] == load_study_labels(tmp_path / "multi.csv")[ds[0]["study"]]
    with pytest.raises(KeyError, match="mr_stroke") as err:
        ImageDataset(ds_root, study_labels=tmp_path / "labels.json")
    assert "mr_t1" in str(err.value) and "missing_label" in str(err.value)
    skip = ImageDataset(ds_root, study_labels={"ct_body": 1}, missing_label="skip")
    assert [skip.study_of(i) for i in range(len(skip))] == ["ct_body"]
    none = ImageDataset(ds_root, study_labels={"ct_body": 1}, missing_label="none")
    assert len(none) == 5 and {none._entries[i].label for i in range(5)} == {1, None}
    with pytest.raises(ValueError, match="missing_label"):
        ImageDataset(ds_root, study_labels={}, missing_label="drop")


def test_cache_miss_fallback_and_errors(ds_root, tmp_path):
    root = copy_dataset(ds_root, tmp_path / "ds")
    os.unlink(root / "processed" / "mr_t1" / "T1.json")  # a cache miss
    with open(root / "processed" / "ct_body" / "body_small_brain.pt", "r+b") as f:
        f.truncate(100)  # a corrupt entry
    ref = ImageDataset(ds_root, seed=3, random_crop=True, augment=True)
    fb = ImageDataset(root, seed=3, random_crop=True, augment=True)
    raw = ImageDataset(root, seed=3, random_crop=True, augment=True, use_cache=False)
    for i in range(len(ref)):
        a, b, c = ref[i], fb[i], raw[i]
        for k in ("img", "coords", "filtered", "size"):
            assert torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]), (a["path"], k)
    strict = ImageDataset(root, seed=3, fallback_to_raw=False)
    idx = next(i for i in range(len(strict)) if strict.study_of(i) == "mr_t1")
    with pytest.raises(ImageNotFoundError, match="mr_t1/T1"):
        strict[idx]
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        ImageDataset(tmp_path / "nowhere")


def test_bad_image_raises_or_is_skipped(tmp_path, scan_dir):
    from neurovfm.datasets import collate_padded

    studies = {"good": ("ct", ["ct/body_small.nii.gz"]), "bad": ("mri", ["edge/nifti/example4d.nii.gz"])}
    make_dataset(tmp_path, scan_dir, studies)
    ds = ImageDataset(tmp_path, use_cache=False)
    bad = next(i for i in range(len(ds)) if ds.study_of(i) == "bad")
    with pytest.raises(ImageReadError, match="example4d"):
        ds[bad]
    skip = ImageDataset(tmp_path, use_cache=False, on_error="skip")
    assert skip[bad] is None
    batch = collate_padded([skip[i] for i in range(len(skip))])
    assert batch["study"] == ["good"]
    assert collate_padded([None]) is None
    with pytest.raises(ValueError, match="on_error"):
        ImageDataset(tmp_path, on_error="ignore")


def test_transform_threads_and_indexing(ds_root):
    seen = []

    def tf(item):
        seen.append(item["path"])
        item["extra"] = 1
        return item

    ds = ImageDataset(ds_root, transform=tf, seed=4, random_crop=True, augment=True)
    last = ds[-1]
    assert last["extra"] == 1 and seen == [last["path"]] == ["mr_t1/T1"]
    with pytest.raises(IndexError, match=f"index {len(ds)} out of range for {len(ds)} images"):
        ds[len(ds)]
    with pytest.raises(TypeError, match="transform must be callable, got int"):
        ImageDataset(ds_root, transform=3)
    items = [
        [ImageDataset(ds_root, seed=4, random_crop=True, augment=True, threads=t)[i] for i in range(len(ds))]
        for t in (1, 2, 7)
    ]
    for other in items[1:]:
        for a, b in zip(items[0], other):
            assert a["img"].numpy().tobytes() == b["img"].numpy().tobytes()
    groups = ds.study_groups()
    assert [s for s, _ in groups] == list(STUDIES) and sum(len(ix) for _, ix in groups) == len(ds)
    assert "ImageDataset(" in repr(ds)


def test_dataloader_workers_match_in_process_items_per_epoch(ds_root):
    """Draws depend on (seed, epoch, index) only: 2 persistent workers give the
    in-process items, and set_epoch reaches them."""
    ds = ImageDataset(ds_root, seed=8, random_crop=True, augment=True, max_crop_size=(2, 3, 3))
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    per_epoch = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        got = {it["index"]: it for it in loader}
        assert sorted(got) == list(range(len(ds)))
        for i, it in got.items():
            want = ds[i]
            # batch_size=None: DataLoader's default_convert turns tuples into lists
            assert it["crop"] == [list(v) for v in want["crop"]] and it["flips"] == list(want["flips"]), (epoch, i)
            assert torch.equal(it["img"], want["img"])
        per_epoch.append([(str(got[i]["crop"]), str(got[i]["flips"]), got[i]["transpose"]) for i in range(len(ds))])
    assert per_epoch[0] != per_epoch[1]


# --- one rule of a valid entry, errors of the family, batching without a collate ---------------


def test_changed_source_is_a_cache_miss_for_the_dataset(ds_root, tmp_path):
    """The dataset applies the builder's rule: an entry whose scan changed is stale, never served."""
    from neurovfm.data.cache import CacheManager

    root = copy_dataset(ds_root, tmp_path / "ds")
    strict = ImageDataset(root, seed=3, random_crop=True, augment=True, fallback_to_raw=False)
    i = next(k for k in range(len(strict)) if strict.study_of(k) == "mr_t1")
    cached_item = strict[i]  # its sidecar is now parsed and kept by this process
    src = root / "raw" / "mr_t1" / "T1.nii.gz"
    target = os.readlink(src)
    os.unlink(src)
    src.write_bytes(Path(target).read_bytes())  # same scan, new file: size + mtime differ from the record
    os.utime(src, ns=(1, 1))
    assert CacheManager(root).entry_status("mr_t1", "T1") == "stale"
    assert CacheManager(root).load_image("mr_t1", "T1") is None
    for ds in (strict, ImageDataset(root, seed=3, fallback_to_raw=False)):  # the same object, and a new one
        with pytest.raises(ImageNotFoundError, match=r"mr_t1/T1: not in the cache .* or stale"):
            ds[i]
    # with the fallback, the raw scan is encoded: same numbers as the (old) cached item
    fallback = ImageDataset(root, seed=3, random_crop=True, augment=True)
    item = fallback[i]
    for k in ("img", "coords", "filtered", "size"):
        assert torch.equal(item[k], cached_item[k]), k
    # a rebuild makes the entry valid again, for the same dataset object too
    assert CacheManager(root).build_cache(num_workers=1, study_names=["mr_t1"], progress=False).done == ["mr_t1/T1"]
    item = strict[i]
    for k in ("img", "coords", "filtered", "size"):
        assert torch.equal(item[k], cached_item[k]), k


def test_dataset_errors_are_the_library_family(ds_root):
    from neurovfm.data.metadata import EmptyDatasetError
    from neurovfm.errors import NotInDatasetError
    from neurovfm.data.cache.ptfile import PtFormatError
    from neurovfm.errors import DatasetError, InvalidTypeError, MissingLabelError
    from neurovfm.errors import NeuroVFMError

    assert issubclass(PtFormatError, NeuroVFMError) and issubclass(PtFormatError, ValueError)
    cases = [
        (dict(mode_filter="pet"), DatasetError, ValueError, "mode_filter must be 'ct', 'mri' or None"),
        (dict(max_crop_size=(1, 2)), DatasetError, ValueError, "max_crop_size must be 3 positive"),
        (dict(img_dtype="float16"), DatasetError, ValueError, "img_dtype must be"),
        (dict(threads=0), DatasetError, ValueError, "threads must be a positive integer"),
        (dict(transform="x"), InvalidTypeError, TypeError, "transform must be callable, got str"),
        (dict(studies=["nope"]), NotInDatasetError, KeyError, r"unknown studies .*'nope'"),
        (dict(study_labels={"ct_body": 1}), MissingLabelError, KeyError, "3 studies have no label"),
        (dict(studies=["ct_body"], mode_filter="mri"), EmptyDatasetError, ValueError, "no image left"),
    ]
    for kwargs, family, builtin, message in cases:
        with pytest.raises(family, match=message) as err:
            ImageDataset(ds_root, **kwargs)
        assert isinstance(err.value, NeuroVFMError) and isinstance(err.value, builtin), kwargs


def test_default_collate_fails_with_a_hint_and_collate_fn_is_offered(ds_root):
    from neurovfm.datasets import collate_packed, collate_padded
    from neurovfm.errors import DatasetError

    ds = ImageDataset(ds_root, seed=0)
    assert ds.collate_fn is collate_packed
    assert ImageDataset(ds_root, tokenize=False).collate_fn is collate_padded
    with pytest.raises(DatasetError, match=r"collate_fn=dataset\.collate_fn"):
        next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=ds.collate_fn)))
    assert batch["cu_seqlens"].shape == (5,) and batch["img"].shape[1] == 1024
    # items torch's default collate can stack pass untouched (same shapes, no None field)
    same = ImageDataset(
        ds_root,
        studies=["mr_stroke", "mr_t1"],
        study_labels={"mr_stroke": 1, "mr_t1": 0},
        transform=lambda it: {k: it[k] for k in ("img", "filtered", "label")},
    )
    assert [same[k]["img"].shape for k in (1, 2)] == [same[2]["img"].shape] * 2  # mr_stroke/T1, mr_t1/T1
    got = next(iter(torch.utils.data.DataLoader(same, batch_size=2, sampler=[1, 2])))
    assert got["img"].shape[0] == 2 and got["label"].tolist() == [1, 0]


def test_datasets_import_under_OO_and_never_read_the_format_themselves():
    import subprocess
    import sys

    from conftest import package_env

    code = "import neurovfm.datasets as d; assert 'DataLoader' in d.TRAINING_EXAMPLE"
    out = subprocess.run([sys.executable, "-OO", "-c", code], capture_output=True, text=True, env=package_env())
    assert out.returncode == 0, out.stderr
    import neurovfm.datasets as nds

    folder = os.path.dirname(nds.__file__)
    for fn in sorted(os.listdir(folder)):
        if fn.endswith(".py"):
            with open(os.path.join(folder, fn)) as f:
                assert "ptfile" not in f.read(), f"{fn}: the cache format is neurovfm.data.cache.entry's"
