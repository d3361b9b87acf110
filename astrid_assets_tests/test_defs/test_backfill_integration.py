"""A real backfill: `astrid backfill` over 7 nights x 4 fields with a real dagster-daemon,
on a Dagster instance and a store in temporary directories; then a partition
materialized again, and a run killed in the middle.

The backfill daemon evaluates a backfill every 30 s and launches its runs in
waves (raw exposures, masters and references; then calibration, subtraction
and detection; then completeness), so this module takes several minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.execution.backfill import BulkActionStatus

from astrid_assets.commands.demo import latest_metadata
from astrid_assets.partitions import night_field_key, nights_between
from astrid_assets.storage.catalog import Catalog

REPO_ROOT = Path(__file__).resolve().parents[2]
ASTRID = Path(sys.executable).parent / "astrid"
NIGHTS = nights_between("2026-01-05", "2026-01-11")
FIELDS = ["F01", "F02", "F03", "F04"]
# 512 px: the smallest simulated detector on which every one of these exposures has
# the three PSF stars calibration needs (at 256 px most have one or none).
SIM_SIZE = "512"
# The tables, and the asset whose materialization metadata counts each partition's rows.
TABLES = {"candidates": "candidates", "exposures": "exposure_table", "frames": "frame_table"}
INSTANCE_VARIABLES = ("ASTRID_DAGSTER_STORAGE", "ASTRID_DAGSTER_LOGS", "ASTRID_MAX_RUNS")

Counts = dict[str, dict[tuple[str, str], int]]


@dataclass
class Project:
    """A Dagster home with the project's dagster.yaml and an empty ASTRID_HOME."""

    home: Path
    env: dict[str, str]

    @property
    def store(self) -> Path:
        return self.home / "store"

    def astrid(self, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(ASTRID), *args],
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def counts(self) -> Counts:
        catalog = Catalog(self.home / "astrid.duckdb")
        out: Counts = {}
        for view in TABLES:
            frame = catalog.query(f"SELECT night, field, count(*) AS n FROM {view} GROUP BY ALL")
            out[view] = {(r["night"], r["field"]): r["n"] for r in frame.iter_rows(named=True)}
        return out


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    root = tmp_path_factory.mktemp("backfill")
    dagster_home = root / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if k not in INSTANCE_VARIABLES}
    env.update(
        DAGSTER_HOME=str(dagster_home),
        ASTRID_HOME=str(root / "astrid_home"),
        ASTRID_SIM_SIZE=SIM_SIZE,
    )
    with pytest.MonkeyPatch.context() as mp:
        for name in INSTANCE_VARIABLES:
            mp.delenv(name, raising=False)
        for name in ("DAGSTER_HOME", "ASTRID_HOME", "ASTRID_SIM_SIZE"):
            mp.setenv(name, env[name])
        # What `astrid` fills in for dagster.yaml, for the instance this process opens.
        mp.setenv("ASTRID_DAGSTER_STORAGE", str(root / "astrid_home" / "dagster"))
        mp.setenv("ASTRID_DAGSTER_LOGS", str(root / "astrid_home" / "dagster" / "logs"))
        mp.setenv("ASTRID_MAX_RUNS", "2")
        yield Project(home=root / "astrid_home", env=env)


@pytest.fixture
def instance(project: Project) -> Iterator[DagsterInstance]:
    with DagsterInstance.get() as instance:
        yield instance


