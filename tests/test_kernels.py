"""The compiled kernels (neurovfm._core) against NumPy and SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import random_volume

import reference as R
from neurovfm import _core
from neurovfm.data import tokenize, untokenize
from neurovfm.errors import InvalidArgumentError, NeuroVFMError

ALL_DTYPES = [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.float32, np.float64]
QS = [0.0, 0.5, 10.0, 25.0, 50.0, 99.5, 100.0]
SHAPES = [(1, 1, 1), (1, 1, 7), (3, 5, 7), (2, 13, 1), (11, 17, 19)]


def _values(rng, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return (rng.standard_normal(shape) * 1000).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=np.int64).astype(dtype)


def _views(a):
    """The array, a flipped view, a permuted view and a non-contiguous slice."""
    return [a, a[::-1, :, ::-1], a.transpose(2, 0, 1), a[:, ::2, :]]


# --- percentiles --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_percentiles_match_numpy(dtype, shape):
    rng = np.random.default_rng(sum(shape))
    a = _values(rng, shape, dtype)
    for v in _views(a):
        if v.size == 0:
            continue
        vals, mn, mx = _core.percentiles(v, QS, 1)
        x = v.astype(np.float64)
        np.testing.assert_array_equal(vals, np.percentile(x, QS))
        assert mn == x.min() and mx == x.max()


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_percentiles_with_ties(dtype):
    """Few distinct values: the counting and selection paths must interpolate the same."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 4, size=(9, 10, 11)).astype(dtype)
    vals, mn, mx = _core.percentiles(a, QS + [33.3, 66.7, 90.0], 2)
    np.testing.assert_array_equal(vals, np.percentile(a.astype(np.float64), QS + [33.3, 66.7, 90.0]))
    assert (mn, mx) == (a.min(), a.max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_percentiles_nan_propagates(dtype):
    a = np.arange(60, dtype=dtype).reshape(3, 4, 5)
    a[1, 2, 3] = np.nan
    vals, _, _ = _core.percentiles(a, [0.5, 50.0, 99.5], 1)
    assert np.isnan(np.percentile(a.astype(np.float64), [0.5, 50.0, 99.5])).all()
    assert np.isnan(vals).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_percentiles_infinities(dtype):
    a = np.linspace(-5, 5, 60).astype(dtype).reshape(3, 4, 5)
    a[0, 0, 0], a[2, 3, 4] = -np.inf, np.inf
    vals, mn, mx = _core.percentiles(a, [1.0, 50.0, 99.0], 1)
    # NumPy's interpolation between inf and a finite value; only compare the finite ones
    with np.errstate(invalid="ignore"):
        ref = np.percentile(a.astype(np.float64), [1.0, 50.0, 99.0])
    assert vals[1] == ref[1]
    assert (mn, mx) == (-np.inf, np.inf)


def test_percentiles_empty_raises():
    with pytest.raises(ValueError, match="percentiles: empty volume"):
        _core.percentiles(np.zeros((0, 3, 3), np.float32), [50.0], 1)


# --- tokens -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", [(4, 16, 16), (8, 32, 48), (12, 16, 32)])
def test_tokenize_matches_reference(dtype, shape):
    a = _values(np.random.default_rng(3), shape, dtype)
    for v in [a, a[::-1, ::-1, :], a.transpose(0, 2, 1) if shape[1] == shape[2] else a]:
        tokens, coords = _core.tokenize(v, 1)
        rt, rc, _ = R.ref_tokenize(np.asarray(v))
        assert tokens.dtype == v.dtype and coords.dtype == np.int32
        assert tokens.flags.c_contiguous
        np.testing.assert_array_equal(tokens, rt)
        np.testing.assert_array_equal(coords, rc)


@pytest.mark.parametrize("shape", [(4, 16, 16), (8, 32, 48), (12, 16, 32)])
def test_untokenize_inverts_the_reference_layout(shape):
    """untokenize: the reference's tokens (and a [C, N, 1024] stack) back to the volume."""
    vols = np.random.default_rng(4).random((3, *shape), dtype=np.float32)
    toks = [R.ref_tokenize(v)[0] for v in vols]
    size = [n // p for n, p in zip(shape, (4, 16, 16))]
    np.testing.assert_array_equal(untokenize(toks[1], size), vols[1])
    got = untokenize(np.stack(toks), np.asarray(size, np.int32))
    assert got.shape == (3, *shape) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, vols)
    with pytest.raises(InvalidArgumentError, match="do not fill"):
        untokenize(toks[0][1:], size)
    with pytest.raises(InvalidArgumentError, match="1024"):
        untokenize(toks[0].reshape(-1, 512), size)
    with pytest.raises(InvalidArgumentError, match="3 token counts"):
        untokenize(toks[0], size[:2])


def test_tokenize_coords_raster_order():
    _, coords = _core.tokenize(np.zeros((8, 48, 32), np.float32), 1)
    assert coords.shape == (2 * 3 * 2, 3)
    expected = [(d, h, w) for d in range(2) for h in range(3) for w in range(2)]
    assert [tuple(c) for c in coords] == expected


@pytest.mark.parametrize("shape", [(3, 16, 16), (4, 15, 16), (4, 16, 17), (0, 16, 16)])
def test_tokenize_rejects_non_multiples(shape):
    if 0 in shape:  # an empty volume is a multiple of anything: zero tokens
        tokens, coords = _core.tokenize(np.zeros(shape, np.float32), 1)
        assert tokens.shape == (0, 1024) and coords.shape == (0, 3)
        return
    with pytest.raises(ValueError, match=r"multiple of \(4, 16, 16\)"):
        _core.tokenize(np.zeros(shape, np.float32), 1)


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8])
def test_token_background(dtype):
    rng = np.random.default_rng(5)
    fg = rng.random((8, 32, 48)) > 0.002  # mostly foreground: some tokens all foreground
    fg[:4, :16, :16] = True
    fg[4:, 16:, 32:] = False
    flags = _core.token_background(fg.astype(dtype), 1)
    assert flags.dtype == np.uint8 and flags.shape == (2 * 2 * 3,)
    np.testing.assert_array_equal(flags, R.ref_tokenize(fg.astype(np.float32), fg)[2])
    assert flags[0] == 0 and flags[-1] == 1
    # flipped view
    np.testing.assert_array_equal(
        _core.token_background(fg[::-1], 1), R.ref_tokenize(fg[::-1].astype(np.float32), fg[::-1])[2]
    )


