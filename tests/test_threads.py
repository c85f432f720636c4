"""Any thread count gives the same bytes (docs/threading.md: bit-identical for any thread count)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import random_volume

import neurovfm
import reference as R
from neurovfm import _core
from neurovfm.data import load_image, prepare_for_inference, tokenize

THREADS = [1, 2, 7]


@pytest.fixture(scope="module")
def volumes():
    """Volumes large enough that every kernel splits its work into many blocks."""
    rng = np.random.default_rng(42)
    return {
        np.dtype(dt).name: random_volume(rng, (36, 160, 144), dt)
        for dt in (np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64)
    }


def same_for_all_threads(fn):
    """fn(threads) for each thread count; all results must be byte-identical."""
    results = [fn(t) for t in THREADS]
    flat = [_bytes(r) for r in results]
    for t, b in zip(THREADS[1:], flat[1:]):
        assert b == flat[0], f"{t} threads differ from 1 thread"
    return results[0]


def _bytes(r):
    if isinstance(r, np.ndarray):
        return (r.dtype.str, r.shape, r.tobytes())
    if isinstance(r, (list, tuple)):
        return tuple(_bytes(x) for x in r)
    if isinstance(r, float):
        return np.float64(r).tobytes()
    return r


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32", "float32", "float64"])
@pytest.mark.parametrize(
    "plan",
    [
        ([9, 64, 64], [0, 0, 0], [4.0, 1.0, 1.0], [5.0, 0.45, 0.45]),  # downsample in-plane
        ([32, 112, 96], [3, 5, 1], [1.0, 1.0, 4.0], [1.0, 0.9, 3.0]),  # upsample with a crop
        ([36, 160, 144], [0, 0, 0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]),  # identity
    ],
)
def test_resample(volumes, dtype, plan):
    a = volumes[dtype]
    n_out, start, t, s = plan
    same_for_all_threads(lambda th: _core.resample_bspline(a, n_out, start, t, s, th))
    flipped = a[::-1, :, ::-1].transpose(0, 2, 1)
    same_for_all_threads(
        lambda th: _core.resample_bspline(flipped, [16, 48, 80], [1, 2, 3], [4.0, 1.0, 1.0], [2.0, 0.7, 0.8], th)
    )


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32", "float32", "float64"])
def test_percentiles_and_normalise(volumes, dtype):
    a = volumes[dtype][:, :, :128]
    (lo, p10, hi), mn, mx = same_for_all_threads(lambda th: _core.percentiles(a, [0.5, 10.0, 99.5], th))
    same_for_all_threads(lambda th: _core.percentiles(a[::-1, ::2], [0.0, 37.3, 100.0], th))
    same_for_all_threads(lambda th: _core.mri_normalise(a, lo, hi, max(lo, mn), min(hi, mx), p10, True, True, th))


@pytest.mark.parametrize("dtype", ["int16", "float32"])
def test_ct_windows(volumes, dtype):
    a = volumes[dtype][:, :, :128]
    same_for_all_threads(lambda th: _core.ct_windows(a, R.CT_WINDOWS, R.CT_FOREGROUND, True, True, th))
    same_for_all_threads(lambda th: _core.ct_windows(a[::-1, :, ::-1], R.CT_WINDOWS, R.CT_FOREGROUND, True, False, th))


@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64"])
def test_tokens_and_copies(volumes, dtype):
    a = volumes[dtype][:, :, :128]
    same_for_all_threads(lambda th: _core.tokenize(a, th))
    same_for_all_threads(lambda th: _core.tokenize(a[::-1, ::-1], th))
    same_for_all_threads(lambda th: _core.token_background(a > a.mean(), th))
    same_for_all_threads(lambda th: _core.copy_contiguous(a.transpose(2, 0, 1)[::-1], th))


@pytest.fixture
def restore_threads():
    yield
    neurovfm.set_num_threads(None)


def test_set_num_threads(restore_threads):
    neurovfm.set_num_threads(3)
    assert neurovfm.get_num_threads() == 3
    neurovfm.set_num_threads(None)
    assert neurovfm.get_num_threads() >= 1
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="number of threads must be a positive integer"):
            neurovfm.set_num_threads(bad)


def test_env_var(monkeypatch, restore_threads):
    neurovfm.set_num_threads(None)
    monkeypatch.setenv("NEUROVFM_NUM_THREADS", "5")
    assert neurovfm.get_num_threads() == 5
    neurovfm.set_num_threads(2)  # the explicit setting wins
    assert neurovfm.get_num_threads() == 2


@pytest.mark.slow
@pytest.mark.parametrize("rel,mode", [("mr/stroke/T2.nii.gz", "mri"), ("ct/phantom_head_1mm.nii.gz", "ct")])
def test_load_image_real_scan(scan_dir, restore_threads, rel, mode):
    def run(th):
        neurovfm.set_num_threads(th)
        img = load_image(scan_dir / rel)
        arrs, token_background, view, fg = prepare_for_inference(img, mode, return_foreground=True)
        tok = tokenize(arrs[0], token_background)
        return [sitk.GetArrayFromImage(img), list(arrs), token_background, fg, list(tok)]

    same_for_all_threads(run)
