"""Visual QA: a PNG montage of a preprocessed volume, as the model receives it.

One column per array axis of the model input ``[D, H, W]`` (the centre slice
across that axis), one row per channel (the CT windows brain, blood and bone, or
the normalised MRI). Tokens flagged as background are shaded, the four edges of
each panel carry the patient direction they face (R/L, A/P, S/I), and the title
gives the shape, the voxel spacing and the view.

Orientation. :func:`neurovfm.data.load_image` reorients to RPI as
``SimpleITK.DICOMOrient(img, "RPI")``: the direction becomes
``diag(-1, 1, -1)`` in the LPS patient frame of ITK and DICOM, so index ``x``
grows towards the patient's Right, ``y`` towards Posterior and ``z`` towards
Inferior. The NumPy array is ``(z, y, x)`` and
:func:`~neurovfm.data.prepare_for_inference` transposes it by view (see
:func:`neurovfm.data.preprocess.view_axes`): an axial scan (view 0) gives
``[D, H, W]`` growing towards I, P, R. The letters are computed from the image's
direction matrix (each axis takes the patient direction it is closest to), so
they stay right for oblique scans, where they name the nearest direction.

The figure is drawn with matplotlib (``pip install "neurovfm[qa]"``), imported
only when a montage is made, through its object API (no pyplot, no GUI backend).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from .data.preprocess import CT_WINDOWS, view_axes
from .errors import ImageNotFoundError, InvalidArgumentError, NotInDatasetError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "RPI_DIRECTION",
    "QAVolume",
    "orientation_letters",
    "load_scan",
    "load_cached",
    "render_montage",
    "save_montage",
    "qa",
]

#: Direction matrix (row-major, LPS frame) of an RPI image: x -> R, y -> P, z -> I.
RPI_DIRECTION = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
#: Token size along D, H, W.
TOKEN = (4, 16, 16)
#: File types a montage can be written as.
SUFFIXES = (".png", ".pdf", ".svg")

_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
_PLANE = {"S": "axial", "I": "axial", "A": "coronal", "P": "coronal", "R": "sagittal", "L": "sagittal"}
_VIEW_NAMES = {0: "axial", 1: "coronal", 2: "sagittal"}
_SHADE = (1.0, 0.25, 0.15, 0.38)  # RGBA of the background-token overlay


@dataclass
class QAVolume:
    """What a montage shows: the model input of one image and its geometry.

    ``arrays`` are float32 ``[D, H, W]`` (or ``[1, D, H, W]``) in ``[0, 1]``, one per
    channel named in ``channels``; ``mask`` the per-token background flags (``[N]``
    or ``[D/4, H/16, W/16]``, 1 = background); ``spacing`` the voxel spacing in mm in
    SimpleITK order ``(x, y, z)``; ``direction`` the 3x3 direction matrix (row-major)
    of the preprocessed image.
    """

    arrays: list[npt.NDArray[np.floating[Any]]]
    channels: list[str]
    mask: np.ndarray
    view: int
    spacing: tuple[float, ...]
    mode: str
    direction: tuple[float, ...] = RPI_DIRECTION
    name: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(D, H, W)``."""
        a = np.asarray(self.arrays[0])
        return tuple(int(s) for s in a.shape[-3:])

    @property
    def dhw_spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along ``D, H, W``."""
        return tuple(float(self.spacing[2 - a]) for a in view_axes(self.view))


def orientation_letters(view: int, direction: Sequence[float] = RPI_DIRECTION) -> tuple[str, ...]:
    """The patient direction towards which ``D``, ``H`` and ``W`` grow.

    Parameters
    ----------
    view
        The view from :func:`~neurovfm.data.prepare_for_inference` (0 axial, 1
        coronal, 2 sagittal): how the SimpleITK array ``(z, y, x)`` was transposed.
    direction
        The image's direction matrix (9 values, row-major; columns are the x, y, z
        axes in the LPS patient frame). Default: exact RPI.

    Returns
    -------
    Three letters among ``R L A P S I``; e.g. ``('I', 'P', 'R')`` for view 0 of an
    RPI image. An oblique axis takes the direction it is closest to.
    """
    m = np.asarray(direction, dtype=float).reshape(3, 3)
    per_axis = []  # SimpleITK axes x, y, z
    for k in range(3):
        col = m[:, k]
        j = int(np.argmax(np.abs(col)))
        per_axis.append("LPS"[j] if col[j] > 0 else "RAI"[j])
    # NumPy axis a is SimpleITK axis 2 - a; [D, H, W] are NumPy axes view_axes(view).
    return tuple(per_axis[2 - a] for a in view_axes(view))


def _channels(mode: str) -> list[str]:
    if mode == "ct":
        return [f"{n} (W {w:g}, L {lv:g})" for n, w, lv in CT_WINDOWS]
    return ["MRI (normalised)"]


def load_scan(path: str | os.PathLike[str], mode: str, series_uid: str | None = None) -> QAVolume:
    """Read and preprocess a scan for a montage (the library's one recipe,
    :func:`neurovfm.data.scan.prepare_scan`: what the model sees)."""
    from .data.scan import prepare_scan

    path = os.fspath(path)
    m = mode.lower()
    r = prepare_scan(path, m, series_uid, tokenize=False, check_mode=False)
    return QAVolume(
        arrays=[a[0] for a in r.arrays],
        channels=_channels(m),
        mask=r.filtered,
        view=r.view,
        spacing=tuple(r.spacing),
        mode=m,
        direction=tuple(float(d) for d in r.image.GetDirection()),
        name=os.path.basename(path.rstrip("/\\")),
        source=path,
    )


def load_cached(data_dir: str | os.PathLike[str], study: str, image: str | None = None) -> QAVolume:
    """An image of a built cache (:class:`~neurovfm.data.CacheManager`) for a montage.

    ``image`` may be left out when the study holds one image. The cache keeps no
    direction matrix: the image is shown as exact RPI (as it is unless the scan
    was oblique).
    """
    from .data.cache import CacheManager

    cm = CacheManager(data_dir)
    try:
        rec = cm.metadata.get_study(study)
    except KeyError:
        raise NotInDatasetError(f"study {study!r} is not in {cm.metadata_path}") from None
    names = [im.name for im in rec.images]
    if image is None:
        if len(names) != 1:
            raise InvalidArgumentError(f"study {study!r} holds {len(names)} images {names}: choose one with --image")
        image = names[0]
    elif image not in names:
        raise NotInDatasetError(f"study {study!r} has no image {image!r} (it has {names})")
    got = cm.load_image(study, image, as_numpy=True)
    if got is None:
        raise ImageNotFoundError(
            f"{study}/{image} is not cached (or stale): build it with `neurovfm cache build {cm.data_dir}`"
        )
    items = got if isinstance(got, list) else [got]
    first = items[0]
    return QAVolume(
        arrays=[np.asarray(d["data"])[0] for d in items],
        channels=_channels(first["mode"]),
        mask=np.asarray(first["mask"]),
        view=int(first["view"]),
        spacing=tuple(float(s) for s in first["spacing"]),
        mode=first["mode"],
        name=f"{study}/{image}",
        source=os.path.join(cm.processed_dir, study),
    )


def _token_mask(vol: QAVolume) -> np.ndarray:
    d, h, w = vol.shape
    grid = (d // TOKEN[0], h // TOKEN[1], w // TOKEN[2])
    mask = np.asarray(vol.mask).astype(bool)
    if mask.size != grid[0] * grid[1] * grid[2]:
        raise InvalidArgumentError(
            f"mask has {mask.size} token flags, a [D, H, W] = {vol.shape} volume has {np.prod(grid)}"
        )
    return mask.reshape(grid)


def _panel_shade(mask3: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Voxel-level background flags of the slice ``index`` across ``axis``."""
    m2 = np.take(mask3, index // TOKEN[axis], axis=axis)
    r, c = (a for a in range(3) if a != axis)
    return np.repeat(np.repeat(m2, TOKEN[r], axis=0), TOKEN[c], axis=1)


def _mm(values: Iterable[float]) -> str:
    return " x ".join(f"{v:.3f}".rstrip("0").rstrip(".") for v in values)


def _import_figure() -> type[Figure]:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "the QA montage needs matplotlib: pip install 'neurovfm[qa]' (or pip install matplotlib)"
        ) from err
    return Figure


