"""Real servers on loopback for the production-mode tests, one set per test module.

Module scope: a module may stop and restart the object store (the fault tests
do), so no module sees another's servers or data. Each fixture stops its
server by process id at teardown, whether the tests passed or not.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from astrid_assets_tests.servers import MlflowServer, PostgresServer, S3Server


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with S3Server(bucket="astrid") as server:
        yield server


@pytest.fixture(scope="module")
def mlflow_server(postgres_server: PostgresServer, s3_server: S3Server) -> Iterator[MlflowServer]:
    with MlflowServer(postgres_server, s3_server) as server:
        yield server
