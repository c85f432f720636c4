"""prepare_for_inference and tokenize (docs/numbers.md, sections 3 and 6)."""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from .. import _core
from .._threads import get_num_threads
from ..errors import InvalidArgumentError, InvalidTypeError, UnsupportedImageError
from .volume import check_finite

__all__ = [
    "prepare_for_inference",
    "tokenize",
    "untokenize",
    "Tokens",
    "CT_WINDOWS",
    "CT_WINDOW_NAMES",
    "CT_FOREGROUND_HU",
    "MRI_PERCENTILES",
    "view_axes",
]

#: CT windows as (name, width, level), in the order of ``img_arrs``.
CT_WINDOWS = (("brain", 80.0, 40.0), ("blood", 200.0, 80.0), ("bone", 2800.0, 600.0))
#: Their names, in that order: the one spelling of the windows everywhere (cache file
#: suffixes ``_brain.pt``, ``window=`` arguments, channel names).
CT_WINDOW_NAMES = tuple(w[0] for w in CT_WINDOWS)
#: CT foreground: voxels above this value (HU).
CT_FOREGROUND_HU = -500.0
#: MRI: lower clip, foreground threshold, upper clip (percentiles of all voxels).
MRI_PERCENTILES = (0.5, 10.0, 99.5)

_VIEW_AXES: dict[int, tuple[int, int, int]] = {0: (0, 1, 2), 1: (1, 0, 2), 2: (2, 1, 0)}


def view_axes(view: int) -> tuple[int, int, int]:
    """Transpose taking the SimpleITK array (z, y, x) to [D, H, W] for ``view``."""
    return _VIEW_AXES[view]


def _check_mode(mode: object) -> str:
    m = mode.lower() if isinstance(mode, str) else mode
    if m not in ("ct", "mri"):
        raise InvalidArgumentError(f"mode must be 'ct' or 'mri' (any case), got {mode!r}")
    return m


def prepare_for_inference(
    img: sitk.Image, mode: str, z_dim: int | None = None, return_foreground: bool = False, quantize: bool = False
) -> (
    tuple[list[npt.NDArray[Any]], npt.NDArray[np.uint8], int]
    | tuple[list[npt.NDArray[Any]], npt.NDArray[np.uint8], int, npt.NDArray[np.bool_]]
    | None
):
    """Turn a preprocessed image into model-ready arrays.

    Parameters
    ----------
    img
        A 3D scalar SimpleITK image, normally from :func:`load_image`.
    mode
        ``'ct'`` or ``'mri'`` (any case).
    z_dim
        Slice axis in SimpleITK order; default: 2 if all spacings are equal,
        else the axis of the largest spacing.
    return_foreground
        Also return the voxel foreground mask (bool ``[D, H, W]``).
    quantize
        Return ``uint8(v * 255)`` instead of the float32 arrays: truncated from
        the float64 value ``v`` in the same pass, exactly the reference's
        ``(arr * 255).astype(np.uint8)`` (the cache's values; docs/numbers.md).

    Returns
    -------
    ``(img_arrs, token_background, view)`` (plus ``foreground`` when asked), or
    ``None`` when the volume is smaller than one token (``D < 4`` or ``H < 16``
    or ``W < 16``). ``img_arrs`` is a list of float32 ``[1, D, H, W]`` arrays in
    ``[0, 1]``: the brain, blood and bone windows for CT, one normalised volume
    for MRI. ``token_background`` is uint8 ``[N]``, the token background flags:
    1 where a 4x16x16 token holds any background voxel (the README calls it
    ``mask``; pass it to :func:`tokenize`). ``view = 2 - z_dim``.

    Raises
    ------
    ~neurovfm.errors.InvalidArgumentError
        (a ``ValueError``) for a mode other than ``'ct'``/``'mri'``, a ``z_dim``
        other than 0, 1, 2, or a volume that is not a whole number of tokens.
    InvalidTypeError
        (a ``TypeError``) when ``img`` is not a ``SimpleITK.Image``.
    ~neurovfm.errors.UnsupportedImageError
        (a ``ValueError``) when ``img`` is not a 3D scalar image.
    """
    m = _check_mode(mode)
    if not isinstance(img, sitk.Image):
        raise InvalidTypeError(f"img must be a SimpleITK.Image, got {type(img).__name__}")
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise UnsupportedImageError("<in-memory image>", "prepare_for_inference needs a 3D scalar image")
    spacing = img.GetSpacing()
    if z_dim is None:
        z_dim = 2 if spacing[0] == spacing[1] == spacing[2] else int(np.argmax(spacing))
    if z_dim not in (0, 1, 2):
        raise InvalidArgumentError(f"z_dim must be 0, 1 or 2, got {z_dim!r}")
    view = 2 - z_dim
    arr = sitk.GetArrayViewFromImage(img).transpose(_VIEW_AXES[view])
    D, H, W = arr.shape
    if D < 4 or H < 16 or W < 16:
        return None
    if arr.dtype.kind == "f":
        check_finite(arr, "<in-memory image>")
    if D % 4 or H % 16 or W % 16:
        raise InvalidArgumentError(
            f"volume [D, H, W] = {arr.shape} is not a multiple of the 4x16x16 token; "
            "load it with load_image(preprocess=True), which crops it"
        )
    threads = get_num_threads()
    if m == "ct":
        arrs, token_background, foreground = _core.ct_windows(
            arr, [(w, lv) for _, w, lv in CT_WINDOWS], CT_FOREGROUND_HU, True, return_foreground, threads, quantize
        )
    else:
        (lo, p_fg, hi), vmin, vmax = _core.percentiles(arr, list(MRI_PERCENTILES), threads)
        # min and max of clip(x, lo, hi), as the reference computes them.
        mn = min(max(vmin, lo), hi)
        mx = min(max(vmax, lo), hi)
        out, token_background, foreground = _core.mri_normalise(
            arr, lo, hi, mn, mx, p_fg, True, return_foreground, threads, quantize
        )
        arrs = [out]
    del arr
    # The kernels return the flags when token_flags is true (always here), the mask when voxel_mask is.
    flags = cast("npt.NDArray[np.uint8]", token_background)
    if return_foreground:
        return arrs, flags, view, cast("npt.NDArray[np.bool_]", foreground)
    return arrs, flags, view


