"""Reading real ZTF alert packets into raw triplets, and scoring against braai's ``drb``."""

from __future__ import annotations

import gzip
import shutil
from collections import Counter
from pathlib import Path

import fastavro
import numpy as np
import pytest
from astropy.io import fits

from astrid_assets.ml.ztf import (
    MalformedAlertWarning,
    ZtfTriplets,
    alert_files,
    drb_labels,
    evaluate_against_drb,
    known_asteroids,
    read_ztf_alerts,
)

# Packets per folder, as the README counts them; every file holds exactly one.
PACKETS = {"alerce": 98, "kowalski": 36, "official": 2}
CENTRE = 31


@pytest.fixture(scope="module")
def ztf_root(real_data: Path) -> Path:
    return real_data / "ztf_alerts"


@pytest.fixture(scope="module")
def raw_packets(ztf_root: Path) -> dict[str, dict]:
    """Every packet as fastavro gives it, by file, to check the reader against."""
    packets = {}
    for path in alert_files(ztf_root):
        with path.open("rb") as stream:
            (packets[str(path)],) = list(fastavro.reader(stream))
    return packets


@pytest.fixture(scope="module")
def alerts(ztf_root: Path) -> ZtfTriplets:
    problems: list[tuple[Path, str]] = []
    z = read_ztf_alerts(alert_files(ztf_root), on_error=lambda p, r: problems.append((p, r)))
    assert problems == []
    return z


def folder_of(z: ZtfTriplets, ztf_root: Path) -> np.ndarray:
    return np.array([Path(s).relative_to(ztf_root).parts[0] for s in z.source])


def oriented(z: ZtfTriplets) -> np.ndarray:
    """What ``orient_triplets`` does: (reference, science, -difference) where not positive."""
    flipped = np.stack([z.triplets[:, 1], z.triplets[:, 0], -z.triplets[:, 2]], axis=1)
    return np.where(z.positive[:, None, None, None], z.triplets, flipped)


def centre_snr(difference: np.ndarray) -> np.ndarray:
    """Mean of the central 3x3 pixels over its noise (robust sigma / 3)."""
    centre = np.nanmean(difference[:, CENTRE - 1 : CENTRE + 2, CENTRE - 1 : CENTRE + 2], (1, 2))
    median = np.nanmedian(difference, axis=(1, 2), keepdims=True)
    sigma = 1.4826 * np.nanmedian(np.abs(difference - median), axis=(1, 2))
    return centre / (sigma / 3)


def test_every_packet_of_the_real_alerts_is_read(
    alerts: ZtfTriplets, ztf_root: Path, raw_packets: dict[str, dict]
) -> None:
    folders = folder_of(alerts, ztf_root)
    assert Counter(folders) == PACKETS
    files = Counter(Path(p).relative_to(ztf_root).parts[0] for p in raw_packets)
    assert files == PACKETS
    assert alerts.triplets.shape == (136, 3, 63, 63)
    assert alerts.triplets.dtype == np.float32
    assert alerts.candid.dtype == np.int64
    assert list(alerts.source) == list(raw_packets)
    expected = [p["candidate"]["candid"] for p in raw_packets.values()]
    np.testing.assert_array_equal(alerts.candid, expected)
    assert list(alerts.object_id) == [p["objectId"] for p in raw_packets.values()]
    # The top-level candid is missing from 92 alerce packets; the candidate's is always there.
    assert sum(p.get("candid") is None for p in raw_packets.values()) == 92
    assert len(set(alerts.candid)) == 136


def test_isdiffpos_sets_positive(alerts: ZtfTriplets, ztf_root: Path) -> None:
    folders = folder_of(alerts, ztf_root)
    assert not alerts.positive[folders == "alerce"].any()
    assert alerts.positive[folders == "kowalski"].sum() == 33
    assert alerts.positive[folders == "official"].sum() == 1


def test_drb_is_there_where_ztf_scored_with_braai(
    alerts: ZtfTriplets, ztf_root: Path, raw_packets: dict[str, dict]
) -> None:
    folders = folder_of(alerts, ztf_root)
    schema = np.array([p["schemavsn"] for p in raw_packets.values()])
    has_drb = np.isfinite(alerts.drb)
    assert has_drb[folders == "kowalski"].all()
    # official: schema 3.2 predates drb, 3.3 has it.
    assert has_drb[folders == "official"].tolist() == [False, True]
    # alerce: the 40 packets of schemas 3.0-3.2 carry drb = 0.0 with an empty drbversion, a
    # fill value from their re-encoding; the 58 of schema 3.3 carry braai's score.
    alerce = folders == "alerce"
    assert (has_drb[alerce] == (schema[alerce] == "3.3")).all()
    filled = [
        (p["candidate"]["drb"], p["candidate"]["drbversion"])
        for p, folder in zip(raw_packets.values(), folders, strict=True)
        if folder == "alerce" and p["schemavsn"] < "3.3"
    ]
    assert filled == [(0.0, "")] * 40
    assert (alerts.drb[alerce] > 0.5).sum() == 43
    assert (alerts.drb[alerce] < 0.1).sum() == 8
    assert (alerts.drb[folders == "kowalski"] > 0.5).sum() == 34
    assert np.isfinite(alerts.rb).all()


