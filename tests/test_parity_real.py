"""The library against the reference on the real-scan corpus (NEUROVFM_TEST_DATA).

Without the corpus, the same comparisons run on its phantom stand-ins (conftest.scan_dir:
phantom files of the same kinds at the same paths), so that a checkout without the corpus
still checks the pipeline against the reference on every kind of input; the shapes the
corpus README documents are the real files' and need the corpus itself."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import compare_resampled, scan_path

import reference as R
from corpus import VOLUMES
from neurovfm.data import load_image, prepare_for_inference, tokenize

IDS = [v[0] for v in VOLUMES]

# Documented in the corpus README: size (x, y, z) after preprocessing, slice axis, view.
DOCUMENTED = {
    "ct/phantom_head_1mm.nii.gz": ((224, 224, 32), 2, 0),
    "mr/sag_mprage_peds": ((40, 208, 208), 0, 2),
    "mr/sag_t1_2d_thick": ((40, 256, 256), 0, 2),
    "ct/head_tilt_ge": ((240, 240, 36), 2, 0),
}

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("quiet_itk")]


class Results:
    """Each volume's reference results and load_image output, computed once per module."""

    def __init__(self, root):
        self.root = root
        self._ref, self._ours = {}, {}

    def path(self, rel):
        return scan_path(self.root, rel)  # skips, saying so, for a real file without a stand-in

    def reference(self, rel):
        """(as read, preprocessed, preprocessed in float64) by the reference."""
        if rel not in self._ref:
            self._ref[rel] = R.ref_load(self.path(rel))
        return self._ref[rel]

    def ours(self, rel):
        if rel not in self._ours:
            self._ours[rel] = load_image(self.path(rel))
        return self._ours[rel]


@pytest.fixture(scope="module")
def results(scan_dir):
    return Results(scan_dir)


@pytest.mark.parametrize("rel,mode", VOLUMES, ids=IDS)
def test_load_image_matches_reference(results, rel, mode):
    raw, ref, ref64 = results.reference(rel)
    compare_resampled(results.ours(rel), ref, ref64, source=raw)


@pytest.mark.parametrize("rel,mode", VOLUMES, ids=IDS)
def test_load_image_raw_matches_reference(results, rel, mode):
    raw = results.reference(rel)[0]
    img = load_image(results.path(rel), preprocess=False)
    assert img.GetDimension() == 3 and img.GetNumberOfComponentsPerPixel() == 1
    assert img.GetSize() == raw.GetSize()
    assert img.GetPixelID() == raw.GetPixelID(), (img.GetPixelIDTypeAsString(), raw.GetPixelIDTypeAsString())
    np.testing.assert_allclose(img.GetSpacing(), raw.GetSpacing(), rtol=1e-6, atol=0)
    np.testing.assert_allclose(img.GetOrigin(), raw.GetOrigin(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(img.GetDirection(), raw.GetDirection(), rtol=0, atol=1e-6)
    a, b = sitk.GetArrayViewFromImage(img), sitk.GetArrayViewFromImage(raw)
    if a.dtype.kind == "f":
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)
    else:
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rel,mode", VOLUMES, ids=IDS)
def test_prepare_and_tokenize_match_reference(results, rel, mode):
    img = results.ours(rel)
    got = prepare_for_inference(img, mode, return_foreground=True)
    ref = R.ref_prepare(img, mode, return_foreground=True)
    if ref is None:
        assert got is None
        return
    arrs, mask, view, fg = got
    rarrs, rmask, rview, rfg = ref
    assert view == rview
    assert len(arrs) == len(rarrs)
    for a, r in zip(arrs, rarrs):
        assert a.dtype == np.float32 and a.shape == r.shape
        np.testing.assert_allclose(a, r, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(mask, rmask)
    np.testing.assert_array_equal(fg, rfg)
    tok, coords, filtered = tokenize(arrs[0], mask)
    rtok, rcoords, rfiltered = R.ref_tokenize(arrs[0], mask)
    np.testing.assert_array_equal(tok, rtok)
    np.testing.assert_array_equal(coords, rcoords)
    np.testing.assert_array_equal(filtered, rfiltered)
    np.testing.assert_array_equal(tokenize(arrs[0], foreground=fg)[2], rmask)


@pytest.mark.parametrize("rel", sorted(DOCUMENTED))
def test_documented_shapes(data_dir, rel):
    size, z, view = DOCUMENTED[rel]
    img = load_image(data_dir / rel)
    assert img.GetSize() == size
    assert int(np.argmax(img.GetSpacing())) == z and img.GetSpacing()[z] == 4.0
    mode = "ct" if rel.startswith("ct/") else "mri"
    arrs, mask, v = prepare_for_inference(img, mode)
    assert v == view
    d, h, w = arrs[0].shape[1:]
    assert d == size[z] and mask.shape == (d // 4 * (h // 16) * (w // 16),)


def test_left_right_flipped_templates_agree(results):
    lr = results.ours("edge/nifti/avg152T1_LR_nifti.nii.gz")
    rl = results.ours("edge/nifti/avg152T1_RL_nifti.nii.gz")
    assert lr.GetSize() == rl.GetSize()
    np.testing.assert_allclose(lr.GetDirection(), rl.GetDirection(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(lr), sitk.GetArrayViewFromImage(rl))
