"""neurovfm.data.geometry: tokens and voxels to patient coordinates, NIfTI outputs that
overlay the original scan."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image

from neurovfm.data import (
    OutputGeometry,
    load_image,
    output_geometry,
    prepare_for_inference,
    preprocess_image,
    token_to_patient,
    voxel_to_patient,
    write_nifti_outputs,
)
from neurovfm.data.geometry import TOKEN_SHAPE
from neurovfm.data.preprocess import CT_WINDOWS
from neurovfm.errors import InvalidArgumentError, InvalidTypeError

# --- a synthetic phantom with landmarks ---------------------------------------------------

SIZE = (100, 120, 40)  # SimpleITK (x, y, z)
SPACING = (0.9, 0.9, 3.3)
ORIGIN = (-37.5, 52.25, -18.0)
SIGMA = 4.0  # mm, of the Gaussian landmarks

# Image axes (columns) as patient directions (LPS), before a small oblique tilt:
# the 40-slice, 3.3 mm axis runs along S (axial), P (coronal) or L-R (sagittal).
ACQUISITIONS = {
    "axial": (np.eye(3), 0),
    "coronal": (np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]), 1),
    "sagittal": (np.array([[0, 0, -1.0], [1, 0, 0], [0, -1, 0]]), 2),
}

# Landmarks as continuous indices of the acquired image (x, y, z).
LANDMARKS = [(30.3, 70.6, 14.2), (64.0, 41.5, 22.7), (52.8, 88.1, 9.5)]


def _rotation(axis, degrees):
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def _direction(acq):
    return _rotation((1.0, 2.0, 3.0), 9.0) @ ACQUISITIONS[acq][0]


def _physical(direction, index):
    """Physical points (LPS) of continuous indices ``index [..., 3]`` (x, y, z)."""
    m = np.asarray(direction).reshape(3, 3) * np.asarray(SPACING)[None, :]
    return np.asarray(index, float) @ m.T + np.asarray(ORIGIN)


def phantom(acq, landmarks):
    """A float32 CT-like image: -1000 HU with a Gaussian blob (peak +1000 HU) at each landmark."""
    direction = _direction(acq)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in SIZE[::-1]], indexing="ij")
    pts = _physical(direction, np.stack([x, y, z], axis=-1))
    arr = np.full(SIZE[::-1], -1000.0)
    centres = []
    for lm in landmarks:
        c = _physical(direction, lm)
        arr += 2000.0 * np.exp(-np.sum((pts - c) ** 2, axis=-1) / (2 * SIGMA**2))
        centres.append(c)
    img = make_image(arr.astype(np.float32), SPACING, ORIGIN, direction)
    # SimpleITK agrees on where the landmarks are.
    for lm, c in zip(landmarks, centres):
        np.testing.assert_allclose(img.TransformContinuousIndexToPhysicalPoint(lm), c, atol=1e-9)
    return img, centres


def _axis_units(geom):
    """Unit vector (LPS) and spacing of each array axis (D, H, W)."""
    d = np.asarray(geom.direction).reshape(3, 3)
    return [(d[:, a] * (-1 if f else 1), geom.spacing[a]) for a, f in zip(geom.axes, geom.flips)]


@pytest.mark.parametrize("acq", list(ACQUISITIONS))
@pytest.mark.parametrize("landmark", range(len(LANDMARKS)))
def test_token_of_landmark_maximum_is_at_the_landmark(acq, landmark):
    img, (centre,) = phantom(acq, [LANDMARKS[landmark]])
    pre = preprocess_image(img)
    arrs, flags, view = prepare_for_inference(pre, "ct")
    assert view == ACQUISITIONS[acq][1]
    geom = output_geometry(pre, view)
    bone = arrs[2][0]
    assert bone.shape == geom.shape
    d, h, w = np.unravel_index(int(np.argmax(bone)), bone.shape)
    # The maximum voxel lies at the landmark (within about half an output voxel per axis).
    diff_voxel = voxel_to_patient(geom, d, h, w) - centre
    for u, s in _axis_units(geom):
        assert abs(diff_voxel @ u) <= 0.75 * s, (acq, diff_voxel)
    # ... and the centre of its token within one token's half-size per axis.
    tok = (d // 4, h // 16, w // 16)
    p = token_to_patient(geom, *tok)
    assert p.shape == (3,)
    diff = p - centre
    for (u, s), n in zip(_axis_units(geom), TOKEN_SHAPE):
        assert abs(diff @ u) <= n * s / 2 + 1e-6, (acq, tok, diff)
    assert np.linalg.norm(diff) <= np.linalg.norm([8.0, 8.0, 8.0])
    # The blob is smaller than a token: its token holds background, and every token far from it is background.
    assert flags.all()


@pytest.mark.parametrize("acq", list(ACQUISITIONS))
def test_geometry_matches_simpleitk(acq):
    img, _ = phantom(acq, LANDMARKS[:1])
    pre = preprocess_image(img)
    view = prepare_for_inference(pre, "ct")[2]
    geom = output_geometry(pre, view)
    assert geom.flips == (False, False, False)
    assert geom.size == pre.GetSize()
    assert geom.spacing[geom.axes[0]] == 4.0  # D is the slice axis
    # Every voxel, vectorised, against SimpleITK's own index-to-point map.
    rng = np.random.default_rng(0)
    dhw = [rng.integers(0, n, 50) for n in geom.shape]
    pts = voxel_to_patient(geom, *dhw)
    assert pts.shape == (50, 3)
    for i in range(50):
        idx = [0, 0, 0]
        for k, a in enumerate(geom.axes):
            idx[a] = int(dhw[k][i])
        np.testing.assert_allclose(pts[i], pre.TransformIndexToPhysicalPoint(idx), atol=1e-9)
    # The array of prepare_for_inference is the image's array seen through the geometry.
    arr = sitk.GetArrayFromImage(pre)
    vol = sitk.GetArrayViewFromImage(pre).transpose({0: (0, 1, 2), 1: (1, 0, 2), 2: (2, 1, 0)}[view])
    np.testing.assert_array_equal(geom.to_sitk_order(np.ascontiguousarray(vol)), arr)
    # Token centres: mean of the block's voxel centres; vectorised over a grid.
    td, th, tw = np.meshgrid(*[np.arange(n) for n in geom.token_grid], indexing="ij")
    centres = token_to_patient(geom, td, th, tw)
    assert centres.shape == (*geom.token_grid, 3)
    for tok in [(0, 0, 0), tuple(n - 1 for n in geom.token_grid), (1, 2, 3)]:
        block = np.meshgrid(*[np.arange(t * n, (t + 1) * n) for t, n in zip(tok, TOKEN_SHAPE)], indexing="ij")
        np.testing.assert_allclose(centres[tok], voxel_to_patient(geom, *block).reshape(-1, 3).mean(axis=0), atol=1e-9)


def test_flipped_geometry():
    """A flip (none in this pipeline) reverses the axis; the image keeps its grid."""
    g = OutputGeometry((1.0, 1.0, 4.0), (1.0, 2.0, 3.0), tuple(np.eye(3).ravel()), (2, 1, 0), (8, 32, 48))
    f = OutputGeometry(g.spacing, g.origin, g.direction, g.axes, g.shape, (True, False, False))
    np.testing.assert_allclose(voxel_to_patient(f, 0, 5, 6), voxel_to_patient(g, 7, 5, 6))
    np.testing.assert_allclose(token_to_patient(f, 0, 1, 2), token_to_patient(g, 1, 1, 2))
    a = np.arange(8 * 32 * 48).reshape(8, 32, 48)
    np.testing.assert_array_equal(f.to_sitk_order(a), g.to_sitk_order(a[::-1]))


def test_bad_arguments(tmp_path):
    img, _ = phantom("axial", LANDMARKS[:1])
    pre = preprocess_image(img)
    arrs, flags, view = prepare_for_inference(pre, "ct")
    geom = output_geometry(pre, view)
    with pytest.raises(InvalidArgumentError):
        output_geometry(pre, 3)
    with pytest.raises(InvalidTypeError):
        output_geometry(np.zeros((4, 16, 16)), 0)
    with pytest.raises(InvalidArgumentError):
        OutputGeometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()), (0, 0, 1), (4, 16, 16))
    with pytest.raises(InvalidArgumentError, match="mode"):
        write_nifti_outputs(arrs, flags, geom, tmp_path / "x", "pet")
    with pytest.raises(InvalidArgumentError):
        write_nifti_outputs(arrs[:1], flags, geom, tmp_path / "x", "ct")
    with pytest.raises(InvalidArgumentError):
        write_nifti_outputs(arrs, flags[:-1], geom, tmp_path / "x", "ct")
    with pytest.raises(InvalidArgumentError):
        write_nifti_outputs([a[:, :-4] for a in arrs], flags, geom, tmp_path / "x", "ct")
    assert os.listdir(tmp_path) == []


# --- the written files ----------------------------------------------------------------------


def _upsampled(flags, geom):
    m = flags.reshape(geom.token_grid)
    for k, n in enumerate(TOKEN_SHAPE):
        m = np.repeat(m, n, axis=k)
    return m


def _check_written(paths, arrs, flags, geom, pre, original, prefix, mode, range_tol):
    """The files: names, types, grid (SimpleITK and nibabel), voxels, and the overlay."""
    names = [f"_{n}" for n, _, _ in CT_WINDOWS] if mode == "ct" else [""]
    assert paths == [f"{prefix}{n}.nii.gz" for n in names] + [f"{prefix}_mask.nii.gz"]
    folder = os.path.dirname(paths[0])
    assert sorted(os.listdir(folder)) == sorted(os.path.basename(p) for p in paths)  # no temporary left
    imgs = [sitk.ReadImage(p) for p in paths]
    for im in imgs:
        assert im.GetSize() == pre.GetSize()
        np.testing.assert_allclose(im.GetSpacing(), pre.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(im.GetOrigin(), pre.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(im.GetDirection(), pre.GetDirection(), atol=1e-5)
    for im, a in zip(imgs, arrs):
        assert im.GetPixelID() == sitk.sitkFloat32
        np.testing.assert_array_equal(sitk.GetArrayFromImage(im), geom.to_sitk_order(a[0]))
    assert imgs[-1].GetPixelID() == sitk.sitkUInt8
    mask = sitk.GetArrayFromImage(imgs[-1])
    np.testing.assert_array_equal(mask, geom.to_sitk_order(_upsampled(flags, geom)))
    # The overlay: the original scan resampled onto the written grid (SimpleITK's B-spline,
    # identity transform) is the pipeline's own volume (the parity rule, docs/numbers.md).
    res = sitk.Resample(original, imgs[0], sitk.Transform(), sitk.sitkBSpline, 0.0, sitk.sitkFloat64)
    ref = sitk.GetArrayFromImage(res)
    ours = sitk.GetArrayFromImage(pre).astype(np.float64)
    span = float(ours.max() - ours.min())
    dtype = sitk.GetArrayViewFromImage(pre).dtype
    if dtype.kind == "f":
        assert np.max(np.abs(ref - ours)) <= range_tol * span
    else:  # the library clamps to the pixel type and truncates: equal but for one grey level near integers
        info = np.iinfo(dtype)
        diff = np.abs(np.trunc(np.clip(ref, info.min, info.max)) - ours)
        assert diff.max() <= 1.0
        # ... where SimpleITK's value is near an integer. NIfTI stores the origin as float32
        # (the CT's moves by 2e-5 mm, on edges of 1000 HU/mm): 1e-2 grey levels, not 1e-6.
        near = np.abs(ref - np.round(ref)) <= 1e-2
        assert not np.any((diff != 0) & ~near)
    return imgs, ref


def _check_nibabel(paths, geom):
    nib = pytest.importorskip("nibabel")
    d = np.asarray(geom.direction).reshape(3, 3)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ d @ np.diag(geom.spacing)
    affine[:3, 3] = lps_to_ras @ np.asarray(geom.origin)
    for p in paths:
        f = nib.load(p)
        np.testing.assert_allclose(f.affine, affine, atol=1e-4)
        assert f.shape == geom.size
    data = np.asarray(nib.load(paths[-1]).dataobj)
    np.testing.assert_array_equal(data.transpose(2, 1, 0), sitk.GetArrayFromImage(sitk.ReadImage(paths[-1])))
    # Voxel (i, j, k) of the file is at affine @ (i, j, k, 1) (RAS): the voxel_to_patient point.
    ijk = np.array([3, 5, 2])
    dhw = [ijk[a] for a in geom.axes]
    np.testing.assert_allclose(
        affine[:3, :3] @ ijk + affine[:3, 3], lps_to_ras @ voxel_to_patient(geom, *dhw), atol=1e-6
    )


@pytest.mark.parametrize("acq", list(ACQUISITIONS))
def test_write_nifti_outputs_phantom(acq, tmp_path):
    img, _ = phantom(acq, LANDMARKS)
    pre = preprocess_image(img)
    arrs, flags, view = prepare_for_inference(pre, "ct")
    geom = output_geometry(pre, view)
    prefix = str(tmp_path / "out" / "scan")
    paths = write_nifti_outputs(arrs, flags, geom, prefix, "CT")
    imgs, ref = _check_written(paths, arrs, flags, geom, pre, img, prefix, "ct", 1e-6)
    # The written bone window is the original's, windowed, at the same physical points.
    _, width, level = CT_WINDOWS[2]
    lo, hi = level - width / 2, level + width / 2
    expected = (np.clip(ref, lo, hi) - lo) / (hi - lo + 1e-8)
    np.testing.assert_allclose(sitk.GetArrayFromImage(imgs[2]), expected, atol=1e-5)
    _check_nibabel(paths, geom)
    # Written again (quantised arrays): replaced in place, u / 255.
    q = prepare_for_inference(pre, "ct", quantize=True)
    assert write_nifti_outputs(q[0], q[1], geom, prefix, "ct") == paths
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(paths[0])), geom.to_sitk_order(q[0][0][0].astype(np.float32) / 255)
    )
    assert len(os.listdir(tmp_path / "out")) == 4


# --- real scans ---------------------------------------------------------------------------


@pytest.mark.parametrize(("rel", "mode"), [("mr/stroke/T1.nii.gz", "mri"), ("ct/phantom_head_5mm", "ct")])
def test_write_nifti_outputs_real(scan_dir, tmp_path, rel, mode):
    path = scan_dir / rel
    if not path.exists():
        pytest.skip(f"{rel} not in the corpus")
    pre = load_image(path)
    original = load_image(path, preprocess=False)
    arrs, flags, view = prepare_for_inference(pre, mode)
    geom = output_geometry(pre, view)
    prefix = str(tmp_path / "scan")
    paths = write_nifti_outputs(arrs, flags, geom, prefix, mode)
    _check_written(paths, arrs, flags, geom, pre, original, prefix, mode, 1e-6)
    _check_nibabel(paths, geom)
    # Token centres lie inside the scan's extent (its physical bounding box, any direction).
    centres = token_to_patient(geom, *np.meshgrid(*[np.arange(n) for n in geom.token_grid], indexing="ij"))
    corners = np.array(
        [
            original.TransformContinuousIndexToPhysicalPoint([c * (n - 1) for c, n in zip(cs, original.GetSize())])
            for cs in np.ndindex(2, 2, 2)
        ]
    )
    assert np.all(centres >= corners.min(axis=0) - 1e-6) and np.all(centres <= corners.max(axis=0) + 1e-6)


def _as_item(arr, start, size, transpose, flips):
    """What ImageDataset does to a [D, H, W] array: token box, H/W swap, flips (NumPy)."""
    sl = tuple(slice(s * t, (s + z) * t) for s, z, t in zip(start, size, TOKEN_SHAPE))
    out = arr[sl]
    if transpose:
        out = out.transpose(0, 2, 1, *range(3, out.ndim))
    for k, f in enumerate(flips):
        if f:
            out = np.flip(out, k)
    return out


def test_item_geometry_of_crops_swaps_and_flips_nested():
    """OutputGeometry.item: every voxel of a cropped, swapped, flipped part (twice over, so
    the second works on a flipped grid) lies where the whole grid puts the voxel it came from."""
    d = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))[0]
    g = OutputGeometry((0.9, 1.1, 4.0), (-20.0, 7.5, 3.0), tuple(d.ravel()), (2, 0, 1), (24, 96, 80))
    ids = np.stack(np.meshgrid(*[np.arange(n) for n in g.shape], indexing="ij"), -1)  # [D, H, W, 3]
    rng = np.random.default_rng(2)
    for _ in range(30):
        geom, arr = g, ids
        for _level in range(2):
            grid = geom.token_grid
            size = [int(rng.integers(1, n + 1)) for n in grid]
            start = [int(rng.integers(0, n - z + 1)) for n, z in zip(grid, size)]
            tr, flips = bool(rng.integers(2)), tuple(bool(b) for b in rng.integers(0, 2, 3))
            geom, arr = geom.item(start, size, tr, flips), _as_item(arr, start, size, tr, flips)
            assert geom.shape == arr.shape[:3]
            dhw = np.meshgrid(*[np.arange(n) for n in geom.shape], indexing="ij")
            np.testing.assert_allclose(
                voxel_to_patient(geom, *dhw), voxel_to_patient(g, arr[..., 0], arr[..., 1], arr[..., 2]), atol=1e-9
            )
    with pytest.raises(InvalidArgumentError, match="not inside"):
        g.item((0, 0, 0), (7, 1, 1))
    assert OutputGeometry.from_dict(g.as_dict()) == g
    d = g.as_dict()
    del d["shape"], d["flips"]
    d["size"] = list(g.token_grid)  # as a prepare output has it
    assert OutputGeometry.from_dict(d) == g
    with pytest.raises(InvalidArgumentError, match="'shape'"):
        OutputGeometry.from_dict({k: v for k, v in d.items() if k != "size"})
    with pytest.raises(InvalidArgumentError, match="'origin'"):
        OutputGeometry.from_dict({k: v for k, v in d.items() if k != "origin"})
    with pytest.raises(InvalidArgumentError, match="9 values"):
        OutputGeometry.from_dict({**d, "direction": [1.0, 0.0, 0.0]})