def test_the_kowalski_asteroids_are_known(alerts: ZtfTriplets, ztf_root: Path) -> None:
    folders = folder_of(alerts, ztf_root)
    asteroid = known_asteroids(alerts)
    assert asteroid.sum() == 15
    assert (folders[asteroid] == "kowalski").all()
    assert (alerts.ssdistnr[asteroid] < 10).all()
    # ZTF's -999 for "no known object nearby" reads as NaN: here, every other alert.
    assert np.isnan(alerts.ssdistnr[~asteroid]).all()


def test_stamps_cut_at_the_ccd_edge_keep_the_candidate_at_the_centre(
    alerts: ZtfTriplets, raw_packets: dict[str, dict]
) -> None:
    shapes = [_stamp_shape(p["cutoutDifference"]["stampData"]) for p in raw_packets.values()]
    short = [k for k, shape in enumerate(shapes) if shape != (63, 63)]
    assert len(short) == 8
    for k in short:
        difference = np.abs(np.nan_to_num(oriented(alerts.subset([k]))[0, 2]))
        peak = np.unravel_index(np.argmax(difference), difference.shape)
        assert np.hypot(peak[0] - CENTRE, peak[1] - CENTRE) <= 1.5, alerts.object_id[k]
        blank = np.isnan(alerts.triplets[k])
        rows, columns = shapes[k]
        assert blank.all(axis=(0, 2)).sum() >= 63 - rows
        assert blank.all(axis=(0, 1)).sum() >= 63 - columns


def _stamp_shape(stamp: bytes) -> tuple[int, int]:
    header = fits.Header.fromstring(gzip.decompress(stamp)[:2880])
    return header["NAXIS2"], header["NAXIS1"]


def test_blank_pixels_are_nan(alerts: ZtfTriplets) -> None:
    # Four reference stamps mark blanks with -3.4e38; they read as NaN like the other blanks.
    assert np.nanmax(np.abs(alerts.triplets)) < 1e7
    blank = np.isnan(alerts.triplets)
    assert (blank[:, 0] == blank[:, 2]).all()


def test_after_orientation_every_difference_shows_a_brightening(alerts: ZtfTriplets) -> None:
    triplets = oriented(alerts)
    snr = centre_snr(triplets[:, 2])
    clear = np.abs(snr) > 5
    # Every one of the 136 difference stamps has a clear source at its centre, and after the
    # flip by isdiffpos every one is positive.
    assert clear.sum() == 136
    assert (snr[clear] > 0).sum() == 136
    # ... and consistent with the images: difference ~ +science - reference. Where a linear
    # fit D = a S + b R + c explains the centre well (70 alerts), a > 0 in 67; the three
    # others sit on bright, badly subtracted stars.
    a, r2 = _fit_difference(triplets)
    good = r2 > 0.8
    assert good.sum() >= 60
    assert (a[good] > 0).mean() >= 0.9
    # Stored as science - reference, the difference of each of the 102 "f" alerts is negative
    # at the centre before orientation: ZTF's own "f" stamp (reference - science) negated.
    stored = centre_snr(alerts.triplets[:, 2])
    assert ((stored > 0) == alerts.positive).all()
    assert (~alerts.positive).sum() == 102