def test_token_background_errors():
    with pytest.raises(TypeError, match="mask must be bool or uint8"):
        _core.token_background(np.ones((4, 16, 16), np.float32), 1)
    with pytest.raises(ValueError, match=r"not a multiple of \(4, 16, 16\)"):
        _core.token_background(np.ones((4, 16, 15), bool), 1)


def test_tokenize_token_background_and_foreground():
    """tokenize(volume, token_background) takes the [N] flags; a voxel mask goes by foreground=."""
    rng = np.random.default_rng(11)
    vol = rng.random((8, 32, 16), dtype=np.float32)
    fg = np.ones(vol.shape, bool)
    fg[1, 3, 5] = fg[6, 20, 10] = False  # background in tokens 0 and 3 of 4
    flags = _core.token_background(fg, 1)
    np.testing.assert_array_equal(flags, [1, 0, 0, 1])
    np.testing.assert_array_equal(tokenize(vol, flags).filtered, flags)
    np.testing.assert_array_equal(tokenize(vol, token_background=flags).filtered, flags)
    np.testing.assert_array_equal(tokenize(vol, foreground=fg).filtered, flags)
    np.testing.assert_array_equal(tokenize(vol[None], foreground=fg[None].astype(np.float32)).filtered, flags)
    assert not tokenize(vol).filtered.any()
    with pytest.raises(ValueError, match=r"pass a voxel foreground mask as tokenize\(volume, foreground=mask\)") as e:
        tokenize(vol, fg)
    assert isinstance(e.value, NeuroVFMError)
    with pytest.raises(ValueError, match="not both"):
        tokenize(vol, flags, foreground=fg)
    with pytest.raises(ValueError, match="token_background has 3 token flags, the volume has 4 tokens"):
        tokenize(vol, flags[:3])
    with pytest.raises(ValueError, match=r"foreground mask shape \(8, 32, 32\) does not match"):
        tokenize(vol, foreground=np.ones((8, 32, 32), bool))
    with pytest.raises(ValueError, match=r"not a multiple of \(4, 16, 16\)") as e:
        tokenize(vol[:, :, :15])
    assert isinstance(e.value, NeuroVFMError)


