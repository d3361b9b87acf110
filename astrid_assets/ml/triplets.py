"""Cutout triplets made ready for the CNN: padded, oriented, normalised (numpy only)."""

from __future__ import annotations

import numpy as np

__all__ = ["augment", "normalize_triplets", "orient_triplets", "pad_to", "prepare_triplets"]

STAMP_SIZE = 63


def pad_to(triplets: np.ndarray, size: int = STAMP_SIZE) -> np.ndarray:
    """Triplets smaller than ``size`` on a side, zero-padded around their centre."""
    triplets = np.asarray(triplets, dtype=np.float32)
    n, c, h, w = triplets.shape
    if h == size and w == size:
        return triplets
    if h > size or w > size:
        raise ValueError(f"stamps of {h}x{w} are larger than {size}x{size}")
    out = np.zeros((n, c, size, size), np.float32)
    y0, x0 = (size - h) // 2, (size - w) // 2
    out[:, :, y0 : y0 + h, x0 : x0 + w] = triplets
    return out


def orient_triplets(triplets: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Every example as a brightening: a fading one (``positive`` False) becomes
    (reference, science, -difference)."""
    out = np.array(triplets, dtype=np.float32, copy=True)
    fading = ~np.asarray(positive, dtype=bool)
    out[fading, 0] = triplets[fading, 1]
    out[fading, 1] = triplets[fading, 0]
    out[fading, 2] = -np.asarray(triplets[fading, 2], dtype=np.float32)
    return out


def normalize_triplets(triplets: np.ndarray) -> np.ndarray:
    """NaN and inf to 0, then each stamp scaled by its own L2 norm, as braai does,
    times the square root of its pixel count: unit root-mean-square per stamp, so
    the network sees inputs of order one whatever the stamp size."""
    out = np.nan_to_num(np.asarray(triplets, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    norms = np.sqrt(np.einsum("ncij,ncij->nc", out, out) / (out.shape[-1] * out.shape[-2]))
    norms[norms == 0] = 1.0
    return out / norms[:, :, None, None]


def prepare_triplets(triplets: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Pad, orient and normalise: what training and scoring both call."""
    return normalize_triplets(orient_triplets(pad_to(triplets), positive))


def augment(triplets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of the 8 flips and rotations, drawn per example."""
    out = np.empty_like(triplets)
    k = rng.integers(0, 4, len(triplets))
    flip = rng.integers(0, 2, len(triplets)).astype(bool)
    for i in range(len(triplets)):
        stamp = np.rot90(triplets[i], k[i], axes=(1, 2))
        out[i] = stamp[:, :, ::-1] if flip[i] else stamp
    return out
