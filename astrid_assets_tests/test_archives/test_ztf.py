"""The ZTF client against a local IRSA stand-in.

Fixtures follow IRSA's documented formats: the metadata answer is an IPAC
table (https://irsa.ipac.caltech.edu/applications/DDGEN/Doc/ipac_tbl.html)
with columns of the ZTF ``sci`` table
(https://irsa.ipac.caltech.edu/docs/program_interface/ztf_metadata.html),
or its CSV form (``ct=csv``); image paths are those of the ZTF API
(https://irsa.ipac.caltech.edu/docs/program_interface/ztf_api.html). The
"ZTF" images are real DECam cut-outs (science OBS04, reference OBS18).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from astropy.io import fits

from astrid_assets.archives import ArchiveError, HttpClient, ZtfArchive, ZtfFrame
from astrid_assets.archives.ztf import night_jd_range, parse_sci_table, ztf_exposure_metadata
from astrid_assets_tests.test_archives.archive_server import (
    ArchiveServer,
    Reply,
    Request,
    bad_request,
    ipac_table,
)

SEARCH = "/ibe/search/ztf/products/sci"
COLUMNS = [
    ("field", "int", ""),
    ("ccdid", "int", ""),
    ("qid", "int", ""),
    ("rcid", "int", ""),
    ("filtercode", "char", ""),
    ("obsjd", "double", "d"),
    ("filefracday", "long", ""),
    ("imgtypecode", "char", ""),
    ("exptime", "double", "s"),
    ("seeing", "double", "arcsec"),
    ("airmass", "double", ""),
    ("maglimit", "double", "mag"),
    ("ra", "double", "deg"),
    ("dec", "double", "deg"),
    ("infobits", "int", ""),
]
ROWS = [
    (633, 13, 4, 51, "zr", 2458280.8645949, 20180611364595, "o", 30.0, 2.31, 1.14, 20.41,
     255.695325, 61.465194, 0),
    (633, 13, 4, 51, "zr", 2458280.7745949, 20180611274595, "o", 30.0, 1.98, 1.21, 20.73,
     255.695325, 61.465194, 0),
]  # fmt: skip
NIGHT = "2018-06-10"
SCIENCE_PATHS = [
    "/ibe/data/ztf/products/sci/2018/0611/364595/ztf_20180611364595_000633_zr_c13_o_q4_sciimg.fits",
    "/ibe/data/ztf/products/sci/2018/0611/274595/ztf_20180611274595_000633_zr_c13_o_q4_sciimg.fits",
]
REFERENCE_PATH = (
    "/ibe/data/ztf/products/ref/000/field000633/zr/ccd13/q4/ztf_000633_zr_c13_q4_refimg.fits"
)


def expected_where() -> str:
    start, end = night_jd_range(NIGHT)
    return (
        f"field=633 AND ccdid=13 AND qid=4 AND filtercode='zr' "
        f"AND obsjd BETWEEN {start:.6f} AND {end:.6f}"
    )


def metadata_answer(request: Request) -> Reply:
    """IBE's search: only the WHERE the client must build is answered."""
    if request.query.get("WHERE") != expected_where():
        return bad_request(f"unexpected WHERE {request.query.get('WHERE')!r}")
    if request.query.get("ct") == "csv":
        names = ",".join(name for name, _, _ in COLUMNS)
        rows = [",".join(str(value) for value in row) for row in ROWS]
        return Reply(body="\n".join([names, *rows]).encode())
    table = ipac_table(COLUMNS, ROWS, {"fixlen": "T", "RowsRetrieved": len(ROWS)})
    return Reply(body=table.encode(), headers={"Content-Type": "text/plain"})


@pytest.fixture
def irsa(server: ArchiveServer, decam: Path) -> ArchiveServer:
    server.serve(SEARCH, metadata_answer)
    server.serve(SCIENCE_PATHS[0], Reply(body=(decam / "Stack-DEC-OBS04.fits").read_bytes()))
    server.serve(SCIENCE_PATHS[1], Reply(body=(decam / "DEC-OBS04a.mini.fits").read_bytes()))
    server.serve(REFERENCE_PATH, Reply(body=(decam / "Stack-DEC-OBS18.fits").read_bytes()))
    return server


def test_urls_follow_irsas_layout() -> None:
    archive = ZtfArchive(HttpClient())
    frame = ZtfFrame(
        field=633, ccdid=13, qid=4, filtercode="zr", obsjd=2458279.7646, filefracday=20180610264595
    )
    assert archive.science_url(frame) == (
        "https://irsa.ipac.caltech.edu/ibe/data/ztf/products/sci/2018/0610/264595/"
        "ztf_20180610264595_000633_zr_c13_o_q4_sciimg.fits"
    )
    assert archive.reference_url(633, 13, 4, "zr") == "https://irsa.ipac.caltech.edu" + (
        REFERENCE_PATH
    )
    assert archive.reference_url(1234, 2, 1, "zg").endswith(
        "/ref/001/field001234/zg/ccd02/q1/ztf_001234_zg_c02_q1_refimg.fits"
    )


