"""The library's exception types: one family, defined here and nowhere else.

Every error neurovfm raises on purpose derives from :class:`NeuroVFMError` and
from the builtin exception users already catch, so ``except NeuroVFMError``
catches them all and ``except ValueError`` / ``TypeError`` / ``KeyError`` /
``IndexError`` / ``FileNotFoundError`` keep working. Messages name the file (or
the argument) and the reason. The compiled kernels' errors are mapped into this
family in one place (``cpp/bindings/bind_errors.cpp``): a file the C++ readers
cannot read is an :class:`ImageReadError`, a bad argument a kernel refuses an
:class:`InvalidArgumentError` (``neurovfm._core.KernelError``).
"""

from __future__ import annotations

import os

__all__ = [
    "NeuroVFMError",
    # arguments
    "InvalidArgumentError",
    "InvalidTypeError",
    "UsageError",
    # images
    "ImageNotFoundError",
    "ImageReadError",
    "UnsupportedImageError",
    "DicomSeriesError",
    "ImageTooSmallError",
    "StackedSliceError",
    # datasets and the cache
    "MissingFileError",
    "MetadataError",
    "EmptyDatasetError",
    "EmptyStudyError",
    "MetadataNotFoundError",
    "NotInDatasetError",
    "StudyNotFoundError",
    "MissingLabelError",
    "LabelFileNotFoundError",
    "DatasetError",
    "ConfigError",
    "DatasetIndexError",
    "CacheEntryError",
    "PtFormatError",
    # warnings
    "ModeMismatchWarning",
    # messages
    "one_line",
]


class NeuroVFMError(Exception):
    """Base class of every error raised by neurovfm."""


class _MessageKeyError(KeyError):
    """A KeyError that prints its message, not the message's repr."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# --- arguments ---------------------------------------------------------------------------


class InvalidArgumentError(NeuroVFMError, ValueError):
    """An argument the library cannot use (a mode other than 'ct'/'mri', a thread count
    that is not a positive integer, a shape that is not whole tokens, ...)."""


class InvalidTypeError(NeuroVFMError, TypeError):
    """An argument of the wrong type (not a SimpleITK image, a transform that is not
    callable, an array dtype with no torch storage, ...)."""


class UsageError(InvalidArgumentError):
    """A command-line mistake (bad option, missing input): the CLI prints it on one line
    and exits with code 2."""


# --- images ------------------------------------------------------------------------------


class MissingFileError(NeuroVFMError, FileNotFoundError):
    """A path the library needs does not exist."""


class ImageNotFoundError(MissingFileError):
    """The scan's path does not exist, or (datasets) the image is not cached and may not be
    read from its raw file."""


class ImageReadError(NeuroVFMError, ValueError):
    """The file exists but cannot be read as an image."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnsupportedImageError(ImageReadError):
    """The file is an image, but not a 3D scalar volume (colour, 2D, 4D, sheared...)."""


class DicomSeriesError(ImageReadError):
    """A DICOM folder holds no usable series, or the chosen series is inconsistent."""


class ImageTooSmallError(ImageReadError):
    """The volume is too small to resample to the target grid or to hold one 4x16x16
    token (one type for "too small" everywhere: loading, the cache, the CLI, QA)."""


class StackedSliceError(DicomSeriesError, UnsupportedImageError):
    """Every file of a DICOM series holds the same slice (one position, several copies).

    Both a broken series (:class:`DicomSeriesError`) and a 2D image rather than a
    volume (:class:`UnsupportedImageError`).
    """


# --- datasets and the cache ----------------------------------------------------------------


class MetadataError(NeuroVFMError, ValueError):
    """A dataset description that cannot be used: a ``metadata.json``, ``raw/`` folder or
    mode mapping that is malformed."""


class EmptyDatasetError(MetadataError):
    """The mode mapping and ``raw/`` (or the dataset's filters) leave no image: the
    dataset would be empty."""


class EmptyStudyError(MetadataError):
    """A study of the mode mapping is left with no image (every series of its folder is a
    localizer, derived under the ``derived`` policy, colour, ...): it would vanish from
    the dataset. The message names the study and what would include it."""


class MetadataNotFoundError(MissingFileError):
    """A ``raw/`` folder, mode mapping file or ``metadata.json`` that does not exist."""


class NotInDatasetError(NeuroVFMError, _MessageKeyError):
    """A study or image name that the dataset does not hold."""


class StudyNotFoundError(NotInDatasetError):
    """A study (or an image of a study) that the metadata does not hold."""


class MissingLabelError(NotInDatasetError):
    """Labels were given, but not for every study (``missing_label="error"``)."""


class LabelFileNotFoundError(MissingFileError):
    """The label file given as ``study_labels`` does not exist."""


class DatasetError(InvalidArgumentError):
    """A bad argument to ImageDataset, StudyAwareBatchSampler or a collate function, a
    label file that cannot be used, or a batch PyTorch's default collate cannot stack."""


class ConfigError(DatasetError):
    """An ``ImageDataModule`` configuration that cannot be used (names the key)."""


class DatasetIndexError(NeuroVFMError, IndexError):
    """An item index outside the dataset."""


class CacheEntryError(NeuroVFMError, ValueError):
    """A cache entry that cannot be served: truncated, corrupt, or replaced."""


class PtFormatError(CacheEntryError):
    """A ``.pt`` file that is not what the cache writes (bad zip or pickle structure,
    wrong size, checksum mismatch)."""


# --- warnings ------------------------------------------------------------------------------


class ModeMismatchWarning(UserWarning):
    """A scan given as ``'ct'`` that looks like an MRI, or the reverse: its DICOM Modality
    or its values contradict the mode. The scan is still processed as asked."""


# --- messages ------------------------------------------------------------------------------


def one_line(err: BaseException) -> str:
    """``err`` as one line: an OSError's reason with its file name, else its message
    (a failed row of ``prepare_many``'s summary, the command line's ``error:`` line)."""
    if isinstance(err, OSError) and err.strerror:
        text = err.strerror
        if err.filename and str(err.filename) not in text:
            text = f"{err.filename}: {text}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())
