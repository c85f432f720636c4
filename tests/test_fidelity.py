"""Fidelity: the cache's bytes are the reference cache's bytes, on every path.

Every output that carries cache values (``prepare_for_inference(quantize=True)``, the cache
files, ``CacheManager.load_image``, ``ImageDataset`` items plain, cropped, augmented and
from the raw fallback) is compared with the reference's formula applied in NumPy float64
(:func:`reference.ref_cache`: ``(arr * 255).astype(np.uint8)`` of the float64 arrays), never
with the library's own output run through another of its paths. And the resampled image does
not depend on the entry point: streaming NIfTI, whole-volume read, DICOM, in-memory image,
any thread count.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image, random_volume, scan_path, signed_permutations
from itemdata import reference_item

import reference as R
from corpus import VOLUMES
from neurovfm import set_num_threads
from neurovfm.data import load_image, prepare_for_inference, preprocess_image

IDS = [v[0] for v in VOLUMES]


@pytest.fixture(autouse=True)
def _default_threads():
    yield
    set_num_threads(None)


pytestmark = pytest.mark.usefixtures("quiet_itk")


def _assert_same_image(a: sitk.Image, b: sitk.Image, what: str):
    assert a.GetSize() == b.GetSize() and a.GetPixelID() == b.GetPixelID(), what
    assert a.GetSpacing() == b.GetSpacing(), what
    # (a DICOM header parsed by the library and by GDCM may differ in the last bit)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-12, err_msg=what)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=1e-9, err_msg=what)
    x, y = sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)
    differ = np.count_nonzero(x != y)
    assert differ == 0, f"{what}: {differ} of {x.size} voxels differ"


def _assert_same_bytes_every_way(path, in_memory: sitk.Image, what: str, threads=(1, 2)):
    """load_image(path) and preprocess_image(in_memory) at each thread count: one image."""
    got = {}
    for n in threads:
        set_num_threads(n)
        got[f"load_image, {n} threads"] = load_image(path)
        got[f"preprocess_image(SimpleITK read), {n} threads"] = preprocess_image(in_memory)
    first = next(iter(got.values()))
    for how, img in got.items():
        _assert_same_image(img, first, f"{what}: {how}")
    return first


def _assert_quantized_is_reference(img: sitk.Image, mode: str):
    got = prepare_for_inference(img, mode, quantize=True)
    ref = R.ref_cache(img, mode)
    if ref is None:
        assert got is None
        return
    arrs, mask, view = got
    rarrs, rmask, rview = ref
    assert view == rview and len(arrs) == len(rarrs)
    for k, (a, r) in enumerate(zip(arrs, rarrs)):
        assert a.dtype == np.uint8 and a.shape == r.shape
        differ = np.count_nonzero(a != r)
        assert differ == 0, f"window {k}: {differ} of {a.size} bytes differ from the reference formula"
    np.testing.assert_array_equal(mask, rmask)


# --- the numbers, worked out by hand ----------------------------------------------------------------


def _ct_image(values):
    """A [4, 16, 16] int16 image (spacing 1x1x4) whose first voxels are ``values``, the rest 0 HU."""
    arr = np.zeros((4, 16, 16), np.int16)
    arr.reshape(-1)[: len(values)] = values
    return make_image(arr, spacing=(1.0, 1.0, 4.0))


def test_ct_window_bytes_worked_out_by_hand():
    # brain window: (clip(x, 0, 80) - 0) / (80 + 1e-8) * 255, truncated. The + 1e-8 keeps every
    # value just below the next integer: 80 HU -> 254.99999997 -> 254; 16 HU -> 50.99999999 -> 50.
    hu = [-1000, -1, 0, 1, 15, 16, 17, 32, 40, 48, 64, 79, 80, 81, 1000, 3071]
    brain = [0, 0, 0, 3, 47, 50, 54, 101, 127, 152, 203, 251, 254, 254, 254, 254]
    # blood: lower -20, upper 180 (width 200); bone: lower -800, upper 2000 (width 2800).
    blood = [0, 24, 25, 26, 44, 45, 47, 66, 76, 86, 107, 126, 127, 128, 254, 254]
    bone = [0, 72, 72, 72, 74, 74, 74, 75, 76, 77, 78, 80, 80, 80, 163, 254]
    arrs, _mask, view = prepare_for_inference(_ct_image(hu), "ct", quantize=True)
    assert view == 0
    for got, want in zip(arrs, (brain, blood, bone)):
        assert got.reshape(-1)[: len(hu)].tolist() == want
    # the float32 output is the same float64 value, rounded (80 HU rounds up to 1.0 as float32,
    # which is why the cache must never be quantised from it)
    floats, _, _ = prepare_for_inference(_ct_image(hu), "ct")
    assert floats[0].reshape(-1)[12] == np.float32(80 / (80 + 1e-8)) == np.float32(1.0)


def test_mri_top_is_254():
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 1000, (8, 32, 32)).astype(np.uint16)
    arr[0, 0, :20] = 5000  # above the 99.5th percentile: clipped to it
    (q,), _mask, _view = prepare_for_inference(make_image(arr, spacing=(1.0, 1.0, 4.0)), "mri", quantize=True)
    assert q.max() == 254 and q.min() == 0
    assert (q[0, 0, 0, :20] == 254).all()


# --- synthetic volumes, both sides of the value-table threshold --------------------------------------


@pytest.mark.parametrize("mode", ["ct", "mri"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.float32, np.float64])
# (4, 16, 16): per-voxel arithmetic; (16, 128, 128) = 262144 voxels: the 16-bit value tables
@pytest.mark.parametrize("shape", [(4, 16, 16), (16, 128, 128)])
def test_quantize_is_the_reference_formula(mode, dtype, shape):
    rng = np.random.default_rng(zlib.crc32(repr((mode, np.dtype(dtype).str, shape)).encode()))
    arr = random_volume(rng, shape, dtype)
    if mode == "ct" and np.dtype(dtype).kind != "u" and np.dtype(dtype).itemsize >= 2:
        arr.reshape(-1)[:64] = np.arange(-16, 48) * 5  # exact multiples: 0, 16, 32, 48, 64, 80 HU, ...
    _assert_quantized_is_reference(make_image(arr, spacing=(0.9, 0.9, 4.0)), mode)


# --- one order of resampling axes for every entry point ---------------------------------------------

#: Directions whose storage axis (numpy 0) becomes each of the three RPI axes, reversed or not.
_DIRECTIONS = [m for i, m in enumerate(signed_permutations()) if i % 7 == 0]


# below and above the streaming reader's 4 MB slab (one slab, several slabs)
_CASES = [
    (shape, dtype, k)
    for shape in [(20, 48, 40), (36, 256, 240)]
    for dtype in [np.uint8, np.int16, np.float32]
    for k in range(len(_DIRECTIONS))
    if shape[0] == 20 or dtype != np.uint8 or k % 2 == 0  # large 8-bit: every other direction
]


@pytest.mark.parametrize("shape,dtype,direction", _CASES)
def test_streaming_whole_volume_and_in_memory_give_the_same_bytes(tmp_path, direction, dtype, shape):
    rng = np.random.default_rng(direction)
    arr = random_volume(rng, shape, dtype)
    img = make_image(arr, spacing=(0.8, 0.95, 2.7), origin=(3.0, -2.0, 1.0), direction=_DIRECTIONS[direction])
    path = str(tmp_path / "scan.nii.gz")
    sitk.WriteImage(img, path)
    first = _assert_same_bytes_every_way(path, sitk.ReadImage(path), "nifti", threads=(1, 2, 3))
    # and the reference's formula on it (also the parity rule holds: test_parity_synthetic)
    _assert_quantized_is_reference(first, "ct" if np.dtype(dtype).kind != "u" else "mri")


@pytest.mark.parametrize(
    "shape,spacing,streamed",
    [
        ((24, 96, 80), (0.5, 0.5, 5.0), True),  # thick slices, stored slice by slice
        ((24, 96, 80), (0.5, 0.5, 1.0), True),  # thin slices, stored slice by slice
        ((96, 80, 24), (1.0, 0.5, 0.5), False),  # slice axis x, stored along z
    ],
)
def test_nifti_streams_exactly_when_its_storage_axis_is_the_slice_axis(tmp_path, monkeypatch, shape, spacing, streamed):
    """The slice axis is always the last pass (docs/numbers.md, "Resampling order"): a file
    stored slice by slice streams, thick or thin; one stored along another axis is decoded
    whole. Same bytes either way."""
    from neurovfm.data import io

    calls = []
    real = io._preprocess_nifti_streaming
    monkeypatch.setattr(io, "_preprocess_nifti_streaming", lambda *a: calls.append(1) or real(*a))
    arr = random_volume(np.random.default_rng(1), shape, np.int16)
    path = str(tmp_path / "scan.nii.gz")
    sitk.WriteImage(make_image(arr, spacing=spacing), path)
    got = load_image(path)
    assert len(calls) == (1 if streamed else 0)
    _assert_same_image(got, preprocess_image(sitk.ReadImage(path)), f"spacing {spacing}")


def test_dicom_series_and_its_simpleitk_read_give_the_same_bytes(tmp_path):
    from test_dicom import write_series

    rng = np.random.default_rng(7)
    arrays = list(random_volume(rng, (30, 64, 56), np.int16))
    folder = tmp_path / "series"
    write_series(folder, arrays, spacing=(0.45, 0.45), iop=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    _assert_same_bytes_every_way(folder, R.ref_read(folder), "DICOM series")


# --- the real corpus (or its phantom stand-ins): every volume ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("rel,mode", VOLUMES, ids=IDS)
def test_corpus_entry_points_and_threads_give_the_same_bytes(scan_dir, rel, mode):
    # sitk.ReadImage, or SimpleITK's series reader for a folder (the corpus volume, or its
    # phantom stand-in without the corpus)
    path = scan_path(scan_dir, rel)
    _assert_same_bytes_every_way(path, R.ref_read(path), rel)


@pytest.mark.slow
@pytest.mark.parametrize("rel,mode", VOLUMES, ids=IDS)
def test_corpus_quantize_is_the_reference_formula(scan_dir, rel, mode):
    _assert_quantized_is_reference(load_image(scan_path(scan_dir, rel)), mode)


# --- the cache and the dataset on every corpus volume --------------------------------------------------


def _study(i: int) -> str:
    return f"v{i:02d}"


@pytest.fixture(scope="module")
def corpus_cache(tmp_path_factory, scan_dir):
    """Every corpus volume (without the corpus: every phantom stand-in of one) as a study of
    its own, cached; and each one's reference bytes."""
    from neurovfm.data.cache import CacheManager
    from neurovfm.data.metadata import DatasetMetadata

    root = tmp_path_factory.mktemp("fidelity_ds")
    modes, expected = {}, {}
    volumes = [(i, rel, mode) for i, (rel, mode) in enumerate(VOLUMES) if (scan_dir / rel).exists()]
    for i, rel, mode in volumes:
        d = root / "raw" / _study(i)
        d.mkdir(parents=True)
        os.symlink(scan_dir / rel, d / os.path.basename(rel))
        modes[_study(i)] = mode
    meta = DatasetMetadata.from_directory(root, modes)
    meta.save()
    summary = CacheManager(root).build_cache(num_workers=2, progress=False)
    assert not summary.failed, summary.failed
    for i, rel, mode in volumes:
        (rec,) = meta.get_study(_study(i)).images
        expected[_study(i)] = (rec.name, mode, R.ref_cache(load_image(scan_dir / rel), mode))
    return root, expected


