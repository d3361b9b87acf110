"""The loopback servers themselves: they listen where they should, enforce their
credentials, and (for the object store) survive a stop and a start with their data."""

from __future__ import annotations

import os
import pwd
import socket
from pathlib import Path

import botocore.exceptions
import psycopg2
import pytest
import sqlalchemy

from astrid_assets_tests.servers import LOOPBACK, S3Server

WRONG_KEYS = (PermissionError, botocore.exceptions.ClientError)


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket that process ``pid`` listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address_hex, port_hex = local.split(":")
            if len(address_hex) == 8:
                address = socket.inet_ntop(socket.AF_INET, bytes.fromhex(address_hex)[::-1])
            else:
                address = address_hex  # an IPv6 listener: reported as is, and not expected
            listening.add((address, int(port_hex, 16)))
    return listening


def test_postgres_accepts_its_password_and_refuses_a_wrong_one(postgres_server):
    with postgres_server.connect() as connection, connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        assert cursor.fetchone() == (postgres_server.user,)
    connection.close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(
            host=postgres_server.host,
            port=postgres_server.port,
            user=postgres_server.user,
            password=postgres_server.password + "x",
            dbname="postgres",
        )


def test_postgres_listens_only_on_its_loopback_port(postgres_server):
    assert listening_addresses(postgres_server.pid) == {(LOOPBACK, postgres_server.port)}


def test_postgres_url_reaches_a_created_database(postgres_server):
    postgres_server.create_database("labels")
    postgres_server.create_database("labels")  # a second call finds it and does nothing
    engine = sqlalchemy.create_engine(postgres_server.url("labels"))
    try:
        with engine.connect() as connection:
            name = connection.execute(sqlalchemy.text("SELECT current_database()")).scalar()
    finally:
        engine.dispose()
    assert name == "labels"


@pytest.mark.skipif(os.geteuid() != 0, reason="only as root does the server change user")
def test_postmaster_belongs_to_the_postgres_user_when_run_as_root(postgres_server):
    process = Path(f"/proc/{postgres_server.pid}")
    assert process.stat().st_uid == pwd.getpwnam("postgres").pw_uid
    assert os.readlink(process / "exe") == str(postgres_server.bin_dir / "postgres")


def test_s3_put_get_and_list(s3_server):
    fs = s3_server.filesystem()
    root = f"{s3_server.bucket}/put-get"
    fs.pipe(f"{root}/a.bin", b"\x00first")
    fs.pipe(f"{root}/nested/b.bin", b"second")
    assert fs.cat(f"{root}/a.bin") == b"\x00first"
    assert sorted(fs.find(root)) == [f"{root}/a.bin", f"{root}/nested/b.bin"]


def test_s3_refuses_wrong_keys(s3_server):
    s3_server.filesystem().pipe(f"{s3_server.bucket}/keys/object", b"secret data")
    for access_key, secret_key in [
        (s3_server.access_key, s3_server.secret_key + "x"),
        ("someone-else", s3_server.secret_key),
    ]:
        fs = s3_server.filesystem(access_key=access_key, secret_key=secret_key)
        with pytest.raises(WRONG_KEYS):
            fs.cat(f"{s3_server.bucket}/keys/object")
        with pytest.raises(WRONG_KEYS):
            fs.pipe(f"{s3_server.bucket}/keys/intruder", b"x")
    assert not s3_server.filesystem().exists(f"{s3_server.bucket}/keys/intruder")


def test_weed_listens_only_on_its_chosen_loopback_ports(s3_server):
    expected = {(LOOPBACK, port) for port in s3_server.ports.values()}
    assert listening_addresses(s3_server.pid) == expected


def test_s3_stop_refuses_connections_and_start_brings_the_objects_back():
    with S3Server(bucket="restart") as server:
        server.filesystem().pipe("restart/kept.txt", b"still here")
        endpoint, first_pid = server.endpoint_url, server.pid
        server.stop()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((LOOPBACK, server.ports["s3"]), timeout=5).close()
        assert not Path(f"/proc/{first_pid}").exists()
        server.start()
        assert server.endpoint_url == endpoint
        assert server.pid != first_pid
        assert server.filesystem().cat("restart/kept.txt") == b"still here"
        data_dir = server.data_dir
    assert not data_dir.exists()


def test_mlflow_run_and_artifact_round_trip_through_the_server(
    mlflow_server, s3_server, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    # The client reaches the artifacts through the tracking server, with no S3 keys.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    experiment_id = client.create_experiment("server-round-trip")
    run = client.create_run(experiment_id)
    run_id = run.info.run_id
    client.log_param(run_id, "model", "realbogus")
    client.log_metric(run_id, "roc_auc", 0.991)
    artifact = tmp_path / "scores.bin"
    artifact.write_bytes(bytes(range(256)) * 4)
    client.log_artifact(run_id, str(artifact), artifact_path="curves")
    client.set_terminated(run_id)

    stored = client.get_run(run_id)
    assert stored.data.params == {"model": "realbogus"}
    assert stored.data.metrics == {"roc_auc": 0.991}
    back = client.download_artifacts(run_id, "curves/scores.bin", str(tmp_path / "back"))
    assert Path(back).read_bytes() == artifact.read_bytes()

    fs = s3_server.filesystem()
    objects = fs.find(f"{s3_server.bucket}/mlflow/")
    (stored_object,) = [path for path in objects if path.endswith("curves/scores.bin")]
    assert f"/{run_id}/" in stored_object
    assert fs.cat(stored_object) == artifact.read_bytes()
