"""Round trips of every image product through FITS, and the errors of bad files."""

from __future__ import annotations

import dataclasses
import io
import math
import re

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from astrid_assets.science.align import PixelTransform
from astrid_assets.science.processing import FieldReference
from astrid_assets.sources import RawExposure
from astrid_assets.storage import fits_codec
from astrid_assets.storage.fits_codec import SMOOTH_STEP, decode, encode, from_bytes, to_bytes


def round_trip(obj, quantize_level: float = 16.0):
    return from_bytes(to_bytes(obj, quantize_level), source="test.fits")


def scalars(obj) -> dict:
    """The scalar (and tuple) fields of a dataclass."""
    kinds = (int, float, str, bool, tuple, type(None), np.number)
    return {
        f.name: getattr(obj, f.name)
        for f in dataclasses.fields(obj)
        if isinstance(getattr(obj, f.name), kinds)
    }


def assert_same_scalars(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == value, key
            assert type(got[key]) is type(value) or isinstance(value, np.floating), key


def assert_same_table(got: Table, expected: Table) -> None:
    assert got.colnames == expected.colnames
    assert len(got) == len(expected)
    for name in expected.colnames:
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(expected[name]), name)


def assert_quantized(got, expected, variance, slack: float = 0.0) -> None:
    """Within one quantization step, (noise of the row) / 16, of the original;
    the tiles are rows and their noise is estimated from their pixels."""
    assert got.dtype == np.float32
    row_noise = np.sqrt(np.median(variance, axis=1))
    assert np.all(np.abs(got - expected).max(axis=1) <= row_noise / 16 + slack)


def test_raw_exposure_round_trips_exactly(products):
    raw = products.raw
    back = round_trip(raw)
    assert (back.night, back.field) == (raw.night, raw.field)
    assert back.data.dtype == raw.data.dtype
    np.testing.assert_array_equal(back.data, raw.data)
    assert [(c.keyword, c.value) for c in back.header.cards] == [
        (c.keyword, c.value) for c in raw.header.cards
    ]
    assert_same_table(back.truth, raw.truth)


def test_raw_exposure_is_stored_as_integers_in_the_primary_header_layout(products):
    hdul = fits.open(io.BytesIO(to_bytes(products.raw)), disable_image_compression=True)
    assert [h.name for h in hdul] == ["PRIMARY", "RAW", "TRUTH"]
    assert hdul[0].header["ASTRPROD"] == "RawExposure"
    assert hdul[0].header["GAIN"] == products.raw.header["GAIN"]
    assert hdul["RAW"].header["ZCMPTYPE"] == "RICE_1"
    assert hdul["RAW"].header["ZBITPIX"] == 32
    assert hdul["RAW"].header["CTYPE1"] == products.raw.header["CTYPE1"]


def test_non_integer_raw_data_is_stored_losslessly():
    data = np.random.default_rng(3).normal(1000.0, 5.0, (64, 48)).astype(np.float32)
    header = fits.Header({"GAIN": 1.5, "MJD-OBS": 61046.123456789012})
    back = round_trip(RawExposure("2026-01-05", "F02", data, header))
    np.testing.assert_array_equal(back.data, data)
    assert back.header["MJD-OBS"] == 61046.123456789012
    assert back.truth is None


def test_a_delivered_calibrated_exposure_and_its_empty_masters_round_trip():
    from astrid_assets.science.processing import CalibrationMasters

    data = np.random.default_rng(4).normal(0.0, 8.0, (32, 32)).astype(np.float32)
    raw = RawExposure("2018-08-03", "N6", data, fits.Header({"GAIN": 4.0}), calibrated=True)
    back = round_trip(raw)
    assert back.calibrated is True and "ASTRCAL" not in back.header
    assert round_trip(RawExposure("2018-08-03", "N6", data, fits.Header())).calibrated is False
    masters = round_trip(CalibrationMasters.delivered())
    assert masters.empty and masters.flat is None and masters.bad_pixels is None


def test_calibration_masters_round_trip_exactly(products):
    masters = products.masters
    back = round_trip(masters)
    for name in ("bias", "flat", "bad_pixels"):
        got, expected = getattr(back, name), getattr(masters, name)
        assert_same_scalars(scalars(got), scalars(expected))
        for field in dataclasses.fields(expected):
            value = getattr(expected, field.name)
            if isinstance(value, np.ndarray):
                assert getattr(got, field.name).dtype == value.dtype, field.name
                np.testing.assert_array_equal(getattr(got, field.name), value, field.name)


