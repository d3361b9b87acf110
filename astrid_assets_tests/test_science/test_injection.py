"""Injection of point sources, the ideal S/N, truth matching and completeness fits."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from astrid_assets.science.injection import (
    completeness_curve,
    difference_snr,
    inject_point_sources,
    match_to_truth,
    place_sources,
    shifted_psf,
)
from astrid_assets.science.psf import moffat_psf


def test_injected_source_has_its_flux_and_centroid() -> None:
    psf = moffat_psf(3.0, size=31)
    image = np.zeros((120, 120), np.float32)
    inj = inject_point_sources(image, psf, [50.3, 80.0], [40.7, 90.2], [1000.0, 500.0])
    assert inj.image.dtype == np.float32
    assert inj.model.sum() == pytest.approx(1500.0, rel=1e-6)
    stamp = inj.model[25:56, 35:66]
    yy, xx = np.mgrid[25:56, 35:66]
    assert (stamp * xx).sum() / stamp.sum() == pytest.approx(50.3, abs=0.02)
    assert (stamp * yy).sum() / stamp.sum() == pytest.approx(40.7, abs=0.02)


def test_injection_adds_the_sources_own_photon_noise() -> None:
    psf = moffat_psf(2.5, size=21)
    rng = np.random.default_rng(3)
    image = np.zeros((400, 400), np.float32)
    x, y = np.meshgrid(np.arange(20, 380, 30.0), np.arange(20, 380, 30.0))
    flux = 2.0e5
    inj = inject_point_sources(image, psf, x.ravel(), y.ravel(), flux, gain=2.0, rng=rng)
    resid = (inj.image - inj.model)[inj.model > 100]
    expected = np.sqrt(inj.model[inj.model > 100] / 2.0)
    assert np.std(resid / expected) == pytest.approx(1.0, abs=0.05)


def test_fourier_shift_conserves_flux_and_moves_the_centroid() -> None:
    psf = moffat_psf(2.0, size=25)
    moved = shifted_psf(psf, 0.4, -0.3)
    yy, xx = np.mgrid[:25, :25]
    assert moved.sum() == pytest.approx(1.0)
    assert (moved * xx).sum() == pytest.approx(12.4, abs=0.02)
    assert (moved * yy).sum() == pytest.approx(11.7, abs=0.02)


def test_difference_snr_limits() -> None:
    psf = moffat_psf(3.0, size=31)
    science_only = difference_snr(np.array([1000.0]), psf, psf, 100.0, 0.0)
    assert science_only[0] == pytest.approx(1000 * np.sqrt((psf**2).sum() / 100.0))
    equal_depth = difference_snr(np.array([1000.0]), psf, psf, 100.0, 100.0)
    assert equal_depth[0] == pytest.approx(science_only[0] / np.sqrt(2))
    # A reference twice as bright per unit flux counts as a reference with 4x less noise.
    scaled = difference_snr(np.array([1000.0]), psf, psf, 100.0, 400.0, flux_ratio=2.0)
    assert scaled[0] == pytest.approx(equal_depth[0])


def test_positions_respect_separation_margin_and_mask() -> None:
    rng = np.random.default_rng(0)
    avoid = np.zeros((300, 300), bool)
    avoid[:, :150] = True
    x, y = place_sources((300, 300), 40, rng, margin=20, min_separation=20, avoid=avoid)
    assert len(x) == 40
    assert x.min() >= 150 and x.max() <= 279 and y.min() >= 20
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None]) + np.eye(40) * 1e9
    assert d.min() >= 20


def test_match_to_truth() -> None:
    m = match_to_truth(
        [10.0, 50.0, 90.0], [10.0, 50.0, 0.0], [10.5, 49.0, 200.0], [9.8, 52.5, 0.0], 2.0
    )
    assert m.truth_matched.tolist() == [True, False, False]
    assert m.candidate_matched.tolist() == [True, False, False]
    assert m.truth_to_candidate.tolist() == [0, -1, -1]


def test_completeness_fit_recovers_the_50_percent_point() -> None:
    rng = np.random.default_rng(11)
    snr = rng.uniform(1, 15, 8000)
    truth = 0.97 * 0.5 * special.erfc((5.3 - snr) / (np.sqrt(2) * 0.7))
    recovered = rng.random(snr.size) < truth
    curve = completeness_curve(snr, recovered)
    assert curve.snr50 == pytest.approx(5.3 + 0.04, abs=0.1)
    assert curve.c_max == pytest.approx(0.97, abs=0.01)
    assert curve.completeness_above(snr, recovered, 10.0) == pytest.approx(0.97, abs=0.015)
    assert curve.model(np.array([curve.snr50]))[0] == pytest.approx(0.5, abs=1e-6)