# --- copy_contiguous ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_copy_contiguous(dtype):
    a = _values(np.random.default_rng(7), (5, 7, 11), dtype)
    views = [
        a,
        a[::-1],
        a[:, ::-1],
        a[:, :, ::-1],
        a[::-1, ::-1, ::-1],
        a.transpose(2, 0, 1),
        a.transpose(1, 2, 0)[::-1, :, ::-1],
        a[1:4, ::3, ::-2],
        a[:1, :1, :1],
    ]
    for v in views:
        out = _core.copy_contiguous(v, 2)
        assert out.flags.c_contiguous and out.dtype == a.dtype
        np.testing.assert_array_equal(out, v)


# --- input validation ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int64, np.uint64, np.float16, np.complex64, object])
def test_bad_dtype_is_type_error(dtype):
    a = np.zeros((4, 16, 16), dtype=dtype)
    with pytest.raises(TypeError, match="dtype"):
        _core.copy_contiguous(a, 1)
    with pytest.raises(TypeError, match="tokenize: unsupported dtype"):
        _core.tokenize(a, 1)
    with pytest.raises(TypeError, match="percentiles: unsupported dtype"):
        _core.percentiles(a, [50.0], 1)
    with pytest.raises(TypeError, match="resample: unsupported dtype"):
        _core.resample_bspline(a, [4, 16, 16], [0, 0, 0], [1, 1, 1], [1, 1, 1], 1)
    with pytest.raises(TypeError, match="ct_windows: unsupported dtype"):
        _core.ct_windows(a, [(80.0, 40.0)], -500.0)


def test_non_native_byte_order_is_type_error():
    a = np.zeros((4, 16, 16), dtype=">i2")
    with pytest.raises(TypeError, match="byte order"):
        _core.copy_contiguous(a, 1)


@pytest.mark.parametrize("shape", [(16,), (16, 16), (1, 4, 16, 16)])
def test_wrong_ndim_is_value_error(shape):
    a = np.zeros(shape, np.float32)
    for call in (
        lambda: _core.copy_contiguous(a, 1),
        lambda: _core.tokenize(a, 1),
        lambda: _core.percentiles(a, [50.0], 1),
        lambda: _core.ct_windows(a, [(80.0, 40.0)], -500.0),
        lambda: _core.resample_bspline(a, [1, 1, 1], [0, 0, 0], [1] * 3, [1] * 3, 1),
    ):
        with pytest.raises(ValueError, match="3-D"):
            call()


# --- intensity ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float32, np.float64])
def test_ct_windows_match_numpy(dtype):
    rng = np.random.default_rng(11)
    a = (rng.standard_normal((8, 32, 16)) * 800).astype(dtype)
    a[:4, :16, :16] = 100  # an all-foreground token
    for v in (a, a[::-1, :, ::-1]):
        arrs, flags, fg = _core.ct_windows(v, R.CT_WINDOWS, R.CT_FOREGROUND, True, True, 2)
        x = np.asarray(v, np.float64)
        for out, (w, lvl) in zip(arrs, R.CT_WINDOWS):
            lo = lvl - w / 2
            ref = ((np.clip(x, lo, lvl + w / 2) - lo) / (w + 1e-8)).astype(np.float32)[None]
            assert out.dtype == np.float32 and out.shape == (1,) + v.shape
            np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(fg, x > R.CT_FOREGROUND)
        np.testing.assert_array_equal(flags, R._token_background(x > R.CT_FOREGROUND))


def test_ct_windows_optional_outputs():
    a = np.zeros((3, 5, 7), np.int16)  # not token-aligned: fine without token flags
    arrs, flags, fg = _core.ct_windows(a, [(80.0, 40.0)], -500.0, False, False, 1)
    assert flags is None and fg is None and len(arrs) == 1
    with pytest.raises(ValueError, match="multiple"):
        _core.ct_windows(a, [(80.0, 40.0)], -500.0, True, False, 1)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
