"""Alignment onto a reference grid: geometry, flux, noise, masks, star matching."""

from __future__ import annotations

import numpy as np
import pytest
import sep
from astropy.io import fits
from astropy.wcs import WCS, Sip
from astropy.wcs.utils import pixel_to_pixel
from scipy import ndimage
from scipy.spatial import cKDTree

from astrid_assets.science.align import (
    AlignConfig,
    AlignedImage,
    PixelTransform,
    align_to_grid,
    find_alignment_stars,
    fit_wcs_transform,
    refine_transform,
)
from astrid_assets.science.psf import moffat_psf

SHAPE = (256, 256)
FWHM = 4.0
STAMP = 31


def tan_wcs(shape, shift=(0.0, 0.0), rotation_deg=0.0, scale_arcsec=0.26, sip=None):
    """TAN WCS with its reference pixel moved by ``shift`` and rotated about it."""
    ny, nx = shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [(nx + 1) / 2 + shift[0], (ny + 1) / 2 + shift[1]]
    s = scale_arcsec / 3600
    c, si = np.cos(np.radians(rotation_deg)), np.sin(np.radians(rotation_deg))
    w.wcs.cd = s * np.array([[-c, si], [si, c]])
    if sip is not None:
        w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
        w.sip = Sip(sip[0], sip[1], None, None, w.wcs.crpix)
    return w