def render_montage(vol: QAVolume, dpi: int = 100, panel_inches: float = 3.4) -> Figure:
    """Draw the montage of ``vol`` on a new matplotlib ``Figure`` (not shown, no pyplot)."""
    Figure = _import_figure()
    letters = orientation_letters(vol.view, vol.direction)
    dhw_sp = vol.dhw_spacing
    d, h, w = vol.shape
    mask3 = _token_mask(vol)
    n_tok = mask3.size
    fg = 1.0 - float(mask3.mean()) if n_tok else 0.0
    rows = len(vol.arrays)

    fig = Figure(figsize=(3 * panel_inches, rows * panel_inches + 1.1), dpi=dpi, facecolor="black")
    axes = fig.subplots(rows, 3, squeeze=False, gridspec_kw={"wspace": 0.08, "hspace": 0.16})
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.02, top=1.0 - 1.0 / (rows * panel_inches + 1.1))
    for col, axis in enumerate(range(3)):
        idx = vol.shape[axis] // 2
        r, c = (a for a in range(3) if a != axis)
        shade = _panel_shade(mask3, axis, idx)
        overlay = np.zeros(shade.shape + (4,), np.float32)
        overlay[shade] = _SHADE
        for row, arr in enumerate(vol.arrays):
            ax = axes[row][col]
            img = np.take(np.asarray(arr).reshape(vol.shape), idx, axis=axis)
            aspect = dhw_sp[r] / dhw_sp[c]
            ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect=aspect)
            ax.imshow(overlay, interpolation="nearest", aspect=aspect)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color("#444444")
            style = {
                "color": "#ffd84d",
                "fontsize": 11,
                "fontweight": "bold",
                "transform": ax.transAxes,
                "bbox": {"boxstyle": "round,pad=0.12", "facecolor": "black", "alpha": 0.55, "linewidth": 0},
            }
            ax.text(0.5, 0.985, _OPPOSITE[letters[r]], ha="center", va="top", **style)
            ax.text(0.5, 0.015, letters[r], ha="center", va="bottom", **style)
            ax.text(0.012, 0.5, _OPPOSITE[letters[c]], ha="left", va="center", **style)
            ax.text(0.988, 0.5, letters[c], ha="right", va="center", **style)
            if row == 0:
                name = "DHW"[axis]
                ax.set_title(
                    f"{_PLANE[letters[axis]]}: {name} = {idx} of {vol.shape[axis]}", color="white", fontsize=10
                )
            if col == 0:
                ax.set_ylabel(
                    vol.channels[row] if row < len(vol.channels) else f"channel {row}", color="white", fontsize=10
                )
    view_name = _VIEW_NAMES.get(vol.view, "?")
    title = (
        f"{vol.name}  |  {vol.mode.upper()}  |  view {vol.view} ({view_name})\n"
        f"[D, H, W] = [{d}, {h}, {w}]  |  voxel (D, H, W) {_mm(dhw_sp)} mm  |  "
        f"spacing (x, y, z) {_mm(vol.spacing)} mm\n"
        f"{n_tok} tokens, {100 * fg:.1f}% foreground  |  shaded: background tokens"
    )
    fig.suptitle(title, color="white", fontsize=10, y=0.995, va="top")
    return fig