class Tokens(NamedTuple):
    """Tokens of a volume: ``img [N, 1024]``, ``coords [N, 3]`` int32, ``filtered [N]`` uint8.

    ``filtered`` holds the token background flags (1 = the token holds a background
    voxel); it keeps the name of NeuroVFM's batch key."""

    img: npt.NDArray[Any]
    coords: npt.NDArray[np.int32]
    filtered: npt.NDArray[np.uint8]

    @property
    def size(self) -> npt.NDArray[np.int32]:
        """Token grid ``[D/4, H/16, W/16]`` (int32)."""
        if len(self.coords) == 0:
            return np.zeros(3, np.int32)
        size: npt.NDArray[np.int32] = (self.coords[-1] + 1).astype(np.int32)
        return size


def tokenize(
    volume: npt.ArrayLike,
    token_background: npt.ArrayLike | None = None,
    *,
    foreground: npt.ArrayLike | None = None,
) -> Tokens:
    """Cut ``[1, D, H, W]`` or ``[D, H, W]`` into 4x16x16 tokens.

    Parameters
    ----------
    volume
        Array (NumPy, or anything ``np.asarray`` accepts without copying, e.g.
        a CPU torch tensor); D, H, W multiples of 4, 16, 16. Its dtype is kept.
    token_background
        The token background flags ``[N]`` (1 = the token holds a background
        voxel), as :func:`prepare_for_inference` returns them; copied into
        ``filtered``.
    foreground
        Keyword only, instead of ``token_background``: a voxel foreground mask
        ``[D, H, W]`` or ``[1, D, H, W]`` (True = foreground); the flags are
        computed from it (1 when any voxel of the token is background).

    With neither, every flag is 0.

    Returns
    -------
    :class:`Tokens` ``(img, coords, filtered)``; each row of ``img`` is the
    patch ``[4, 16, 16]`` flattened, rows in (d, h, w) raster order; ``coords``
    holds the (d, h, w) token index; ``filtered`` the token background flags
    (uint8 ``[N]``). ``Tokens.size`` is ``[D/4, H/16, W/16]``.

    Raises
    ------
    ~neurovfm.errors.InvalidArgumentError
        (a ``ValueError``) for a volume that is not ``[1, D, H, W]`` or
        ``[D, H, W]``, flags or a mask that do not match it, a mask given as
        ``token_background`` (pass it as ``foreground=``), or both arguments.
    """
    vol = np.asarray(volume)
    if vol.ndim == 4 and vol.shape[0] == 1:
        vol = vol[0]
    if vol.ndim != 3:
        raise InvalidArgumentError(f"tokenize expects [1, D, H, W] or [D, H, W], got shape {np.shape(volume)}")
    if token_background is not None and foreground is not None:
        raise InvalidArgumentError(
            "tokenize: pass token_background (the [N] token flags) or foreground= (a voxel mask), not both"
        )
    tb = None if token_background is None else np.asarray(token_background)
    if tb is not None and tb.ndim != 1:
        raise InvalidArgumentError(
            f"tokenize: token_background must be the [N] token background flags, got shape {tb.shape}; "
            "pass a voxel foreground mask as tokenize(volume, foreground=mask)"
        )
    threads = get_num_threads()
    try:
        img, coords = _core.tokenize(vol, threads)
    except ValueError as exc:  # the kernel's shape check: not a whole number of tokens
        raise InvalidArgumentError(str(exc)) from None
    n = img.shape[0]
    if tb is not None:
        if tb.shape[0] != n:
            raise InvalidArgumentError(f"token_background has {tb.shape[0]} token flags, the volume has {n} tokens")
        filtered = tb.astype(np.uint8, copy=True)
    elif foreground is not None:
        fg = np.asarray(foreground)
        if fg.ndim == 4 and fg.shape[0] == 1:
            fg = fg[0]
        if fg.shape != vol.shape:
            raise InvalidArgumentError(f"foreground mask shape {fg.shape} does not match volume shape {vol.shape}")
        if fg.dtype != np.bool_ and fg.dtype != np.uint8:
            fg = fg != 0
        filtered = _core.token_background(fg, threads)
    else:
        filtered = np.zeros(n, np.uint8)
    return Tokens(img, coords, filtered)