def _files(image, mode):
    vols = [f"{image}_{w}.pt" for w in ("brain", "blood", "bone")] if mode == "ct" else [f"{image}.pt"]
    return vols, f"{image}_mask.pt"


@pytest.mark.slow
def test_cache_files_and_load_image_are_the_reference_bytes(corpus_cache):
    torch = pytest.importorskip("torch")
    from neurovfm.data.cache import CacheManager

    root, expected = corpus_cache
    cm = CacheManager(root)
    for study, (image, mode, (rarrs, rmask, _view)) in expected.items():
        vols, mask = _files(image, mode)
        for name, r in zip(vols, rarrs):
            t = torch.load(root / "processed" / study / name, weights_only=True, mmap=True).numpy()
            assert t.shape == r.shape
            differ = np.count_nonzero(t != r)
            assert differ == 0, f"{study}/{name}: {differ} of {r.size} bytes differ from the reference formula"
        m = torch.load(root / "processed" / study / mask, weights_only=True, mmap=True).numpy()
        np.testing.assert_array_equal(m.ravel(), rmask)
        got = cm.load_image(study, image)
        got = got if isinstance(got, list) else [got]
        for g, r in zip(got, rarrs):
            np.testing.assert_array_equal(g["data"].numpy(), r.astype(np.float32) / np.float32(255))


