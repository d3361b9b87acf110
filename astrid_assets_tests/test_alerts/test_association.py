"""Detections into objects across nights: one id per object, nothing merged beyond the radius."""

from __future__ import annotations

import numpy as np
import pytest

from astrid_assets.alerts.association import associate, candid_of, object_id_of

from .conftest import DEC0, RA0, offset

NIGHTS = ["2026-01-05", "2026-01-06", "2026-01-07"]


def _detections(rows):
    """(night, field number, number, ra, dec) rows as associate's arrays."""
    night = np.array([r[0] for r in rows])
    candid = np.array([candid_of(r[0], r[1], r[2]) for r in rows])
    ra = np.array([r[3] for r in rows])
    dec = np.array([r[4] for r in rows])
    return ra, dec, night, candid


def test_a_source_on_three_nights_is_one_object_named_by_its_first_detection():
    rows = [
        (night, 1, 7 + k, *offset(RA0, DEC0, 0.4 * (-1) ** k, 0.3 * k))
        for k, night in enumerate(NIGHTS)
    ]
    ra, dec, night, candid = _detections(rows)
    grouping = associate(ra, dec, night, candid)
    assert grouping.n_objects == 1
    assert set(grouping.object_id) == {object_id_of(candid[0])}
    assert grouping.first.tolist() == [True, False, False]


def test_two_sources_5_arcsec_apart_stay_two_objects_every_night():
    rows = []
    for night in NIGHTS:
        rows.append((night, 1, 1, RA0, DEC0))
        rows.append((night, 1, 2, *offset(RA0, DEC0, 3.0, 4.0)))  # 5 arcsec away
    ra, dec, night, candid = _detections(rows)
    grouping = associate(ra, dec, night, candid, radius_arcsec=1.5)
    assert grouping.n_objects == 2
    ids = grouping.object_id.reshape(3, 2)
    assert (ids[:, 0] == ids[0, 0]).all() and (ids[:, 1] == ids[0, 1]).all()
    assert ids[0, 0] != ids[0, 1]


def test_the_same_source_in_two_overlapping_fields_of_one_night_is_one_object():
    rows = [
        (NIGHTS[0], 2, 5, *offset(RA0, DEC0, 0.5, 0.0)),
        (NIGHTS[0], 1, 9, RA0, DEC0),
        (NIGHTS[1], 2, 3, *offset(RA0, DEC0, 0.2, 0.2)),
    ]
    ra, dec, night, candid = _detections(rows)
    grouping = associate(ra, dec, night, candid)
    assert grouping.n_objects == 1
    # The first detection is the night's lowest candid: field 1's.
    assert set(grouping.object_id) == {object_id_of(candid_of(NIGHTS[0], 1, 9))}
    assert grouping.first.tolist() == [False, True, False]


def test_a_night_associated_again_after_later_nights_keeps_its_objects():
    rng = np.random.default_rng(1)
    base = [(RA0 + rng.uniform(0, 0.5), DEC0 + rng.uniform(0, 0.5)) for _ in range(40)]
    rows = [
        (night, 1, k, *offset(ra, dec, *rng.normal(0, 0.3, 2)))
        for n, night in enumerate(NIGHTS)
        for k, (ra, dec) in enumerate(base)
        if (k + n) % 3
    ]
    ra, dec, night, candid = _detections(rows)
    every = associate(ra, dec, night, candid)
    first_two = night != NIGHTS[2]
    again = associate(ra[first_two], dec[first_two], night[first_two], candid[first_two])
    np.testing.assert_array_equal(again.object_id, every.object_id[first_two])
    assert every.n_objects == 40


def test_identifiers_are_ztf_shaped_and_checked():
    candid = candid_of("2026-01-05", 3, 42)
    assert candid == 9501 * 10**7 + 3 * 10**4 + 42
    name = object_id_of(candid)
    assert name.startswith("AST26") and len(name) == 12 and name[5:].isalpha()
    assert object_id_of(candid_of("2026-01-05", 3, 43)) != name
    assert object_id_of(candid_of("2027-01-05", 3, 42)).startswith("AST27")
    with pytest.raises(ValueError, match="detection number"):
        candid_of("2026-01-05", 3, 10_000)
    with pytest.raises(ValueError, match="field number"):
        candid_of("2026-01-05", 0, 1)


def test_positions_must_be_finite():
    with pytest.raises(ValueError, match="finite ra and dec"):
        associate(np.array([np.nan]), np.array([0.0]), np.array(["2026-01-05"]), np.array([1]))
