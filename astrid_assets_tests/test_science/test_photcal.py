"""Zero point from matched catalogue stars, and the limiting magnitude."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS

from astrid_assets.science.photcal import (
    ZeroPoint,
    ZeroPointError,
    fit_zero_point,
    limiting_flux,
    limiting_magnitude,
)
from astrid_assets.science.psf import moffat_psf

TRUE_ZP = 25.30


def _wcs() -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [210.0, -5.0]
    wcs.wcs.crpix = [512.0, 512.0]
    wcs.wcs.cd = [[-0.27 / 3600, 0.0], [0.0, 0.27 / 3600]]
    return wcs


def _catalogue_and_sources(seed: int = 0, n: int = 200):
    rng = np.random.default_rng(seed)
    wcs = _wcs()
    x = rng.uniform(0, 1023, n)
    y = rng.uniform(0, 1023, n)
    sky = wcs.pixel_to_world(x, y)
    mag = rng.uniform(14.0, 19.0, n)
    catalog = Table({"ra": sky.ra.deg, "dec": sky.dec.deg, "mag": mag, "mag_err": np.full(n, 0.01)})
    flux = 10 ** (-0.4 * (mag - TRUE_ZP))
    flux_err = np.sqrt(flux / 2.0 + 10.0**2 * 20)  # photon + background noise
    measured = flux + rng.normal(0, 1, n) * flux_err
    measured *= 10 ** (-0.4 * rng.normal(0, 0.01, n))  # catalogue errors
    # Astrometric jitter of 0.1 arcsec.
    jitter_x = rng.normal(0, 0.1 / 0.27, n)
    jitter_y = rng.normal(0, 0.1 / 0.27, n)
    sources = Table(
        {
            "x": x + jitter_x,
            "y": y + jitter_y,
            "flux": measured,
            "flux_err": flux_err,
            "flag": np.zeros(n, int),
            "saturated": np.zeros(n, bool),
        }
    )
    return sources, catalog, wcs, rng


def test_zero_point_is_recovered_to_a_hundredth_of_a_magnitude() -> None:
    sources, catalog, wcs, rng = _catalogue_and_sources()
    # Variables and blends: 15 stars off by 0.3-1 mag; saturated stars far off.
    sources["flux"][:15] *= 10 ** (0.4 * rng.uniform(0.3, 1.0, 15))
    sources["flux"][15:20] *= 0.2
    sources["saturated"][15:20] = True
    # Sources with no catalogue counterpart.
    extra = sources[:10].copy()
    extra["x"] += 50.0
    all_sources = Table(np.concatenate([sources.as_array(), extra.as_array()]))
    zp = fit_zero_point(all_sources, catalog, wcs=wcs)
    assert isinstance(zp, ZeroPoint)
    assert zp.zero_point == pytest.approx(TRUE_ZP, abs=0.01)
    assert zp.n_matched == 200
    assert 150 <= zp.n_stars <= 185
    assert 0 < zp.error < 0.005
    assert zp.scatter < 0.05
    assert zp.magnitude(10 ** (-0.4 * (20.0 - TRUE_ZP))) == pytest.approx(20.0, abs=0.01)
    assert np.isnan(zp.magnitude(-5.0))


def test_sources_with_sky_coordinates_need_no_wcs() -> None:
    sources, catalog, wcs, _ = _catalogue_and_sources(seed=1)
    sky = wcs.pixel_to_world(sources["x"], sources["y"])
    sources["ra"] = sky.ra.deg
    sources["dec"] = sky.dec.deg
    zp = fit_zero_point(sources, catalog)
    assert zp.zero_point == pytest.approx(TRUE_ZP, abs=0.01)


def test_match_radius_limits_the_matches() -> None:
    sources, catalog, wcs, _ = _catalogue_and_sources(seed=2)
    sources["x"] += 2.0 / 0.27  # every source 2 arcsec off
    with pytest.raises(ZeroPointError, match="usable stars"):
        fit_zero_point(sources, catalog, wcs=wcs, match_radius_arcsec=1.0)
    zp = fit_zero_point(sources, catalog, wcs=wcs, match_radius_arcsec=3.0)
    assert zp.zero_point == pytest.approx(TRUE_ZP, abs=0.01)


def test_missing_columns_or_coordinates_are_clear_errors() -> None:
    sources, catalog, wcs, _ = _catalogue_and_sources(seed=3, n=20)
    with pytest.raises(ValueError, match="wcs"):
        fit_zero_point(sources, catalog)
    with pytest.raises(ValueError, match="'flux_err'"):
        fit_zero_point(sources["x", "y", "flux"], catalog, wcs=wcs)
    with pytest.raises(ValueError, match="'mag'"):
        fit_zero_point(sources, catalog["ra", "dec"], wcs=wcs)
    with pytest.raises(ZeroPointError):
        fit_zero_point(sources[:2], catalog, wcs=wcs)


def test_limiting_flux_formula_matches_a_direct_noise_simulation() -> None:
    psf = moffat_psf(3.5, size=25)
    sigma = 12.0
    rng = np.random.default_rng(4)
    noise = rng.normal(0.0, sigma, (20000, 25, 25))
    # Optimal PSF photometry of pure noise: flux = sum(P D) / sum(P^2).
    estimates = np.einsum("nij,ij->n", noise, psf) / np.sum(psf**2)
    simulated = 5.0 * estimates.std()
    assert limiting_flux(psf, sigma, 5.0) == pytest.approx(simulated, rel=0.02)
    # And a source at that flux is measured at 5 sigma on average.
    source = limiting_flux(psf, sigma) * psf
    snr = np.einsum("nij,ij->n", noise + source, psf) / np.sum(psf**2) / estimates.std()
    assert snr.mean() == pytest.approx(5.0, abs=0.05)


def test_limiting_magnitude_from_a_zero_point() -> None:
    psf = moffat_psf(3.0, size=21)
    flux = limiting_flux(psf, 10.0)
    assert limiting_magnitude(25.0, psf, 10.0) == pytest.approx(25.0 - 2.5 * np.log10(flux))
    zp = ZeroPoint(25.0, 0.01, 0.02, 50, 60)
    assert limiting_magnitude(zp, psf * 7.0, 10.0) == pytest.approx(
        limiting_magnitude(25.0, psf, 10.0)
    )
    # Worse seeing is shallower: the noise-equivalent area grows as FWHM^2.
    wide = moffat_psf(6.0, size=41)
    assert limiting_magnitude(25.0, wide, 10.0) == pytest.approx(
        limiting_magnitude(25.0, psf, 10.0) - 2.5 * np.log10(2.0), abs=0.05
    )
    with pytest.raises(ValueError, match="sigma_background"):
        limiting_magnitude(25.0, psf, 0.0)
    with pytest.raises(ValueError, match="positive sum"):
        limiting_magnitude(25.0, np.zeros((5, 5)), 1.0)
