"""Alert packets from a Kafka topic, as ZTF's and Rubin's alert streams distribute them.

``astrid alerts ingest --kafka HOST:PORT --topic TOPIC`` consumes the topic
as consumer group ``--group`` and stores its alerts as
:func:`astrid_assets.alerts.ingest.ingest_alerts` stores files': one row per
alert in ``external_candidates``, an alert already stored skipped by
``(survey, candid)``.

Messages
--------
Each message's value is one Avro container file with its schema embedded,
as on ZTF's public stream (Patterson et al. 2019, PASP 131, 018001). A row's
``source_file`` names its message: ``kafka:TOPIC/PARTITION@OFFSET``.

Rubin's stream frames each packet in Confluent's wire format instead: a zero
magic byte, a 4-byte schema id and a schemaless Avro body whose schema lives
in a schema registry. Such a message is reported by topic, partition and
offset (with the schema id) and skipped: reading it needs that registry,
which AstrID does not query. Rubin packets saved as Avro files (as the
alert archive serves them) are read by ``astrid alerts ingest PATH``.

Offsets
-------
A new group starts at the earliest offset. Messages are read until
``max_messages`` have been read or none arrives for ``timeout`` seconds, and
are stored in batches of :data:`BATCH_MESSAGES`; the group's offsets are
committed only after a batch is stored, so a crash re-reads a batch rather
than losing it (and the re-read adds nothing: duplicates are skipped). A
malformed message is reported and skipped, and its offset committed with the
rest.

Broker settings
---------------
Only the bootstrap address comes from the command line. A broker that
requires authentication is configured from the environment, never from code
or logs: ``ASTRID_KAFKA_USERNAME`` and ``ASTRID_KAFKA_PASSWORD`` (SASL),
``ASTRID_KAFKA_SASL_MECHANISM`` (default ``SCRAM-SHA-512``),
``ASTRID_KAFKA_SECURITY_PROTOCOL`` (default ``SASL_SSL`` with a username,
``PLAINTEXT`` without) and ``ASTRID_KAFKA_SSL_CA_LOCATION`` (a CA bundle).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from astrid_assets.alerts.ingest import IngestResult, OnError, ingest_alert_messages

__all__ = [
    "BATCH_MESSAGES",
    "DEFAULT_GROUP",
    "KafkaIngest",
    "KafkaSource",
    "consumer_settings",
    "ingest_kafka_alerts",
    "message_source",
]

DEFAULT_GROUP = "astrid-alerts"
# A ZTF packet is ~70 kB with its cutouts: a batch holds ~70 MB in memory.
BATCH_MESSAGES = 1000
AVRO_MAGIC = b"Obj\x01"
CONFLUENT_MAGIC = 0
CONFLUENT_HEADER = struct.Struct(">bI")
ENV_PREFIX = "ASTRID_KAFKA_"


@dataclass(frozen=True)
class KafkaSource:
    """Where and how much to consume.

    Attributes
    ----------
    bootstrap : str
        The brokers' bootstrap address(es), ``host:port[,host:port]``.
    topic : str
        The topic of alert packets.
    group : str
        Consumer group; its committed offsets say where the next run starts.
    max_messages : int or None
        Stop after this many messages (None: until the topic is idle).
    timeout : float
        Seconds without a message after which the topic counts as idle.
    """

    bootstrap: str
    topic: str
    group: str = DEFAULT_GROUP
    max_messages: int | None = None
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if not self.bootstrap.strip():
            raise ValueError("the Kafka bootstrap address is empty")
        if not self.topic.strip():
            raise ValueError("the Kafka topic is empty")
        if self.max_messages is not None and self.max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {self.max_messages}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")


@dataclass
class KafkaIngest:
    """What a Kafka ingest consumed and stored.

    Attributes
    ----------
    messages : int
        Messages consumed (and committed).
    result : IngestResult
        Alerts read, stored and skipped per survey, summed over the batches.
    """

    messages: int = 0
    result: IngestResult = field(default_factory=IngestResult)


def message_source(topic: str, partition: int, offset: int) -> str:
    """The ``source_file`` of a message's alerts, and the name its problems carry."""
    return f"kafka:{topic}/{partition}@{offset}"


