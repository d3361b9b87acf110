"""A night's packets from Parquet tables: Avro round trip, ZTF's reader, cutouts, history."""

from __future__ import annotations

import io
import json
import warnings

import fastavro
import numpy as np
import polars as pl
import pytest

from astrid_assets.alerts import (
    SCHEMA_PATH,
    AlertConfig,
    alert_schema,
    night_alerts,
    packet_bytes,
    read_packets,
    read_stamp,
    write_packets,
)
from astrid_assets.ml.ztf import alert_files, read_ztf_alerts

from .conftest import DEC0, RA0, candidates, offset, scores, store, write_table

NIGHTS = ("2026-01-05", "2026-01-06", "2026-01-07")
FIELDS = ("F01", "F02")
SIZE = 63


@pytest.fixture
def survey(tmp_path):
    """Three nights of F01 with A (brightening) and B (5 arcsec away, fading on the
    third night); the third night also has C, new in F02, and D, below the score cut."""
    tables = tmp_path / "tables"
    for k, night in enumerate(NIGHTS):
        a = offset(RA0, DEC0, 0.3 * k, -0.2 * k)
        b = offset(RA0, DEC0, 3.0, 4.0)
        frame = candidates(
            night, "F01", [a[0], b[0]], [a[1], b[1]], sign=[1, -1 if k == 2 else 1], seed=k
        )
        write_table(tables, "candidates", night, "F01", frame)
        write_table(tables, "candidate_scores", night, "F01", scores(frame, [0.9, 0.7]))
    c, d = offset(RA0, DEC0, 600.0, 0.0), offset(RA0, DEC0, 900.0, 0.0)
    frame = candidates(NIGHTS[2], "F02", [c[0], d[0]], [c[1], d[1]], seed=9)
    write_table(tables, "candidates", NIGHTS[2], "F02", frame)
    write_table(tables, "candidate_scores", NIGHTS[2], "F02", scores(frame, [0.95, 0.2]))
    return tmp_path


def _night(root, night=NIGHTS[2], **config):
    return night_alerts(store(root), night, FIELDS, AlertConfig(**config))


def _by_id(packets):
    return {p["candidate"]["candidate_id"]: p for p in packets}


def test_packets_are_made_for_the_candidates_above_the_score_cut(survey):
    tables, built = _night(survey)
    ids = sorted(_by_id(built.packets))
    assert ids == ["2026-01-07_F01_0001", "2026-01-07_F01_0002", "2026-01-07_F02_0001"]
    assert (built.candidates, built.below_cut, built.without_position) == (4, 1, 0)
    assert (built.new_objects, built.known_objects) == (1, 2)
    assert tables.history.height == 4
    _, strict = _night(survey, min_ensemble=0.8)
    assert sorted(_by_id(strict.packets)) == ["2026-01-07_F01_0001", "2026-01-07_F02_0001"]


def test_an_object_seen_on_three_nights_keeps_its_id_and_carries_the_two_earlier(survey):
    ids = [_by_id(_night(survey, night)[1].packets)[f"{night}_F01_0001"] for night in NIGHTS]
    assert len({p["objectId"] for p in ids}) == 1
    third = ids[2]
    earlier = [p["candidate_id"] for p in third["prv_candidates"]]
    assert earlier == ["2026-01-05_F01_0001", "2026-01-06_F01_0001"]
    assert [p["candid"] for p in third["prv_candidates"]] == [
        ids[0]["candid"],
        ids[1]["candid"],
    ]
    candidate = third["candidate"]
    assert candidate["ndethist"] == 3
    assert candidate["jdstarthist"] == ids[0]["candidate"]["jd"]
    assert candidate["jdendhist"] == candidate["jd"]
    assert third["prv_candidates"][0]["ensemble"] == pytest.approx(0.9)
    assert ids[0]["prv_candidates"] is None


def test_a_source_5_arcsec_away_is_another_object_with_its_own_history(survey):
    packets = _by_id(_night(survey)[1].packets)
    a, b = packets["2026-01-07_F01_0001"], packets["2026-01-07_F01_0002"]
    assert a["objectId"] != b["objectId"]
    assert [p["candidate_id"] for p in b["prv_candidates"]] == [
        "2026-01-05_F01_0002",
        "2026-01-06_F01_0002",
    ]
    assert packets["2026-01-07_F02_0001"]["prv_candidates"] is None


def test_written_packets_read_back_by_fastavro_against_the_schema(survey, tmp_path):
    built = _night(survey)[1]
    written = write_packets(built.packets, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{p['candid']}.avro" for p in built.packets
    )
    schema = fastavro.parse_schema(json.loads(SCHEMA_PATH.read_text()))
    for path, packet in zip(written.paths, built.packets, strict=True):
        with open(path, "rb") as stream:
            reader = fastavro.reader(stream, reader_schema=schema)
            (back,) = list(reader)
        assert reader.writer_schema["name"] == "astrid.alert"
        _assert_same_packet(back, packet)
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, schema, packet)
        buffer.seek(0)
        _assert_same_packet(fastavro.schemaless_reader(buffer, schema), packet)
    assert [p["candid"] for p in read_packets(written.paths)] == [
        p["candid"] for p in built.packets
    ]


def test_a_packet_file_is_the_container_fastavro_writes(survey):
    for packet in _night(survey)[1].packets:
        ours = packet_bytes(packet)
        buffer = io.BytesIO()
        fastavro.writer(buffer, alert_schema(), [packet], sync_marker=ours[-16:])
        assert ours == buffer.getvalue()


