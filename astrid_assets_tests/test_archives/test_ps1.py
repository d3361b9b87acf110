"""The Pan-STARRS1 client against a local stand-in of the PS1 image cutout service.

Fixtures follow https://outerspace.stsci.edu/display/PANSTARRS/PS1+Image+Cutout+Service:
``ps1filenames.py`` answers a whitespace table headed
``projcell subcell ra dec filter mjd type filename shortname badflag``;
``fitscut.cgi`` answers the FITS cutout of the image named by ``red``. The
"cutouts" are real DECam images (OBS18, the reference of the pair).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from astrid_assets.archives import ArchiveError, HttpClient, Ps1Archive
from astrid_assets.archives.metadata import pixel_scale_arcsec
from astrid_assets.archives.ps1 import (
    parse_filename_table,
    ps1_exposure_metadata,
    ps1_linear_flux,
)
from astrid_assets_tests.test_archives.archive_server import (
    ArchiveServer,
    Reply,
    Request,
    bad_request,
)

RA, DEC = 351.986728, 12.466522
FILENAMES = "/cgi-bin/ps1filenames.py"
FITSCUT = "/cgi-bin/fitscut.cgi"
STACK = "/rings.v3.skycell/2047/062/rings.v3.skycell.2047.062.stk.{band}.unconv.fits"
FILE_LIST = "\n".join(
    [
        "projcell subcell ra dec filter mjd type filename shortname badflag",
        *(
            f"2047 62 {RA:.6f} {DEC:.6f} {band} 0 stack {STACK.format(band=band)} "
            f"rings.v3.skycell.2047.062.stk.{band}.unconv.fits 0"
            for band in ("r", "g")
        ),
    ]
)


def file_list_answer(request: Request) -> Reply:
    want = {"ra": f"{RA:.6f}", "dec": f"{DEC:.6f}", "filters": "gr", "type": "stack"}
    if request.query != want:
        return bad_request(f"unexpected query {request.query}")
    return Reply(body=FILE_LIST.encode(), headers={"Content-Type": "text/plain"})


@pytest.fixture
def ps1(server: ArchiveServer, decam: Path) -> ArchiveServer:
    reference = (decam / "Stack-DEC-OBS18.fits").read_bytes()
    names = {STACK.format(band=band) for band in "gr"}

    def cutout(request: Request) -> Reply:
        expected = {"ra": f"{RA:.6f}", "dec": f"{DEC:.6f}", "size": "256", "format": "fits"}
        if {k: v for k, v in request.query.items() if k != "red"} != expected:
            return bad_request(f"unexpected query {request.query}")
        if request.query.get("red") not in names:
            return Reply(404, b"no such image")
        return Reply(body=reference, headers={"Content-Type": "image/fits"})

    server.serve(FILENAMES, file_list_answer)
    server.serve(FITSCUT, cutout)
    return server


def test_stack_cutouts_are_listed_downloaded_and_described(
    ps1: ArchiveServer, http: HttpClient, decam: Path
) -> None:
    archive = Ps1Archive(http, base_url=ps1.base_url)
    images = archive.cutouts(RA, DEC, size=256, filters="gr")

    assert [image.metadata.filter for image in images] == ["g", "r"]
    reds = [r.query["red"] for r in ps1.requests if r.path == FITSCUT]
    assert reds == [STACK.format(band="g"), STACK.format(band="r")]
    header = fits.getheader(decam / "Stack-DEC-OBS18.fits")
    np.testing.assert_array_equal(
        fits.getdata(images[0].path), fits.getdata(decam / "Stack-DEC-OBS18.fits")
    )
    meta = images[0].metadata
    # PS1's documented stack zero point: 25 + 2.5 log10(EXPTIME).
    assert meta.zero_point == pytest.approx(25.0 + 2.5 * math.log10(header["EXPTIME"]))
    assert meta.seeing == pytest.approx(header["FWHM"] * pixel_scale_arcsec(header))
    assert meta.gain == pytest.approx(header["GAIN"])
    assert meta.extra["type"] == "stack"

    again = archive.cutouts(RA, DEC, size=256, filters="gr")
    assert [image.path for image in again] == [image.path for image in images]
    assert ps1.hits[FITSCUT] == 2  # the second round came from the cache
    assert ps1.hits[FILENAMES] == 2  # the file list is asked afresh


def test_the_file_list_is_parsed_by_its_header() -> None:
    files = parse_filename_table(FILE_LIST, "https://ps1/x")
    assert [(f.projcell, f.subcell, f.filter, f.badflag) for f in files] == [
        (2047, 62, "r", 0),
        (2047, 62, "g", 0),
    ]
    with pytest.raises(ArchiveError, match=r"https://ps1/x.*line 2 .* 3 fields"):
        parse_filename_table(FILE_LIST.splitlines()[0] + "\n2047 62 1.0\n", "https://ps1/x")
    with pytest.raises(ArchiveError, match="no \\['badflag'\\] column"):
        parse_filename_table("projcell subcell ra dec filter mjd type filename shortname\n", "u")


def test_positions_outside_the_ps1_sky_are_refused(http: HttpClient) -> None:
    archive = Ps1Archive(http, base_url="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="dec > -30"):
        archive.files(10.0, -45.0)
    with pytest.raises(ValueError, match="filters"):
        archive.files(10.0, 10.0, filters="gV")


def test_ps1_header_conventions(decam: Path) -> None:
    header = fits.getheader(decam / "Stack-DEC-OBS18.fits")
    header["HIERARCH FPA.ZP"] = 24.9
    header["EXPTIME"] = 1000.0
    meta = ps1_exposure_metadata(header, "https://ps1/cut")
    assert meta.zero_point == pytest.approx(24.9 + 7.5)
    header["ZPT_0001"] = 31.7
    assert ps1_exposure_metadata(header, "https://ps1/cut").zero_point == 31.7


def test_asinh_scaled_skycells_are_made_linear() -> None:
    header = fits.Header({"BSOFTEN": 2.5, "BOFFSET": 10.0})
    scaled = np.array([0.0, 1.0])
    linear = ps1_linear_flux(scaled, header)
    expected = 10.0 + 2.5 * 2.0 * np.sinh(scaled * np.log(10.0) / 2.5)
    np.testing.assert_allclose(linear, expected)
    np.testing.assert_array_equal(ps1_linear_flux(scaled, fits.Header()), scaled)
