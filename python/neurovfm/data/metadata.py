"""DatasetMetadata: which images a dataset holds and how to read them.

A dataset folder looks like::

    data_dir/
      raw/<study>/<image>.nii.gz          NIfTI files (image name: file name without .nii/.nii.gz)
      raw/<study>/<image>.dcm             single DICOM files (also multi-frame)
      raw/<study>/<image>/...             folders holding a DICOM series (any file names)
      metadata.json                       written by DatasetMetadata.save
      processed/                          the cache (see neurovfm.data.cache)

Errors raised here derive from :class:`neurovfm.errors.NeuroVFMError` and from the
builtin a caller catches: :class:`MetadataError` (``ValueError``; an empty dataset is
:class:`EmptyDatasetError`), :class:`MetadataNotFoundError` (``FileNotFoundError``),
:class:`StudyNotFoundError` (``KeyError``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from ..errors import (
    EmptyDatasetError,
    EmptyStudyError,
    MetadataError,
    MetadataNotFoundError,
    ModeMismatchWarning,
    StudyNotFoundError,
)
from ._files import read_json_object
from .sources import remote

if TYPE_CHECKING:
    from .series import SeriesRecord

__all__ = [
    "DatasetMetadata",
    "ImageRecord",
    "StudyRecord",
    "load_mode_mapping",
    "MODES",
    "MetadataError",
    "EmptyDatasetError",
    "EmptyStudyError",
    "MetadataNotFoundError",
    "StudyNotFoundError",
]

log = logging.getLogger("neurovfm")

MODES = ("ct", "mri")
METADATA_VERSION = 1
#: How many study names a message lists before "... and N more".
_NAMES_SHOWN = 10


def _count(n: int) -> str:
    return f"{n} study" if n == 1 else f"{n} studies"


def _names(names: Iterable[str]) -> str:
    ordered = sorted(names)
    shown = ", ".join(repr(n) for n in ordered[:_NAMES_SHOWN])
    return shown + (f" and {len(ordered) - _NAMES_SHOWN} more" if len(ordered) > _NAMES_SHOWN else "")


@dataclass
class ImageRecord:
    """One image of a study. ``path`` is relative to ``data_dir``."""

    name: str
    path: str
    kind: str  # "nifti", "dicom_file", "dicom_dir" or "other"
    processed: bool = False
    #: The series of a DICOM folder that holds several (None: the folder's one series).
    series_uid: str | None = None
    #: Why a series that is not a plain acquisition was used (the ``derived`` policy's
    #: rule for a derived/secondary series; '' otherwise).
    note: str = ""


@dataclass
class StudyRecord:
    name: str
    mode: str
    images: list[ImageRecord] = field(default_factory=list)

    def image(self, name: str) -> ImageRecord:
        for im in self.images:
            if im.name == name:
                return im
        raise StudyNotFoundError(f"study {self.name!r} has no image {name!r}")


def load_mode_mapping(mode_mapping: Mapping[str, str] | str | os.PathLike[str]) -> dict[str, str]:
    """A {study: mode} dict from a dict, a CSV file (study,mode) or a JSON object file."""
    if isinstance(mode_mapping, Mapping):
        return {str(k): v for k, v in mode_mapping.items()}
    path = os.fspath(mode_mapping)
    if not os.path.exists(path):
        raise MetadataNotFoundError(f"{path}: mode mapping file not found")
    if path.lower().endswith(".json"):
        data = read_json_object(
            path, MetadataError, "mode mapping", "the JSON mode mapping must be an object {study: mode}"
        )
        return {str(k): v for k, v in data.items()}
    out = {}
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    for i, row in enumerate(rows):
        if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) < 2:
            raise MetadataError(f"{path}: line {i + 1} has no mode column (expected 'study,mode')")
        study, mode = row[0].strip(), row[1].strip()
        if i == 0 and mode.lower() not in MODES and study.lower() in ("study", "study_id", "studyid", "id", "name"):
            continue  # header line
        out[study] = mode
    return out


def _is_nifti(name: str) -> bool:
    low = name.lower()
    return low.endswith(".nii") or low.endswith(".nii.gz")


def _nifti_stem(name: str) -> str:
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name[: -len(".nii")]


def _image_dict(im: ImageRecord) -> dict[str, Any]:
    d = asdict(im)
    if d["series_uid"] is None:  # the folder's only series: files of older versions unchanged
        del d["series_uid"]
    if not d["note"]:
        del d["note"]
    return d


def _scan_study(
    data_dir: str,
    study_dir: str,
    skipped: list[tuple[str, SeriesRecord]],
    mode: str | None = None,
    derived: str = "auto",
) -> list[ImageRecord]:
    """The images of one study folder: its NIfTI files, and one image per usable DICOM
    series (found by :func:`~neurovfm.data.find_series`, in the folder and its
    sub-folders). A sub-folder (or the study folder itself) holding one usable series
    is one image named after the folder (``series`` for the study folder, the file's
    stem for a lone DICOM file); one holding several gives an image per series, named
    ``<number>_<description>`` (prefixed with the sub-folder's name), its UID recorded.
    A broken series (``SeriesRecord.broken``: unreadable, missing or duplicate slices) is
    kept as an image, so that the cache build reports it as failed with the reason; the
    other unusable series (localizers, derived, colour, too few slices, non-image
    objects, and derived series the ``derived`` policy leaves out) are appended to
    ``skipped``; a series whose DICOM Modality contradicts ``mode`` is kept with a
    :class:`~neurovfm.errors.ModeMismatchWarning`."""
    from .series import find_series, header_mode_conflict, series_image_names

    images: list[ImageRecord] = []
    for entry in sorted(os.scandir(study_dir), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file(follow_symlinks=True) or not _is_nifti(entry.name):
            continue
        images.append(ImageRecord(_nifti_stem(entry.name), os.path.relpath(entry.path, data_dir), "nifti"))
    # DICOM series, grouped by the study folder's entry that holds them
    groups: dict[str, list[SeriesRecord]] = {}
    study_abs = os.path.abspath(study_dir)
    for r in find_series(study_dir, derived=derived):
        if r.kind != "dicom":
            continue
        if not r.usable and not r.broken:
            skipped.append((os.path.basename(study_abs), r))
            log.info("%s: series %s not used: %s", r.path, r.name, r.reason)
            continue
        conflict = header_mode_conflict(r.modality, mode) if mode else ""
        if conflict:
            warnings.warn(ModeMismatchWarning(f"{r.path} (series {r.name}): {conflict}"), stacklevel=3)
        rel = os.path.relpath(os.path.abspath(r.files[0]), study_abs)
        top = rel.split(os.sep)[0] if os.sep in rel else ""
        groups.setdefault(top, []).append(r)
    for top, recs in sorted(groups.items()):
        if len(recs) == 1:
            r = recs[0]
            if top:
                name, path, kind = top, os.path.join(study_dir, top), "dicom_dir"
            elif r.path == r.files[0] and len(r.files) == 1:
                base = os.path.basename(r.path)
                name, path, kind = (base[:-4] if base.lower().endswith(".dcm") else base), r.path, "dicom_file"
            else:
                name, path, kind = "series", study_dir, "dicom_dir"
            uid = r.series_uid or None
            note = r.reason if r.derived else ""
            images.append(ImageRecord(name, os.path.relpath(path, data_dir), kind, series_uid=uid, note=note))
            continue
        for r, name in zip(recs, series_image_names(recs)):
            kind = "dicom_file" if r.path == r.files[0] and len(r.files) == 1 else "dicom_dir"
            images.append(
                ImageRecord(
                    f"{top}_{name}" if top else name,
                    os.path.relpath(r.path, data_dir),
                    kind,
                    series_uid=r.series_uid or None,
                    note=r.reason if r.derived else "",
                )
            )
    names = [im.name for im in images]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise MetadataError(f"{study_dir}: several images share the name(s) {sorted(dup)} (e.g. a.nii and a.nii.gz)")
    return images


def _empty_study(name: str, unused: list[SeriesRecord], derived: str) -> str:
    """Why study ``name`` has no image, and what would give it one."""
    if not unused:
        return f"study {name!r} holds no NIfTI file or DICOM series (remove it from the mode mapping)"
    why = "; ".join(f"{r.name}: {r.reason}" for r in unused[:5]) + ("; ..." if len(unused) > 5 else "")
    fix = (
        "derived='include' (--derived include) would use its derived series"
        if derived != "include" and any("derived/secondary" in r.reason for r in unused)
        else "remove it from the mode mapping to leave it out"
    )
    return f"study {name!r}: none of its {len(unused)} series is usable ({why}); {fix}"


class DatasetMetadata:
    """The studies and images of a dataset folder, with their modes."""

    def __init__(self, data_dir: str | os.PathLike[str], studies: Iterable[StudyRecord] = ()) -> None:
        self.data_dir = os.path.abspath(os.fspath(data_dir))
        self._studies = {s.name: s for s in studies}
        #: The top-level fields of a file of the published layout this was read from
        #: (``dataset_name``, ``version``, ``created``, ...), else None. :meth:`save`
        #: writes the published layout when it is set.
        self.published: dict[str, Any] | None = None
        #: (study, record) of each DICOM series :meth:`from_directory` did not use, and why
        #: (``record.reason``: localizer, derived, colour, too few slices, ...).
        self.skipped_series: list[tuple[str, SeriesRecord]] = []
        #: The ``derived`` policy :meth:`from_directory` applied (None: not scanned).
        self.derived: str | None = None

    # -- construction -----------------------------------------------------
    @classmethod
    def from_directory(
        cls,
        data_dir: str | os.PathLike[str],
        mode_mapping: Mapping[str, str] | str | os.PathLike[str],
        *,
        derived: str = "auto",
        storage_options: Mapping[str, Any] | None = None,
    ) -> DatasetMetadata:
        """Scan ``data_dir/raw/<study>/`` for NIfTI files and DICOM series: one image per
        NIfTI file and per usable DICOM series (see :func:`neurovfm.data.find_series`; a
        folder of one series keeps the folder's name, several series in one folder are
        named ``<number>_<description>`` and their SeriesInstanceUID recorded). The series
        not used are listed in ``skipped_series`` with the reason, and logged. A series
        whose DICOM Modality contradicts the study's mode (``CT`` for ``'mri'``, ``MR``
        for ``'ct'``) is kept, with a warning naming it. ``derived`` is the policy for
        derived/secondary series (:data:`neurovfm.data.series.DERIVED_POLICIES`; the
        study folder is the folder the rule looks at); an image made from one records
        why in ``ImageRecord.note``.

        ``mode_mapping`` maps study names to ``'ct'`` or ``'mri'``: a dict, a CSV
        file (``study,mode``) or a JSON object file. A study of ``raw/`` missing
        from it, with another mode or without images is skipped with a warning that
        names it; so are the studies it names that ``raw/`` lacks (one warning).
        No usable study at all is an error (:class:`EmptyDatasetError`, naming the
        mapping and the ``raw/`` folder): an empty dataset is never described. So is a
        study of the mapping left with no image (:class:`EmptyStudyError`, naming each
        such study, why its series were not used and the ``derived`` option that would
        use them): a study is never dropped from a dataset beside a warning.
        """
        from .series import check_derived

        policy = check_derived(derived)
        if remote.is_url(data_dir):
            from .metadata_remote import from_url

            return from_url(cls, data_dir, mode_mapping, policy, storage_options)
        data_dir = os.path.abspath(os.fspath(data_dir))
        raw = os.path.join(data_dir, "raw")
        if not os.path.isdir(raw):
            raise MetadataNotFoundError(f"{raw}: no raw/ folder (expected raw/<study>/<images>)")
        modes = load_mode_mapping(mode_mapping)
        what = (
            f"the mode mapping ({_count(len(modes))})"
            if isinstance(mode_mapping, Mapping)
            else f"the mode mapping {os.fspath(mode_mapping)} ({_count(len(modes))})"
        )
        folders = sorted(
            e.name for e in os.scandir(raw) if e.is_dir(follow_symlinks=True) and not e.name.startswith(".")
        )
        studies = []
        empty: list[str] = []  # why each study of the mapping has no image
        skipped_series: list[tuple[str, SeriesRecord]] = []
        skipped: list[
            tuple[str, str]
        ] = []  # (study, warning): given, given only when the dataset is not empty (else the error says it all)
        for name in folders:
            mode = modes.get(name)
            if mode is None:
                skipped.append((name, f"study {name!r} is not in the mode mapping: skipped"))
                continue
            m = str(mode).strip().lower()
            if m not in MODES:
                skipped.append((name, f"study {name!r} has mode {mode!r} (expected 'ct' or 'mri'): skipped"))
                continue
            before = len(skipped_series)
            images = _scan_study(data_dir, os.path.join(raw, name), skipped_series, m, policy)
            if not images:
                empty.append(_empty_study(name, [r for _, r in skipped_series[before:]], policy))
                continue
            studies.append(StudyRecord(name, m, images))
        if empty:
            raise EmptyStudyError(
                f"{len(empty)} of the studies in {raw} would have no image, which would drop "
                f"{'it' if len(empty) == 1 else 'them'} from the dataset: " + "; ".join(empty)
            )
        missing = set(modes) - set(folders)
        if missing:
            skipped.append(("", f"{_count(len(missing))} of {what} not in {raw}: skipped ({_names(missing)})"))
        if not studies:
            common = set(modes) & set(folders)
            if not modes:
                reason = f"{what} names no study"
            elif not folders:
                reason = f"{raw} holds no study folder (expected raw/<study>/<images>)"
            elif not common:
                reason = (
                    f"{what} matches none of the {_count(len(folders))} in {raw} "
                    f"(it names {_names(modes)}; raw/ holds {_names(folders)})"
                )
            else:
                why = "; ".join(w for study, w in skipped if study in common)
                reason = f"every study of {raw} that {what} names was skipped: {why}"
            raise EmptyDatasetError(f"no usable study, the dataset would be empty: {reason}")
        for _study, w in skipped:
            warnings.warn(w, stacklevel=2)
        meta = cls(data_dir, studies)
        meta.skipped_series = skipped_series
        meta.derived = policy
        return meta

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> DatasetMetadata:
        """Load a ``metadata.json`` written by :meth:`save`, or by the published NeuroVFM
        code's ``DatasetMetadata.save`` (GitHub ``MLNeurosurg/neurovfm``).

        The published layout (``{"studies": {study: {"mode", "images": {image:
        {"filename", "processed"}}}}, "dataset_name", "version", "created",
        "num_studies"}``) is mapped onto records: the path is
        ``raw/<study>/<filename>``, the kind is derived from it (see
        :func:`neurovfm.data.published_layout._published_kind`). :meth:`save` then writes the layout it was read
        in, so that the published code can still read the file. A malformed file
        raises :class:`MetadataError` naming the file and the field.
        """
        path = os.fspath(path)
        if not os.path.exists(path):
            raise MetadataNotFoundError(f"{path}: metadata file not found")
        # The folder holding metadata.json is the dataset (it may have moved).
        here = os.path.dirname(os.path.abspath(path))
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as err:
            raise MetadataError(f"{path}: not a neurovfm metadata file ({err})") from None
        if isinstance(data, dict) and isinstance(data.get("studies"), dict):
            from .published_layout import from_published

            return from_published(path, here, data)
        try:
            studies = [
                StudyRecord(s["name"], s["mode"], [ImageRecord(**im) for im in s["images"]]) for s in data["studies"]
            ]
            data_dir = data.get("data_dir") or here
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise MetadataError(f"{path}: not a neurovfm metadata file ({type(err).__name__}: {err})") from None
        meta = cls(here if os.path.basename(path) == "metadata.json" else data_dir, studies)
        meta.derived = data.get("derived")
        return meta

    def save(self, path: str | os.PathLike[str] | None = None) -> str:
        """Write the metadata as JSON (default ``data_dir/metadata.json``), atomically.

        Metadata read from a file of the published layout is written in that layout
        (its ``dataset_name``, ``version`` and ``created`` kept); otherwise in this
        library's layout."""
        if path is None:
            path = remote.join(self.data_dir, "metadata.json") if remote.is_url(self.data_dir) else None
        path = os.fspath(path) if path is not None else os.path.join(self.data_dir, "metadata.json")
        data: dict[str, Any]
        if self.published is not None:
            from .published_layout import to_published

            data = to_published(self, self.published)
        else:
            data = {
                "version": METADATA_VERSION,
                "data_dir": self.data_dir,
                **({"derived": self.derived} if self.derived else {}),
                "studies": [
                    {"name": s.name, "mode": s.mode, "images": [_image_dict(im) for im in s.images]}
                    for s in self._studies.values()
                ],
            }
        if remote.is_url(path):  # one object, uploaded whole
            from .metadata_remote import save_url

            return save_url(path, data)
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".metadata.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    # -- queries ----------------------------------------------------------
    def __len__(self) -> int:
        return len(self._studies)

    def __contains__(self, study: str) -> bool:
        return study in self._studies

    def __iter__(self) -> Iterator[StudyRecord]:
        return iter(self._studies.values())

    def get_study(self, name: str) -> StudyRecord:
        try:
            return self._studies[name]
        except KeyError:
            raise StudyNotFoundError(f"no study {name!r} in {self.data_dir}") from None

    def get_all_studies(self) -> list[StudyRecord]:
        return list(self._studies.values())

    def get_studies_by_mode(self, mode: str) -> list[StudyRecord]:
        m = mode.lower()
        if m not in MODES:
            raise MetadataError(f"mode must be 'ct' or 'mri', got {mode!r}")
        return [s for s in self._studies.values() if s.mode == m]

    def num_images(self) -> int:
        return sum(len(s.images) for s in self._studies.values())

    def __repr__(self) -> str:
        return f"DatasetMetadata({self.data_dir!r}, {len(self)} studies, {self.num_images()} images)"
