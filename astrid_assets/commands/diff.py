"""``astrid diff``: subtract two FITS images and write the products."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from astrid_assets.science.fitsio import ImageFile, read_image, write_fits_atomic
from astrid_assets.science.pipeline import DiffConfig, DiffProducts, difference_pair, prepare_image

__all__ = ["DiffSummary", "run_diff_files"]

SHOW_COLUMNS = ("x", "y", "ra", "dec", "score_peak", "snr", "flux", "mag", "mag_err")


@dataclass
class DiffSummary:
    """What a ``diff`` run did, for the terminal."""

    science: str
    reference: str
    method: str
    products: DiffProducts

    def describe(self, show: int = 15) -> str:
        res = self.products.result
        cands = self.products.candidates
        valid = ~res.mask
        lines = [
            f"{self.science} - {self.reference} ({self.method})",
            f"  registration: {self.products.registration.get('method')}",
            f"  S_corr std (unmasked): {float(np.std(res.score[valid])):.3f}; "
            f"masked {100 * float(np.mean(res.mask)):.1f}% of pixels",
            f"  candidates above threshold: {len(cands)}",
            "  timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.products.timings.items()),
        ]
        if len(cands):
            cols = [c for c in SHOW_COLUMNS if c in cands.colnames]
            order = np.argsort(-np.abs(np.asarray(cands["score_peak"])))[:show]
            table = cands[order][cols]
            for col in cols:
                table[col].info.format = ".6f" if col in ("ra", "dec") else ".2f"
            lines.extend("  " + row for row in table.pformat(max_lines=-1, max_width=-1))
        return "\n".join(lines)


def _prepare(image: ImageFile, *, background_subtracted: bool = False):
    return prepare_image(
        image.data,
        mask=image.mask,
        gain=image.gain,
        read_noise=image.read_noise,
        saturation=image.saturation,
        wcs=image.wcs,
        background_subtracted=background_subtracted,
        name=image.path,
    )


def run_diff_files(
    science: Path,
    reference: Path,
    out: Path,
    *,
    method: str = "zogy",
    threshold: float = 5.0,
    align: str = "auto",
    sci_hdu: int | str | None = None,
    ref_hdu: int | str | None = None,
) -> DiffSummary:
    """Read two FITS images, subtract, detect, and write ``out``.

    Raises
    ------
    FitsInputError
        A file cannot be used (names the file and why).
    ValueError
        The pair cannot be subtracted (names the image and why).
    """
    config = DiffConfig(method=method, threshold=threshold, align=align)  # type: ignore[arg-type]
    sci = read_image(science, sci_hdu)
    ref = read_image(reference, ref_hdu)
    new_image, ref_image = _prepare(sci), _prepare(ref)
    sci.data = ref.data = None  # type: ignore[assignment]  # measured copies suffice now
    products = difference_pair(new_image, ref_image, config)
    write_products(
        out,
        products,
        science_name=Path(sci.path).name,
        reference_name=Path(ref.path).name,
        grid_wcs=ref.wcs,
        science_header=sci.header,
    )
    return DiffSummary(str(science), str(reference), method, products)


def write_products(
    out: Path,
    products: DiffProducts,
    *,
    science_name: str,
    reference_name: str,
    grid_wcs: WCS | None,
    science_header: fits.Header | None = None,
) -> Path:
    """Write D, SCORR, PSF, MASK, CUTOUTS and CANDIDATES to one FITS file, atomically.

    The images are on the reference grid and carry its WCS; CUTOUTS is the
    (n, 3, size, size) cube of science, reference and difference stamps in
    candidate order.
    """
    res = products.result
    grid = fits.Header()
    if grid_wcs is not None:
        grid.update(grid_wcs.to_header(relax=True))
    primary = fits.Header()
    primary["ORIGIN"] = "AstrID"
    primary["METHOD"] = (res.method, "subtraction algorithm")
    primary["SCIENCE"] = (science_name[:68], "science image")
    primary["REFERNCE"] = (reference_name[:68], "reference image")
    primary["FLXRATIO"] = (float(res.flux_ratio), "F_r / F_n, reference over science")
    primary["DNOISE"] = (float(res.difference_noise), "1-sigma of D per pixel, science ADU")
    primary["NCAND"] = (len(products.candidates), "candidates above threshold")
    meta = products.candidates.meta
    primary["THRESH"] = (float(meta.get("threshold", np.nan)), "detection threshold, sigma")
    for key, card, comment in (
        ("n_detected", "NDETECT", "peaks above threshold before vetting"),
        ("n_masked_footprint", "NMASKED", "dropped: PSF footprint masked"),
        ("n_sharp", "NSHARP", "dropped: sharper than the PSF"),
        ("n_streak", "NSTREAK", "dropped: on a traced streak"),
        ("n_dipole", "NDIPOLE", "dropped: dipole"),
        ("n_extended", "NEXTEND", "dropped: not point-like"),
        ("n_cosmic_rays", "NCOSMIC", "dropped: cosmic ray in an input"),
    ):
        if key in meta:
            primary[card] = (int(meta[key]), comment)
    for key in ("DATE-OBS", "MJD-OBS", "FILTER", "EXPTIME"):
        if science_header is not None and key in science_header:
            primary[key] = science_header[key]
    table = Table(products.candidates, copy=True)
    table.meta.clear()  # run statistics go to the primary header below
    for name in list(table.colnames):
        if table[name].dtype == object:
            table[name] = table[name].astype(str)
    return write_fits_atomic(
        out,
        {
            "D": (np.asarray(res.difference, np.float32), grid),
            "SCORR": (np.asarray(res.score, np.float32), grid),
            "PSF": (np.asarray(res.difference_psf, np.float32), None),
            "MASK": (res.mask.astype(np.uint8), grid),
            "CUTOUTS": (np.asarray(products.cutouts, np.float32), None),
        },
        {"CANDIDATES": table},
        primary_header=primary,
    )