def _fit_difference(triplets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per triplet, ``a`` and R^2 of D = a S + b R + c within 12 px of the centre."""
    yy, xx = np.mgrid[:63, :63]
    near = np.hypot(yy - CENTRE, xx - CENTRE) <= 12
    a, r2 = [], []
    for science, reference, difference in triplets:
        m = near & np.isfinite(science) & np.isfinite(reference) & np.isfinite(difference)
        design = np.c_[science[m], reference[m], np.ones(m.sum())]
        coef, *_ = np.linalg.lstsq(design, difference[m], rcond=None)
        residual = difference[m] - design @ coef
        a.append(coef[0])
        r2.append(1 - residual.var() / difference[m].var())
    return np.array(a), np.array(r2)


def test_evaluate_against_drb_ranks_drb_itself_perfectly(alerts: ZtfTriplets) -> None:
    drb = np.nan_to_num(alerts.drb)
    result = evaluate_against_drb(drb, alerts)
    assert result["roc_auc"] == 1.0
    assert result["non_asteroid"]["roc_auc"] == 1.0
    assert evaluate_against_drb(-drb, alerts)["roc_auc"] == 0.0
    assert evaluate_against_drb(-drb, alerts)["non_asteroid"]["roc_auc"] == 0.0
    assert {k: result[k] for k in ("n", "n_real", "n_bogus", "n_without_drb")} == {
        "n": 95,
        "n_real": 78,
        "n_bogus": 17,
        "n_without_drb": 41,
    }
    assert result["non_asteroid"]["n_real"] == 78 - 15
    assert all(type(name) is str for name in result["by_folder"])
    assert result["by_folder"] == {
        "alerce": {"n": 58, "n_real": 43, "n_bogus": 15, "n_without_drb": 40, "n_asteroids": 0},
        "kowalski": {"n": 36, "n_real": 34, "n_bogus": 2, "n_without_drb": 0, "n_asteroids": 15},
        "official": {"n": 1, "n_real": 1, "n_bogus": 0, "n_without_drb": 1, "n_asteroids": 0},
    }


def test_evaluate_against_drb_refuses_scores_that_do_not_match(alerts: ZtfTriplets) -> None:
    with pytest.raises(ValueError, match="shape"):
        evaluate_against_drb(np.zeros(3), alerts)
    with pytest.raises(ValueError, match="finite"):
        evaluate_against_drb(np.full(len(alerts), np.nan), alerts)


def test_drb_labels_leave_out_the_alerts_without_drb(alerts: ZtfTriplets) -> None:
    labels = drb_labels(alerts)
    assert labels.mask.sum() == len(labels.labels) == 95
    assert labels.labels.sum() == 78
    np.testing.assert_array_equal(labels.labels, alerts.drb[labels.mask] > 0.5)
    assert drb_labels(alerts, threshold=0.99).labels.sum() < 78


def test_malformed_files_are_reported_by_name_and_skipped(ztf_root: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.avro"
    shutil.copy(alert_files(ztf_root / "official")[1], good)
    truncated = tmp_path / "truncated.avro"
    whole = good.read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])  # past the header, inside the packet
    not_avro = tmp_path / "not_avro.avro"
    not_avro.write_text("SIMPLE  =  T\nthis is not an Avro file\n")
    problems: list[tuple[Path, str]] = []
    z = read_ztf_alerts([truncated, not_avro, good], on_error=lambda p, r: problems.append((p, r)))
    assert [p for p, _ in problems] == [truncated, not_avro]
    assert "EOFError" in problems[0][1]
    assert list(z.source) == [str(good)]
    assert z.object_id.tolist() == ["ZTF17aaajnnn"]

    with pytest.warns(MalformedAlertWarning, match="truncated.avro"):
        assert len(read_ztf_alerts([truncated, good])) == 1


def test_each_packet_of_a_file_is_read_and_a_bad_one_skipped(
    ztf_root: Path, tmp_path: Path
) -> None:
    source = alert_files(ztf_root / "official")[1]
    with source.open("rb") as stream:
        reader = fastavro.reader(stream)
        schema = reader.writer_schema
        (packet,) = list(reader)
    plain = dict(packet)
    for name in ("cutoutScience", "cutoutTemplate", "cutoutDifference"):
        cutout = packet[name]
        plain[name] = {**cutout, "stampData": gzip.decompress(cutout["stampData"])}
    no_difference = {**packet, "cutoutDifference": None}
    path = tmp_path / "three.avro"
    with path.open("wb") as stream:
        fastavro.writer(stream, fastavro.parse_schema(schema), [packet, no_difference, plain])

    problems: list[tuple[Path, str]] = []
    z = read_ztf_alerts([path], on_error=lambda p, r: problems.append((p, r)))
    assert problems == [(path, "packet 1: cutoutDifference is missing")]
    assert len(z) == 2
    # A plain FITS stamp reads the same as the gzipped one.
    np.testing.assert_array_equal(z.triplets[0], z.triplets[1])


def test_subset_keeps_the_rows_together(alerts: ZtfTriplets) -> None:
    asteroids = alerts.subset(known_asteroids(alerts))
    assert len(asteroids) == 15
    assert (asteroids.ssdistnr < 10).all()
    np.testing.assert_array_equal(asteroids.triplets, alerts.triplets[known_asteroids(alerts)])
    assert len(alerts.subset(np.zeros(len(alerts), bool))) == 0
    assert read_ztf_alerts([]).triplets.shape == (0, 3, 63, 63)
