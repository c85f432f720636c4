"""The reference: docs/numbers.md, sections 2, 3, 4 and 6, written plainly with SimpleITK and NumPy.

This is the published NeuroVFM preprocessing in its most obvious form. It is
slow on purpose (SimpleITK's generic resampler, float64 NumPy everywhere) and
exists only so that the fast library can be compared against it.
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

CT_WINDOWS = [(80.0, 40.0), (200.0, 80.0), (2800.0, 600.0)]  # (width, level): brain, blood, bone
CT_FOREGROUND = -500.0
PATCH = (4, 16, 16)


# --- numbers.md 2: read -------------------------------------------------------------------------


def ref_read(path, series_uid=None) -> sitk.Image:
    """A file via sitk.ReadImage; a folder as the DICOM series with the most files."""
    path = str(path)
    if os.path.isdir(path):
        reader = sitk.ImageSeriesReader()
        uids = [series_uid] if series_uid else reader.GetGDCMSeriesIDs(path)
        files = max((reader.GetGDCMSeriesFileNames(path, u) for u in uids), key=len)
        reader.SetFileNames(files)
        img = reader.Execute()
    else:
        img = sitk.ReadImage(path)
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:  # a 3-D volume stored as 4-D
        img = img[:, :, :, 0]
    assert img.GetDimension() == 3 and img.GetNumberOfComponentsPerPixel() == 1
    return img


# --- numbers.md 2: preprocess -------------------------------------------------------------------


def slice_axis(spacing, size) -> int:
    """numbers.md 2.2: the slice axis z in SimpleITK (x, y, z) order."""
    if spacing[0] == spacing[1] == spacing[2]:
        return 2
    single = [n for n in size if list(size).count(n) == 1]
    if single:
        return list(size).index(min(single))
    return int(np.argmax(spacing))


def target_grid(img: sitk.Image):
    """(slice axis, target spacing, output size) of an RPI image."""
    s, n = img.GetSpacing(), img.GetSize()
    z = slice_axis(s, n)
    t = [1.0, 1.0, 1.0]
    t[z] = 4.0
    size = [int(n[i] * (s[i] / t[i])) for i in range(3)]
    return z, t, size


def crop_slices(size, z):
    """numbers.md 2.5: centred crop per axis (x, y, z order); an axis below its multiple is kept."""
    out = []
    for i, m in enumerate(size):
        k = 4 if i == z else 16
        if m < k:
            out.append(slice(0, m))
        else:
            start = (m % k) // 2
            out.append(slice(start, start + (m // k) * k))
    return out


def ref_resample_crop(rpi: sitk.Image, pixel_id=None) -> sitk.Image:
    """An RPI image: B-spline resample to 1x1x4 mm (its own pixel type), centred crop."""
    z, t, size = target_grid(rpi)
    res = sitk.Resample(
        rpi,
        size,
        sitk.Transform(),
        sitk.sitkBSpline,
        rpi.GetOrigin(),
        t,
        rpi.GetDirection(),
        0,
        rpi.GetPixelID() if pixel_id is None else pixel_id,
    )
    sx, sy, sz = crop_slices(res.GetSize(), z)
    return res[sx, sy, sz]


def ref_preprocess(img: sitk.Image) -> sitk.Image:
    """RPI, B-spline resample to 1x1x4 mm (input pixel type), centred crop."""
    return ref_resample_crop(sitk.DICOMOrient(img, "RPI"))


def ref_resample_float64(img: sitk.Image) -> sitk.Image:
    """ref_preprocess computed in float64 throughout: the value before clamp + truncation."""
    return ref_resample_crop(sitk.DICOMOrient(sitk.Cast(img, sitk.sitkFloat64), "RPI"), sitk.sitkFloat64)


def ref_load(path, series_uid=None):
    """(as read, preprocessed, preprocessed in float64) of a path."""
    img = ref_read(path, series_uid)
    return img, ref_preprocess(img), ref_resample_float64(img)


# --- numbers.md 3: prepare_for_inference ----------------------------------------------------------


def _token_background(fg: np.ndarray) -> np.ndarray:
    d, h, w = fg.shape
    blocks = fg.reshape(d // 4, 4, h // 16, 16, w // 16, 16)
    return (~blocks).any(axis=(1, 3, 5)).reshape(-1).astype(np.uint8)


def _ref_arrays64(img: sitk.Image, mode: str, z_dim=None):
    """numbers.md 3 as the reference computes it: ([float64 [D, H, W] arrays], voxel foreground,
    view), or None when too small."""
    mode = mode.lower()
    if mode not in ("ct", "mri"):
        raise ValueError(mode)
    spacing = img.GetSpacing()
    if z_dim is None:
        z_dim = 2 if spacing[0] == spacing[1] == spacing[2] else int(np.argmax(spacing))
    view = 2 - z_dim
    x = sitk.GetArrayFromImage(img).astype(np.float64)
    x = {0: x, 1: x.transpose(1, 0, 2), 2: x.transpose(2, 1, 0)}[view]
    d, h, w = x.shape
    if d < 4 or h < 16 or w < 16:
        return None
    if mode == "ct":
        fg = x > CT_FOREGROUND
        arrs = []
        for width, level in CT_WINDOWS:
            lower, upper = level - width / 2, level + width / 2
            arrs.append((np.clip(x, lower, upper) - lower) / (upper - lower + 1e-8))
    else:
        p10, p05, p995 = np.percentile(x, [10, 0.5, 99.5])
        fg = x > p10
        c = np.clip(x, p05, p995)
        arrs = [(c - c.min()) / (c.max() - c.min() + 1e-8)]
    return arrs, fg, view


def ref_prepare(img: sitk.Image, mode: str, z_dim=None, return_foreground=False):
    """numbers.md 3 in float64 NumPy, returned as float32: ([arrays], token mask, view) or None."""
    got = _ref_arrays64(img, mode, z_dim)
    if got is None:
        return None
    arrs64, fg, view = got
    arrs = [a.astype(np.float32)[None] for a in arrs64]
    out = (arrs, _token_background(fg), view)
    return out + (fg,) if return_foreground else out


def ref_cache(img: sitk.Image, mode: str, z_dim=None):
    """numbers.md 4, the reference cache's bytes, literally: ``(arr * 255).astype(np.uint8)`` of
    the reference's float64 arrays. ([uint8 [1, D, H, W] per window], token mask, view) or
    None."""
    got = _ref_arrays64(img, mode, z_dim)
    if got is None:
        return None
    arrs64, fg, view = got
    return [(a * 255).astype(np.uint8)[None] for a in arrs64], _token_background(fg), view


# --- numbers.md 6: tokens -------------------------------------------------------------------------


def ref_tokenize(volume: np.ndarray, mask=None):
    """[1, D, H, W] or [D, H, W] -> (tokens [N, 1024], coords [N, 3] int32, filtered [N])."""
    v = volume[0] if volume.ndim == 4 else volume
    d, h, w = (n // p for n, p in zip(v.shape, PATCH))
    tokens = v.reshape(d, 4, h, 16, w, 16).transpose(0, 2, 4, 1, 3, 5).reshape(-1, 1024)
    coords = np.stack(np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij"), -1)
    coords = coords.reshape(-1, 3).astype(np.int32)
    if mask is None:
        filtered = np.zeros(len(tokens), np.uint8)
    elif mask.ndim == 1:
        filtered = np.asarray(mask, np.uint8).copy()
    else:
        filtered = _token_background(mask.astype(bool))
    return tokens, coords, filtered
