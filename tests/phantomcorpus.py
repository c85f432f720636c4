"""Phantom stand-ins for the real-scan corpus, at the corpus's own relative paths.

Without ``NEUROVFM_TEST_DATA`` the fixture ``scan_dir`` (conftest.py) gives a folder written
once per session by :func:`write_phantom_corpus`, so that a test that needs *a scan of a kind*
(a CT DICOM series, a thick sagittal MR series, an 8-bit or a scaled NIfTI, a 4D NIfTI, a
colour DICOM file, ...) runs on it unchanged. Each stand-in is made from
:mod:`neurovfm.phantom` and has the kind of the real file it stands for (format, modality,
pixel type, acquisition plane, scaling), not its size nor its vendor quirks. Tests that check a
property only the real file has (a gantry tilt, a DIRFILE record, a vendor's colour JPEG, the
sizes the corpus README documents, parity on real anatomy) use ``data_dir`` and skip without
the corpus.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from neurovfm.phantom import make_ct_phantom, make_mri_phantom, write_dicom_series

#: The corpus paths this folder has (every other corpus path is absent from it).
STANDINS = {
    "ct/phantom_head_5mm": "CT DICOM series, 28 axial slices 5 mm thick, rescale intercept -1024, files named "
    "I10, I20, ... (no extension) and a non-image DICOM file (DIRFILE)",
    "ct/phantom_head_1mm.nii.gz": "CT NIfTI (gzip), int16 HU, thin slices",
    "ct/head_tilt_ge": "CT DICOM series, 28 slices, a gantry tilt of 18.5 degrees (stacked along z)",
    "ct/body_small.nii.gz": "CT NIfTI (gzip), int16 HU, 3 mm isotropic",
    "ct/body_j2k": "CT DICOM series in JPEG 2000 lossless (gdcmconv; uncompressed without it)",
    "mr/stroke/T1.nii.gz": "MR NIfTI (gzip), uint8, axial",
    "mr/stroke/FLAIR.nii.gz": "MR NIfTI (gzip), uint8, axial, the T1's grid",
    "mr/stroke/T2.nii.gz": "MR NIfTI (gzip), uint16 with scl_slope 0.5, the T1's grid",
    "mr/stroke/SOURCE.md": "a text file in a study folder",
    "mr/MR_Gd.nii.gz": "MR NIfTI (gzip), uint8 with scl_slope 6.48, oblique",
    "mr/sag_mprage_peds": "MR DICOM series, sagittal oblique, thin slices",
    "mr/sag_t1_2d_thick": "MR DICOM series, sagittal, 35 slices 4.8 mm thick",
    "mr/enhanced_multiframe_t1.dcm": "MR, one Enhanced MR Image Storage file (48 frames, sagittal)",
    "edge/nifti/example4d.nii.gz": "NIfTI, a true 4D image (two time points)",
    "edge/nifti/avg152T1_LR_nifti.nii.gz": "MR NIfTI (gzip), uint8",
    "edge/nifti/avg152T1_RL_nifti.nii.gz": "the LR stand-in stored left-right flipped (same physical image)",
    "edge/nifti/minimal.nii.gz": "MR NIfTI (gzip) with qform_code = sform_code = 0",
    "edge/nifti/anatomical.nii": "NIfTI (uncompressed), big-endian int16",
    "edge/dicom/color_jpeg_not_ct.dcm": "DICOM, Modality CT, an 8-bit RGB image (uncompressed)",
    "ct/head_single_slice/693_UNCI.dcm": "one CT DICOM slice",
    "ct/head_single_slice/693_J2KR.dcm": "the same slice in JPEG 2000 lossless (gdcmconv; uncompressed without it)",
}


def _write_nifti(img: sitk.Image, path: Path, slope: float | None = None, no_orientation: bool = False) -> None:
    """``img`` as NIfTI (gzip when the name ends .gz), with scl_slope ``slope`` in the header;
    ``no_orientation``: qform_code = sform_code = 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = path.with_name(path.name.removesuffix(".gz") + ".tmp.nii")
    sitk.WriteImage(img, os.fspath(plain))
    data = bytearray(plain.read_bytes())
    plain.unlink()
    if slope is not None:
        struct.pack_into("<ff", data, 112, slope, 0.0)  # scl_slope, scl_inter
    if no_orientation:
        struct.pack_into("<hh", data, 252, 0, 0)  # qform_code, sform_code
    path.write_bytes(gzip.compress(bytes(data), compresslevel=1, mtime=0) if path.suffix == ".gz" else bytes(data))


