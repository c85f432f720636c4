"""Study labels for :class:`~neurovfm.datasets.ImageDataset`: from a dict, a JSON object
file, a CSV file or a pandas DataFrame (duck-typed: pandas is never imported)."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from typing import Any

from ..data._files import read_json_object
from ..errors import DatasetError, InvalidTypeError, LabelFileNotFoundError

__all__ = ["is_dataframe", "labels_from_dataframe", "load_study_labels", "read_study_labels"]


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


def is_dataframe(obj: object) -> bool:
    """Whether ``obj`` looks like a pandas DataFrame (``columns`` and ``itertuples``)."""
    return not isinstance(obj, (Mapping, str, bytes, os.PathLike)) and (
        hasattr(obj, "columns") and callable(getattr(obj, "itertuples", None))
    )


def _plain(v: Any) -> Any:
    """A NumPy scalar (what a DataFrame cell is) as the Python number it holds."""
    item = getattr(v, "item", None)
    if callable(item) and getattr(v, "shape", None) == ():
        return item()
    return v


def labels_from_dataframe(df: Any) -> tuple[dict[str, Any], list[str]]:
    """``({study: label}, label column names)`` from a DataFrame, as the published
    ``ImageDataset`` reads one: the first column is the study id (``str`` of the cell);
    with one more column the label is its cell (a NumPy scalar as a Python number),
    with several a multilabel list of ints. :class:`DatasetError` when there is no
    label column, a study appears twice, or a multilabel cell is not an integer."""
    columns = [str(c) for c in df.columns]
    if len(columns) < 2:
        raise DatasetError(
            f"the labels DataFrame needs a study id column and at least one label column, got columns {columns}"
        )
    out: dict[str, Any] = {}
    for row in df.itertuples(index=False, name=None):
        study = str(_plain(row[0]))
        if study in out:
            raise DatasetError(f"the labels DataFrame holds study {study!r} twice")
        cells = [_plain(v) for v in row[1:]]
        if len(cells) == 1:
            out[study] = cells[0]
            continue
        try:
            ints = [int(v) for v in cells]
        except (TypeError, ValueError):
            ints = []
        if len(ints) != len(cells) or any(i != v for i, v in zip(ints, cells)):
            raise DatasetError(f"the multilabel row of study {study!r} must hold integers, got {cells}")
        out[study] = ints
    return out, columns[1:]


def read_study_labels(study_labels: Any) -> tuple[dict[str, Any], list[str] | None]:
    """``({study: label}, label column names or None)``: :func:`load_study_labels`, with
    the label columns of a DataFrame or of a CSV file with a header."""
    if is_dataframe(study_labels):
        return labels_from_dataframe(study_labels)
    if isinstance(study_labels, Mapping):
        return {str(k): v for k, v in study_labels.items()}, None
    if not isinstance(study_labels, (str, os.PathLike)):
        raise InvalidTypeError(
            "study_labels must be a dict, a JSON or CSV file path, a pandas DataFrame or None, "
            f"got {type(study_labels).__name__}"
        )
    return _read_file(os.fspath(study_labels))


def load_study_labels(study_labels: Mapping[Any, Any] | str | os.PathLike[str] | Any) -> dict[str, Any]:
    """``{study: label}`` from a dict, a JSON object file, a CSV file or a pandas DataFrame.

    CSV: the first column is the study id. With one more column the label is that
    value (an int or float when it parses as one, else the string); with several
    it is a multilabel list of 0/1 ints. A first row whose label cells are not
    all numbers is a header. Blank lines and lines starting with ``#`` are skipped.
    DataFrame: see :func:`labels_from_dataframe` (pandas itself is not needed here).
    """
    return read_study_labels(study_labels)[0]


def _read_file(path: str) -> tuple[dict[str, Any], list[str] | None]:
    if not os.path.exists(path):
        raise LabelFileNotFoundError(f"{path}: label file not found")
    if path.lower().endswith(".json"):
        data = read_json_object(path, DatasetError, "file", "the JSON labels must be an object {study: label}")
        return {str(k): v for k, v in data.items()}, None
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and r[0].strip() and not r[0].lstrip().startswith("#")]
    if not rows:
        return {}, None
    columns = None
    if not all(_is_number(c) for c in rows[0][1:]) or len(rows[0]) < 2:
        header, rows = rows[0], rows[1:]
        if len(header) < 2:
            raise DatasetError(f"{path}: expected 'study,label' (or 'study,label1,label2,...') columns")
        columns = [c.strip() for c in header[1:]]
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
    return out, columns
