"""Reading, preprocessing and tokenising scans (no torch import here)."""

from .batch import BatchRow, BatchSummary, prepare_many
from .cache import BuildSummary, CacheManager, ImportSummary
from .geometry import OutputGeometry, output_geometry, token_to_patient, voxel_to_patient, write_nifti_outputs
from .io import load_image, preprocess_image, read_volume, reorient_rpi, slice_axis
from .preprocess import Tokens, prepare_for_inference, tokenize, untokenize
from .metadata import DatasetMetadata
from .scan import PreparedScan, mode_value_conflict, prepare_scan
from .series import SeriesRecord, find_series
from .volume import RawVolume

__all__ = [
    "load_image",
    "preprocess_image",
    "prepare_for_inference",
    "tokenize",
    "untokenize",
    "OutputGeometry",
    "output_geometry",
    "token_to_patient",
    "voxel_to_patient",
    "write_nifti_outputs",
    "Tokens",
    "read_volume",
    "reorient_rpi",
    "slice_axis",
    "RawVolume",
    "DatasetMetadata",
    "find_series",
    "SeriesRecord",
    "CacheManager",
    "BuildSummary",
    "ImportSummary",
    "prepare_many",
    "BatchSummary",
    "BatchRow",
    "mode_value_conflict",
    "prepare_scan",
    "PreparedScan",
]
