"""Detections associated across nights into objects, and their identifiers.

An *object* is a place on the sky where the survey detected something more
than once; every detection of it keeps the object's identifier and gains the
earlier detections as its history, as ZTF's objects do (Masci et al. 2019,
PASP 131, 018003, section 6: a candidate joins the object within 1.5 arcsec).

Nights are taken in order. A night's detections join the nearest existing
object within the radius (astropy ``match_to_catalog_sky``); those left join
an earlier detection of the same night within the radius (overlapping
fields, ``search_around_sky``) or start a new object. An object's position is
the mean of its detections' unit vectors, updated after each night. Because
only earlier nights decide a night's objects, associating night N again
after night N+1 has been observed gives the same objects.

Identifiers are derived from a detection, not counted, so they need no
shared state and come out the same on every run:

``candid``
    ``days since 2000-01-01 x 10^7 + field number x 10^4 + the detection's
    number on its image`` (field number 1..999 in the survey's list of
    fields, detection number 0..9999).
``objectId``
    ``AST`` + two-digit year of the object's first detection + seven letters
    that count, in base 26 from ``aaaaaaa``, ``(day of year x 1000 + field
    number) x 10^4 + detection number`` of that first detection: ZTF's shape
    (``ZTF18abcdefg``), one id per first detection.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord

__all__ = [
    "MATCH_RADIUS_ARCSEC",
    "Association",
    "associate",
    "candid_of",
    "field_numbers",
    "object_id_of",
]

MATCH_RADIUS_ARCSEC = 1.5
EPOCH = dt.date(2000, 1, 1)
MAX_FIELD_NUMBER = 999
MAX_DETECTION_NUMBER = 9999
LETTERS = "abcdefghijklmnopqrstuvwxyz"
NAME_LETTERS = 7


def field_numbers(fields: Sequence[str]) -> dict[str, int]:
    """Each field's number: its 1-based place in the survey's list of fields."""
    if len(set(fields)) != len(fields):
        raise ValueError(f"the survey's fields must be distinct, got {list(fields)}")
    if len(fields) > MAX_FIELD_NUMBER:
        raise ValueError(f"at most {MAX_FIELD_NUMBER} fields can be numbered, got {len(fields)}")
    return {field: k + 1 for k, field in enumerate(fields)}


def _check(field_number: int, number: int) -> None:
    if not 1 <= field_number <= MAX_FIELD_NUMBER:
        raise ValueError(f"a field number is 1 to {MAX_FIELD_NUMBER}, got {field_number}")
    if not 0 <= number <= MAX_DETECTION_NUMBER:
        raise ValueError(
            f"a detection number is 0 to {MAX_DETECTION_NUMBER} on one image, got {number}"
        )


def candid_of(night: str, field_number: int, number: int) -> int:
    """The ``candid`` of detection ``number`` of field ``field_number`` on ``night``."""
    _check(field_number, number)
    days = (dt.date.fromisoformat(night) - EPOCH).days
    return days * 10**7 + field_number * 10**4 + number


def object_id_of(candid: int) -> str:
    """The ``objectId`` of an object whose first detection is ``candid``."""
    days, rest = divmod(int(candid), 10**7)
    field_number, number = divmod(rest, 10**4)
    _check(field_number, number)
    date = EPOCH + dt.timedelta(days=days)
    count = ((date.timetuple().tm_yday - 1) * 1000 + field_number) * 10**4 + number
    letters = []
    for _ in range(NAME_LETTERS):
        count, digit = divmod(count, len(LETTERS))
        letters.append(LETTERS[digit])
    return f"AST{date.year % 100:02d}{''.join(reversed(letters))}"


@dataclass(frozen=True)
class Association:
    """Detections grouped into objects.

    Attributes
    ----------
    object_id : (n,) str
        Each detection's object.
    first : (n,) bool
        The detection started its object.
    n_objects : int
        Distinct objects.
    """

    object_id: np.ndarray
    first: np.ndarray
    n_objects: int


def _unit_vectors(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def _coords(vectors: np.ndarray) -> SkyCoord:
    x, y, z = vectors.T
    ra = np.degrees(np.arctan2(y, x)) % 360.0
    dec = np.degrees(np.arctan2(z, np.hypot(x, y)))
    return SkyCoord(ra * u.deg, dec * u.deg)


def associate(
    ra: np.ndarray,
    dec: np.ndarray,
    night: np.ndarray,
    candid: np.ndarray,
    radius_arcsec: float = MATCH_RADIUS_ARCSEC,
) -> Association:
    """Group detections of any number of nights into objects (see the module docstring).

    Parameters
    ----------
    ra, dec : (n,) float
        Positions in degrees, finite.
    night : (n,) str
        Each detection's night, ``YYYY-MM-DD``.
    candid : (n,) int
        Each detection's :func:`candid_of`; orders a night's detections and
        names the objects.
    radius_arcsec : float
        Largest distance from a detection to its object.

    Returns
    -------
    Association
    """
    ra, dec = np.asarray(ra, np.float64), np.asarray(dec, np.float64)
    night, candid = np.asarray(night, str), np.asarray(candid, np.int64)
    n = len(ra)
    if not len(dec) == len(night) == len(candid) == n:
        raise ValueError("ra, dec, night and candid must have one value per detection")
    if not (np.isfinite(ra).all() and np.isfinite(dec).all()):
        raise ValueError("every detection to associate needs a finite ra and dec")
    if radius_arcsec <= 0:
        raise ValueError(f"the match radius must be positive, got {radius_arcsec} arcsec")
    radius = radius_arcsec * u.arcsec
    vectors = _unit_vectors(ra, dec)
    label = np.full(n, -1, np.int64)
    first = np.zeros(n, bool)
    sums = np.empty((0, 3))
    founders: list[int] = []
    order = np.lexsort((candid, night))
    bounds = np.flatnonzero(night[order][1:] != night[order][:-1]) + 1
    for rows in np.split(order, bounds) if n else []:
        coords = SkyCoord(ra[rows] * u.deg, dec[rows] * u.deg)
        matched = np.zeros(len(rows), bool)
        if founders:
            nearest, separation, _ = coords.match_to_catalog_sky(_coords(sums))
            matched = separation <= radius
            label[rows[matched]] = nearest[matched]
        rest = rows[~matched]
        if len(rest):
            label[rest], started = _same_night(coords[~matched], radius, len(founders))
            founders += rest[started].tolist()
            first[rest[started]] = True
        sums = np.vstack([sums, np.zeros((len(founders) - len(sums), 3))])
        np.add.at(sums, label[rows], vectors[rows])
    names = np.array([object_id_of(c) for c in candid[founders]], dtype=str)
    return Association(
        object_id=names[label] if n else np.array([], dtype=str),
        first=first,
        n_objects=len(founders),
    )


def _same_night(coords: SkyCoord, radius: u.Quantity, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Objects for one night's unmatched detections (in candid order): each joins the
    object of its first earlier neighbour within ``radius``, or starts object ``start + k``."""
    n = len(coords)
    partner = np.full(n, n, np.int64)
    if n > 1:
        one, other, _, _ = coords.search_around_sky(coords, radius)
        earlier = other < one
        np.minimum.at(partner, one[earlier], other[earlier])
    label = np.empty(n, np.int64)
    started = np.zeros(n, bool)
    count = start
    for k in range(n):
        if partner[k] < n:
            label[k] = label[partner[k]]
        else:
            label[k] = count
            started[k] = True
            count += 1
    return label, started
