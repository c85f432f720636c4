"""Writing a phantom CT or MR as a DICOM series (:func:`neurovfm.phantom.write_dicom_series`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from pydicom.uid import UID


def _uid(*parts: object) -> UID:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["neurovfm-phantom", *map(str, parts)])


def write_dicom_series(
    img: sitk.Image,
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    description: str = "NEUROVFM PHANTOM HEAD",
    modality: str = "CT",
) -> list[Path]:
    """Write a phantom as a DICOM series of single-frame files.

    ``modality="CT"`` (an int16 HU image): stored values are ``HU + 1024`` as unsigned
    16-bit (12 bits stored) with RescaleIntercept -1024 and RescaleSlope 1, as CT
    scanners store them. ``modality="MR"`` (values 0..4095, e.g. the MR phantom): MR
    Image Storage, the values as stored (12 bits), no rescale. Every slice has
    ImagePositionPatient, ImageOrientationPatient, PixelSpacing and one
    SeriesInstanceUID. The UIDs are derived from ``seed`` and ``modality``
    (deterministic). Returns the file paths in slice order.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage
    from pydicom.valuerep import format_number_as_ds as ds_str

    if modality not in ("CT", "MR"):
        raise InvalidArgumentError(f"modality must be 'CT' or 'MR', got {modality!r}")
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidArgumentError("write_dicom_series needs a 3D scalar image")
    arr = sitk.GetArrayFromImage(img)
    ct = modality == "CT"
    if ct and (arr.min() < -1024 or arr.max() > 3071):
        raise InvalidArgumentError("CT values must lie in -1024..3071 HU to be stored with 12 bits")
    if not ct and (arr.min() < 0 or arr.max() > 4095):
        raise InvalidArgumentError("MR values must lie in 0..4095 to be stored with 12 bits")
    stored = (arr.astype(np.int32) + (1024 if ct else 0)).astype(np.uint16)
    sop_class = CTImageStorage if ct else MRImageStorage
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sx, sy, sz = img.GetSpacing()
    d = np.asarray(img.GetDirection(), float).reshape(3, 3)
    origin = np.asarray(img.GetOrigin(), float)
    tag = () if ct else (modality,)  # the CT's UIDs stay those of earlier versions
    study, series, frame = _uid(seed, "study", *tag), _uid(seed, "series", *tag), _uid(seed, "frame", *tag)
    iop = [ds_str(float(v)) for v in (*d[:, 0], *d[:, 1])]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if ct else "OTHER"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.Modality = modality
    ds.Manufacturer = "neurovfm"
    ds.StudyDescription = "HEAD PHANTOM"
    ds.SeriesDescription = description
    ds.PatientName = "PHANTOM^HEAD"
    ds.PatientID = f"NEUROVFM-PHANTOM-{seed}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = ds_str(float(sz))
    ds.SpacingBetweenSlices = ds_str(float(sz))
    if ct:
        ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.InstanceNumber = 0
    ds.ImagePositionPatient = [ds_str(float(v)) for v in origin]
    ds.ImageOrientationPatient = iop
    ds.FrameOfReferenceUID = frame
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = ds_str(float(origin[2]))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[2])
    ds.PixelSpacing = [ds_str(float(sy)), ds_str(float(sx))]  # row spacing, column spacing
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if ct:
        ds.WindowCenter = "40"
        ds.WindowWidth = "80"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
    ds.PixelData = b""
    paths = []
    for k in range(arr.shape[0]):  # one dataset, updated per slice
        sop = _uid(seed, "instance", k, *tag)
        meta.MediaStorageSOPInstanceUID = sop
        ds.SOPInstanceUID = sop
        ds.InstanceNumber = k + 1
        pos = origin + d[:, 2] * (sz * k)
        ds.ImagePositionPatient = [ds_str(float(v)) for v in pos]
        ds.SliceLocation = ds_str(float(pos[2]))
        ds.PixelData = stored[k].tobytes()
        path = out / f"IM{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
