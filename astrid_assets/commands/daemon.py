"""A Dagster daemon for the command line: use the one that is running, or run one.

Backfills, the run queue and run monitoring are the daemon's work. ``make ui``
(``dagster dev``) runs one beside the webserver; ``astrid backfill`` and
``astrid demo`` use that one while it heartbeats, and otherwise start
``dagster-daemon run`` for as long as they need it and stop it afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import DagsterInstance

from astrid_assets.settings import project_dir, settings

__all__ = ["DaemonError", "DaemonHandle", "daemon_is_running", "ensure_daemon"]

# The daemon types an asset backfill needs: the backfill daemon launches the
# runs, the queued-run coordinator starts them as slots free up.
REQUIRED_DAEMONS = ("BACKFILL", "QUEUED_RUN_COORDINATOR")
# Daemons heartbeat every 30 s; two missed beats mean it is gone.
HEARTBEAT_FRESH_SECONDS = 60.0


class DaemonError(RuntimeError):
    """The daemon could not be started, or died."""


def daemon_is_running(instance: DagsterInstance, *, since: float | None = None) -> bool:
    """Whether every daemon a backfill needs heartbeated in the last minute
    (and after ``since``, a Unix time, when given)."""
    beats = instance.get_daemon_heartbeats()
    now = time.time()
    oldest = max(now - HEARTBEAT_FRESH_SECONDS, since or 0.0)
    return all(kind in beats and beats[kind].timestamp >= oldest for kind in REQUIRED_DAEMONS)


def _daemon_executable() -> Path:
    executable = Path(sys.executable).parent / "dagster-daemon"
    if not executable.exists():
        raise DaemonError(
            f"no dagster-daemon beside {sys.executable}; install the project (make demo does)"
        )
    return executable


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DaemonHandle:
    """The daemon a command relies on: one that was running, or one it started.

    ``pid`` is set while a daemon started here runs; ``started`` says whether
    one was ever started here.
    """

    def __init__(
        self, instance: DagsterInstance, *, startup_timeout: float, stop_timeout: float
    ) -> None:
        self.instance = instance
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.log = settings().home / "dagster" / "daemon.log"
        self._process: subprocess.Popen | None = None
        self._daemon_ids: set[str] = set()
        self.started = False

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def started_here(self) -> bool:
        return self._process is not None

    def ensure(self) -> bool:
        """Make sure a daemon is running: start one if the daemon in use has stopped
        heartbeating (``make ui`` was closed, say). Returns whether it started one.

        Raises
        ------
        DaemonError
            If the daemon started here exited, or a new one does not heartbeat within
            ``startup_timeout`` seconds.
        """
        if self._process is not None:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                self._forget_heartbeats()
                raise DaemonError(
                    f"dagster-daemon exited with code {code}; the end of {self.log}:\n"
                    f"{_log_tail(self.log)}"
                )
            return False
        if daemon_is_running(self.instance):
            return False
        self._start()
        return True

    def _start(self) -> None:
        root = project_dir()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        command = [str(_daemon_executable()), "run", "-w", str(root / "workspace.yaml")]
        started = time.time()
        self.started = True
        with open(self.log, "ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
            out.flush()
            self._process = subprocess.Popen(
                command,
                cwd=root,
                env=os.environ.copy(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        while not daemon_is_running(self.instance, since=started):
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise DaemonError(
                    f"dagster-daemon exited with code {code} while starting; "
                    f"the end of {self.log}:\n{_log_tail(self.log)}"
                )
            if time.time() - started > self.startup_timeout:
                self.stop()
                raise DaemonError(
                    f"dagster-daemon did not heartbeat within {self.startup_timeout:.0f} s; "
                    f"the end of {self.log}:\n{_log_tail(self.log)}"
                )
            time.sleep(0.5)
        self._daemon_ids |= {
            beat.daemon_id
            for beat in self.instance.get_daemon_heartbeats().values()
            if beat.timestamp >= started
        }

    def stop(self) -> None:
        """Stop the daemon started here: SIGTERM to its process group (the daemon,
        its code server and any run in flight with them), SIGKILL to whatever is
        left after ``stop_timeout`` seconds; then forget its heartbeats."""
        process, self._process = self._process, None
        if process is None:
            return
        pgid = process.pid
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline:
            process.poll()  # reap the daemon itself so that it leaves the group
            if not _group_alive(pgid):
                break
            time.sleep(0.2)
        else:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()
        self._forget_heartbeats()

    def _forget_heartbeats(self) -> None:
        """Wipe the heartbeats the stopped daemon left, so that the next command
        does not take them for a live daemon; keep them while another beats."""
        now = time.time()
        if not any(
            beat.daemon_id not in self._daemon_ids
            and now - beat.timestamp < HEARTBEAT_FRESH_SECONDS
            for beat in self.instance.get_daemon_heartbeats().values()
        ):
            self.instance.wipe_daemon_heartbeats()


@contextmanager
def ensure_daemon(
    instance: DagsterInstance,
    *,
    startup_timeout: float = 180.0,
    stop_timeout: float = 30.0,
) -> Iterator[DaemonHandle]:
    """A running Dagster daemon for the duration of the ``with`` block.

    Uses the daemon that is heartbeating for ``instance`` (``make ui`` runs
    one); otherwise starts ``dagster-daemon run -w workspace.yaml`` in its own
    process group, with this process's environment and its output in
    ``$ASTRID_HOME/dagster/daemon.log``, waits until it heartbeats, and stops
    it on exit (SIGTERM to its process group, SIGKILL after ``stop_timeout``
    seconds). Call ``ensure()`` on the handle now and then while waiting: it
    starts a daemon if the one in use has stopped.

    Raises
    ------
    DaemonError
        If the daemon exits or does not heartbeat within ``startup_timeout`` seconds.
    """
    handle = DaemonHandle(instance, startup_timeout=startup_timeout, stop_timeout=stop_timeout)
    try:
        handle.ensure()
        yield handle
    finally:
        handle.stop()
