"""The analytic head model of :mod:`neurovfm.phantom`, in anatomical coordinates.

:func:`_anatomy` gives the tissue values (from a modality's table) at points
given in millimetres from the head centre (LPS: +x left, +y posterior, +z
superior), with partial-volume edges ``w`` mm wide: scalp, skull tables and
diploe, CSF, folded cortex over white matter, deep grey nuclei, ventricles,
fissure and falx, a haemorrhage with oedema, and a neck with a vertebra.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

#: A float32 array of coordinates (mm) or tissue values.
_F32 = npt.NDArray[np.float32]
#: ``box(lo, hi)``: the slices of the slab that hold the anatomical box ``[lo, hi]``, or None.
_Box = Callable[[npt.NDArray[np.float64], npt.NDArray[np.float64]], "tuple[slice, ...] | None"]
#: ``paint(values, x, y, z)``: paints ``values`` in place at the coordinates x, y, z.
_Painter = Callable[[_F32, _F32, _F32, _F32], None]

# Head (skin surface) semi-axes in mm: left-right, anterior-posterior, inferior-superior.
_HEAD = (72.0, 90.0, 82.0)
# Depths (mm below the skin) of the layer boundaries.
_FAT, _GALEA, _SKULL, _DIPLOE, _INNER, _DURA, _CORTEX, _WM = 2.0, 4.5, 6.0, 8.0, 11.0, 13.0, 15.0, 19.0


def _inside(depth: npt.NDArray[Any], w: float) -> _F32:
    """Fraction of a voxel inside a boundary at signed depth ``depth`` (mm, > 0 inside)."""
    f = depth * np.float32(1.0 / w)
    f += np.float32(0.5)
    np.clip(f, 0.0, 1.0, out=f)
    return f


def _paint(v: _F32, frac: npt.NDArray[Any], value: float) -> None:
    """v <- v + frac * (value - v), in place."""
    t = np.subtract(np.float32(value), v)
    t *= frac
    v += t


def _ellipsoid_depth(x: _F32, y: _F32, z: _F32, c: Sequence[float], a: Sequence[float]) -> _F32:
    """Approximate depth (mm) inside the ellipsoid centred at ``c`` with semi-axes ``a``."""
    r = np.sqrt(((x - c[0]) / a[0]) ** 2 + ((y - c[1]) / a[1]) ** 2 + ((z - c[2]) / a[2]) ** 2)
    depth: _F32 = (1.0 - r) * np.float32(min(a))  # float32: NumPy's Python-float scalars are weak
    return depth


def _whole(lo: npt.NDArray[np.float64], hi: npt.NDArray[np.float64]) -> tuple[slice, ...] | None:
    return (slice(None),) * 3


def _anatomy(x: _F32, y: _F32, z: _F32, tissues: Mapping[str, float], w: float, box: _Box = _whole) -> _F32:
    """Tissue values at anatomical coordinates x, y, z (mm from the head centre).

    ``box(lo, hi)`` gives the slices of the slab that hold the anatomical box
    ``[lo, hi]`` (or None when the slab misses it); local structures are only
    computed there.
    """
    t = tissues
    v = full = np.full(x.shape, t["air"], np.float32)
    xf, yf, zf = x, y, z

    def local(lo: Sequence[float], hi: Sequence[float], paint: _Painter, pad: float = 2 * w) -> None:
        sl = box(np.asarray(lo, float) - pad, np.asarray(hi, float) + pad)
        if sl is not None:
            paint(full[sl], xf[sl], yf[sl], zf[sl])

    def ellipsoid(
        c: Sequence[float],
        a: Sequence[float],
        value: float,
        width: float = w,
        within: Callable[[_F32, _F32, _F32], _F32] | None = None,
    ) -> None:
        def paint(vv: _F32, xx: _F32, yy: _F32, zz: _F32) -> None:
            f = _inside(_ellipsoid_depth(xx, yy, zz, c, a), width)
            if within is not None:
                f *= within(xx, yy, zz)
            _paint(vv, f, value)

        # The depth is scaled by min(a): the edge ramp reaches max(a) / min(a) times further.
        pad = width * max(a) / min(a) + 2 * w
        local([ci - ai for ci, ai in zip(c, a)], [ci + ai for ci, ai in zip(c, a)], paint, pad)

    ax, ay, az = _HEAD
    rho = np.sqrt(x * x + y * y + z * z)
    r = np.sqrt((x / ax) ** 2 + (y / ay) ** 2 + (z / az) ** 2)
    head = rho * (1.0 - r) / np.maximum(r, np.float32(1e-6))  # depth below the skin along the ray
    del rho, r
    # Neck: an elliptic cylinder below the skull base.
    neck = (1.0 - np.sqrt((x / 46.0) ** 2 + ((y - 12.0) / 52.0) ** 2)) * np.float32(49.0)
    np.minimum(neck, -40.0 - z, out=neck)
    body = np.maximum(head, neck)
    del neck

    _paint(v, _inside(body, w), t["skin"])
    _paint(v, _inside(body - _FAT, w), t["fat"])
    _paint(v, _inside(body - _GALEA, w), t["muscle"])
    del body

    # Vertebra and spinal cord, below the skull.
    def spine(vv: _F32, xx: _F32, yy: _F32, zz: _F32) -> None:
        below = _inside(-60.0 - zz, w)
        rv = np.sqrt(xx * xx + (yy - 18.0) ** 2)
        _paint(vv, _inside(12.0 - rv, w) * below, t["vertebra"])
        _paint(vv, _inside(9.5 - rv, w) * below, t["marrow"])
        rc = np.sqrt(xx * xx + (yy - 36.0) ** 2)
        _paint(vv, _inside(6.0 - rc, w) * below, t["csf"])
        _paint(vv, _inside(4.0 - rc, w) * below, t["cord"])

    local([-12.0, 6.0, -1e9], [12.0, 42.0, -60.0], spine)
    # Skull, meninges, brain.
    _paint(v, _inside(head - _SKULL, w), t["table"])
    _paint(v, _inside(head - _DIPLOE, w), t["diploe"])
    _paint(v, _inside(head - _INNER, w), t["table"])
    # Where the depth can exceed _DURA - w: |q_i| < a_i (1 - (_DURA - w) / max(a)).
    lim = np.asarray(_HEAD) * (1.0 - (_DURA - 2 * w) / max(_HEAD)) + 2 * w
    inner = box(-lim, lim)
    if inner is not None:  # the brain lies inside the inner table
        v, x, y, z, head = v[inner], x[inner], y[inner], z[inner], head[inner]
        _paint(v, _inside(head - _DURA, w), t["csf"])
        brain = _inside(head - _CORTEX, w)
        _paint(v, brain, t["gm"])
        fold = np.sin(0.33 * x + 0.7) * np.sin(0.29 * y + 0.3) * np.sin(0.31 * z + 1.1)
        fold *= np.float32(2.5)
        fold += head
        fold -= np.float32(_WM)
        _paint(v, _inside(fold, w), t["wm"])
        del fold, brain, v, x, y, z, head

        def in_brain(xx: _F32, yy: _F32, zz: _F32) -> _F32:
            rr = np.sqrt((xx / ax) ** 2 + (yy / ay) ** 2 + (zz / az) ** 2)
            return _inside(np.sqrt(xx * xx + yy * yy + zz * zz) * (1.0 - rr) / np.maximum(rr, 1e-6) - _CORTEX, w)

        # Sulcal CSF in the interhemispheric fissure (above the corpus callosum), with the falx.
        def fissure(vv: _F32, xx: _F32, yy: _F32, zz: _F32) -> None:
            upper = _inside(zz - 12.0, w) * in_brain(xx, yy, zz)
            axx = np.abs(xx)
            _paint(vv, _inside(1.6 - axx, w) * upper, t["csf"])
            _paint(vv, _inside(0.5 - axx, w) * upper, t["falx"])

        local([-1.6, -ay, 12.0], [1.6, ay, az], fissure)
        # Deep grey nuclei (basal ganglia, thalami).
        for sx in (-1.0, 1.0):
            ellipsoid((sx * 18.0, 2.0, 2.0), (9.0, 15.0, 9.0), t["deep"])
        # Ventricles: lateral, third, fourth.
        for sx in (-1.0, 1.0):
            ellipsoid((sx * 9.0, -2.0, 14.0), (5.5, 30.0, 9.0), t["csf"])
        ellipsoid((0.0, 6.0, 0.0), (2.2, 12.0, 8.0), t["csf"])
        ellipsoid((0.0, 34.0, -32.0), (5.0, 3.5, 5.0), t["csf"])
        # A right fronto-parietal haemorrhage with a rim of oedema (right = -x in LPS).
        c, a = (-36.0, -14.0, 26.0), (8.0, 11.0, 7.0)
        ellipsoid(c, tuple(1.6 * s for s in a), t["oedema"], 2 * w, in_brain)
        ellipsoid(c, a, t["blood"])
    return full
