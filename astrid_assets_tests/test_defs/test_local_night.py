"""A real DECam night from a folder of FITS through the whole asset graph.

The source is chosen the way a user chooses it, by environment
(``ASTRID_SOURCE=local``, ``ASTRID_LOCAL_ROOT``, ``ASTRID_LOCAL_MANIFEST``),
so the code location is loaded afresh in a child process whose field
partitions are the folder's. The reference is the OBS18 stack, the science
the OBS04 stack (their DATE-OBS was overwritten and is the same in both, so
the manifest gives the nights). SFFT's published difference of the same
pair has a +13 sigma point source at the centre: our candidates must hold it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import duckdb
import numpy as np
import pytest
from astropy.io import fits

NIGHT = "2018-08-03"
FIELD = "DECAM-N6"
MANIFEST = f"""\
only_listed: true
defaults:
  field: {FIELD}
files:
  - path: Stack-DEC-OBS18.fits
    night: 2016-08-17
    role: reference
  - path: Stack-DEC-OBS04.fits
    night: {NIGHT}
"""

RUN = textwrap.dedent(
    f"""
    import json
    import dagster as dg
    from astrid_assets.definitions import defs
    from astrid_assets.partitions import night_field_key
    from astrid_assets.resources import default_resources, survey_source

    survey = survey_source()
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("night", survey.nights())
    resources = default_resources()
    steps = [
        (["reference_images"], "{FIELD}"),
        (["calibration_masters"], "{NIGHT}"),
        (
            ["raw_exposures", "exposure_table", "calibrated_exposures", "frame_table",
             "difference_images", "candidates"],
            night_field_key("{NIGHT}", "{FIELD}"),
        ),
        (["completeness_report"], "{NIGHT}"),
    ]
    report = {{"fields": survey.fields(), "nights": survey.nights(), "steps": []}}
    for selection, key in steps:
        result = dg.materialize(
            defs.assets, selection=selection, partition_key=key, instance=instance,
            resources=resources, raise_on_error=False,
        )
        failures = [e.message for e in result.all_events if e.is_step_failure]
        checks = {{
            e.event_specific_data.check_name: e.event_specific_data.passed
            for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
        }}
        metadata = {{}}
        for m in result.get_asset_materialization_events():
            materialization = m.event_specific_data.materialization
            metadata[materialization.asset_key.to_user_string()] = {{
                k: v.value for k, v in materialization.metadata.items()
                if isinstance(v.value, (int, float, str, bool)) and len(str(v.value)) < 200
            }}
        report["steps"].append(
            {{"assets": selection, "success": result.success, "failures": failures,
              "checks": checks, "metadata": metadata}}
        )
    print("REPORT " + json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def decam_night(real_data, tmp_path_factory):
    """The night materialized in a child process; its report and its ASTRID_HOME."""
    home = tmp_path_factory.mktemp("decam_home")
    manifest = home / "decam.yaml"
    manifest.write_text(MANIFEST)
    env = {
        **os.environ,
        "ASTRID_HOME": str(home),
        "ASTRID_SOURCE": "local",
        "ASTRID_LOCAL_ROOT": str(real_data / "images" / "decam_sfft"),
        "ASTRID_LOCAL_MANIFEST": str(manifest),
        "DAGSTER_HOME": str(home),
    }
    done = subprocess.run(
        [sys.executable, "-c", RUN], env=env, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    return json.loads(lines[-1].removeprefix("REPORT ")), home


def test_the_folder_is_one_field_and_one_night(decam_night):
    report, _ = decam_night
    assert report["fields"] == [FIELD]
    assert report["nights"] == [NIGHT]


def test_every_step_of_the_night_succeeds_with_its_checks(decam_night):
    report, _ = decam_night
    for step in report["steps"]:
        assert step["success"], (step["assets"], step["failures"])
        assert all(step["checks"].values()), step["checks"]
    masters = report["steps"][1]["metadata"]["calibration_masters"]
    assert masters["delivered_calibrated"] is True
    frame = report["steps"][2]["metadata"]["calibrated_exposures"]
    assert frame["quality_ok"] is True
    assert 1.0 < frame["seeing_arcsec"] < 1.6  # FWHM keyword 5.2 px x 0.263"


def test_the_candidates_hold_the_central_transient(decam_night, real_data):
    _, home = decam_night
    with duckdb.connect(str(home / "astrid.duckdb"), read_only=True) as con:
        rows = con.sql(
            "SELECT x, y, sign, snr, score_peak FROM candidates WHERE night = ? AND field = ?",
            params=[NIGHT, FIELD],
        ).fetchall()
    assert rows, "no candidates"
    # Where SFFT's published (decorrelated) difference of the same pair peaks.
    sfft = fits.getdata(real_data / "images" / "decam_sfft" / "FinalDifference.DeCorr.fits")
    box = sfft[108:150, 108:150]
    py, px = np.unravel_index(np.argmax(box), box.shape)
    px, py = px + 108, py + 108
    nearest = min(rows, key=lambda r: np.hypot(r[0] - px, r[1] - py))
    x, y, sign, snr, score = nearest
    assert np.hypot(x - px, y - py) < 2.0, (nearest, (px, py))
    assert sign == 1
    assert score > 8.0 and snr > 8.0
    assert len(rows) < 5  # the pair subtracts cleanly: few false candidates


def test_the_completeness_of_the_real_night_is_measured(decam_night):
    report, _ = decam_night
    completeness = report["steps"][3]["metadata"]["completeness_report"]
    assert completeness["fields"] == 1
    assert completeness["completeness_snr_ge_10"] >= 0.9
