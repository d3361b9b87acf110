"""Pictures for the vetters: cutout stamps as PNG, light curves as SVG.

Stamps are shown the way astronomers look at them: a zscale interval
(IRAF's, as in DS9; astropy's :class:`~astropy.visualization.ZScaleInterval`)
through a mild asinh stretch (Lupton, Gunn & Szalay 1999, AJ 118, 1406), north
up, that is row 0 at the bottom. The difference stamp gets a linear
interval symmetric about zero, so that a negative (fading) residual reads
as dark as a positive one reads bright. Masked pixels (NaN) are drawn in a muted red.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from xml.sax.saxutils import escape

import numpy as np
from astropy.visualization import AsinhStretch, ZScaleInterval
from PIL import Image

__all__ = ["STAMP_KINDS", "light_curve_svg", "stamp_pixels", "stamp_png"]

STAMP_KINDS = ("science", "reference", "difference")
MASKED_RGB = (150, 40, 40)
_STRETCH = AsinhStretch(a=0.3)


def stamp_pixels(stamp: np.ndarray, *, symmetric: bool = False) -> np.ndarray:
    """``stamp`` (2-D) scaled to 0..255 grey levels, NaN kept as NaN, flipped north up.

    Parameters
    ----------
    stamp : numpy.ndarray
        The cutout, row 0 at the bottom (FITS order).
    symmetric : bool
        Limits symmetric about zero (a difference image), from the larger
        of the zscale limits' magnitudes.
    """
    image = np.asarray(stamp, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"a stamp is a 2-D array, got shape {image.shape}")
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.full(image.shape, np.nan)
    low, high = ZScaleInterval().get_limits(finite)
    if symmetric:
        high = max(abs(low), abs(high))
        low = -high
    if not high > low:
        low, high = float(finite.min()), float(finite.max())
    if not high > low:
        high = low + 1.0
    scaled = np.clip((image - low) / (high - low), 0.0, 1.0)
    if not symmetric:  # linear about zero, so a fading residual is as dark as a rise is bright
        scaled = _STRETCH(np.nan_to_num(scaled))
    grey = np.where(np.isfinite(image), 255.0 * scaled, np.nan)
    return grey[::-1]


def stamp_png(stamp: np.ndarray, *, symmetric: bool = False) -> bytes:
    """``stamp`` as an 8-bit RGB PNG (see :func:`stamp_pixels`); one pixel per pixel,
    for the browser to enlarge without smoothing."""
    grey = stamp_pixels(stamp, symmetric=symmetric)
    rgb = np.repeat(np.nan_to_num(grey)[..., None], 3, axis=2)
    rgb[np.isnan(grey)] = MASKED_RGB
    buffer = io.BytesIO()
    Image.fromarray(np.round(rgb).astype(np.uint8), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def light_curve_svg(
    mjd: Sequence[float],
    mag: Sequence[float],
    mag_err: Sequence[float],
    sign: Sequence[int],
    *,
    current: int | None = None,
    labels: Sequence[str] | None = None,
    width: int = 380,
    height: int = 170,
) -> str:
    """A light curve: magnitude (bright up) against MJD, with 1-sigma error bars.

    Filled points are brightenings (positive difference flux), open points
    fadings; the point at index ``current`` is drawn in orange. ``labels``
    (one per point) become the points' tooltips.
    """
    points = [
        (float(t), float(m), float(e) if e is not None and math.isfinite(e) else 0.0, int(s))
        for t, m, e, s in zip(mjd, mag, mag_err, sign, strict=True)
        if t is not None and m is not None and math.isfinite(t) and math.isfinite(m)
    ]
    tips = list(labels) if labels is not None else [""] * len(mjd)
    left, right, top, bottom = 48, 24, 10, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="10">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" '
        'stroke="#999"/>',
    ]
    if not points:
        parts.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#666">'
            "no magnitudes at this position</text></svg>"
        )
        return "".join(parts)
    times = [p[0] for p in points]
    faint = max(p[1] + p[2] for p in points)
    bright = min(p[1] - p[2] for p in points)
    t0, t1 = min(times) - 0.5, max(times) + 0.5
    pad = max(0.1, 0.08 * (faint - bright))
    m0, m1 = bright - pad, faint + pad

    def px(t: float) -> float:
        return left + (t - t0) / (t1 - t0) * plot_w

    def py(m: float) -> float:  # bright (small magnitude) at the top
        return top + (m - m0) / (m1 - m0) * plot_h

    values, decimals = _ticks(m0, m1)
    for value in values:
        y = py(value)
        parts.append(f'<line x1="{left - 3}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="#999"/>')
        parts.append(
            f'<text x="{left - 5}" y="{y + 3:.1f}" text-anchor="end">{value:.{decimals}f}</text>'
        )
    values, decimals = _ticks(t0, t1)
    for value in values:
        x = px(value)
        parts.append(
            f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 3}" '
            'stroke="#999"/>'
        )
        parts.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 14}" text-anchor="middle">'
            f"{value:.{decimals}f}</text>"
        )
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 3}" text-anchor="middle">MJD</text>'
        f'<text x="11" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 11 {top + plot_h / 2})">mag</text>'
    )
    kept = [
        i
        for i, (t, m) in enumerate(zip(mjd, mag, strict=True))
        if t is not None and m is not None and math.isfinite(t) and math.isfinite(m)
    ]
    for (t, m, e, s), index in zip(points, kept, strict=True):
        x, y = px(t), py(m)
        colour = "#e07000" if index == current else "#1f4e9c"
        if e > 0:
            parts.append(
                f'<line x1="{x:.1f}" y1="{py(m - e):.1f}" x2="{x:.1f}" y2="{py(m + e):.1f}" '
                f'stroke="{colour}"/>'
            )
        fill = colour if s >= 0 else "#fff"
        tip = escape(tips[index]) if index < len(tips) else ""
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{fill}" stroke="{colour}" '
            f'stroke-width="1.5"><title>{tip}</title></circle>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _ticks(low: float, high: float, count: int = 5) -> tuple[list[float], int]:
    """Round values between ``low`` and ``high``, about ``count`` of them, and the
    decimals that tell them apart."""
    span = high - low
    if not span > 0:
        return [low], 1
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), default=raw)
    first = math.ceil(low / step) * step
    values = [first + k * step for k in range(int((high - first) / step + 1e-9) + 1)]
    return values, max(0, -math.floor(math.log10(step) + 1e-9))
