"""Alert packets for brokers, in a schema modelled on ZTF's.

A night's candidates above the ensemble score cut become Avro packets
(``schema/astrid.alert.avsc``: ``objectId``, ``candid``, a ``candidate``
record, ``prv_candidates`` and the ``cutoutScience`` / ``cutoutTemplate`` /
``cutoutDifference`` stamps as gzipped FITS), the layout of ZTF's alert
stream (Patterson et al. 2019, PASP 131, 018001; schema 3.3 of
ZwickyTransientFacility/ztf-avro-alert). Candidates are associated across
nights into objects by position, so that an object keeps one id and its
packets carry its earlier detections.

Modules, one concept each:

:mod:`~astrid_assets.alerts.stamps`
    Cutouts as gzipped FITS bytes.
:mod:`~astrid_assets.alerts.association`
    Detections into objects; ``candid`` and ``objectId``.
:mod:`~astrid_assets.alerts.packets`
    A night's packets from its tables (pure: frames in, dicts out).
:mod:`~astrid_assets.alerts.avro`
    Packets to and from ``<candid>.avro`` files.
:mod:`~astrid_assets.alerts.night`
    Reading a night's tables from the store; what the asset and ``astrid
    alerts export`` share.

Other surveys' alerts, in:

:mod:`~astrid_assets.alerts.rubin`
    A Rubin (LSST) packet as a row; its cutouts re-centred on 63 x 63.
:mod:`~astrid_assets.alerts.ingest`
    ZTF and Rubin Avro files, folders and tarballs into ``external_candidates``.
:mod:`~astrid_assets.alerts.external_scoring`
    Our real-bogus CNN on them, beside ZTF's ``drb`` and Rubin's ``reliability``.
"""

from astrid_assets.alerts.association import Association, associate, candid_of, object_id_of
from astrid_assets.alerts.avro import (
    SCHEMA_PATH,
    WrittenPackets,
    alert_schema,
    packet_bytes,
    read_packets,
    write_packets,
)
from astrid_assets.alerts.night import NightTables, alerts_folder, load_night, night_alerts
from astrid_assets.alerts.packets import AlertConfig, NightAlerts, build_alerts
from astrid_assets.alerts.stamps import gzip_stamp, read_stamp

__all__ = [
    "SCHEMA_PATH",
    "AlertConfig",
    "Association",
    "NightAlerts",
    "NightTables",
    "WrittenPackets",
    "alert_schema",
    "alerts_folder",
    "associate",
    "build_alerts",
    "candid_of",
    "gzip_stamp",
    "load_night",
    "night_alerts",
    "object_id_of",
    "packet_bytes",
    "read_packets",
    "read_stamp",
    "write_packets",
]