def consumer_settings(
    source: KafkaSource, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """librdkafka settings of the consumer: ``source``'s, and the broker's
    credentials from the ``ASTRID_KAFKA_*`` environment variables."""
    env = os.environ if environ is None else environ
    settings: dict[str, Any] = {
        "bootstrap.servers": source.bootstrap,
        "group.id": source.group,
        "auto.offset.reset": "earliest",
        # Offsets are committed by hand, after the batch is stored.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # Alert packets with cutouts exceed the 1 MB default on some brokers.
        "fetch.max.bytes": 64 * 1024 * 1024,
    }
    username = env.get(f"{ENV_PREFIX}USERNAME")
    protocol = env.get(f"{ENV_PREFIX}SECURITY_PROTOCOL") or ("SASL_SSL" if username else None)
    if protocol:
        settings["security.protocol"] = protocol
    if username:
        password = env.get(f"{ENV_PREFIX}PASSWORD")
        if not password:
            raise ValueError(f"{ENV_PREFIX}USERNAME is set but {ENV_PREFIX}PASSWORD is not")
        settings["sasl.mechanism"] = env.get(f"{ENV_PREFIX}SASL_MECHANISM") or "SCRAM-SHA-512"
        settings["sasl.username"] = username
        settings["sasl.password"] = password
    ca = env.get(f"{ENV_PREFIX}SSL_CA_LOCATION")
    if ca:
        settings["ssl.ca.location"] = ca
    return settings


def ingest_kafka_alerts(
    store: Any,
    source: KafkaSource,
    *,
    on_error: OnError | None = None,
    progress: Callable[[int], Any] | None = None,
) -> KafkaIngest:
    """Consume ``source``'s topic and store its new alerts, batch by batch.

    Parameters
    ----------
    store
        The tables store, as for :func:`~astrid_assets.alerts.ingest.ingest_alerts`.
    source
        Broker, topic, group and when to stop.
    on_error
        Called as ``on_error(source, reason)`` for each message skipped, the
        source naming its topic, partition and offset.
    progress
        Called with the number of messages of each batch once it is stored.

    Raises
    ------
    RuntimeError
        When the broker reports a fatal error, or the offsets cannot be committed.
    """
    from confluent_kafka import Consumer, KafkaException

    consumer = Consumer(consumer_settings(source))
    ingest = KafkaIngest()

    def report(name: str, reason: str) -> None:
        ingest.result.problems.append((name, reason))
        if on_error is not None:
            on_error(name, reason)

    try:
        consumer.subscribe([source.topic])
        for batch, count, next_offsets in _batches(consumer, source, report):
            _add(ingest.result, ingest_alert_messages(store, batch, on_error=on_error))
            try:
                consumer.commit(offsets=next_offsets, asynchronous=False)
            except KafkaException as err:
                raise RuntimeError(
                    f"stored the batch but could not commit group {source.group!r}'s offsets "
                    f"on {source.topic}: {err}; the next run re-reads it (duplicates are skipped)"
                ) from err
            ingest.messages += count
            if progress is not None:
                progress(count)
    finally:
        consumer.close()
    return ingest


def _batches(
    consumer: Any, source: KafkaSource, report: OnError
) -> Iterator[tuple[list[tuple[str, bytes]], int, list[Any]]]:
    """Batches of ``(source name, Avro bytes)``, each with the number of messages it
    stands for and the offsets to commit after it is stored.

    A Confluent-framed or empty message is reported here and left out of the
    batch; its offset is committed with the batch's.
    """
    from confluent_kafka import KafkaError

    read = 0
    batch: list[tuple[str, bytes]] = []
    positions: dict[tuple[str, int], int] = {}
    last_message = time.monotonic()
    while source.max_messages is None or read < source.max_messages:
        idle = time.monotonic() - last_message
        if idle >= source.timeout:
            break
        message = consumer.poll(min(1.0, source.timeout - idle))
        if message is None:
            continue
        error = message.error()
        if error is not None:
            if error.fatal() or error.code() in (
                KafkaError.UNKNOWN_TOPIC_OR_PART,
                KafkaError._AUTHENTICATION,
                KafkaError.TOPIC_AUTHORIZATION_FAILED,
                KafkaError.GROUP_AUTHORIZATION_FAILED,
            ):
                raise RuntimeError(f"Kafka {source.bootstrap}, topic {source.topic}: {error.str()}")
            report(f"kafka:{source.topic}", f"consumer error: {error.str()}; going on")
            continue
        last_message = time.monotonic()
        read += 1
        name = message_source(message.topic(), message.partition(), message.offset())
        positions[(message.topic(), message.partition())] = message.offset() + 1
        problem = _framing_problem(message.value())
        if problem is not None:
            report(name, f"{problem}; skipped")
        else:
            batch.append((name, message.value()))
        if read % BATCH_MESSAGES == 0:
            yield batch, BATCH_MESSAGES, _offsets(positions)
            batch, positions = [], {}
    if positions:
        yield batch, read % BATCH_MESSAGES or BATCH_MESSAGES, _offsets(positions)


def _offsets(positions: dict[tuple[str, int], int]) -> list[Any]:
    from confluent_kafka import TopicPartition

    return [TopicPartition(t, p, o) for (t, p), o in positions.items()]


def _framing_problem(value: bytes | None) -> str | None:
    """Why a message's value is not an Avro container file AstrID can read, if it is not."""
    if not value:
        return "empty message"
    if value.startswith(AVRO_MAGIC):
        return None
    if len(value) > CONFLUENT_HEADER.size and value[0] == CONFLUENT_MAGIC:
        _, schema_id = CONFLUENT_HEADER.unpack_from(value)
        return (
            f"Confluent wire format (schema id {schema_id}): a schemaless Avro body whose "
            "schema is in the stream's schema registry, which AstrID does not read; "
            "ingest Avro files of these alerts instead"
        )
    return None  # not Avro either: the Avro reader says what it is


def _add(total: IngestResult, part: IngestResult) -> None:
    for name in ("read", "stored", "duplicates"):
        counts = getattr(total, name)
        for survey, n in getattr(part, name).items():
            counts[survey] = counts.get(survey, 0) + n
    total.problems += part.problems
    total.written += part.written
