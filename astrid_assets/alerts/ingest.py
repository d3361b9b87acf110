"""Other surveys' alerts in: ZTF and Rubin Avro packets into ``external_candidates``.

``astrid alerts ingest PATH...`` reads alert packets from Avro files,
directories (every ``*.avro``, ``*.tar``, ``*.tar.gz`` and ``*.tgz`` below,
recursively) and tarballs (``astrid alerts ingest --kafka`` from a broker's
topic: :mod:`astrid_assets.alerts.kafka`), and stores one row per alert in the table
``external_candidates``, so that AstrID can score them as a broker-side
classifier (:mod:`astrid_assets.alerts.external_scoring`) and ``astrid sql``
shows them beside our own ``candidates``.

Surveys
-------
ZTF (schemas 3.0 to 4.x; Patterson et al. 2019, PASP 131, 018001): a packet
with a ``candidate`` record. The triplet is read by ZTF's reader in
:mod:`astrid_assets.ml.ztf` (blank pixels NaN, stamps cut at the CCD edge
padded on the edge's side, the difference stored as science - reference and
``positive`` from ``isdiffpos``); ``drb`` is null when the packet has no
``drbversion`` (a fill value then), ``ssdistnr`` null when ZTF writes -999.
Rubin (``lsst.v9`` to ``v11``): a packet with a ``diaSource`` record, read by
:mod:`astrid_assets.alerts.rubin`.

The table
---------
One row per alert; a column that a survey does not have is null:

``survey`` ("ztf", "rubin"), ``candid`` (ZTF ``candidate.candid``, Rubin
``diaSourceId``), ``object_id`` (ZTF ``objectId``, Rubin ``diaObjectId`` as
text), ``ra``, ``dec`` (deg), ``mjd`` (ZTF ``jd - 2400000.5`` in UTC, Rubin
``midpointMjdTai`` in TAI), ``band``, ``magpsf``, ``sigmapsf`` (ZTF, AB mag),
``psfFlux``, ``psfFluxErr`` (Rubin, nJy), ``positive`` (the candidate
brightened: ZTF ``isdiffpos``, Rubin ``psfFlux > 0``), ``isdiffpos``, the
surveys' own scores ``rb``, ``drb`` (ZTF) and ``reliability`` (Rubin),
``ssdistnr`` (arcsec), ``ssnamenr`` (ZTF's nearest known solar-system object),
``snr``, ``isDipole`` (Rubin), ``schema_version`` ("3.3", "4.01", "9.0"),
``source_file`` (the file, ``archive.tar.gz:member`` inside a tarball),
``batch`` (the ingest that stored the row) and the cutouts.

Cutouts are stored as ``cutout_science``, ``cutout_reference`` and
``cutout_difference``, 63 x 63 float32 ``Array`` columns like those of our
``candidates`` table (difference as science - reference, NaN where blank or
padded, the candidate at pixel (31, 31)) rather than the packets' raw FITS
bytes: the CNN, the review app's stamp reader and the catalog's
``external_candidates_cutouts`` view read them as they read ours, with no
FITS decoding per query. What they leave out (Rubin's variance and PSF
stamps, the stamps' headers) stays in the packet named by ``source_file``.

Storage and duplicates
----------------------
Each ingest writes one Parquet file per survey,
``external_candidates/<survey>/<batch>.parquet`` under the tables store,
atomically, and (re)creates the DuckDB view ``external_candidates`` (the
cutouts in ``external_candidates_cutouts``). An alert already stored, by
``(survey, candid)``, is skipped on ingest, as is a repeat within the
inputs, so ingesting a file twice adds nothing. Two ingests of the same
alerts running at the same moment can both store them; ingest from one
process at a time.

Malformed input
---------------
A file that is not Avro, is truncated, or a packet that lacks a required
field or cutout is reported through ``on_error(source, reason)`` and skipped;
everything else is stored. The command exits 0 with a count of warnings,
and non-zero only when nothing at all could be read.
"""

from __future__ import annotations

import io
import math
import tarfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import polars as pl

from astrid_assets.alerts.rubin import CUTOUTS, STAMP_SIZE, MalformedPacket, rubin_row

