"""``astrid backfill``: arguments checked before anything is submitted, and the daemon it runs."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from dagster import DagsterInstance

from astrid_assets.cli import main
from astrid_assets.commands.backfill import Stopped, backfill_url, parse_fields, stop_on
from astrid_assets.commands.daemon import DaemonError, daemon_is_running, ensure_daemon
from astrid_assets.settings import configure_environment

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def astrid_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project: a Dagster home with the project's dagster.yaml, and an
    ASTRID_HOME that does not exist yet."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path / "astrid_home"))
    for name in ("ASTRID_DAGSTER_STORAGE", "ASTRID_DAGSTER_LOGS", "ASTRID_MAX_RUNS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "astrid_home"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "2026-01-11", "--end", "2026-01-05"], "before the start night"),
        (["--start", "5 Jan 2026", "--end", "2026-01-05"], "a night is a date YYYY-MM-DD"),
        (["--start", "2026-01-05", "--end", "2026-02-30"], "a night is a date YYYY-MM-DD"),
        (
            ["--start", "2026-01-05", "--end", "2026-01-06", "--fields", "F01,F99"],
            "unknown field(s) F99",
        ),
    ],
)
def test_backfill_rejects_bad_arguments_before_submitting_or_starting_anything(
    astrid_home: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(main, ["backfill", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    # No instance storage was created, so nothing was submitted, and no daemon log.
    assert not astrid_home.exists()


def test_backfill_requires_start_and_end(astrid_home: Path) -> None:
    result = CliRunner().invoke(main, ["backfill", "--start", "2026-01-05"])
    assert result.exit_code == 2
    assert "--end" in result.output
    assert not astrid_home.exists()


def test_fields_are_parsed_deduplicated_and_checked_against_the_survey() -> None:
    known = ["F01", "F02", "F03"]
    assert parse_fields(None, known) is None
    assert parse_fields("", known) is None
    assert parse_fields(" F02, F01,F02 ", known) == ["F02", "F01"]
    with pytest.raises(ValueError, match=r"unknown field\(s\) F9, f01; the survey's fields"):
        parse_fields("F9,F01,f01", known)


def test_backfill_url_is_the_ui_backfill_page() -> None:
    assert backfill_url("abcdefgh") == "http://127.0.0.1:3000/overview/backfills/abcdefgh"


def test_ensure_daemon_starts_one_reuses_a_running_one_and_stops_its_process_group(
    astrid_home: Path,
) -> None:
    configure_environment()
    with DagsterInstance.get() as instance:
        assert not daemon_is_running(instance)
        with ensure_daemon(instance) as daemon:
            pid = daemon.pid
            assert daemon.started_here and pid is not None
            assert os.getpgid(pid) == pid
            assert daemon_is_running(instance)
            with ensure_daemon(instance) as inner:
                assert not inner.started_here
            assert daemon_is_running(instance)
            assert not daemon.ensure()  # still running: nothing to do
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
        # The stopped daemon's heartbeats are gone, so the next command starts its own.
        assert not daemon_is_running(instance)
    assert daemon.log == astrid_home / "dagster" / "daemon.log"
    assert "dagster-daemon run -w" in daemon.log.read_text()


def test_a_daemon_in_use_that_stops_is_replaced(astrid_home: Path) -> None:
    """``make ui`` closed while a backfill is followed: its daemon's heartbeats go
    stale, and the command starts a daemon of its own."""
    configure_environment()
    with DagsterInstance.get() as instance:
        with ensure_daemon(instance) as other:
            other_pid = other.pid
            with ensure_daemon(instance) as daemon:
                assert not daemon.started_here
                other.stop()
                assert not daemon_is_running(instance)
                assert daemon.ensure()
                assert daemon.started_here and daemon.pid != other_pid
                assert daemon_is_running(instance)
                pid = daemon.pid
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
        assert not daemon_is_running(instance)


def test_a_daemon_that_dies_is_reported(astrid_home: Path) -> None:
    configure_environment()
    with DagsterInstance.get() as instance, ensure_daemon(instance) as daemon:
        os.killpg(daemon.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        with pytest.raises(DaemonError, match="dagster-daemon exited with code -9"):
            while time.monotonic() < deadline:
                daemon.ensure()
                time.sleep(0.1)
        assert not daemon_is_running(instance)


def test_sigterm_and_sighup_stop_the_command_like_ctrl_c_and_only_while_following() -> None:
    before = signal.getsignal(signal.SIGTERM)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        with pytest.raises(KeyboardInterrupt) as stopped, stop_on(signal.SIGTERM, signal.SIGHUP):
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler raises as soon as the signal arrives
        assert isinstance(stopped.value, Stopped) and stopped.value.signum == signum
    assert signal.getsignal(signal.SIGTERM) == before
