"""Cutout triplets from the candidates tables, with the last few partitions kept in memory.

The DuckDB views leave the wide ``cutout_*`` columns out, so the stamps
are read from the partition's own Parquet file through the table store
(:meth:`ParquetStore.read_partition
<astrid_assets.storage.io_managers.ParquetStore.read_partition>`). A vetter
goes through a night x field's candidates one after the other, so the
partition read for the first is kept, briefly, for the next ones.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import polars as pl

from astrid_assets.review.render import STAMP_KINDS

__all__ = ["StampCache"]


class StampCache:
    """The science, reference and difference stamps of candidates.

    Parameters
    ----------
    tables : ParquetStore
        Has ``read_partition("candidates", night, field)``.
    partitions : int
        Partitions kept in memory, least recently used dropped first.
    ttl : float
        Seconds a partition is kept before it is read again (a partition
        re-materialized meanwhile is then seen).
    """

    def __init__(self, tables: Any, *, partitions: int = 8, ttl: float = 120.0):
        self.tables = tables
        self.partitions = partitions
        self.ttl = ttl
        self._cache: OrderedDict[tuple[str, str], tuple[float, dict[str, int], pl.DataFrame]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def stamp(self, night: str, field: str, candidate_id: str, kind: str) -> np.ndarray | None:
        """One stamp as a square float array (row 0 at the bottom), or None."""
        if kind not in STAMP_KINDS:
            raise ValueError(f"kind must be one of {', '.join(STAMP_KINDS)}, got {kind!r}")
        entry = self._partition(night, field)
        if entry is None:
            return None
        rows, frame = entry
        column = f"cutout_{kind}"
        if candidate_id not in rows or column not in frame.columns:
            return None
        values = frame[column][rows[candidate_id]]
        if values is None:
            return None
        flat = np.asarray(values.to_numpy() if isinstance(values, pl.Series) else values)
        side = int(round(np.sqrt(flat.size)))
        if side * side != flat.size:
            raise ValueError(f"{column} of {candidate_id} is not square ({flat.size} values)")
        return flat.reshape(side, side)

    def _partition(self, night: str, field: str) -> tuple[dict[str, int], pl.DataFrame] | None:
        key = (night, field)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and now - cached[0] < self.ttl:
                self._cache.move_to_end(key)
                return cached[1], cached[2]
        frame = self.tables.read_partition("candidates", night, field)
        if frame is None:
            return None
        rows = {str(cid): i for i, cid in enumerate(frame["candidate_id"].to_list())}
        with self._lock:
            self._cache[key] = (now, rows, frame)
            self._cache.move_to_end(key)
            while len(self._cache) > self.partitions:
                self._cache.popitem(last=False)
        return rows, frame
