"""The ZTF, PS1 and SDSS survey sources against local stand-ins of the archives.

The stand-ins are :class:`ArchiveServer` (real HTTP on loopback) answering
in each archive's documented format, as in ``test_archives``: IRSA's
metadata query filters its rows by the ``WHERE`` the source sends, the PS1
file list answers by image type, SkyServer answers the position search.
The images are real DECam cut-outs (sky-subtracted, as archives deliver
them) under the headers each survey writes: ZTF's MAGZP/READNOI/OBSMJD,
PS1's HIERARCH FPA.ZP/CELL.GAIN and asinh scaling, SDSS's NMGY/TAI.
"""

from __future__ import annotations

import bz2
import io
import math
import re
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astrid_assets.archives import ArchiveError
from astrid_assets.archives.sdss import SDSS_GAIN
from astrid_assets.archives.ztf import night_jd_range
from astrid_assets.sources import RawExposure, SurveySource
from astrid_assets.sources.archives import (
    ArchiveSource,
    Pointing,
    Ps1Source,
    SdssSource,
    ZtfQuadrant,
    ZtfSource,
)
from astrid_assets_tests.test_archives.archive_server import (
    ArchiveServer,
    Reply,
    Request,
    bad_request,
    ipac_table,
)

# Short timeouts and no pace: the retry and pacing logic is the production one.
FAST = {
    "connect_timeout": 2.0,
    "read_timeout": 5.0,
    "retries": 1,
    "backoff": 0.01,
    "min_interval": 0.0,
}


@pytest.fixture
def server() -> Iterator[ArchiveServer]:
    with ArchiveServer() as running:
        yield running


@pytest.fixture(scope="module")
def pixels(real_data: Path) -> dict[str, np.ndarray]:
    """Real sky-subtracted DECam cut-outs (256 x 256): two science epochs and a deep stack."""
    folder = real_data / "images" / "decam_sfft"
    return {
        "sci": fits.getdata(folder / "Stack-DEC-OBS04.fits").astype(np.float32),
        "sci2": fits.getdata(folder / "DEC-OBS04a.mini.fits").astype(np.float32),
        "ref": fits.getdata(folder / "Stack-DEC-OBS18.fits").astype(np.float32),
    }


