"""ZTF alert packets as raw cutout triplets, to score our real-bogus CNN against ZTF's own.

A ZTF alert (Avro; schemas 3.0 to 4.x) carries three 63x63 cutouts around the
candidate, gzipped FITS in DN: the science image, the reference ("template")
and the difference, and ZTF's own verdicts on the candidate: ``rb`` (random
forest, Mahabal et al. 2019, PASP 131, 038002) and, from schema 3.3 on, ``drb``
(braai, a CNN on the same triplet; Duev et al. 2019, MNRAS 489, 3582).
:func:`read_ztf_alerts` reads packets into :class:`ZtfTriplets`;
:func:`evaluate_against_drb` asks how well a score (ours) ranks the alerts that
braai calls real above those it calls bogus. Normalising and orienting the
triplets is :func:`astrid_assets.ml.stamps.prepare_triplets`' job, not this
module's.

Sign convention
---------------
ZTF subtracts in both directions and ``candidate.isdiffpos`` says which image a
candidate was found in: ``"t"`` (or ``"1"``) science - reference, ``"f"`` (or
``"0"``) reference - science. The difference cutout is cut from that image, so
the candidate is a positive peak in every difference stamp, brightening or
fading. The real alerts in ``shared/data/real/ztf_alerts`` show it: fitting
``D = a S + b R + c`` to the pixels within 12 px of the centre, the 15 clean
"t" asteroids of ``kowalski`` (no host in the reference) give ``a = +1.00``,
while the faint, well-fitted "f" alerts give ``a`` near -1 (e.g. ``-0.97`` for
ZTF18acajhdc): their stamp is reference - science. At the candidate's position
every one of the 136 difference stamps is positive (central 3x3 mean above 5
sigma), the 102 "f" ones (all 98 of ``alerce``, 3 of ``kowalski``, 1 of
``official``) included; the few that look negative at the array centre are
stamps cut at the CCD edge, whose candidate is off-centre until padded.

:class:`ZtfTriplets` therefore stores every difference as science - reference:
the stamp of an "f" alert is negated on reading, and ``positive`` is
``isdiffpos``. The rule the CNN needs then holds: ``orient_triplets``, which for
``positive=False`` returns ``(reference, science, -difference)``, turns a fading
"f" alert into ``(reference, science, reference - science)``, a brightening
from the fainter epoch to the brighter one whose difference is ZTF's own stamp,
positive at the centre. Taking ``positive`` from ``isdiffpos`` without negating
the stamp would leave those examples with a negative centre.

Pixels
------
Pixel values are the stamps' own (float32, DN), with two exceptions: blank
pixels, which ZTF writes as NaN in the science and difference stamps and as
-3.4e38 (float32's lowest value) in some reference stamps, are all NaN; and a
stamp cut at the CCD edge (fewer than 63 px on a side, as in 8 ``alerce``
alerts) is padded with NaN on the side of the edge, the side found from the
candidate's ``xpos``/``ypos``, so that the candidate stays at pixel (31, 31).

Files
-----
Most broker archives write ZTF alerts with the null codec, but Spark-written
ones (92 of the ``alerce`` files) are snappy-compressed, which fastavro reads
only with ``cramjam`` installed (``fastavro[snappy]``); without it each such file
is reported through ``on_error`` and skipped like any other unreadable file.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

__all__ = [
    "ASTEROID_RADIUS_ARCSEC",
    "STAMP_SIZE",
    "DrbLabels",
    "MalformedAlertWarning",
    "ZtfTriplets",
    "alert_files",
    "alert_row",
    "drb_labels",
    "evaluate_against_drb",
    "known_asteroids",
    "read_ztf_alerts",
]

STAMP_SIZE = 63
# ZTF's ssdistnr is the distance to the nearest known solar-system object, -999 when none.
ASTEROID_RADIUS_ARCSEC = 10.0
CUTOUTS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")
POSITIVE = frozenset({"t", "1"})
NEGATIVE = frozenset({"f", "0"})
# Reference stamps mark blank pixels with float32's lowest value (-3.4e38) instead of NaN.
BLANK_ABOVE = 1e30
GZIP_MAGIC = b"\x1f\x8b"
FITS_MAGIC = b"SIMPLE"


class MalformedAlertWarning(UserWarning):
    """An alert file or packet that could not be read and was skipped."""


class _Malformed(ValueError):
    """A packet that lacks what a triplet needs."""


@dataclass
class ZtfTriplets:
    """ZTF alerts as cutout triplets, one row per alert packet.

    Attributes
    ----------
    triplets : (n, 3, 63, 63) float32
        Science, reference (ZTF's "template"), difference as science -
        reference, in DN; NaN where blank or padded (see the module docstring).
    positive : (n,) bool
        ``isdiffpos`` is "t" or "1": the candidate brightened. False for "f"/"0".
    candid : (n,) int64
        ``candidate["candid"]`` (the top-level ``candid`` is often missing).
    object_id : (n,) str
        ZTF object name, e.g. ``ZTF20aafsnpp``.
    drb : (n,) float64
        braai's probability real; NaN without one (schemas before 3.3, or a
        ``drb`` without a ``drbversion``, which is a fill value).
    rb : (n,) float64
        The random forest's score; NaN when absent.
    ssdistnr : (n,) float64
        Distance to the nearest known solar-system object in arcsec; NaN when
        there is none (ZTF writes -999).
    source : (n,) str
        The file each alert came from.
    """

    triplets: np.ndarray
    positive: np.ndarray
    candid: np.ndarray
    object_id: np.ndarray
    drb: np.ndarray
    rb: np.ndarray
    ssdistnr: np.ndarray
    source: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.candid)
        if self.triplets.shape != (n, 3, STAMP_SIZE, STAMP_SIZE):
            raise ValueError(
                f"triplets must have shape ({n}, 3, {STAMP_SIZE}, {STAMP_SIZE}), "
                f"got {self.triplets.shape}"
            )
        wrong = [f.name for f in fields(self) if len(getattr(self, f.name)) != n]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} must have one row per alert ({n})")

    def __len__(self) -> int:
        return len(self.candid)

    def subset(self, mask: np.ndarray) -> ZtfTriplets:
        """The rows selected by a boolean mask or an index array."""
        return ZtfTriplets(**{f.name: getattr(self, f.name)[mask] for f in fields(self)})


@dataclass(frozen=True)
class DrbLabels:
    """braai's verdict as labels for the alerts that have a ``drb``.

    ``labels[k]`` (1 real, 0 bogus) belongs to row ``np.flatnonzero(mask)[k]``.
    """

    labels: np.ndarray
    mask: np.ndarray


def alert_files(root: Path) -> list[Path]:
    """Every ``*.avro`` file below ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"no directory of ZTF alerts at {root}")
    return sorted(p for p in root.rglob("*.avro") if p.is_file())