# ZTF's own packet reader makes the triplet: blank pixels, CCD-edge padding, the sign.
from astrid_assets.ml.ztf import alert_row as ztf_triplet
from astrid_assets.storage.atomic import atomic_write_bytes

__all__ = [
    "EXTERNAL_SCHEMA",
    "SURVEYS",
    "TABLE",
    "IngestResult",
    "alert_inputs",
    "ingest_alert_messages",
    "ingest_alerts",
    "load_external_candidates",
    "read_alert_messages",
    "read_external_alerts",
    "store_external_candidates",
]

TABLE = "external_candidates"
SURVEYS = ("ztf", "rubin")
CUTOUT_COLUMNS = tuple(CUTOUTS.values())
STAMP = pl.Array(pl.Float32, (STAMP_SIZE, STAMP_SIZE))
EXTERNAL_SCHEMA: dict[str, pl.DataType] = {
    "survey": pl.Utf8(),
    "candid": pl.Int64(),
    "object_id": pl.Utf8(),
    "ra": pl.Float64(),
    "dec": pl.Float64(),
    "mjd": pl.Float64(),
    "band": pl.Utf8(),
    "magpsf": pl.Float64(),
    "sigmapsf": pl.Float64(),
    "psfFlux": pl.Float64(),
    "psfFluxErr": pl.Float64(),
    "positive": pl.Boolean(),
    "isdiffpos": pl.Utf8(),
    "rb": pl.Float64(),
    "drb": pl.Float64(),
    "reliability": pl.Float64(),
    "ssdistnr": pl.Float64(),
    "ssnamenr": pl.Utf8(),
    "snr": pl.Float64(),
    "isDipole": pl.Boolean(),
    "schema_version": pl.Utf8(),
    "source_file": pl.Utf8(),
    "batch": pl.Utf8(),
    **{name: STAMP for name in CUTOUT_COLUMNS},
}
AVRO_SUFFIXES = (".avro",)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
ZTF_BANDS = {1: "g", 2: "r", 3: "i"}

OnError = Callable[[str, str], None]


@dataclass
class IngestResult:
    """What an ingest read and stored.

    Attributes
    ----------
    read : dict
        Alerts read per survey (before duplicates are dropped).
    stored : dict
        New alerts stored per survey.
    duplicates : dict
        Alerts per survey skipped as already stored (or repeated in the inputs).
    problems : list of (source, reason)
        Files and packets skipped.
    written : list of str
        The Parquet files written.
    """

    read: dict[str, int] = field(default_factory=dict)
    stored: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)
    written: list[str] = field(default_factory=list)


def alert_inputs(paths: Iterable[Path]) -> list[Path]:
    """Files and tarballs to read: a directory's ``*.avro`` and tarballs, recursively;
    a file as given.

    Raises
    ------
    FileNotFoundError
        For a path that does not exist.
    """
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            out += sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and _suffix(p) in (*AVRO_SUFFIXES, *TAR_SUFFIXES)
            )
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"no alert file or directory at {path}")
    return out


def read_external_alerts(
    paths: Iterable[Path],
    *,
    on_error: OnError | None = None,
    progress: Callable[[int], Any] | None = None,
) -> pl.DataFrame:
    """Every ZTF and Rubin packet of ``paths`` (files, directories, tarballs) as rows
    of :data:`EXTERNAL_SCHEMA` (``batch`` null).

    Parameters
    ----------
    paths
        Avro files, directories or tarballs (see :func:`alert_inputs`).
    on_error
        Called as ``on_error(source, reason)`` for each file or packet that is
        skipped; default: a :class:`ValueError` on the first one.
    progress
        Called with 1 after each input file or tarball.
    """
    report = on_error or _raise
    rows: list[dict[str, Any]] = []
    for path in alert_inputs(paths):
        for source, data in _members(path, report):
            rows += _rows_of(source, data, report)
        if progress is not None:
            progress(1)
    return _frame(rows)


def read_alert_messages(
    messages: Iterable[tuple[str, bytes]], *, on_error: OnError | None = None
) -> pl.DataFrame:
    """The rows of ``(source name, Avro container bytes)`` pairs, as
    :func:`read_external_alerts` gives for files: one pair per Kafka message, say.
    A malformed one is reported under its source name and skipped."""
    report = on_error or _raise
    rows: list[dict[str, Any]] = []
    for source, data in messages:
        rows += _rows_of(source, data, report)
    return _frame(rows)


