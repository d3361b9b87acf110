"""Reading real and broken FITS files, and writing them atomically."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from astrid_assets.science.fitsio import FitsInputError, read_image, write_fits_atomic


def test_read_decam_stack_takes_extension_keywords_and_wcs(real_data: Path) -> None:
    image = read_image(real_data / "images/decam_sfft/Stack-DEC-OBS04.fits")
    assert image.shape == (256, 256)
    assert image.data.dtype == np.float32 and image.data.dtype.isnative
    assert image.hdu_name == "N6"
    assert image.wcs is not None and image.wcs.has_celestial
    assert image.gain == pytest.approx(3.98, abs=0.01)
    assert image.read_noise == pytest.approx(11.84, abs=0.01)
    assert image.saturation == pytest.approx(46536.1, abs=0.1)


def test_read_toros_frame_without_wcs_or_gain(real_data: Path) -> None:
    image = read_image(real_data / "images/toros_null_pair/aligned_eso085-030-004.fit")
    assert image.shape == (682, 1024)
    assert image.wcs is None and image.gain is None
    assert image.data.max() == pytest.approx(65535.0)
    assert not image.mask.any()


def test_nan_pixels_are_masked_and_zeroed(tmp_path: Path) -> None:
    data = np.ones((20, 30), np.float32)
    data[3, 4] = np.nan
    data[5, 6] = np.inf
    fits.writeto(tmp_path / "nan.fits", data)
    image = read_image(tmp_path / "nan.fits")
    assert image.mask.sum() == 2 and image.mask[3, 4] and image.mask[5, 6]
    assert image.data[3, 4] == 0.0


def test_gzip_compressed_file_reads_the_same(tmp_path: Path) -> None:
    data = np.arange(64, dtype=np.float32).reshape(8, 8)
    fits.writeto(tmp_path / "a.fits", data)
    (tmp_path / "a.fits.gz").write_bytes(gzip.compress((tmp_path / "a.fits").read_bytes()))
    np.testing.assert_array_equal(read_image(tmp_path / "a.fits.gz").data, data)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("truncated", "truncated"),
        ("text", "not a readable FITS file"),
        ("allnan", "no finite pixel"),
        ("table", "no 2-D image"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path: Path, content: str, problem: str):
    path = tmp_path / f"{content}.fits"
    if content == "truncated":
        fits.writeto(path, np.zeros((100, 100), np.float32))
        path.write_bytes(path.read_bytes()[:20000])
    elif content == "text":
        path.write_text("not a fits file at all\n" * 200)
    elif content == "allnan":
        fits.writeto(path, np.full((10, 10), np.nan, np.float32))
    else:
        Table({"a": [1, 2]}).write(path)
    with pytest.raises(FitsInputError) as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert problem in str(info.value)


def test_missing_file_is_reported() -> None:
    with pytest.raises(FitsInputError, match="file not found"):
        read_image("/nonexistent/astrid.fits")


def test_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    out = write_fits_atomic(
        tmp_path / "sub" / "d.fits",
        {"D": (np.ones((4, 4), np.float32), None)},
        {"CANDIDATES": Table({"x": [1.0], "y": [2.0]})},
    )
    with fits.open(out) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "D", "CANDIDATES"]
        assert hdul["CANDIDATES"].data["y"][0] == 2.0
    assert sorted(p.name for p in out.parent.iterdir()) == ["d.fits"]
