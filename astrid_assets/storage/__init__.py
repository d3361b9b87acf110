"""Where bytes live: images as compressed FITS, tables as Parquet with a DuckDB
catalog of views, written atomically to a local directory or an object store.
Nothing here knows any science or any asset; assets reach it through the IO
managers."""

from astrid_assets.storage.atomic import atomic_write_bytes, remove_stale_temporaries
from astrid_assets.storage.catalog import Catalog, format_table
from astrid_assets.storage.io_managers import FitsIOManager, ParquetIOManager

__all__ = [
    "Catalog",
    "FitsIOManager",
    "ParquetIOManager",
    "atomic_write_bytes",
    "format_table",
    "remove_stale_temporaries",
]