def untokenize(tokens: npt.ArrayLike, size: npt.ArrayLike) -> npt.NDArray[Any]:
    """The volume :func:`tokenize` cut: ``[N, 1024]`` tokens (rows in raster order of the
    ``size`` = ``[D/4, H/16, W/16]`` token grid, every token, background ones included) to
    a new ``[D, H, W]`` array of their dtype; ``[C, N, 1024]`` (the CT windows of a
    ``neurovfm prepare`` output) to ``[C, D, H, W]``.

    Raises :class:`~neurovfm.errors.InvalidArgumentError` (a ``ValueError``) when the
    token count is not the grid's (tokens left out, e.g. background dropped)."""
    t = np.asarray(tokens)
    grid = [int(v) for v in np.asarray(size).ravel()]
    if len(grid) != 3 or min(grid) < 1:
        raise InvalidArgumentError(
            f"size must be the 3 token counts [D/4, H/16, W/16], got {np.asarray(size).tolist()}"
        )
    if t.ndim not in (2, 3) or t.shape[-1] != 1024:
        raise InvalidArgumentError(f"untokenize expects tokens [N, 1024] or [C, N, 1024], got shape {t.shape}")
    d, h, w = grid
    if t.shape[-2] != d * h * w:
        raise InvalidArgumentError(
            f"{t.shape[-2]} tokens do not fill the {d} x {h} x {w} token grid ({d * h * w} tokens); "
            "untokenize needs every token, background ones included"
        )
    lead = t.shape[:-2]
    blocks = t.reshape(*lead, d, h, w, 4, 16, 16)
    k = len(lead)
    order = [*range(k), k, k + 3, k + 1, k + 4, k + 2, k + 5]
    out: npt.NDArray[Any] = np.ascontiguousarray(blocks.transpose(order)).reshape(*lead, 4 * d, 16 * h, 16 * w)
    return out