@pytest.fixture(scope="module")
def backfilled(project: Project) -> Counts:
    """The 7 x 4 backfill, run to its end; the row counts it left in DuckDB."""
    started = time.perf_counter()
    result = project.astrid("backfill", "--start", NIGHTS[0], "--end", NIGHTS[-1])
    seconds = time.perf_counter() - started
    print(
        f"backfill of {len(NIGHTS)} nights x {len(FIELDS)} fields at {SIM_SIZE} px: {seconds:.0f} s"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "COMPLETED_SUCCESS" in result.stdout
    return project.counts()


def _assert_counts_match_metadata(instance: DagsterInstance, counts: Counts) -> None:
    """Every partition's rows in DuckDB (none: 0) are the rows its latest
    materialization wrote."""
    for view, asset in TABLES.items():
        assert set(counts[view]) <= {(n, f) for n in NIGHTS for f in FIELDS}, view
        for night in NIGHTS:
            for field in FIELDS:
                metadata = latest_metadata(instance, asset, str(night_field_key(night, field)))
                assert metadata is not None, (asset, night, field)
                assert metadata["rows"] == counts[view].get((night, field), 0), (view, night, field)


def test_every_partition_is_materialized_and_duckdb_has_each_partition_once(
    backfilled: Counts, instance: DagsterInstance
) -> None:
    expected = {str(night_field_key(n, f)) for n in NIGHTS for f in FIELDS}
    for asset in ("raw_exposures", "calibrated_exposures", "difference_images", "candidates"):
        assert set(instance.get_materialized_partitions(AssetKey(asset))) == expected, asset
    assert set(instance.get_materialized_partitions(AssetKey("calibration_masters"))) == set(NIGHTS)
    assert set(instance.get_materialized_partitions(AssetKey("completeness_report"))) == set(NIGHTS)
    assert set(instance.get_materialized_partitions(AssetKey("reference_images"))) == set(FIELDS)
    every = {(n, f) for n in NIGHTS for f in FIELDS}
    assert backfilled["exposures"] == dict.fromkeys(every, 1)
    assert backfilled["frames"] == dict.fromkeys(every, 1)
    # A partition without candidates has an empty file, so no group in GROUP BY.
    assert sum(backfilled["candidates"].values()) > 0
    _assert_counts_match_metadata(instance, backfilled)


def test_materializing_a_partition_again_replaces_its_rows(
    project: Project, backfilled: Counts, instance: DagsterInstance
) -> None:
    key = str(night_field_key("2026-01-08", "F02"))
    before = instance.fetch_materializations(AssetKey("candidates"), limit=1_000).records
    result = project.astrid(
        "backfill", "--start", "2026-01-08", "--end", "2026-01-08", "--fields", "F02"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    after = instance.fetch_materializations(AssetKey("candidates"), limit=1_000).records
    new = [r for r in after if r.storage_id not in {b.storage_id for b in before}]
    assert [r.partition_key for r in new] == [key]
    # The field already had a reference: it is not rebuilt.
    references = instance.fetch_materializations(AssetKey("reference_images"), limit=100)
    assert len(references.records) == len(FIELDS)
    assert project.counts() == backfilled
    _assert_counts_match_metadata(instance, backfilled)


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def _run_worker_pid(instance: DagsterInstance, run_id: str) -> int | None:
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        found = re.search(r"Started process for run \(pid: (\d+)\)", entry.message or "")
        if found:
            return int(found.group(1))
    return None


def _kill_a_started_run(instance: DagsterInstance, backfill_id: str, timeout: float = 300) -> str:
    """SIGKILL the whole process tree of the first run of the backfill seen executing a step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = instance.get_runs(
            RunsFilter(tags={"dagster/backfill": backfill_id}, statuses=[DagsterRunStatus.STARTED])
        )
        for run in runs:
            steps = instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_START)
            pid = _run_worker_pid(instance, run.run_id)
            if not steps or pid is None:
                continue
            tree = _process_tree(pid)
            for member in tree:
                try:
                    os.kill(member, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if len(tree) > 1 or not instance.get_run_by_id(run.run_id).is_finished:
                return run.run_id
        time.sleep(0.2)
    raise AssertionError(f"no run of backfill {backfill_id} started within {timeout} s")


def _new_backfill(instance: DagsterInstance, known: set[str], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = [b.backfill_id for b in instance.get_backfills() if b.backfill_id not in known]
        if fresh:
            return fresh[0]
        time.sleep(0.2)
    raise AssertionError("astrid backfill submitted no backfill")


@pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="finds the run's processes in /proc"
)
def test_a_killed_run_leaves_no_partial_file_and_running_again_restores_the_same_tables(
    project: Project, backfilled: Counts, instance: DagsterInstance, tmp_path: Path
) -> None:
    night = "2026-01-09"
    known = {b.backfill_id for b in instance.get_backfills()}
    log = tmp_path / "backfill.log"
    with open(log, "w") as out:
        cli = subprocess.Popen(
            [str(ASTRID), "backfill", "--start", night, "--end", night],
            env=project.env,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        backfill_id = _new_backfill(instance, known)
        killed = _kill_a_started_run(instance, backfill_id)
        # Told to stop, the command stops waiting and stops the daemon it started.
        # (SIGTERM, which takes the same way out as Ctrl-C: a test runner in the
        # background may have SIGINT ignored, and its children with it.)
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        if cli.poll() is None:
            cli.kill()
    output = log.read_text()
    assert "stopped waiting" in output
    daemon = int(re.search(r"started dagster-daemon \(pid (\d+)", output).group(1))
    with pytest.raises(ProcessLookupError):
        os.killpg(daemon, 0)

    # Stop everything, as an operator would in the UI: the killed run can no longer
    # report, so it is marked canceled, and so is the interrupted backfill.
    for run in instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id})):
        if not run.is_finished:
            instance.report_run_canceled(run, message="its processes were killed by the test")
    assert instance.get_run_by_id(killed).is_finished
    instance.update_backfill(
        instance.get_backfill(backfill_id).with_status(BulkActionStatus.CANCELED)
    )

    # Writes go to hidden temporaries renamed into place: no glob of the store
    # (`**/*.parquet`, `**/*.fits`) can see a temporary, whatever was left behind.
    for pattern in ("**/*.parquet", "**/*.fits"):
        for path in project.store.glob(pattern):
            assert ".tmp-" not in path.name and not path.name.startswith("."), path
    assert project.counts() == backfilled

    result = project.astrid("backfill", "--start", night, "--end", night)
    assert result.returncode == 0, result.stdout + result.stderr
    assert project.counts() == backfilled
    _assert_counts_match_metadata(instance, backfilled)
