"""The SDSS client against a local stand-in of the SAS and of SkyServer's SQL search.

Fixtures follow the frame data model
(https://data.sdss.org/datamodel/files/BOSS_PHOTOOBJ/frames/RERUN/RUN/CAMCOL/frame.html):
``frame-{band}-{run:06d}-{camcol}-{field:04d}.fits.bz2`` under
``/sas/dr17/eboss/photoObj/frames/{rerun}/{run}/{camcol}/``, bzip2-compressed on
the fly here; and SkyServer's ``SqlSearch`` CSV
(https://skyserver.sdss.org/dr17/en/help/docs/api.aspx): a ``#Table1``
line, the column names, the rows. The frame is a real DECam image (OBS18)
whose header gets the frame keywords SDSS writes (NMGY, SOFTBIAS, TAI,
BUNIT) with plausible values, since the mapping of those is what is tested.
"""

from __future__ import annotations

import bz2
import io
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from astrid_assets.archives import DownloadError, HttpClient, SdssArchive, SdssFrame
from astrid_assets.archives.sdss import SDSS_GAIN, parse_frame_listing
from astrid_assets_tests.test_archives.archive_server import (
    ArchiveServer,
    Reply,
    Request,
    bad_request,
)

RA, DEC = 180.0, 1.5
FRAME = SdssFrame(run=3918, camcol=3, field=213, rerun=301)
FRAME_PATH = "/sas/dr17/eboss/photoObj/frames/301/3918/3/frame-r-003918-3-0213.fits.bz2"
SEARCH = "/dr17/SkyServerWS/SearchTools/SqlSearch"
LISTING = "#Table1\nrun,rerun,camcol,field\n3918,301,3,213\n3918,301,3,214\n"
NMGY = 0.00478
TAI = 4.5e9


def sdss_frame_bytes(decam: Path) -> bytes:
    with fits.open(decam / "Stack-DEC-OBS18.fits") as hdul:
        header = hdul[0].header.copy()
        data = hdul[0].data
    header.update({"NMGY": NMGY, "SOFTBIAS": 1000, "TAI": TAI, "BUNIT": "nanomaggy"})
    buffer = io.BytesIO()
    fits.PrimaryHDU(data, header).writeto(buffer)
    return buffer.getvalue()


def listing_answer(request: Request) -> Reply:
    command = request.query.get("cmd", "")
    if request.query.get("format") != "csv":
        return bad_request("format must be csv")
    if "fGetNearbyObjEq(180.000000, 1.500000, 0.5000)" not in command:
        return bad_request(f"unexpected SQL {command!r}")
    return Reply(body=LISTING.encode(), headers={"Content-Type": "text/plain"})


@pytest.fixture
def sdss(server: ArchiveServer, decam: Path) -> ArchiveServer:
    frame = bz2.compress(sdss_frame_bytes(decam))
    server.serve(FRAME_PATH, Reply(body=frame, headers={"Content-Type": "application/x-bzip2"}))
    server.serve(FRAME_PATH.replace("0213", "0214"), Reply(body=frame))
    server.serve(SEARCH, listing_answer)
    return server


def test_frame_url_follows_the_sas_layout() -> None:
    archive = SdssArchive(HttpClient())
    assert archive.frame_url(FRAME, "r") == "https://data.sdss.org" + FRAME_PATH
    with pytest.raises(ValueError, match="band"):
        archive.frame_url(FRAME, "R")
    with pytest.raises(ValueError, match="camcol"):
        SdssFrame(run=3918, camcol=7, field=1)


def test_a_frame_is_downloaded_decompressed_and_described(
    sdss: ArchiveServer, http: HttpClient, decam: Path
) -> None:
    archive = SdssArchive(http, base_url=sdss.base_url, skyserver_url=sdss.base_url)
    image = archive.frame(FRAME, "r")
    np.testing.assert_array_equal(
        fits.getdata(image.path), fits.getdata(decam / "Stack-DEC-OBS18.fits")
    )
    meta = image.metadata
    assert meta.zero_point == 22.5 and meta.pixel_unit == "nanomaggy"
    assert meta.gain == pytest.approx(SDSS_GAIN[3]["r"] / NMGY)
    assert meta.mjd == pytest.approx(TAI / 86400.0)
    assert meta.extra["SOFTBIAS"] == 1000 and meta.extra["run"] == 3918

    assert archive.frame(FRAME, "r").path == image.path
    assert sdss.hits[FRAME_PATH] == 1


def test_frames_at_a_position_come_from_the_skyserver_listing(
    sdss: ArchiveServer, http: HttpClient
) -> None:
    archive = SdssArchive(http, base_url=sdss.base_url, skyserver_url=sdss.base_url)
    images = archive.frames_at_position(RA, DEC, "r")
    assert [image.metadata.extra["field"] for image in images] == [213, 214]
    (search,) = [r for r in sdss.requests if r.path == SEARCH]
    assert search.query["cmd"].startswith("SELECT DISTINCT p.run, p.rerun, p.camcol, p.field")


def test_a_corrupt_bzip2_frame_is_an_error_naming_the_url(
    server: ArchiveServer, http: HttpClient, cache_dir: Path
) -> None:
    server.serve(FRAME_PATH, Reply(body=b"BZh91AY&SY not really bzip2"))
    archive = SdssArchive(http, base_url=server.base_url)
    with pytest.raises(DownloadError, match="could not be decoded") as err:
        archive.frame(FRAME, "r")
    assert server.base_url + FRAME_PATH in str(err.value)
    assert not list(cache_dir.rglob("*.fits"))


def test_the_listing_parser_reads_skyservers_csv() -> None:
    frames = parse_frame_listing(LISTING, "https://skyserver/x")
    assert frames == [FRAME, SdssFrame(run=3918, camcol=3, field=214, rerun=301)]
    assert parse_frame_listing("#Table1\nrun,rerun,camcol,field\n", "u") == []
