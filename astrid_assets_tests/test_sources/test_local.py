"""LocalFitsSource: real DECam frames sorted into nights and fields by their headers,
in every compression, as multi-extension files, with a manifest, and on an object store."""

from __future__ import annotations

import bz2
import gzip
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astrid_assets.science.fitsio import FitsInputError
from astrid_assets.science.processing import process_exposure
from astrid_assets.sources.base import night_of
from astrid_assets.sources.local import LocalFitsSource, ManifestError

SCIENCE = "Stack-DEC-OBS04.fits"
REFERENCE = "Stack-DEC-OBS18.fits"
CTIO_LONGITUDE = -70.815


@pytest.fixture(scope="module")
def decam(real_data) -> Path:
    return real_data / "images" / "decam_sfft"


def _hdu(decam: Path, name: str) -> tuple[np.ndarray, fits.Header]:
    with fits.open(decam / name) as hdul:
        return hdul[0].data.astype(np.float32), hdul[0].header.copy()


def _write(path: Path, data: np.ndarray, header: fits.Header, **cards) -> Path:
    header = header.copy()
    for key, value in cards.items():
        header[key.replace("_", "-")] = value
    fits.PrimaryHDU(data, header).writeto(path)
    return path


def test_night_is_the_local_date_of_the_evening():
    # 2018-08-04 09:23 UTC is 05:40 local mean time at CTIO: the night of the 3rd.
    assert night_of(58334.39133794, CTIO_LONGITUDE) == "2018-08-03"
    # Just before local midnight and just after are the same night.
    assert night_of(58334.0 + 0.49, 0.0) == night_of(58334.0 + 0.51 - 1, 0.0) == "2018-08-03"
    # 20:00 local at Palomar (UTC-7.8 h) on 2020-02-01 is 03:50 UTC on the 2nd.
    assert night_of(58881.16, -116.86) == "2020-02-01"


def test_fields_from_object_nights_from_mjd_and_every_compression(decam, tmp_path):
    data, header = _hdu(decam, SCIENCE)
    ref, ref_header = _hdu(decam, REFERENCE)
    _write(tmp_path / "ref.fits", ref, ref_header, OBJECT="DES SN C3", MJD_OBS=57618.19)
    plain = _write(tmp_path / "a.fits", data, header, OBJECT="DES SN C3", MJD_OBS=58334.39)
    for opener, suffix in ((gzip.open, ".gz"), (bz2.open, ".bz2")):
        other = tmp_path / f"night{suffix}.fits{suffix}"
        with opener(other, "wb") as out:
            header2 = header.copy()
            header2["OBJECT"] = "DES SN C3"
            header2["MJD-OBS"] = 58334.39 + (1 if suffix == ".gz" else 2)
            out.write(_bytes(data, header2))
    tiled = header.copy()
    tiled["OBJECT"] = "DES SN C3"
    tiled["MJD-OBS"] = 58337.39
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, tiled)]).writeto(
        tmp_path / "c.fits.fz"
    )
    (tmp_path / "notes.txt").write_text("not a FITS file")
    source = LocalFitsSource(root=str(tmp_path), site_longitude=CTIO_LONGITUDE)

    assert source.fields() == ["DES-SN-C3"]
    assert source.template_nights("DES-SN-C3") == ["2016-08-17"]
    assert source.nights() == ["2018-08-03", "2018-08-04", "2018-08-05", "2018-08-06"]
    assert source.problems() == []
    for night in source.nights():
        exposure = source.exposure(night, "DES-SN-C3")
        assert exposure.data.shape == (256, 256)
        np.testing.assert_allclose(exposure.data, data, rtol=0, atol=2.0)  # .fz quantizes
        assert exposure.calibrated  # no bias or flat frames that night
        assert exposure.header["GAIN"] == pytest.approx(header["GAIN"])
    reference = source.exposure("2016-08-17", "DES-SN-C3")
    np.testing.assert_array_equal(reference.data, ref)
    wcs, shape = source.grid("DES-SN-C3")
    assert shape == (256, 256) and wcs.has_celestial
    assert source.pixel_scale() == pytest.approx(0.2623, abs=1e-3)
    assert {f.path for f in source.frames} >= {plain.name, "c.fits.fz", "night.gz.fits.gz"}


def _bytes(data: np.ndarray, header: fits.Header) -> bytes:
    import io

    buffer = io.BytesIO()
    fits.PrimaryHDU(data, header).writeto(buffer)
    return buffer.getvalue()