def tan_header(ra: float, dec: float, scale: float, centre: tuple[float, float] = (128.5, 128.5)):
    """A TAN WCS (``scale`` arcsec/pixel) putting (ra, dec) at 1-based pixel ``centre``."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = list(centre)
    wcs.wcs.cd = [[-scale / 3600.0, 0.0], [0.0, scale / 3600.0]]
    return wcs.to_header()


def fits_bytes(data: np.ndarray, header: fits.Header) -> bytes:
    buffer = io.BytesIO()
    fits.PrimaryHDU(data, header).writeto(buffer)
    return buffer.getvalue()


def assert_delivered(raw: RawExposure, night: str, field: str, zero_point: float) -> None:
    """What the graph needs of an archive exposure, checked by value."""
    assert isinstance(raw, RawExposure)
    assert (raw.night, raw.field, raw.calibrated) == (night, field, True)
    assert raw.data.ndim == 2 and raw.data.dtype == np.float32
    assert np.isfinite(raw.data).mean() > 0.99
    assert WCS(raw.header).has_celestial
    for keyword in ("GAIN", "RDNOISE", "SATURATE", "MJD-OBS"):
        assert math.isfinite(raw.require(keyword)), keyword
    assert raw.header_zero_point() == pytest.approx(zero_point)


# ---------------------------------------------------------------- ZTF (IRSA)

ZTF_RA, ZTF_DEC = 255.695325, 61.465194
SEARCH = "/ibe/search/ztf/products/sci"
COLUMNS = [
    ("field", "int", ""),
    ("ccdid", "int", ""),
    ("qid", "int", ""),
    ("filtercode", "char", ""),
    ("obsjd", "double", "d"),
    ("filefracday", "long", ""),
    ("imgtypecode", "char", ""),
    ("exptime", "double", "s"),
    ("seeing", "double", "arcsec"),
    ("maglimit", "double", "mag"),
    ("ra", "double", "deg"),
    ("dec", "double", "deg"),
]
# Night 2018-06-10 has two exposures, the later one deeper; 2018-06-12 has one.
ZTF_ROWS = [
    (633, 13, 4, "zr", 2458280.7745949, 20180611274595, "o", 30.0, 1.98, 20.41, ZTF_RA, ZTF_DEC),
    (633, 13, 4, "zr", 2458280.8645949, 20180611364595, "o", 30.0, 2.31, 20.73, ZTF_RA, ZTF_DEC),
    (633, 13, 4, "zr", 2458282.8000000, 20180613300000, "o", 30.0, 2.05, 20.50, ZTF_RA, ZTF_DEC),
]  # fmt: skip
SCIENCE = {
    20180611274595: "/ibe/data/ztf/products/sci/2018/0611/274595/"
    "ztf_20180611274595_000633_zr_c13_o_q4_sciimg.fits",
    20180611364595: "/ibe/data/ztf/products/sci/2018/0611/364595/"
    "ztf_20180611364595_000633_zr_c13_o_q4_sciimg.fits",
    20180613300000: "/ibe/data/ztf/products/sci/2018/0613/300000/"
    "ztf_20180613300000_000633_zr_c13_o_q4_sciimg.fits",
}
REFERENCE = (
    "/ibe/data/ztf/products/ref/000/field000633/zr/ccd13/q4/ztf_000633_zr_c13_q4_refimg.fits"
)
WHERE = re.compile(
    r"field=633 AND ccdid=13 AND qid=4 AND filtercode='zr' "
    r"AND obsjd BETWEEN (?P<start>[\d.]+) AND (?P<end>[\d.]+)"
)
ZTF_MAGZP = {20180611274595: 26.12, 20180611364595: 26.31, 20180613300000: 26.20}


def ibe_search(request: Request) -> Reply:
    """IRSA's metadata query: the quadrant's rows whose obsjd lies in the WHERE's range."""
    match = WHERE.fullmatch(request.query.get("WHERE", ""))
    if match is None:
        return bad_request(f"unexpected WHERE {request.query.get('WHERE')!r}")
    start, end = float(match["start"]), float(match["end"])
    rows = [row for row in ZTF_ROWS if start <= row[4] <= end]
    return Reply(body=ipac_table(COLUMNS, rows, {"fixlen": "T"}).encode())


def ztf_science_header(row: tuple) -> fits.Header:
    header = tan_header(ZTF_RA, ZTF_DEC, 1.012)
    header.update(
        {
            "FILTER": "ZTF_r",
            "EXPTIME": 30.0,
            "OBSMJD": row[4] - 2400000.5,
            "GAIN": 6.2,
            "READNOI": 8.6,
            "SATURATE": 9000.0,
            "MAGZP": ZTF_MAGZP[row[5]],
            "SEEING": row[8],
        }
    )
    return header


@pytest.fixture
def irsa(server: ArchiveServer, pixels: dict[str, np.ndarray]) -> ArchiveServer:
    server.serve(SEARCH, ibe_search)
    for row, name in zip(ZTF_ROWS, ("sci", "sci2", "sci"), strict=True):
        data = pixels[name].copy()
        data[:4, :4] = np.nan  # pixels IRSA masked
        server.serve(SCIENCE[row[5]], Reply(body=fits_bytes(data, ztf_science_header(row))))
    reference = tan_header(ZTF_RA, ZTF_DEC, 1.012)
    # A reference header with no read noise and no time: the source fills both in.
    reference.update({"FILTER": "ZTF_r", "GAIN": 6.2, "SATURATE": 15000.0, "MAGZP": 26.55})
    server.serve(REFERENCE, Reply(body=fits_bytes(pixels["ref"], reference)))
    return server


def ztf_source(server: ArchiveServer, cache: Path, **config) -> ZtfSource:
    quadrant = ZtfQuadrant(name="f633q4", ztf_field=633, ccdid=13, qid=4, filtercode="zr")
    settings = {"start_night": "2018-06-10", "end_night": "2018-06-30", **FAST, **config}
    return ZtfSource(
        quadrants=[quadrant], base_url=server.base_url, cache_dir=str(cache), **settings
    )