def render(shape, xy, fluxes, fwhm=FWHM):
    """Sum of Moffat stars (unit-sum stamps) at sub-pixel positions."""
    image = np.zeros(shape)
    half = STAMP // 2
    for (x, y), f in zip(xy, fluxes, strict=True):
        ix, iy = round(x), round(y)
        stamp = f * moffat_psf(fwhm, size=STAMP, offset=(x - ix, y - iy))
        y0, x0 = iy - half, ix - half
        ys = slice(max(y0, 0), min(y0 + STAMP, shape[0]))
        xs = slice(max(x0, 0), min(x0 + STAMP, shape[1]))
        image[ys, xs] += stamp[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    return image


def star_grid(spacing=40.0, margin=36.0, shape=SHAPE):
    g = np.arange(margin, shape[0] - margin + 1, spacing)
    xx, yy = np.meshgrid(g, g)
    return np.column_stack([xx.ravel(), yy.ravel()])


def science_for(ref_xy, w_from, w_to, flux=1e4, shape=SHAPE):
    """Science image whose stars sit, through the WCS, at ``ref_xy`` on the reference grid."""
    fx, fy = pixel_to_pixel(w_to, w_from, ref_xy[:, 0], ref_xy[:, 1])
    return render(shape, np.column_stack([fx, fy]), np.full(len(ref_xy), flux))


def centroids(image, xy, fwhm=FWHM):
    x, y, _ = sep.winpos(
        np.ascontiguousarray(image, dtype=np.float64), xy[:, 0], xy[:, 1], fwhm / 2.3548
    )
    return np.column_stack([x, y])


def spline_variance_factor():
    """``g(f)``: white-noise variance factor of 1-D cubic-spline interpolation at offset f."""
    fracs = np.linspace(0.0, 1.0, 41)
    delta = np.zeros(101)
    delta[50] = 1.0
    g = [np.sum(ndimage.shift(delta, f, order=3, mode="mirror") ** 2) for f in fracs]
    return lambda f: np.interp(f, fracs, g)


# --------------------------------------------------------------------------
# Geometry and flux
# --------------------------------------------------------------------------


def test_wcs_alignment_puts_stars_on_reference_positions():
    w_to = tan_wcs(SHAPE)
    w_from = tan_wcs(SHAPE, (12.3, -7.6), 0.2)
    ref_xy = star_grid()
    image = science_for(ref_xy, w_from, w_to)

    out = align_to_grid(image, w_from, w_to, SHAPE)

    assert out.method == "wcs/spline3-affine"
    assert out.wcs_fit_residual < 0.01
    geom = out.transform.describe(127.5, 127.5)
    assert geom["rotation_deg"] == pytest.approx(-0.2, abs=1e-6)
    assert geom["scale"] == pytest.approx(1.0, abs=1e-6)
    inside = ~out.mask[ref_xy[:, 1].astype(int), ref_xy[:, 0].astype(int)]
    assert inside.sum() >= 20
    offsets = centroids(out.data, ref_xy[inside]) - ref_xy[inside]
    assert np.sqrt(np.mean(np.sum(offsets**2, axis=1))) < 0.05


def test_alignment_conserves_flux_of_isolated_star():
    w_to = tan_wcs(SHAPE)
    w_from = tan_wcs(SHAPE, (12.3, -7.6), 0.2)
    ref_xy = np.array([[128.4, 121.7]])
    image = science_for(ref_xy, w_from, w_to, flux=5e4)
    out = align_to_grid(image, w_from, w_to, SHAPE)
    box = out.data[106:137, 113:144]
    assert box.sum() == pytest.approx(5e4, rel=0.01)


def test_flux_is_conserved_when_pixel_scales_differ():
    # Input pixels 10% larger than the reference grid's: each star covers
    # 1.21 times more output pixels, so values must be scaled by the
    # Jacobian determinant (1/1.21) to keep its flux.
    w_to = tan_wcs(SHAPE, scale_arcsec=0.26)
    w_from = tan_wcs(SHAPE, (4.2, 3.1), 0.0, scale_arcsec=0.286)
    ref_xy = np.array([[127.6, 131.2]])
    image = science_for(ref_xy, w_from, w_to, flux=5e4)
    out = align_to_grid(image, w_from, w_to, SHAPE)
    assert out.transform.describe(127.5, 127.5)["scale"] == pytest.approx(1 / 1.1, rel=1e-6)
    assert out.data[104:152, 104:152].sum() == pytest.approx(5e4, rel=0.01)
    star = centroids(out.data, ref_xy, fwhm=FWHM * 1.1)
    assert np.hypot(*(star - ref_xy)[0]) < 0.05


def test_distorted_wcs_is_fitted_with_a_cubic_polynomial():
    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    a[2, 0], a[0, 2], b[1, 1], a[3, 0] = 4e-6, -2e-6, 3e-6, 2e-8
    w_to = tan_wcs(SHAPE)
    w_from = tan_wcs(SHAPE, (5.4, -3.3), 0.1, sip=(a, b))
    ref_xy = star_grid()
    image = science_for(ref_xy, w_from, w_to)

    fit = fit_wcs_transform(w_from, w_to, SHAPE)
    out = align_to_grid(image, w_from, w_to, SHAPE)

    assert fit.degree == 3 and fit.max_residual < 0.01
    assert out.method == "wcs/spline3-polynomial"
    inside = ~out.mask[ref_xy[:, 1].astype(int), ref_xy[:, 0].astype(int)]
    offsets = centroids(out.data, ref_xy[inside]) - ref_xy[inside]
    assert np.sqrt(np.mean(np.sum(offsets**2, axis=1))) < 0.05


def test_exact_and_reproject_methods_agree_with_the_fitted_path():
    w_to = tan_wcs(SHAPE)
    w_from = tan_wcs(SHAPE, (12.3, -7.6), 0.2)
    ref_xy = star_grid(spacing=60.0)
    image = science_for(ref_xy, w_from, w_to)
    fitted = align_to_grid(image, w_from, w_to, SHAPE)
    exact = align_to_grid(image, w_from, w_to, SHAPE, config=AlignConfig(method="exact"))
    rep = align_to_grid(image, w_from, w_to, SHAPE, config=AlignConfig(method="reproject"))
    assert exact.method == "wcs/spline3-exact"
    assert rep.method == "wcs/reproject-bicubic"
    both = ~fitted.mask & ~exact.mask
    peak = fitted.data.max()
    assert np.max(np.abs(fitted.data - exact.data)[both]) < 1e-4 * peak
    both = ~fitted.mask & ~rep.mask
    # Keys' bicubic and the cubic B-spline differ a little at star peaks.
    assert np.max(np.abs(fitted.data - rep.data)[both]) < 0.03 * peak
    assert np.array_equal(fitted.mask[20:-20, 20:-20], rep.mask[20:-20, 20:-20])


# --------------------------------------------------------------------------
# Fast paths
# --------------------------------------------------------------------------


def test_integer_shift_is_an_exact_copy():
    rng = np.random.default_rng(0)
    image = rng.normal(size=SHAPE)
    out = align_to_grid(image, tan_wcs(SHAPE, (5.0, -3.0)), tan_wcs(SHAPE), SHAPE)
    assert out.method == "wcs/integer-shift"
    # Reference pixel (x, y) is input pixel (x + 5, y - 3).
    assert np.array_equal(out.data[3:, : 256 - 5], image[: 256 - 3, 5:].astype(np.float32))
    assert out.mask[:3, :].all() and out.mask[:, -5:].all()
    assert not out.mask[3:, :-5].any()


def test_subpixel_shift_fast_path_equals_spline_interpolation():
    rng = np.random.default_rng(1)
    image = ndimage.gaussian_filter(rng.normal(size=SHAPE), 1.0)
    out = align_to_grid(image, tan_wcs(SHAPE, (12.3, -7.6)), tan_wcs(SHAPE), SHAPE)
    assert out.method == "wcs/spline3-shift"
    # scipy's own spline evaluation at (y - 7.6, x + 12.3).
    expected = ndimage.shift(image, (7.6, -12.3), order=3, mode="mirror")
    valid = ~out.mask
    assert valid.sum() > 0.85 * valid.size
    assert np.max(np.abs(out.data - expected)[valid]) < 1e-5


def test_assume_aligned_passes_through():
    rng = np.random.default_rng(2)
    image = rng.normal(size=SHAPE)
    mask = np.zeros(SHAPE, dtype=bool)
    mask[10, 20] = True
    out = align_to_grid(
        image,
        None,
        None,
        SHAPE,
        variance=np.ones(SHAPE),
        mask=mask,
        config=AlignConfig(assume_aligned=True),
    )
    assert out.method == "assumed/copy"
    assert np.array_equal(out.mask, mask)
    assert out.data[10, 20] == 0.0
    assert np.array_equal(out.data[~mask], image[~mask].astype(np.float32))
    with pytest.raises(ValueError, match="assume_aligned"):
        align_to_grid(image, None, None, (128, 128), config=AlignConfig(assume_aligned=True))


# --------------------------------------------------------------------------
# Noise, variance, masks
# --------------------------------------------------------------------------


@pytest.mark.parametrize("rotation", [0.0, 0.2])
def test_resampled_noise_follows_the_spline_smoothing_factor(rotation):
    rng = np.random.default_rng(3)
    sigma = 10.0
    image = rng.normal(0.0, sigma, SHAPE)
    w_to = tan_wcs(SHAPE)
    w_from = tan_wcs(SHAPE, (12.3, -7.6), rotation)
    out = align_to_grid(image, w_from, w_to, SHAPE, variance=np.full(SHAPE, sigma**2))

    # Expected per-pixel variance: sum of squared interpolation weights,
    # g(fx) g(fy) at each output pixel's fractional input position.
    g = spline_variance_factor()
    yy, xx = np.nonzero(~out.mask)
    xi, yi = out.transform(xx, yy)
    expected = sigma**2 * np.mean(g(xi % 1.0) * g(yi % 1.0))
    measured = np.var(out.data[~out.mask])
    assert measured == pytest.approx(expected, rel=0.03)
    assert 0.55 * sigma**2 < measured < 0.9 * sigma**2  # smoothed, as documented
    # The variance map is interpolated, not reduced: it keeps sigma**2.
    assert np.allclose(out.variance[~out.mask], sigma**2, rtol=1e-5)


def test_masked_pixels_propagate_and_do_not_leak():
    w_to = tan_wcs(SHAPE)
    w_from = tan_wcs(SHAPE, (12.3, -7.6), 0.2)
    image = np.zeros(SHAPE)
    mask = np.zeros(SHAPE, dtype=bool)
    image[100, 150] = 1e6  # a cosmic ray, flagged
    mask[100, 150] = True
    image[60, 70] = np.nan  # not flagged: NaN is masked by itself
    variance = np.ones(SHAPE)
    variance[60, 70] = np.inf
    out = align_to_grid(image, w_from, w_to, SHAPE, variance=variance, mask=mask)

    for x_in, y_in in [(150, 100), (70, 60)]:
        # Reference-grid position of the bad input pixel (invert the map).
        tx, ty = pixel_to_pixel(w_from, w_to, x_in, y_in)
        ix, iy = round(float(tx)), round(float(ty))
        assert out.mask[iy, ix]
        yy, xx = np.nonzero(out.mask[iy - 8 : iy + 9, ix - 8 : ix + 9])
        # Grown by 1 px and then the 2x2 linear footprint: at most 5x5.
        assert np.max(np.abs(yy - 8)) <= 3 and np.max(np.abs(xx - 8)) <= 3
    assert np.all(np.isfinite(out.data)) and np.all(np.isfinite(out.variance))
    assert np.max(np.abs(out.data[~out.mask])) < 1e-3
    assert np.allclose(out.variance[~out.mask], 1.0, rtol=1e-5)


def test_pixels_outside_the_input_are_masked_and_zero():
    rng = np.random.default_rng(4)
    image = rng.normal(100.0, 1.0, SHAPE)
    w_to = tan_wcs(SHAPE)
    w_from = tan_wcs(SHAPE, (12.3, -7.6), 0.2)
    out = align_to_grid(image, w_from, w_to, SHAPE, variance=np.ones(SHAPE))
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    xi, yi = out.transform(xx, yy)
    outside = (xi < 0) | (xi > SHAPE[1] - 1) | (yi < 0) | (yi > SHAPE[0] - 1)
    assert outside.sum() > 4000
    assert out.mask[outside].all()
    assert np.all(out.data[outside] == 0.0) and np.all(out.variance[outside] == 0.0)
    well_inside = (xi > 1) & (xi < SHAPE[1] - 2) & (yi > 1) & (yi < SHAPE[0] - 2)
    assert not out.mask[well_inside].any()
    assert not np.isnan(out.data).any()


# --------------------------------------------------------------------------
# Star matching
# --------------------------------------------------------------------------


def star_field(rng, n=40, shape=SHAPE, min_separation=12.0):
    """Random isolated stars (no pair closer than ``min_separation``)."""
    xy = np.zeros((0, 2))
    while len(xy) < n:
        p = rng.uniform(20, shape[0] - 20, 2)
        if len(xy) == 0 or np.min(np.hypot(*(xy - p).T)) >= min_separation:
            xy = np.vstack([xy, p])
    flux = 10 ** rng.uniform(3.5, 5.0, n)
    return xy, flux


def test_wrong_wcs_is_refined_by_star_matching():
    rng = np.random.default_rng(5)
    w_to = tan_wcs(SHAPE)
    w_true = tan_wcs(SHAPE, (12.3, -7.6), 0.2)
    w_header = tan_wcs(SHAPE, (12.3 + 2.4, -7.6 - 1.8), 0.2)  # off by 3 px
    ref_xy, flux = star_field(rng)
    fx, fy = pixel_to_pixel(w_to, w_true, ref_xy[:, 0], ref_xy[:, 1])
    image = render(SHAPE, np.column_stack([fx, fy]), flux) + rng.normal(0, 5.0, SHAPE)
    ref_list = ref_xy[np.argsort(-flux)]

    unrefined = align_to_grid(image, w_header, w_to, SHAPE, config=AlignConfig(refine=False))
    out = align_to_grid(image, w_header, w_to, SHAPE, sources_to=ref_list)

    assert unrefined.method == "wcs/spline3-affine"
    assert out.method == "wcs+stars/spline3-affine"
    assert out.n_matched >= 20
    assert out.residual_rms < 0.1
    sx, sy = out.registration_sigma
    assert 0 < sx < 0.1 and 0 < sy < 0.1
    bright = ref_list[:15]
    bright = bright[~out.mask[bright[:, 1].astype(int), bright[:, 0].astype(int)]]
    good = np.hypot(*(centroids(out.data, bright) - bright).T)
    bad = np.hypot(*(centroids(unrefined.data, bright) - bright).T)
    assert np.sqrt(np.mean(good**2)) < 0.1
    assert np.median(bad) > 2.0


def test_good_wcs_is_not_refined_in_auto_mode():
    rng = np.random.default_rng(6)
    w_to = tan_wcs(SHAPE)
    w_from = tan_wcs(SHAPE, (12.3, -7.6), 0.2)
    ref_xy, flux = star_field(rng)
    fx, fy = pixel_to_pixel(w_to, w_from, ref_xy[:, 0], ref_xy[:, 1])
    image = render(SHAPE, np.column_stack([fx, fy]), flux) + rng.normal(0, 5.0, SHAPE)
    out = align_to_grid(image, w_from, w_to, SHAPE, sources_to=ref_xy[np.argsort(-flux)])
    assert out.method == "wcs/spline3-affine"
    assert out.n_matched >= 20 and out.residual_rms < 0.1


def test_auto_keeps_the_wcs_when_the_star_lists_do_not_match():
    rng = np.random.default_rng(12)
    w_to = tan_wcs(SHAPE)
    w_from = tan_wcs(SHAPE, (12.3, -7.6), 0.2)
    ref_xy, flux = star_field(rng)
    fx, fy = pixel_to_pixel(w_to, w_from, ref_xy[:, 0], ref_xy[:, 1])
    image = render(SHAPE, np.column_stack([fx, fy]), flux) + rng.normal(0, 5.0, SHAPE)
    unrelated = rng.uniform(0, 256, (30, 2))
    out = align_to_grid(image, w_from, w_to, SHAPE, sources_to=unrelated)
    assert out.method == "wcs/spline3-affine"
    assert out.star_match is None
    with pytest.raises(ValueError, match="stars"):
        align_to_grid(
            image,
            w_from,
            w_to,
            SHAPE,
            sources_to=unrelated,
            config=AlignConfig(refine=True),
        )


def test_images_without_wcs_are_aligned_by_stars_alone():
    rng = np.random.default_rng(7)
    w_to = tan_wcs(SHAPE)
    w_true = tan_wcs(SHAPE, (-9.7, 15.2), -0.5)
    ref_xy, flux = star_field(rng)
    fx, fy = pixel_to_pixel(w_to, w_true, ref_xy[:, 0], ref_xy[:, 1])
    image = render(SHAPE, np.column_stack([fx, fy]), flux) + rng.normal(0, 5.0, SHAPE)
    out = align_to_grid(image, None, None, SHAPE, sources_to=ref_xy[np.argsort(-flux)])
    assert out.method == "stars/spline3-affine"
    assert out.residual_rms < 0.1
    truth = fit_wcs_transform(w_true, w_to, SHAPE).transform
    corners = np.array([[0, 0], [255, 0], [0, 255], [255, 255]], dtype=float)
    got = np.column_stack(out.transform(*corners.T))
    want = np.column_stack(truth(*corners.T))
    assert np.max(np.hypot(*(got - want).T)) < 0.1


def test_missing_wcs_with_too_few_stars_raises_a_clear_error():
    rng = np.random.default_rng(8)
    image = rng.normal(0, 1.0, SHAPE)  # no stars at all
    ref_xy = np.array([[50.0, 60.0], [120.0, 80.0], [200.0, 190.0], [30.0, 220.0]])
    with pytest.raises(ValueError, match=r"input image has no celestial WCS.*stars were found"):
        align_to_grid(image, None, tan_wcs(SHAPE), SHAPE, sources_to=ref_xy)
    with pytest.raises(ValueError, match=r"reference grid has no celestial WCS.*sources_to"):
        align_to_grid(image, tan_wcs(SHAPE), None, SHAPE)
    with pytest.raises(ValueError, match="reference star list has only 2 stars"):
        align_to_grid(image, None, None, SHAPE, sources_to=ref_xy[:2])


def test_refine_transform_recovers_a_similarity_from_star_lists():
    rng = np.random.default_rng(9)
    to_xy = rng.uniform(0, 1000, (50, 2))
    truth = PixelTransform.from_affine(
        1.02 * np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]]), (40.0, -25.0)
    )
    from_xy = np.column_stack(truth(*to_xy.T)) + rng.normal(0, 0.03, (50, 2))
    # Lists in different orders, with some stars missing from each.
    match = refine_transform(rng.permutation(from_xy[5:]), to_xy[:45])
    assert match.n_matched >= 35
    assert match.residual_rms < 0.08
    got = np.column_stack(match.transform(*to_xy.T))
    assert np.max(np.hypot(*(got - np.column_stack(truth(*to_xy.T))).T)) < 0.05


