"""DICOM: :mod:`.discovery` (finding the files, parsing their headers), :mod:`.series`
(grouping into series of one geometry, slice order, the checks) and :mod:`.read`
(choosing a series and reading it: the compiled reader, compressed frames in parallel,
SimpleITK as the fallback)."""

from .read import is_dicom_file, read_dicom, read_series
from .series import SeriesInfo, is_derived, scan_series

__all__ = ["SeriesInfo", "is_derived", "is_dicom_file", "read_dicom", "read_series", "scan_series"]
