"""The library against the reference on synthetic volumes (docs/numbers.md)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DTYPES, compare_resampled, make_image, random_volume, rotation, signed_permutations
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference as R
from neurovfm.data import preprocess_image, prepare_for_inference, tokenize
from neurovfm.errors import ImageTooSmallError, InvalidArgumentError

RPI = np.diag([-1.0, 1.0, -1.0])  # ITK's LPS axes pointing to Right, Posterior, Inferior


def check_preprocess(img: sitk.Image):
    """preprocess_image(img) against the reference, or ImageTooSmallError when it must."""
    _, _, size = R.target_grid(sitk.DICOMOrient(img, "RPI"))
    if min(size) == 0:
        # its size (reoriented: a permutation), an axis resampled to 0 voxels, the 1 x 1 x 4 mm grid
        pattern = (
            r"^<in-memory image>: volume of size \((\d+), (\d+), (\d+)\) and spacing \(.+\) mm resamples "
            r"to \([\d, ]*\b0\b[\d, ]*\) voxels at \((?=[^)]*4\.0)(?:1\.0|4\.0), (?:1\.0|4\.0), (?:1\.0|4\.0)\) mm$"
        )
        with pytest.raises(ImageTooSmallError, match=pattern) as info:
            preprocess_image(img)
        reported = re.match(pattern, str(info.value)).groups()
        assert sorted(map(int, reported)) == sorted(img.GetSize())
        return None
    ours = preprocess_image(img)
    ref = R.ref_preprocess(img)
    if 2 in sitk.DICOMOrient(img, "RPI").GetSize():
        # SimpleITK's B-spline reads outside the buffer on an axis of length 2 (its mirror
        # folds an index once: tap 3 of [0, 1] becomes -1), so its numbers are garbage there.
        compare_resampled(ours, ref, ref, source=img, values=False)
        a = sitk.GetArrayFromImage(ours).astype(np.float64)
        v = sitk.GetArrayFromImage(img).astype(np.float64)
        assert np.isfinite(a).all()
        lo, hi = min(2 * v.min() - v.max(), 0.0), max(2 * v.max() - v.min(), 0.0)  # 0: outside
        assert a.min() >= lo and a.max() <= hi
        return ours
    compare_resampled(ours, ref, R.ref_resample_float64(img), source=img)
    return ours


# --- preprocess_image: explicit cases -------------------------------------------------------

GEOMETRIES = [  # (numpy shape z, y, x), spacing x, y, z
    ((7, 23, 19), (0.45, 0.45, 5.0)),  # thick axial CT: downsample in-plane, 5 -> 4 on z
    ((11, 13, 17), (0.86, 0.9, 0.86)),  # near-isotropic: every size unique
    ((9, 9, 9), (3.0, 3.0, 3.0)),  # isotropic: z = 2, upsampling
    ((5, 31, 31), (1.0, 1.0, 4.0)),  # already on the target grid
    ((29, 37, 3), (4.8, 1.0, 1.0)),  # sagittal thick slices: slice axis x
    ((17, 17, 17), (0.7, 1.3, 2.9)),  # no unique size: largest spacing
    ((1, 19, 23), (1.1, 0.9, 6.0)),  # a single slice along z, thick
    ((13, 1, 41), (0.6, 20.0, 0.6)),  # size 1 on y
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,spacing", GEOMETRIES)
def test_preprocess_dtypes_and_sizes(dtype, shape, spacing):
    rng = np.random.default_rng(abs(hash((shape, spacing))) % 2**32)
    img = make_image(random_volume(rng, shape, dtype), spacing, origin=(-12.5, 30.25, 7.0))
    check_preprocess(img)


@pytest.mark.parametrize("k", range(48))
def test_preprocess_all_axis_permutations_and_flips(k):
    direction = signed_permutations()[k]
    rng = np.random.default_rng(k)
    img = make_image(
        random_volume(rng, (6, 21, 33), np.int16), (0.8, 1.7, 4.6), origin=(101.0, -7.5, 33.3), direction=direction
    )
    ours = check_preprocess(img)
    assert ours.GetPixelID() == sitk.sitkInt16


@pytest.mark.parametrize(
    "angles",
    [(0.1, 0.0, 0.0), (0.0, 0.3, 0.0), (0.0, 0.0, 0.7), (0.2, -0.35, 0.5), (1.3, 0.4, -2.2), (np.pi / 4 + 0.01, 0, 0)],
)
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_preprocess_oblique(angles, dtype):
    rng = np.random.default_rng(7)
    img = make_image(
        random_volume(rng, (12, 30, 26), dtype),
        (0.9, 0.9, 3.3),
        origin=(-90.0, 120.0, -40.0),
        direction=rotation(*angles),
    )
    ours = check_preprocess(img)
    # the reorientation permutes and flips voxel axes only: the direction stays oblique
    assert not np.allclose(np.abs(ours.GetDirection()), np.abs(np.round(ours.GetDirection())))


def test_preprocess_identity_direction_on_target_grid():
    """An RPI image already at 1x1x4 mm with token-sized axes comes back as itself."""
    rng = np.random.default_rng(3)
    a = random_volume(rng, (8, 32, 48), np.float64)
    img = make_image(a, (1.0, 1.0, 4.0), origin=(5.0, 6.0, 7.0), direction=RPI)
    ours = check_preprocess(img)
    assert ours.GetSize() == img.GetSize() and ours.GetOrigin() == img.GetOrigin()
    np.testing.assert_allclose(sitk.GetArrayFromImage(ours), a, rtol=0, atol=1e-9 * np.ptp(a))


def test_preprocess_too_small_raises():
    img = make_image(np.zeros((1, 1, 1), np.int16), (1.0, 1.0, 1.0))
    with pytest.raises(
        ImageTooSmallError,
        match=r"^<in-memory image>: volume of size \(1, 1, 1\) and spacing "
        r"\(1\.0, 1\.0, 1\.0\) mm resamples to \(1, 1, 0\) voxels at \(1\.0, 1\.0, 4\.0\) mm$",
    ):
        preprocess_image(img)


def test_preprocess_small_axis_is_kept_uncropped():
    """An axis shorter than its crop multiple stays as resampled (docs/numbers.md 2.5); no tokens."""
    img = make_image(np.ones((3, 40, 10), np.float32), (1.0, 1.0, 4.0), direction=RPI)
    ours = check_preprocess(img)
    assert ours.GetSize() == (10, 32, 3)
    assert prepare_for_inference(ours, "mri") is None


def test_preprocess_keeps_input_image():
    a = random_volume(np.random.default_rng(1), (6, 20, 22), np.int16)
    img = make_image(a, (0.5, 0.5, 5.0))
    preprocess_image(img)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(img), a)


# --- preprocess_image: Hypothesis ---------------------------------------------------------

SPACINGS = st.one_of(
    st.sampled_from([0.45, 0.5, 0.86, 1.0, 2.0, 3.0, 4.0, 4.8, 5.0]),
    st.floats(0.3, 6.0, allow_nan=False).map(lambda x: round(x, 3)),
)


@st.composite
def image_params(draw):
    """Keyword arguments of build_image (printed by Hypothesis when a case fails)."""
    shape = tuple(draw(st.integers(1, 24)) for _ in range(3))
    spacing = tuple(draw(SPACINGS) for _ in range(3))
    # keep the resampled grid small (SimpleITK is slow): at most ~80 voxels per axis
    if any(n * s > 80 for n, s in zip(shape[::-1], spacing)):
        spacing = tuple(min(s, 80.0 / n) for n, s in zip(shape[::-1], spacing))
    if draw(st.booleans()):
        direction = ("perm", draw(st.integers(0, 47)))
    else:
        # rounded: SimpleITK cannot invert a direction with subnormal entries
        direction = ("rot", tuple(round(draw(st.floats(-np.pi, np.pi)), 6) for _ in range(3)))
    return dict(
        shape=shape,
        spacing=spacing,
        dtype=np.dtype(draw(st.sampled_from(DTYPES))).name,
        direction=direction,
        origin=tuple(round(draw(st.floats(-300, 300)), 3) for _ in range(3)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def build_image(shape, spacing, dtype, direction, origin, seed):
    kind, arg = direction
    m = signed_permutations()[arg] if kind == "perm" else rotation(*arg)
    arr = random_volume(np.random.default_rng(seed), shape, dtype)
    return make_image(arr, spacing, origin, m)


@settings(
    max_examples=int(os.environ.get("NEUROVFM_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(image_params())
def test_preprocess_property(params):
    check_preprocess(build_image(**params))


# --- prepare_for_inference ----------------------------------------------------------------


def resampled_like(rng, dtype, view, tokens=(2, 3, 2), origin=(1.0, 2.0, 3.0)):
    """An image as preprocess_image returns it: 1x1x4 mm with the slice axis of ``view``."""
    z = 2 - view
    d, h, w = tokens[0] * 4, tokens[1] * 16, tokens[2] * 16
    size = {0: (w, h, d), 1: (w, d, h), 2: (d, h, w)}[view]  # x, y, z
    spacing = [1.0, 1.0, 1.0]
    spacing[z] = 4.0
    arr = random_volume(rng, size[::-1], dtype)
    if np.dtype(dtype).kind in "iu" and np.dtype(dtype).itemsize > 1 and np.dtype(dtype) != np.uint16:
        arr = (arr.astype(np.int64) % 4000 - 1500).astype(dtype)  # HU-like: air and bone
    return make_image(arr, spacing, origin, RPI)


def check_prepare(img, mode, z_dim=None):
    ours = prepare_for_inference(img, mode, z_dim=z_dim, return_foreground=True)
    ref = R.ref_prepare(img, mode, z_dim=z_dim, return_foreground=True)
    if ref is None:
        assert ours is None
        return None
    arrs, mask, view, fg = ours
    rarrs, rmask, rview, rfg = ref
    assert view == rview
    assert len(arrs) == len(rarrs) == (3 if mode.lower() == "ct" else 1)
    for a, r in zip(arrs, rarrs):
        assert a.dtype == np.float32 and a.shape == r.shape
        np.testing.assert_allclose(a, r, rtol=0, atol=1e-6)
        assert a.min() >= 0 and a.max() <= 1
    assert mask.dtype == np.uint8 and mask.shape == rmask.shape
    np.testing.assert_array_equal(mask, rmask)
    assert fg.dtype == np.bool_
    np.testing.assert_array_equal(fg, rfg)
    # without return_foreground: the same three items
    arrs3, mask3, view3 = prepare_for_inference(img, mode, z_dim=z_dim)
    np.testing.assert_array_equal(mask3, mask)
    assert view3 == view
    return ours


@pytest.mark.parametrize("mode", ["ct", "mri", "CT", "Mri"])
@pytest.mark.parametrize("view", [0, 1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_prepare_parity(mode, view, dtype):
    img = resampled_like(np.random.default_rng(view), dtype, view)
    arrs, mask, v, _ = check_prepare(img, mode)
    assert v == view
    d, h, w = arrs[0].shape[1:]
    assert mask.shape == (d // 4 * (h // 16) * (w // 16),)


@pytest.mark.parametrize("z_dim", [0, 1, 2])
def test_prepare_explicit_z_dim(z_dim):
    img = make_image(random_volume(np.random.default_rng(2), (32, 32, 32), np.int16), (1.0, 1.0, 1.0), direction=RPI)
    for mode in ("ct", "mri"):
        _, _, view, _ = check_prepare(img, mode, z_dim=z_dim)
        assert view == 2 - z_dim


def test_prepare_isotropic_defaults_to_view_0():
    img = make_image(random_volume(np.random.default_rng(2), (8, 16, 32), np.float32), (2.0, 2.0, 2.0))
    assert check_prepare(img, "mri")[2] == 0


def test_prepare_ct_windows_exact_values():
    vals = np.array([-1024, -500, -499, 0, 40, 80, 1000, 3000], np.int16)
    arr = np.resize(vals, (4, 16, 16)).astype(np.int16)
    img = make_image(arr, (1.0, 1.0, 4.0), direction=RPI)
    check_prepare(img, "ct")
    arrs, mask, _ = prepare_for_inference(img, "ct")
    brain = arrs[0][0, 0, 0, :8]
    np.testing.assert_allclose(brain, [0, 0, 0, 0, 0.5, 1, 1, 1], atol=1e-6)
    assert mask.tolist() == [1]  # -1024 and -500 are background (foreground is > -500)


def test_prepare_constant_mri():
    img = make_image(np.full((4, 16, 16), 5.0, np.float32), (1.0, 1.0, 4.0), direction=RPI)
    arrs, mask, view, fg = check_prepare(img, "mri")
    assert (arrs[0] == 0).all() and mask.tolist() == [1] and not fg.any()


@pytest.mark.parametrize("size", [(16, 16, 3), (15, 16, 4), (16, 15, 4), (1, 1, 1), (17, 16, 3), (16, 33, 2)])
def test_prepare_returns_none_below_one_token(size):
    """None is checked before the multiple-of-token ValueError."""
    img = make_image(np.zeros(size[::-1], np.int16), (1.0, 1.0, 4.0), direction=RPI)
    assert prepare_for_inference(img, "ct") is None
    assert prepare_for_inference(img, "mri") is None


def test_prepare_rejects_non_multiples():
    img = make_image(np.zeros((5, 16, 16), np.int16), (1.0, 1.0, 4.0), direction=RPI)
    with pytest.raises(
        InvalidArgumentError,
        match=r"^volume \[D, H, W\] = \(5, 16, 16\) is not a multiple of the "
        r"4x16x16 token; load it with load_image\(preprocess=True\), which crops it$",
    ):
        prepare_for_inference(img, "ct")


@pytest.mark.parametrize("mode", ["pet", "", "c t", None])
def test_prepare_bad_mode(mode):
    img = make_image(np.zeros((4, 16, 16), np.int16), (1.0, 1.0, 4.0), direction=RPI)
    with pytest.raises(
        InvalidArgumentError, match=rf"^mode must be 'ct' or 'mri' \(any case\), got {re.escape(repr(mode))}$"
    ):
        prepare_for_inference(img, mode)


# --- tokenize -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ct", "mri"])
def test_tokenize_parity_after_prepare(mode):
    img = resampled_like(np.random.default_rng(9), np.int16, 2, tokens=(3, 2, 3))
    arrs, mask, _, fg = prepare_for_inference(img, mode, return_foreground=True)
    for a in arrs:
        for flags, voxels in ((mask, None), (None, fg), (None, None)):
            tok, coords, filtered = tokenize(a, flags, foreground=voxels)
            rtok, rcoords, rfiltered = R.ref_tokenize(a, voxels if flags is None else flags)
            np.testing.assert_array_equal(tok, rtok)
            np.testing.assert_array_equal(coords, rcoords)
            np.testing.assert_array_equal(filtered, rfiltered)
            assert tok.dtype == np.float32 and coords.dtype == np.int32
            assert filtered.dtype == np.uint8
        tok3, _, _ = tokenize(a[0])  # [D, H, W] as well as [1, D, H, W]
        np.testing.assert_array_equal(tok3, R.ref_tokenize(a)[0])


def test_tokenize_filtered_is_a_copy():
    vol = np.zeros((1, 4, 16, 16), np.float32)
    mask = np.array([1], np.uint8)
    _, _, filtered = tokenize(vol, mask)
    filtered[0] = 0
    assert mask[0] == 1


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 3),
    st.sampled_from([np.uint8, np.int16, np.float32, np.float64]),
    st.integers(0, 2**32 - 1),
)
def test_token_round_trip(td, th, tw, dtype, seed):
    rng = np.random.default_rng(seed)
    vol = random_volume(rng, (td * 4, th * 16, tw * 16), dtype)
    tok, coords, filtered = tokenize(vol[None])
    assert tok.shape == (td * th * tw, 1024) and tok.dtype == vol.dtype
    back = np.zeros_like(vol)
    for row, (d, h, w) in zip(tok, coords):
        back[d * 4 : (d + 1) * 4, h * 16 : (h + 1) * 16, w * 16 : (w + 1) * 16] = row.reshape(4, 16, 16)
    np.testing.assert_array_equal(back, vol)
    assert not filtered.any()


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([0, 1, 2]), st.sampled_from(DTYPES), st.integers(0, 2**32 - 1), st.sampled_from(["ct", "mri"]))
def test_windows_in_unit_range(view, dtype, seed, mode):
    img = resampled_like(np.random.default_rng(seed), dtype, view, tokens=(1, 1, 2))
    arrs, mask, v = prepare_for_inference(img, mode)
    assert v == view
    for a in arrs:
        assert a.dtype == np.float32 and np.isfinite(a).all()
        assert a.min() >= 0.0 and a.max() <= 1.0
    assert set(np.unique(mask)) <= {0, 1}


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from([np.uint8, np.int16, np.int32, np.float32, np.float64]),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0, 1, 2]),
)
def test_resample_at_scale_one_is_identity(dtype, seed, view):
    """On the target grid the B-spline reproduces the data, up to rounding: float types to
    ~1e-12 of the range, integer types exactly or (a value computed as k - 1e-13) one below."""
    img = resampled_like(np.random.default_rng(seed), dtype, view, tokens=(1, 2, 1))
    a = sitk.GetArrayFromImage(img)
    out = sitk.GetArrayFromImage(preprocess_image(img))
    assert out.shape == a.shape and out.dtype == a.dtype
    diff = out.astype(np.float64) - a.astype(np.float64)
    if np.dtype(dtype).kind == "f":
        assert np.abs(diff).max() <= 1e-6 * max(np.ptp(a), 1)
    else:
        assert np.isin(diff, (0, -1, 1)).all()
        assert (diff == 0).mean() > 0.5


def test_tokenize_errors():
    vol = np.zeros((4, 32, 16), np.float32)  # 2 tokens
    for args, kwargs, message in [
        (
            (np.zeros((1, 4, 16, 17), np.float32),),
            {},
            r"tokenize: volume shape \(4, 16, 17\) is not a multiple of \(4, 16, 16\)",
        ),
        (
            (np.zeros((2, 4, 16, 16), np.float32),),
            {},  # two channels
            r"tokenize expects \[1, D, H, W\] or \[D, H, W\], got shape \(2, 4, 16, 16\)",
        ),
        ((vol, np.zeros(3, np.uint8)), {}, r"token_background has 3 token flags, the volume has 2 tokens"),
        (
            (vol, np.zeros((4, 32, 16), bool)),
            {},  # a voxel mask passed as the token flags
            r"tokenize: token_background must be the \[N\] token background flags, got shape \(4, 32, 16\); "
            r"pass a voxel foreground mask as tokenize\(volume, foreground=mask\)",
        ),
        (
            (vol,),
            {"foreground": np.zeros((4, 16, 16), bool)},
            r"foreground mask shape \(4, 16, 16\) does not match volume shape \(4, 32, 16\)",
        ),
        (
            (vol, np.zeros(2, np.uint8)),
            {"foreground": np.ones((4, 32, 16), bool)},
            r"tokenize: pass token_background \(the \[N\] token flags\) or foreground= \(a voxel mask\), not both",
        ),
    ]:
        with pytest.raises(InvalidArgumentError, match="^" + message + "$") as info:
            tokenize(*args, **kwargs)
        assert isinstance(info.value, ValueError)
