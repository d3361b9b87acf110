"""A night's alert packets from its candidates, their scores and the earlier nights.

One packet per candidate of the night whose ensemble probability real is at
least :attr:`AlertConfig.min_ensemble`, as a dict in the layout of
``schema/astrid.alert.avsc`` (ZTF's, see :mod:`astrid_assets.alerts`):

* ``candidate``: the detection, with ZTF's names for what ZTF also measures
  (``jd``, ``ra``, ``dec``, ``magpsf``, ``sigmapsf``, ``isdiffpos``,
  ``diffmaglim``, ``xpos``, ``ypos``, ``scorr``, ...) and every model's score;
* ``prv_candidates``: the object's detections on earlier nights, whatever
  their scores, oldest first (:mod:`astrid_assets.alerts.association`);
* ``cutoutScience`` / ``cutoutTemplate`` / ``cutoutDifference``: the 63x63
  stamps of the candidates table as gzipped FITS
  (:mod:`astrid_assets.alerts.stamps`).

Conventions, as ZTF's
---------------------
``isdiffpos`` is ``"t"`` for a brightening candidate (``sign`` +1) and
``"f"`` for a fading one. ZTF cuts a fading candidate's difference stamp from
reference - science, so that the candidate is positive in every difference
stamp; the candidates table keeps science - reference, so the packet of an
``"f"`` candidate carries the table's difference stamp negated (and ZTF's
reader, :func:`astrid_assets.ml.ztf.read_ztf_alerts`, negates it back).
``scorr`` and ``snr`` are likewise positive, their sign being ``isdiffpos``.
``xpos``/``ypos`` are 1-based like ZTF's (the table's ``x``/``y`` + 1), on the
field's reference grid. ``diffmaglim`` is the difference image's 5-sigma
point-source limit at the candidate from the PSF fit's own noise:
``zp - 2.5 log10(5 flux_err)`` with ``zp = mag + 2.5 log10 |flux|``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from astrid_assets.alerts.association import (
    MATCH_RADIUS_ARCSEC,
    associate,
    candid_of,
    field_numbers,
)
from astrid_assets.alerts.stamps import GZIP_LEVELS, gzip_stamp
from astrid_assets.ml.scoring import MEMBERS

__all__ = [
    "CUTOUT_COLUMNS",
    "DETECTION_COLUMNS",
    "DETECTION_SCHEMA",
    "FILTER_IDS",
    "PUBLISHER",
    "SCHEMA_VERSION",
    "SCORES",
    "AlertConfig",
    "NightAlerts",
    "build_alerts",
]

SCHEMA_VERSION = "1.0"
PUBLISHER = "AstrID"
SCORES = (*MEMBERS, "ensemble")
# The candidates table's columns a packet is made of, cutouts aside.
DETECTION_COLUMNS = (
    "candidate_id",
    "night",
    "field",
    "id",
    "x",
    "y",
    "sign",
    "score_peak",
    "flux",
    "flux_err",
    "snr",
    "mag",
    "mag_err",
    "ra",
    "dec",
    "mjd",
    "chi2",
    "fwhm",
)
# Their types where a table has no rows to tell (an empty history).
DETECTION_SCHEMA = {
    **{name: pl.Float64 for name in (*DETECTION_COLUMNS, *SCORES)},
    **{name: pl.Utf8 for name in ("candidate_id", "night", "field")},
    **{name: pl.Int64 for name in ("id", "sign")},
}
# The table's stamps and the packet's cutouts, in the same order; the file name's tag.
CUTOUT_COLUMNS = {
    "cutout_science": ("cutoutScience", "sci"),
    "cutout_reference": ("cutoutTemplate", "ref"),
    "cutout_difference": ("cutoutDifference", "diff"),
}
FILTER_IDS = {"g": 1, "r": 2, "i": 3}  # ZTF's fid
MJD_TO_JD = 2400000.5


@dataclass(frozen=True)
class AlertConfig:
    """Which candidates become alerts and how the packets are made.

    Attributes
    ----------
    min_ensemble : float
        Least ensemble probability real of a candidate that gets a packet.
    require_scores : bool
        Fail when a field of the night has candidates but no scores; when
        False, such a field's candidates all get packets, with null scores.
    match_radius_arcsec : float
        Largest distance of a detection from its object.
    band : str or None
        Filter name written to the packets (the simulated survey's is r).
    gzip_level : int
        Deflate level of the cutouts, ISA-L's 0 (fastest) to 3
        (:mod:`astrid_assets.alerts.stamps`).
    workers : int
        Threads that compress cutouts and write packets (ISA-L and file I/O
        release the GIL).
    """

    min_ensemble: float = 0.5
    require_scores: bool = True
    match_radius_arcsec: float = MATCH_RADIUS_ARCSEC
    band: str | None = "r"
    gzip_level: int = 1
    workers: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_ensemble <= 1.0:
            raise ValueError(f"min_ensemble is a probability, 0 to 1; got {self.min_ensemble}")
        if not self.match_radius_arcsec > 0:
            raise ValueError(
                f"match_radius_arcsec must be positive, got {self.match_radius_arcsec}"
            )
        if self.gzip_level not in GZIP_LEVELS:
            raise ValueError(
                f"gzip_level must be {GZIP_LEVELS[0]} to {GZIP_LEVELS[-1]}, got {self.gzip_level}"
            )
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")


@dataclass
class NightAlerts:
    """A night's packets and how they came about.

    Attributes
    ----------
    packets : list of dict
        One Avro-ready packet per alert, in ``candid`` order.
    candidates : int
        The night's candidates, every field.
    without_position : int
        Candidates without a finite RA/Dec: neither associated nor alerted.
    below_cut : int
        Candidates under ``min_ensemble`` (or without an ensemble score).
    new_objects, known_objects : int
        Distinct objects among the packets first detected tonight, and seen
        on an earlier night.
    """

    packets: list[dict[str, Any]]
    candidates: int
    without_position: int
    below_cut: int
    new_objects: int
    known_objects: int
    unscored_fields: list[str] = field(default_factory=list)


def build_alerts(
    tonight: pl.DataFrame,
    history: pl.DataFrame,
    *,
    fields: Sequence[str],
    config: AlertConfig | None = None,
    unscored_fields: Sequence[str] = (),
) -> NightAlerts:
    """Associate and make the packets of one night.

    Parameters
    ----------
    tonight : polars.DataFrame
        The night's candidates, every field, with :data:`DETECTION_COLUMNS`,
        the cutout columns, and the :data:`SCORES` columns (null where not
        scored).
    history : polars.DataFrame
        Earlier nights' candidates: :data:`DETECTION_COLUMNS` and
        :data:`SCORES`, no cutouts.
    fields : sequence of str
        The survey's fields, in the order that numbers them
        (:func:`~astrid_assets.alerts.association.field_numbers`).
    config : AlertConfig
    unscored_fields : sequence of str
        Fields of the night without scores: their candidates pass the cut
        (only allowed when ``config.require_scores`` is False).

    Returns
    -------
    NightAlerts
    """
    config = config or AlertConfig()
    missing = [
        c for c in (*DETECTION_COLUMNS, *CUTOUT_COLUMNS, *SCORES) if c not in tonight.columns
    ]
    if missing:
        raise ValueError(f"the night's candidates lack the columns {', '.join(missing)}")
    missing = [c for c in (*DETECTION_COLUMNS, *SCORES) if c not in history.columns]
    if missing:
        raise ValueError(f"the earlier nights' candidates lack the columns {', '.join(missing)}")
    if unscored_fields and config.require_scores:
        raise ValueError(
            f"fields {', '.join(unscored_fields)} have no scores and require_scores is set"
        )
    nights = tonight["night"].unique().to_list()
    if len(nights) > 1:
        raise ValueError(f"the night's candidates must be of one night, got {sorted(nights)}")
    if nights and history.filter(pl.col("night") >= nights[0]).height:
        raise ValueError(f"the history must hold only nights before {nights[0]}")

    numbers = field_numbers(list(fields))
    # The cutouts stay where they are: rows are picked by index, stamps read one by one.
    small = tonight.select(*DETECTION_COLUMNS, *SCORES)
    located = np.flatnonzero(_located(small).to_numpy())
    night_rows = small[located]
    earlier = history.filter(_located(history))
    detections = pl.concat(
        [earlier.select(DETECTION_COLUMNS), night_rows.select(DETECTION_COLUMNS)]
    )
    candid = _candids(detections, numbers)
    grouping = associate(
        detections["ra"].to_numpy(),
        detections["dec"].to_numpy(),
        detections["night"].to_numpy(),
        candid,
        config.match_radius_arcsec,
    )
    n_before = earlier.height
    object_id = grouping.object_id

    ensemble = night_rows["ensemble"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    unscored = night_rows["field"].is_in(list(unscored_fields)).to_numpy()
    with np.errstate(invalid="ignore"):
        chosen = np.flatnonzero((ensemble >= config.min_ensemble) | unscored)
    chosen = chosen[np.argsort(candid[n_before:][chosen], kind="stable")]

    fid = FILTER_IDS.get(config.band or "")
    # Records only for the earlier detections of tonight's alerted objects.
    alerted = np.isin(object_id[:n_before], object_id[n_before:][chosen])
    rows = np.flatnonzero(alerted)
    past = _records(earlier[rows], candid[:n_before][rows], config.band, fid)
    histories: dict[str, list[dict[str, Any]]] = {}
    for record, name in zip(past, object_id[:n_before][rows], strict=True):
        histories.setdefault(name, []).append(record)
    for earlier_of_one in histories.values():
        earlier_of_one.sort(key=lambda r: (r["jd"], r["candid"]))

    selected = night_rows[chosen]
    records = _records(selected, candid[n_before:][chosen], config.band, fid)
    cutouts = _cutouts(tonight, located[chosen], records, config)
    chi2, fwhm = (selected[c].cast(pl.Float64).fill_nan(None).to_list() for c in ("chi2", "fwhm"))
    packets = []
    new, known = set(), set()
    for k, record in enumerate(records):
        name = str(object_id[n_before:][chosen[k]])
        prv = histories.get(name)
        (known if prv else new).add(name)
        record.update(
            chipsf=chi2[k],
            fwhm=fwhm[k],
            ndethist=len(prv or ()) + 1,
            jdstarthist=prv[0]["jd"] if prv else record["jd"],
            jdendhist=record["jd"],
        )
        packets.append(
            {
                "schemavsn": SCHEMA_VERSION,
                "publisher": PUBLISHER,
                "objectId": name,
                "candid": record["candid"],
                "candidate": record,
                "prv_candidates": prv or None,
                **cutouts[k],
            }
        )
    return NightAlerts(
        packets=packets,
        candidates=tonight.height,
        without_position=tonight.height - night_rows.height,
        below_cut=night_rows.height - len(chosen),
        new_objects=len(new),
        known_objects=len(known),
        unscored_fields=sorted(unscored_fields),
    )


def _located(frame: pl.DataFrame) -> pl.Series:
    """Rows with a finite RA and Dec."""
    finite = pl.col("ra").cast(pl.Float64).is_finite() & pl.col("dec").cast(pl.Float64).is_finite()
    return frame.select(finite.fill_null(False)).to_series()


def _candids(detections: pl.DataFrame, numbers: dict[str, int]) -> np.ndarray:
    unknown = sorted(set(detections["field"].to_list()) - set(numbers))
    if unknown:
        raise ValueError(
            f"candidates of fields {', '.join(unknown)}, which are not among the survey's "
            f"fields ({', '.join(numbers)})"
        )
    return np.array(
        [
            candid_of(night, numbers[f], int(i))
            for night, f, i in detections.select("night", "field", "id").iter_rows()
        ],
        dtype=np.int64,
    )


def _float_list(frame: pl.DataFrame, name: str) -> list[float | None]:
    return frame[name].cast(pl.Float64).fill_nan(None).to_list()


def _records(
    frame: pl.DataFrame, candid: np.ndarray, band: str | None, fid: int | None
) -> list[dict[str, Any]]:
    """The fields a candidate and a prv_candidate share, one dict per row."""
    n = frame.height
    if n == 0:
        return []
    sign = frame["sign"].to_numpy()
    flux, flux_err, mag = (
        frame[c].cast(pl.Float64).to_numpy() for c in ("flux", "flux_err", "mag")
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        limit = mag + 2.5 * np.log10(np.abs(flux) / (5.0 * flux_err))
    limit = [float(v) if math.isfinite(v) else None for v in limit]
    jd = (frame["mjd"].cast(pl.Float64) + MJD_TO_JD).to_list()
    xpos, ypos = ((frame[c].cast(pl.Float64) + 1.0).fill_nan(None).to_list() for c in ("x", "y"))
    scorr, snr = (
        frame[c].cast(pl.Float64).abs().fill_nan(None).to_list() for c in ("score_peak", "snr")
    )
    columns = {
        "magpsf": _float_list(frame, "mag"),
        "sigmapsf": _float_list(frame, "mag_err"),
        **{name: _float_list(frame, name) for name in SCORES},
    }
    ra, dec = frame["ra"].to_list(), frame["dec"].to_list()
    fields, nights, ids = (frame[c].to_list() for c in ("field", "night", "candidate_id"))
    records = []
    for k in range(n):
        record = {
            "jd": jd[k],
            "fid": fid,
            "band": band,
            "candid": int(candid[k]),
            "isdiffpos": "t" if sign[k] > 0 else "f",
            "field": fields[k],
            "xpos": xpos[k],
            "ypos": ypos[k],
            "ra": ra[k],
            "dec": dec[k],
            "diffmaglim": limit[k],
            "scorr": scorr[k],
            "snr": snr[k],
            "night": nights[k],
            "candidate_id": ids[k],
        }
        for name, values in columns.items():
            record[name] = values[k]
        records.append(record)
    return records


def _cutouts(
    tonight: pl.DataFrame, rows: np.ndarray, records: list[dict[str, Any]], config: AlertConfig
) -> list[dict[str, dict[str, Any]]]:
    """The three gzipped FITS cutouts of the candidates in ``rows`` of ``tonight``."""
    if len(rows) == 0:
        return []
    stamps = {}
    for column in CUTOUT_COLUMNS:
        flat = tonight[column].to_numpy()  # a view when the column is one chunk
        side = math.isqrt(flat.shape[1])
        if side * side != flat.shape[1]:
            raise ValueError(f"{column} holds {flat.shape[1]} pixels, not a square stamp")
        stamps[column] = flat.reshape(len(flat), side, side)
    # ZTF cuts a fading candidate's difference from reference - science (module docstring).
    flip = {"cutout_difference"}

    def encode(part: range) -> list[dict[str, dict[str, Any]]]:
        out = []
        for k in part:
            candid, fading = records[k]["candid"], records[k]["isdiffpos"] == "f"
            cutouts = {}
            for column, (name, tag) in CUTOUT_COLUMNS.items():
                stamp = stamps[column][rows[k]]
                if fading and column in flip:
                    stamp = -stamp
                cutouts[name] = {
                    "fileName": f"candid{candid}_{tag}.fits.gz",
                    "stampData": gzip_stamp(stamp, config.gzip_level),
                }
            out.append(cutouts)
        return out

    parts = _chunks(len(rows), config.workers)
    if len(parts) == 1:
        return encode(parts[0])
    with ThreadPoolExecutor(len(parts)) as pool:
        return [c for part in pool.map(encode, parts) for c in part]


def _chunks(n: int, workers: int) -> list[range]:
    """``range(n)`` in up to ``workers`` contiguous parts (one when ``n`` is small)."""
    parts = max(1, min(workers, n // 64))
    bounds = np.linspace(0, n, parts + 1).astype(int)
    return [range(a, b) for a, b in itertools.pairwise(bounds)]