def test_a_mosaic_file_gives_one_field_per_science_extension(decam, tmp_path):
    data, header = _hdu(decam, SCIENCE)
    primary = fits.PrimaryHDU()
    primary.header["OBJECT"] = "COSMOS"
    primary.header["MJD-OBS"] = 58334.39
    extensions = [primary]
    for name in ("N6", "N7"):
        ext_header = header.copy()
        for key in ("OBJECT", "MJD-OBS", "DATE-OBS"):
            ext_header.remove(key, ignore_missing=True)
        extensions.append(fits.ImageHDU(data, ext_header, name=name))
    extensions.append(fits.ImageHDU(np.zeros((256, 256), np.int16), name="MASK"))
    extensions.append(fits.ImageHDU(np.ones((25, 25), np.float32), name="KERNEL"))
    fits.HDUList(extensions).writeto(tmp_path / "mosaic.fits")
    source = LocalFitsSource(root=str(tmp_path))

    assert source.fields() == ["COSMOS.N6", "COSMOS.N7"]
    frame = next(f for f in source.frames if f.field == "COSMOS.N7")
    assert (frame.hdu, frame.extname) == (2, "N7")
    # Keywords only the primary header has (the time) reach each extension.
    assert source.exposure(source.template_nights("COSMOS.N7")[0], "COSMOS.N7").header[
        "MJD-OBS"
    ] == pytest.approx(58334.39)


def test_frames_without_a_field_name_are_grouped_by_pointing(decam, tmp_path):
    data, header = _hdu(decam, SCIENCE)
    header.remove("OBJECT", ignore_missing=True)
    for i, (shift, mjd) in enumerate(((0.0, 58334.39), (0.02, 58335.39), (1.0, 58336.39))):
        moved = header.copy()
        moved["CRVAL1"] += shift  # 0.02 deg is 0.5' on the sky at this dec; 1 deg is far
        moved["MJD-OBS"] = mjd
        _write(tmp_path / f"f{i}.fits", data, moved)
    source = LocalFitsSource(root=str(tmp_path), cluster_radius_arcmin=10)

    fields = source.fields()
    groups = sorted(sorted(f.path for f in source.frames if f.field == name) for name in fields)
    assert groups == [["f0.fits", "f1.fits"], ["f2.fits"]]
    assert all(name.startswith("J21") for name in fields)


def test_the_manifest_sets_nights_fields_roles_and_zero_points(decam, tmp_path):
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(
        f"""
only_listed: true
files:
  - path: {REFERENCE}
    night: 2016-08-17
    field: DECam N6
    role: reference
  - path: {SCIENCE}
    night: 2018-08-03
    field: DECam N6
    zero_point: 31.25
    header: {{AIRMASS: 1.7}}
"""
    )
    source = LocalFitsSource(root=str(decam), manifest=str(manifest))

    assert source.fields() == ["DECam-N6"]
    assert source.template_nights("DECam-N6") == ["2016-08-17"]
    assert source.nights() == ["2018-08-03"]
    science = source.exposure("2018-08-03", "DECam-N6")
    assert science.header["AIRMASS"] == 1.7
    assert source.stated_zero_point(science) == 31.25
    reference = source.exposure("2016-08-17", "DECam-N6")
    assert source.stated_zero_point(reference) is None  # nothing states one
    assert source.calibration_frames("2018-08-03").biases == []
    with pytest.raises(ValueError, match="no exposure of field DECam-N6 on night 2018-08-04"):
        source.exposure("2018-08-04", "DECam-N6")
    with pytest.raises(ValueError, match="unknown field 'F01'"):
        source.exposure("2018-08-03", "F01")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("files:\n  - path: a.fits\n    nite: 2020-01-01\n", "unknown key.*nite"),
        ("files:\n  - path: a.fits\n    night: 2020-13-01\n", "not readable YAML.*month must be"),
        ("files:\n  - path: a.fits\n    role: template\n", "role 'template' is not one of"),
        ("files:\n  - night: 2020-01-01\n", r"files\[0\] has no path"),
        ("- just a list\n", "expected a mapping"),
    ],
)
def test_a_wrong_manifest_is_refused_by_name(tmp_path, text, message):
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(text)
    source = LocalFitsSource(root=str(tmp_path), manifest=str(manifest))
    with pytest.raises(ManifestError, match=message) as err:
        source.fields()
    assert str(manifest) in str(err.value)


