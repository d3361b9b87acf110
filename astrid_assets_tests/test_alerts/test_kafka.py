"""``astrid alerts ingest --kafka``: the real ZTF and Rubin packets through a real broker.

The broker is Apache Kafka itself (one KRaft node, `KafkaServer`), run from
the jars that ``make kafka`` fetches.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from astrid_assets.alerts.ingest import load_external_candidates
from astrid_assets.alerts.kafka import KafkaSource, consumer_settings, message_source
from astrid_assets.cli import main
from astrid_assets.resources import default_resources
from astrid_assets_tests.servers import KAFKA_LIB, KafkaServer
from astrid_assets_tests.test_alerts.test_ingest import N_RUBIN, N_ZTF

TOPIC = "alerts"
MALFORMED = b"this is not an Avro file\n"


@pytest.fixture(scope="module")
def broker():
    if not any(KAFKA_LIB.glob("kafka_2.13-*.jar")):
        pytest.skip(f"no Apache Kafka jars in {KAFKA_LIB}: run `make kafka`")
    with KafkaServer() as server:
        yield server


@pytest.fixture(scope="module")
def topic(broker, real_data):
    """Every real alert file as one message, and one malformed message, in order."""
    from confluent_kafka import Producer

    files = sorted((real_data / "ztf_alerts").rglob("*.avro"))
    files += sorted((real_data / "rubin_alerts").rglob("*.avro"))
    producer = Producer({"bootstrap.servers": broker.bootstrap, "message.max.bytes": 16 << 20})
    for k, path in enumerate(files):
        producer.produce(TOPIC, value=path.read_bytes())
        if k == 7:
            producer.produce(TOPIC, value=MALFORMED)
    assert producer.flush(30) == 0
    return len(files) + 1


def _home(home: Path) -> pytest.MonkeyPatch:
    patch = pytest.MonkeyPatch()
    patch.setenv("ASTRID_HOME", str(home / "home"))
    patch.setenv("DAGSTER_HOME", str(home))
    return patch


def _invoke(home: Path, *arguments: str):
    with _home(home).context():
        return CliRunner().invoke(main, ["alerts", "ingest", *arguments])


def _ingest(broker, home: Path, *arguments: str):
    result = _invoke(
        home, "--kafka", broker.bootstrap, "--topic", TOPIC, "--timeout", "3", *arguments
    )
    assert result.exit_code == 0, result.output
    return result


def _stored(home: Path):
    with _home(home).context():
        store = default_resources()["parquet_io_manager"].create_io_manager(None)
        return load_external_candidates(store, columns=["survey", "candid", "source_file"])


@pytest.fixture(scope="module")
def first_run(broker, topic, tmp_path_factory):
    home = tmp_path_factory.mktemp("kafka-home")
    return home, _ingest(broker, home, "--group", "first")


def test_every_message_is_stored_as_the_file_ingest_stores_it(first_run, topic):
    home, result = first_run
    assert f"ztf: {N_ZTF} alerts read, {N_ZTF} stored" in result.output
    assert f"rubin: {N_RUBIN} alerts read, {N_RUBIN} stored" in result.output
    assert f"from {topic} messages of {TOPIC}" in result.output
    table = _stored(home)
    assert table.group_by("survey").len().sort("survey").rows() == [
        ("rubin", N_RUBIN),
        ("ztf", N_ZTF),
    ]
    assert table["source_file"].str.starts_with(f"kafka:{TOPIC}/0@").all()


def test_the_malformed_message_is_reported_by_partition_and_offset(first_run):
    _, result = first_run
    warnings = re.findall(r"warning: (\S+): (.*)", result.output)
    assert [source for source, _ in warnings] == [message_source(TOPIC, 0, 8)]
    assert warnings[0][1].startswith("unreadable Avro file")
    assert "1 warnings" in result.output


def test_a_second_run_of_the_group_finds_nothing_new(broker, first_run):
    home, _ = first_run
    again = _ingest(broker, home, "--group", "first")
    assert f"0 alerts stored from 0 messages of {TOPIC}" in again.output
    assert _stored(home).height == N_ZTF + N_RUBIN


def test_a_new_group_rereads_the_topic_and_stores_no_duplicate(broker, first_run, topic):
    home, _ = first_run
    again = _ingest(broker, home, "--group", "second")
    assert f"0 alerts stored from {topic} messages" in again.output
    assert f"ztf: {N_ZTF} alerts read, 0 stored, {N_ZTF} already stored" in again.output
    assert _stored(home).height == N_ZTF + N_RUBIN


def test_max_messages_stops_early_and_the_rest_follow_next_time(broker, topic, tmp_path):
    first = _ingest(broker, tmp_path, "--group", "paged", "--max-messages", "50")
    assert f"from 50 messages of {TOPIC}" in first.output
    rest = _ingest(broker, tmp_path, "--group", "paged")
    assert f"from {topic - 50} messages of {TOPIC}" in rest.output
    assert _stored(tmp_path).height == N_ZTF + N_RUBIN


def test_a_confluent_framed_message_is_named_and_skipped(broker, tmp_path):
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce("rubin-framed", value=b"\x00\x00\x00\x02\xbd" + b"\x02" * 64)
    assert producer.flush(10) == 0
    result = _invoke(tmp_path, "--kafka", broker.bootstrap, "--topic", "rubin-framed")
    assert "kafka:rubin-framed/0@0: Confluent wire format (schema id 701)" in result.output
    assert result.exit_code != 0  # nothing at all could be read


def test_credentials_come_from_the_environment_only():
    source = KafkaSource("broker:9094", TOPIC)
    assert "sasl.username" not in consumer_settings(source, {})
    settings = consumer_settings(
        source, {"ASTRID_KAFKA_USERNAME": "astrid", "ASTRID_KAFKA_PASSWORD": "s3cret"}
    )
    assert settings["security.protocol"] == "SASL_SSL"
    assert settings["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (settings["sasl.username"], settings["sasl.password"]) == ("astrid", "s3cret")
    with pytest.raises(ValueError, match="ASTRID_KAFKA_PASSWORD is not"):
        consumer_settings(source, {"ASTRID_KAFKA_USERNAME": "astrid"})


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "give alert PATHS, or --kafka"),
        (["--kafka", "127.0.0.1:9"], "--kafka needs --topic"),
        (["--topic", TOPIC], "--topic only go with --kafka"),
        (["--kafka", "127.0.0.1:9", "--topic", TOPIC, "."], "either alert PATHS or --kafka"),
    ],
)
def test_paths_and_kafka_are_one_or_the_other(arguments, message, tmp_path):
    result = _invoke(tmp_path, *arguments)
    assert result.exit_code == 2 and message in result.output


def test_messages_are_stored_as_files_are_and_a_bad_one_is_named(real_data, tmp_path):
    """The path every consumed batch takes, without a broker: (source, bytes) pairs
    named as the consumer names them, one of them not Avro."""
    from astrid_assets.alerts.ingest import ingest_alert_messages
    from astrid_assets_tests.test_alerts.test_ingest import _avro, _store

    files = _avro(real_data / "ztf_alerts") + _avro(real_data / "rubin_alerts")
    messages = [(f"kafka:alerts/0@{k}", path.read_bytes()) for k, path in enumerate(files)]
    messages.insert(8, ("kafka:alerts/0@999", MALFORMED))
    store = _store(tmp_path)
    problems: list[tuple[str, str]] = []
    result = ingest_alert_messages(store, messages, on_error=lambda s, r: problems.append((s, r)))

    assert result.stored == {"ztf": N_ZTF, "rubin": N_RUBIN}
    assert [source for source, _ in problems] == ["kafka:alerts/0@999"]
    stored = load_external_candidates(store, columns=["source_file"])
    assert stored["source_file"].str.starts_with("kafka:alerts/0@").all()
    again = ingest_alert_messages(store, messages[:10], on_error=lambda s, r: None)
    assert sum(again.stored.values()) == 0
