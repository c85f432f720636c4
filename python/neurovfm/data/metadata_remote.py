"""A dataset in object storage (``s3://bucket/ds/``): :meth:`DatasetMetadata.from_directory`
and :meth:`DatasetMetadata.save` on a URL (:mod:`neurovfm.data.sources.remote`)."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .metadata import load_mode_mapping
from .sources import remote

if TYPE_CHECKING:
    from .metadata import DatasetMetadata

__all__ = ["from_url", "save_url"]


def from_url(
    cls: type[DatasetMetadata],
    url: str,
    mode_mapping: Mapping[str, str] | str | os.PathLike[str],
    derived: str,
    storage_options: Mapping[str, Any] | None,
) -> DatasetMetadata:
    """:meth:`DatasetMetadata.from_directory` of a dataset in object storage: ``raw/`` is
    listed once; the studies of the mapping are staged (one at a time, from that listing)
    and scanned as local folders; the other study folders are known by name only. The
    image paths stay relative to ``url``, which becomes ``data_dir``."""
    raw = remote.list_files(remote.join(url, "raw"), storage_options)
    modes = load_mode_mapping(mode_mapping)
    by_study: dict[str, list[str]] = {}
    for rel in raw.files:
        if "/" in rel:
            by_study.setdefault(rel.split("/", 1)[0], []).append(rel)
    with tempfile.TemporaryDirectory(prefix="neurovfm-remote-") as tmp:
        for study, rels in by_study.items():
            folder = os.path.join(tmp, "raw", study)
            os.makedirs(folder, exist_ok=True)
            if study in modes:
                raw.stage(os.path.join(tmp, "raw"), rels)
        meta = cls.from_directory(tmp, modes, derived=derived)

        def to_url(p: str) -> str:
            return remote.join(url, *os.path.relpath(p, tmp).split(os.sep))

        meta.skipped_series = [
            (study, dataclasses.replace(r, path=to_url(r.path), files=tuple(to_url(f) for f in r.files), _info=None))
            for study, r in meta.skipped_series
        ]
    meta.data_dir = url.rstrip("/")
    return meta


def save_url(url: str, data: dict[str, Any]) -> str:
    fs, path = remote.url_fs(url)
    body = json.dumps(data, indent=1).encode()
    remote.retried(url, lambda: fs.pipe_file(path, body))
    return url