def _assert_same_packet(back, packet):
    assert back["objectId"] == packet["objectId"]
    assert back["candid"] == packet["candid"] == packet["candidate"]["candid"]
    for name, value in packet["candidate"].items():
        if isinstance(value, float):
            assert back["candidate"][name] == pytest.approx(value, rel=1e-6), name
        else:
            assert back["candidate"][name] == value, name
    assert [p["candid"] for p in back["prv_candidates"] or []] == [
        p["candid"] for p in packet["prv_candidates"] or []
    ]
    for name in ("cutoutScience", "cutoutTemplate", "cutoutDifference"):
        assert back[name] == packet[name]


def test_the_ztf_reader_reads_our_packets_by_the_same_code_path(survey, tmp_path):
    built = _night(survey)[1]
    write_packets(built.packets, tmp_path / "alerts")
    problems = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z = read_ztf_alerts(
            alert_files(tmp_path / "alerts"), on_error=lambda p, r: problems.append(r)
        )
    assert problems == []
    by_candid = {p["candid"]: p for p in built.packets}
    assert sorted(z.candid.tolist()) == sorted(by_candid)
    table = _tonight_table(survey)
    for k, candid in enumerate(z.candid):
        packet = by_candid[int(candid)]
        assert z.object_id[k] == packet["objectId"]
        row = table.filter(pl.col("candidate_id") == packet["candidate"]["candidate_id"])
        assert z.positive[k] == (row["sign"][0] > 0)
        # Science, reference and science - reference, whatever the sign: as the table has them.
        for channel, column in enumerate(
            ("cutout_science", "cutout_reference", "cutout_difference")
        ):
            original = row[column].to_numpy().reshape(SIZE, SIZE)
            np.testing.assert_array_equal(z.triplets[k, channel], original)
    assert np.isnan(z.drb).all() and np.isnan(z.rb).all()


def test_cutouts_decompress_to_the_tables_stamps_the_fading_difference_negated(survey):
    built = _night(survey)[1]
    table = _tonight_table(survey)
    signs = set()
    for packet in built.packets:
        row = table.filter(pl.col("candidate_id") == packet["candidate"]["candidate_id"])
        stamp = {c: row[c].to_numpy().reshape(SIZE, SIZE) for c in table.columns if "cutout" in c}
        np.testing.assert_array_equal(
            read_stamp(packet["cutoutScience"]["stampData"]), stamp["cutout_science"]
        )
        np.testing.assert_array_equal(
            read_stamp(packet["cutoutTemplate"]["stampData"]), stamp["cutout_reference"]
        )
        sign = 1 if packet["candidate"]["isdiffpos"] == "t" else -1
        signs.add(sign)
        np.testing.assert_array_equal(
            read_stamp(packet["cutoutDifference"]["stampData"]),
            sign * stamp["cutout_difference"],
        )
        assert packet["cutoutScience"]["fileName"] == f"candid{packet['candid']}_sci.fits.gz"
    assert signs == {1, -1}


def test_candidate_fields_follow_ztf_conventions(survey):
    packets = _by_id(_night(survey)[1].packets)
    table = _tonight_table(survey)
    fading = packets["2026-01-07_F01_0002"]["candidate"]
    row = table.filter(pl.col("candidate_id") == "2026-01-07_F01_0002").row(0, named=True)
    assert fading["isdiffpos"] == "f"
    assert fading["scorr"] == pytest.approx(abs(row["score_peak"])) and fading["scorr"] > 0
    assert fading["snr"] == pytest.approx(abs(row["snr"]))
    assert (fading["xpos"], fading["ypos"]) == pytest.approx((row["x"] + 1, row["y"] + 1))
    assert fading["jd"] == pytest.approx(row["mjd"] + 2400000.5)
    assert fading["magpsf"] == pytest.approx(row["mag"])
    assert fading["sigmapsf"] == pytest.approx(row["mag_err"])
    # A 5-sigma source sits at the limit: mag + 2.5 log10(snr / 5).
    assert fading["diffmaglim"] == pytest.approx(row["mag"] + 2.5 * np.log10(abs(row["snr"]) / 5))
    assert (fading["fid"], fading["band"], fading["field"]) == (2, "r", "F01")
    assert fading["ensemble"] == pytest.approx(0.7)


def test_a_night_without_scores_fails_naming_it_unless_scores_are_not_required(survey):
    (survey / "tables" / "candidate_scores" / NIGHTS[2] / "F02.parquet").unlink()
    with pytest.raises(ValueError, match=rf"night {NIGHTS[2]}: no candidate_scores for fields F02"):
        _night(survey)
    tables, built = _night(survey, require_scores=False)
    assert tables.unscored_fields == ["F02"]
    f02 = [p for p in built.packets if p["candidate"]["field"] == "F02"]
    assert len(f02) == 2  # no score cut for the unscored field, D included
    assert all(p["candidate"]["ensemble"] is None for p in f02)


def test_a_night_without_candidates_fails_naming_the_night(survey):
    with pytest.raises(ValueError, match="night 2026-02-01: no candidates table"):
        _night(survey, "2026-02-01")


def test_writing_a_night_again_replaces_its_packets(survey, tmp_path):
    folder = tmp_path / "alerts" / NIGHTS[2]
    built = _night(survey)[1]
    write_packets(built.packets, folder, replace=True)
    (folder / ".1.avro.tmp-dead").write_bytes(b"half")  # a killed write's leftover
    strict = _night(survey, min_ensemble=0.8)[1]
    written = write_packets(strict.packets, folder, replace=True)
    assert written.removed == 1
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{p['candid']}.avro" for p in strict.packets
    )


def _tonight_table(root) -> pl.DataFrame:
    return pl.concat(
        [
            pl.read_parquet(root / "tables" / "candidates" / NIGHTS[2] / f"{f}.parquet")
            for f in FIELDS
        ]
    )