def _to_uint8(img: sitk.Image) -> sitk.Image:
    a = sitk.GetArrayFromImage(img).astype(np.float64)
    out = sitk.GetImageFromArray(np.round(a * (255.0 / a.max())).astype(np.uint8))
    out.CopyInformation(img)
    return out


def _flipped_storage(img: sitk.Image) -> sitk.Image:
    """The same physical image stored with its first axis reversed (a left-right flipped file)."""
    out = sitk.GetImageFromArray(sitk.GetArrayViewFromImage(img)[:, :, ::-1].copy())
    out.SetSpacing(img.GetSpacing())
    d = np.asarray(img.GetDirection(), float).reshape(3, 3)
    d[:, 0] *= -1
    out.SetDirection(tuple(d.ravel()))
    out.SetOrigin(img.TransformIndexToPhysicalPoint((img.GetSize()[0] - 1, 0, 0)))
    return out


def _big_endian_nifti(img: sitk.Image, path: Path) -> None:
    import nibabel as nib

    tmp = path.with_name("_little.nii")
    sitk.WriteImage(sitk.Cast(img, sitk.sitkInt16), os.fspath(tmp))
    little = nib.load(tmp)
    header = little.header.as_byteswapped(">")
    header.set_data_dtype(">i2")
    nib.save(nib.Nifti1Image(np.asarray(little.dataobj).astype(">i2"), None, header), path)
    tmp.unlink()


def _colour_dicom(path: Path) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = "CT", 2, "BRAIN SEQ 4 8 H31s", 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = 48, 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[..., 0] = np.arange(64, dtype=np.uint8)[None, :] * 4
    rgb[..., 1] = np.arange(48, dtype=np.uint8)[:, None] * 5
    rgb[10:30, 20:40, 2] = 255
    ds.PixelData = rgb.tobytes()
    ds.save_as(path, enforce_file_format=True)


def _directory_record(path: Path) -> None:
    """A DICOM file without pixel data (a Media Storage Directory), as a series folder may hold."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.FileSetID = "PHANTOM"
    ds.DirectoryRecordSequence = []
    ds.save_as(path, enforce_file_format=True)


def _enhanced_multiframe(img: sitk.Image, path: Path) -> None:
    """``img`` (uint16, 0..4095) as one Enhanced MR Image Storage file: every slice a frame,
    the geometry in the shared and per-frame functional groups."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, generate_uid

    arr = sitk.GetArrayFromImage(img)
    sx, sy, sz = img.GetSpacing()
    d = np.asarray(img.GetDirection(), float).reshape(3, 3)
    origin = np.asarray(img.GetOrigin(), float)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = "MR", 7, "t1 enhanced", 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.NumberOfFrames = arr.shape[0]
    ds.Rows, ds.Columns = arr.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    measures, plane = Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness, measures.SpacingBetweenSlices = [sy, sx], sz, sz
    plane.ImageOrientationPatient = [float(v) for v in (*d[:, 0], *d[:, 1])]
    shared = Dataset()
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [plane]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in range(arr.shape[0]):
        pos, frame = Dataset(), Dataset()
        pos.ImagePositionPatient = [round(float(v), 6) for v in origin + d[:, 2] * (sz * k)]
        frame.PlanePositionSequence = [pos]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.ascontiguousarray(arr.astype(np.uint16)).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _restamp(folder: Path, number: int, description: str, step=None) -> None:
    """Give a written phantom series the real one's SeriesNumber and SeriesDescription (so
    that its name, number_description, is the real series'); ``step`` (x, y, z mm): slice k
    at the first slice's position + k * step instead (a gantry tilt: the stack's direction is
    not the slices' normal)."""
    import pydicom

    files = sorted(folder.iterdir(), key=lambda f: int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber))
    first = None
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.SeriesNumber, ds.SeriesDescription = number, description
        if step is not None:
            first = np.asarray(ds.ImagePositionPatient, float) if first is None else first
            ds.ImagePositionPatient = [round(float(v), 6) for v in first + k * np.asarray(step, float)]
        ds.save_as(f)


