"""Cutouts as gzipped FITS: the bytes astropy writes, and back to the same pixels."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pytest
from astropy.io import fits

from astrid_assets.alerts.stamps import fits_stamp, gzip_stamp, read_stamp


@pytest.fixture
def stamp() -> np.ndarray:
    image = np.random.default_rng(3).normal(100.0, 10.0, (63, 63)).astype(np.float32)
    image[:, :5] = np.nan
    image[30, 30] = -3.5e3
    return image


def test_fits_stamp_is_the_file_astropy_writes(stamp):
    buffer = io.BytesIO()
    fits.PrimaryHDU(stamp).writeto(buffer)
    assert fits_stamp(stamp) == buffer.getvalue()
    assert len(fits_stamp(stamp)) % 2880 == 0


@pytest.mark.parametrize("level", [0, 1, 3])
def test_gzipped_stamp_decompresses_to_the_original_pixels(stamp, level):
    data = gzip_stamp(stamp, level)
    assert data[:2] == b"\x1f\x8b"
    image = fits.getdata(io.BytesIO(gzip.decompress(data)))
    np.testing.assert_array_equal(image, stamp)  # NaN where NaN
    assert image.dtype == np.dtype(">f4")
    np.testing.assert_array_equal(read_stamp(data), stamp)


def test_gzip_compresses_a_noisy_stamp_and_is_deterministic(stamp):
    data = gzip_stamp(stamp, 1)
    assert len(data) < 0.8 * len(fits_stamp(stamp))
    assert gzip_stamp(stamp, 1) == data


def test_bad_stamps_and_levels_are_refused(stamp):
    with pytest.raises(ValueError, match="2-D"):
        fits_stamp(stamp.ravel())
    with pytest.raises(ValueError, match="gzip level"):
        gzip_stamp(stamp, 9)
