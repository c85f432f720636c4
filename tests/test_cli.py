"""The command line: `neurovfm prepare` on the phantoms and on a path, its output
file, and its errors (exit code 2, one line on stderr)."""

from __future__ import annotations

import contextlib
import io
import struct
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import corpus_dir, package_env

import neurovfm
from neurovfm import phantom
from neurovfm.cli import UsageError, main
from neurovfm.cli.prepare import run_scan
from neurovfm.data import (
    OutputGeometry,
    load_image,
    output_geometry,
    prepare_for_inference,
    read_volume,
    tokenize,
    untokenize,
)
from neurovfm.data.sources import dicom as dicom_reader
from neurovfm.data import io as data_io
from neurovfm.data.sources import nifti as readers
from neurovfm.errors import ImageTooSmallError, NeuroVFMError


@pytest.fixture(autouse=True)
def _restore_threads():
    sitk_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    yield
    neurovfm.set_num_threads(None)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(sitk_threads)


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory) -> Path:
    """A small CT phantom as .nii.gz: resamples to [28, 192, 192]."""
    path = tmp_path_factory.mktemp("cli") / "small_ct.nii.gz"
    sitk.WriteImage(phantom.make_ct_phantom(shape=(96, 96, 40), spacing=(2.0, 2.0, 3.0)), str(path))
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`prepare` without PATH, run once in-process (capsys is per test, so the
    output is captured here): (exit code, stdout, stderr, output folder)."""
    out_dir = tmp_path_factory.mktemp("demo")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["prepare", "--phantom-dir", str(out_dir / "phantoms"), "-o", str(out_dir / "t.npz")])
    return rc, out.getvalue(), err.getvalue(), out_dir


def _block(stdout: str, name: str) -> str:
    """The lines printed for one scan."""
    m = re.search(rf"^{name}: .*?(?=^\S|\Z)", stdout, re.MULTILINE | re.DOTALL)
    assert m, f"no block for {name} in:\n{stdout}"
    return m.group(0)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("neurovfm: error: "), err
    return lines[0]


# --- prepare without PATH (the phantoms) ----------------------------------------------------


def test_prepare_phantoms_ct_and_mri(demo):
    _, out, _, out_dir = demo
    assert "No PATH given" in out
    ct = _block(out, "ct_nifti")
    assert "(mode ct)" in ct
    assert "input     256 x 256 x 120 voxels (x, y, z), 0.8 x 0.8 x 1.5 mm, int16, orientation LPS" in ct
    assert "output    [D, H, W] = [44, 192, 192], spacing 1 x 1 x 4 mm (x, y, z), view 0 (axial)" in ct
    assert "tokens    N = 1584 (11 x 12 x 12), foreground " in ct
    assert re.search(r"foreground \d+\.\d% of tokens, \d+\.\d% of voxels", ct)
    assert re.search(
        r"time      read\+resample [\d.]+ s \| prepare [\d.]+ s \| tokenize [\d.]+ s \| total [\d.]+ s", ct
    )
    mri = _block(out, "mri_nifti")
    assert "(mode mri)" in mri
    assert "uint16, orientation PIR" in mri
    assert "output    [D, H, W] = [40, 192, 192], spacing 4 x 1 x 1 mm (x, y, z), view 2 (sagittal)" in mri
    assert "tokens    N = 1440 (10 x 12 x 12)" in mri
    # One output file per phantom.
    for name, channels in (("ct_nifti", 3), ("mri_nifti", 1)):
        with np.load(out_dir / f"t.{name}.npz") as z:
            assert z["tokens"].shape[0] == channels
    assert (out_dir / "phantoms" / "ct_phantom.nii.gz").is_file()  # --phantom-dir keeps them


def test_prepare_phantoms_dicom(demo):
    rc, out, err, _ = demo
    dcm = _block(out, "ct_dicom")
    assert rc == 0, err
    assert "3 of 3 phantom scans prepared" in out
    # The DICOM series is the same CT as the NIfTI: same input, output and tokens.
    ct = _block(out, "ct_nifti")
    for prefix in ("  input", "  output", "  tokens"):
        line = next(ln for ln in ct.splitlines() if ln.startswith(prefix))
        assert line in dcm


def test_prepare_mode_filters_phantoms(tmp_path, capsys):
    rc = main(["prepare", "--mode", "mri", "--phantom-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "mri_nifti:" in out and "ct_nifti:" not in out and "ct_dicom:" not in out
    assert "1 of 1 phantom scans prepared" in out


# --- prepare PATH -----------------------------------------------------------------------------


def test_prepare_path_npz_round_trip(small_ct, tmp_path, capsys):
    out_file = tmp_path / "tokens.npz"
    rc = main(["prepare", str(small_ct), "--mode", "CT", "-j", "1", "-o", str(out_file)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "output    [D, H, W] = [28, 192, 192]" in out
    assert f"saved     {out_file}" in out
    img = load_image(small_ct)
    arrs, mask, view = prepare_for_inference(img, "ct")
    with np.load(out_file) as z:
        assert z["tokens"].shape == (3, 7 * 12 * 12, 1024) and z["tokens"].dtype == np.float32
        assert "arrays" not in z.files  # the tokens hold every voxel
        assert OutputGeometry.from_dict(z) == output_geometry(img, view)
        np.testing.assert_array_equal(untokenize(z["tokens"], z["size"]), np.concatenate(arrs))
        assert list(z["channels"]) == ["brain", "blood", "bone"]
        assert str(z["mode"]) == "ct" and int(z["view"]) == view == 0
        np.testing.assert_array_equal(z["size"], [7, 12, 12])
        np.testing.assert_array_equal(z["filtered"], mask)
        for c in range(3):
            tok = tokenize(arrs[c], mask)
            np.testing.assert_array_equal(z["tokens"][c], tok.img)
            np.testing.assert_array_equal(z["coords"], tok.coords)
        np.testing.assert_allclose(z["spacing"], [1.0, 1.0, 4.0])


def test_prepare_path_pt(small_ct, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    out_file = tmp_path / "tokens.pt"
    assert main(["prepare", str(small_ct), "--mode", "ct", "-o", str(out_file)]) == 0
    d = torch.load(out_file, weights_only=True)
    assert tuple(d["tokens"].shape) == (3, 1008, 1024) and d["tokens"].dtype == torch.float32
    assert d["coords"].dtype == torch.int32 and d["filtered"].dtype == torch.uint8
    assert d["channels"] == ["brain", "blood", "bone"] and d["mode"] == "ct"


def test_pt_without_torch_is_a_user_error(small_ct, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails
    rc = main(["prepare", str(small_ct), "--mode", "ct", "-o", str(tmp_path / "x.pt")])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert "PyTorch" in _one_error_line(err)
    assert not (tmp_path / "x.pt").exists()


# --- errors: exit code 2, one line on stderr ---------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["prepare", "{missing}", "--mode", "ct"], "no such file or directory"),
        (["prepare", "{ct}"], "--mode is required"),
        (["prepare", "{ct}", "--mode", "pet"], "invalid mode 'pet'"),
        (["prepare", "{ct}", "--mode", "ct", "-o", "{tmp}/x.txt"], "must end with .npz or .pt"),
        (["prepare", "{ct}", "--mode", "ct", "-o", "{tmp}/no/such/dir/x.npz"], "does not exist"),
        (["prepare", "{garbage}", "--mode", "ct"], "garbage.nii.gz"),
        (["prepare", "-j", "0"], "positive integer"),
        (["prepare", "--series-uid", "1.2.3"], "--series-uid needs a PATH"),
        (["prepare", "{ct}", "--mode", "ct", "--phantom-dir", "{tmp}"], "--phantom-dir"),
        ([], "required: COMMAND"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_user_errors(argv, message, small_ct, tmp_path, capsys):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not an image\n" * 10)
    subs = {"{missing}": str(tmp_path / "nope.nii.gz"), "{ct}": str(small_ct), "{garbage}": str(garbage)}
    argv = [subs.get(a, a).replace("{tmp}", str(tmp_path)) for a in argv]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    assert message in _one_error_line(err)


def test_help_via_python_m():
    env = package_env()
    res = subprocess.run(
        [sys.executable, "-m", "neurovfm", "prepare", "--help"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: neurovfm prepare")
    for text in ("--mode", "--series-uid", "examples:"):
        assert text in res.stdout
    # Python 3.13's argparse names the metavar once: "-j, --threads N" (before: "-j N, --threads N")
    for pattern in (r"-j( N)?, --threads N", r"-o( OUT)?, --output OUT"):
        assert re.search(pattern, res.stdout), pattern
    assert res.stderr == ""


def test_help_and_version_in_process(capsys):
    assert main(["--help"]) == 0
    assert "prepare" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"neurovfm {neurovfm.__version__}"


def test_main_restores_global_state(small_ct, capsys):
    import logging

    logger = logging.getLogger("neurovfm")
    level, handlers = logger.level, list(logger.handlers)
    neurovfm.set_num_threads(3)
    assert main(["prepare", str(small_ct), "--mode", "ct", "-j", "1", "-v"]) == 0
    assert neurovfm.get_num_threads() == 3
    assert logger.level == level and logger.handlers == handlers


# --- the input's header comes from the pipeline's own read ----------------------------------


def _scaled_nifti(path: Path) -> Path:
    """An uncompressed NIfTI with scl_slope 2, scl_inter 1: SimpleITK decodes it (not direct)."""
    sitk.WriteImage(phantom.make_ct_phantom(shape=(64, 64, 20), spacing=(2.0, 2.0, 3.0)), str(path))
    b = bytearray(path.read_bytes())
    struct.pack_into("<ff", b, 112, 2.0, 1.0)
    path.write_bytes(bytes(b))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, small_ct) -> dict:
    """One input for each way load_image reads: name -> (path, streamed)."""
    d = tmp_path_factory.mktemp("inputs")
    streamed = d / "thick_slices.nii.gz"  # stored along its slice axis, the last pass: streamed
    sitk.WriteImage(phantom.make_ct_phantom(shape=(96, 96, 24), spacing=(0.5, 0.5, 5.0)), str(streamed))
    whole = d / "sideways.nii.gz"  # slice axis x, stored along z: decoded whole
    sitk.WriteImage(phantom.make_ct_phantom(shape=(24, 96, 80), spacing=(5.0, 0.5, 0.5)), str(whole))
    plain = d / "small_ct.nii"
    sitk.WriteImage(sitk.ReadImage(str(small_ct)), str(plain))
    ph = phantom.write_phantoms(d / "phantoms", names=["ct_dicom", "mri_nifti"])
    return {
        "nifti_streamed": (streamed, True),
        "nifti_gz_whole": (whole, False),
        "nifti_gz_thin": (small_ct, True),
        "nifti_uncompressed": (plain, True),
        "nifti_scaled": (_scaled_nifti(d / "scaled.nii"), False),
        "nifti_sagittal_mri": (ph["mri_nifti"], True),  # stored sagittally, its slice axis
        "dicom_series": (ph["ct_dicom"], False),
    }


@pytest.mark.parametrize(
    "case",
    [
        "nifti_streamed",
        "nifti_gz_whole",
        "nifti_gz_thin",
        "nifti_uncompressed",
        "nifti_scaled",
        "nifti_sagittal_mri",
        "dicom_series",
    ],
)
def test_run_scan_is_load_image(case, inputs):
    """The CLI reads the raw volume (its mode guard looks at the values), then resamples
    it: the very bytes of load_image + prepare_for_inference, and the input as read."""
    path, streamed = inputs[case]
    path = str(path)
    if readers.is_nifti(path):  # the test covers both NIfTI paths of load_image
        layout = readers.nifti_layout(path)
        assert (layout.direct and data_io._stream_plan(layout) is not None) == streamed
    mode = "mri" if "mri" in case else "ct"
    r = run_scan(path, mode, keep_arrays=True)
    ref = load_image(path)
    arrs, _flags, view = prepare_for_inference(ref, mode)
    assert r.view == view and r.output_shape == arrs[0].shape[-3:]
    assert r.output_spacing == tuple(ref.GetSpacing())
    got = untokenize(r.arrays["tokens"], r.arrays["size"])
    np.testing.assert_array_equal(got, np.concatenate(arrs))
    # the header: the input as read_volume gives it
    vol = read_volume(path)
    assert r.input_size == vol.array.shape[::-1]
    assert r.input_spacing == tuple(float(s) for s in vol.spacing)
    assert r.input_dtype == vol.array.dtype.name
    expected = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines([float(x) for x in vol.direction])
    assert r.input_orientation == expected
    if readers.is_nifti(path):  # and what SimpleITK's header says of a file
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        assert r.input_size == reader.GetSize()[:3]
        assert r.input_spacing == reader.GetSpacing()[:3]
        assert r.input_dtype == sitk.GetArrayViewFromImage(sitk.ReadImage(path)).dtype.name
    if case == "nifti_scaled":
        assert r.input_dtype == "float32"  # SimpleITK applies the scaling


def test_header_of_a_multiframe_dicom_file_is_the_volume_read(capsys):
    """SimpleITK's header of this enhanced multi-frame file says spacing 2 x 2 x -2 mm,
    orientation PIR; the volume the pipeline reads (as sitk.ReadImage) has 2 x 2 x 2 mm,
    PIL. The report shows the volume that was preprocessed."""
    root = corpus_dir()
    if root is None or not (root / "mr/enhanced_multiframe_t1.dcm").is_file():
        pytest.skip("NEUROVFM_TEST_DATA does not hold mr/enhanced_multiframe_t1.dcm")
    path = root / "mr/enhanced_multiframe_t1.dcm"
    assert main(["prepare", str(path), "--mode", "mri"]) == 0
    out = capsys.readouterr().out
    assert "  input     128 x 128 x 96 voxels (x, y, z), 2 x 2 x 2 mm, uint16, orientation PIL\n" in out


def test_prepare_reads_the_input_once(inputs, monkeypatch, capsys):
    """One header read of a NIfTI file; a DICOM folder walked once (find_series, which picks
    the series under the derived policy) and its pixels read once, from that walk's record."""
    from neurovfm.data.sources.dicom import read as dicom_read
    from neurovfm.data.sources.dicom import series as dicom_series

    header_reads, dicom_reads, walks = [], [], []
    read_info = sitk.ImageFileReader.ReadImageInformation
    read_series = dicom_reader.read_series
    scan = dicom_series._scan

    def counting_info(self):
        header_reads.append(self.GetFileName())
        return read_info(self)

    def counting_series(s, *a, **k):
        dicom_reads.append(s.folder)
        return read_series(s, *a, **k)

    def counting_scan(p, *a, **k):
        walks.append(str(p))
        return scan(p, *a, **k)

    monkeypatch.setattr(sitk.ImageFileReader, "ReadImageInformation", counting_info)
    monkeypatch.setattr(dicom_reader, "read_series", counting_series)
    monkeypatch.setattr(dicom_read, "_scan", counting_scan)
    monkeypatch.setattr(dicom_series, "_scan", counting_scan)
    for case in ("nifti_streamed", "nifti_gz_whole"):
        path = str(inputs[case][0])
        header_reads.clear()
        assert main(["prepare", path, "--mode", "ct"]) == 0
        assert header_reads == [path], case
    path = str(inputs["dicom_series"][0])
    assert main(["prepare", path, "--mode", "ct"]) == 0
    assert dicom_reads == [path] and walks == [path]
    out, err = capsys.readouterr()
    assert err == "" and out.count("  input     ") == 3