def test_mri_normalise_matches_numpy(dtype):
    rng = np.random.default_rng(13)
    a = _values(rng, (8, 16, 32), dtype)
    x = a.astype(np.float64)
    (p10, lo, hi), mn, mx = _core.percentiles(a, [10.0, 0.5, 99.5], 1)
    # the caller passes the clipped volume's extremes: max(lo, min(x)), min(hi, max(x))
    out, flags, fg = _core.mri_normalise(a, lo, hi, max(lo, mn), min(hi, mx), p10, True, True, 1)
    c = np.clip(x, lo, hi)
    ref = ((c - c.min()) / (c.max() - c.min() + 1e-8)).astype(np.float32)[None]
    assert out.dtype == np.float32 and out.shape == (1,) + a.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(fg, x > p10)
    np.testing.assert_array_equal(flags, R._token_background(x > p10))


def test_mri_normalise_constant_volume():
    a = np.full((4, 16, 16), 7.0)
    out, flags, _ = _core.mri_normalise(a, 7.0, 7.0, 7.0, 7.0, 7.0, True, False, 1)
    assert (out == 0).all() and (flags == 1).all()


# --- resampling ---------------------------------------------------------------------------


def _sitk_resample(a, in_spacing, out_spacing, size):
    """SimpleITK's B-spline resample of a NumPy volume (numpy axis order throughout)."""
    img = sitk.GetImageFromArray(a)
    img.SetSpacing([float(s) for s in in_spacing[::-1]])
    out = sitk.Resample(
        img,
        [int(n) for n in size[::-1]],
        sitk.Transform(),
        sitk.sitkBSpline,
        img.GetOrigin(),
        [float(t) for t in out_spacing[::-1]],
        img.GetDirection(),
        0,
        img.GetPixelID(),
    )
    return sitk.GetArrayFromImage(out)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize(
    "spacing,target",
    [
        ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
        ((5.0, 0.45, 0.45), (4.0, 1.0, 1.0)),
        ((0.9, 0.86, 0.86), (1.0, 1.0, 4.0)),
        ((3.0, 3.0, 3.0), (4.0, 1.0, 1.0)),
        ((1.3, 0.7, 2.9), (1.0, 4.0, 1.0)),
    ],
)
def test_resample_matches_sitk(dtype, spacing, target):
    a = random_volume(np.random.default_rng(17), (9, 23, 14), dtype)
    size = [int(n * (s / t)) for n, s, t in zip(a.shape, spacing, target)]
    ref = _sitk_resample(a, spacing, target, size)
    ref64 = _sitk_resample(a.astype(np.float64), spacing, target, size)
    ours = _core.resample_bspline(a, size, [0, 0, 0], list(target), list(spacing), 1)
    assert ours.dtype == a.dtype and ours.shape == tuple(size) and ours.flags.c_contiguous
    _assert_parity(ours, ref, ref64)
    # a cropped window of the same grid (the axis order may change with the crop, so the
    # rounding may too: parity, not bit equality)
    start = [n // 3 for n in size]
    n_out = [max(1, n - n // 3 - 1) for n in size]
    crop = _core.resample_bspline(a, n_out, start, list(target), list(spacing), 1)
    sl = tuple(slice(s, s + n) for s, n in zip(start, n_out))
    _assert_parity(crop, ref[sl], ref64[sl])


def _assert_parity(ours, ref, ref64):
    a, b = ours.astype(np.float64), ref.astype(np.float64)
    if np.issubdtype(ref.dtype, np.integer):
        near_int = np.abs(ref64 - np.round(ref64)) <= 1e-6
        assert not ((a != b) & ~near_int).any()
        assert np.abs(a - b).max(initial=0) <= 1
    else:
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * max(np.ptp(b), 1e-30))


def test_resample_outside_is_zero():
    a = np.full((4, 5, 6), 9.0)
    # continuous index (start + j) * t / s: with t/s = 1 and start 2, j >= n - 2 falls outside
    out = _core.resample_bspline(a, [4, 5, 6], [2, 2, 2], [1.0] * 3, [1.0] * 3, 1)
    np.testing.assert_array_equal(out[:2, :3, :4], 9.0)
    assert (out[2:] == 0).all() and (out[:, 3:] == 0).all() and (out[:, :, 4:] == 0).all()


@pytest.mark.parametrize("last_axis", [-1, 0, 1, 2])
def test_resample_two_sample_line_is_the_mirror_symmetric_spline(last_axis):
    """On [a, b] the mirror-extended spline is symmetric about index 1: the value at 1 + t
    equals the value at 1 - t (SimpleITK deviates here; see test_fuzz_core)."""
    x = np.array([217.0, 163.0])[None, None, :]
    out = _core.resample_bspline(x, [1, 1, 6], [0, 0, 0], [1.0, 1.0, 1.0], [1.0, 1.0, 3.0], 1, last_axis)[0, 0]
    assert out[0] == pytest.approx(217.0, abs=1e-12) and out[3] == pytest.approx(163.0, abs=1e-12)
    assert out[4] == pytest.approx(out[2], abs=1e-12) and out[5] == 0.0  # index 5/3 >= 1.5: outside


def test_resample_exact_half_boundary_is_outside():
    """Index n - 0.5 lies outside [-0.5, n - 0.5): the voxel is 0 (docs/numbers.md, section 2)."""
    a = np.arange(1.0, 6.0)[None, None, :].repeat(2, 0).repeat(2, 1)
    out = _core.resample_bspline(a, [2, 2, 10], [0, 0, 0], [1.0] * 3, [1.0, 1.0, 2.0], 1)
    assert out[0, 0, 8] == pytest.approx(5.0, abs=1e-12) and out[0, 0, 9] == 0.0


@pytest.mark.parametrize("dtype,lo,hi", [(np.uint8, 0, 255), (np.int16, -32768, 32767), (np.uint16, 0, 65535)])
def test_resample_clamps_integer_overshoot(dtype, lo, hi):
    """B-spline ringing beyond the type range clamps instead of wrapping."""
    a = np.full((4, 4, 12), lo, dtype)
    a[:, :, 6:] = hi
    out = _core.resample_bspline(a, [4, 4, 48], [0, 0, 0], [1.0, 1.0, 0.25], [1.0] * 3, 1)
    ref64 = _sitk_resample(a.astype(np.float64), (1.0, 1.0, 1.0), (1.0, 1.0, 0.25), (4, 4, 48))
    assert ref64.max() > hi and ref64.min() < lo  # the test exercises the clamp
    expected = np.trunc(np.clip(ref64, lo, hi))
    assert np.abs(out.astype(np.float64) - expected).max() <= 1
    assert out.max() == hi and out.min() == lo


def test_resample_float32_rounding_not_truncation():
    a = np.random.default_rng(2).standard_normal((5, 6, 7)).astype(np.float32)
    ours = _core.resample_bspline(a, [5, 6, 13], [0, 0, 0], [1.0, 1.0, 0.5], [1.0] * 3, 1)
    ref64 = _sitk_resample(a.astype(np.float64), (1, 1, 1), (1, 1, 0.5), (5, 6, 13))
    np.testing.assert_allclose(ours, ref64.astype(np.float32), rtol=2e-7, atol=1e-7)


def test_resample_size_one_axes():
    a = np.array([[[3.0, 5.0, 7.0]]])
    out = _core.resample_bspline(a, [1, 1, 3], [0, 0, 0], [1.0] * 3, [1.0] * 3, 1)
    np.testing.assert_allclose(out, a, atol=1e-12)
    ref = _sitk_resample(a, (4.0, 3.0, 1.0), (1.0, 1.0, 1.0), (4, 3, 3))
    out = _core.resample_bspline(a, [4, 3, 3], [0, 0, 0], [1.0] * 3, [4.0, 3.0, 1.0], 1)
    np.testing.assert_allclose(out, ref, atol=1e-9)


def test_resample_bad_arguments():
    a = np.zeros((3, 3, 3))
    with pytest.raises(ValueError, match="output sizes and crop starts must be >= 0"):
        _core.resample_bspline(a, [-1, 3, 3], [0, 0, 0], [1.0] * 3, [1.0] * 3, 1)
    with pytest.raises(ValueError, match="output sizes and crop starts must be >= 0"):
        _core.resample_bspline(a, [3, 3, 3], [-1, 0, 0], [1.0] * 3, [1.0] * 3, 1)
    with pytest.raises(ValueError, match="input has an empty axis"):
        _core.resample_bspline(np.zeros((0, 3, 3)), [3, 3, 3], [0, 0, 0], [1.0] * 3, [1.0] * 3, 1)
