"""``astrid diff`` on real image pairs and on broken input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from click.testing import CliRunner
from scipy import ndimage

from astrid_assets.cli import main
from astrid_assets.commands.diff import run_diff_files
from astrid_assets.science.background import estimate_background
from astrid_assets.science.sources import extract_sources


def test_decam_pair_finds_the_central_transient(real_data: Path, tmp_path: Path) -> None:
    pair = real_data / "images/decam_sfft"
    out = tmp_path / "decam_diff.fits"
    summary = run_diff_files(pair / "Stack-DEC-OBS04.fits", pair / "Stack-DEC-OBS18.fits", out)
    cands = summary.products.candidates
    dist = np.hypot(cands["x"] - 128.0, cands["y"] - 129.0)
    best = int(np.argmin(dist))
    assert dist[best] < 2.0
    assert cands["sign"][best] == 1
    assert cands["score_peak"][best] >= 8.0
    assert cands["snr"][best] >= 8.0
    # It is the strongest candidate of the pair.
    assert best == int(np.argmax(np.abs(cands["score_peak"])))
    with fits.open(out) as hdul:
        assert [h.name for h in hdul] == [
            "PRIMARY",
            "D",
            "SCORR",
            "PSF",
            "MASK",
            "CUTOUTS",
            "CANDIDATES",
        ]
        assert hdul["D"].data.shape == (256, 256)
        assert hdul["CUTOUTS"].data.shape == (len(cands), 3, 63, 63)
        assert "CTYPE1" in hdul["SCORR"].header
        assert len(Table(hdul["CANDIDATES"].data)) == len(cands)


def test_toros_null_pair_is_consistent_with_noise(real_data: Path, tmp_path: Path) -> None:
    pair = real_data / "images/toros_null_pair"
    sci, ref = pair / "aligned_eso085-030-004.fit", pair / "aligned_eso085-030-005.fit"
    summary = run_diff_files(sci, ref, tmp_path / "null.fits")
    result = summary.products.result

    raw = [fits.getdata(p).astype(np.float32) for p in (sci, ref)]
    saturated = (raw[0] >= 65535) | (raw[1] >= 65535)
    bright = np.zeros_like(saturated)
    for image in raw:
        bkg = estimate_background(image)
        stars = extract_sources(bkg.subtract(image), bkg.rms, threshold=5.0)
        top = stars[stars["peak"] > 0.2 * (65535 - bkg.global_background)]
        bright[np.round(top["y"]).astype(int), np.round(top["x"]).astype(int)] = True
    near_star = ndimage.distance_transform_edt(~(saturated | bright))

    away = (near_star > 25) & ~result.mask
    assert 0.9 <= float(np.std(result.score[away])) <= 1.15
    cands = summary.products.candidates
    strong = np.abs(cands["score_peak"]) > 5
    where = near_star[np.round(cands["y"]).astype(int), np.round(cands["x"]).astype(int)]
    assert np.all(where[strong] <= 5), cands[strong][["x", "y", "score_peak"]]


def test_cli_diff_prints_the_candidates(real_data: Path, tmp_path: Path) -> None:
    pair = real_data / "images/decam_sfft"
    out = tmp_path / "d.fits"
    args = ["diff", str(pair / "Stack-DEC-OBS04.fits"), str(pair / "Stack-DEC-OBS18.fits")]
    result = CliRunner().invoke(main, [*args, "--out", str(out), "--method", "classic"])
    assert result.exit_code == 0, result.output
    assert "(classic)" in result.output
    assert "candidates above threshold" in result.output
    assert out.exists()


def test_cli_names_a_truncated_file(real_data: Path, tmp_path: Path) -> None:
    good = real_data / "images/decam_sfft/Stack-DEC-OBS18.fits"
    broken = tmp_path / "broken.fits"
    broken.write_bytes(good.read_bytes()[:30000])
    result = CliRunner().invoke(
        main, ["diff", str(broken), str(good), "--out", str(tmp_path / "o.fits")]
    )
    assert result.exit_code != 0
    assert str(broken) in result.output
    assert "truncated" in result.output
    assert not (tmp_path / "o.fits").exists()


def test_aligning_by_wcs_without_one_is_refused(real_data: Path, tmp_path: Path) -> None:
    pair = real_data / "images/toros_null_pair"
    with pytest.raises(ValueError, match="no celestial WCS"):
        run_diff_files(
            pair / "aligned_eso085-030-004.fit",
            pair / "aligned_eso085-030-005.fit",
            tmp_path / "o.fits",
            align="wcs",
        )


def test_mismatched_shapes_without_alignment_are_refused(real_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        run_diff_files(
            real_data / "images/toros_null_pair/aligned_eso085-030-004.fit",
            real_data / "images/decam_sfft/Stack-DEC-OBS18.fits",
            tmp_path / "o.fits",
            align="none",
        )
