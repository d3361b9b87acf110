"""The queue's queries, the pictures, the label store's undo and counts, the consensus."""

import datetime as dt
import io

import numpy as np
import polars as pl
import pytest
from PIL import Image

from astrid_assets.review.queue import CandidateQueries, QueueFilter, consensus_table
from astrid_assets.review.render import light_curve_svg, stamp_pixels, stamp_png
from astrid_assets.review.stamps import StampCache
from astrid_assets_tests.test_review.conftest import FIELDS, NIGHTS, SIDE, SOURCES


@pytest.fixture(scope="module")
def queries(survey):
    return CandidateQueries(survey.catalog)


def test_the_queue_is_filtered_by_night_field_and_score(queries):
    everything = queries.queue(QueueFilter())
    assert everything.height == len(NIGHTS) * len(FIELDS) * SOURCES
    one = queries.queue(QueueFilter(night=NIGHTS[1], field=FIELDS[0]))
    assert one.height == SOURCES
    assert set(one["night"]) == {NIGHTS[1]} and set(one["field"]) == {FIELDS[0]}
    middle = queries.queue(QueueFilter(min_score=0.25, max_score=0.75))
    assert 0 < middle.height < everything.height
    assert middle["ensemble"].min() >= 0.25 and middle["ensemble"].max() <= 0.75
    assert queries.queue(QueueFilter(limit=7)).height == 7


def test_the_queue_orders_by_score_or_by_uncertainty(queries):
    by_score = queries.queue(QueueFilter())["ensemble"].to_numpy()
    assert np.all(np.diff(by_score) <= 0)
    uncertain = queries.queue(QueueFilter(order="uncertain"))["ensemble"].to_numpy()
    assert np.all(np.diff(np.abs(uncertain - 0.5)) >= 0)
    assert abs(uncertain[0] - 0.5) < abs(by_score[0] - 0.5)


@pytest.mark.parametrize(
    "night",
    ["2026-01-06' OR '1'='1", "2026-01-06'; DROP VIEW candidates; --", "x' UNION SELECT 1 --"],
)
def test_a_filter_value_is_a_value_never_sql(queries, survey, night):
    assert queries.queue(QueueFilter(night=night)).height == 0
    assert queries.queue(QueueFilter(field="F01; DROP TABLE labels;--")).height == 0
    assert queries.candidate("' OR 1=1 --") is None
    assert set(survey.catalog.views()) >= {"candidates", "candidate_scores"}
    assert queries.queue(QueueFilter()).height == len(NIGHTS) * len(FIELDS) * SOURCES


def test_the_light_curve_is_the_same_position_on_every_night(queries, survey):
    candidate = queries.candidate(f"{NIGHTS[1]}_{FIELDS[1]}_0004")
    assert candidate["ensemble"] is not None
    curve = queries.light_curve(candidate)
    assert curve["night"].to_list() == list(NIGHTS)
    assert curve["candidate_id"].to_list() == [f"{n}_{FIELDS[1]}_0004" for n in NIGHTS]
    assert curve["separation_arcsec"].max() < 1.5
    assert np.all(np.diff(curve["mjd"].to_numpy()) > 0)


