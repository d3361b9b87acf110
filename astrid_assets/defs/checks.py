"""The data contract of the graph's products, as asset check results.

Each function states one promise a downstream user relies on and returns
the check result with the numbers behind it; the assets yield them with
their outputs so the UI shows them beside every partition.
"""

from __future__ import annotations

import numpy as np
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec

__all__ = [
    "CANDIDATE_COUNT",
    "FRAME_QUALITY",
    "NO_NAN",
    "SCORE_NOISE",
    "candidate_count",
    "frame_quality",
    "no_nan_outside_mask",
    "score_is_unit_normal",
]

NO_NAN = "no_nan_outside_mask"
SCORE_NOISE = "score_std_near_one"
CANDIDATE_COUNT = "candidate_count_plausible"
FRAME_QUALITY = "frame_quality_within_limits"

# S_corr is in units of its own noise; a robust scatter outside this band
# means the noise model (and every threshold in sigma) is wrong.
SCORE_STD_RANGE = (0.8, 1.25)


def specs(asset: str) -> list[AssetCheckSpec]:
    """The checks each asset carries."""
    table = {
        "calibrated_exposures": [
            (FRAME_QUALITY, "Seeing, depth, star count, masking within the configured limits.")
        ],
        "difference_images": [
            (NO_NAN, "D and S_corr are finite wherever the mask says valid."),
            (SCORE_NOISE, "Robust standard deviation of S_corr between 0.8 and 1.25."),
        ],
        "candidates": [
            (CANDIDATE_COUNT, "Candidate count per image within the configured plausible range.")
        ],
    }
    return [AssetCheckSpec(name, asset=asset, description=text) for name, text in table[asset]]


def no_nan_outside_mask(
    asset: str, difference: np.ndarray, score: np.ndarray, mask: np.ndarray
) -> AssetCheckResult:
    """D and S_corr finite on every valid pixel."""
    valid = ~mask
    bad_d = int(np.count_nonzero(~np.isfinite(difference[valid])))
    bad_s = int(np.count_nonzero(~np.isfinite(score[valid])))
    return AssetCheckResult(
        asset_key=asset,
        check_name=NO_NAN,
        passed=bad_d == 0 and bad_s == 0,
        metadata={"non_finite_D": bad_d, "non_finite_S_corr": bad_s},
    )


def score_is_unit_normal(asset: str, score: np.ndarray, mask: np.ndarray) -> AssetCheckResult:
    """S_corr's robust scatter near 1 over the valid pixels."""
    sample = score[~mask][::7]
    sample = sample[np.isfinite(sample)]
    std = (
        float(1.4826 * np.median(np.abs(sample - np.median(sample))))
        if sample.size
        else float("nan")
    )
    lo, hi = SCORE_STD_RANGE
    return AssetCheckResult(
        asset_key=asset,
        check_name=SCORE_NOISE,
        passed=bool(lo <= std <= hi),
        metadata={"S_corr_robust_std": std, "allowed": f"{lo} to {hi}"},
    )


def candidate_count(asset: str, n: int, low: int, high: int) -> AssetCheckResult:
    """A count far outside the usual range means a failed subtraction, not a sky of transients."""
    return AssetCheckResult(
        asset_key=asset,
        check_name=CANDIDATE_COUNT,
        passed=low <= n <= high,
        severity=AssetCheckSeverity.WARN,
        metadata={"candidates": n, "allowed": f"{low} to {high}"},
    )


def frame_quality(asset: str, reasons: list[str], measured: dict[str, float]) -> AssetCheckResult:
    """A frame outside the limits is flagged (``quality_ok`` false in the frames table)."""
    return AssetCheckResult(
        asset_key=asset,
        check_name=FRAME_QUALITY,
        passed=not reasons,
        severity=AssetCheckSeverity.WARN,
        description="; ".join(reasons) if reasons else "within limits",
        metadata={k: float(v) for k, v in measured.items()},
    )