def test_ztf_night_serves_its_deepest_science_image_calibrated_with_irsas_header(
    irsa: ArchiveServer, tmp_path: Path, pixels: dict[str, np.ndarray]
) -> None:
    source = ztf_source(irsa, tmp_path / "cache")
    raw = source.exposure("2018-06-10", "f633q4")

    assert_delivered(raw, "2018-06-10", "f633q4", zero_point=26.31)
    # The deeper (maglimit 20.73) of the night's two exposures, not the first one.
    assert irsa.hits[SCIENCE[20180611364595]] == 1 and irsa.hits[SCIENCE[20180611274595]] == 0
    np.testing.assert_array_equal(raw.data[4:, 4:], pixels["sci2"][4:, 4:])
    assert np.isnan(raw.data[:4, :4]).all()  # masked pixels stay NaN for the pipeline to mask
    assert raw.require("RDNOISE") == 8.6  # READNOI mapped to the keyword the pipeline reads
    assert (raw.require("GAIN"), raw.require("SATURATE")) == (6.2, 9000.0)
    assert raw.require("MJD-OBS") == pytest.approx(2458280.8645949 - 2400000.5)
    assert raw.header["ARCHURL"] == irsa.base_url + SCIENCE[20180611364595]
    assert source.calibration_frames("2018-06-10").biases == []
    assert source.calibration_frames("2018-06-10").flats == []
    assert len(source.catalog("f633q4")) == 0 and source.grid_stars("f633q4") is None


def test_ztf_reference_is_irsas_reference_image_on_the_night_before_the_search(
    irsa: ArchiveServer, tmp_path: Path, pixels: dict[str, np.ndarray]
) -> None:
    source = ztf_source(irsa, tmp_path / "cache")
    assert source.first_night() == "2018-06-10"
    assert source.template_nights("f633q4") == ["2018-06-09"]

    raw = source.exposure("2018-06-09", "f633q4")
    assert_delivered(raw, "2018-06-09", "f633q4", zero_point=26.55)
    np.testing.assert_array_equal(raw.data, pixels["ref"])
    assert irsa.hits[SEARCH] == 0  # no science query for the reference
    # What the reference header lacks is filled in and labelled as such.
    assert raw.require("RDNOISE") == 0.0
    assert "default_read_noise" in raw.header.comments["RDNOISE"]
    assert raw.require("MJD-OBS") == pytest.approx(58278.0)  # 2018-06-09 00:00 UTC
    assert "placeholder" in raw.header.comments["MJD-OBS"]

    wcs, shape = source.grid("f633q4")
    assert shape == (256, 256)
    centre = wcs.pixel_to_world(127.5, 127.5)
    assert (centre.ra.deg, centre.dec.deg) == pytest.approx((ZTF_RA, ZTF_DEC))
    assert irsa.hits[REFERENCE] == 1  # the grid came from the cached file
    assert source.pixel_scale() == pytest.approx(1.012)


def test_ztf_references_from_chosen_science_nights_when_configured(
    irsa: ArchiveServer, tmp_path: Path, pixels: dict[str, np.ndarray]
) -> None:
    source = ztf_source(irsa, tmp_path / "cache", template_from_nights=["2018-06-12"])
    assert source.template_nights("f633q4") == ["2018-06-12"]
    raw = source.exposure("2018-06-12", "f633q4")
    assert_delivered(raw, "2018-06-12", "f633q4", zero_point=26.20)
    np.testing.assert_array_equal(raw.data[4:, 4:], pixels["sci"][4:, 4:])
    _, shape = source.grid("f633q4")
    assert shape == (256, 256)
    assert irsa.hits[REFERENCE] == 0


def test_ztf_nights_come_from_the_metadata_query_over_the_search(
    irsa: ArchiveServer, tmp_path: Path
) -> None:
    source = ztf_source(irsa, tmp_path / "cache")
    assert source.nights() == ["2018-06-10", "2018-06-12"]
    (query,) = [r for r in irsa.requests if r.path == SEARCH]
    match = WHERE.fullmatch(query.query["WHERE"])
    assert float(match["start"]) == pytest.approx(night_jd_range("2018-06-10")[0], abs=1e-6)
    assert float(match["end"]) == pytest.approx(night_jd_range("2018-06-30")[1], abs=1e-6)
    assert ztf_source(irsa, tmp_path / "cache", end_night="2018-06-11").nights() == ["2018-06-10"]