def test_stamps_come_from_the_partition_tables(survey):
    cache = StampCache(survey.tables)
    stamp = cache.stamp(NIGHTS[0], FIELDS[0], f"{NIGHTS[0]}_{FIELDS[0]}_0002", "science")
    assert stamp.shape == (SIDE, SIDE)
    assert stamp[SIDE // 2, SIDE // 2] > np.median(stamp) + 20  # the source in the middle
    assert cache.stamp(NIGHTS[0], FIELDS[0], "nope", "science") is None
    assert cache.stamp("2030-01-01", FIELDS[0], "nope", "science") is None
    with pytest.raises(ValueError, match="kind"):
        cache.stamp(NIGHTS[0], FIELDS[0], "nope", "mask")


def test_stamps_are_drawn_north_up_with_a_symmetric_difference_scale():
    stamp = np.zeros((5, 7))
    stamp[0, :] = 10.0  # the bottom row in FITS order
    stamp[4, 3] = np.nan
    grey = stamp_pixels(stamp)
    assert grey.shape == (5, 7)
    assert np.all(grey[-1] == 255) and np.all(grey[1:-1] == 0)  # drawn at the bottom
    assert np.isnan(grey[0, 3])
    difference = stamp_pixels(np.array([[-5.0, 0.0], [5.0, 0.0]]), symmetric=True)
    assert difference[0, 0] == pytest.approx(255) and difference[1, 0] == pytest.approx(0)
    assert difference[0, 1] == pytest.approx(127.5)
    image = Image.open(io.BytesIO(stamp_png(stamp)))
    assert image.size == (7, 5) and image.mode == "RGB"
    assert image.getpixel((3, 0)) == (150, 40, 40)  # a masked pixel


def test_the_light_curve_plot_has_bright_magnitudes_up():
    svg = light_curve_svg(
        [61045.5, 61046.5, 61047.5],
        [18.0, 19.0, float("nan")],
        [0.1, 0.1, 0.1],
        [1, -1, 1],
        current=0,
        labels=["a <b>", "c", "d"],
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<circle") == 2  # the NaN magnitude is left out
    assert "a &lt;b&gt;" in svg and "<b>" not in svg
    ys = [float(part.split('"')[0]) for part in svg.split('cy="')[1:]]
    assert ys[0] < ys[1]  # 18 mag above 19 mag
    assert "no magnitudes" in light_curve_svg([], [], [], [])


def exercise_undo_and_counts(store) -> None:
    """Undo and counts on an empty label store: the same on SQLite and PostgreSQL."""
    t0 = dt.datetime(2026, 1, 6, tzinfo=dt.UTC)
    store.add("c1", "n", "f", "real", "ann", at=t0)
    store.add("c2", "n", "f", "bogus", "ann", at=t0 + dt.timedelta(seconds=1))
    store.add("c1", "n", "f", "bogus", "bob", at=t0 + dt.timedelta(seconds=2))
    store.add("c1", "n", "f", "unsure", "ann", at=t0 + dt.timedelta(seconds=3))
    assert store.counts("ann") == {
        "mine": 2,
        "real": 0,
        "bogus": 1,
        "unsure": 1,
        "candidates": 2,
        "labels": 4,
    }
    undone = store.undo_last("ann")
    assert (undone["candidate_id"], undone["label"], undone["vetter"]) == ("c1", "unsure", "ann")
    assert undone["created_at"] == t0 + dt.timedelta(seconds=3)
    assert store.counts("ann") == {
        "mine": 2,
        "real": 1,
        "bogus": 1,
        "unsure": 0,
        "candidates": 2,
        "labels": 3,
    }
    assert store.undo_last("ann")["candidate_id"] == "c2"
    assert store.undo_last("ann")["candidate_id"] == "c1"
    assert store.undo_last("ann") is None
    assert store.all()["vetter"].to_list() == ["bob"]
    assert store.labelled_by("bob") == {"c1"} and store.labelled_by("ann") == set()
    assert [r["label"] for r in store.for_candidate("c1")] == ["bogus"]


def test_undo_removes_only_that_vetters_latest_label(tmp_path):
    from astrid_assets.labels import LabelStore

    exercise_undo_and_counts(LabelStore(sqlite_path=str(tmp_path / "labels.sqlite")))


def test_the_consensus_flags_real_against_bogus():
    latest = pl.DataFrame(
        {
            "candidate_id": ["a", "a", "a", "b", "b", "c"],
            "night": ["n"] * 6,
            "field": ["f"] * 6,
            "label": ["real", "bogus", "real", "real", "unsure", "unsure"],
            "vetter": ["x", "y", "z", "x", "y", "x"],
            "created_at": [dt.datetime(2026, 1, 6, tzinfo=dt.UTC)] * 6,
        }
    )
    table = consensus_table(latest)
    rows = {r["candidate_id"]: r for r in table.to_dicts()}
    assert rows["a"]["disagree"] and rows["a"]["consensus"] == "real"
    assert (rows["a"]["n_real"], rows["a"]["n_bogus"]) == (2, 1)
    assert rows["a"]["votes"] == ["x: real", "y: bogus", "z: real"]
    assert not rows["b"]["disagree"] and rows["b"]["consensus"] == "real"
    assert rows["c"]["consensus"] == "unsure"
    assert table["candidate_id"][0] == "a"  # disagreements first
    assert consensus_table(latest, disagreements_only=True)["candidate_id"].to_list() == ["a"]
