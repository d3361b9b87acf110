"""``astrid demo`` end to end on a small simulated field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from click.testing import CliRunner

from astrid_assets.cli import main


def test_demo_writes_products_and_finds_its_fakes(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--size", "512", "--reference-epochs", "3"]
    result = CliRunner().invoke(main, [*args, "--fakes", "12"])
    assert result.exit_code == 0, result.output
    assert "injected fakes" in result.output
    csv = next(out.glob("candidates_*.csv"))
    table = Table.read(csv)
    assert np.sum(table["truth"] == "fake") >= 9
    assert np.sum(table["truth"] == "false") <= 2
    with fits.open(next(out.glob("diff_*.fits"))) as hdul:
        assert hdul["D"].data.shape == (512, 512)
        assert hdul[0].header["NCAND"] == len(table)
    png = next(out.glob("difference_*.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
