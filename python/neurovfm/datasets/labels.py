"""Study labels for :class:`~neurovfm.datasets.ImageDataset`: from a dict, a JSON object
file or a CSV file."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from typing import Any

from ..errors import DatasetError, LabelFileNotFoundError

__all__ = ["load_study_labels"]


def _scalar(text: str) -> int | float | str:
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def _is_number(text: str) -> bool:
    return not isinstance(_scalar(text), str)


def load_study_labels(study_labels: Mapping[Any, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """``{study: label}`` from a dict, a JSON object file or a CSV file.

    CSV: the first column is the study id. With one more column the label is that
    value (an int or float when it parses as one, else the string); with several
    it is a multilabel list of 0/1 ints. A first row whose label cells are not
    all numbers is a header. Blank lines and lines starting with ``#`` are skipped.
    """
    if isinstance(study_labels, Mapping):
        return {str(k): v for k, v in study_labels.items()}
    path = os.fspath(study_labels)
    if not os.path.exists(path):
        raise LabelFileNotFoundError(f"{path}: label file not found")
    if path.lower().endswith(".json"):
        with open(path) as f:
            try:
                data = json.load(f)
            except ValueError as err:
                raise DatasetError(f"{path}: not a JSON file ({err})") from None
        if not isinstance(data, dict):
            raise DatasetError(f"{path}: the JSON labels must be an object {{study: label}}")
        return {str(k): v for k, v in data.items()}
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and r[0].strip() and not r[0].lstrip().startswith("#")]
    if not rows:
        return {}
    if not all(_is_number(c) for c in rows[0][1:]) or len(rows[0]) < 2:
        header, rows = rows[0], rows[1:]
        if len(header) < 2:
            raise DatasetError(f"{path}: expected 'study,label' (or 'study,label1,label2,...') columns")
    width = len(rows[0]) if rows else 0
    out: dict[str, Any] = {}
    for row in rows:
        study = row[0].strip()
        if len(row) != width:
            raise DatasetError(f"{path}: study {study!r} has {len(row) - 1} label columns, expected {width - 1}")
        if study in out:
            raise DatasetError(f"{path}: study {study!r} appears twice")
        cells = row[1:]
        if len(cells) == 1:
            out[study] = _scalar(cells[0])
        else:
            vals = [_scalar(c) for c in cells]
            if any(v not in (0, 1) or isinstance(v, str) for v in vals):
                raise DatasetError(f"{path}: multilabel row of study {study!r} must hold 0/1 values, got {cells}")
            out[study] = [int(v) for v in vals]
    return out
