"""Visual QA (`neurovfm qa`): the orientation letters against a marker placed at a
known patient position for every acquisition direction, the montage's panels and
edge letters, the PNG it writes from a scan and from a cache, and the CLI's errors."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from neurovfm import phantom, qa
from neurovfm.cli import main
from neurovfm.data import DatasetMetadata, CacheManager, prepare_for_inference, preprocess_image

from conftest import signed_permutations

OPP = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
#: The marker sits to the patient's Left, Anterior and Superior of the volume centre.
MARKER_LPS = np.array([14.0, -14.0, 14.0])
MARKER_SIDES = {"L", "A", "S"}


def _marker_image(direction: np.ndarray, thick: int) -> sitk.Image:
    """0 HU everywhere, a 3000 HU ball at MARKER_LPS; the volume centred on the origin;
    image axis ``thick`` sampled at 4 mm (the slice axis), the others at 1 mm."""
    size = [48, 48, 48]
    size[thick] = 16
    spacing = np.ones(3)
    spacing[thick] = 4.0
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), axis=-1).astype(float)  # x,y,z
    origin = -direction @ (spacing * (np.asarray(size) - 1) / 2)
    phys = origin + (idx * spacing) @ direction.T
    ball = np.linalg.norm(phys - MARKER_LPS, axis=-1) < 6.0
    arr = np.where(ball, 3000, 0).astype(np.int16).transpose(2, 1, 0)  # -> (z, y, x)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    img.SetDirection([float(v) for v in direction.ravel()])
    return img


def test_rpi_direction_is_simpleitks():
    assert qa.RPI_DIRECTION == tuple(sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation("RPI"))
    assert qa.orientation_letters(0) == ("I", "P", "R")
    assert qa.orientation_letters(1) == ("P", "I", "R")
    assert qa.orientation_letters(2) == ("R", "P", "I")
    # identity direction is LPS in ITK/DICOM terms
    assert qa.orientation_letters(0, np.eye(3).ravel()) == ("S", "P", "L")


@pytest.mark.parametrize("thick", [0, 1, 2])
@pytest.mark.parametrize("k", range(48))
def test_letters_point_to_a_marker(k, thick):
    """For every signed-permutation direction and every slice axis, the marker (left,
    anterior, superior of the centre) lies towards the letters L, A and S."""
    direction = signed_permutations()[k]
    img = preprocess_image(_marker_image(direction, thick))
    arrs, _mask, view = prepare_for_inference(img, "ct")
    bone = arrs[2][0]
    pos = np.unravel_index(int(np.argmax(bone)), bone.shape)
    letters = qa.orientation_letters(view, img.GetDirection())
    assert {x if x in "LPS" else OPP[x] for x in letters} == {"L", "P", "S"}, letters
    # the slice axis (4 mm) is D, and its letter tells the acquisition plane
    patient_axis = int(np.argmax(np.abs(direction[:, thick])))  # 0 L/R, 1 A/P, 2 S/I
    assert view == 2 - patient_axis
    assert letters[0] in ("RL", "AP", "SI")[patient_axis]
    for a, letter in enumerate(letters):
        centre = (bone.shape[a] - 1) / 2
        if letter in MARKER_SIDES:
            assert pos[a] > centre, (a, letter, pos, bone.shape)
        else:
            assert OPP[letter] in MARKER_SIDES
            assert pos[a] < centre, (a, letter, pos, bone.shape)


def _panel_letters(ax) -> dict:
    out = {}
    for t in ax.texts:
        x, y = t.get_position()
        side = {(0.5, 0.985): "top", (0.5, 0.015): "bottom", (0.012, 0.5): "left", (0.988, 0.5): "right"}.get(
            (round(x, 3), round(y, 3))
        )
        if side:
            out[side] = t.get_text()
    return out


@pytest.mark.parametrize("thick", [0, 1, 2])
def test_montage_edges_face_the_marker(thick):
    """In each panel the marker is on the side of the edges labelled L, A or S."""
    pytest.importorskip("matplotlib")
    direction = signed_permutations()[11]
    img = preprocess_image(_marker_image(direction, thick))
    arrs, mask, view = prepare_for_inference(img, "ct")
    vol = qa.QAVolume(
        [a[0] for a in arrs],
        ["brain", "blood", "bone"],
        mask,
        view,
        img.GetSpacing(),
        "ct",
        direction=img.GetDirection(),
        name="marker",
    )
    bone = arrs[2][0]
    pos = np.unravel_index(int(np.argmax(bone)), bone.shape)
    fig = qa.render_montage(vol)
    axes = fig.axes
    assert len(axes) == 9
    for col, axis in enumerate(range(3)):
        r, c = (a for a in range(3) if a != axis)
        for row in range(3):
            lt = _panel_letters(axes[row * 3 + col])
            assert set(lt) == {"top", "bottom", "left", "right"}
            assert OPP[lt["top"]] == lt["bottom"] and OPP[lt["left"]] == lt["right"]
            # rows grow downwards (imshow), columns to the right
            if lt["bottom"] in MARKER_SIDES:
                assert pos[r] > (bone.shape[r] - 1) / 2
            else:
                assert pos[r] < (bone.shape[r] - 1) / 2
            if lt["right"] in MARKER_SIDES:
                assert pos[c] > (bone.shape[c] - 1) / 2
            else:
                assert pos[c] < (bone.shape[c] - 1) / 2
        # the panel shows the centre slice across `axis`
        shown = axes[col].images[0].get_array()
        assert shown.shape == tuple(np.delete(bone.shape, axis))


def _png_size(path: Path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    w, h = struct.unpack(">II", data[16:24])
    return w, h


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("qa") / "small_ct.nii.gz"
    sitk.WriteImage(phantom.make_ct_phantom(shape=(96, 96, 40), spacing=(2.0, 2.0, 3.0)), str(path))
    return path


def test_qa_scan_writes_png(small_ct, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "qa.png"
    assert main(["qa", str(small_ct), "--mode", "ct", "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert f"wrote {out}" in stdout
    assert "[D, H, W] = [28, 192, 192]" in stdout and "D/H/W towards I/P/R" in stdout
    w, h = _png_size(out)
    assert w >= 900 and h >= 900  # 3 x 3 panels at 100 dpi


def test_qa_mri_one_row(tmp_path):
    pytest.importorskip("matplotlib")
    src = tmp_path / "mr.nii.gz"
    sitk.WriteImage(phantom.make_mri_phantom(shape=(64, 96, 96), spacing=(2.0, 2.0, 2.0)), str(src))
    vol = qa.load_scan(src, "mri")
    assert vol.channels == ["MRI (normalised)"] and len(vol.arrays) == 1
    fig = qa.render_montage(vol)
    assert len(fig.axes) == 3
    title = fig._suptitle.get_text()
    assert "MRI" in title and f"[D, H, W] = [{', '.join(map(str, vol.shape))}]" in title
    assert "spacing (x, y, z)" in title and "voxel (D, H, W)" in title
    out = qa.save_montage(vol, tmp_path / "mr.svg")
    assert out.read_text().lstrip().startswith("<?xml")


def test_background_shading_follows_the_token_flags(small_ct):
    pytest.importorskip("matplotlib")
    vol = qa.load_scan(small_ct, "ct")
    fig = qa.render_montage(vol)
    d, h, w = vol.shape
    mask3 = np.asarray(vol.mask).reshape(d // 4, h // 16, w // 16).astype(bool)
    overlay = fig.axes[0].images[1].get_array()  # axial panel: slice across D
    shaded = np.asarray(overlay)[..., 3] > 0
    expect = np.repeat(np.repeat(mask3[(d // 2) // 4], 16, axis=0), 16, axis=1)
    np.testing.assert_array_equal(shaded, expect)
    assert 0 < shaded.mean() < 1


@pytest.fixture(scope="module")
def cached_ds(tmp_path_factory, small_ct):
    root = tmp_path_factory.mktemp("qa_ds")
    (root / "raw" / "s001").mkdir(parents=True)
    (root / "raw" / "s001" / "head.nii.gz").write_bytes(small_ct.read_bytes())
    (root / "raw" / "s002").mkdir(parents=True)
    (root / "raw" / "s002" / "head.nii.gz").write_bytes(small_ct.read_bytes())
    DatasetMetadata.from_directory(root, {"s001": "ct", "s002": "ct"}).save()
    CacheManager(root).build_cache(num_workers=1, study_names=["s001"], progress=False)
    return root


def test_qa_cached_image(cached_ds, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "cached.png"
    assert main(["qa", "--cache", str(cached_ds), "--study", "s001", "-o", str(out)]) == 0
    assert "s001/head, CT, [D, H, W] = [28, 192, 192]" in capsys.readouterr().out
    assert _png_size(out)[0] >= 900
    vol = qa.load_cached(cached_ds, "s001", "head")
    assert vol.view == 0 and len(vol.arrays) == 3 and vol.arrays[0].dtype == np.float32


@pytest.mark.parametrize(
    "argv,message",
    [
        (["qa", "-o", "{tmp}/x.png"], "give a SCAN"),
        (["qa", "{ct}", "-o", "{tmp}/x.png"], "--mode is required"),
        (["qa", "{ct}", "--mode", "ct", "-o", "{tmp}/x.gif"], "must end with .png, .pdf, .svg"),
        (["qa", "{ct}", "--mode", "ct", "-o", "{tmp}/nope/x.png"], "does not exist"),
        (["qa", "{tmp}/missing.nii.gz", "--mode", "ct", "-o", "{tmp}/x.png"], "no such file"),
        (["qa", "{ct}", "--mode", "ct", "--study", "s", "-o", "{tmp}/x.png"], "--study is for --cache"),
        (["qa", "--cache", "{ds}", "-o", "{tmp}/x.png"], "--cache needs --study"),
        (["qa", "--cache", "{ds}", "--study", "nope", "-o", "{tmp}/x.png"], "study 'nope' is not in"),
        (["qa", "--cache", "{ds}", "--study", "s001", "--image", "x", "-o", "{tmp}/x.png"], "has no image 'x'"),
        (["qa", "--cache", "{ds}", "--study", "s002", "-o", "{tmp}/x.png"], "is not cached"),
        (["qa", "--cache", "{ds}", "--study", "s001", "--mode", "ct", "-o", "{tmp}/x.png"], "a cached image knows"),
        (["qa", "--cache", "{tmp}", "--study", "s001", "-o", "{tmp}/x.png"], "no metadata.json"),
    ],
)
def test_qa_user_errors(argv, message, small_ct, cached_ds, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    subs = {"{ct}": str(small_ct), "{ds}": str(cached_ds)}
    argv = [subs.get(a, a).replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neurovfm: error: "), err
    assert message in err[0]


def test_qa_without_matplotlib(small_ct, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["qa", str(small_ct), "--mode", "ct", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("neurovfm: error: the QA montage needs matplotlib") and "neurovfm[qa]" in err
    assert "\n" not in err
    with pytest.raises(ImportError, match=r"neurovfm\[qa\]"):
        qa.render_montage(qa.load_scan(small_ct, "ct"))