def test_a_ztf_night_without_exposures_names_the_field_the_night_and_the_query(
    irsa: ArchiveServer, tmp_path: Path
) -> None:
    source = ztf_source(irsa, tmp_path / "cache")
    with pytest.raises(ValueError, match=r"ZTF field f633q4 night 2018-06-11: .*no science") as err:
        source.exposure("2018-06-11", "f633q4")
    assert f"{irsa.base_url}{SEARCH}?WHERE=field%3D633" in str(err.value)

    irsa.serve(SCIENCE[20180613300000], Reply(404, b"gone"))
    with pytest.raises(ArchiveError, match=r"ZTF field f633q4 night 2018-06-12: .*HTTP 404"):
        source.exposure("2018-06-12", "f633q4")


def test_ztf_images_come_from_the_download_cache_the_second_time(
    irsa: ArchiveServer, tmp_path: Path
) -> None:
    first = ztf_source(irsa, tmp_path / "cache").exposure("2018-06-10", "f633q4")
    # A new source on the same cache, as another step process would build it.
    again = ztf_source(irsa, tmp_path / "cache").exposure("2018-06-10", "f633q4")
    np.testing.assert_array_equal(first.data, again.data)
    assert irsa.hits[SCIENCE[20180611364595]] == 1
    assert irsa.hits[SEARCH] == 2  # what was observed is asked afresh; pixels are not
    assert list((tmp_path / "cache").rglob("*.fits"))


def test_an_archive_exposure_calibrates_to_its_header_zero_point(
    irsa: ArchiveServer, tmp_path: Path
) -> None:
    from astrid_assets.defs.calibration import calibrate, night_masters

    source = ztf_source(irsa, tmp_path / "cache")
    masters = night_masters(source.calibration_frames("2018-06-10"))
    processed = calibrate(source.exposure("2018-06-10", "f633q4"), masters, source)
    assert processed.zero_point is not None
    assert processed.zero_point.zero_point == pytest.approx(26.31)
    assert processed.zero_point.n_matched == 0  # from the header: no catalogue star matched


def test_an_archive_exposure_survives_the_graphs_fits_store(
    irsa: ArchiveServer, tmp_path: Path
) -> None:
    from astrid_assets.storage.fits_codec import from_bytes, to_bytes

    raw = ztf_source(irsa, tmp_path / "cache").exposure("2018-06-10", "f633q4")
    stored = from_bytes(to_bytes(raw))
    assert stored.calibrated and stored.header_zero_point() == pytest.approx(26.31)
    assert stored.header["ARCHURL"] == raw.header["ARCHURL"]
    np.testing.assert_array_equal(stored.data, raw.data)  # NaN where IRSA masked


def test_an_archive_source_is_a_configurable_resource_of_the_graph(
    irsa: ArchiveServer, tmp_path: Path
) -> None:
    @dg.asset
    def reference_night(survey: SurveySource) -> str:
        return survey.template_nights("f633q4")[0]

    result = dg.materialize(
        [reference_night], resources={"survey": ztf_source(irsa, tmp_path / "cache")}
    )
    assert result.output_for_node("reference_night") == "2018-06-09"


# ---------------------------------------------------------------- Pan-STARRS1

PS1_RA, PS1_DEC = 351.986728, 12.466522
FILENAMES = "/cgi-bin/ps1filenames.py"
FITSCUT = "/cgi-bin/fitscut.cgi"
STACK = "/rings.v3.skycell/2047/062/rings.v3.skycell.2047.062.stk.r.unconv.fits"
# Two warps on the Haleakala night of 2012-03-13 (07:12 and 07:41 UTC on the
# 14th), one on 2012-03-15.
WARPS = {
    56000.30: "/rings.v3.skycell/2047/062/o5999g0123o.warp.r.fits",
    56000.32: "/rings.v3.skycell/2047/062/o5999g0157o.warp.r.fits",
    56002.35: "/rings.v3.skycell/2047/062/o6001g0101o.warp.r.fits",
}
PS1_HEADER = "projcell subcell ra dec filter mjd type filename shortname badflag"
SOFTEN, OFFSET = 2.5, 0.0


