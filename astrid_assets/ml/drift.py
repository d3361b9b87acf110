"""Drift: how far tonight's data has moved from what the models learned on.

Tonight's sample is compared with up to two references:

``training``
    the training set's ``train`` split, restricted to the detections the
    pipeline's vetting keeps (``vetted``), as the candidates table holds
    only those: candidate features only (the training set has no frames
    and no model scores);
``nights``
    the last nights before tonight: their candidates' features, their
    candidates' model scores and their frames.

Each quantity of each comparison is one :class:`QuantityDrift`:

* the **population stability index** (PSI, :func:`population_stability_index`)
  on the reference's quantile bins (deciles), an empty bin counted as half
  a value so that its logarithm is finite. By the usual convention
  (Siddiqi 2006, *Credit Risk Scorecards*, Wiley, ch. 8) a PSI below 0.1
  is no real change, 0.1 to 0.25 a moderate shift worth a look, and 0.25
  or more a significant shift;
* the PSI's **p-value** under no drift (:func:`psi_p_value`): the
  chi-square test of homogeneity on the same bins. For samples of ``n``
  and ``m`` values of one distribution, ``PSI / (1/n + 1/m)`` is close to
  a chi-square with ``B - 1`` degrees of freedom for ``B`` bins (Yurdakul
  2018, *Statistical Properties of Population Stability Index*, PhD
  thesis, Western Michigan University): a few dozen candidates have a PSI
  near ``(B - 1)(1/n + 1/m)``, 0.3 for 30 against many, from sampling
  alone, which is no drift;
* the two-sample **Kolmogorov-Smirnov** statistic and p-value
  (:func:`scipy.stats.ks_2samp`) on the finite values;
* the **Wasserstein-1** distance (:func:`scipy.stats.wasserstein_distance`)
  on the finite values, in units of the reference's robust spread (its
  inter-quartile range / 1.349, the standard deviation where that is 0), so
  that features in px, sigma or ratios read alike: 0.5 is half a
  reference sigma of shift.

A feature or a score has **drifted** when its PSI reaches
:attr:`DriftThresholds.psi` and the PSI's p-value is below
:attr:`DriftThresholds.alpha`: large and not sampling noise. Fewer than
:attr:`DriftThresholds.min_samples` values on either side give no
statistics ("too few"). Frames are few (one per field and night), so frame
quality is judged on medians: the seeing's ratio to the reference's median,
the shift of the 5-sigma depth and of the zero point in magnitudes (and
the sky's ratio where a limit is set).

Missing values (NaN: a distance to the nearest reference source where there
is none, a fit that failed) take one more PSI bin of their own, so a change
in how often a feature is missing is drift too; the other statistics use
the finite values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from scipy import stats

from astrid_assets.ml.training_data import FEATURE_COLUMNS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "COMPARISONS",
    "DRIFT_SCHEMA",
    "FRAME_QUANTITIES",
    "SCORE_COLUMNS",
    "DriftReport",
    "DriftThresholds",
    "NightSample",
    "QuantityDrift",
    "compare_frame_quantity",
    "compare_night",
    "compare_samples",
    "drift_figure",
    "population_stability_index",
    "psi_p_value",
    "robust_spread",
    "training_reference",
]

SCORE_COLUMNS: tuple[str, ...] = (
    "realbogus",
    "unet",
    "isolation_forest",
    "one_class_svm",
    "ensemble",
)
"""Model scores of the ``candidate_scores`` table."""

FRAME_QUANTITIES: dict[str, str] = {
    "fwhm_arcsec": "seeing FWHM, arcsec",
    "limiting_mag": "5-sigma limiting magnitude, mag",
    "zero_point": "photometric zero point, mag",
    "sky": "sky level, ADU per pixel",
}
"""Columns of the ``frames`` table compared, and what they are."""

COMPARISONS: tuple[str, ...] = ("training", "nights")

OK, TOO_FEW, NOT_AVAILABLE = "ok", "too few", "not available"

DRIFT_SCHEMA: dict[str, type[pl.DataType]] = {
    "night": pl.Utf8,
    "comparison": pl.Utf8,
    "kind": pl.Utf8,
    "quantity": pl.Utf8,
    "status": pl.Utf8,
    "n_tonight": pl.Int64,
    "n_reference": pl.Int64,
    "psi": pl.Float64,
    "psi_p": pl.Float64,
    "ks": pl.Float64,
    "ks_p": pl.Float64,
    "wasserstein": pl.Float64,
    "median_tonight": pl.Float64,
    "median_reference": pl.Float64,
    "shift": pl.Float64,
    "ratio": pl.Float64,
    "drifted": pl.Boolean,
    "note": pl.Utf8,
}
"""The drift table: one row per night, comparison and quantity."""


@dataclass(frozen=True)
class DriftThresholds:
    """When a quantity has drifted, and when the night has.

    Attributes
    ----------
    psi : float
        PSI at or above which a feature or score has drifted (0.25: the
        conventional "significant shift").
    alpha : float
        The PSI must also be this unlikely under no drift (its p-value below).
    max_drifted_share : float
        A comparison whose share of drifted features reaches this fails the night.
    min_samples : int
        Fewest values on each side for distribution statistics.
    bins : int
        PSI bins: quantiles of the reference (deciles for 10).
    max_seeing_ratio : float
        Tonight's median seeing over the reference's at or above which
        frames have drifted.
    max_depth_loss : float
        Magnitudes of 5-sigma depth lost (median against median).
    max_zero_point_shift : float
        Magnitudes of zero-point shift either way.
    max_sky_ratio : float or None
        Tonight's median sky over the reference's; None: not judged (the
        moon alone changes it by a factor of several).
    """

    psi: float = 0.25
    alpha: float = 0.01
    max_drifted_share: float = 0.3
    min_samples: int = 30
    bins: int = 10
    max_seeing_ratio: float = 1.5
    max_depth_loss: float = 0.75
    max_zero_point_shift: float = 0.5
    max_sky_ratio: float | None = None

    def __post_init__(self) -> None:
        positive = ("psi", "max_depth_loss", "max_zero_point_shift")
        for name in positive:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha!r}")
        if not 0 < self.max_drifted_share <= 1:
            raise ValueError(f"max_drifted_share must be in (0, 1], got {self.max_drifted_share!r}")
        if int(self.min_samples) != self.min_samples or self.min_samples < 2:
            raise ValueError(f"min_samples must be an integer >= 2, got {self.min_samples!r}")
        if int(self.bins) != self.bins or self.bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {self.bins!r}")
        for name in ("max_seeing_ratio", "max_sky_ratio"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 1):
                raise ValueError(f"{name} must be a ratio above 1, got {value!r}")


@dataclass(frozen=True)
class QuantityDrift:
    """One quantity, tonight against one reference (a row of the drift table).

    ``n_tonight`` and ``n_reference`` count values, missing ones included.
    Statistics that could not be computed are NaN, and ``status`` says why:
    ``"ok"``, ``"too few"`` (fewer values than the thresholds' minimum) or
    ``"not available"`` (the quantity is absent: no scores, say). ``shift``
    is tonight's median minus the reference's, ``ratio`` their quotient
    (NaN unless both are positive).
    """

    comparison: str
    kind: str
    quantity: str
    status: str
    n_tonight: int
    n_reference: int
    psi: float = math.nan
    psi_p: float = math.nan
    ks: float = math.nan
    ks_p: float = math.nan
    wasserstein: float = math.nan
    median_tonight: float = math.nan
    median_reference: float = math.nan
    shift: float = math.nan
    ratio: float = math.nan
    drifted: bool = False
    note: str = ""


@dataclass(frozen=True)
class NightSample:
    """Candidates, their model scores and the frames of one night or several.

    ``candidates`` has the :data:`FEATURE_COLUMNS` (booleans as 0 and 1);
    ``scores`` the :data:`SCORE_COLUMNS`, or None when the night was not
    scored; ``frames`` the :data:`FRAME_QUANTITIES` columns of the frames
    table. ``nights`` names the nights in the sample.
    """

    candidates: pl.DataFrame
    frames: pl.DataFrame
    scores: pl.DataFrame | None = None
    nights: tuple[str, ...] = ()


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def _as_values(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def robust_spread(reference: np.ndarray) -> float:
    """The reference's spread: inter-quartile range / 1.349 (a normal's sigma),
    or the standard deviation where most values are equal; 0 for a constant."""
    finite = _finite(_as_values(reference, "reference"))
    if finite.size < 2:
        return 0.0
    q25, q75 = np.quantile(finite, [0.25, 0.75])
    spread = float(q75 - q25) / 1.349
    return spread if spread > 0 else float(np.std(finite))


def _bin_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Lower edges of the bins after the first: the reference's quantiles, and
    around each value that holds at least half a bin's share of the reference
    (a point mass: a flag's 0 and 1, a count's 0) a bin of that value alone."""
    finite = _finite(reference)
    if finite.size == 0:
        return np.empty(0)
    edges = np.unique(np.quantile(finite, np.arange(1, bins) / bins))
    values, counts = np.unique(finite, return_counts=True)
    masses = values[counts >= 0.5 * finite.size / bins]
    return np.unique(np.concatenate([edges, masses, np.nextafter(masses, np.inf)]))


