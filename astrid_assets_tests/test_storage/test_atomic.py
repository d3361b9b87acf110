"""Atomic writes: a failed write leaves the previous file, and nothing half-written."""

from __future__ import annotations

import os
import uuid

import pytest
from upath import UPath

from astrid_assets.storage.atomic import atomic_write_bytes, remove_stale_temporaries


def visible(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_creates_folders_and_replaces(tmp_path):
    path = UPath(tmp_path / "night" / "F01.fits")
    atomic_write_bytes(path, b"first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    assert visible(tmp_path / "night") == ["F01.fits"]


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_failed_write_keeps_previous_file_and_leaves_no_partial(tmp_path, monkeypatch, failing):
    path = UPath(tmp_path / "F01.parquet")
    atomic_write_bytes(path, b"previous")

    def fail(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_bytes(path, b"new and longer content")
    monkeypatch.undo()
    assert path.read_bytes() == b"previous"
    assert visible(tmp_path) == ["F01.parquet"]


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path):
    stale = tmp_path / ".F01.fits.tmp-0123abcd"
    other = tmp_path / ".F02.fits.tmp-0123abcd"
    stale.write_bytes(b"half")
    other.write_bytes(b"half of another partition")
    atomic_write_bytes(UPath(tmp_path / "F01.fits"), b"whole")
    assert visible(tmp_path) == [".F02.fits.tmp-0123abcd", "F01.fits"]
    assert remove_stale_temporaries(UPath(tmp_path / "F02.fits")) == [other]
    assert visible(tmp_path) == ["F01.fits"]


def test_temporary_names_are_invisible_to_globs(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    atomic_write_bytes(UPath(tmp_path / "F01.parquet"), b"x")
    (name,) = seen
    assert name.startswith(".F01.parquet.tmp-")
    assert not name.endswith((".parquet", ".fits"))


def test_remote_path_is_one_put():
    path = UPath(f"memory://astrid-test-{uuid.uuid4().hex}/night/F01.fits")
    atomic_write_bytes(path, b"object")
    assert path.read_bytes() == b"object"
    assert remove_stale_temporaries(path) == []
