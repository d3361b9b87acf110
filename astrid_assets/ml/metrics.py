"""Metrics and figures for a rare-event classifier: real transients among bogus detections.

A score is any number where higher means more likely real (label 1) than bogus
(label 0): a probability from the CNN or the ensemble, or an unbounded anomaly
score. Real events are rare in production, so accuracy says little; what a
survey reports instead is how much bogus it lets through while keeping nearly
all the reals, and how many reals it loses while keeping the bogus rate low:

* the false-positive rate at a false-negative (missed-detection) rate of 1 %
  and 2 %, as braai does for ZTF (Duev et al. 2019, MNRAS 489, 3582);
* the false-negative rate at a false-positive rate of 1 %, the ATLAS figure of
  merit (Wright et al. 2015, MNRAS 449, 451);
* the area under the precision-recall curve (average precision), which, unlike
  ROC AUC, depends on the class balance and degrades visibly when the rare
  class is hard to rank.

Threshold convention, used by every function here: a detection is called real
when ``score >= threshold``, and thresholds are actual score values (no
interpolation between operating points). Tied scores therefore always fall on
the same side of a threshold.

The figures are :class:`matplotlib.figure.Figure` objects drawn on the Agg canvas
without pyplot (no global figure registry in long-running processes);
:func:`figure_png` turns one into PNG bytes for MLflow or Dagster metadata.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "confusion_figure",
    "expected_calibration_error",
    "figure_png",
    "fnr_at_fpr",
    "fpr_at_fnr",
    "metrics_table",
    "mistakes_figure",
    "pr_figure",
    "rare_event_metrics",
    "reliability_figure",
    "roc_figure",
]

Curves = Mapping[str, tuple[np.ndarray, np.ndarray]]

# A rate target times a count, e.g. 0.01 * 300, may land a rounding error below an integer.
_COUNT_SLACK = 1e-9

_TABLE_COLUMNS = (
    "n_real",
    "n_bogus",
    "roc_auc",
    "pr_auc",
    "fpr_at_fnr_1pct",
    "fpr_at_fnr_2pct",
    "fnr_at_fpr_1pct",
    "threshold_at_fnr_1pct",
    "brier",
    "ece",
)


def _validated(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels as bool (True = real) and scores as float64, both checked."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or scores.ndim != 1 or len(labels) != len(scores):
        raise ValueError(
            f"labels and scores must be 1-D of the same length, got shapes "
            f"{labels.shape} and {scores.shape}"
        )
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 1 (real) or 0 (bogus)")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores contain {int((~np.isfinite(scores)).sum())} NaN or inf values")
    real = labels.astype(bool)
    n_real = int(real.sum())
    if n_real == 0 or n_real == len(real):
        raise ValueError(
            f"rare-event metrics need both real (1) and bogus (0) labels, got "
            f"{n_real} real and {len(real) - n_real} bogus"
        )
    return real, scores


def _is_probability(scores: np.ndarray) -> bool:
    return bool(scores.size) and float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0


def fpr_at_fnr(labels: np.ndarray, scores: np.ndarray, fnr: float) -> tuple[float, float]:
    """The false-positive rate at the highest threshold that misses at most ``fnr`` of the reals.

    With the ``P`` real scores sorted ascending, at most ``k = floor(fnr * P)``
    of them may fall below the threshold, so the threshold is the ``(k+1)``-th
    smallest real score (an actual score value) and the false-positive rate is
    the fraction of bogus scores ``>=`` it. Among all thresholds with a
    false-negative rate ``<= fnr`` this one has the lowest false-positive rate.

    Returns
    -------
    (fpr, threshold)
    """
    real, scores = _validated(labels, scores)
    positives = np.sort(scores[real])
    allowed = math.floor(fnr * len(positives) + _COUNT_SLACK)
    threshold = float(positives[allowed])
    return float(np.mean(scores[~real] >= threshold)), threshold


def fnr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> tuple[float, float]:
    """The false-negative rate at the lowest threshold that passes at most ``fpr`` of the bogus.

    With the ``N`` bogus scores sorted descending, at most ``m = floor(fpr * N)``
    may reach the threshold, so it must lie strictly above the ``(m+1)``-th
    highest bogus score ``b``. The lowest such threshold among actual score
    values is the smallest score above ``b`` (``inf`` if there is none, when
    nothing is called real), and the false-negative rate is the fraction of
    real scores ``<= b``.

    Returns
    -------
    (fnr, threshold)
    """
    real, scores = _validated(labels, scores)
    negatives = np.sort(scores[~real])[::-1]
    allowed = math.floor(fpr * len(negatives) + _COUNT_SLACK)
    bound = negatives[allowed]
    above = scores[scores > bound]
    threshold = float(above.min()) if above.size else math.inf
    return float(np.mean(scores[real] <= bound)), threshold


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, n_bins: int = 10
) -> float:
    """Expected calibration error over ``n_bins`` equal-width bins of [0, 1].

    ``sum_b (n_b / n) |fraction real in b - mean probability in b|``; bins are
    ``[0, 0.1), [0.1, 0.2), ..., [0.9, 1]`` for 10 bins (the last one closed).
    Only meaningful for probabilities; raises ValueError for scores outside [0, 1].
    """
    real = np.asarray(labels).astype(np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    if not _is_probability(p):
        raise ValueError("the expected calibration error needs probabilities in [0, 1]")
    which = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    observed = np.bincount(which, weights=real, minlength=n_bins)
    predicted = np.bincount(which, weights=p, minlength=n_bins)
    return float(np.abs(observed - predicted).sum() / len(p))


def rare_event_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """The metrics a survey reports for a real-bogus score.

    Parameters
    ----------
    labels
        1 for a real transient, 0 for bogus; both classes must be present.
    scores
        Higher means more likely real; finite. Any scale for the ranking
        metrics; probabilities in [0, 1] for ``brier`` and ``ece``.

    Returns
    -------
    dict
        ``roc_auc``
            Area under the ROC curve (tied scores count one half, the
            Mann-Whitney convention).
        ``pr_auc``
            Average precision: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct
            score values taken as thresholds, a step function with no
            interpolation (scikit-learn's ``average_precision_score``).
        ``fpr_at_fnr_1pct``, ``fpr_at_fnr_2pct``
            False-positive rate at the highest threshold that misses at most
            1 % (2 %) of the reals, see :func:`fpr_at_fnr`.
        ``threshold_at_fnr_1pct``
            That threshold for 1 %: call real when ``score >= threshold``.
        ``fnr_at_fpr_1pct``
            Missed-detection rate at the lowest threshold that passes at most
            1 % of the bogus, see :func:`fnr_at_fpr`.
        ``brier``
            Mean squared difference between score and label.
        ``ece``
            Expected calibration error, 10 equal-width bins; see
            :func:`expected_calibration_error`.
        ``n_real``, ``n_bogus``
            Class counts (int).

        ``brier`` and ``ece`` are NaN when a score lies outside [0, 1]: they
        only mean something for probabilities.

    Raises
    ------
    ValueError
        If only one class is present, labels are not 0/1, lengths differ or a
        score is not finite.
    """
    real, scores = _validated(labels, scores)
    fpr1, threshold1 = fpr_at_fnr(real, scores, 0.01)
    fpr2, _ = fpr_at_fnr(real, scores, 0.02)
    fnr1, _ = fnr_at_fpr(real, scores, 0.01)
    probability = _is_probability(scores)
    return {
        "roc_auc": float(roc_auc_score(real, scores)),
        "pr_auc": float(average_precision_score(real, scores)),
        "fpr_at_fnr_1pct": fpr1,
        "fpr_at_fnr_2pct": fpr2,
        "fnr_at_fpr_1pct": fnr1,
        "threshold_at_fnr_1pct": threshold1,
        "brier": float(np.mean((scores - real) ** 2)) if probability else math.nan,
        "ece": expected_calibration_error(real, scores) if probability else math.nan,
        "n_real": int(real.sum()),
        "n_bogus": int((~real).sum()),
    }


def _cell(value: object) -> str:
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return "n/a" if math.isnan(value) else f"{float(value):.4g}"
    return str(value)


def metrics_table(results: Mapping[str, Mapping[str, object]]) -> str:
    """A Markdown table with one row per model, from :func:`rare_event_metrics` results.

    The standard metrics come first in a fixed order, then any other keys in
    the order they first appear; a missing or NaN value shows as ``n/a``.
    """
    present = [key for result in results.values() for key in result]
    columns = [c for c in _TABLE_COLUMNS if c in present]
    columns += [c for c in dict.fromkeys(present) if c not in columns]
    lines = [
        "| model | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, result in results.items():
        cells = [_cell(result.get(c, math.nan)) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas, outside pyplot's registry of open figures."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def roc_figure(curves: Curves, *, log_fpr: bool = False) -> Figure:
    """ROC curves, false-positive rate against true-positive rate, one per named model.

    ``curves`` maps a model name to ``(labels, scores)``. ``log_fpr`` draws the
    false-positive rate on a log axis, where the low-FPR end that matters for
    rare events is visible (FPR = 0 points are not drawn there). The operating
    point at 1 % FNR is marked on each curve.
    """
    from sklearn.metrics import roc_curve

    fig = _figure(5.5, 4.5)
    ax = fig.add_subplot()
    lowest = 1.0
    for name, (labels, scores) in curves.items():
        real, s = _validated(labels, scores)
        fpr, tpr, _ = roc_curve(real, s, drop_intermediate=False)
        (line,) = ax.plot(fpr, tpr, lw=1.2, label=f"{name} (AUC {roc_auc_score(real, s):.3f})")
        at_fpr, _ = fpr_at_fnr(real, s, 0.01)
        ax.plot([at_fpr], [0.99], "o", ms=4, color=line.get_color())
        lowest = min(lowest, 0.5 / max(1, int((~real).sum())))
    if log_fpr:
        ax.set_xscale("log")
        ax.set_xlim(lowest, 1.0)
    else:
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate (1 - FNR)")
    ax.set_title("ROC (dot: 1% FNR)", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def pr_figure(curves: Curves) -> Figure:
    """Precision-recall step curves, one per named model, with the class balance as baseline."""
    fig = _figure(5.5, 4.5)
    ax = fig.add_subplot()
    prevalences = set()
    for name, (labels, scores) in curves.items():
        real, s = _validated(labels, scores)
        precision, recall, _ = precision_recall_curve(real, s)
        ap = average_precision_score(real, s)
        ax.step(recall, precision, where="post", lw=1.2, label=f"{name} (AP {ap:.3f})")
        prevalences.add(round(float(real.mean()), 6))
    for prevalence in sorted(prevalences):
        ax.axhline(prevalence, color="grey", lw=0.8, ls=":")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall (completeness)")
    ax.set_ylabel("precision (purity)")
    ax.set_title("precision-recall (dotted: fraction real)", fontsize=9)
    ax.legend(loc="lower left", fontsize=8)
    return fig


def confusion_figure(labels: np.ndarray, scores: np.ndarray, threshold: float) -> Figure:
    """The 2 x 2 confusion matrix at ``threshold`` (real when ``score >= threshold``).

    Each cell shows the count and the fraction of its true class.
    """
    real, s = _validated(labels, scores)
    called = s >= threshold
    matrix = np.array(
        [
            [np.sum(~real & ~called), np.sum(~real & called)],
            [np.sum(real & ~called), np.sum(real & called)],
        ]
    )
    rates = matrix / matrix.sum(axis=1, keepdims=True)
    fig = _figure(4.2, 3.8)
    ax = fig.add_subplot()
    ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(2):
        for j in range(2):
            colour = "white" if rates[i, j] > 0.5 else "black"
            text = f"{matrix[i, j]}\n{rates[i, j]:.2%}"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=10)
    ax.set_xticks([0, 1], ["called bogus", "called real"])
    ax.set_yticks([0, 1], ["bogus", "real"])
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    ax.set_title(f"threshold {threshold:.4g} (real if score >= threshold)", fontsize=9)
    return fig


def reliability_figure(curves: Curves, n_bins: int = 10) -> Figure:
    """Reliability diagram: fraction real against mean probability in equal-width bins.

    A calibrated model lies on the diagonal. The lower panel shows how many
    detections fall in each bin (log scale). A model whose scores are not
    probabilities is listed as such instead of drawn.
    """
    fig = _figure(5.5, 5.5)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    skipped = []
    for name, (labels, scores) in curves.items():
        real, p = _validated(labels, scores)
        if not _is_probability(p):
            skipped.append(name)
            continue
        which = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
        count = np.bincount(which, minlength=n_bins)
        filled = count > 0
        mean_p = np.bincount(which, weights=p, minlength=n_bins)[filled] / count[filled]
        frac = np.bincount(which, weights=real, minlength=n_bins)[filled] / count[filled]
        ece = expected_calibration_error(real, p, n_bins)
        (line,) = top.plot(mean_p, frac, "o-", ms=4, lw=1.2, label=f"{name} (ECE {ece:.3f})")
        bottom.step(centres, np.maximum(count, 0.8), where="mid", color=line.get_color())
    if skipped:
        note = "not probabilities: " + ", ".join(skipped)
        top.text(0.02, 0.97, note, transform=top.transAxes, va="top", fontsize=8)
    top.set_xlim(0.0, 1.0)
    top.set_ylim(-0.02, 1.02)
    top.set_ylabel("fraction real")
    top.set_title("reliability", fontsize=9)
    if len(skipped) < len(curves):
        top.legend(loc="lower right", fontsize=8)
        bottom.set_yscale("log")
    bottom.set_xlabel("predicted probability real")
    bottom.set_ylabel("count")
    return fig


def _stamp(ax: Axes, image: np.ndarray) -> None:
    """One cutout with a zscale stretch (IRAF's display limits), no ticks."""
    from astropy.visualization import ZScaleInterval

    finite = image[np.isfinite(image)]
    if finite.size and np.ptp(finite) > 0:
        lo, hi = ZScaleInterval().get_limits(finite)
    else:
        lo, hi = -1.0, 1.0
    ax.imshow(image, origin="lower", cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def mistakes_figure(
    triplets: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    n: int = 8,
) -> Figure:
    """The worst false positives and false negatives at ``threshold`` as cutouts.

    Parameters
    ----------
    triplets
        (N, 3, h, w): science, reference and difference cutouts per detection.
    labels, scores
        As for :func:`rare_event_metrics`.
    threshold
        Real when ``score >= threshold``.
    n
        At most this many of each kind: the bogus with the highest scores
        among those called real, the reals with the lowest among those called
        bogus.

    Returns
    -------
    Figure
        Six rows (science, reference, difference for the false positives, then
        for the false negatives), one column per detection titled with its
        score; each cutout with its own zscale stretch.
    """
    triplets = np.asarray(triplets)
    real, s = _validated(labels, scores)
    if triplets.ndim != 4 or triplets.shape[1] != 3 or len(triplets) != len(s):
        raise ValueError(
            f"triplets must be (N, 3, h, w) with N = {len(s)} scores, got {triplets.shape}"
        )
    called = s >= threshold
    false_pos = np.flatnonzero(~real & called)
    false_neg = np.flatnonzero(real & ~called)
    groups = {
        "false positive": false_pos[np.argsort(-s[false_pos], kind="stable")][:n],
        "false negative": false_neg[np.argsort(s[false_neg], kind="stable")][:n],
    }
    columns = max(1, *(len(rows) for rows in groups.values()))
    fig = _figure(1.3 * columns + 0.8, 8.4)
    axes = fig.subplots(6, columns, squeeze=False)
    for g, (kind, rows) in enumerate(groups.items()):
        for c in range(columns):
            for r, image in enumerate(("science", "reference", "difference")):
                ax = axes[3 * g + r, c]
                if c >= len(rows):
                    ax.set_axis_off()
                    continue
                _stamp(ax, triplets[rows[c], r].astype(np.float64))
                if r == 0:
                    ax.set_title(f"{s[rows[c]]:.3g}", fontsize=8)
                if c == 0:
                    ax.set_ylabel(f"{kind}\n{image}", fontsize=7)
        if not len(rows):
            axes[3 * g, 0].text(0.5, 0.5, f"no {kind}s", ha="center", va="center", fontsize=8)
    fig.suptitle(
        f"worst mistakes at threshold {threshold:.4g} (title: score)",
        fontsize=9,
    )
    return fig
