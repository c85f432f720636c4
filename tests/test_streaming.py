"""The streaming NIfTI path (decode slab by slab, resample in the background)
gives the same image as reading the whole file and resampling it."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import neurovfm
from neurovfm import _core
from neurovfm.data import io, load_image
from neurovfm.data.sources import nifti as readers


def _signed_permutations():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = np.zeros((3, 3))
            for col, row in enumerate(perm):
                m[row, col] = signs[col]
            yield m


@pytest.fixture(autouse=True)
def _restore_threads():
    yield
    neurovfm.set_num_threads(None)


def _write(tmp_path, arr, spacing, direction, name="v.nii.gz"):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetDirection(tuple(float(x) for x in np.asarray(direction).ravel()))
    img.SetOrigin((12.5, -7.25, 30.0))
    p = str(tmp_path / name)
    sitk.WriteImage(img, p)
    return p


@pytest.mark.parametrize("k", range(0, 48, 5))
def test_stream_equals_full_read(tmp_path, k, monkeypatch):
    direction = list(_signed_permutations())[k]
    rng = np.random.default_rng(k)
    arr = rng.integers(-1024, 2000, size=(23, 40, 37)).astype(np.int16)
    p = _write(tmp_path, arr, (0.7, 0.9, 2.5), direction)
    # Small slabs so that several slabs and the ring buffer are exercised.
    monkeypatch.setattr(io, "_SLAB_BYTES", 40 * 37 * 2 * 3)
    for threads in (1, 2, 3):
        neurovfm.set_num_threads(threads)
        streamed = load_image(p)
        vol = readers.read_nifti(p)
        plan = io._plan(vol.array.shape, vol.spacing, vol.origin, vol.direction, p)
        view = io._reoriented_view(vol.array, plan.orientation)
        stream_axis = 2 - plan.orientation.perm.index(2)
        ref = _core.resample_bspline(view, *plan.kernel_args(), threads, stream_axis)
        assert np.array_equal(sitk.GetArrayViewFromImage(streamed), ref)
        full = io.preprocess_volume(vol)
        assert streamed.GetSize() == full.GetSize()
        assert np.allclose(streamed.GetOrigin(), full.GetOrigin(), atol=1e-9)
        assert np.allclose(streamed.GetDirection(), full.GetDirection(), atol=1e-12)
        assert streamed.GetSpacing() == full.GetSpacing()


def test_stream_truncated_file_names_file(tmp_path):
    arr = np.arange(20 * 32 * 32, dtype=np.int16).reshape(20, 32, 32)
    p = _write(tmp_path, arr, (1.0, 1.0, 1.0), np.eye(3), "t.nii")
    data = Path(p).read_bytes()
    cut = tmp_path / "cut.nii"
    cut.write_bytes(data[: len(data) // 2])
    reason = (
        r"truncated or bad dimensions: header claims 32x32x20 voxels of datatype 4 "
        rf"\(40960 bytes from offset 352\), the file holds {len(data) // 2} bytes"
    )
    with pytest.raises(neurovfm.errors.ImageReadError, match="^" + re.escape(str(cut)) + ": " + reason + "$") as info:
        load_image(str(cut))
    assert info.value.path == str(cut)


def test_stream_resampler_rejects_misuse():
    sr = _core.StreamResampler(np.dtype("int16"), (4, 8, 8), 0, [1, 8, 8], [0, 0, 0], [4, 1, 1], [1, 1, 1])
    a = np.zeros((2, 8, 8), np.int16)
    sr.push(a, 0, 1)
    # The kernel's refusals: KernelError, an InvalidArgumentError (NeuroVFMError, ValueError).
    with pytest.raises(_core.KernelError, match=r"^stream resample: slab pushed twice$") as info:
        sr.push(a, 0, 1)  # pushed twice
    assert isinstance(info.value, neurovfm.errors.InvalidArgumentError)
    with pytest.raises(_core.KernelError, match=r"^stream resample: slab outside the volume$"):
        sr.push(a, 3, 1)  # outside
    with pytest.raises(TypeError, match=r"^StreamResampler\.push: slab dtype does not match$"):
        sr.push(a.astype(np.float32), 2, 1)
    with pytest.raises(ValueError, match=r"^StreamResampler\.finish: not every slice was pushed$"):
        sr.finish(1)  # incomplete
    sr.push(a, 2, 1)
    assert sr.finish(1).shape == (1, 8, 8)
