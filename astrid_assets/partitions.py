"""The partitions of the asset graph: survey night x field.

A night is the UTC date of the evening (``YYYY-MM-DD``). Nights are dynamic:
the nightly schedule, the landing-directory sensor and ``astrid backfill``
add them as they are observed or asked for, so the UI shows exactly the
nights that exist. Fields are the survey source's pointings.
"""

from __future__ import annotations

import datetime as dt
import warnings

from dagster import (
    BetaWarning,
    DynamicPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    MultiToSingleDimensionPartitionMapping,
    StaticPartitionsDefinition,
)

from astrid_assets.resources import survey_source
from astrid_assets.sources.base import validate_night

__all__ = [
    "FIELD",
    "NIGHT",
    "by_dimension",
    "field_partitions",
    "night_and_field",
    "night_field_key",
    "night_field_partitions",
    "night_partitions",
    "nights_between",
    "validate_night",
]

NIGHT = "night"
FIELD = "field"

night_partitions = DynamicPartitionsDefinition(name=NIGHT)
field_partitions = StaticPartitionsDefinition(survey_source().fields())
night_field_partitions = MultiPartitionsDefinition(
    {NIGHT: night_partitions, FIELD: field_partitions}
)


def night_field_key(night: str, field: str) -> MultiPartitionKey:
    """The partition key of one night and field."""
    return MultiPartitionKey({NIGHT: night, FIELD: field})


def nights_between(start: str, end: str) -> list[str]:
    """Every night from ``start`` to ``end`` inclusive."""
    first = dt.date.fromisoformat(validate_night(start))
    last = dt.date.fromisoformat(validate_night(end))
    if last < first:
        raise ValueError(f"the end night {end} is before the start night {start}")
    return [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def night_and_field(partition_key: str | MultiPartitionKey) -> tuple[str, str]:
    """The night and the field of a night x field partition key."""
    if not isinstance(partition_key, MultiPartitionKey):
        partition_key = night_field_partitions.get_partition_key_from_str(partition_key)
    dims = partition_key.keys_by_dimension
    return dims[NIGHT], dims[FIELD]


def by_dimension(dimension: str) -> MultiToSingleDimensionPartitionMapping:
    """Map a night x field partition to the ``dimension`` partition it shares
    (a night's masters, a field's reference), or back to all that share it."""
    with warnings.catch_warnings():
        # Stable in use since Dagster 1.4; the beta label alone is no news to a user.
        warnings.simplefilter("ignore", BetaWarning)
        return MultiToSingleDimensionPartitionMapping(partition_dimension_name=dimension)