def _counts(reference: np.ndarray, tonight: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts of both samples in the reference's bins (and a missing-value bin)."""
    edges = _bin_edges(reference, bins)
    with_missing = not (np.isfinite(reference).all() and np.isfinite(tonight).all())

    def count(values: np.ndarray) -> np.ndarray:
        finite = np.isfinite(values)
        # Bin k holds edges[k-1] <= x < edges[k].
        counts = np.bincount(
            np.searchsorted(edges, values[finite], side="right"), minlength=edges.size + 1
        )
        return np.append(counts, np.count_nonzero(~finite)) if with_missing else counts

    return count(reference), count(tonight)


def _checked(
    reference: Sequence[float] | np.ndarray, tonight: Sequence[float] | np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray]:
    ref = _as_values(reference, "reference")
    new = _as_values(tonight, "tonight")
    if ref.size == 0 or new.size == 0:
        raise ValueError(
            f"PSI needs values on both sides, got {ref.size} reference and {new.size} tonight"
        )
    if int(bins) != bins or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    return ref, new


def population_stability_index(
    reference: Sequence[float] | np.ndarray,
    tonight: Sequence[float] | np.ndarray,
    *,
    bins: int = 10,
    floor: float | None = None,
) -> float:
    """PSI of ``tonight`` against ``reference``.

    ``PSI = sum_k (t_k - r_k) ln(t_k / r_k)`` over bins ``k``, ``t_k`` and
    ``r_k`` the shares of tonight's and the reference's values in bin ``k``.
    The bins' edges are the reference's quantiles at ``1/bins, 2/bins, ...``
    (equal ones merged), and a value that holds at least half a bin's share
    of the reference (a point mass: a flag's 0 and 1, a count's 0) is a bin
    of its own, so that a discrete feature's values are told apart;
    missing values (NaN) have one more bin when either sample has any.

    A bin empty on one side has its share there raised to ``floor``, so
    that its logarithm is finite (bins empty on both sides are left out). By
    default the floor is half a value of that sample, ``0.5 / n``: about the
    conventional 1e-4 for thousands of values, while for a few dozen it
    keeps one empty bin from adding 0.7 to the PSI by itself (as a fixed
    1e-4 would: ``0.1 ln(0.1 / 1e-4)``). With it, two samples of one
    distribution have a PSI near ``(B - 1)(1/n + 1/m)`` for ``B`` bins
    (Yurdakul 2018).

    Parameters
    ----------
    reference, tonight : array-like
        One-dimensional samples, NaN for missing.
    bins : int
        Number of quantile bins (before merging equal edges).
    floor : float, optional
        Share given to an empty bin; None: half a value of each sample.

    Returns
    -------
    float
        The PSI, 0 for identical shares; < 0.1 no real change, 0.1 to 0.25
        moderate, >= 0.25 significant, by the usual convention.
    """
    ref, new = _checked(reference, tonight, bins)
    if floor is not None and not 0 < floor < 1:
        raise ValueError(f"floor must be in (0, 1), got {floor!r}")
    ref_counts, new_counts = _counts(ref, new, bins)
    used = (ref_counts + new_counts) > 0  # a bin empty on both sides says nothing
    r = np.maximum(ref_counts[used] / ref.size, floor or 0.5 / ref.size)
    t = np.maximum(new_counts[used] / new.size, floor or 0.5 / new.size)
    return float(np.sum((t - r) * np.log(t / r)))


def psi_p_value(
    reference: Sequence[float] | np.ndarray,
    tonight: Sequence[float] | np.ndarray,
    *,
    bins: int = 10,
) -> float:
    """Probability of bins as different as these between two samples of one distribution.

    The chi-square test of homogeneity on the PSI's bins
    (:func:`scipy.stats.chi2_contingency`; bins empty on both sides left
    out), whose statistic the PSI approaches, scaled by ``1/n + 1/m``, for
    small shifts (Yurdakul 2018). 1 when all values share one bin.
    """
    ref, new = _checked(reference, tonight, bins)
    ref_counts, new_counts = _counts(ref, new, bins)
    used = (ref_counts + new_counts) > 0
    if used.sum() < 2:
        return 1.0
    return float(stats.chi2_contingency(np.vstack([ref_counts[used], new_counts[used]])).pvalue)


def _median(values: np.ndarray) -> float:
    finite = _finite(values)
    return float(np.median(finite)) if finite.size else math.nan


def _shift_and_ratio(median_tonight: float, median_reference: float) -> tuple[float, float]:
    shift = median_tonight - median_reference
    ratio = median_tonight / median_reference if median_reference > 0 < median_tonight else math.nan
    return shift, ratio


def _distribution(
    ref: np.ndarray, new: np.ndarray, thresholds: DriftThresholds
) -> tuple[dict[str, float], list[str]]:
    """PSI (with p-value), KS and scaled Wasserstein of two large-enough samples."""
    notes = []
    if not (np.isfinite(ref).all() and np.isfinite(new).all()):
        notes.append(
            f"missing: {np.mean(~np.isfinite(new)):.0%} tonight, "
            f"{np.mean(~np.isfinite(ref)):.0%} reference"
        )
    out = {
        "psi": population_stability_index(ref, new, bins=thresholds.bins),
        "psi_p": psi_p_value(ref, new, bins=thresholds.bins),
    }
    ref_f, new_f = _finite(ref), _finite(new)
    if ref_f.size and new_f.size:
        with warnings.catch_warnings():
            # With ties the exact p-value may fail; the asymptotic one it falls back to will do.
            warnings.filterwarnings("ignore", "ks_2samp: Exact", RuntimeWarning)
            ks = stats.ks_2samp(ref_f, new_f)
        out["ks"], out["ks_p"] = float(ks.statistic), float(ks.pvalue)
        spread = robust_spread(ref_f)
        if spread > 0:
            out["wasserstein"] = float(stats.wasserstein_distance(ref_f, new_f)) / spread
        else:
            notes.append("constant in the reference: Wasserstein not scaled, left out")
    else:
        notes.append("no finite values on one side: only the PSI")
    return out, notes


def compare_samples(
    reference: Sequence[float] | np.ndarray | None,
    tonight: Sequence[float] | np.ndarray | None,
    *,
    comparison: str,
    kind: str,
    quantity: str,
    thresholds: DriftThresholds = DriftThresholds(),
) -> QuantityDrift:
    """A feature's or a score's drift: PSI, KS, Wasserstein, and the verdict.

    None on either side means the quantity is not available there.
    """
    if reference is None or tonight is None:
        side = "tonight" if tonight is None else "the reference"
        n_ref = 0 if reference is None else len(reference)
        n_new = 0 if tonight is None else len(tonight)
        return QuantityDrift(
            comparison, kind, quantity, NOT_AVAILABLE, n_new, n_ref, note=f"none for {side}"
        )
    ref, new, base = _summary(reference, tonight, comparison, kind, quantity)
    if min(new.size, ref.size) < thresholds.min_samples:
        return QuantityDrift(
            **base,
            status=TOO_FEW,
            note=f"too few: {new.size} tonight, {ref.size} reference "
            f"(at least {thresholds.min_samples} each)",
        )
    values, notes = _distribution(ref, new, thresholds)
    drifted = values["psi"] >= thresholds.psi and values["psi_p"] < thresholds.alpha
    return QuantityDrift(**base, **values, status=OK, drifted=bool(drifted), note="; ".join(notes))


def _summary(
    reference: Sequence[float] | np.ndarray,
    tonight: Sequence[float] | np.ndarray,
    comparison: str,
    kind: str,
    quantity: str,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Both samples as finite values, and the fields every result carries: sizes,
    medians, their shift and ratio."""
    ref = _as_values(reference, "reference")
    new = _as_values(tonight, "tonight")
    median_new, median_ref = _median(new), _median(ref)
    shift, ratio = _shift_and_ratio(median_new, median_ref)
    base = dict(
        comparison=comparison,
        kind=kind,
        quantity=quantity,
        n_tonight=int(new.size),
        n_reference=int(ref.size),
        median_tonight=median_new,
        median_reference=median_ref,
        shift=shift,
        ratio=ratio,
    )
    return ref, new, base


def compare_frame_quantity(
    reference: Sequence[float] | np.ndarray,
    tonight: Sequence[float] | np.ndarray,
    *,
    comparison: str,
    quantity: str,
    thresholds: DriftThresholds = DriftThresholds(),
) -> QuantityDrift:
    """A frame-quality quantity: medians judged against the thresholds.

    ``quantity`` is a key of :data:`FRAME_QUANTITIES`: ``fwhm_arcsec`` has
    drifted when its ratio reaches ``max_seeing_ratio``; ``limiting_mag``
    when tonight is ``max_depth_loss`` shallower; ``zero_point`` when it
    moved by ``max_zero_point_shift`` either way; ``sky`` when its ratio
    reaches ``max_sky_ratio`` (if set). Distribution statistics are added
    when both sides have ``min_samples`` frames.
    """
    if quantity not in FRAME_QUANTITIES:
        raise ValueError(f"unknown frame quantity {quantity!r}; known: {list(FRAME_QUANTITIES)}")
    ref, new, base = _summary(reference, tonight, comparison, "frame", quantity)
    median_new, median_ref = base["median_tonight"], base["median_reference"]
    shift, ratio = base["shift"], base["ratio"]
    if not (math.isfinite(median_new) and math.isfinite(median_ref)):
        return QuantityDrift(
            **base,
            status=TOO_FEW,
            note=f"no measured value: {_finite(new).size} tonight, {_finite(ref).size} reference",
        )
    t = thresholds
    if quantity == "fwhm_arcsec":
        drifted, rule = ratio >= t.max_seeing_ratio, f"ratio >= {t.max_seeing_ratio:g}"
    elif quantity == "limiting_mag":
        drifted, rule = shift <= -t.max_depth_loss, f"shift <= -{t.max_depth_loss:g} mag"
    elif quantity == "zero_point":
        drifted = abs(shift) >= t.max_zero_point_shift
        rule = f"|shift| >= {t.max_zero_point_shift:g} mag"
    elif t.max_sky_ratio is None:
        drifted, rule = False, "not judged"
    else:
        drifted, rule = ratio >= t.max_sky_ratio, f"ratio >= {t.max_sky_ratio:g}"
    notes = [f"drifted when {rule}"]
    values: dict[str, float] = {}
    if min(new.size, ref.size) >= t.min_samples:
        values, more = _distribution(ref, new, t)
        notes += more
    return QuantityDrift(**base, **values, status=OK, drifted=bool(drifted), note="; ".join(notes))


def _column(frame: pl.DataFrame | None, name: str) -> np.ndarray | None:
    """A column as float64 (booleans 0 and 1, nulls NaN); None when absent."""
    if frame is None or name not in frame.columns:
        return None
    return frame[name].cast(pl.Float64).fill_null(math.nan).to_numpy()


def training_reference(training: pl.DataFrame) -> pl.DataFrame:
    """The training set's rows tonight's candidates are comparable with: the
    ``train`` split, vetted (the candidates table holds only vetted detections)."""
    missing = [c for c in ("split", "vetted") if c not in training.columns]
    if missing:
        raise ValueError(f"the training set lacks the columns {missing}")
    return training.filter((pl.col("split") == "train") & pl.col("vetted"))


@dataclass
class DriftReport:
    """Tonight against its references: every quantity, and the verdict.

    ``references`` describes each comparison made (``training``,
    ``nights``); ``missing`` says why a comparison was not made.
    """

    night: str
    rows: list[QuantityDrift]
    references: dict[str, str]
    missing: dict[str, str]
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)

    @property
    def available(self) -> bool:
        """Whether tonight was compared with anything."""
        return bool(self.references)

    def table(self) -> pl.DataFrame:
        """The drift table (:data:`DRIFT_SCHEMA`), one row per comparison and
        quantity; statistics not computed are null."""
        records = [{"night": self.night, **asdict(row)} for row in self.rows]
        frame = pl.DataFrame(records, schema=DRIFT_SCHEMA)
        floats = [name for name, dtype in DRIFT_SCHEMA.items() if dtype == pl.Float64]
        return frame.with_columns(pl.col(floats).fill_nan(None))

    def select(self, comparison: str | None = None, kind: str | None = None) -> list[QuantityDrift]:
        """The rows of a comparison and kind (``feature``, ``score``, ``frame``); None: all."""
        return [
            r
            for r in self.rows
            if (comparison is None or r.comparison == comparison)
            and (kind is None or r.kind == kind)
        ]

    def drifted_share(self, comparison: str) -> float:
        """Drifted features over features with statistics; NaN when none has."""
        judged = [r for r in self.select(comparison, "feature") if r.status == OK]
        if not judged:
            return math.nan
        return sum(r.drifted for r in judged) / len(judged)

    def worst_feature(self) -> QuantityDrift | None:
        """The feature with the largest PSI, any comparison."""
        judged = [r for r in self.select(kind="feature") if math.isfinite(r.psi)]
        return max(judged, key=lambda r: r.psi) if judged else None

    def row(self, comparison: str, quantity: str) -> QuantityDrift | None:
        for r in self.rows:
            if r.comparison == comparison and r.quantity == quantity:
                return r
        return None

    def reasons(self) -> list[str]:
        """Why the night has drifted, one line per threshold passed; empty when it has not."""
        t = self.thresholds
        out = []
        for comparison in COMPARISONS:
            share = self.drifted_share(comparison)
            if math.isfinite(share) and share >= t.max_drifted_share:
                names = [r.quantity for r in self.select(comparison, "feature") if r.drifted]
                out.append(
                    f"{comparison}: {share:.0%} of features drifted (limit "
                    f"{t.max_drifted_share:.0%}): {', '.join(names)}"
                )
            for r in self.select(comparison, "score"):
                if r.drifted:
                    out.append(
                        f"{comparison}: score {r.quantity} PSI {r.psi:.2f} (limit {t.psi:g})"
                    )
            for r in self.select(comparison, "frame"):
                if not r.drifted:
                    continue
                if r.quantity == "fwhm_arcsec":
                    out.append(
                        f'{comparison}: seeing {r.median_tonight:.2f}" is {r.ratio:.2f}x the '
                        f"reference's {r.median_reference:.2f}\" (limit {t.max_seeing_ratio:g}x)"
                    )
                elif r.quantity == "sky":
                    out.append(
                        f"{comparison}: sky {r.ratio:.2f}x the reference's "
                        f"(limit {t.max_sky_ratio:g}x)"
                    )
                else:
                    name = "depth" if r.quantity == "limiting_mag" else "zero point"
                    limit = t.max_depth_loss if name == "depth" else t.max_zero_point_shift
                    out.append(
                        f"{comparison}: {name} {r.median_tonight:.2f} mag, {r.shift:+.2f} from "
                        f"the reference's {r.median_reference:.2f} (limit {limit:g} mag)"
                    )
        return out

    def drifted_quantities(self) -> list[str]:
        """``comparison/quantity`` of every quantity that drifted."""
        return [f"{r.comparison}/{r.quantity}" for r in self.rows if r.drifted]

    def headline(self) -> dict[str, float | str]:
        """The numbers a person reads first: shares, the worst feature, score and frame shifts."""
        out: dict[str, float | str] = {
            f"drifted_share_{c}": self.drifted_share(c) for c in COMPARISONS
        }
        worst = self.worst_feature()
        out["worst_feature"] = f"{worst.comparison}/{worst.quantity}" if worst else "none"
        out["worst_feature_psi"] = worst.psi if worst else math.nan
        ensemble = self.row("nights", "ensemble")
        out["ensemble_psi"] = ensemble.psi if ensemble else math.nan
        out["ensemble_median_shift"] = ensemble.shift if ensemble else math.nan
        for key, quantity, attr in (
            ("seeing_ratio", "fwhm_arcsec", "ratio"),
            ("depth_shift_mag", "limiting_mag", "shift"),
            ("zero_point_shift_mag", "zero_point", "shift"),
            ("sky_ratio", "sky", "ratio"),
        ):
            r = self.row("nights", quantity)
            out[key] = getattr(r, attr) if r else math.nan
        return out


def _feature_rows(
    comparison: str,
    reference: pl.DataFrame,
    tonight: pl.DataFrame,
    thresholds: DriftThresholds,
) -> list[QuantityDrift]:
    return [
        compare_samples(
            _column(reference, name),
            _column(tonight, name),
            comparison=comparison,
            kind="feature",
            quantity=name,
            thresholds=thresholds,
        )
        for name in FEATURE_COLUMNS
    ]


def _nights_text(nights: Sequence[str]) -> str:
    if not nights:
        return "no night"
    return f"{len(nights)} night{'s' if len(nights) > 1 else ''} ({', '.join(sorted(nights))})"


def compare_night(
    night: str,
    tonight: NightSample,
    *,
    training: pl.DataFrame | None = None,
    earlier: NightSample | None = None,
    thresholds: DriftThresholds = DriftThresholds(),
) -> DriftReport:
    """Compare tonight with the training set and with the earlier nights.

    Parameters
    ----------
    night : str
        Tonight, ``YYYY-MM-DD``.
    tonight : NightSample
        Tonight's candidates, scores and frames.
    training : polars.DataFrame, optional
        The training set (``split``, ``vetted`` and the features); its
        vetted ``train`` rows are the reference (:func:`training_reference`).
        None: there is none.
    earlier : NightSample, optional
        The last nights before tonight; None or no frames: there are none.
    thresholds : DriftThresholds
        When a quantity, and the night, have drifted.

    Returns
    -------
    DriftReport
        Rows for every comparison that could be made; ``missing`` says why
        another could not.
    """
    rows: list[QuantityDrift] = []
    references: dict[str, str] = {}
    missing: dict[str, str] = {}

    train = training_reference(training) if training is not None else None
    if train is None:
        missing["training"] = "no training set"
    elif train.height == 0:
        missing["training"] = "the training set has no vetted rows in its train split"
    else:
        references["training"] = f"{train.height} vetted detections of the train split"
        rows += _feature_rows("training", train, tonight.candidates, thresholds)

    if earlier is None or (earlier.frames.height == 0 and earlier.candidates.height == 0):
        missing["nights"] = "no earlier night"
    else:
        references["nights"] = (
            f"{_nights_text(earlier.nights)}: {earlier.candidates.height} candidates, "
            f"{earlier.frames.height} frames"
        )
        rows += _feature_rows("nights", earlier.candidates, tonight.candidates, thresholds)
        scored = tonight.scores is not None and earlier.scores is not None
        for name in SCORE_COLUMNS:
            rows.append(
                compare_samples(
                    _column(earlier.scores, name) if scored else None,
                    _column(tonight.scores, name) if scored else None,
                    comparison="nights",
                    kind="score",
                    quantity=name,
                    thresholds=thresholds,
                )
            )
        for name in FRAME_QUANTITIES:
            ref = _column(earlier.frames, name)
            new = _column(tonight.frames, name)
            if ref is None or new is None:
                rows.append(
                    QuantityDrift(
                        "nights", "frame", name, NOT_AVAILABLE, 0, 0, note="not in the frames"
                    )
                )
                continue
            rows.append(
                compare_frame_quantity(
                    ref, new, comparison="nights", quantity=name, thresholds=thresholds
                )
            )
    return DriftReport(night, rows, references, missing, thresholds)


def drift_figure(
    report: DriftReport,
    reference_frames: pl.DataFrame | None = None,
    tonight_frames: pl.DataFrame | None = None,
) -> Figure:
    """PSI of every feature and score per comparison; seeing against depth of
    the reference's frames and tonight's."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # On the Agg canvas, outside pyplot's registry of open figures (as ml.metrics draws).
    fig = Figure(figsize=(10.0, 4.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, width_ratios=[1.3, 1.0])
    names = [*FEATURE_COLUMNS, *SCORE_COLUMNS]
    y = np.arange(len(names))
    height = 0.8 / len(COMPARISONS)
    for k, comparison in enumerate(COMPARISONS):
        psi = []
        for name in names:
            r = report.row(comparison, name)
            psi.append(r.psi if r is not None and math.isfinite(r.psi) else np.nan)
        if np.all(np.isnan(psi)):
            continue
        left.barh(y + (k - 0.5) * height, np.nan_to_num(psi), height=height, label=comparison)
    for value, style in ((0.1, ":"), (report.thresholds.psi, "--")):
        left.axvline(value, color="grey", ls=style, lw=0.8)
    left.set_yticks(y, names, fontsize=7)
    left.invert_yaxis()
    left.set_xlabel("PSI (blank: too few or not available)")
    left.set_title(f"drift {report.night}", fontsize=9)
    if left.get_legend_handles_labels()[0]:
        left.legend(fontsize=7, loc="lower right")
    for frames, colour, label in (
        (reference_frames, "grey", "reference nights"),
        (tonight_frames, "crimson", "tonight"),
    ):
        if (
            frames is not None
            and frames.height
            and {"fwhm_arcsec", "limiting_mag"} <= set(frames.columns)
        ):
            right.scatter(
                frames["fwhm_arcsec"], frames["limiting_mag"], s=18, c=colour, label=label
            )
    right.set_xlabel("seeing FWHM [arcsec]")
    right.set_ylabel("5σ limiting magnitude")
    right.invert_yaxis()
    right.set_title("frames", fontsize=9)
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=7)
    return fig
