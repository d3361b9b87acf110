"""Survey-level processing: trails masked in template epochs."""

import numpy as np

from astrid_assets.science.processing import satellite_trails
from astrid_assets.science.simulate import SurveyConfig
from astrid_assets.science.survey import process_simulated


def test_a_satellite_trail_is_traced_and_a_clean_frame_left_alone():
    config = SurveyConfig(shape=(512, 512))
    streaky, processed = process_simulated(config, "2026-01-02", "F04")
    (trail,) = [row for row in streaky.artefacts if row["type"] == "streak"]
    trails = satellite_trails(processed)
    x = np.arange(20, 490, 10)
    slope = (trail["y_end"] - trail["y"]) / (trail["x_end"] - trail["x"])
    y = np.round(trail["y"] + slope * (x - trail["x"])).astype(int)
    # The frame's pixels are the truth's pixels; the trail is a few pixels wide.
    near = [trails[max(b - 4, 0) : b + 5, a - 4 : a + 5].any() for a, b in zip(x, y, strict=True)]
    assert np.mean(near) > 0.8
    assert trails.mean() < 0.05
    assert not satellite_trails(process_simulated(config, "2026-01-04", "F04")[1]).any()