def test_find_alignment_stars_returns_accurate_bright_first_positions():
    rng = np.random.default_rng(10)
    xy, flux = star_field(rng, n=30)
    image = render(SHAPE, xy, flux) + rng.normal(0, 5.0, SHAPE)
    found = find_alignment_stars(image, n_max=10)
    assert len(found) == 10
    order = np.argsort(-flux)[:10]
    dist = np.min(np.hypot(*(found[:, None, :] - xy[None, order, :]).transpose(2, 0, 1)), axis=1)
    assert np.all(dist < 0.1)


# --------------------------------------------------------------------------
# Transform object and validation
# --------------------------------------------------------------------------


def test_pixel_transform_grid_composition_and_jacobian():
    t = PixelTransform.from_affine([[0.99, -0.02], [0.03, 1.01]], (3.0, -2.0))
    x, y = np.meshgrid(np.arange(7.0), np.arange(3.0, 8.0))
    gx, gy = t.grid((12, 7), (3, 8))
    ex, ey = t(x, y)
    assert np.allclose(gx, ex) and np.allclose(gy, ey)
    shifted = t.then(np.eye(2), (0.5, 0.25))
    sx, sy = shifted(x, y)
    assert np.allclose(sx, ex + 0.5) and np.allclose(sy, ey + 0.25)
    assert np.allclose(t.jacobian(2.0, 5.0), [[0.99, -0.02], [0.03, 1.01]])
    det = t.jacobian_determinant_grid((12, 7), (0, 12))
    assert np.allclose(det, 0.99 * 1.01 + 0.02 * 0.03)
    with pytest.raises(ValueError, match="coefficients of shape"):
        PixelTransform(np.zeros((2, 4)), 1)