def _reference_item(expected, item, dtype=np.float32):
    """The item the reference's cache bytes give for the crop, swap and flips ``item`` drew."""
    image, mode, (rarrs, rmask, _view) = expected[item["study"]]
    vol = rarrs[("brain", "blood", "bone").index(item["window"])] if mode == "ct" else rarrs[0]
    d, h, w = vol.shape[1] // 4, vol.shape[2] // 16, vol.shape[3] // 16
    start, size = item["crop"]
    return reference_item(vol, rmask.reshape(d, h, w), start, size, item["transpose"], item["flips"], dtype)


def _check_item(item, ref, dtype=np.float32):
    img = item["img"].numpy()
    assert img.dtype == dtype, item["path"]
    differ = np.count_nonzero(img != ref["img"])
    assert differ == 0, f"{item['path']} ({item['window']}): {differ} of {img.size} values differ"
    np.testing.assert_array_equal(item["filtered"].numpy(), ref["filtered"])
    np.testing.assert_array_equal(item["coords"].numpy(), ref["coords"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["plain", "cropped+augmented", "uint8", "raw fallback"])
def test_dataset_items_are_the_reference_bytes(corpus_cache, kind):
    torch = pytest.importorskip("torch")
    from neurovfm.datasets import ImageDataset

    root, expected = corpus_cache
    opts = {
        "plain": {},
        "cropped+augmented": {"random_crop": True, "augment": True, "max_crop_size": (3, 5, 5)},
        "uint8": {"random_crop": True, "augment": True, "img_dtype": torch.uint8},
        "raw fallback": {"use_cache": False, "random_crop": True, "augment": True},
    }[kind]
    dtype = np.uint8 if kind == "uint8" else np.float32
    ds = ImageDataset(root, seed=11, ct_window_probs=(1 / 3, 1 / 3, 1 / 3), **opts)
    assert len(ds) == len(expected)
    windows = set()
    for epoch in range(2 if kind == "raw fallback" else 3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            _check_item(item, _reference_item(expected, item, dtype), dtype)
            windows.add(item["window"])
    assert {"brain", "blood", "bone"} <= windows


# --- every gzip read checks CRC-32 and ISIZE ------------------------------------------------------


def _write_gz(path, arr, scaled: bool):
    """A .nii.gz of ``arr``; ``scaled``: scl_slope 2 (SimpleITK reads it as float: not the
    library's direct decoder but SimpleITK's reader)."""
    import gzip
    import struct

    nii = Path(str(path)[: -len(".gz")])
    sitk.WriteImage(make_image(arr, spacing=(0.9, 0.9, 3.0)), str(nii))
    data = bytearray(nii.read_bytes())
    nii.unlink()
    if scaled:
        struct.pack_into("<ff", data, 112, 2.0, 1.0)
    Path(path).write_bytes(gzip.compress(bytes(data), compresslevel=1, mtime=0))


@pytest.mark.parametrize("damage", ["crc", "isize"])
@pytest.mark.parametrize("layout", ["int16", "float64", "scaled int16"])
# small: SimpleITK's header read already reaches the trailer; large: more than one 4 MB slab of
# the streaming reader and far more than SimpleITK's read buffer, so nothing but the library's
# own check reads the trailer
@pytest.mark.parametrize("shape", [(24, 40, 36), (40, 256, 256)])
def test_corrupt_gzip_trailer_is_refused_on_every_path(tmp_path, damage, layout, shape):
    from neurovfm.data import read_volume
    from neurovfm.errors import ImageReadError

    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1500, shape).astype(np.float64 if layout == "float64" else np.int16)
    path = tmp_path / "scan.nii.gz"
    _write_gz(path, arr, scaled=layout.startswith("scaled"))
    assert load_image(path) is not None  # intact: reads
    data = bytearray(path.read_bytes())
    data[-8 if damage == "crc" else -4] ^= 0x01
    path.write_bytes(bytes(data))
    match = "CRC checksum mismatch" if damage == "crc" else "length trailer does not match"
    for what, call in [
        ("load_image", lambda: load_image(path)),
        ("load_image(preprocess=False)", lambda: load_image(path, preprocess=False)),
        ("read_volume", lambda: read_volume(path)),
    ]:
        with pytest.raises(ImageReadError, match=match) as info:
            call()
        assert str(path) in str(info.value), what