def read_ztf_alerts(
    paths: Iterable[Path], *, on_error: Callable[[Path, str], None] | None = None
) -> ZtfTriplets:
    """Read every alert packet of every Avro file into one :class:`ZtfTriplets`.

    Parameters
    ----------
    paths
        Avro files, each holding one or more ZTF alert packets.
    on_error
        Called as ``on_error(path, reason)`` for a file that cannot be read
        (not Avro, truncated, a codec whose library is missing) and for each
        packet that cannot be made a triplet (a missing or undecodable cutout,
        an unknown ``isdiffpos``). Default: a :class:`MalformedAlertWarning`
        naming the file and the reason. Either way the file or packet is
        skipped and the others are read; packets before a file's damaged part
        are kept.

    Returns
    -------
    ZtfTriplets
        One row per readable packet, in file order.
    """
    report = _warn if on_error is None else on_error
    rows: list[dict[str, Any]] = []
    for path in map(Path, paths):
        file_rows, problems = _read_file(path)
        rows += file_rows
        for reason in problems:
            report(path, reason)
    return _stack(rows)


def known_asteroids(z: ZtfTriplets, radius_arcsec: float = ASTEROID_RADIUS_ARCSEC) -> np.ndarray:
    """(n,) bool: a known solar-system object lies within ``radius_arcsec``: real but moving."""
    with np.errstate(invalid="ignore"):
        return z.ssdistnr < radius_arcsec


def drb_labels(z: ZtfTriplets, threshold: float = 0.5) -> DrbLabels:
    """braai's labels: 1 where ``drb > threshold``, for the alerts that have a ``drb``."""
    mask = np.isfinite(z.drb)
    return DrbLabels(labels=(z.drb[mask] > threshold).astype(np.int8), mask=mask)