def test_unplaceable_and_unusable_frames_are_named(decam, tmp_path):
    data, header = _hdu(decam, SCIENCE)
    header["OBJECT"] = "FIELD-A"
    _write(tmp_path / "good.fits", data, header)
    later = header.copy()
    later["MJD-OBS"] = 58340.39
    for key in ("GAIN", "GAINA", "GAINB", "EGAIN", "CCDGAIN"):
        later.remove(key, ignore_missing=True)
    _write(tmp_path / "nogain.fits", data, later)
    timeless = header.copy()
    timeless.remove("MJD-OBS")
    timeless.remove("DATE-OBS")
    _write(tmp_path / "timeless.fits", data, timeless)
    (tmp_path / "truncated.fits").write_bytes((tmp_path / "good.fits").read_bytes()[:4000])
    source = LocalFitsSource(root=str(tmp_path))

    problems = "\n".join(source.problems())
    assert "timeless.fits[N6]: no MJD-OBS or DATE-OBS" in problems
    assert "truncated.fits" in problems
    night = source.nights()[0]
    with pytest.raises(FitsInputError, match=r"nogain\.fits: HDU 0 header has no GAIN"):
        source.exposure(night, "FIELD-A")


def test_a_night_with_bias_and_flat_frames_is_calibrated_with_them(tmp_path):
    rng = np.random.default_rng(3)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [64, 64]
    wcs.wcs.cdelt = [-0.0001, 0.0001]
    base = wcs.to_header()
    base.update({"MJD-OBS": 60000.2, "GAIN": 2.0, "RDNOISE": 5.0, "SATURATE": 60000})
    for i in range(3):
        header = base.copy()
        header["IMAGETYP"] = "zero"
        _write(tmp_path / f"bias{i}.fits", (500 + rng.normal(0, 2.5, (128, 128))), header)
        header["IMAGETYP"] = "dome flat"
        flat = 500 + 20000 + rng.normal(0, 100, (128, 128))
        _write(tmp_path / f"flat{i}.fits", flat, header)
    header = base.copy()
    header["IMAGETYP"] = "object"
    header["OBJECT"] = "M31"
    _write(tmp_path / "sci.fits", 500 + 1000 + rng.normal(0, 23, (128, 128)), header)
    source = LocalFitsSource(root=str(tmp_path))

    assert source.fields() == ["M31"]
    frames = source.calibration_frames("2023-02-24")
    assert (len(frames.biases), len(frames.flats)) == (3, 3)
    assert not source.exposure("2023-02-24", "M31").calibrated


def test_a_delivered_frame_gets_the_variance_of_its_measured_sky_noise(decam):
    """A sky-subtracted stack: the photon model alone would give it a variance of
    read noise only; the measured pedestal restores the sky's share."""
    data, header = _hdu(decam, SCIENCE)
    processed = process_exposure(
        data,
        None,
        gain=float(header["GAIN"]),
        read_noise=float(header["RDNOISE"]),
        saturation=float(header["SATURATE"]),
    )
    sky_noise = float(np.median(processed.background.rms))
    assert np.median(np.sqrt(processed.variance)) == pytest.approx(sky_noise, rel=0.1)
    assert np.median(processed.data) == pytest.approx(0.0, abs=0.5 * sky_noise)
    assert processed.mask.mean() < 0.01  # stars are not taken for cosmic rays


def test_an_object_store_prefix_is_a_source(decam, tmp_path, monkeypatch):
    import s3fs

    from astrid_assets_tests.servers import S3Server

    with S3Server(bucket="frames") as server:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
        fs = s3fs.S3FileSystem(endpoint_url=server.endpoint_url)
        for name in (SCIENCE, REFERENCE):
            fs.put(str(decam / name), f"frames/decam/{name}")
        manifest = tmp_path / "m.yaml"
        manifest.write_text(
            f"files:\n  - path: {REFERENCE}\n    night: 2016-08-17\n    role: reference\n"
            f"  - path: {SCIENCE}\n    night: 2018-08-03\n"
            "defaults:\n  field: N6\n"
        )
        source = LocalFitsSource(
            root="s3://frames/decam", manifest=str(manifest), endpoint_url=server.endpoint_url
        )
        assert source.fields() == ["N6"]
        exposure = source.exposure("2018-08-03", "N6")
        np.testing.assert_array_equal(exposure.data, _hdu(decam, SCIENCE)[0])
        assert source.template_nights("N6") == ["2016-08-17"]