def test_invalid_inputs_are_rejected_with_named_problems():
    with pytest.raises(ValueError, match="method"):
        AlignConfig(method="lanczos")
    with pytest.raises(ValueError, match="variance shape"):
        align_to_grid(
            np.zeros(SHAPE), tan_wcs(SHAPE), tan_wcs(SHAPE), SHAPE, variance=np.ones((10, 10))
        )
    with pytest.raises(ValueError, match="2-D"):
        align_to_grid(np.zeros(10), tan_wcs(SHAPE), tan_wcs(SHAPE), SHAPE)
    with pytest.raises(ValueError, match="refine=True needs"):
        align_to_grid(
            np.zeros(SHAPE), tan_wcs(SHAPE), tan_wcs(SHAPE), SHAPE, config=AlignConfig(refine=True)
        )


# --------------------------------------------------------------------------
# Real data: DECam pair (TPV WCS, big-endian float64)
# --------------------------------------------------------------------------


def load_decam(real_data, name):
    with fits.open(real_data / "images" / "decam_sfft" / name) as hdul:
        hdu = hdul["N6"]
        return hdu.data.astype(np.float64), WCS(hdu.header)


def test_real_decam_pair_wcs_transform_is_identity_and_stars_measure_the_residual(real_data):
    sci, w_sci = load_decam(real_data, "Stack-DEC-OBS04.fits")
    ref, w_ref = load_decam(real_data, "Stack-DEC-OBS18.fits")

    fit = fit_wcs_transform(w_sci, w_ref, ref.shape)
    geom = fit.transform.describe(127.5, 127.5)
    # The two headers differ only by a 1e-11 px rounding of CRPIX2.
    assert fit.degree == 1 and fit.max_residual < 1e-6
    assert abs(geom["dx"]) < 1e-6 and abs(geom["dy"]) < 1e-6
    assert abs(geom["rotation_deg"]) < 1e-6 and geom["scale"] == pytest.approx(1.0, abs=1e-9)

    by_wcs = align_to_grid(sci, w_sci, w_ref, ref.shape, config=AlignConfig(refine=False))
    assert by_wcs.method == "wcs/integer-shift"
    assert np.array_equal(by_wcs.data, sci.astype(np.float32))

    # Star centroids on the two images (both native byte order now).
    sci_stars = find_alignment_stars(sci, threshold=5.0)
    ref_stars = find_alignment_stars(ref, threshold=5.0)
    assert len(sci_stars) >= 10 and len(ref_stars) >= 8
    match = align_to_grid(
        sci,
        w_sci,
        w_ref,
        ref.shape,
        sources_from=sci_stars,
        sources_to=ref_stars,
        config=AlignConfig(refine=False),
    )
    # Measured on this pair: the stars agree to 0.6 px, not better; the
    # offset is systematic, (+0.53, +0.28) px science minus reference.
    assert match.n_matched >= 8
    assert 0.3 < match.residual_rms < 1.0
    offsets = match.star_match.matched_from_xy - match.star_match.matched_to_xy
    median = np.median(offsets, axis=0)
    assert median == pytest.approx([0.53, 0.28], abs=0.1)
    assert np.all(np.hypot(*offsets.T) < 1.0)

    # So refine="auto" takes it out: after it the stars agree within 0.3 px.
    refined = align_to_grid(
        sci, w_sci, w_ref, ref.shape, sources_from=sci_stars, sources_to=ref_stars
    )
    assert refined.method == "wcs+stars/spline3-affine"
    assert refined.residual_rms < 0.35
    moved = find_alignment_stars(refined.data, mask=refined.mask, threshold=5.0)
    dist, idx = cKDTree(ref_stars).query(moved)
    close = dist < 1.5
    assert np.median(np.hypot(*(ref_stars[idx[close]] - moved[close]).T)) < 0.3
    assert isinstance(refined, AlignedImage)