def ps1_file_list(request: Request) -> Reply:
    want = {"ra": f"{PS1_RA:.6f}", "dec": f"{PS1_DEC:.6f}", "filters": "r"}
    if {k: v for k, v in request.query.items() if k != "type"} != want:
        return bad_request(f"unexpected query {request.query}")
    if request.query.get("type") == "stack":
        rows = [(0.0, STACK)]
    elif request.query.get("type") == "warp":
        rows = list(WARPS.items())
    else:
        return bad_request("type must be stack or warp")
    lines = [PS1_HEADER] + [
        f"2047 62 {PS1_RA:.6f} {PS1_DEC:.6f} r {mjd} {request.query['type']} {name} "
        f"{name.rsplit('/', 1)[1]} 0"
        for mjd, name in rows
    ]
    return Reply(body="\n".join(lines).encode())


@pytest.fixture
def ps1(server: ArchiveServer, pixels: dict[str, np.ndarray]) -> ArchiveServer:
    # The stack as PS1 stores it: asinh-scaled (BSOFTEN, BOFFSET), zero point
    # 25 + 2.5 log10(EXPTIME), the IPP's averaged CELL.GAIN, no read noise.
    stack_header = tan_header(PS1_RA, PS1_DEC, 0.25)
    stack_header.update({"EXPTIME": 1000.0, "BSOFTEN": SOFTEN, "BOFFSET": OFFSET})
    stack_header["HIERARCH FPA.ZP"] = 25.0
    stack_header["HIERARCH CELL.GAIN"] = 1.05
    scaled = 2.5 / np.log(10.0) * np.arcsinh((pixels["ref"] - OFFSET) / (2.0 * SOFTEN))
    cutouts = {STACK: fits_bytes(scaled.astype(np.float32), stack_header)}
    for i, (mjd, name) in enumerate(WARPS.items()):
        header = tan_header(PS1_RA, PS1_DEC, 0.25)
        header.update({"EXPTIME": 45.0, "MJD-OBS": mjd, "ZPT_0001": 28.5 + 0.1 * i})
        header["HIERARCH CELL.GAIN"] = 1.0
        header["HIERARCH CELL.READNOISE"] = 5.5
        header["HIERARCH CELL.SATURATION"] = 40000.0
        data = pixels["sci2" if i == 0 else "sci"]
        cutouts[name] = fits_bytes(data, header)

    def fitscut(request: Request) -> Reply:
        want = {"ra": f"{PS1_RA:.6f}", "dec": f"{PS1_DEC:.6f}", "size": "256", "format": "fits"}
        if {k: v for k, v in request.query.items() if k != "red"} != want:
            return bad_request(f"unexpected query {request.query}")
        body = cutouts.get(request.query.get("red", ""))
        return Reply(body=body) if body is not None else Reply(404, b"no such image")

    server.serve(FILENAMES, ps1_file_list)
    server.serve(FITSCUT, fitscut)
    return server


def ps1_source(server: ArchiveServer, cache: Path, **config) -> Ps1Source:
    # 256 pixels of 0.25 arcsec.
    pointing = Pointing(name="sn2012", ra=PS1_RA, dec=PS1_DEC, size_arcmin=256 * 0.25 / 60)
    settings = {"start_night": "2012-01-01", "end_night": "2012-12-31", **FAST, **config}
    return Ps1Source(
        pointings=[pointing], base_url=server.base_url, cache_dir=str(cache), **settings
    )


def test_ps1_stack_is_the_reference_made_linear_on_its_own_grid(
    ps1: ArchiveServer, tmp_path: Path, pixels: dict[str, np.ndarray]
) -> None:
    source = ps1_source(ps1, tmp_path / "cache")
    assert source.template_nights("sn2012") == ["2011-12-31"]
    raw = source.exposure("2011-12-31", "sn2012")

    assert_delivered(raw, "2011-12-31", "sn2012", zero_point=25.0 + 2.5 * math.log10(1000.0))
    np.testing.assert_allclose(raw.data, pixels["ref"], rtol=1e-4, atol=1e-3)
    assert "BSOFTEN" not in raw.header and "BOFFSET" not in raw.header
    assert raw.require("GAIN") == 1.05
    assert raw.require("RDNOISE") == 0.0
    assert raw.require("SATURATE") > np.nanmax(raw.data)  # none stated: nothing flagged

    wcs, shape = source.grid("sn2012")
    assert shape == (256, 256)
    centre = wcs.pixel_to_world(127.5, 127.5)
    assert (centre.ra.deg, centre.dec.deg) == pytest.approx((PS1_RA, PS1_DEC))
    assert source.pixel_scale() == 0.25

    source.exposure("2011-12-31", "sn2012")
    assert ps1.hits[FITSCUT] == 1  # the grid and the second exposure came from the cache


