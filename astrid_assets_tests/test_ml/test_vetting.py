"""Vetters' labels become training rows: consensus, the join to candidates, held-out nights."""

import datetime as dt

import numpy as np
import polars as pl
import pytest

from astrid_assets.labels import LabelStore
from astrid_assets.ml.training_data import CUTOUT_COLUMNS, FEATURE_COLUMNS, TrainingSet
from astrid_assets.ml.vetting import HUMAN_KIND, consensus, join_vetted, vetted_rows
from astrid_assets.storage.io_managers import ParquetIOManager


def _candidates(night: str, field: str, n: int, side: int = 31) -> pl.DataFrame:
    """A candidates table as the graph writes it (the columns scoring reads)."""
    rng = np.random.default_rng(len(night) + n)
    columns = {
        "candidate_id": [f"{night}_{field}_{i:04d}" for i in range(1, n + 1)],
        "night": [night] * n,
        "field": [field] * n,
        "x": rng.uniform(0, 500, n),
        "y": rng.uniform(0, 500, n),
        "sign": np.where(np.arange(n) % 2 == 0, 1, -1),
        "mag": rng.uniform(18, 22, n),
        **{name: rng.normal(size=n) for name in FEATURE_COLUMNS},
    }
    frame = pl.DataFrame(columns)
    return frame.with_columns(
        [
            pl.Series(
                name,
                rng.normal(size=(n, side * side)).astype(np.float32),
                dtype=pl.Array(pl.Float32, side * side),
            )
            for name in CUTOUT_COLUMNS
        ]
    )


def _labels(rows: list[tuple[str, str, str, str, str]]) -> pl.DataFrame:
    store = LabelStore(sqlite_path=":memory:")
    start = dt.datetime(2026, 1, 10, tzinfo=dt.UTC)
    for k, (cid, night, field, label, vetter) in enumerate(rows):
        store.add(cid, night, field, label, vetter, at=start + dt.timedelta(minutes=k))
    return store.latest()


def test_consensus_counts_each_vetters_last_word_and_drops_ties_and_unsure():
    n, f = "2026-01-06", "F02"
    latest = _labels(
        [
            (f"{n}_{f}_0001", n, f, "real", "ana"),
            (f"{n}_{f}_0001", n, f, "bogus", "ana"),  # ana changed her mind: one vote, bogus
            (f"{n}_{f}_0001", n, f, "real", "ben"),  # 1 against 1: tied
            (f"{n}_{f}_0002", n, f, "real", "ana"),
            (f"{n}_{f}_0002", n, f, "real", "ben"),
            (f"{n}_{f}_0002", n, f, "bogus", "cy"),  # 2 against 1: real
            (f"{n}_{f}_0003", n, f, "unsure", "ana"),  # no vote at all
            (f"{n}_{f}_0004", n, f, "bogus", "ben"),
            (f"{n}_{f}_0004", n, f, "unsure", "cy"),  # unsure does not count: bogus
        ]
    )
    agreed = consensus(latest)
    assert agreed["candidate_id"].to_list() == [f"{n}_{f}_0002", f"{n}_{f}_0004"]
    assert agreed["label"].to_list() == [1, 0]
    assert agreed["n_real"].to_list() == [2, 0]
    assert agreed["n_bogus"].to_list() == [1, 1]


def test_vetted_rows_carry_the_candidates_stamps_and_features():
    table = _candidates("2026-01-06", "F02", 5)
    agreed = pl.DataFrame(
        {"candidate_id": ["2026-01-06_F02_0002", "2026-01-06_F02_0005"], "label": [1, 0]}
    )
    rows = vetted_rows(table, agreed)
    assert len(rows) == 2
    assert rows.triplets.shape == (2, 3, 63, 63)  # 31 px stamps padded to the CNN's size
    source = table.filter(pl.col("candidate_id") == "2026-01-06_F02_0002")
    np.testing.assert_array_equal(
        rows.triplets[0, 2, 16:47, 16:47],
        source["cutout_difference"].to_numpy().reshape(31, 31),
    )
    np.testing.assert_allclose(
        rows.features[0], [source[c][0] for c in FEATURE_COLUMNS], rtol=1e-12
    )
    meta = rows.meta
    assert meta["label"].to_list() == [1, 0]
    assert meta["kind"].to_list() == [HUMAN_KIND] * 2
    assert meta["split"].to_list() == ["train"] * 2
    assert meta["positive"].to_list() == [False, True]  # signs -1 and +1
    assert meta["vetted"].all()
    assert np.isnan(rows.score_stamps).all()