def test_processed_exposure_round_trip(products):
    exposure = products.processed
    back = round_trip(exposure)
    assert back.gain == exposure.gain and back.read_noise == exposure.read_noise
    assert_same_scalars(scalars(back.psf), scalars(exposure.psf))
    np.testing.assert_array_equal(back.psf.stamp, exposure.psf.stamp)
    assert back.zero_point == exposure.zero_point
    assert_same_scalars(scalars(back.quality), scalars(exposure.quality))
    assert_same_scalars(scalars(back.background), scalars(exposure.background))
    assert_quantized(back.data, exposure.data, exposure.variance)
    assert np.all(back.data[exposure.mask] == 0)
    assert np.abs(back.variance - exposure.variance).max() <= 0.01 * np.median(exposure.variance)
    for name in ("background", "rms"):
        got, expected = getattr(back.background, name), getattr(exposure.background, name)
        assert np.abs(got - expected).max() <= SMOOTH_STEP / 2 * 1.01
    assert back.mask.dtype == bool
    np.testing.assert_array_equal(back.mask, exposure.mask)
    assert back.flags.dtype == exposure.flags.dtype
    np.testing.assert_array_equal(back.flags, exposure.flags)
    assert_same_table(back.sources, exposure.sources)
    assert back.wcs.to_header() == exposure.wcs.to_header()


def test_processed_exposure_with_odd_scalars_round_trips_exactly(products):
    exposure = dataclasses.replace(
        products.processed,
        psf=dataclasses.replace(
            products.processed.psf, theta=-0.0012345678901234567, residual_rms=float("nan")
        ),
        zero_point=None,
        wcs=None,
        gain=float("inf"),
    )
    back = round_trip(exposure)
    assert back.psf.theta == -0.0012345678901234567
    assert math.isnan(back.psf.residual_rms)
    assert back.zero_point is None and back.wcs is None
    assert back.gain == float("inf")


def test_quantize_level_zero_is_lossless(products):
    exposure = products.processed
    back = round_trip(exposure, quantize_level=0)
    np.testing.assert_array_equal(back.data, exposure.data)
    np.testing.assert_array_equal(back.variance, exposure.variance)
    np.testing.assert_array_equal(back.background.background, exposure.background.background)


def test_field_reference_round_trip(products):
    field_reference = products.reference
    ref, prepared = field_reference.reference, field_reference.prepared
    back = round_trip(field_reference)
    assert_same_scalars(scalars(back.reference), scalars(ref))
    for name in ("weights", "flux_scales", "merit", "epoch_fwhm", "rejected_fraction"):
        np.testing.assert_array_equal(getattr(back.reference, name), getattr(ref, name), name)
    assert back.reference.n_epochs.dtype == np.int16
    np.testing.assert_array_equal(back.reference.n_epochs, ref.n_epochs)
    np.testing.assert_array_equal(back.reference.mask, ref.mask)
    np.testing.assert_array_equal(back.reference.psf, ref.psf)
    assert_quantized(back.prepared.data, prepared.data, prepared.variance)
    assert_quantized(back.reference.data, ref.data, prepared.variance, slack=SMOOTH_STEP)
    assert np.all(back.reference.data[ref.mask] == 0)
    assert_same_scalars(scalars(back.prepared), scalars(prepared))
    assert back.prepared.gain is None
    assert_same_table(back.prepared.sources, prepared.sources)
    assert back.registration == field_reference.registration


def test_field_reference_keeps_unused_epochs_and_registration_extras(products):
    field_reference = products.reference
    ref = field_reference.reference
    n = len(ref.merit)
    used = (1, n - 1)
    sparse = dataclasses.replace(
        ref,
        epochs_used=used,
        weights=np.array([0.25, 0.75]),
        flux_scales=np.array([1.0, 1.1]),
        rejected_fraction=np.array([0.0, 0.01]),
    )
    registration = [
        {"method": "wcs", "residual_rms": None if i == 0 else 0.05 * i, "night": f"N{i}", "n": i}
        for i in range(n)
    ]
    back = round_trip(FieldReference(sparse, field_reference.prepared, registration))
    assert back.reference.epochs_used == used
    np.testing.assert_array_equal(back.reference.weights, [0.25, 0.75])
    np.testing.assert_array_equal(back.reference.merit, ref.merit)
    assert back.registration == registration


