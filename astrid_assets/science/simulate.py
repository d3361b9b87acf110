"""The embedded simulated survey: a seeded sky, camera and weather.

With no archive reachable, AstrID runs on this survey. It is meant to be
hard enough to be honest: every defect a real pipeline must cope with is
there, and every injected thing is listed in a truth table.

* **Sky.** Each field has a static catalogue of stars (power-law number
  counts from saturated to below the detection limit) and Sersic galaxies
  (Sersic 1963), placed on the field's nominal TAN grid
  (:func:`field_catalog`, :func:`field_wcs`). Its bright stars, with small
  magnitude errors, are the photometric reference catalogue
  (:func:`reference_catalog`).
* **Transients.** Supernovae in host galaxies with Bazin et al. (2009,
  A&A 499, 653) light curves, periodic variable stars, asteroids moving
  across the field from night to night (trailed within the exposure), and
  one-night stellar flares. The populations are fixed by the seed, so an
  object keeps its id across nights.
* **Observing conditions.** Per night and field (:func:`night_conditions`):
  the time of the exposure at a mid-latitude site, airmass from the hour
  angle, Moffat seeing, moon-lit sky, clouds, the zero point, pointing
  jitter and rotation, and now and then a header WCS that is a few pixels
  off.
* **Camera.** Sources are rendered in electrons with the night's PSF, the
  sky added, multiplied by the flat, Poisson noise drawn, saturation at
  full well with charge-conserving bleeding along columns, cosmic rays, hot
  pixels, read noise, gain, a structured bias and 16-bit digitisation
  (:func:`simulate_exposure`). The detector (:func:`detector_defects`) is
  the same every night; :func:`simulate_calibration_frames` gives the bias
  and flat frames that calibrate it.

Rates of transients are far above those of the real sky, so that every
field has several of each kind over a month. Pixel convention: 0-based,
``x`` the column, ``y`` the row, the centre of the first pixel at (0, 0);
``shape`` is ``(ny, nx)``. Images are ADU; ``gain`` is electrons per ADU.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from astropy.io import fits
from astropy.table import Table, vstack
from astropy.wcs import WCS
from scipy import fft as sfft
from scipy import ndimage

from astrid_assets.science.psf import moffat_psf, psf_to_image_shape

__all__ = [
    "CalibrationFrames",
    "DetectorDefects",
    "NightConditions",
    "NightOverride",
    "SimulatedExposure",
    "SurveyConfig",
    "detector_defects",
    "field_catalog",
    "field_names",
    "field_supernovae",
    "field_variables",
    "field_wcs",
    "night_conditions",
    "reference_catalog",
    "simulate_calibration_frames",
    "simulate_exposure",
    "supernova_mag",
    "survey_nights",
    "variable_flux_ratio",
]

TELESCOPE = "AstrID-Sim 1.2m"
INSTRUMENT = "AstrID-SimCam"

# Purposes of the random streams; each stream is seeded by
# SeedSequence([seed, purpose, ...keys]) so that streams never overlap.
_CATALOG, _NIGHT, _FIELD_NIGHT, _EXPOSURE, _DETECTOR = 1, 2, 3, 4, 5
_CALIBRATION, _SUPERNOVA, _ASTEROID, _FLARE, _VARIABLE = 6, 7, 8, 9, 10
_REFCAT, _FIELDS = 11, 12
_OFFSET = 1 << 20  # keeps negative block numbers non-negative in a seed

_CATALOG_MARGIN = 100  # px of sky catalogued beyond each edge of the frame
_PAD = 64  # px of canvas beyond each edge, where off-frame light is rendered
_PSF_HALF = 50  # half-size of the rendering PSF stamp (101 x 101)
_PHASES = 8  # sub-pixel phases per axis of the tabulated PSF
_BLOCK_DAYS = 30.0  # supernovae are drawn per block of this many days
_ASTEROID_BLOCK_DAYS = 10.0
_MJD_EPOCH = dt.datetime(1858, 11, 17)
_FAINTEST_SUPERNOVA = 25.0  # mag; fainter ones are neither rendered nor listed
_ADC_MAX = 65535.0


@dataclass(frozen=True)
class NightOverride:
    """Weather forced on one night: a bad night on purpose.

    The night's conditions are drawn as on any other night and then
    changed, so every random stream (and every other night) stays as it
    was. Used to test what watches the data (the drift report): a night of
    poor seeing under grey cloud.

    Attributes
    ----------
    night : str
        The night, ``YYYY-MM-DD``.
    seeing_factor : float
        The night's seeing FWHM is multiplied by this (the PSF is still
        clipped to 6 px FWHM).
    zero_point_offset : float
        Magnitudes added to the zero point of every exposure of the night;
        negative is a loss of throughput, as a grey cloud: sources and sky
        both fainter in ADU, the limiting magnitude shallower.
    """

    night: str
    seeing_factor: float = 1.0
    zero_point_offset: float = 0.0

    def __post_init__(self) -> None:
        try:
            dt.date.fromisoformat(str(self.night))
        except ValueError:
            raise ValueError(
                f"NightOverride.night must be a date as 'YYYY-MM-DD', got {self.night!r}"
            ) from None
        if not (np.isfinite(self.seeing_factor) and self.seeing_factor > 0):
            raise ValueError(
                f"NightOverride.seeing_factor must be a positive number, got {self.seeing_factor!r}"
            )
        if not np.isfinite(self.zero_point_offset):
            raise ValueError(
                f"NightOverride.zero_point_offset must be finite, got {self.zero_point_offset!r}"
            )


@dataclass(frozen=True)
class SurveyConfig:
    """Parameters of the simulated survey.

    Densities and rates are per 1000 x 1000 pixels and scale with the area
    of ``shape``, so a small test image is a fair cut-out of a full one.

    Attributes
    ----------
    seed : int
        Seed of everything; the same config gives byte-identical output.
    n_fields : int
        Number of pointings.
    shape : (int, int)
        Detector size ``(ny, nx)`` in pixels.
    pixel_scale : float
        Arcsec per pixel.
    filter : str
        Band name written to the headers (the defaults are r-band values).
    exptime : float
        Science exposure time, seconds.
    gain : float
        Electrons per ADU.
    read_noise : float
        Electrons (rms).
    saturation : float
        Full well expressed in ADU above the bias; charge beyond it bleeds.
    bias_level : float
        Mean bias level, ADU.
    start_night : str
        First survey night, ``YYYY-MM-DD`` (UTC date of the evening).
    site_longitude, site_latitude : float
        Observatory, degrees (east positive).
    zero_point : float
        Magnitude giving 1 ADU in one ``exptime`` exposure at airmass 1 in a
        clear sky (bias subtracted, flat fielded).
    extinction : float
        Atmospheric extinction, magnitudes per airmass.
    sky_brightness : float
        Dark-sky brightness at zenith, mag per square arcsec.
    seeing_median : float
        Median seeing FWHM at zenith, arcsec.
    star_density, galaxy_density : float
        Number of stars / galaxies within ``star_mag_range`` /
        ``galaxy_mag_range`` per 1000 x 1000 px.
    star_mag_range, galaxy_mag_range : (float, float)
        Brightest and faintest magnitudes drawn.
    star_count_slope, galaxy_count_slope : float
        ``d log10 N / dm`` of the number counts (0.6 is Euclidean; star
        counts away from the Galactic plane are flatter).
    supernova_rate : float
        Supernovae peaking per 30 days per 1000 x 1000 px.
    variable_fraction : float
        Fraction of stars brighter than 22 mag that vary periodically.
    asteroid_density : float
        Mean number of asteroids in a 1000 x 1000 px frame at any time.
    flare_rate : float
        Stellar flares per night per 1000 x 1000 px.
    streak_probability : float
        Probability that an exposure has a satellite streak.
    cosmic_ray_rate : float
        Cosmic-ray events per 1000 x 1000 px per minute of exposure.
    hot_pixel_density : float
        Hot pixels per 1000 x 1000 px.
    n_bad_columns : int
        Dead (low-response) columns on the detector.
    wcs_error_fraction : float
        Fraction of exposures whose header WCS is off by a few pixels.
    max_jitter : float
        Largest pointing offset from the field centre, pixels per axis.
    max_rotation : float
        Largest rotation of an exposure about the field centre, degrees.
    night_overrides : tuple of NightOverride
        Nights whose weather is forced (:class:`NightOverride`); empty by
        default, and no other night changes.
    """

    seed: int = 20260105
    n_fields: int = 4
    shape: tuple[int, int] = (2048, 2048)
    pixel_scale: float = 1.0
    filter: str = "r"
    exptime: float = 60.0
    gain: float = 1.6
    read_noise: float = 6.0
    saturation: float = 60000.0
    bias_level: float = 1000.0
    start_night: str = "2026-01-05"
    site_longitude: float = -116.86
    site_latitude: float = 33.36
    zero_point: float = 28.0
    extinction: float = 0.12
    sky_brightness: float = 21.0
    seeing_median: float = 2.2
    star_density: float = 1000.0
    star_mag_range: tuple[float, float] = (11.0, 24.5)
    star_count_slope: float = 0.25
    galaxy_density: float = 600.0
    galaxy_mag_range: tuple[float, float] = (16.0, 24.5)
    galaxy_count_slope: float = 0.4
    supernova_rate: float = 1.0
    variable_fraction: float = 0.01
    asteroid_density: float = 0.5
    flare_rate: float = 0.4
    streak_probability: float = 0.1
    cosmic_ray_rate: float = 8.0
    hot_pixel_density: float = 50.0
    n_bad_columns: int = 1
    wcs_error_fraction: float = 0.05
    max_jitter: float = 20.0
    max_rotation: float = 0.3
    night_overrides: tuple[NightOverride, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int | np.integer) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.n_fields < 1 or self.n_fields > 999:
            raise ValueError(f"n_fields must be between 1 and 999, got {self.n_fields!r}")
        if len(self.shape) != 2 or min(self.shape) < 64:
            raise ValueError(f"shape must be (ny, nx) with both >= 64 pixels, got {self.shape!r}")
        positive = ("pixel_scale", "exptime", "gain", "saturation", "seeing_median")
        for name in positive:
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        non_negative = (
            "read_noise",
            "bias_level",
            "extinction",
            "star_density",
            "galaxy_density",
            "supernova_rate",
            "asteroid_density",
            "flare_rate",
            "cosmic_ray_rate",
            "hot_pixel_density",
            "max_jitter",
            "max_rotation",
        )
        for name in non_negative:
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        for name in ("variable_fraction", "streak_probability", "wcs_error_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        for name in ("star_mag_range", "galaxy_mag_range"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(
                    f"{name} must be (bright, faint) with bright < faint, got {(lo, hi)}"
                )
        if self.n_bad_columns < 0 or self.n_bad_columns > self.shape[1] // 8:
            raise ValueError(f"n_bad_columns must be in [0, nx/8], got {self.n_bad_columns!r}")
        if not -90.0 < self.site_latitude < 90.0:
            raise ValueError(f"site_latitude must be in (-90, 90), got {self.site_latitude!r}")
        try:
            dt.date.fromisoformat(str(self.start_night))
        except ValueError:
            raise ValueError(
                f"start_night must be a date as 'YYYY-MM-DD', got {self.start_night!r}"
            ) from None
        if not isinstance(self.night_overrides, tuple) or not all(
            isinstance(o, NightOverride) for o in self.night_overrides
        ):
            raise ValueError(
                f"night_overrides must be a tuple of NightOverride, got {self.night_overrides!r}"
            )
        nights = [_parse_date(o.night) for o in self.night_overrides]
        if len(set(nights)) != len(nights):
            raise ValueError(f"night_overrides names a night twice: {sorted(map(str, nights))}")

    def night_override(self, night: str | dt.date) -> NightOverride | None:
        """The forced weather of ``night``, or None."""
        date = _parse_date(night)
        for override in self.night_overrides:
            if _parse_date(override.night) == date:
                return override
        return None

    @property
    def area_factor(self) -> float:
        """Detector area in units of 1000 x 1000 pixels."""
        return self.shape[0] * self.shape[1] / 1.0e6

    @property
    def full_well(self) -> float:
        """Full well in electrons."""
        return self.saturation * self.gain


@dataclass(frozen=True)
class NightConditions:
    """Observing conditions of one exposure (one night, one field).

    Attributes
    ----------
    night, field : str
        Survey night (``YYYY-MM-DD``) and field name.
    mjd : float
        MJD (UTC) at the start of the exposure.
    date_obs : str
        The same instant as ISO 8601.
    exptime : float
        Seconds.
    airmass, hour_angle : float
        Airmass and hour angle (hours) at mid-exposure.
    fwhm : float
        Seeing FWHM along the PSF's major axis, pixels (``fwhm_arcsec`` in
        arcsec); the PSF is :func:`~astrid_assets.science.psf.moffat_psf`
        with ``fwhm``, ``beta``, ``ellipticity`` and ``theta`` (radians,
        counter-clockwise from +x).
    sky_brightness : float
        Mag per square arcsec.
    sky : float
        Sky level, ADU per pixel (bias subtracted, flat fielded).
    moon_illumination : float
        Illuminated fraction of the moon.
    transparency : float
        Fraction of light passing the clouds (1 is clear).
    zero_point : float
        Magnitude giving 1 ADU in this exposure: the nominal zero point less
        extinction and cloud losses.
    limiting_mag : float
        5-sigma point-source limit (optimal PSF photometry on the sky noise).
    jitter_x, jitter_y : float
        Offset of the pointing from the field centre, pixels of the field grid.
    rotation : float
        Rotation of the exposure relative to the field grid, degrees.
    wcs_off : bool
        True when the header WCS is deliberately wrong.
    wcs_error_x, wcs_error_y : float
        Header-WCS pixel minus true pixel for any sky position (0 when right).
    """

    night: str
    field: str
    mjd: float
    date_obs: str
    exptime: float
    airmass: float
    hour_angle: float
    fwhm: float
    fwhm_arcsec: float
    beta: float
    ellipticity: float
    theta: float
    sky_brightness: float
    sky: float
    moon_illumination: float
    transparency: float
    zero_point: float
    limiting_mag: float
    jitter_x: float
    jitter_y: float
    rotation: float
    wcs_off: bool
    wcs_error_x: float
    wcs_error_y: float


@dataclass(frozen=True)
class DetectorDefects:
    """The simulated camera: fixed by ``config.seed``, the same every night.

    Attributes
    ----------
    bias : numpy.ndarray
        float32 ``(ny, nx)`` bias level in ADU: ``bias_level`` plus column
        and row patterns, a gradient, a faint fixed pattern and the hot
        pixels' offsets. Each frame adds a small offset of its own.
    flat : numpy.ndarray
        float32 relative response to light, median 1: vignetting, dust
        rings, pixel-to-pixel variations and the dead columns.
    hot_x, hot_y : numpy.ndarray
        Hot pixel positions (int).
    hot_bias : numpy.ndarray
        ADU each hot pixel shows in every frame, biases included (already in
        ``bias``).
    hot_dark : numpy.ndarray
        Dark current of each hot pixel, electrons per second.
    bad_columns : numpy.ndarray
        x of the dead columns.
    bad_column_start : numpy.ndarray
        First affected row of each dead column (it is dead to the top).
    bad_column_response : numpy.ndarray
        Response of each dead column relative to its neighbours.
    """

    bias: np.ndarray
    flat: np.ndarray
    hot_x: np.ndarray
    hot_y: np.ndarray
    hot_bias: np.ndarray
    hot_dark: np.ndarray
    bad_columns: np.ndarray
    bad_column_start: np.ndarray
    bad_column_response: np.ndarray


@dataclass
class SimulatedExposure:
    """A raw science exposure with everything that went into it.

    Attributes
    ----------
    data : numpy.ndarray
        float32 raw ADU as the camera reads it (whole numbers, 0..65535).
    header : astropy.io.fits.Header
        Camera header with the WCS of the pointing (wrong by
        ``conditions.wcs_error_x, wcs_error_y`` pixels when
        ``conditions.wcs_off``).
    truth : astropy.table.Table
        One row per astrophysical transient or variable in the frame:
        ``id`` (stable across nights), ``type`` (supernova, variable,
        asteroid, flare), ``x``, ``y`` (this exposure's pixels), ``ra``,
        ``dec`` (deg), ``flux`` (ADU, the object's total flux in this
        exposure), ``mag`` (of ``flux``), ``delta_flux`` (``flux`` less the
        object's flux in a typical reference: the mean flux for a variable,
        the quiescent star for a flare, nothing for a supernova or asteroid,
        whose ``delta_flux`` is therefore its whole ``flux``) and ``host_id``
        (catalogue id of the host galaxy or star, -1 if none).
    artefacts : astropy.table.Table
        Non-astrophysical features: ``type`` (cosmic_ray, hot_pixel,
        bad_column, streak, saturated_star), ``x``, ``y`` (centre, or start
        of a line), ``x_end``, ``y_end`` (end of a line, NaN for compact
        ones), ``value`` (peak ADU above bias; the relative response of a
        bad column) and ``npix`` (pixels affected).
    conditions : NightConditions
    psf : numpy.ndarray
        The true PSF: odd, centred, unit-sum stamp of about 8 FWHM.
    wcs : astropy.wcs.WCS
        The true WCS of this exposure.
    bias_offset : float
        This frame's bias offset (ADU) on top of ``DetectorDefects.bias``.
    """

    data: np.ndarray
    header: fits.Header
    truth: Table
    artefacts: Table
    conditions: NightConditions
    psf: np.ndarray
    wcs: WCS
    bias_offset: float


@dataclass
class CalibrationFrames:
    """A night's bias and twilight flat frames (raw ADU, float32).

    Attributes
    ----------
    night : str
    biases, flats : list of numpy.ndarray
    bias_headers, flat_headers : list of astropy.io.fits.Header
    bias_offsets : list of float
        Each bias frame's offset (ADU) on top of ``DetectorDefects.bias``.
    flat_levels : list of float
        Mean illumination of each flat, ADU before the flat pattern.
    """

    night: str
    biases: list[np.ndarray]
    bias_headers: list[fits.Header]
    flats: list[np.ndarray]
    flat_headers: list[fits.Header]
    bias_offsets: list[float]
    flat_levels: list[float]


# --------------------------------------------------------------------------
# Small helpers: dates, seeds, fields


def _parse_date(night: str | dt.date) -> dt.date:
    if isinstance(night, dt.datetime):
        return night.date()
    if isinstance(night, dt.date):
        return night
    try:
        return dt.date.fromisoformat(str(night))
    except ValueError:
        raise ValueError(f"night must be a date as 'YYYY-MM-DD', got {night!r}") from None


def _mjd_of_date(date: dt.date) -> float:
    return float((date - _MJD_EPOCH.date()).days)


def _iso_from_mjd(mjd: float) -> str:
    return (_MJD_EPOCH + dt.timedelta(days=float(mjd))).isoformat(timespec="milliseconds")


def _rng(config: SurveyConfig, purpose: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(config.seed), purpose, *keys]))


def field_names(config: SurveyConfig) -> list[str]:
    """Names of the survey's fields, ``F01``, ``F02``, ...."""
    return [f"F{i + 1:02d}" for i in range(config.n_fields)]


def _field_index(config: SurveyConfig, field: str | int) -> int:
    if isinstance(field, int | np.integer) and not isinstance(field, bool):
        if not 0 <= field < config.n_fields:
            raise ValueError(f"field index {field} is outside 0..{config.n_fields - 1}")
        return int(field)
    names = field_names(config)
    if field not in names:
        raise ValueError(f"unknown field {field!r}; the survey's fields are {names}")
    return names.index(field)


def survey_nights(config: SurveyConfig, n_nights: int) -> list[str]:
    """The first ``n_nights`` survey nights from ``config.start_night``.

    Returns
    -------
    list of str
        Consecutive ``YYYY-MM-DD`` dates (UTC date of the evening).
    """
    if n_nights < 1:
        raise ValueError(f"n_nights must be >= 1, got {n_nights!r}")
    start = _parse_date(config.start_night)
    return [(start + dt.timedelta(days=i)).isoformat() for i in range(n_nights)]


# --------------------------------------------------------------------------
# Sky geometry: sidereal time, sun, moon, airmass


def _gmst_hours(mjd: float) -> float:
    """Greenwich mean sidereal time (hours), good to a second a century."""
    return (18.697374558 + 24.06570982441908 * (mjd - 51544.5)) % 24.0


def _sun_radec(mjd: float) -> tuple[float, float]:
    """Low-precision solar RA and Dec in degrees (Astronomical Almanac)."""
    n = mjd - 51544.5
    mean_lon = math.radians((280.460 + 0.9856474 * n) % 360.0)
    anomaly = math.radians((357.528 + 0.9856003 * n) % 360.0)
    ecl_lon = mean_lon + math.radians(1.915 * math.sin(anomaly) + 0.020 * math.sin(2 * anomaly))
    obliquity = math.radians(23.439 - 4.0e-7 * n)
    ra = math.degrees(math.atan2(math.cos(obliquity) * math.sin(ecl_lon), math.cos(ecl_lon)))
    dec = math.degrees(math.asin(math.sin(obliquity) * math.sin(ecl_lon)))
    return ra % 360.0, dec


def _moon_illumination(mjd: float) -> float:
    """Illuminated fraction of the moon from the mean synodic month."""
    age = (mjd - 51549.76) % 29.530588853
    return 0.5 * (1.0 - math.cos(2.0 * math.pi * age / 29.530588853))


def _airmass(altitude_deg: float) -> float:
    """Kasten & Young (1989, Appl. Opt. 28, 4735) airmass."""
    alt = max(altitude_deg, 5.0)
    return 1.0 / (math.sin(math.radians(alt)) + 0.50572 * (alt + 6.07995) ** -1.6364)


def _night_window(config: SurveyConfig, date: dt.date) -> tuple[float, float]:
    """MJD of local midnight and half the length of astronomical darkness (days)."""
    midnight = _mjd_of_date(date) + 1.0 - config.site_longitude / 360.0
    _, sun_dec = _sun_radec(midnight)
    lat, dec = math.radians(config.site_latitude), math.radians(sun_dec)
    cos_h = (math.sin(math.radians(-15.0)) - math.sin(lat) * math.sin(dec)) / (
        math.cos(lat) * math.cos(dec)
    )
    sun_ha = math.degrees(math.acos(min(1.0, max(-1.0, cos_h)))) / 15.0
    half_dark = min(max(12.0 - sun_ha, 1.0), 6.5) / 24.0
    return midnight, half_dark


@lru_cache(maxsize=16)
def _field_centres(config: SurveyConfig) -> tuple[tuple[float, float], ...]:
    """Field centres near the anti-solar point of the first night, so that the
    fields are well placed for a winter (or any-season) run of a few months."""
    midnight, _ = _night_window(config, _parse_date(config.start_night))
    sun_ra, _ = _sun_radec(midnight)
    rng = _rng(config, _FIELDS)
    centres = []
    n = config.n_fields
    for i in range(n):
        ra = (sun_ra + 180.0 + 15.0 + (i - (n - 1) / 2.0) * 20.0 + rng.uniform(-2, 2)) % 360.0
        golden = (0.2 + 0.618034 * i) % 1.0
        dec = config.site_latitude - 22.0 + 32.0 * golden + rng.uniform(-1.5, 1.5)
        centres.append((float(ra), float(np.clip(dec, -85.0, 85.0))))
    return tuple(centres)


def field_wcs(config: SurveyConfig, field: str | int) -> WCS:
    """The nominal TAN WCS of a field: north up, east left, centred.

    References and the static catalogue live on this grid.
    """
    ra, dec = _field_centres(config)[_field_index(config, field)]
    return _tan_wcs(config, ra, dec, 0.0)


def _tan_wcs(config: SurveyConfig, ra: float, dec: float, rotation_deg: float) -> WCS:
    ny, nx = config.shape
    scale = config.pixel_scale / 3600.0
    rot = math.radians(rotation_deg)
    c, s = math.cos(rot), math.sin(rot)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    w.wcs.cd = np.array([[-scale * c, scale * s], [scale * s, scale * c]])
    w.wcs.radesys = "ICRS"
    w.wcs.cunit = ["deg", "deg"]
    w.pixel_shape = (nx, ny)
    w.wcs.set()
    return w


# --------------------------------------------------------------------------
# The static sky


def _power_law_mags(rng: np.random.Generator, n: int, lo: float, hi: float, slope: float):
    """Magnitudes with ``dN/dm`` proportional to ``10**(slope * m)`` on [lo, hi]."""
    u = rng.random(n)
    if slope == 0:
        return lo + (hi - lo) * u
    a, b = 10.0 ** (slope * lo), 10.0 ** (slope * hi)
    return np.log10(a + u * (b - a)) / slope


@lru_cache(maxsize=32)
def _catalog(config: SurveyConfig, field_index: int) -> Table:
    rng = _rng(config, _CATALOG, field_index)
    ny, nx = config.shape
    m = _CATALOG_MARGIN
    area = (nx + 2 * m) * (ny + 2 * m) / 1.0e6
    n_star = int(rng.poisson(config.star_density * area))
    n_gal = int(rng.poisson(config.galaxy_density * area))
    n = n_star + n_gal
    x = rng.uniform(-m - 0.5, nx - 0.5 + m, n)
    y = rng.uniform(-m - 0.5, ny - 0.5 + m, n)
    mag = np.concatenate(
        [
            _power_law_mags(rng, n_star, *config.star_mag_range, config.star_count_slope),
            _power_law_mags(rng, n_gal, *config.galaxy_mag_range, config.galaxy_count_slope),
        ]
    )
    # Galaxies: disks (n ~ 1), intermediate bulges and compact ellipticals.
    kind = rng.choice(3, size=n_gal, p=[0.6, 0.25, 0.15])
    sersic = np.choose(
        kind,
        [rng.uniform(0.8, 1.5, n_gal), rng.uniform(1.5, 3.0, n_gal), rng.uniform(3.0, 4.0, n_gal)],
    )
    r_eff = 1.2 * 10.0 ** (-0.2 * (mag[n_star:] - 20.0)) * rng.lognormal(0.0, 0.35, n_gal)
    r_eff = np.clip(np.where(kind == 2, 0.7 * r_eff, r_eff), 0.1, 15.0)
    axis_ratio = np.where(kind == 0, rng.uniform(0.25, 1.0, n_gal), rng.uniform(0.55, 1.0, n_gal))
    pa = rng.uniform(0.0, 180.0, n_gal)
    nan = np.full(n_star, np.nan)
    ra, dec = field_wcs(config, field_index).pixel_to_world_values(x, y)
    in_frame = (x > -0.5) & (x < nx - 0.5) & (y > -0.5) & (y < ny - 0.5)
    table = Table(
        {
            "id": np.arange(n, dtype=np.int64),
            "type": np.array(["star"] * n_star + ["galaxy"] * n_gal, dtype="U6"),
            "ra": np.asarray(ra, dtype=np.float64),
            "dec": np.asarray(dec, dtype=np.float64),
            "x": x,
            "y": y,
            "in_frame": in_frame,
            "mag": mag,
            "sersic_n": np.concatenate([nan, sersic]),
            "r_eff": np.concatenate([nan, r_eff]),
            "ellipticity": np.concatenate([nan, 1.0 - axis_ratio]),
            "pa": np.concatenate([nan, pa]),
            "variable": np.zeros(n, dtype=bool),
        }
    )
    table["variable"][_variables(config, field_index, table)["star_id"]] = True
    table["ra"].unit = table["dec"].unit = "deg"
    table["r_eff"].unit = "arcsec"
    table["pa"].unit = "deg"
    table.meta["field"] = field_names(config)[field_index]
    return table


def field_catalog(config: SurveyConfig, field: str | int) -> Table:
    """The static sky of a field: stars and Sersic galaxies.

    The catalogue covers the frame plus a margin of 100 px, so jittered
    exposures and light from just outside the frame are complete.

    Returns
    -------
    astropy.table.Table
        ``id`` (int, unique within the field), ``type`` ("star" or
        "galaxy"), ``ra``, ``dec`` (deg), ``x``, ``y`` (pixels of the
        nominal :func:`field_wcs` grid), ``in_frame``, ``mag`` (total, in
        the survey filter; the mean for variables), ``sersic_n``, ``r_eff``
        (half-light semi-major axis, arcsec), ``ellipticity`` (``1 - b/a``),
        ``pa`` (deg east of north) for galaxies (NaN for stars), and
        ``variable`` (the star is in :func:`field_variables`).
    """
    return _catalog(config, _field_index(config, field)).copy()


def reference_catalog(config: SurveyConfig, field: str | int) -> Table:
    """Photometric reference catalogue: the field's stars brighter than 22 mag,
    with magnitude errors of 0.01 to 0.03 mag, as an external survey lists them.

    Returns
    -------
    astropy.table.Table
        ``id``, ``ra``, ``dec``, ``mag`` (measured), ``mag_err``.
    """
    index = _field_index(config, field)
    cat = _catalog(config, index)
    stars = cat[(cat["type"] == "star") & (cat["mag"] < 22.0)]
    true_mag = np.asarray(stars["mag"])
    mag_err = 0.01 + 0.02 * np.clip((true_mag - 15.0) / 7.0, 0.0, 1.0)
    rng = _rng(config, _REFCAT, index)
    measured = true_mag + rng.normal(0.0, 1.0, len(stars)) * mag_err
    out = Table(
        {
            "id": np.asarray(stars["id"]),
            "ra": np.asarray(stars["ra"]),
            "dec": np.asarray(stars["dec"]),
            "mag": measured,
            "mag_err": mag_err,
        }
    )
    out["ra"].unit = out["dec"].unit = "deg"
    return out


# --------------------------------------------------------------------------
# Light curves


def supernova_mag(
    mjd: np.ndarray | float,
    peak_mjd: np.ndarray | float,
    peak_mag: np.ndarray | float,
    tau_rise: np.ndarray | float,
    tau_fall: np.ndarray | float,
) -> np.ndarray:
    """Magnitude of a supernova from the Bazin et al. (2009) light curve.

    ``f(t) = exp(-(t - t0) / tau_fall) / (1 + exp(-(t - t0) / tau_rise))``,
    scaled so that its maximum, at ``peak_mjd``, is ``peak_mag``
    (``t0 = peak_mjd - tau_rise ln(tau_fall / tau_rise - 1)``).
    """
    t = np.asarray(mjd, dtype=np.float64)
    tr = np.asarray(tau_rise, dtype=np.float64)
    tf = np.asarray(tau_fall, dtype=np.float64)
    if np.any(tf <= 2.0 * tr):
        raise ValueError("tau_fall must exceed twice tau_rise for a peaked light curve")
    t0 = peak_mjd - tr * np.log(tf / tr - 1.0)

    def log_f(time):
        return -(time - t0) / tf - np.logaddexp(0.0, -(time - t0) / tr)

    log_ratio = log_f(t) - log_f(np.asarray(peak_mjd, dtype=np.float64))
    return np.asarray(peak_mag) - 2.5 / np.log(10.0) * log_ratio


def variable_flux_ratio(
    mjd: np.ndarray | float,
    period: np.ndarray | float,
    phase0: np.ndarray | float,
    amplitude: np.ndarray | float,
    shape: np.ndarray | str,
) -> np.ndarray:
    """Flux of a periodic variable over its mean flux, ``1 + amplitude * s``.

    ``s`` has zero mean over a period: ``"sine"``; ``"pulsator"`` (fast rise
    over 15% of the period, slow decline, like an RR Lyrae); ``"eclipsing"``
    (a Gaussian eclipse of width 0.03 in phase reaching ``-1``).
    """
    phase = (np.asarray(mjd, dtype=np.float64) / np.asarray(period) + np.asarray(phase0)) % 1.0
    shape = np.asarray(shape)
    sine = np.sin(2.0 * np.pi * phase)
    rise = 0.15
    pulsator = np.where(
        phase < rise, -1.0 + 2.0 * phase / rise, 1.0 - 2.0 * (phase - rise) / (1.0 - rise)
    )
    width = 0.03
    dist = np.minimum(phase, 1.0 - phase)
    dip = np.exp(-0.5 * (dist / width) ** 2)
    mean_dip = width * np.sqrt(2.0 * np.pi)
    eclipsing = (mean_dip - dip) / (1.0 - mean_dip)
    known = np.isin(shape, ["sine", "pulsator", "eclipsing"])
    if not np.all(known):
        raise ValueError(f"unknown variable shape(s): {sorted(set(np.ravel(shape[~known])))}")
    s = np.where(shape == "sine", sine, np.where(shape == "pulsator", pulsator, eclipsing))
    return 1.0 + np.asarray(amplitude) * s


def _variables(config: SurveyConfig, field_index: int, cat: Table) -> Table:
    rng = _rng(config, _VARIABLE, field_index)
    pool = np.flatnonzero(
        (cat["type"] == "star") & cat["in_frame"] & (cat["mag"] > 14.0) & (cat["mag"] < 22.0)
    )
    n = int(rng.binomial(len(pool), config.variable_fraction)) if len(pool) else 0
    chosen = np.sort(rng.choice(pool, size=n, replace=False)) if n else np.zeros(0, np.int64)
    shape = rng.choice(["sine", "pulsator", "eclipsing"], size=n, p=[0.4, 0.35, 0.25])
    period = np.exp(rng.uniform(np.log(0.1), np.log(40.0), n))
    amplitude = np.where(shape == "eclipsing", rng.uniform(0.2, 0.7, n), rng.uniform(0.1, 0.6, n))
    name = field_names(config)[field_index]
    return Table(
        {
            "id": np.array([f"{name}-V{i:06d}" for i in chosen], dtype="U24"),
            "star_id": chosen.astype(np.int64),
            "ra": np.asarray(cat["ra"][chosen]),
            "dec": np.asarray(cat["dec"][chosen]),
            "mean_mag": np.asarray(cat["mag"][chosen]),
            "period": period,
            "phase0": rng.random(n),
            "amplitude": amplitude,
            "shape": shape.astype("U10"),
        }
    )


def field_variables(config: SurveyConfig, field: str | int) -> Table:
    """The periodic variable stars of a field.

    Returns
    -------
    astropy.table.Table
        ``id``, ``star_id`` (catalogue id), ``ra``, ``dec``, ``mean_mag``
        (of the mean flux), ``period`` (days), ``phase0``, ``amplitude``
        (fractional, in flux) and ``shape``; the flux at a time is the mean
        flux times :func:`variable_flux_ratio`.
    """
    index = _field_index(config, field)
    return _variables(config, index, _catalog(config, index))


@lru_cache(maxsize=256)
def _supernova_block(config: SurveyConfig, field_index: int, block: int) -> Table:
    """Supernovae peaking within one block of ``_BLOCK_DAYS`` days."""
    rng = _rng(config, _SUPERNOVA, field_index, block + _OFFSET)
    cat = _catalog(config, field_index)
    n = int(rng.poisson(config.supernova_rate * config.area_factor * _BLOCK_DAYS / 30.0))
    start = _mjd_of_date(_parse_date(config.start_night)) + block * _BLOCK_DAYS
    peak_mjd = start + rng.uniform(0.0, _BLOCK_DAYS, n)
    peak_mag = _power_law_mags(rng, n, 17.0, 22.5, 0.15)
    is_ia = rng.random(n) < 0.65
    tau_rise = np.where(is_ia, rng.uniform(3.0, 5.0, n), rng.uniform(2.0, 4.0, n))
    tau_fall = np.where(is_ia, rng.uniform(20.0, 35.0, n), rng.uniform(60.0, 110.0, n))
    hosts = np.flatnonzero((cat["type"] == "galaxy") & cat["in_frame"] & (cat["mag"] < 23.0))
    # Offsets follow an exponential disk: r / h ~ Gamma(2), r_eff = 1.678 h.
    radius = rng.gamma(2.0, 1.0 / 1.678, n)
    angle = rng.uniform(0.0, 2.0 * np.pi, n)
    hostless = rng.random(n) < 0.05
    if len(hosts):
        weights = 10.0 ** (-0.1 * np.asarray(cat["mag"][hosts]))
        host_id = rng.choice(hosts, size=n, p=weights / weights.sum()).astype(np.int64)
    else:
        host_id = np.zeros(n, dtype=np.int64)
        hostless[:] = True
    ny, nx = config.shape
    free_x = rng.uniform(0.0, nx - 1.0, n)
    free_y = rng.uniform(0.0, ny - 1.0, n)
    free_ra, free_dec = field_wcs(config, field_index).pixel_to_world_values(free_x, free_y)
    host = cat[host_id] if len(hosts) else None
    if host is not None:
        r_eff = np.asarray(host["r_eff"]) * radius
        u = r_eff * np.cos(angle)
        v = r_eff * np.sin(angle) * (1.0 - np.asarray(host["ellipticity"]))
        pa = np.radians(np.asarray(host["pa"]))
        north = (u * np.cos(pa) - v * np.sin(pa)) / 3600.0
        east = (u * np.sin(pa) + v * np.cos(pa)) / 3600.0
        dec = np.asarray(host["dec"]) + north
        ra = np.asarray(host["ra"]) + east / np.cos(np.radians(dec))
        ra = np.where(hostless, free_ra, ra)
        dec = np.where(hostless, free_dec, dec)
    else:
        ra, dec = np.asarray(free_ra, dtype=np.float64), np.asarray(free_dec, dtype=np.float64)
    host_id[hostless] = -1
    name = field_names(config)[field_index]
    return Table(
        {
            "id": np.array([f"{name}-SN{block:+04d}-{k:03d}" for k in range(n)], dtype="U24"),
            "subtype": np.where(is_ia, "Ia", "II").astype("U2"),
            "host_id": host_id,
            "ra": ra,
            "dec": dec,
            "peak_mjd": peak_mjd,
            "peak_mag": peak_mag,
            "tau_rise": tau_rise,
            "tau_fall": tau_fall,
        }
    )


def field_supernovae(
    config: SurveyConfig, field: str | int, mjd_min: float, mjd_max: float
) -> Table:
    """Supernovae of a field brighter than 25 mag at some time in [mjd_min, mjd_max].

    Returns
    -------
    astropy.table.Table
        ``id``, ``subtype`` ("Ia" or "II"), ``host_id`` (catalogue id, -1
        for hostless), ``ra``, ``dec``, ``peak_mjd``, ``peak_mag``,
        ``tau_rise``, ``tau_fall`` (days): the arguments of
        :func:`supernova_mag`.
    """
    if not mjd_max >= mjd_min:
        raise ValueError(f"mjd_max ({mjd_max}) is before mjd_min ({mjd_min})")
    index = _field_index(config, field)
    mjd0 = _mjd_of_date(_parse_date(config.start_night))
    first = math.floor((mjd_min - 400.0 - mjd0) / _BLOCK_DAYS)
    last = math.floor((mjd_max + 100.0 - mjd0) / _BLOCK_DAYS)
    blocks = [_supernova_block(config, index, b) for b in range(first, last + 1)]
    blocks = [b for b in blocks if len(b)]
    if not blocks:
        return _supernova_block(config, index, first)[:0].copy()
    table = vstack(blocks)
    brightest_t = np.clip(np.asarray(table["peak_mjd"]), mjd_min, mjd_max)
    best = supernova_mag(
        brightest_t, table["peak_mjd"], table["peak_mag"], table["tau_rise"], table["tau_fall"]
    )
    return table[best < _FAINTEST_SUPERNOVA]


@lru_cache(maxsize=64)
def _asteroid_block(config: SurveyConfig, field_index: int, block: int) -> dict[str, np.ndarray]:
    """Asteroids alive during one block: positions (field grid) at the block
    start and velocities (px/day); drawn over the area they can cross the
    frame from, so that their density on the frame is ``asteroid_density``."""
    rng = _rng(config, _ASTEROID, field_index, block + _OFFSET)
    ny, nx = config.shape
    reach = 1000.0 / config.pixel_scale * _ASTEROID_BLOCK_DAYS + 100.0
    area = (nx + 2 * reach) * (ny + 2 * reach) / 1.0e6
    n = int(rng.poisson(config.asteroid_density * area))
    slow = rng.random(n) < 0.3
    speed = np.where(slow, rng.uniform(50.0, 300.0, n), rng.uniform(400.0, 1000.0, n))
    speed /= config.pixel_scale
    # Near opposition asteroids move westward (+x on a north-up, east-left
    # grid), close to the ecliptic.
    direction = rng.normal(0.0, np.radians(15.0), n) + np.where(rng.random(n) < 0.1, np.pi, 0.0)
    return {
        "k": np.arange(n),
        "x0": rng.uniform(-reach, nx + reach, n),
        "y0": rng.uniform(-reach, ny + reach, n),
        "vx": speed * np.cos(direction),
        "vy": speed * np.sin(direction),
        "mag": _power_law_mags(rng, n, 17.5, 22.5, 0.3),
        "spin_amp": rng.uniform(0.0, 0.15, n),
        "spin_period": rng.uniform(0.1, 1.0, n),
    }


# --------------------------------------------------------------------------
# Conditions


def night_conditions(
    config: SurveyConfig, night: str | dt.date, field: str | int
) -> NightConditions:
    """Observing conditions of the exposure of ``field`` on ``night``.

    Seeing, clouds and the moon are shared by all fields of a night; the time
    of observation, airmass, sky and pointing differ per field. A night in
    ``config.night_overrides`` has its seeing scaled and its zero point
    shifted after everything is drawn (:class:`NightOverride`).
    """
    date = _parse_date(night)
    index = _field_index(config, field)
    ordinal = date.toordinal()
    shared = _rng(config, _NIGHT, ordinal)
    rng = _rng(config, _FIELD_NIGHT, index, ordinal)

    # Night-wide weather: seeing, clouds, the moon's geometry.
    seeing_night = config.seeing_median * float(shared.lognormal(0.0, 0.22))
    override = config.night_override(date)
    if override is not None:
        seeing_night *= override.seeing_factor
    weather = shared.random()
    if weather < 0.65:
        clouds = shared.uniform(0.97, 1.0)
    elif weather < 0.9:
        clouds = shared.uniform(0.7, 0.97)
    else:
        clouds = shared.uniform(0.3, 0.7)
    moon_factor = shared.uniform(0.2, 1.0)
    sky_night = shared.normal(0.0, 0.15)
    zp_drift = shared.normal(0.0, 0.02)

    # When the field is observed: near its meridian, inside astronomical night.
    ra, dec = _field_centres(config)[index]
    midnight, half_dark = _night_window(config, date)
    target_ha = float(np.clip(rng.normal(0.0, 1.8), -4.0, 4.0))
    lst_mid = (_gmst_hours(midnight) + config.site_longitude / 15.0) % 24.0
    delta_h = (ra / 15.0 + target_ha - lst_mid + 12.0) % 24.0 - 12.0
    start = midnight + delta_h / 24.0 / 1.0027379
    start = float(np.clip(start, midnight - half_dark + 0.01, midnight + half_dark - 0.02))
    mid = start + 0.5 * config.exptime / 86400.0
    lst = (_gmst_hours(mid) + config.site_longitude / 15.0) % 24.0
    hour_angle = (lst - ra / 15.0 + 12.0) % 24.0 - 12.0
    lat, d = math.radians(config.site_latitude), math.radians(dec)
    sin_alt = math.sin(lat) * math.sin(d) + math.cos(lat) * math.cos(d) * math.cos(
        math.radians(15.0 * hour_angle)
    )
    airmass = _airmass(math.degrees(math.asin(max(-1.0, min(1.0, sin_alt)))))

    # PSF: seeing grows as airmass**0.6.
    fwhm_arcsec = seeing_night * airmass**0.6 * float(rng.lognormal(0.0, 0.05))
    fwhm = float(np.clip(fwhm_arcsec / config.pixel_scale, 1.3, 6.0))
    beta = float(rng.uniform(2.5, 4.5))
    ellipticity = float(min(0.15, rng.rayleigh(0.045)))
    theta = float(rng.uniform(-np.pi / 2, np.pi / 2))

    transparency = float(clouds * (1.0 if clouds > 0.97 else rng.uniform(0.95, 1.05)))
    transparency = min(transparency, 1.0)
    zero_point = (
        config.zero_point
        - config.extinction * (airmass - 1.0)
        + 2.5 * math.log10(transparency)
        + zp_drift
    )
    if override is not None:
        zero_point += override.zero_point_offset
    illum = _moon_illumination(mid)
    sky_brightness = (
        config.sky_brightness
        - 2.5 * math.log10(1.0 + 5.3 * (illum * moon_factor) ** 3)
        - 2.5 * math.log10(1.0 + 0.3 * (airmass - 1.0))
        + sky_night
    )
    sky = 10.0 ** (-0.4 * (sky_brightness - zero_point)) * config.pixel_scale**2

    psf = moffat_psf(fwhm, beta=beta, ellipticity=ellipticity, theta=theta)
    n_eff = 1.0 / float(np.sum(psf**2))
    noise_e = math.sqrt((sky * config.gain + config.read_noise**2) * n_eff)
    limiting_mag = zero_point - 2.5 * math.log10(5.0 * noise_e / config.gain)

    jitter = np.clip(rng.normal(0.0, config.max_jitter / 2.5, 2), -config.max_jitter, None)
    jitter = np.clip(jitter, None, config.max_jitter)
    rotation = float(
        np.clip(rng.normal(0.0, config.max_rotation / 3.0), -config.max_rotation, None)
    )
    rotation = min(rotation, config.max_rotation)
    wcs_off = bool(rng.random() < config.wcs_error_fraction)
    size = rng.uniform(3.0, 10.0)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    err_x = float(size * math.cos(angle)) if wcs_off else 0.0
    err_y = float(size * math.sin(angle)) if wcs_off else 0.0

    return NightConditions(
        night=date.isoformat(),
        field=field_names(config)[index],
        mjd=start,
        date_obs=_iso_from_mjd(start),
        exptime=float(config.exptime),
        airmass=float(airmass),
        hour_angle=float(hour_angle),
        fwhm=fwhm,
        fwhm_arcsec=fwhm * config.pixel_scale,
        beta=beta,
        ellipticity=ellipticity,
        theta=theta,
        sky_brightness=float(sky_brightness),
        sky=float(sky),
        moon_illumination=float(illum),
        transparency=transparency,
        zero_point=float(zero_point),
        limiting_mag=float(limiting_mag),
        jitter_x=float(jitter[0]),
        jitter_y=float(jitter[1]),
        rotation=rotation,
        wcs_off=wcs_off,
        wcs_error_x=err_x,
        wcs_error_y=err_y,
    )


def _exposure_wcs(config: SurveyConfig, field_index: int, cond: NightConditions) -> WCS:
    ny, nx = config.shape
    nominal = field_wcs(config, field_index)
    ra, dec = nominal.pixel_to_world_values(
        (nx - 1) / 2.0 + cond.jitter_x, (ny - 1) / 2.0 + cond.jitter_y
    )
    return _tan_wcs(config, float(ra), float(dec), cond.rotation)


# --------------------------------------------------------------------------
# The detector


@lru_cache(maxsize=4)
def detector_defects(config: SurveyConfig) -> DetectorDefects:
    """The camera's fixed bias structure, flat field and defects.

    Depends only on ``config.seed`` and the detector parameters; arrays are
    read-only (the result is shared between calls).
    """
    rng = _rng(config, _DETECTOR)
    ny, nx = config.shape
    yy = np.arange(ny, dtype=np.float64)[:, None]
    xx = np.arange(nx, dtype=np.float64)[None, :]

    # Bias: a readout amplifier at x = 0 (a glow that fades over ~30
    # columns), column and row patterns, a gradient and a faint fixed pattern.
    columns = rng.normal(0.0, 1.5, nx) + 8.0 * np.exp(-np.arange(nx) / 30.0)
    rows = rng.normal(0.0, 0.5, ny)
    bias = (
        config.bias_level
        + columns[None, :]
        + rows[:, None]
        + 3.0 * yy / ny
        + 2.0 * xx / nx
        + rng.normal(0.0, 0.4, (ny, nx))
    )

    n_hot = int(round(config.hot_pixel_density * config.area_factor))
    flat_index = rng.choice(ny * nx, size=n_hot, replace=False)
    hot_y, hot_x = np.divmod(flat_index, nx)
    hot_bias = np.exp(rng.uniform(np.log(20.0), np.log(2000.0), n_hot))
    hot_dark = np.exp(rng.uniform(np.log(2.0), np.log(300.0), n_hot))
    bias[hot_y, hot_x] += hot_bias

    # Flat: vignetting, pixel response, column stripes, dust rings, dead columns.
    xc = (nx - 1) / 2.0 + rng.normal(0.0, 0.05 * nx)
    yc = (ny - 1) / 2.0 + rng.normal(0.0, 0.05 * ny)
    r2 = ((xx - xc) ** 2 + (yy - yc) ** 2) / (0.25 * (nx**2 + ny**2))
    flat = (1.0 - 0.07 * r2) * (1.0 + rng.normal(0.0, 0.002, nx))[None, :]
    flat = flat * (1.0 + rng.normal(0.0, 0.01, (ny, nx)))
    n_dust = int(rng.poisson(0.7 * config.area_factor))
    for _ in range(n_dust):
        cx, cy = rng.uniform(0, nx), rng.uniform(0, ny)
        radius, width, depth = rng.uniform(12, 35), rng.uniform(3, 6), rng.uniform(0.02, 0.05)
        y0, y1 = int(max(cy - radius - 4 * width, 0)), int(min(cy + radius + 4 * width, ny))
        x0, x1 = int(max(cx - radius - 4 * width, 0)), int(min(cx + radius + 4 * width, nx))
        if y1 <= y0 or x1 <= x0:
            continue
        r = np.hypot(xx[:, x0:x1] - cx, yy[y0:y1] - cy)
        flat[y0:y1, x0:x1] *= 1.0 - depth * np.exp(-0.5 * ((r - radius) / width) ** 2)
    bad = np.sort(rng.choice(np.arange(8, nx - 8), size=config.n_bad_columns, replace=False))
    bad_start = rng.integers(0, ny // 2, config.n_bad_columns)
    bad_response = rng.uniform(0.05, 0.35, config.n_bad_columns)
    for c, s, resp in zip(bad, bad_start, bad_response, strict=True):
        flat[s:, c] *= resp
    flat /= np.median(flat)

    arrays = {
        "bias": bias.astype(np.float32),
        "flat": flat.astype(np.float32),
        "hot_x": hot_x.astype(np.int64),
        "hot_y": hot_y.astype(np.int64),
        "hot_bias": hot_bias,
        "hot_dark": hot_dark,
        "bad_columns": bad.astype(np.int64),
        "bad_column_start": bad_start.astype(np.int64),
        "bad_column_response": bad_response,
    }
    for value in arrays.values():
        value.flags.writeable = False
    return DetectorDefects(**arrays)


def _bleed_columns(charge: np.ndarray, full_well: float) -> None:
    """Cap pixels at the full well; the excess charge spills up and down the
    column into the next pixels with room (charge is conserved except what
    runs off the top or bottom of the detector)."""
    over = charge > full_well
    if not over.any():
        return
    for c in np.flatnonzero(over.any(axis=0)):
        col = charge[:, c].copy()
        rows = np.flatnonzero(col > full_well)
        breaks = np.flatnonzero(np.diff(rows) > 1)
        starts = np.concatenate([rows[:1], rows[breaks + 1]])
        stops = np.concatenate([rows[breaks], rows[-1:]])
        for a, b in zip(starts, stops, strict=True):
            excess = float(np.sum(col[a : b + 1] - full_well))
            col[a : b + 1] = full_well
            _spill(col[b + 1 :], 0.5 * excess, full_well)
            _spill(col[:a][::-1], 0.5 * excess, full_well)
        charge[:, c] = col


def _spill(run: np.ndarray, amount: float, full_well: float) -> None:
    """Fill ``run`` (a view, nearest pixel first) up to the full well until
    ``amount`` electrons are placed."""
    if run.size == 0 or amount <= 0:
        return
    room = np.clip(full_well - run, 0.0, None)
    cum = np.cumsum(room)
    k = int(np.searchsorted(cum, amount))
    if k >= run.size:
        run += room
        return
    run[:k] += room[:k]
    run[k] += amount - (cum[k - 1] if k else 0.0)


def _digitise(electrons: np.ndarray, bias: np.ndarray, gain: float) -> np.ndarray:
    raw = bias + electrons / gain
    np.rint(raw, out=raw)
    np.clip(raw, 0.0, _ADC_MAX, out=raw)
    return raw.astype(np.float32)


def _saturate_level(config: SurveyConfig) -> float:
    # Quoted 2% under the full well, as camera teams do, so that the read
    # noise never hides a saturated pixel under the header value.
    return float(math.floor(config.bias_level + 0.98 * config.saturation))


def _camera_header(
    config: SurveyConfig, imagetyp: str, obj: str, mjd: float, exptime: float, night: str
) -> fits.Header:
    h = fits.Header()
    h["TELESCOP"] = (TELESCOPE, "simulated telescope")
    h["INSTRUME"] = (INSTRUMENT, "simulated camera")
    h["OBSERVAT"] = ("AstrID simulated site", "observatory")
    h["OBS-LAT"] = (config.site_latitude, "[deg] site latitude")
    h["OBS-LONG"] = (config.site_longitude, "[deg] site longitude, east positive")
    h["IMAGETYP"] = (imagetyp, "frame type")
    h["OBJECT"] = (obj, "target")
    h["DATE-OBS"] = (_iso_from_mjd(mjd), "UTC start of exposure")
    h["MJD-OBS"] = (round(float(mjd), 8), "MJD (UTC) at start of exposure")
    h["EXPTIME"] = (float(exptime), "[s] exposure time")
    h["FILTER"] = (config.filter, "filter")
    h["GAIN"] = (float(config.gain), "[e-/ADU] gain")
    h["RDNOISE"] = (float(config.read_noise), "[e-] read noise")
    h["SATURATE"] = (_saturate_level(config), "[ADU] raw saturation level, bias included")
    h["BUNIT"] = ("adu", "raw counts")
    h["NIGHT"] = (night, "survey night, UTC date of the evening")
    return h


def _cosmic_rays(
    rng: np.random.Generator, config: SurveyConfig, exptime: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple]]:
    """Cosmic-ray charge: single pixels, small blobs and tracks, sharper than
    any PSF. Returns pixel rows, columns, electrons, and one artefact row each."""
    ny, nx = config.shape
    n = int(rng.poisson(config.cosmic_ray_rate * config.area_factor * exptime / 60.0))
    rows, cols, charge, artefacts = [], [], [], []
    for _ in range(n):
        kind = rng.choice(3, p=[0.4, 0.35, 0.25])
        x0, y0 = rng.uniform(-0.5, nx - 0.5), rng.uniform(-0.5, ny - 0.5)
        x_end = y_end = np.nan
        if kind == 0:
            npts = int(rng.integers(1, 3))
            px = np.rint(x0 + np.array([0.0, rng.choice([-1.0, 1.0])])[:npts])
            py = np.rint(np.full(npts, y0))
            q = rng.lognormal(np.log(1500.0), 0.7) * np.array([1.0, rng.uniform(0.1, 0.4)])[:npts]
        elif kind == 1:
            sigma = rng.uniform(0.3, 0.6)
            total = rng.lognormal(np.log(5000.0), 0.7)
            px = np.rint(x0 + rng.normal(0.0, sigma, 64))
            py = np.rint(y0 + rng.normal(0.0, sigma, 64))
            q = np.full(64, total / 64.0)
        else:
            length = rng.uniform(5.0, 60.0)
            angle = rng.uniform(0.0, 2.0 * np.pi)
            t = np.arange(0.0, length, 0.25)
            px = np.rint(x0 + t * np.cos(angle))
            py = np.rint(y0 + t * np.sin(angle))
            q = 0.25 * rng.lognormal(np.log(600.0), 0.5, t.size)
            x_end, y_end = x0 + length * np.cos(angle), y0 + length * np.sin(angle)
        ix, iy = px.astype(np.int64), py.astype(np.int64)
        inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        if not inside.any():
            continue
        ix, iy, q = ix[inside], iy[inside], q[inside]
        pix, inverse = np.unique(iy * nx + ix, return_inverse=True)
        per_pixel = np.bincount(inverse, weights=q)
        rows.append(pix // nx)
        cols.append(pix % nx)
        charge.append(per_pixel)
        artefacts.append(
            ("cosmic_ray", x0, y0, x_end, y_end, per_pixel.max() / config.gain, pix.size)
        )
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0), artefacts
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(charge), artefacts


# --------------------------------------------------------------------------
# Rendering


class _PointRenderer:
    """Point sources at exact sub-pixel positions with a tabulated PSF.

    The PSF is integrated over pixels for ``_PHASES + 1`` sub-pixel phases
    per axis as box sums of one profile sampled every 1/16 pixel, and a
    source at any position is the bilinear interpolation of its four nearest
    phases (exact to about 1e-4 of the peak). Each source gets the smallest
    stamp whose edge is below 5% of the sky noise per pixel.
    """

    def __init__(self, cond: NightConditions, noise_e: float):
        k, half = _PHASES, _PSF_HALF
        s = 2 * half + 1
        n_fine = (s + 1) * k + 1
        fine = moffat_psf(
            cond.fwhm * k,
            beta=cond.beta,
            ellipticity=cond.ellipticity,
            theta=cond.theta,
            size=n_fine,
            offset=(-0.5, -0.5),
            oversample=2,
        )[:-1, :-1]
        fine = fine / fine.sum()
        cum = np.zeros((fine.shape[0] + 1, fine.shape[1] + 1))
        cum[1:, 1:] = fine.cumsum(axis=0).cumsum(axis=1)
        starts = np.arange(s)[None, :] * k + k - np.arange(k + 1)[:, None]  # (phase, pixel)
        sy = starts[:, None, :, None]
        sx = starts[None, :, None, :]
        self.phases = cum[sy + k, sx + k] - cum[sy, sx + k] - cum[sy + k, sx] + cum[sy, sx]
        self.centred = self.phases[k // 2, k // 2]
        h0 = max(4, math.ceil(3.0 * cond.fwhm))
        halves = []
        while h0 < half:
            halves.append(h0)
            h0 *= 2
        self.halves = np.array([*halves, half])
        c = self.centred
        self.edge = np.array(
            [
                max(
                    c[half - h].max(), c[half + h].max(), c[:, half - h].max(), c[:, half + h].max()
                )
                for h in self.halves
            ]
        )
        self.threshold = 0.05 * noise_e

    def psf_stamp(self, half: int) -> np.ndarray:
        c = self.centred[
            _PSF_HALF - half : _PSF_HALF + half + 1, _PSF_HALF - half : _PSF_HALF + half + 1
        ]
        return c / c.sum()

    def render(
        self, x: np.ndarray, y: np.ndarray, flux: np.ndarray, canvas_shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Flat canvas indices and electrons for sources at canvas (x, y)."""
        k = _PHASES
        ix = np.rint(x).astype(np.int64)
        iy = np.rint(y).astype(np.int64)
        tx = (x - ix + 0.5) * k
        ty = (y - iy + 0.5) * k
        px = np.clip(np.floor(tx).astype(np.int64), 0, k - 1)
        py = np.clip(np.floor(ty).astype(np.int64), 0, k - 1)
        wx, wy = tx - px, ty - py
        # The edge brightness falls with stamp size, so the number of stamps
        # whose edge is too bright is the index of the first one that is not.
        need = flux[:, None] * self.edge[None, :] > self.threshold
        tier = np.minimum(need.sum(axis=1), len(self.halves) - 1)
        out_idx, out_w = [], []
        for t, h in enumerate(self.halves):
            sel = np.flatnonzero(tier == t)
            if sel.size == 0:
                continue
            table = self.phases[
                :, :, _PSF_HALF - h : _PSF_HALF + h + 1, _PSF_HALF - h : _PSF_HALF + h + 1
            ]
            for chunk in np.array_split(sel, max(1, sel.size * (2 * h + 1) ** 2 // 2_000_000)):
                a, b = py[chunk], px[chunk]
                fy, fx = wy[chunk, None, None], wx[chunk, None, None]
                stamps = (1 - fy) * ((1 - fx) * table[a, b] + fx * table[a, b + 1]) + fy * (
                    (1 - fx) * table[a + 1, b] + fx * table[a + 1, b + 1]
                )
                stamps *= flux[chunk, None, None]
                idx, w = _stamp_pixels(stamps, ix[chunk], iy[chunk], h, canvas_shape)
                out_idx.append(idx)
                out_w.append(w)
        return _joined(out_idx, out_w)


def _stamp_pixels(
    stamps: np.ndarray, ix: np.ndarray, iy: np.ndarray, h: int, canvas_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Flat canvas indices and values of ``(n, 2h+1, 2h+1)`` stamps centred on
    ``(ix, iy)``; pixels off the canvas are dropped."""
    hc, wc = canvas_shape
    off = np.arange(-h, h + 1)
    rr = iy[:, None, None] + off[None, :, None]
    cc = ix[:, None, None] + off[None, None, :]
    inside = (rr >= 0) & (rr < hc) & (cc >= 0) & (cc < wc)
    return (rr * wc + cc)[inside], stamps[inside]


def _joined(indices: list[np.ndarray], values: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated (indices, values) of stamp pieces, empty arrays when none."""
    if not indices:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(indices), np.concatenate(values)


_GALAXY_HALVES = (3, 6, 12, 24, 48)


def _sersic_b(n: np.ndarray) -> np.ndarray:
    """Ciotti & Bertin (1999, A&A 352, 447) asymptotic b(n)."""
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n**2)


def _render_galaxies(
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    sersic_n: np.ndarray,
    r_eff: np.ndarray,
    axis_ratio: np.ndarray,
    theta: np.ndarray,
    canvas_shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-integrated Sersic profiles truncated at 5 r_eff, each summing to
    its flux. Returns flat canvas indices and electrons."""
    need = np.ceil(5.0 * r_eff) + 1
    bucket = np.minimum(np.searchsorted(_GALAXY_HALVES, need), len(_GALAXY_HALVES) - 1)
    ix = np.rint(x).astype(np.int64)
    iy = np.rint(y).astype(np.int64)
    out_idx, out_w = [], []
    for b, h in enumerate(_GALAXY_HALVES):
        sel = np.flatnonzero(bucket == b)
        if sel.size == 0:
            continue
        ov = 4 if h <= 6 else 2
        size = 2 * h + 1
        side = size * ov
        sub = (np.arange(side) + 0.5) / ov - 0.5 - h
        for chunk in np.array_split(sel, max(1, sel.size * side * side // 2_000_000)):
            dx = sub[None, None, :] - (x[chunk] - ix[chunk])[:, None, None]
            dy = sub[None, :, None] - (y[chunk] - iy[chunk])[:, None, None]
            cos_t = np.cos(theta[chunk])[:, None, None]
            sin_t = np.sin(theta[chunk])[:, None, None]
            u = dx * cos_t + dy * sin_t
            v = (dy * cos_t - dx * sin_t) / axis_ratio[chunk, None, None]
            r = np.sqrt(u * u + v * v) / r_eff[chunk, None, None]
            n = sersic_n[chunk, None, None]
            profile = np.exp(-_sersic_b(n) * r ** (1.0 / n))
            profile[r > 5.0] = 0.0
            stamps = profile.reshape(len(chunk), size, ov, size, ov).sum(axis=(2, 4))
            total = stamps.sum(axis=(1, 2))
            stamps *= (flux[chunk] / np.where(total > 0, total, 1.0))[:, None, None]
            idx, w = _stamp_pixels(stamps, ix[chunk], iy[chunk], h, canvas_shape)
            out_idx.append(idx)
            out_w.append(w)
    return _joined(out_idx, out_w)


def _fft_convolve(image: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """Linear convolution of ``image`` with a centred odd ``psf`` (same shape out)."""
    pad = psf.shape[0] // 2
    shape = tuple(sfft.next_fast_len(n + pad, real=True) for n in image.shape)
    kernel = sfft.rfft2(psf_to_image_shape(psf, shape), workers=-1)
    spectrum = sfft.rfft2(image, s=shape, workers=-1)
    out = sfft.irfft2(spectrum * kernel, s=shape, workers=-1)
    return out[: image.shape[0], : image.shape[1]]


def _streak(
    rng: np.random.Generator, config: SurveyConfig, cond: NightConditions, noise_e: float
) -> tuple[np.ndarray, tuple] | None:
    """A satellite trail across the frame (electrons) and its artefact row."""
    ny, nx = config.shape
    angle = rng.uniform(0.0, np.pi)
    x0, y0 = rng.uniform(0, nx - 1), rng.uniform(0, ny - 1)
    sigma = cond.fwhm * rng.uniform(1.0, 1.6) / 2.3548
    peak = float(np.exp(rng.uniform(np.log(3.0), np.log(40.0)))) * noise_e
    glint_period = rng.uniform(200.0, 2000.0)
    glint_phase = rng.uniform(0.0, 2 * np.pi)
    c, s = math.cos(angle), math.sin(angle)
    xs = np.arange(nx, dtype=np.float32)[None, :] - np.float32(x0)
    ys = np.arange(ny, dtype=np.float32)[:, None] - np.float32(y0)
    dist = xs * np.float32(-s) + ys * np.float32(c)
    near = np.abs(dist) < 5.0 * sigma
    along = (xs * np.float32(c) + ys * np.float32(s))[near]
    layer = np.zeros((ny, nx), dtype=np.float64)
    layer[near] = (
        peak
        * np.exp(-0.5 * (dist[near] / sigma) ** 2)
        * (1.0 + 0.3 * np.sin(2 * np.pi * along / glint_period + glint_phase))
    )
    # End points: where the line leaves the frame (slab clipping).
    t_lo, t_hi = -np.inf, np.inf
    for p0, d, hi in ((x0, c, nx - 0.5), (y0, s, ny - 0.5)):
        if abs(d) > 1e-12:
            a, b = sorted(((-0.5 - p0) / d, (hi - p0) / d))
            t_lo, t_hi = max(t_lo, a), min(t_hi, b)
    row = (
        "streak",
        x0 + t_lo * c,
        y0 + t_lo * s,
        x0 + t_hi * c,
        y0 + t_hi * s,
        1.3 * peak / config.gain,
        int(near.sum()),
    )
    return layer, row


def _artefact_table(rows: list[tuple]) -> Table:
    names = ("type", "x", "y", "x_end", "y_end", "value", "npix")
    if not rows:
        return Table(
            [
                np.zeros(0, "U14"),
                *(np.zeros(0) for _ in range(5)),
                np.zeros(0, np.int64),
            ],
            names=names,
        )
    cols = list(zip(*rows, strict=True))
    return Table(
        [
            np.array(cols[0], dtype="U14"),
            *(np.array(c, dtype=np.float64) for c in cols[1:6]),
            np.array(cols[6], dtype=np.int64),
        ],
        names=names,
    )


class _Scene:
    """Point sources of an exposure (its pixels, ADU) and their truth rows."""

    def __init__(self, shape: tuple[int, int]):
        self.shape = shape
        self.x: list[np.ndarray] = []
        self.y: list[np.ndarray] = []
        self.flux: list[np.ndarray] = []
        self.truth: list[tuple] = []

    def in_frame(self, x, y):
        ny, nx = self.shape
        return (x > -0.5) & (x < nx - 0.5) & (y > -0.5) & (y < ny - 0.5)

    def add_sources(self, x, y, flux) -> None:
        self.x.append(np.atleast_1d(np.asarray(x, dtype=np.float64)))
        self.y.append(np.atleast_1d(np.asarray(y, dtype=np.float64)))
        self.flux.append(np.atleast_1d(np.asarray(flux, dtype=np.float64)))

    def add_truth(self, ident, kind, x, y, ra, dec, flux, delta_flux, host_id) -> None:
        row = (str(ident), kind, float(x), float(y), float(ra), float(dec))
        self.truth.append((*row, float(flux), float(delta_flux), int(host_id)))


def _stellar_fluxes(
    config: SurveyConfig,
    index: int,
    date: dt.date,
    mid: float,
    cat: Table,
    base_flux: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    scene: _Scene,
) -> np.ndarray:
    """Flux (ADU) of every catalogue star tonight: variables at their phase,
    flaring stars brightened. Every variable in the frame gets a truth row."""
    flux = base_flux.copy()
    variables = _variables(config, index, cat)
    if len(variables):
        sid = np.asarray(variables["star_id"])
        ratio = variable_flux_ratio(
            mid,
            variables["period"],
            variables["phase0"],
            variables["amplitude"],
            variables["shape"],
        )
        flux[sid] = base_flux[sid] * ratio
        for row, s in zip(variables, sid, strict=True):
            if scene.in_frame(cx[s], cy[s]):
                delta = flux[s] - base_flux[s]
                scene.add_truth(
                    row["id"], "variable", cx[s], cy[s], row["ra"], row["dec"], flux[s], delta, s
                )

    # Flares: faint (M-dwarf-like) stars brightening for one night.
    rng = _rng(config, _FLARE, index, date.toordinal())
    mag = np.asarray(cat["mag"])
    pool = np.flatnonzero(
        (cat["type"] == "star") & cat["in_frame"] & (mag > 17.0) & (mag < 23.5) & ~cat["variable"]
    )
    n_flare = min(int(rng.poisson(config.flare_rate * config.area_factor)), len(pool))
    flaring = rng.choice(pool, size=n_flare, replace=False) if n_flare else []
    boost = np.exp(rng.uniform(np.log(0.5), np.log(20.0), n_flare))
    name = field_names(config)[index]
    for k, (s, b) in enumerate(zip(flaring, boost, strict=True)):
        flux[s] = base_flux[s] * (1.0 + b)
        if scene.in_frame(cx[s], cy[s]):
            ident = f"{name}-FL{date:%Y%m%d}-{k:02d}"
            scene.add_truth(
                ident,
                "flare",
                cx[s],
                cy[s],
                cat["ra"][s],
                cat["dec"][s],
                flux[s],
                flux[s] - base_flux[s],
                s,
            )
    return flux


def _add_supernovae(
    config: SurveyConfig, index: int, wcs: WCS, mid: float, zero_point: float, scene: _Scene
) -> None:
    sne = field_supernovae(config, index, mid, mid)
    if not len(sne):
        return
    mags = supernova_mag(mid, sne["peak_mjd"], sne["peak_mag"], sne["tau_rise"], sne["tau_fall"])
    flux = 10.0 ** (-0.4 * (mags - zero_point))
    x, y = wcs.world_to_pixel_values(np.asarray(sne["ra"]), np.asarray(sne["dec"]))
    scene.add_sources(x, y, flux)
    for k in np.flatnonzero(scene.in_frame(x, y)):
        scene.add_truth(
            sne["id"][k],
            "supernova",
            x[k],
            y[k],
            sne["ra"][k],
            sne["dec"][k],
            flux[k],
            flux[k],
            sne["host_id"][k],
        )


def _add_asteroids(
    config: SurveyConfig, index: int, wcs: WCS, cond: NightConditions, scene: _Scene
) -> None:
    """Asteroids near the frame, each trailed over the exposure as a row of
    points 0.25 px apart; the truth position is the one at mid-exposure."""
    mid = cond.mjd + 0.5 * cond.exptime / 86400.0
    mjd0 = _mjd_of_date(_parse_date(config.start_night))
    block = math.floor((mid - mjd0) / _ASTEROID_BLOCK_DAYS)
    ast = _asteroid_block(config, index, block)
    t_mid = mid - (mjd0 + block * _ASTEROID_BLOCK_DAYS)
    gx = ast["x0"] + ast["vx"] * t_mid
    gy = ast["y0"] + ast["vy"] * t_mid
    ny, nx = config.shape
    m = _CATALOG_MARGIN
    near = np.flatnonzero((gx > -m) & (gx < nx + m) & (gy > -m) & (gy < ny + m))
    nominal = field_wcs(config, index)
    half = 0.5 * cond.exptime / 86400.0
    name = field_names(config)[index]
    for k in near:
        trail = math.hypot(ast["vx"][k], ast["vy"][k]) * 2.0 * half
        t = t_mid + np.linspace(-half, half, max(1, math.ceil(trail / 0.25)))
        ra, dec = nominal.pixel_to_world_values(
            ast["x0"][k] + ast["vx"][k] * t, ast["y0"][k] + ast["vy"][k] * t
        )
        x, y = wcs.world_to_pixel_values(ra, dec)
        spin = 1.0 + ast["spin_amp"][k] * math.sin(2.0 * math.pi * mid / ast["spin_period"][k])
        flux = 10.0 ** (-0.4 * (ast["mag"][k] - cond.zero_point)) * spin
        scene.add_sources(x, y, np.full(t.size, flux / t.size))
        ra_m, dec_m = nominal.pixel_to_world_values(gx[k], gy[k])
        x_m, y_m = wcs.world_to_pixel_values(ra_m, dec_m)
        if scene.in_frame(x_m, y_m):
            ident = f"{name}-A{block:+05d}-{int(ast['k'][k]):04d}"
            scene.add_truth(ident, "asteroid", x_m, y_m, ra_m, dec_m, flux, flux, -1)


def _saturated_stars(
    electrons: np.ndarray, level: float, x: np.ndarray, y: np.ndarray, saturation: float
) -> list[tuple]:
    """One artefact row per saturated region that holds a star's centre."""
    saturated = electrons >= level
    if not saturated.any():
        return []
    labels, _ = ndimage.label(saturated)
    sizes = np.bincount(labels.ravel())
    ny, nx = electrons.shape
    ok = (x > -0.5) & (x < nx - 0.5) & (y > -0.5) & (y < ny - 0.5)
    x, y = x[ok], y[ok]
    found = labels[np.rint(y).astype(np.int64), np.rint(x).astype(np.int64)]
    rows, seen = [], set()
    for xs, ys, lab in zip(x, y, found, strict=True):
        if lab and lab not in seen:
            seen.add(lab)
            rows.append(("saturated_star", xs, ys, np.nan, np.nan, saturation, int(sizes[lab])))
    return rows


def simulate_exposure(
    config: SurveyConfig, night: str | dt.date, field: str | int
) -> SimulatedExposure:
    """Simulate the raw science exposure of ``field`` on ``night``.

    Sources are rendered in electrons: stars and other point sources with
    the night's Moffat PSF at their exact sub-pixel positions, galaxies as
    Sersic profiles convolved with the PSF (one FFT), on a canvas 64 px
    wider than the frame so that light from just outside falls in. Then the
    sky is added (with a faint gradient), the sum is multiplied by the flat
    and Poisson noise drawn; dark charge of hot pixels and cosmic rays are
    added; charge beyond the full well bleeds along columns; read noise,
    gain, the bias and 16-bit digitisation give raw ADU.

    The same ``(config, night, field)`` always gives byte-identical output.

    Returns
    -------
    SimulatedExposure

    Raises
    ------
    ValueError
        An unknown field or a night that is not a ``YYYY-MM-DD`` date.
    """
    index = _field_index(config, field)
    date = _parse_date(night)
    name = field_names(config)[index]
    cond = night_conditions(config, date, index)
    det = detector_defects(config)
    rng = _rng(config, _EXPOSURE, index, date.toordinal())
    ny, nx = config.shape
    gain = config.gain
    wcs = _exposure_wcs(config, index, cond)
    cat = _catalog(config, index)
    mid = cond.mjd + 0.5 * cond.exptime / 86400.0

    # Where everything falls, and how bright it is tonight (ADU).
    base_flux = 10.0 ** (-0.4 * (np.asarray(cat["mag"]) - cond.zero_point))
    cx, cy = wcs.world_to_pixel_values(np.asarray(cat["ra"]), np.asarray(cat["dec"]))
    on_canvas = (cx > -_PAD) & (cx < nx + _PAD - 1) & (cy > -_PAD) & (cy < ny + _PAD - 1)
    is_star = np.asarray(cat["type"] == "star")
    scene = _Scene(config.shape)
    star_flux = _stellar_fluxes(config, index, date, mid, cat, base_flux, cx, cy, scene)
    stars = np.flatnonzero(is_star & on_canvas)
    scene.add_sources(cx[stars], cy[stars], star_flux[stars])
    _add_supernovae(config, index, wcs, mid, cond.zero_point, scene)
    _add_asteroids(config, index, wcs, cond, scene)

    # Light in electrons on a padded canvas: point sources, then galaxies
    # convolved with the same PSF.
    sky_e = cond.sky * gain
    noise_e = math.sqrt(sky_e + config.read_noise**2)
    renderer = _PointRenderer(cond, noise_e)
    canvas_shape = (ny + 2 * _PAD, nx + 2 * _PAD)
    idx, weight = renderer.render(
        np.concatenate(scene.x) + _PAD,
        np.concatenate(scene.y) + _PAD,
        np.concatenate(scene.flux) * gain,
        canvas_shape,
    )
    canvas = np.bincount(idx, weights=weight, minlength=canvas_shape[0] * canvas_shape[1])
    canvas = canvas.astype(np.float64, copy=False).reshape(canvas_shape)
    galaxies = np.flatnonzero(~is_star & on_canvas)
    if galaxies.size:
        # Position angles are east of north; north on the pixel grid is the
        # image of a step in +Dec through the inverse CD matrix.
        inv = np.linalg.inv(wcs.wcs.cd)
        north = math.atan2(inv[1, 1], inv[0, 1])
        idx, weight = _render_galaxies(
            cx[galaxies] + _PAD,
            cy[galaxies] + _PAD,
            base_flux[galaxies] * gain,
            np.asarray(cat["sersic_n"])[galaxies],
            np.asarray(cat["r_eff"])[galaxies] / config.pixel_scale,
            1.0 - np.asarray(cat["ellipticity"])[galaxies],
            north + np.radians(np.asarray(cat["pa"])[galaxies]),
            canvas_shape,
        )
        layer = np.bincount(idx, weights=weight, minlength=canvas.size).reshape(canvas_shape)
        canvas += _fft_convolve(layer, renderer.centred)
    light = canvas[_PAD : _PAD + ny, _PAD : _PAD + nx]

    artefacts: list[tuple] = []
    if rng.random() < config.streak_probability:
        streak, row = _streak(rng, config, cond, noise_e)
        light += streak
        artefacts.append(row)
    gradient = rng.normal(0.0, 0.01, 2)
    light += sky_e * (
        1.0
        + gradient[0] * (np.arange(nx)[None, :] / nx - 0.5)
        + gradient[1] * (np.arange(ny)[:, None] / ny - 0.5)
    )

    # The detector: flat, photon noise, dark charge of hot pixels, cosmic
    # rays, the full well, read noise, bias and the ADC.
    light *= det.flat
    electrons = rng.poisson(light).astype(np.float64)
    electrons[det.hot_y, det.hot_x] += rng.poisson(det.hot_dark * config.exptime)
    cr_rows, cr_cols, cr_charge, cr_artefacts = _cosmic_rays(rng, config, config.exptime)
    np.add.at(electrons, (cr_rows, cr_cols), cr_charge)
    _bleed_columns(electrons, config.full_well)
    electrons += config.read_noise * rng.standard_normal((ny, nx), dtype=np.float32)
    bias_offset = float(rng.normal(0.0, 0.5))
    data = _digitise(electrons, det.bias.astype(np.float64) + bias_offset, gain)

    sat_level = config.full_well - 5.0 * config.read_noise
    artefacts += _saturated_stars(electrons, sat_level, cx[stars], cy[stars], config.saturation)
    hot_value = det.hot_dark * config.exptime / gain
    for hx, hy, v in zip(det.hot_x, det.hot_y, hot_value, strict=True):
        artefacts.append(("hot_pixel", float(hx), float(hy), np.nan, np.nan, v, 1))
    artefacts += cr_artefacts
    for c, s, resp in zip(
        det.bad_columns, det.bad_column_start, det.bad_column_response, strict=True
    ):
        artefacts.append(("bad_column", float(c), float(s), float(c), ny - 1.0, resp, ny - s))

    header = _camera_header(config, "object", name, cond.mjd, config.exptime, cond.night)
    ra_c, dec_c = _field_centres(config)[index]
    header["RA"] = (round(ra_c, 6), "[deg] commanded pointing")
    header["DEC"] = (round(dec_c, 6), "[deg] commanded pointing")
    header["AIRMASS"] = (round(cond.airmass, 4), "airmass at mid-exposure")
    header["FIELD"] = (name, "survey field")
    header_wcs = wcs.deepcopy()
    if cond.wcs_off:
        header_wcs.wcs.crpix = header_wcs.wcs.crpix + np.array([cond.wcs_error_x, cond.wcs_error_y])
        header_wcs.wcs.set()
    wcs_header = header_wcs.to_header()
    wcs_header.remove("MJDREF", ignore_missing=True)
    header.update(wcs_header)

    return SimulatedExposure(
        data=data,
        header=header,
        truth=_truth_table(scene.truth, cond.zero_point),
        artefacts=_artefact_table(artefacts),
        conditions=cond,
        psf=renderer.psf_stamp(max(7, math.ceil(4.0 * cond.fwhm))),
        wcs=wcs,
        bias_offset=bias_offset,
    )


def _truth_table(rows: list[tuple], zero_point: float) -> Table:
    names = ("id", "type", "x", "y", "ra", "dec", "flux", "delta_flux", "host_id")
    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in names]
    flux = np.array(cols[6], dtype=np.float64)
    with np.errstate(divide="ignore"):
        mag = zero_point - 2.5 * np.log10(flux)
    table = Table(
        {
            "id": np.array(cols[0], dtype="U24"),
            "type": np.array(cols[1], dtype="U10"),
            "x": np.array(cols[2], dtype=np.float64),
            "y": np.array(cols[3], dtype=np.float64),
            "ra": np.array(cols[4], dtype=np.float64),
            "dec": np.array(cols[5], dtype=np.float64),
            "flux": flux,
            "mag": mag,
            "delta_flux": np.array(cols[7], dtype=np.float64),
            "host_id": np.array(cols[8], dtype=np.int64),
        }
    )
    table["ra"].unit = table["dec"].unit = "deg"
    return table


def simulate_calibration_frames(
    config: SurveyConfig, night: str | dt.date, n_bias: int = 5, n_flat: int = 5
) -> CalibrationFrames:
    """The night's bias frames and twilight flats from the same detector as
    :func:`simulate_exposure`.

    Biases are the detector bias plus a small per-frame offset, hot pixels
    and read noise. Flats are a uniform illumination of 15 000 to 35 000 ADU
    times the flat, with Poisson noise, hot pixels' dark charge, a few cosmic
    rays (3 to 10 s exposures) and read noise.
    """
    if n_bias < 1 or n_flat < 1:
        raise ValueError(f"n_bias and n_flat must be >= 1, got {n_bias}, {n_flat}")
    date = _parse_date(night)
    det = detector_defects(config)
    midnight, half_dark = _night_window(config, date)
    ny, nx = config.shape
    gain = config.gain
    biases, bias_headers, bias_offsets = [], [], []
    for i in range(n_bias):
        rng = _rng(config, _CALIBRATION, date.toordinal(), 0, i)
        offset = float(rng.normal(0.0, 0.5))
        noise = config.read_noise * rng.standard_normal((ny, nx), dtype=np.float32)
        biases.append(_digitise(noise.astype(np.float64), det.bias + offset, gain))
        mjd = midnight - half_dark - 0.08 + i * 0.0015
        bias_headers.append(_camera_header(config, "bias", "bias", mjd, 0.0, date.isoformat()))
        bias_offsets.append(offset)
    flats, flat_headers, levels = [], [], []
    for i in range(n_flat):
        rng = _rng(config, _CALIBRATION, date.toordinal(), 1, i)
        level = float(rng.uniform(15000.0, 35000.0))
        exptime = float(rng.uniform(3.0, 10.0))
        electrons = rng.poisson(level * gain * det.flat.astype(np.float64)).astype(np.float64)
        electrons[det.hot_y, det.hot_x] += rng.poisson(det.hot_dark * exptime)
        rows, cols, charge, _ = _cosmic_rays(rng, config, exptime)
        np.add.at(electrons, (rows, cols), charge)
        _bleed_columns(electrons, config.full_well)
        electrons += config.read_noise * rng.standard_normal((ny, nx), dtype=np.float32)
        offset = float(rng.normal(0.0, 0.5))
        flats.append(_digitise(electrons, det.bias + offset, gain))
        mjd = midnight - half_dark - 0.03 + i * 0.002
        flat_headers.append(
            _camera_header(config, "flat", "twilight flat", mjd, exptime, date.isoformat())
        )
        levels.append(level)
    return CalibrationFrames(
        night=date.isoformat(),
        biases=biases,
        bias_headers=bias_headers,
        flats=flats,
        flat_headers=flat_headers,
        bias_offsets=bias_offsets,
        flat_levels=levels,
    )
