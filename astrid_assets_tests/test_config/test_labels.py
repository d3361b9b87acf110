"""The label store keeps every label with its vetter and time (SQLite here; PostgreSQL
in astrid_assets_tests/test_prod)."""

import datetime as dt

import pytest

from astrid_assets.labels import LabelStore


def exercise(store: LabelStore) -> None:
    """Shared by the SQLite and PostgreSQL tests."""
    assert store.count_since() == 0
    start = dt.datetime.now(dt.UTC)
    first = store.add("2026-01-05/F01/3", "2026-01-05", "F01", "real", "ada")
    store.add("2026-01-05/F01/3", "2026-01-05", "F01", "bogus", "ada", comment="dipole")
    store.add("2026-01-05/F01/3", "2026-01-05", "F01", "real", "grace")
    store.add("2026-01-05/F02/7", "2026-01-05", "F02", "unsure", "ada")
    labels = store.all()
    assert labels.height == 4
    assert labels["id"][0] == first
    assert labels["comment"].to_list() == ["", "dipole", "", ""]
    assert all(t >= start - dt.timedelta(seconds=1) for t in labels["created_at"])
    latest = store.latest()
    by_vetter = {(r["candidate_id"], r["vetter"]): r["label"] for r in latest.iter_rows(named=True)}
    assert by_vetter == {
        ("2026-01-05/F01/3", "ada"): "bogus",
        ("2026-01-05/F01/3", "grace"): "real",
        ("2026-01-05/F02/7", "ada"): "unsure",
    }
    assert store.count_since() == 4
    assert store.count_since(labels["created_at"][1]) == 2
    with pytest.raises(ValueError, match="label must be one of real, bogus, unsure"):
        store.add("x", "2026-01-05", "F01", "maybe", "ada")
    assert store.count_since() == 4


def test_sqlite_label_store(tmp_path):
    store = LabelStore(sqlite_path=str(tmp_path / "labels" / "labels.sqlite"))
    exercise(store)
    # A second store on the same file sees the same labels.
    assert LabelStore(sqlite_path=str(tmp_path / "labels" / "labels.sqlite")).count_since() == 4


def test_a_store_needs_a_database():
    with pytest.raises(ValueError, match="sqlite_path or pg_host"):
        LabelStore().count_since()
