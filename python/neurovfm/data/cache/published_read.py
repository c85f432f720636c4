"""Reading and checking the files of a cache built by the published NeuroVFM code (the
layout is in :mod:`neurovfm.data.cache.published`): the safe ``torch.load``
(:func:`allow_numpy_integers`), the checks of each volume, of the voxel mask against the
volumes and of the published sidecar, and :func:`read_published`, which gives the entry
to write. torch is imported only when a file is read.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from ... import _core
from ..._threads import get_num_threads
from ...errors import CacheEntryError, PtFormatError
from ..preprocess import CT_FOREGROUND_HU, CT_WINDOW_NAMES, CT_WINDOWS, MRI_PERCENTILES
from . import entry

__all__ = [
    "read_published",
    "token_flags",
    "safe_load_globals",
    "allow_numpy_integers",
    "published_sidecar_path",
]

_PATCH = (4, 16, 16)
_KEYS = ("data", "view", "shape", "spacing", "mode", "window")
_TRUST_HINT = (
    "pass --trust-pickle (Python: trust_pickle=True) only for a cache you built yourself: "
    "loading such a file runs the code pickled in it"
)


# --- loading a published file ----------------------------------------------------------------


def safe_load_globals() -> list[Any]:
    """What ``torch.load(weights_only=True)`` is also allowed to build here: NumPy integer
    scalars (the published ``view`` is ``2 - np.argmax(spacing)``, a ``numpy.int64``, for
    every scan whose spacings differ). Rebuilding one calls no code of the file."""
    import torch

    try:
        from numpy._core.multiarray import scalar  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef,attr-defined,unused-ignore]
    out: list[Any] = [scalar, np.dtype]
    out += sorted({type(np.dtype(c)) for c in np.typecodes["AllInteger"]}, key=str)
    if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 6):
        out.append((scalar, "numpy.core.multiarray.scalar"))  # the name NumPy 1.x pickles
    return out


@contextlib.contextmanager
def allow_numpy_integers() -> Iterator[None]:
    """:func:`safe_load_globals` allowed for the ``torch.load`` calls inside (process-wide
    while it lasts: torch keeps one list; entered once per import, around its workers)."""
    import torch.serialization as ts

    if not hasattr(ts, "safe_globals"):  # pragma: no cover - torch < 2.5: numpy scalars need trust
        yield
        return
    present = ts.get_safe_globals()
    with ts.safe_globals([g for g in safe_load_globals() if g not in present]):
        yield


def _load(path: str, trust_pickle: bool) -> tuple[Any, bool]:
    """The object a published ``.pt`` file holds, and whether it needed ``trust_pickle``.

    The archive is read first with every member's CRC-32 checked (a truncated or corrupt
    file is refused before torch sees it), then ``torch.load(weights_only=True)``; only
    when that refuses the file's objects and ``trust_pickle`` is set, ``weights_only=False``."""
    import torch

    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except FileNotFoundError:
        raise
    except Exception as err:  # BadZipFile, OSError, zlib.error, EOFError...
        raise PtFormatError(
            f"{path}: not a readable torch file ({type(err).__name__}: {err}): truncated or corrupt"
        ) from None
    if bad is not None:
        raise PtFormatError(f"{path}: member {bad} fails its CRC-32: the file is corrupt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), False
    except pickle.UnpicklingError as err:
        text = str(err)
        if "weights only" not in text.lower():
            raise PtFormatError(f"{path}: unreadable pickle ({_first_line(text)})") from None
        if not trust_pickle:
            why = next((ln.strip() for ln in text.splitlines() if "WeightsUnpickler error" in ln), "")
            why = why.replace("WeightsUnpickler error: ", "").split(". Please use", 1)[0]
            raise PtFormatError(
                f"{path}: holds Python objects that a safe load (torch.load(weights_only=True)) refuses"
                f"{f' ({why})' if why else ''}; {_TRUST_HINT}"
            ) from None
    except Exception as err:
        raise PtFormatError(f"{path}: torch.load fails ({type(err).__name__}: {_first_line(str(err))})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False), True
    except Exception as err:
        raise PtFormatError(f"{path}: torch.load fails ({type(err).__name__}: {_first_line(str(err))})") from None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no message"


# --- checking ---------------------------------------------------------------------------------


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _volume(path: str, obj: Any, mode: str, key: str) -> tuple[npt.NDArray[np.uint8], int, tuple[float, ...]]:
    """(uint8 [D, H, W], view, spacing) of a published volume dict, checked."""
    import torch

    if isinstance(obj, torch.Tensor):
        raise CacheEntryError(
            f"{path}: holds a {tuple(obj.shape)} tensor, not the published dict {{'data', 'view', ...}}: "
            "an entry of this library without a valid sidecar? `neurovfm cache build` rebuilds it from its scan"
        )
    if not isinstance(obj, dict):
        raise CacheEntryError(f"{path}: holds a {type(obj).__name__}, not the published dict {{'data', 'view', ...}}")
    absent = [k for k in _KEYS if k not in obj]
    if absent:
        raise CacheEntryError(f"{path}: the published dict has no {', '.join(repr(k) for k in absent)}")
    data = obj["data"]
    if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or data.dim() != 3:
        what = f"a {data.dtype} {tuple(data.shape)} tensor" if isinstance(data, torch.Tensor) else type(data).__name__
        raise CacheEntryError(f"{path}: 'data' is {what}, expected a uint8 [D, H, W] tensor")
    shape = tuple(int(n) for n in data.shape)
    if any(n < p or n % p for n, p in zip(shape, _PATCH)):
        raise CacheEntryError(
            f"{path}: 'data' is {list(shape)}, not whole 4x16x16 tokens (D, H, W multiples of 4, 16, 16)"
        )
    declared = obj["shape"]
    if not isinstance(declared, (tuple, list)) or [int(n) if _is_int(n) else n for n in declared] != list(shape):
        raise CacheEntryError(f"{path}: 'shape' is {declared!r}, 'data' is {list(shape)}")
    got_mode = obj["mode"]
    if not isinstance(got_mode, str) or got_mode.lower() != mode:
        raise CacheEntryError(f"{path}: its mode is {got_mode!r}, metadata.json says the study is {mode!r}")
    want_window = key if mode == "ct" else None
    if obj["window"] != want_window:
        raise CacheEntryError(f"{path}: its window is {obj['window']!r}, expected {want_window!r}")
    view = obj["view"]
    if not _is_int(view) or int(view) not in (0, 1, 2):
        raise CacheEntryError(f"{path}: 'view' is {view!r}, expected 0, 1 or 2")
    spacing = obj["spacing"]
    if (
        not isinstance(spacing, (tuple, list))
        or len(spacing) != 3
        or not all(isinstance(s, (int, float, np.floating, np.integer)) and not isinstance(s, bool) for s in spacing)
        or not all(math.isfinite(float(s)) and float(s) > 0 for s in spacing)
    ):
        raise CacheEntryError(f"{path}: 'spacing' is {spacing!r}, expected three positive numbers")
    arr: npt.NDArray[np.uint8] = data.numpy()
    return arr, int(view), tuple(float(s) for s in spacing)


def _voxel_mask(path: str, obj: Any, shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    """The published voxel background mask (1 = background) as bool [D, H, W], checked."""
    import torch

    if not isinstance(obj, torch.Tensor):
        raise CacheEntryError(f"{path}: holds a {type(obj).__name__}, expected a uint8 [D, H, W] tensor")
    if obj.dtype not in (torch.uint8, torch.bool):
        raise CacheEntryError(f"{path}: a {obj.dtype} tensor, expected uint8 (or bool)")
    got = tuple(int(n) for n in obj.shape)
    if got != shape:
        raise CacheEntryError(f"{path}: the mask is {list(got)}, the volume {list(shape)}")
    m = obj.numpy()
    if m.dtype == np.uint8:
        top = int(m.max()) if m.size else 0
        if top > 1:
            raise CacheEntryError(f"{path}: mask values must be 0 or 1 (1 = background voxel), found {top}")
    return m.astype(bool, copy=False)


def _window_u8(x: float, width: float, level: float) -> int:
    """The published cache's byte of the value ``x`` in one CT window."""
    lower, upper = level - width / 2, level + width / 2
    return int((min(max(x, lower), upper) - lower) / (upper - lower + 1e-8) * 255)


def _check_values(
    path: str, mode: str, volumes: Mapping[str, npt.NDArray[np.uint8]], bg: npt.NDArray[np.bool_]
) -> None:
    """The mask agrees with the volumes, as the published formulas make it (docs/numbers.md 3):
    every byte is a non-decreasing function of the scan's value ``x``, and a voxel is
    background when ``x <= t`` (CT: t = -500 HU; MRI: t = the 10th percentile), so every
    background byte is at most every foreground byte, and for CT at most the byte of
    -500 HU, every foreground byte at least it. MRI: at least 10 % of the voxels are
    background (those at or below the 10th percentile)."""
    fg = ~bg
    if mode == "ct":
        for name, width, level in CT_WINDOWS:
            v = volumes[name]
            q = _window_u8(CT_FOREGROUND_HU, width, level)
            hi = int(v[bg].max()) if bg.any() else 0
            lo = int(v[fg].min()) if fg.any() else 255
            if hi > q or lo < q:
                raise CacheEntryError(
                    f"{path}: the mask disagrees with the {name} window: background voxels must be <= {q} and "
                    f"foreground voxels >= {q} (the byte of {CT_FOREGROUND_HU:g} HU), found background up to {hi} "
                    f"and foreground down to {lo}"
                )
        return
    v = volumes["volume"]
    n = v.size
    least = int(MRI_PERCENTILES[1] / 100 * (n - 1))  # numpy's index of P10 (one below the exact bound)
    if int(bg.sum()) < least:
        raise CacheEntryError(
            f"{path}: {int(bg.sum())} of {n} voxels are background; at least {least} are (those at or below "
            "the 10th percentile)"
        )
    if bg.any() and fg.any() and int(v[bg].max()) > int(v[fg].min()):
        raise CacheEntryError(
            f"{path}: the mask disagrees with the volume: a background voxel ({int(v[bg].max())}) is brighter than "
            f"a foreground voxel ({int(v[fg].min())}); the published mask is the voxels above the 10th percentile"
        )


def published_sidecar_path(folder: str, image: str) -> str:
    """``<image>_metadata.json``, the published code's sidecar of an image."""
    return os.path.join(folder, f"{image}_metadata.json")


def _published_sidecar(path: str) -> dict[str, Any] | None:
    """The published sidecar at ``path`` (None when absent); CacheEntryError when it is not one."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise CacheEntryError(f"{path}: unreadable published sidecar ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict) or "files" in data or "source_file" not in data:
        raise CacheEntryError(f"{path}: not the published code's sidecar (no 'source_file')")
    return data


def _check_sidecar(
    path: str, side: Mapping[str, Any], mode: str, shape: tuple[int, ...], view: int, source_path: str
) -> None:
    """The published sidecar describes these files and this scan."""
    problems = []
    if str(side.get("mode", "")).lower() != mode:
        problems.append(f"mode {side.get('mode')!r}, not {mode!r}")
    if "shape" in side and side["shape"] != list(shape):
        problems.append(f"shape {side['shape']!r}, the files hold {list(shape)}")
    if "view" in side and side["view"] != view:
        problems.append(f"view {side['view']!r}, the files say {view}")
    src = side.get("source_file")
    if not isinstance(src, str) or os.path.normpath(src) != os.path.normpath(source_path):
        problems.append(f"source_file {src!r}, metadata.json names {source_path!r}")
    if mode == "ct" and "windows" in side and list(side["windows"]) != list(CT_WINDOW_NAMES):
        problems.append(f"windows {side['windows']!r}")
    if problems:
        raise CacheEntryError(f"{path}: the published sidecar disagrees: {'; '.join(problems)}")


def token_flags(background: npt.NDArray[np.bool_]) -> npt.NDArray[np.uint8]:
    """uint8 ``[D/4, H/16, W/16]``: 1 where any voxel of the 4x16x16 token is background
    (the pipeline's own kernel, ``_core.token_background``, on the foreground)."""
    flags = _core.token_background(np.logical_not(background), get_num_threads())
    return flags.reshape(entry.token_grid((1, *background.shape)))


def read_published(
    folder: str, image: str, mode: str, source_path: str, trust_pickle: bool = False, sidecar: str | None = None
) -> tuple[entry.Encoded, dict[str, Any], bool]:
    """Read and check the published files of ``image`` in ``folder``: (the entry to write,
    the published sidecar or ``{}``, whether a file needed ``trust_pickle``).

    ``sidecar``: the path of the published ``<image>_metadata.json`` (None: do not read
    one). Raises :class:`~neurovfm.errors.PtFormatError` (a file torch cannot or may not
    read) or :class:`~neurovfm.errors.CacheEntryError` (a check failed), each naming the
    file and the reason; ``FileNotFoundError`` for a missing file."""
    names = entry.file_names(image, mode)
    volumes: dict[str, npt.NDArray[np.uint8]] = {}
    trusted = False
    first: tuple[str, tuple[int, ...], int, tuple[float, ...]] | None = None
    for key in entry.volume_keys(mode):
        path = os.path.join(folder, names[key])
        obj, used = _load(path, trust_pickle)
        trusted |= used
        arr, view, spacing = _volume(path, obj, mode, key)
        if first is None:
            first = (names[key], arr.shape, view, spacing)
        elif (arr.shape, view, spacing) != first[1:]:
            raise CacheEntryError(
                f"{path}: the windows disagree: {names[key]} is {list(arr.shape)}, view {view}, spacing {list(spacing)}; "
                f"{first[0]} is {list(first[1])}, view {first[2]}, spacing {list(first[3])}"
            )
        volumes[key] = arr
    assert first is not None
    _name, shape, view, spacing = first
    mask_path = os.path.join(folder, names[entry.TOKEN_BACKGROUND])
    obj, used = _load(mask_path, trust_pickle)
    trusted |= used
    bg = _voxel_mask(mask_path, obj, shape)
    _check_values(mask_path, mode, volumes, bg)
    side: dict[str, Any] = {}
    if sidecar is not None:
        got = _published_sidecar(sidecar)
        if got is not None:
            _check_sidecar(sidecar, got, mode, shape, view, source_path)
            side = got
    # reshape, not [None]: a new axis has stride 0, and the .pt writer records the strides
    lead = {k: np.ascontiguousarray(v).reshape((1, *v.shape)) for k, v in volumes.items()}
    enc = entry.Encoded(lead, token_flags(bg), view, spacing)
    return enc, side, trusted
