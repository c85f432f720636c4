"""The ``metadata.json`` layout of the published NeuroVFM code (GitHub
``MLNeurosurg/neurovfm``, ``neurovfm/data/metadata.py``): read into
:class:`~neurovfm.data.metadata.DatasetMetadata` records and written back in that layout,
so the published code can still read a file this library updated."""

from __future__ import annotations

import os
from typing import Any

from .metadata import MODES, DatasetMetadata, ImageRecord, MetadataError, StudyRecord, _is_nifti

__all__ = ["from_published", "to_published"]


def _published_kind(full: str, filename: str) -> str:
    """The kind of a published image record, from its path (the published file has none):
    ``.nii``/``.nii.gz`` is NIfTI, a folder a DICOM series, ``.dcm``/``.dicom`` (or a
    file with the DICOM preamble) a DICOM file; anything else (a file missing from
    ``raw/``, say) is ``"other"`` (a read of it fails naming the path)."""
    from .sources.dicom import is_dicom_file

    if _is_nifti(filename):
        return "nifti"
    if os.path.isdir(full):
        return "dicom_dir"
    if filename.lower().endswith((".dcm", ".dicom")):
        return "dicom_file"
    if os.path.isfile(full) and is_dicom_file(full):
        return "dicom_file"
    return "other"


def _field(path: str, where: str, value: object, want: type | tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) and want is not bool:
        ok = False
    else:
        ok = isinstance(value, want)
    if not ok:
        raise MetadataError(f"{path}: field {where!r} of the published metadata layout must be {what}, got {value!r}")
    return value


def from_published(path: str, data_dir: str, data: dict[str, Any]) -> DatasetMetadata:
    """Records from a metadata file of the published layout (see :meth:`DatasetMetadata.from_file`)."""
    studies: list[StudyRecord] = []
    for name, info in data["studies"].items():
        where = f"studies.{name}"
        if not name or name.startswith(".") or "/" in name or "\\" in name:
            raise MetadataError(f"{path}: field {where!r}: {name!r} is not a study folder name of raw/")
        _field(path, where, info, dict, "an object {mode, images}")
        if "mode" not in info:
            raise MetadataError(f"{path}: field {where + '.mode'!r} is missing")
        mode = _field(path, where + ".mode", info["mode"], str, "'ct' or 'mri'").strip().lower()
        if mode not in MODES:
            raise MetadataError(f"{path}: field {where + '.mode'!r} must be 'ct' or 'mri', got {info['mode']!r}")
        if "images" not in info:
            raise MetadataError(f"{path}: field {where + '.images'!r} is missing")
        images = _field(path, where + ".images", info["images"], dict, "an object {image: {filename, processed}}")
        records = []
        for image, im in images.items():
            iw = f"{where}.images.{image}"
            _field(path, iw, im, dict, "an object {filename, processed}")
            if "filename" not in im:
                raise MetadataError(f"{path}: field {iw + '.filename'!r} is missing")
            fn = _field(path, iw + ".filename", im["filename"], str, "a file name in raw/<study>/")
            parts = fn.replace("\\", "/").split("/")
            if not fn or os.path.isabs(fn) or ".." in parts:
                raise MetadataError(f"{path}: field {iw + '.filename'!r} must be a name in raw/{name}/, got {fn!r}")
            processed = _field(path, iw + ".processed", im.get("processed", False), bool, "true or false")
            rel = os.path.join("raw", name, fn)
            kind = _published_kind(os.path.join(data_dir, rel), fn)
            records.append(ImageRecord(str(image), rel, kind, processed))
        studies.append(StudyRecord(name, mode, records))
    meta = DatasetMetadata(data_dir, studies)
    meta.published = {k: v for k, v in data.items() if k != "studies"}
    return meta


def to_published(meta: DatasetMetadata, top: dict[str, Any]) -> dict[str, Any]:
    """The published layout of ``meta``, with the other top-level fields of ``top``."""
    studies: dict[str, Any] = {}
    for s in meta:
        base = os.path.join("raw", s.name)
        studies[s.name] = {
            "mode": s.mode,
            "images": {
                im.name: {"filename": os.path.relpath(im.path, base), "processed": bool(im.processed)}
                for im in s.images
            },
        }
    out = dict(top)
    out.setdefault("dataset_name", os.path.basename(meta.data_dir))
    out.setdefault("version", "1.0")
    out["num_studies"] = len(studies)
    out["studies"] = studies
    return out