def evaluate_against_drb(
    scores: np.ndarray, z: ZtfTriplets, threshold: float = 0.5
) -> dict[str, Any]:
    """How well ``scores`` (higher = more real) rank braai's reals above its bogus.

    braai is a label here, not a truth: the counts say how many alerts each
    side holds, and the ROC AUC how often a braai-real alert outscores a
    braai-bogus one. Alerts without a ``drb`` are left out and counted.

    Returns
    -------
    dict
        ``n`` (alerts with a ``drb``), ``n_real`` (``drb > threshold``),
        ``n_bogus``, ``n_without_drb``, ``roc_auc`` (NaN when one class is
        empty); ``non_asteroid``, the same four counts and ``roc_auc`` without
        the known asteroids (:func:`known_asteroids`), which braai rightly calls
        real but a transient search wants apart; and ``by_folder``, per folder
        of :attr:`ZtfTriplets.source` below the folder all sources share (for
        ``ztf_alerts/``: alerce, kowalski, official): ``n``, ``n_real``,
        ``n_bogus``, ``n_without_drb``, ``n_asteroids``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(z),):
        raise ValueError(f"scores must have shape ({len(z)},), one per alert; got {scores.shape}")
    scored = np.isfinite(z.drb)
    if not np.isfinite(scores[scored]).all():
        raise ValueError("scores must be finite for every alert that has a drb")
    real = z.drb > threshold
    asteroid = known_asteroids(z)
    everyone = np.ones(len(z), dtype=bool)
    folders = _folders(z.source)
    by_folder = {}
    for name in sorted(set(folders.tolist())):
        rows = folders == name
        by_folder[name] = {
            **_counts(real, scored, rows),
            "n_asteroids": int((asteroid & rows).sum()),
        }
    return {
        **_counts(real, scored, everyone),
        "roc_auc": _roc_auc(scores, real, scored),
        "non_asteroid": {
            **_counts(real, scored, ~asteroid),
            "roc_auc": _roc_auc(scores, real, scored & ~asteroid),
        },
        "by_folder": by_folder,
    }


def _warn(path: Path, reason: str) -> None:
    warnings.warn(f"{path}: {reason}; skipped", MalformedAlertWarning, stacklevel=3)


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, _Malformed) else f"{type(exc).__name__}: {exc}"


def _read_file(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of one Avro file's packets, and why any of them (or the file) was skipped."""
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        with path.open("rb") as stream:
            # A file fails as a whole on open (not Avro) or partway (truncated).
            for k, packet in enumerate(fastavro.reader(stream)):
                try:
                    rows.append(alert_row(packet, path))
                except Exception as exc:
                    problems.append(f"packet {k}: {_reason(exc)}")
    except Exception as exc:
        done = f" after {len(rows) + len(problems)} packets" if rows or problems else ""
        problems.append(f"unreadable Avro file{done}: {_reason(exc)}")
    return rows, problems