def test_query_parameters_by_position_and_columns() -> None:
    archive = ZtfArchive(HttpClient(), table_format="csv")
    params = archive.query_params(position=(255.7, 61.5), filtercode="zg")
    assert params == {"POS": "255.700000,61.500000", "WHERE": "filtercode='zg'", "ct": "csv"}
    with pytest.raises(ValueError, match="filtercode"):
        archive.query_params(filtercode="r'; DROP TABLE sci; --")
    with pytest.raises(ValueError, match=r"qid must be 1\.\.4"):
        archive.query_params(field=633, qid=5)


def test_a_night_is_local_noon_to_noon_at_palomar() -> None:
    start, end = night_jd_range(NIGHT)
    # 2018-06-10 12:00 UTC is JD 2458280.0; Palomar's mean noon is 7.791 h later.
    assert start == pytest.approx(2458280.0 + 116.865 / 15 / 24, abs=1e-6)
    assert end - start == pytest.approx(1.0)


@pytest.mark.parametrize("table_format", ["ipac", "csv"])
def test_science_images_of_a_night_are_found_downloaded_and_described(
    irsa: ArchiveServer, http: HttpClient, decam: Path, table_format: str
) -> None:
    archive = ZtfArchive(http, base_url=irsa.base_url, table_format=table_format)
    images = archive.science_images(633, 13, 4, "zr", night=NIGHT)

    search = [r for r in irsa.requests if r.path == SEARCH]
    assert len(search) == 1 and search[0].query["WHERE"] == expected_where()
    assert ("ct" in search[0].query) == (table_format == "csv")
    # Sorted by time: the 06:35 UTC exposure (on 2018-06-11) before the 08:45 one.
    assert [urlsplit(image.metadata.url).path for image in images] == SCIENCE_PATHS[::-1]
    np.testing.assert_array_equal(
        fits.getdata(images[1].path), fits.getdata(decam / "Stack-DEC-OBS04.fits")
    )
    meta = images[1].metadata
    header = fits.getheader(decam / "Stack-DEC-OBS04.fits")
    assert meta.survey == "ztf"
    assert meta.gain == pytest.approx(header["GAIN"])
    assert meta.saturation == pytest.approx(header["SATURATE"])
    assert meta.read_noise == pytest.approx(header["RDNOISE"])
    assert meta.mjd == pytest.approx(header["MJD-OBS"])
    # What the DECam header lacks comes from IRSA's metadata row.
    assert meta.seeing == pytest.approx(2.31)
    assert meta.limiting_mag == pytest.approx(20.41)
    assert (meta.ra, meta.dec) == pytest.approx((255.695325, 61.465194))
    assert meta.zero_point is None


def test_reference_image_is_downloaded_once(
    irsa: ArchiveServer, http: HttpClient, decam: Path
) -> None:
    archive = ZtfArchive(http, base_url=irsa.base_url)
    first = archive.reference_image(633, 13, 4, "zr")
    second = archive.reference_image(633, 13, 4, "zr")
    assert first.path == second.path
    assert irsa.hits[REFERENCE_PATH] == 1
    assert first.path.read_bytes() == (decam / "Stack-DEC-OBS18.fits").read_bytes()
    assert first.metadata.gain == pytest.approx(4.1505)


def test_an_empty_night_finds_nothing(server: ArchiveServer, http: HttpClient) -> None:
    empty = ipac_table(COLUMNS, [], {"fixlen": "T", "RowsRetrieved": 0})
    server.serve(SEARCH, Reply(body=empty.encode()))
    archive = ZtfArchive(http, base_url=server.base_url)
    assert archive.science_images(633, 13, 4, "zr", night=NIGHT) == []


def test_an_html_error_page_is_reported_with_the_url(
    server: ArchiveServer, http: HttpClient
) -> None:
    server.serve(SEARCH, Reply(body=b"<html><body>Service unavailable</body></html>"))
    archive = ZtfArchive(http, base_url=server.base_url)
    with pytest.raises(ArchiveError, match="HTML") as err:
        archive.search(field=633)
    assert f"{server.base_url}{SEARCH}?WHERE=field%3D633" in str(err.value)


def test_ztf_header_conventions_map_into_the_exposure_metadata(decam: Path) -> None:
    header = fits.getheader(decam / "Stack-DEC-OBS04.fits")
    header.update(
        {
            "MAGZP": 26.275,
            "SEEING": 2.05,
            "LMT_MG": 20.6,
            "SATURATE": 52000.0,
            "GAIN": 6.2,
            "READNOI": 8.0,
            "OBSMJD": 58279.76,
            "FILTER": "ZTF_r",
            "INFOBITS": 0,
        }
    )
    meta = ztf_exposure_metadata(header, "https://irsa/x_refimg.fits")
    assert (meta.zero_point, meta.seeing, meta.limiting_mag) == (26.275, 2.05, 20.6)
    assert (meta.saturation, meta.gain, meta.read_noise) == (52000.0, 6.2, 8.0)
    assert (meta.mjd, meta.filter, meta.extra["INFOBITS"]) == (58279.76, "ZTF_r", 0)
    cards = meta.header_cards()
    assert cards["MAGZP"] == 26.275 and cards["RDNOISE"] == 8.0 and cards["MJD-OBS"] == 58279.76


def test_null_cells_of_the_ipac_table_become_none() -> None:
    row = list(ROWS[0])
    row[9] = "null"  # seeing
    frames = parse_sci_table(ipac_table(COLUMNS, [row]), "https://irsa/search")
    assert frames[0].seeing is None
    assert frames[0].maglimit == pytest.approx(20.41)
