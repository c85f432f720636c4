"""Anything else SimpleITK reads (MetaImage, NRRD, ...), and the NIfTI files the fast
reader leaves to it: read whole by SimpleITK, checked to be a 3D scalar volume, with
ITK's errors turned into the library's (naming the file and why)."""

from __future__ import annotations

import SimpleITK as sitk

from ...errors import ImageReadError, UnsupportedImageError
from ..volume import RawVolume, check_scalar_3d, squeeze_4d
from .gzip import check_gzip, gzip_problem

__all__ = ["explain_nifti_error", "explain_sitk_error", "read_with_sitk"]


def _is_nifti(path: str) -> bool:
    p = path.lower()
    return p.endswith(".nii") or p.endswith(".nii.gz")


def explain_sitk_error(path: str, err: Exception) -> ImageReadError:
    msg = str(err)
    low = msg.lower()
    if "orthonormal" in low:
        return UnsupportedImageError(
            path, "non-orthonormal (sheared) direction cosines; only rigid orientations are supported"
        )
    if "unable to determine imageio reader" in low or "could not create io object" in low:
        return ImageReadError(path, "not a readable image format (SimpleITK found no reader for it)")
    # Keep the first informative line of ITK's message.
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    detail = next((ln for ln in lines if "description" in ln.lower()), lines[-1] if lines else msg)
    detail = detail.split("Description:", 1)[-1].strip()
    return ImageReadError(path, f"SimpleITK could not read it: {detail}")


def explain_nifti_error(path: str, err: Exception) -> ImageReadError:
    """SimpleITK refused a NIfTI file: for a ``.gz``, say what is wrong with the stream."""
    if path.lower().endswith(".gz"):
        problem = gzip_problem(path, 0)
        if problem is not None:
            return ImageReadError(path, problem)
    return explain_sitk_error(path, err)


def read_with_sitk(path: str) -> RawVolume:
    """Read any file SimpleITK supports, checked to be a 3D scalar volume.

    A gzip file (``.gz``) is decoded once in full first so that its CRC-32 and length
    trailer are checked: SimpleITK's reader stops at the last voxel and never reads the
    trailer of a file larger than its read buffer, so it would accept a corrupt one."""
    if path.lower().endswith(".gz"):
        check_gzip(path)
    try:
        img = sitk.ReadImage(path)
    except RuntimeError as err:
        raise (explain_nifti_error if _is_nifti(path) else explain_sitk_error)(path, err) from None
    check_scalar_3d(path, img.GetDimension(), img.GetSize(), img.GetNumberOfComponentsPerPixel(), img.GetPixelID())
    return RawVolume.from_image(squeeze_4d(img), path)
