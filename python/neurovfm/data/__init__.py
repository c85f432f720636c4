"""Reading, preprocessing and tokenising scans (no torch import here)."""

from .cache import BuildSummary, CacheManager
from .io import load_image, preprocess_image, read_volume, reorient_rpi, slice_axis
from .preprocess import Tokens, prepare_for_inference, tokenize
from .metadata import DatasetMetadata
from .volume import RawVolume

__all__ = [
    "load_image",
    "preprocess_image",
    "prepare_for_inference",
    "tokenize",
    "Tokens",
    "read_volume",
    "reorient_rpi",
    "slice_axis",
    "RawVolume",
    "DatasetMetadata",
    "CacheManager",
    "BuildSummary",
]