def test_the_header_index_rereads_only_new_and_changed_files(decam, tmp_path, monkeypatch):
    data, header = _hdu(decam, SCIENCE)
    root = tmp_path / "frames"
    root.mkdir()
    for i in range(3):
        _write(root / f"f{i}.fits", data, header, OBJECT="A", MJD_OBS=58334.39 + i)
    index = tmp_path / "index.json"
    opened: list[str] = []
    real_open = LocalFitsSource._open

    def counting_open(self, relative):
        opened.append(relative)
        return real_open(self, relative)

    monkeypatch.setattr(LocalFitsSource, "_open", counting_open)
    first = LocalFitsSource(root=str(root), index_cache=str(index))
    assert first.fields() == ["A"] and sorted(opened) == ["f0.fits", "f1.fits", "f2.fits"]

    opened.clear()
    (root / "f1.fits").unlink()
    _write(root / "f1.fits", data, header, OBJECT="B", MJD_OBS=58335.39)
    _write(root / "f3.fits", data, header, OBJECT="B", MJD_OBS=58336.39)
    second = LocalFitsSource(root=str(root), index_cache=str(index))
    assert second.fields() == ["A", "B"]
    assert sorted(opened) == ["f1.fits", "f3.fits"]  # f0 and f2 came from the index
    assert second.nights() == ["2018-08-05"]  # each field's first night is its template


def test_a_catalogue_calibrates_the_frames(decam, tmp_path):
    """Stars of the frame written with mag = 28 - 2.5 log10(flux): the zero point
    fitted through the source's catalogue must come back as 28."""
    from astropy.table import Table

    from astrid_assets.defs.calibration import calibrate
    from astrid_assets.science.processing import CalibrationMasters

    data, header = _hdu(decam, SCIENCE)
    measured = process_exposure(
        data,
        None,
        gain=float(header["GAIN"]),
        read_noise=float(header["RDNOISE"]),
        saturation=float(header["SATURATE"]),
        wcs=WCS(header).celestial,
    ).sources
    bright = measured[(measured["snr"] > 20) & ~measured["saturated"]]
    catalogue = Table(
        {
            "RA": np.append(np.asarray(bright["ra"]), header["CRVAL1"] + 5.0),  # one far away
            "Dec": np.append(np.asarray(bright["dec"]), header["CRVAL2"]),
            "mag": np.append(28.0 - 2.5 * np.log10(np.asarray(bright["flux"])), 15.0),
            "mag_err": np.full(len(bright) + 1, 0.01),
        }
    )
    path = tmp_path / "stars.ecsv"
    catalogue.write(path)
    root = tmp_path / "frames"
    root.mkdir()
    _write(root / "sci.fits", data, header, OBJECT="N6")
    _write(root / "ref.fits", data, header, OBJECT="N6", MJD_OBS=57000.2)
    source = LocalFitsSource(root=str(root), catalog_path=str(path))

    assert len(source.catalog("N6")) == len(bright)  # the far star is not the field's
    night = source.nights()[0]
    processed = calibrate(source.exposure(night, "N6"), CalibrationMasters.delivered(), source)
    assert processed.zero_point.n_stars >= 5
    assert processed.zero_point.zero_point == pytest.approx(28.0, abs=0.05)

    catalogue.remove_column("mag")
    catalogue.write(tmp_path / "nomag.ecsv")
    broken = LocalFitsSource(root=str(root), catalog_path=str(tmp_path / "nomag.ecsv"))
    with pytest.raises(ValueError, match=r"nomag\.ecsv: no column mag"):
        broken.catalog("N6")


def test_raw_frames_without_masters_and_half_a_set_of_masters_are_refused(decam):
    from astrid_assets.defs.calibration import calibrate, night_masters
    from astrid_assets.sources import CalibrationFrames, RawExposure, SimulatedSurvey

    assert night_masters(CalibrationFrames("2018-08-03", [], [])).empty
    bias = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match=r"night 2018-08-03: 1 bias and 0 flat .*no flat frames"):
        night_masters(CalibrationFrames("2018-08-03", [bias], []))
    data, header = _hdu(decam, SCIENCE)
    raw = RawExposure("2018-08-03", "F01", data, header, calibrated=False)
    delivered = night_masters(CalibrationFrames("2018-08-03", [], []))
    with pytest.raises(ValueError, match="raw exposure F01 2018-08-03 needs bias and flat frames"):
        calibrate(raw, delivered, SimulatedSurvey(size=256))