# --- the error family ---------------------------------------------------------------------------


def test_usage_error_is_in_the_family():
    assert issubclass(UsageError, NeuroVFMError) and issubclass(UsageError, ValueError)
    with pytest.raises(NeuroVFMError, match=r"nope\.nii\.gz: no such file or directory"):
        run_scan("nope.nii.gz", "ct")


@pytest.fixture(scope="module")
def tiny_ct(tmp_path_factory) -> Path:
    """Resamples to [2, 16, 16]: fewer slices than one 4x16x16 token."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.nii.gz"
    sitk.WriteImage(phantom.make_ct_phantom(shape=(16, 16, 8), spacing=(1.0, 1.0, 1.0)), str(path))
    return path


def test_too_small_for_a_token_is_image_too_small_error(tiny_ct, capsys):
    with pytest.raises(ImageTooSmallError, match=r"tiny\.nii\.gz: too small for one 4x16x16 token .*\(16, 16, 2\)"):
        run_scan(tiny_ct, "ct")
    assert main(["prepare", str(tiny_ct), "--mode", "ct"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    line = _one_error_line(err)
    assert line == (
        f"neurovfm: error: {tiny_ct}: too small for one 4x16x16 token after resampling to 1x1x4 mm "
        "(size (16, 16, 2) in x, y, z)"
    )