def store_external_candidates(
    store: Any, frame: pl.DataFrame, *, batch: str | None = None
) -> IngestResult:
    """Store the rows of ``frame`` not stored yet, one Parquet file per survey.

    Parameters
    ----------
    store
        The tables store (a :class:`~astrid_assets.storage.io_managers.ParquetStore`);
        its catalog, when it has one, gets the ``external_candidates`` view.
    frame
        Rows of :data:`EXTERNAL_SCHEMA`, as :func:`read_external_alerts` gives.
    batch
        The new files' name; default: the UTC time and a random suffix.
    """
    batch = batch or f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    result = IngestResult()
    for survey in SURVEYS:
        rows = frame.filter(pl.col("survey") == survey)
        if rows.is_empty():
            continue
        result.read[survey] = rows.height
        stored = _stored_ids(store, survey)
        new = rows.unique(subset="candid", keep="first", maintain_order=True).join(
            stored, on="candid", how="anti", maintain_order="left"
        )
        result.stored[survey] = new.height
        result.duplicates[survey] = rows.height - new.height
        if new.is_empty():
            continue
        path = _folder(store) / survey / f"{batch}.parquet"
        buffer = io.BytesIO()
        new.with_columns(pl.lit(batch).alias("batch")).write_parquet(buffer, compression="zstd")
        atomic_write_bytes(path, buffer.getvalue())
        result.written.append(str(path))
        if store.catalog is not None:
            store.catalog.ensure_view(TABLE, f"{_folder(store)}/**/*.parquet", written=str(path))
    return result


def ingest_alerts(
    store: Any,
    paths: Iterable[Path],
    *,
    on_error: OnError | None = None,
    progress: Callable[[int], Any] | None = None,
) -> IngestResult:
    """Read ``paths`` and store their new alerts: what ``astrid alerts ingest`` does.

    Problems are passed to ``on_error`` (when given) and listed in the result;
    a malformed file or packet never stops the others from being stored.
    """
    collect, problems = _collector(on_error)
    result = store_external_candidates(
        store, read_external_alerts(paths, on_error=collect, progress=progress)
    )
    result.problems = problems
    return result


def ingest_alert_messages(
    store: Any,
    messages: Iterable[tuple[str, bytes]],
    *,
    on_error: OnError | None = None,
) -> IngestResult:
    """Store the new alerts of ``(source name, Avro container bytes)`` pairs, as
    :func:`ingest_alerts` does for files; what ``astrid alerts ingest --kafka`` does
    with each batch of messages."""
    collect, problems = _collector(on_error)
    result = store_external_candidates(store, read_alert_messages(messages, on_error=collect))
    result.problems = problems
    return result


def _collector(on_error: OnError | None) -> tuple[OnError, list[tuple[str, str]]]:
    """An ``on_error`` that lists each problem and passes it on to ``on_error``."""
    problems: list[tuple[str, str]] = []

    def collect(source: str, reason: str) -> None:
        problems.append((source, reason))
        if on_error is not None:
            on_error(source, reason)

    return collect, problems


def load_external_candidates(
    store: Any, survey: str | None = None, columns: Sequence[str] | None = None
) -> pl.DataFrame:
    """The stored alerts of ``survey`` (all surveys when None), the ``columns`` asked
    for (all by default); an empty frame when none are stored."""
    surveys = SURVEYS if survey is None else (survey,)
    unknown = set(surveys) - set(SURVEYS)
    if unknown:
        raise ValueError(f"survey must be one of {', '.join(SURVEYS)}, got {survey!r}")
    names = list(columns) if columns is not None else list(EXTERNAL_SCHEMA)
    frames = [
        pl.read_parquet(io.BytesIO(path.read_bytes()), columns=names)
        for s in surveys
        for path in _files(store, s)
    ]
    if not frames:
        return pl.DataFrame(schema={n: EXTERNAL_SCHEMA[n] for n in names})
    return pl.concat(frames, how="vertical_relaxed")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in (*TAR_SUFFIXES, *AVRO_SUFFIXES) if name.endswith(s)), path.suffix)