def test_ps1_science_nights_are_served_by_their_first_warp(
    ps1: ArchiveServer, tmp_path: Path, pixels: dict[str, np.ndarray]
) -> None:
    source = ps1_source(ps1, tmp_path / "cache")
    assert source.nights() == ["2012-03-13", "2012-03-15"]
    assert ps1_source(ps1, tmp_path / "cache", end_night="2012-03-14").nights() == ["2012-03-13"]

    raw = source.exposure("2012-03-13", "sn2012")
    assert_delivered(raw, "2012-03-13", "sn2012", zero_point=28.5)
    np.testing.assert_array_equal(raw.data, pixels["sci2"])
    assert (raw.require("GAIN"), raw.require("RDNOISE"), raw.require("SATURATE")) == (
        1.0,
        5.5,
        40000.0,
    )
    assert raw.require("MJD-OBS") == 56000.30
    assert [r.query["red"] for r in ps1.requests if r.path == FITSCUT] == [WARPS[56000.30]]


def test_a_ps1_night_without_a_warp_is_refused_naming_field_and_night(
    ps1: ArchiveServer, tmp_path: Path
) -> None:
    source = ps1_source(ps1, tmp_path / "cache")
    with pytest.raises(ValueError, match=r"PS1 field sn2012 night 2012-03-14: .*no warp"):
        source.exposure("2012-03-14", "sn2012")
    with pytest.raises(ValueError, match="a date YYYY-MM-DD"):
        source.exposure("March 14", "sn2012")


# ---------------------------------------------------------------- SDSS

SDSS_RA, SDSS_DEC = 180.0, 1.5
SQLSEARCH = "/dr17/SkyServerWS/SearchTools/SqlSearch"
FRAMES = "/sas/dr17/eboss/photoObj/frames/301"
# Run 3918 (TAI of MJD 52900.2: the APO night of 2003-09-17) covers the
# position in two overlapping fields, 213 near its edge and 214 at its
# centre; run 4000 (MJD 53000.2: night 2003-12-26) once.
SDSS_FRAMES = {
    f"{FRAMES}/3918/3/frame-r-003918-3-0213.fits.bz2": (52900.2, (12.0, 128.5), "sci2"),
    f"{FRAMES}/3918/3/frame-r-003918-3-0214.fits.bz2": (52900.2, (128.5, 128.5), "ref"),
    f"{FRAMES}/4000/3/frame-r-004000-3-0100.fits.bz2": (53000.2, (128.5, 128.5), "sci"),
}
LISTING = "#Table1\nrun,rerun,camcol,field\n3918,301,3,213\n3918,301,3,214\n4000,301,3,100\n"
NMGY = 0.005


def skyserver_search(request: Request) -> Reply:
    if request.query.get("format") != "csv":
        return bad_request("format must be csv")
    if "fGetNearbyObjEq(180.000000, 1.500000, 0.5000)" not in request.query.get("cmd", ""):
        return bad_request(f"unexpected SQL {request.query.get('cmd')!r}")
    return Reply(body=LISTING.encode())


@pytest.fixture
def sdss(server: ArchiveServer, pixels: dict[str, np.ndarray]) -> ArchiveServer:
    for path, (mjd, centre, name) in SDSS_FRAMES.items():
        header = tan_header(SDSS_RA, SDSS_DEC, 0.396, centre)
        header.update({"NMGY": NMGY, "SOFTBIAS": 1000, "TAI": mjd * 86400.0, "BUNIT": "nanomaggy"})
        frame = fits_bytes((pixels[name] * NMGY).astype(np.float32), header)
        server.serve(path, Reply(body=bz2.compress(frame)))
    server.serve(SQLSEARCH, skyserver_search)
    return server


def sdss_source(server: ArchiveServer, cache: Path, **config) -> SdssSource:
    settings = {"start_night": "2003-10-01", "end_night": "2004-12-31", **FAST, **config}
    return SdssSource(
        pointings=[Pointing(name="s82", ra=SDSS_RA, dec=SDSS_DEC, size_arcmin=3.0)],
        base_url=server.base_url,
        skyserver_url=server.base_url,
        cache_dir=str(cache),
        **settings,
    )


