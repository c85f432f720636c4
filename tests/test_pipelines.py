"""neurovfm.pipelines.StudyPreprocessor: the packed study batch for the encoder.

Expected values come from neurovfm.data applied per file (load_image,
prepare_for_inference, tokenize) and the packing rules of the module: series in
order (three per CT volume: brain, blood, bone), tokens concatenated, background
tokens dropped when asked, series_cu_seqlens = 0 then the cumulative token counts.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

torch = pytest.importorskip("torch")

from neurovfm.data import load_image, prepare_for_inference, tokenize  # noqa: E402
from neurovfm.errors import (  # noqa: E402
    ImageNotFoundError,
    ImageReadError,
    ImageTooSmallError,
    InvalidArgumentError,
    InvalidTypeError,
)
from neurovfm.pipelines import StudyPreprocessor  # noqa: E402

KEYS = [
    "img",
    "coords",
    "series_masks_indices",
    "series_cu_seqlens",
    "series_max_len",
    "study_cu_seqlens",
    "study_max_len",
    "mode",
    "path",
    "size",
]
WINDOWS = ("BrainWindow", "BloodWindow", "BoneWindow")


def expected_series(
    path: str | Path, mode: str, remove_background: bool
) -> list[tuple[np.ndarray, np.ndarray, tuple[int, ...]]]:
    """(tokens, coords, size) per series of one volume, from neurovfm.data alone."""
    res = prepare_for_inference(load_image(path), mode)
    assert res is not None
    arrs, flags = res[0], res[1]
    out = []
    for arr in arrs:
        tok = tokenize(arr)
        keep = flags == 0 if remove_background else np.ones(len(flags), bool)
        out.append((tok.img[keep], tok.coords[keep].astype(np.int64), tuple(arr.shape[1:])))
    return out


def check_batch(
    batch: dict[str, Any], series: list[tuple[np.ndarray, np.ndarray, tuple[int, ...]]], mode: str, names: list[str]
) -> None:
    assert list(batch) == KEYS
    lengths = [len(t) for t, _, _ in series]
    assert batch["img"].dtype == torch.float32
    assert batch["coords"].dtype == torch.int64
    np.testing.assert_array_equal(batch["img"].numpy(), np.concatenate([t for t, _, _ in series]))
    np.testing.assert_array_equal(batch["coords"].numpy(), np.concatenate([c for _, c, _ in series]))
    assert batch["series_cu_seqlens"].dtype == torch.int32
    assert batch["series_cu_seqlens"].tolist() == [0, *np.cumsum(lengths).tolist()]
    assert batch["series_max_len"] == max(lengths)
    assert batch["study_cu_seqlens"].dtype == torch.int32
    assert batch["study_cu_seqlens"].tolist() == [0, sum(lengths)]
    assert batch["study_max_len"] == len(series)
    assert batch["series_masks_indices"].numel() == 0
    assert batch["mode"] == [mode] * len(series)
    assert batch["path"] == names
    assert batch["size"] == [s for _, _, s in series]


def write_nifti(path: Path, arr: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 4.0)) -> Path:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


def mri_volume(seed: int, shape: tuple[int, int, int] = (12, 40, 48)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    blob = np.exp(-(((y - shape[1] / 2) / 12) ** 2 + ((x - shape[2] / 2) / 14) ** 2))
    return (200 * blob + rng.normal(0, 5, shape)).astype(np.float32)


def test_import_does_not_import_torch() -> None:
    code = "import sys, neurovfm.pipelines; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("remove_background", [True, False])
def test_ct_file_three_windows(scan_dir: Path, remove_background: bool) -> None:
    f = scan_dir / "ct" / "phantom_head_1mm.nii.gz"
    batch = StudyPreprocessor(remove_background=remove_background).load_study(f, "CT")
    series = expected_series(f, "ct", remove_background)
    assert len(series) == 3
    # Path.stem of "phantom_head_1mm.nii.gz", as the published pipeline names it
    check_batch(batch, series, "ct", [f"phantom_head_1mm.nii_{w}" for w in WINDOWS])
    if not remove_background:
        d, h, w = series[0][2]
        assert batch["series_cu_seqlens"].tolist() == [0, *(k * (d // 4) * (h // 16) * (w // 16) for k in (1, 2, 3))]


@pytest.mark.parametrize("remove_background", [True, False])
def test_mri_folder(scan_dir: Path, remove_background: bool) -> None:
    folder = scan_dir / "mr" / "stroke"
    pre = StudyPreprocessor((4, 16, 16), (1, 1, 4), remove_background)
    batch = pre(str(folder), "mri")
    files = [folder / n for n in ("FLAIR.nii.gz", "T1.nii.gz", "T2.nii.gz")]  # sorted; SOURCE.md ignored
    series = [s for f in files for s in expected_series(f, "mri", remove_background)]
    check_batch(batch, series, "mri", [str(f) for f in files])
    # a list of paths, in the order given
    listed = pre.load_study([files[2], str(files[0])], "mri")
    check_batch(
        listed,
        [*expected_series(files[2], "mri", remove_background), *series[:1]],
        "mri",
        [str(files[2]), str(files[0])],
    )


@pytest.fixture(scope="module")
def mixed_study(scan_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CT study folder: a NIfTI at the top, an extension-less DICOM series in a sub-folder."""
    study = tmp_path_factory.mktemp("study")
    shutil.copytree(scan_dir / "ct" / "phantom_head_5mm", study / "dicom" / "axial")
    assert not any(p.suffix == ".dcm" for p in (study / "dicom" / "axial").iterdir())
    shutil.copy(scan_dir / "ct" / "body_small.nii.gz", study / "a_body.nii.gz")
    (study / "notes.txt").write_text("not an image\n")
    return study