def alert_row(packet: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """One alert packet as the fields of a :class:`ZtfTriplets` row (its triplet oriented
    by ``isdiffpos``); a malformed packet raises ValueError saying why."""
    candidate = packet.get("candidate")
    if not candidate:
        raise _Malformed("no candidate record")
    isdiffpos = candidate.get("isdiffpos")
    if isdiffpos not in POSITIVE | NEGATIVE:
        raise _Malformed(f"isdiffpos is {isdiffpos!r}, expected one of 't', 'f', '1', '0'")
    positive = isdiffpos in POSITIVE
    centre = (candidate.get("ypos"), candidate.get("xpos"))
    science, reference, difference = (
        _padded(_stamp(packet.get(name), name), centre, name) for name in CUTOUTS
    )
    # ZTF cuts an "f" difference from reference - science; store science - reference.
    triplet = np.stack([science, reference, difference if positive else -difference])
    drb = candidate.get("drb")
    return {
        "triplets": triplet,
        "positive": positive,
        "candid": int(candidate["candid"]),
        "object_id": packet["objectId"],
        # A drb without the model's name is a fill value (0.0 in some re-encoded alerts).
        "drb": _float(drb) if candidate.get("drbversion") else math.nan,
        "rb": _float(candidate.get("rb")),
        "ssdistnr": _distance(candidate.get("ssdistnr")),
        "source": os.fspath(path),
    }


def _stamp(cutout: dict[str, Any] | None, name: str) -> np.ndarray:
    """A cutout's image as float32, blank pixels NaN."""
    data = (cutout or {}).get("stampData")
    if not data:
        raise _Malformed(f"{name} is missing")
    if data[:2] == GZIP_MAGIC:
        data = gzip.decompress(data)
    if not data.startswith(FITS_MAGIC):
        raise _Malformed(f"{name} is neither gzipped nor plain FITS")
    with warnings.catch_warnings():
        # Every ZTF stamp writes SIMPLE free-format; astropy reads it and warns each time.
        warnings.simplefilter("ignore", VerifyWarning)
        image = fits.getdata(io.BytesIO(data))
    if image is None or image.ndim != 2:
        raise _Malformed(f"{name} is not a 2-D image")
    image = np.array(image, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        image[np.abs(image) > BLANK_ABOVE] = np.nan
    return image


def _padded(image: np.ndarray, centre: tuple[Any, Any], name: str) -> np.ndarray:
    """``image`` on a 63x63 NaN canvas, the candidate at its centre.

    A stamp cut short by the CCD edge lacks the rows (columns) beyond that
    edge: before the image when the candidate (1-based ``ypos``/``xpos``) sits
    in the first half stamp of the CCD, after it otherwise.
    """
    if any(n > STAMP_SIZE for n in image.shape):
        raise _Malformed(f"{name} is {image.shape}, larger than {STAMP_SIZE} px")
    if image.shape == (STAMP_SIZE, STAMP_SIZE):
        return image
    starts = []
    for n, pos in zip(image.shape, centre, strict=True):
        missing = STAMP_SIZE - n
        if missing and pos is None:
            raise _Malformed(f"{name} is {image.shape} and the candidate has no xpos/ypos")
        starts.append(missing if missing and pos < STAMP_SIZE / 2 else 0)
    canvas = np.full((STAMP_SIZE, STAMP_SIZE), np.nan, np.float32)
    y0, x0 = starts
    canvas[y0 : y0 + image.shape[0], x0 : x0 + image.shape[1]] = image
    return canvas


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _distance(value: Any) -> float:
    return math.nan if value is None or value < 0 else float(value)


def _stack(rows: list[dict[str, Any]]) -> ZtfTriplets:
    def column(name: str, dtype: Any) -> np.ndarray:
        return np.array([r[name] for r in rows], dtype=dtype)

    triplets = (
        np.stack([r["triplets"] for r in rows]).astype(np.float32, copy=False)
        if rows
        else np.empty((0, 3, STAMP_SIZE, STAMP_SIZE), np.float32)
    )
    return ZtfTriplets(
        triplets=triplets,
        positive=column("positive", bool),
        candid=column("candid", np.int64),
        object_id=column("object_id", str),
        drb=column("drb", np.float64),
        rb=column("rb", np.float64),
        ssdistnr=column("ssdistnr", np.float64),
        source=column("source", str),
    )


def _folders(sources: np.ndarray) -> np.ndarray:
    """Each source's first folder below the folder that all the sources share."""
    if len(sources) == 0:
        return np.array([], dtype=str)
    parents = [Path(s).parent for s in sources]
    common = Path(os.path.commonpath(parents))
    names = [p.relative_to(common).parts[:1] or (common.name,) for p in parents]
    return np.array([n[0] for n in names], dtype=str)


def _counts(real: np.ndarray, scored: np.ndarray, rows: np.ndarray) -> dict[str, int]:
    """Counts among ``rows``: with a drb, real and bogus by it, and without one."""
    return {
        "n": int((rows & scored).sum()),
        "n_real": int((rows & scored & real).sum()),
        "n_bogus": int((rows & scored & ~real).sum()),
        "n_without_drb": int((rows & ~scored).sum()),
    }


def _roc_auc(scores: np.ndarray, real: np.ndarray, rows: np.ndarray) -> float:
    """ROC AUC of ``scores`` against ``real`` within ``rows``; NaN when one class is empty."""
    # sklearn is imported here so that importing this module stays light.
    from sklearn.metrics import roc_auc_score

    labels = real[rows]
    if labels.all() or not labels.any():
        return math.nan
    return float(roc_auc_score(labels, scores[rows]))