def save_montage(vol: QAVolume, output: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Render ``vol`` and write it to ``output`` (``.png``, ``.pdf`` or ``.svg``); returns the path."""
    out = Path(output)
    if out.suffix.lower() not in SUFFIXES:
        raise InvalidArgumentError(f"QA output {str(out)!r} must end with {', '.join(SUFFIXES)}")
    fig = render_montage(vol, dpi=dpi)
    fig.savefig(os.fspath(out), facecolor=fig.get_facecolor(), dpi=dpi)
    return out


def qa(
    source: str | os.PathLike[str] | None = None,
    mode: str | None = None,
    output: str | os.PathLike[str] = "qa.png",
    *,
    series_uid: str | None = None,
    cache: str | os.PathLike[str] | None = None,
    study: str | None = None,
    image: str | None = None,
    dpi: int = 100,
) -> Path:
    """Write the QA montage of a scan (``source`` + ``mode``) or of a cached image
    (``cache`` + ``study`` [+ ``image``]) to ``output``; returns its path."""
    if (source is None) == (cache is None):
        raise InvalidArgumentError("give either a scan (source, mode) or a cached image (cache, study)")
    if source is not None:
        if mode is None:
            raise InvalidArgumentError("mode ('ct' or 'mri') is needed with a scan")
        vol = load_scan(source, mode, series_uid=series_uid)
    else:
        if study is None:
            raise InvalidArgumentError("study is needed with cache")
        vol = load_cached(cast("str | os.PathLike[str]", cache), study, image)  # not None: source is
    return save_montage(vol, output, dpi=dpi)
