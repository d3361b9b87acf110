"""Pictures for asset metadata: small PNGs embedded as Markdown."""

from __future__ import annotations

import base64
import io

import numpy as np
from dagster import MetadataValue

__all__ = ["completeness_plot", "difference_preview", "png_bytes_markdown", "png_markdown"]

PREVIEW_PIXELS = 512


def png_markdown(fig, alt: str) -> MetadataValue:
    """A matplotlib figure as a Markdown image the Dagster UI shows inline."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return png_bytes_markdown(buffer.getvalue(), alt)


def png_bytes_markdown(png: bytes, alt: str) -> MetadataValue:
    """PNG bytes as a Markdown image the Dagster UI shows inline."""
    encoded = base64.b64encode(png).decode("ascii")
    return MetadataValue.md(f"![{alt}](data:image/png;base64,{encoded})")


def _binned(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Block-average to at most PREVIEW_PIXELS a side, masked pixels left out."""
    factor = max(1, int(np.ceil(max(image.shape) / PREVIEW_PIXELS)))
    ny, nx = (s // factor * factor for s in image.shape)
    valid = (~mask[:ny, :nx]).astype(np.float32)
    data = np.where(mask, 0.0, image)[:ny, :nx].astype(np.float32)
    shape = (ny // factor, factor, nx // factor, factor)
    total = data.reshape(shape).sum(axis=(1, 3))
    count = valid.reshape(shape).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan), factor


def difference_preview(
    difference: np.ndarray,
    mask: np.ndarray,
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
    title: str = "",
) -> MetadataValue:
    """D, binned for the browser, zscale stretch, candidates circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.visualization import ZScaleInterval

    binned, factor = _binned(difference, mask)
    finite = binned[np.isfinite(binned)]
    lo, hi = ZScaleInterval().get_limits(finite) if finite.size else (-1.0, 1.0)
    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=100)
    ax.imshow(binned, origin="lower", cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    if x is not None and y is not None and len(x):
        ax.scatter(
            (np.asarray(x) + 0.5) / factor - 0.5,
            (np.asarray(y) + 0.5) / factor - 0.5,
            s=120,
            facecolors="none",
            edgecolors="lime",
            linewidths=1.0,
        )
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(f"x [{factor} px]")
    ax.set_ylabel(f"y [{factor} px]")
    fig.tight_layout()
    return png_markdown(fig, title or "difference image")


def completeness_plot(curve, snr: np.ndarray, recovered: np.ndarray, title: str) -> MetadataValue:
    """Recovered fraction against injected S/N with the fitted curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(curve.bin_centres, curve.completeness, "o", ms=4, label=f"{len(snr)} fakes")
    grid = np.linspace(float(curve.bin_edges[0]), float(curve.bin_edges[-1]), 200)
    ax.plot(grid, curve.model(grid), "-", label=f"fit, 50% at S/N {curve.snr50:.2f}")
    ax.axvline(5.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("injected S/N in the difference")
    ax.set_ylabel("completeness")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return png_markdown(fig, title)