def test_subtraction_round_trip(products):
    subtraction = products.subtraction
    result = subtraction.result
    back = round_trip(subtraction)
    assert back.result.method == result.method
    assert back.result.difference_noise == result.difference_noise
    assert back.result.flux_ratio == result.flux_ratio
    scalar_details = {
        k: v for k, v in result.details.items() if v is None or isinstance(v, (str, int, float))
    }
    assert back.result.details == scalar_details
    assert "S" not in back.result.details
    assert back.timings == subtraction.timings
    np.testing.assert_array_equal(back.result.mask, result.mask)
    np.testing.assert_array_equal(back.result.difference_psf, result.difference_psf)
    assert np.abs(back.result.difference - result.difference).max() <= result.difference_noise
    assert np.abs(back.result.score - result.score).max() <= 1 / 16 * 1.5
    assert np.all(back.result.difference[result.mask] == 0)
    assert np.abs(back.science - subtraction.science).max() <= result.difference_noise
    reg, got = subtraction.registration, back.registration
    assert got["method"] == reg["method"]
    assert got["residual_rms"] == reg["residual_rms"]
    assert got["sigma"] == tuple(float(s) for s in reg["sigma"])
    transform: PixelTransform = got["transform"]
    np.testing.assert_array_equal(transform.coeffs, reg["transform"].coeffs)
    assert (transform.degree, transform.center, transform.scale) == (
        reg["transform"].degree,
        reg["transform"].center,
        reg["transform"].scale,
    )


def test_subtraction_without_transform(products):
    subtraction = dataclasses.replace(
        products.subtraction, registration={"method": "none", "sigma": None, "transform": None}
    )
    back = round_trip(subtraction)
    assert back.registration["transform"] is None
    assert back.registration["sigma"] is None
    assert "TRANSFORM" not in fits.open(io.BytesIO(to_bytes(subtraction)))


def test_encode_names_the_product_and_counts_the_hdus(products):
    hdul = encode(products.processed)
    assert hdul[0].header["ASTRPROD"] == "ProcessedExposure"
    assert hdul[0].header["ASTRNHDU"] == len(hdul) == 9
    assert [h.name for h in hdul[1:]] == [
        "SCI",
        "VAR",
        "MASK",
        "FLAGS",
        "BKG",
        "BKGRMS",
        "PSF",
        "SOURCES",
    ]
    assert isinstance(decode(hdul), type(products.processed))


def test_unknown_object_cannot_be_encoded():
    with pytest.raises(TypeError, match="no FITS encoding for dict"):
        to_bytes({"not": "a product"})


def test_truncated_file_names_the_path(products, tmp_path):
    path = tmp_path / "F01.fits"
    data = to_bytes(products.processed)
    for cut in (0, 1000, len(data) // 2, len(data) - 2880):
        with pytest.raises(ValueError, match=re.escape(str(path))) as info:
            from_bytes(data[:cut], source=str(path))
        assert any(word in str(info.value) for word in ("truncated", "empty"))


def test_corrupt_file_is_detected(products):
    data = bytearray(to_bytes(products.raw))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(ValueError, match=re.escape("raw.fits")):
        from_bytes(bytes(data), source="raw.fits")


def test_unknown_product_and_missing_hdu_are_named(products):
    hdul = encode(products.processed)
    hdul[0].header["ASTRPROD"] = "Spectrum"
    with pytest.raises(ValueError, match=re.escape("x.fits: unknown ASTRPROD 'Spectrum'")):
        decode(hdul, source="x.fits")
    hdul = encode(products.processed)
    del hdul["BKGRMS"]
    hdul[0].header["ASTRNHDU"] = len(hdul)
    buffer = io.BytesIO()
    hdul.writeto(buffer)
    with pytest.raises(ValueError, match=re.escape("y.fits: missing HDU BKGRMS")):
        from_bytes(buffer.getvalue(), source="y.fits")


def test_plain_fits_file_is_not_a_product():
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(np.zeros((4, 4)))]).writeto(buffer)
    with pytest.raises(ValueError, match=re.escape("plain.fits: not an AstrID product")):
        from_bytes(buffer.getvalue(), source="plain.fits")


def test_image_hdu_policy():
    rng = np.random.default_rng(0)
    noisy = fits_codec.image_hdu("SCI", rng.normal(size=(32, 32)), "noisy")
    assert noisy.compression_type == "RICE_1" and noisy.quantize_level == 16.0
    smooth = fits_codec.image_hdu("BKG", np.ones((32, 32)), "smooth")
    assert smooth.quantize_level == -SMOOTH_STEP
    assert fits_codec.image_hdu("M", np.ones((8, 8), bool), "mask").header["ASTRTYPE"] == "bool"
    assert fits_codec.image_hdu("E", np.ones((8, 8)), "exact").compression_type == "GZIP_2"
    assert type(fits_codec.image_hdu("PSF", np.ones((5, 5)), "small")) is fits.ImageHDU
    with pytest.raises(ValueError, match="must be bool or integer"):
        fits_codec.image_hdu("F", np.ones((4, 4)), "integer")