def _raise(source: str, reason: str) -> None:
    raise ValueError(f"{source}: {reason}")


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValueError) and type(exc).__module__.startswith("astrid_assets."):
        return str(exc)  # our readers' own messages (MalformedPacket, ml.ztf's) say it all
    if isinstance(exc, KeyError):
        return f"missing field {exc}"
    return f"{type(exc).__name__}: {exc}"


def _members(path: Path, report: OnError) -> Iterator[tuple[str, bytes]]:
    """``(source name, bytes)`` of a file, or of each Avro member of a tarball."""
    if _suffix(path) not in TAR_SUFFIXES:
        yield str(path), path.read_bytes()
        return
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                if member.isfile() and member.name.lower().endswith(AVRO_SUFFIXES):
                    handle = archive.extractfile(member)
                    if handle is not None:
                        yield f"{path}:{member.name}", handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        report(str(path), f"unreadable tarball: {type(exc).__name__}: {exc}")


def _rows_of(source: str, data: bytes, report: OnError) -> list[dict[str, Any]]:
    """The rows of one Avro file's packets; problems reported, the rest kept."""
    rows: list[dict[str, Any]] = []
    seen = 0
    try:
        reader = fastavro.reader(io.BytesIO(data))
        for k, packet in enumerate(reader):
            seen += 1
            try:
                rows.append(_row(packet, reader.writer_schema, source))
            except Exception as exc:
                report(source, f"packet {k}: {_reason(exc)}")
    except Exception as exc:
        done = f" after {seen} packets" if seen else ""
        report(source, f"unreadable Avro file{done}: {_reason(exc)}")
    return rows


def _row(packet: dict[str, Any], writer_schema: Any, source: str) -> dict[str, Any]:
    if packet.get("candidate"):
        row = _ztf_row(packet)
    elif packet.get("diaSource"):
        row = rubin_row(packet, writer_schema)
    else:
        raise MalformedPacket("neither a ZTF candidate nor a Rubin diaSource record")
    return {**row, "source_file": source, "batch": None}


def _ztf_row(packet: dict[str, Any]) -> dict[str, Any]:
    candidate = packet["candidate"]
    triplet = ztf_triplet(packet, "")
    name = candidate.get("ssnamenr")
    return {
        "survey": "ztf",
        "candid": triplet["candid"],
        "object_id": triplet["object_id"],
        "ra": float(candidate["ra"]),
        "dec": float(candidate["dec"]),
        "mjd": float(candidate["jd"]) - 2400000.5,
        "band": ZTF_BANDS.get(candidate.get("fid")),
        "magpsf": _null(candidate.get("magpsf")),
        "sigmapsf": _null(candidate.get("sigmapsf")),
        "psfFlux": None,
        "psfFluxErr": None,
        "positive": triplet["positive"],
        "isdiffpos": candidate.get("isdiffpos"),
        "rb": _null(triplet["rb"]),
        "drb": _null(triplet["drb"]),
        "reliability": None,
        "ssdistnr": _null(triplet["ssdistnr"]),
        "ssnamenr": None if name in (None, "", "null") else name,
        "snr": None,
        "isDipole": None,
        "schema_version": packet.get("schemavsn"),
        **dict(zip(CUTOUT_COLUMNS, triplet["triplets"], strict=True)),
    }


def _null(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    scalars = [n for n in EXTERNAL_SCHEMA if n not in CUTOUT_COLUMNS]
    columns = [pl.Series(n, [r[n] for r in rows], dtype=EXTERNAL_SCHEMA[n]) for n in scalars]
    for name in CUTOUT_COLUMNS:
        stamps = (
            np.stack([r[name] for r in rows]).astype(np.float32, copy=False)
            if rows
            else np.empty((0, STAMP_SIZE, STAMP_SIZE), np.float32)
        )
        columns.append(pl.Series(name, stamps, dtype=STAMP))
    return pl.DataFrame(columns).select(list(EXTERNAL_SCHEMA))


def _folder(store: Any) -> Any:
    # UPathIOManager keeps its root, with its filesystem options, as _base_path.
    return store._base_path / TABLE


def _files(store: Any, survey: str) -> list[Any]:
    folder = _folder(store) / survey
    if not folder.exists():
        return []
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))


def _stored_ids(store: Any, survey: str) -> pl.DataFrame:
    return load_external_candidates(store, survey, columns=["candid"])
