"""Options of :class:`~neurovfm.datasets.ImageDataset` shared with the published NeuroVFM
``ImageDataset`` (GitHub ``MLNeurosurg/neurovfm``): CT window probabilities, the
``class_to_idx`` label mapping and the study conversations (visual instruction tuning).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..data._files import read_json_object
from ..errors import DatasetError, InvalidTypeError, MissingFileError

__all__ = ["DEFAULT_CT_WINDOW_PROBS", "check_class_to_idx", "check_probs", "load_study_conversations", "map_labels"]

#: Probabilities of the brain, blood and bone windows when ``ct_window_probs`` is None
#: (the published default).
DEFAULT_CT_WINDOW_PROBS = (0.7, 0.15, 0.15)


def check_probs(probs: Iterable[float] | None) -> tuple[float, ...]:
    """The three CT window probabilities (brain, blood, bone); ``None``: :data:`DEFAULT_CT_WINDOW_PROBS`.
    :class:`DatasetError` unless 3 finite non-negative numbers summing to 1 (within 1e-6)."""
    if probs is None:
        return DEFAULT_CT_WINDOW_PROBS
    try:
        p = tuple(float(v) for v in probs)
    except (TypeError, ValueError):
        raise DatasetError(f"ct_window_probs must be 3 probabilities, got {probs!r}") from None
    if len(p) != 3:
        raise DatasetError(f"ct_window_probs must be 3 probabilities (brain, blood, bone), got {len(p)}")
    if any(not np.isfinite(v) or v < 0 for v in p):
        raise DatasetError(f"ct_window_probs must be non-negative, got {p}")
    if abs(sum(p) - 1.0) > 1e-6:
        raise DatasetError(f"ct_window_probs must sum to 1, got {p} (sum {sum(p)!r})")
    return p


def load_study_conversations(
    study_conversations: Mapping[Any, Any] | str | os.PathLike[str],
) -> dict[str, list[Any]]:
    """``{study: [turn, ...]}`` from a dict or a JSON object file (turns as the published
    code has them: ``{"role": ..., "content": ...}`` dicts, passed through unchanged).

    Unlike the published code, which logs a warning and uses no conversations, a missing
    file raises :class:`~neurovfm.errors.MissingFileError` (a ``FileNotFoundError``); a file
    that is not ``.json``, not a JSON object, or a study whose value is not a list raises
    :class:`DatasetError` naming it."""
    if isinstance(study_conversations, Mapping):
        data: Any = study_conversations
        where = "study_conversations"
    elif isinstance(study_conversations, (str, os.PathLike)):
        path = os.fspath(study_conversations)
        where = path
        if not os.path.exists(path):
            raise MissingFileError(f"{path}: study conversations file not found")
        if not path.lower().endswith(".json"):
            raise DatasetError(f"{path}: study conversations must be a .json file (an object {{study: [turns]}})")
        data = read_json_object(
            path, DatasetError, "file", "study conversations must be a JSON object {study: [turns]}"
        )
    else:
        raise InvalidTypeError(
            f"study_conversations must be a dict, a JSON file path or None, got {type(study_conversations).__name__}"
        )
    out: dict[str, list[Any]] = {}
    for study, turns in data.items():
        if not isinstance(turns, list):
            raise DatasetError(f"{where}: the conversation of study {study!r} must be a list of turns, got {turns!r}")
        out[str(study)] = turns
    return out


def map_labels(
    labels: dict[str, Any], class_to_idx: Mapping[Any, Any] | None, use_original_labels: bool
) -> dict[str, Any]:
    """Labels as items carry them (the published ``_process_label``): unchanged when
    ``use_original_labels`` or no ``class_to_idx``; else a string label becomes
    ``class_to_idx[label]`` (other labels: numbers, multilabel lists, unchanged).

    Where the published code passes a string label missing from ``class_to_idx``
    through unchanged (a batch then holds a string), this raises :class:`DatasetError`
    naming the labels not mapped."""
    if use_original_labels or not class_to_idx:
        return labels
    unmapped = sorted({v for v in labels.values() if isinstance(v, str) and v not in class_to_idx})
    if unmapped:
        raise DatasetError(
            f"labels {unmapped[:20]} are not in class_to_idx (keys {sorted(map(str, class_to_idx))[:20]}); "
            "add them, or pass use_original_labels=True"
        )
    return {s: class_to_idx[v] if isinstance(v, str) else v for s, v in labels.items()}


def check_class_to_idx(class_to_idx: Mapping[Any, Any] | None) -> dict[Any, Any]:
    """A copy of ``class_to_idx`` ({} for None); :class:`InvalidTypeError` for a non-mapping."""
    if class_to_idx is None:
        return {}
    if not isinstance(class_to_idx, Mapping):
        raise InvalidTypeError(f"class_to_idx must be a dict {{class name: index}}, got {type(class_to_idx).__name__}")
    return dict(class_to_idx)
