"""Frame quality numbers and the reasons a frame is rejected."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from astrid_assets.science.background import estimate_background
from astrid_assets.science.photcal import ZeroPoint, limiting_magnitude
from astrid_assets.science.psf import measure_psf, moffat_psf
from astrid_assets.science.quality import FrameQuality, QualityLimits, assess, frame_quality
from astrid_assets.science.sources import extract_sources


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(0)
    shape = (400, 400)
    image = 800.0 + rng.normal(0.0, 8.0, shape)
    for _ in range(120):
        x, y = rng.uniform(15, 384, 2)
        ix, iy = round(x), round(y)
        stamp = moffat_psf(3.2, size=31, offset=(x - ix, y - iy))
        image[iy - 15 : iy + 16, ix - 15 : ix + 16] += 10 ** rng.uniform(3, 5) * stamp
    mask = np.zeros(shape, bool)
    mask[:, :8] = True
    bkg = estimate_background(image, mask=mask)
    sub = bkg.subtract(image)
    sources = extract_sources(sub, bkg.rms, mask=mask)
    psf = measure_psf(sub, bkg.rms, sources=sources, mask=mask)
    return bkg, sources, psf, mask


def test_frame_quality_collects_the_numbers(frame) -> None:
    bkg, sources, psf, mask = frame
    zp = ZeroPoint(26.0, 0.01, 0.02, 40, 50)
    q = frame_quality(bkg, psf, sources=sources, zero_point=zp, mask=mask, pixel_scale=0.5)
    assert isinstance(q, FrameQuality)
    assert q.fwhm_pix == pytest.approx(3.2, rel=0.03)
    assert q.fwhm_arcsec == pytest.approx(0.5 * q.fwhm_pix)
    assert q.ellipticity < 0.03
    assert q.sky == pytest.approx(800.0, abs=1.0)
    assert q.sky_rms == pytest.approx(8.0, rel=0.05)
    assert q.zero_point == 26.0
    assert q.limiting_mag == pytest.approx(limiting_magnitude(zp, psf.stamp, q.sky_rms))
    assert q.n_sources == len(sources)
    assert 60 <= q.n_stars <= q.n_sources
    assert q.n_psf_stars == psf.n_stars
    assert q.masked_fraction == pytest.approx(8 / 400)
    assert q.as_dict()["fwhm_pix"] == q.fwhm_pix


def test_unknowns_are_nan(frame) -> None:
    bkg, _, _, _ = frame
    q = frame_quality(bkg, None)
    assert np.isnan(q.fwhm_pix) and np.isnan(q.fwhm_arcsec) and np.isnan(q.limiting_mag)
    assert q.n_stars == 0 and q.n_sources == 0 and q.masked_fraction == 0.0
    with pytest.raises(ValueError, match=r"mask shape \(3, 3\).*\(400, 400\)"):
        frame_quality(bkg, None, mask=np.zeros((3, 3), bool))


def test_a_good_frame_passes_and_bad_ones_say_why(frame) -> None:
    bkg, sources, psf, mask = frame
    q = frame_quality(bkg, psf, sources=sources, zero_point=26.0, mask=mask, pixel_scale=0.5)
    limits = QualityLimits(max_fwhm_arcsec=2.0, min_limiting_mag=19.5, min_stars=20)
    assert assess(q, limits) == []

    blurred = dataclasses.replace(q, fwhm_pix=9.0, fwhm_arcsec=4.5, ellipticity=0.45)
    reasons = assess(blurred, limits)
    assert any("FWHM 4.5 arcsec" in r for r in reasons)
    assert any("ellipticity" in r for r in reasons)

    cloudy = dataclasses.replace(q, n_stars=3, limiting_mag=18.2)
    reasons = assess(cloudy, limits)
    assert any("only 3 stars" in r for r in reasons)
    assert any("limiting magnitude 18.20" in r for r in reasons)

    no_zp = frame_quality(bkg, psf, sources=sources, mask=mask, pixel_scale=0.5)
    assert any("limiting magnitude unknown" in r for r in assess(no_zp, limits))
    no_scale = frame_quality(bkg, psf, sources=sources, zero_point=26.0, mask=mask)
    assert any("FWHM unknown" in r for r in assess(no_scale, limits))

    masked = dataclasses.replace(q, masked_fraction=0.5)
    assert any("masked fraction" in r for r in assess(masked))
    assert (
        assess(q, QualityLimits(max_ellipticity=None, min_stars=None, max_masked_fraction=None))
        == []
    )