def test_sdss_frames_before_the_search_are_templates_and_later_ones_science(
    sdss: ArchiveServer, tmp_path: Path
) -> None:
    source = sdss_source(sdss, tmp_path / "cache")
    assert source.template_nights("s82") == ["2003-09-17"]
    assert source.nights() == ["2003-12-26"]
    assert sdss.hits[SQLSEARCH] == 1  # DR17 is listed once per source

    raw = source.exposure("2003-12-26", "s82")
    assert_delivered(raw, "2003-12-26", "s82", zero_point=22.5)
    assert raw.require("GAIN") == pytest.approx(SDSS_GAIN[3]["r"] / NMGY)
    assert raw.require("MJD-OBS") == pytest.approx(53000.2)
    assert raw.require("RDNOISE") == 0.0


def test_sdss_night_uses_the_frame_holding_the_centre_farthest_from_its_edges(
    sdss: ArchiveServer, tmp_path: Path, pixels: dict[str, np.ndarray]
) -> None:
    source = sdss_source(sdss, tmp_path / "cache")
    raw = source.exposure("2003-09-17", "s82")
    np.testing.assert_allclose(raw.data, pixels["ref"] * NMGY, rtol=1e-6)
    assert raw.header["ARCHURL"].endswith("frame-r-003918-3-0214.fits.bz2")

    wcs, shape = source.grid("s82")
    assert shape == (455, 455)  # 3 arcmin of 0.396 arcsec pixels
    centre = wcs.pixel_to_world(227.0, 227.0)
    assert (centre.ra.deg, centre.dec.deg) == pytest.approx((SDSS_RA, SDSS_DEC))
    with pytest.raises(ValueError, match=r"SDSS field s82 night 2003-10-05: .*2003-09-17"):
        source.exposure("2003-10-05", "s82")


def test_sdss_frames_come_from_the_download_cache_the_second_time(
    sdss: ArchiveServer, tmp_path: Path
) -> None:
    sdss_source(sdss, tmp_path / "cache").exposure("2003-12-26", "s82")
    downloads = sum(sdss.hits[path] for path in SDSS_FRAMES)
    assert downloads == 3
    sdss_source(sdss, tmp_path / "cache").exposure("2003-12-26", "s82")
    assert sum(sdss.hits[path] for path in SDSS_FRAMES) == downloads
    assert sdss.hits[SQLSEARCH] == 2


# ---------------------------------------------------------------- all three


@pytest.mark.parametrize(
    ("make", "field"),
    [(ztf_source, "f633q4"), (ps1_source, "sn2012"), (sdss_source, "s82")],
)
def test_an_unknown_field_is_refused_by_name(
    server: ArchiveServer, tmp_path: Path, make, field: str
) -> None:
    source: ArchiveSource = make(server, tmp_path / "cache")
    assert source.fields() == [field]
    for call in (
        lambda: source.exposure(source.first_night(), "M31"),
        lambda: source.template_nights("M31"),
        lambda: source.grid("M31"),
        lambda: source.catalog("M31"),
    ):
        with pytest.raises(ValueError, match=r"unknown field 'M31'.*" + field):
            call()
    assert server.requests == []


def test_a_band_or_sky_outside_the_survey_is_refused_naming_the_field(tmp_path: Path) -> None:
    source = Ps1Source(
        pointings=[Pointing(name="x", ra=10.0, dec=10.0, band="u")],
        start_night="2012-01-01",
        cache_dir=str(tmp_path),
    )
    with pytest.raises(ValueError, match=r"Ps1Source field x: band must be one of 'grizy'"):
        source.fields()
    south = source.model_copy(update={"pointings": [Pointing(name="y", ra=10.0, dec=-45.0)]})
    with pytest.raises(ValueError, match=r"Ps1Source field y: dec -45.0 is south"):
        south.fields()


def test_the_download_cache_defaults_to_the_store_of_astrid_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ASTRID_ENV", raising=False)
    source = SdssSource(
        pointings=[Pointing(name="s82", ra=SDSS_RA, dec=SDSS_DEC)], start_night="2003-10-01"
    )
    assert Path(str(source.http.cache.root)) == tmp_path / "home" / "store" / "archive-cache"
    assert source.http.config.min_interval == 1.0  # a polite pace unless told otherwise