def _single_slice(path: Path) -> None:
    folder = path.parent / "_one"
    img = make_ct_phantom(shape=(64, 64, 2), spacing=(3.0, 3.0, 5.0), seed=20)
    (first, _) = write_dicom_series(img, folder, seed=20)
    first.rename(path)
    shutil.rmtree(folder)
    exe, j2k = shutil.which("gdcmconv"), path.with_name("693_J2KR.dcm")  # the same slice in JPEG 2000
    if exe is None:
        shutil.copy(path, j2k)
    else:
        subprocess.run([exe, "--j2k", os.fspath(path), os.fspath(j2k)], check=True)


def _transcode(src: Path, dst: Path, flag: str) -> None:
    """The series in ``src`` transcoded by gdcmconv into ``dst``; copied as it is without gdcmconv."""
    exe = shutil.which("gdcmconv")
    dst.mkdir(parents=True)
    files = sorted(src.iterdir())
    if exe is None:
        for f in files:
            shutil.copy(f, dst / f.name)
        return
    procs = [subprocess.Popen([exe, flag, os.fspath(f), os.fspath(dst / f.name)]) for f in files]
    assert all(p.wait() == 0 for p in procs), f"gdcmconv {flag} failed"


def write_phantom_corpus(root: Path) -> Path:
    """Every stand-in of :data:`STANDINS` under ``root`` (a few seconds). Returns ``root``."""
    root = Path(root)
    # CT: a DICOM series of thick slices; NIfTI at thin slices and at 3 mm isotropic
    ct5 = make_ct_phantom(shape=(96, 96, 28), spacing=(2.2, 2.2, 5.0), seed=10)
    head5 = root / "ct/phantom_head_5mm"
    for k, f in enumerate(write_dicom_series(ct5, head5, seed=10, description="PHANTOM HEAD 5MM")):
        f.rename(head5 / f"I{10 * (k + 1)}")  # extension-less, as the real series' files
    _restamp(head5, 201, "STD BRAIN 5MM")
    _directory_record(head5 / "DIRFILE")
    # a gantry tilt of 18.5 degrees: slices tilted about the left-right axis, stacked along z
    tilt = np.deg2rad(18.5)
    rot = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(tilt), -np.sin(tilt)], [0.0, np.sin(tilt), np.cos(tilt)]])
    tilted = make_ct_phantom(shape=(80, 80, 28), spacing=(2.5, 2.5, 4.0), direction=rot, seed=14)
    write_dicom_series(tilted, root / "ct/head_tilt_ge", seed=14)
    _restamp(root / "ct/head_tilt_ge", 2, "", step=(0.0, 0.0, 4.0 / np.cos(tilt)))
    _write_nifti(
        make_ct_phantom(shape=(112, 112, 96), spacing=(1.9, 1.9, 1.25), seed=11), root / "ct/phantom_head_1mm.nii.gz"
    )
    _write_nifti(make_ct_phantom(shape=(64, 56, 24), spacing=(3.0, 3.0, 3.0), seed=12), root / "ct/body_small.nii.gz")
    j2k_src = root / "_body_plain"
    write_dicom_series(make_ct_phantom(shape=(80, 80, 20), spacing=(2.5, 2.5, 5.0), seed=13), j2k_src, seed=13)
    _transcode(j2k_src, root / "ct/body_j2k", "--j2k")
    shutil.rmtree(j2k_src)
    _single_slice(root / "ct/head_single_slice/693_UNCI.dcm")
    # MR: one axial study of three co-registered series (8-bit, 8-bit, scaled 16-bit)
    stroke = {"shape": (62, 80, 70), "spacing": (2.0, 2.0, 2.0), "orientation": "LPS", "tilt_deg": 0.0}
    _write_nifti(_to_uint8(make_mri_phantom(seed=30, **stroke)), root / "mr/stroke/T1.nii.gz")
    _write_nifti(_to_uint8(make_mri_phantom(seed=31, **stroke)), root / "mr/stroke/FLAIR.nii.gz")
    _write_nifti(make_mri_phantom(seed=32, **stroke), root / "mr/stroke/T2.nii.gz", slope=0.5)
    (root / "mr/stroke/SOURCE.md").write_text("Phantom stand-ins for the stroke study (tests/phantomcorpus.py).\n")
    gd = make_mri_phantom(shape=(70, 76, 58), spacing=(2.2, 2.2, 2.4), orientation="LPS", tilt_deg=9.0, seed=33)
    _write_nifti(_to_uint8(gd), root / "mr/MR_Gd.nii.gz", slope=6.48)
    # MR DICOM: sagittal series, thin and oblique, thick and straight
    peds = make_mri_phantom(shape=(80, 80, 64), spacing=(2.6, 2.6, 2.7), seed=34)
    write_dicom_series(peds, root / "mr/sag_mprage_peds", seed=34, modality="MR")
    _restamp(root / "mr/sag_mprage_peds", 5, "SAG MPRAGE 220 FOV")
    thick = make_mri_phantom(shape=(96, 96, 35), spacing=(2.5, 2.5, 4.8), tilt_deg=0.0, seed=35)
    write_dicom_series(thick, root / "mr/sag_t1_2d_thick", seed=35, modality="MR")
    _restamp(root / "mr/sag_t1_2d_thick", 3, "t1_fl2d_sag")
    enhanced = make_mri_phantom(shape=(64, 64, 48), spacing=(3.0, 3.0, 3.0), orientation="PIR", tilt_deg=0.0, seed=36)
    _enhanced_multiframe(enhanced, root / "mr/enhanced_multiframe_t1.dcm")
    # the edge files that a phantom can stand for
    frames = [make_mri_phantom(shape=(32, 24, 12), spacing=(4.0, 4.0, 6.0), seed=40 + t) for t in range(2)]
    (root / "edge/nifti").mkdir(parents=True)
    sitk.WriteImage(sitk.JoinSeries(frames), os.fspath(root / "edge/nifti/example4d.nii.gz"))
    avg = make_mri_phantom(shape=(46, 55, 46), spacing=(4.0, 4.0, 4.0), orientation="LPS", tilt_deg=0.0, seed=42)
    _write_nifti(_to_uint8(avg), root / "edge/nifti/avg152T1_LR_nifti.nii.gz")
    _write_nifti(_flipped_storage(_to_uint8(avg)), root / "edge/nifti/avg152T1_RL_nifti.nii.gz")
    _write_nifti(_to_uint8(avg), root / "edge/nifti/minimal.nii.gz", no_orientation=True)
    small = make_mri_phantom(shape=(33, 41, 25), spacing=(6.0, 6.0, 6.0), orientation="LPS", tilt_deg=0.0, seed=43)
    _big_endian_nifti(small, root / "edge/nifti/anatomical.nii")
    _colour_dicom(root / "edge/dicom/color_jpeg_not_ct.dcm")
    (root / "README.md").write_text(__doc__ or "")
    missing = [p for p in STANDINS if not (root / p).exists()]
    assert not missing, missing
    return root