def test_join_adds_train_rows_and_keeps_held_out_nights_and_fields_out(tmp_path):
    # Candidates written where the graph writes them, read back through the store.
    store = ParquetIOManager(root=str(tmp_path)).create_io_manager(None)
    parts = {
        ("2026-01-06", "F01"): _candidates("2026-01-06", "F01", 4),
        ("2026-01-09", "F01"): _candidates("2026-01-09", "F01", 4),  # test night
        ("2026-01-06", "F03"): _candidates("2026-01-06", "F03", 4),  # test field
    }
    for (night, field), frame in parts.items():
        (tmp_path / "candidates" / night).mkdir(parents=True, exist_ok=True)
        frame.write_parquet(tmp_path / "candidates" / night / f"{field}.parquet")
    assert store.read_partition("candidates", "2026-01-07", "F01") is None
    latest = _labels(
        [
            ("2026-01-06_F01_0001", "2026-01-06", "F01", "real", "ana"),
            ("2026-01-06_F01_0003", "2026-01-06", "F01", "bogus", "ana"),
            ("2026-01-06_F01_0099", "2026-01-06", "F01", "real", "ana"),  # not in the table
            ("2026-01-07_F01_0001", "2026-01-07", "F01", "real", "ana"),  # table never made
            ("2026-01-09_F01_0002", "2026-01-09", "F01", "real", "ana"),
            ("2026-01-06_F03_0002", "2026-01-06", "F03", "bogus", "ana"),
            ("2026-01-06_F01_0004", "2026-01-06", "F01", "real", "ana"),
            ("2026-01-06_F01_0004", "2026-01-06", "F01", "bogus", "ben"),  # tied
        ]
    )
    nothing = pl.DataFrame({"candidate_id": [], "label": []})
    assert len(vetted_rows(parts[("2026-01-06", "F01")], nothing)) == 0
    injected = _injected()
    joined, report = join_vetted(
        injected,
        latest,
        lambda night, field: store.read_partition("candidates", night, field),
        held_out_fields=["F03"],
        held_out_nights=["2026-01-09"],
    )
    assert report.as_dict() == {
        "candidates": 7,
        "tied": 1,
        "held_out": 2,
        "not_found": 2,
        "joined_real": 1,
        "joined_bogus": 1,
    }
    assert len(joined) == len(injected) + 2
    human = joined.meta.filter(pl.col("kind") == HUMAN_KIND)
    assert human["split"].unique().to_list() == ["train"]
    assert sorted(human["label"].to_list()) == [0, 1]
    # The injected rows are untouched, the held-out splits too.
    np.testing.assert_array_equal(joined.triplets[: len(injected)], injected.triplets)
    assert joined.subset("test").meta.equals(injected.subset("test").meta)
    assert joined.class_balance()["train"]["kinds"][HUMAN_KIND] == 2


def test_no_labels_leave_the_training_set_as_it_was():
    injected = _injected()
    joined, report = join_vetted(
        injected,
        _labels([]),
        lambda night, field: pytest.fail("nothing to read"),
        held_out_fields=[],
        held_out_nights=[],
    )
    assert joined is injected
    assert report.candidates == 0


def _injected() -> TrainingSet:
    """A few rows shaped like the injected ones (one per split)."""
    n = 3
    rng = np.random.default_rng(1)
    meta = pl.DataFrame(
        {
            "label": pl.Series([1, 0, 1], dtype=pl.Int8),
            "kind": ["psf_empty", "cosmic_ray", "psf_galaxy"],
            "field": ["F01", "F02", "F03"],
            "night": ["2026-01-05", "2026-01-08", "2026-01-09"],
            "split": ["train", "validation", "test"],
            "x": [1.0, 2.0, 3.0],
            "y": [1.0, 2.0, 3.0],
            "positive": [True, True, False],
            "snr": [5.0, 9.0, 20.0],
            "mag": [21.0, 20.0, 19.0],
            "snr_injected": [5.0, np.nan, 20.0],
            "vetted": [True, False, True],
        }
    )
    features = rng.normal(size=(n, len(FEATURE_COLUMNS)))
    features[:, FEATURE_COLUMNS.index("snr")] = meta["snr"].to_numpy()
    return TrainingSet(
        triplets=rng.normal(size=(n, 3, 63, 63)).astype(np.float32),
        features=features,
        meta=meta,
        score_stamps=rng.normal(size=(n, 2, 63, 63)).astype(np.float32),
    )