@pytest.mark.usefixtures("quiet_itk")
def test_dicom_subfolder_without_suffix(mixed_study: Path) -> None:
    series_dir = mixed_study / "dicom" / "axial"
    batch = StudyPreprocessor(num_workers=1).load_study(mixed_study, "ct")
    series = expected_series(mixed_study / "a_body.nii.gz", "ct", True) + expected_series(series_dir, "ct", True)
    names = [f"a_body.nii_{w}" for w in WINDOWS] + [f"axial_{w}" for w in WINDOWS]
    check_batch(batch, series, "ct", names)
    # the series folder itself, as an MRI-style name (its path)
    mr = StudyPreprocessor().load_study(series_dir, "mri")
    check_batch(mr, expected_series(series_dir, "mri", True), "mri", [str(series_dir)])


@pytest.mark.usefixtures("quiet_itk")
@pytest.mark.parametrize("remove_background", [True, False])
def test_parallel_equals_sequential(mixed_study: Path, scan_dir: Path, remove_background: bool) -> None:
    paths = [mixed_study, scan_dir / "mr" / "stroke"]
    for path, mode in zip(paths, ("ct", "mri")):
        seq = StudyPreprocessor(remove_background=remove_background, num_workers=1)(path, mode)
        par = StudyPreprocessor(remove_background=remove_background, num_workers=4)(path, mode)
        auto = StudyPreprocessor(remove_background=remove_background)(path, mode)
        for other in (par, auto):
            assert list(other) == list(seq)
            for k, v in seq.items():
                if isinstance(v, torch.Tensor):
                    assert other[k].dtype == v.dtype
                    assert torch.equal(other[k], v), k
                else:
                    assert other[k] == v, k


def test_small_files(tmp_path: Path) -> None:
    a = write_nifti(tmp_path / "b.nii.gz", mri_volume(1))
    b = write_nifti(tmp_path / "a.nii", mri_volume(2, (16, 48, 40)))
    batch = StudyPreprocessor(num_workers=2).load_study(tmp_path, "mri")
    series = expected_series(b, "mri", True) + expected_series(a, "mri", True)
    check_batch(batch, series, "mri", [str(b), str(a)])


def test_too_small_volume_is_skipped_or_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    big = write_nifti(tmp_path / "big.nii.gz", mri_volume(3))
    tiny = write_nifti(tmp_path / "tiny.nii.gz", mri_volume(4, (2, 40, 48)))  # 8 mm: 2 slices at 4 mm
    with caplog.at_level("WARNING", logger="neurovfm.pipelines.preprocessor"):
        batch = StudyPreprocessor().load_study([tiny, big], "mri")
    check_batch(batch, expected_series(big, "mri", True), "mri", [str(big)])
    assert "tiny.nii.gz: too small for one 4x16x16 token after resampling to 1x1x4 mm" in caplog.text
    with pytest.raises(ImageTooSmallError, match="no volume of the study holds one 4x16x16 token"):
        StudyPreprocessor().load_study(tiny, "mri")


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"patch_size must be \(4, 16, 16\)"):
        StudyPreprocessor(patch_size=(2, 16, 16))
    with pytest.raises(InvalidArgumentError, match=r"target_spacing must be \(1.0, 1.0, 4.0\)"):
        StudyPreprocessor(target_spacing=(1.0, 1.0, 5.0))
    with pytest.raises(InvalidArgumentError, match="num_workers must be a positive integer"):
        StudyPreprocessor(num_workers=0)
    with pytest.raises(InvalidTypeError, match="remove_background must be a bool"):
        StudyPreprocessor(remove_background="yes")  # type: ignore[arg-type]
    pre = StudyPreprocessor()
    good = write_nifti(tmp_path / "ok.nii.gz", mri_volume(5))
    with pytest.raises(InvalidArgumentError, match="modality must be 'ct' or 'mri'"):
        pre.load_study(good, "pet")
    with pytest.raises(ImageNotFoundError, match="no such file or directory"):
        pre.load_study(tmp_path / "missing.nii.gz", "mri")
    with pytest.raises(ImageNotFoundError, match="no such file or directory"):
        pre.load_study([good, tmp_path / "missing"], "mri")
    with pytest.raises(InvalidArgumentError, match="empty list"):
        pre.load_study([], "mri")
    with pytest.raises(InvalidTypeError, match="study_path must be a path or a list of paths"):
        pre.load_study(3, "mri")  # type: ignore[arg-type]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.nii.gz").write_bytes(b"not a nifti file at all")
    with pytest.raises(ImageReadError, match="broken.nii.gz"):
        pre.load_study(bad, "mri")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageReadError, match="no usable NIfTI file or DICOM series in this study folder$"):
        pre.load_study(empty, "mri")
