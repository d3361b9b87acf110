"""Dagster IO managers for images (FITS) and tables (Parquet).

Both keep one file per partition under a root that is a local directory or
an object store URL (``s3://bucket/prefix``; the store's endpoint and keys
go in ``s3``, other fsspec options in ``storage_options``)::

    {root}/{asset key path}/{night}/{field}.{ext}     night x field partitions
    {root}/{asset key path}/{key}.{ext}               one partition dimension
    {root}/{asset key path}.{ext}                     unpartitioned

The night comes first whatever the order of Dagster's dimensions, so a
night's products sit in one folder. Files are written atomically
(:mod:`astrid_assets.storage.atomic`); a re-materialized partition replaces
its file. Loading many partitions (a night's fields, say) gives a dict
keyed by partition, Dagster's usual way, and honours the
``allow_missing_partitions`` input metadata. On an object store, a failed
read or write is a :class:`~astrid_assets.storage.object_store.StorageError`
naming the object and the endpoint.

After a table is written, an output whose definition metadata names a
``table`` (``AssetOut(metadata={"table": "candidates"})``) gets a DuckDB
view of that name over all its partitions in the catalog.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from astropy.table import Table
from dagster import (
    ConfigurableIOManagerFactory,
    InitResourceContext,
    InputContext,
    MetadataValue,
    MultiPartitionsDefinition,
    OutputContext,
    UPathIOManager,
)
from pydantic import Field
from upath import UPath

from astrid_assets.storage import fits_codec
from astrid_assets.storage.atomic import atomic_write_bytes
from astrid_assets.storage.catalog import Catalog
from astrid_assets.storage.object_store import S3Options, StorageError, is_remote, storage_error

__all__ = [
    "NIGHT_DIMENSION",
    "FitsIOManager",
    "FitsStore",
    "ParquetIOManager",
    "ParquetStore",
    "as_polars",
]

NIGHT_DIMENSION = "night"


def _expects_mapping(context: InputContext) -> bool:
    """True when the input's annotation is a dict (one entry per upstream partition)."""
    import typing

    annotation = getattr(context.dagster_type, "typing_type", None)
    return annotation is dict or typing.get_origin(annotation) is dict


class _PartitionLayout(UPathIOManager):
    """``{asset}/{night}/{field}``: partition folders with the night first."""

    where: str | None = None  # the object store's endpoint, for error messages

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        try:
            super().handle_output(context, obj)
        except Exception as err:
            raise self._translated("write", context, err) from err

    def load_input(self, context: InputContext) -> Any:
        try:
            return super().load_input(context)
        except Exception as err:
            raise self._translated("read", context, err) from err

    def load_partitions(self, context: InputContext) -> Any:
        """As Dagster's, but an input annotated as a dict of partitions gets a dict even
        when one partition maps to it (a survey of one field, a night of one exposure)."""
        loaded = super().load_partitions(context)
        keys = context.asset_partition_keys
        if len(keys) == 1 and _expects_mapping(context):
            return {} if loaded is None else {keys[0]: loaded}
        return loaded

    def _translated(
        self, action: str, context: InputContext | OutputContext, err: Exception
    ) -> Exception:
        if self.where is None or isinstance(err, StorageError | TypeError | ValueError):
            return err
        if isinstance(err, FileNotFoundError) and action == "read":
            return err  # a missing partition keeps Dagster's own message
        path = self._base_path.joinpath(*context.asset_key.path)
        try:
            if context.has_asset_partitions:
                paths = list(self._get_paths_for_partitions(context).values())
                path = paths[0] if len(paths) == 1 else path
            else:
                path = self._get_path(context)
        except Exception:
            pass  # the asset's folder names the object well enough
        return storage_error(action, path, self.where, err)

    def get_path_for_partition(
        self, context: InputContext | OutputContext, path: UPath, partition: str
    ) -> UPath:
        parts = partition.split("/")
        definition = context.asset_partitions_def
        if isinstance(definition, MultiPartitionsDefinition):
            # Dagster joins the dimensions' keys in the order of their names.
            names = sorted(dimension.name for dimension in definition.partitions_defs)
            by_name = dict(zip(names, parts, strict=True))
            parts = [by_name[n] for n in sorted(names, key=lambda n: n != NIGHT_DIMENSION)]
        for part in parts:
            if part in ("", ".", "..") or "\\" in part:
                raise ValueError(f"partition key {partition!r} cannot be a path")
        return path.joinpath(*parts)


def _size_mb(data: bytes) -> MetadataValue:
    return MetadataValue.float(round(len(data) / 1e6, 3))


class FitsStore(_PartitionLayout):
    """Image products as compressed FITS (:mod:`astrid_assets.storage.fits_codec`)."""

    extension = ".fits"

    def __init__(
        self, base_path: UPath, *, quantize_level: float = 16.0, where: str | None = None
    ) -> None:
        super().__init__(base_path=base_path)
        self.quantize_level = quantize_level
        self.where = where

    def dump_to_path(self, context: OutputContext, obj: Any, path: UPath) -> None:
        data = fits_codec.to_bytes(obj, self.quantize_level)
        atomic_write_bytes(path, data)
        context.add_output_metadata({"size_mb": _size_mb(data)})

    def load_from_path(self, context: InputContext, path: UPath) -> Any:
        return fits_codec.from_bytes(path.read_bytes(), source=str(path))


def _series(name: str, column: Any) -> pl.Series:
    values = np.asarray(column)
    if values.dtype.kind == "S":
        values = np.char.decode(values, "utf-8")
    if values.dtype.kind == "O":
        raise TypeError(f"column {name!r} holds Python objects; give it a numeric or str dtype")
    series = pl.Series(name, values)  # 2-D and more become fixed-size Array columns
    mask = np.ma.getmaskarray(column) if np.ma.is_masked(column) else None
    if mask is not None:
        rows = mask.reshape(len(values), -1).any(axis=1)
        series = series.scatter(np.flatnonzero(rows), None)
    return series


def as_polars(obj: Any) -> pl.DataFrame:
    """A polars DataFrame of a DataFrame, a pyarrow Table or an astropy Table.

    Multidimensional astropy columns (cutout stamps) become fixed-size
    ``Array`` columns, masked entries nulls; units are not kept.
    """
    if isinstance(obj, pl.DataFrame):
        return obj
    if isinstance(obj, pa.Table):
        frame = pl.from_arrow(obj)
        assert isinstance(frame, pl.DataFrame)
        return frame
    if isinstance(obj, Table):
        return pl.DataFrame([_series(name, obj[name]) for name in obj.colnames])
    raise TypeError(
        f"a table output must be a polars DataFrame, pyarrow Table or astropy Table, "
        f"got {type(obj).__name__}"
    )


class ParquetStore(_PartitionLayout):
    """Tables as zstd Parquet, loaded as polars DataFrames, with DuckDB views."""

    extension = ".parquet"

    def __init__(
        self, base_path: UPath, *, catalog: Catalog | None = None, where: str | None = None
    ) -> None:
        super().__init__(base_path=base_path)
        self.catalog = catalog
        self.where = where

    def dump_to_path(self, context: OutputContext, obj: Any, path: UPath) -> None:
        buffer = io.BytesIO()
        as_polars(obj).write_parquet(buffer, compression="zstd")
        data = buffer.getvalue()
        atomic_write_bytes(path, data)
        context.add_output_metadata({"size_mb": _size_mb(data)})
        table = (context.definition_metadata or {}).get("table")
        if table and self.catalog is not None:
            self.catalog.ensure_view(str(table), self.table_glob(context), written=str(path))

    def load_from_path(self, context: InputContext, path: UPath) -> pl.DataFrame:
        return pl.read_parquet(io.BytesIO(path.read_bytes()))

    def read_partition(self, asset: str, night: str, field: str) -> pl.DataFrame | None:
        """One night x field partition's table, read outside a run's inputs;
        None when that partition was never written."""
        for part in (asset, night, field):
            if part in ("", ".", "..") or "/" in part or "\\" in part:
                raise ValueError(f"{part!r} cannot be part of a table path")
        path = self._base_path.joinpath(asset, night, field + self.extension)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except Exception as err:
            if self.where is None:
                raise
            raise storage_error("read", path, self.where, err) from err
        return pl.read_parquet(io.BytesIO(data))

    def table_glob(self, context: InputContext | OutputContext) -> str:
        """The files of every partition of the context's asset."""
        asset = self._base_path.joinpath(*context.asset_key.path)
        if context.has_asset_partitions:
            return f"{asset}/**/*{self.extension}"
        return f"{asset}{self.extension}"


class _StoreFactory(ConfigurableIOManagerFactory):
    root: str = Field(description="Local directory or object store URL (s3://bucket/prefix).")
    s3: S3Options = Field(
        default_factory=S3Options, description="Endpoint and keys of an s3:// root."
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="Further fsspec options of a remote root."
    )

    def _base_path(self) -> UPath:
        if not is_remote(self.root):
            return UPath(self.root, **self.storage_options)
        return UPath(self.root, **{**self.s3.fsspec_options(), **self.storage_options})

    def _where(self) -> str | None:
        return self.s3.where() if is_remote(self.root) else None


class FitsIOManager(_StoreFactory):
    """Image products as compressed FITS files under ``root``."""

    quantize_level: float = Field(
        default=16.0,
        ge=0,
        description="Noisy images are quantized to their noise / quantize_level; 0: lossless.",
    )

    def create_io_manager(self, context: InitResourceContext) -> FitsStore:
        return FitsStore(self._base_path(), quantize_level=self.quantize_level, where=self._where())


class ParquetIOManager(_StoreFactory):
    """Tables as Parquet files under ``root``, with views in a DuckDB catalog."""

    catalog_path: str | None = Field(
        default=None, description="DuckDB catalog file; None: no views are kept."
    )

    def create_io_manager(self, context: InitResourceContext) -> ParquetStore:
        catalog = None
        if self.catalog_path:
            filesystem = self.s3.filesystem() if is_remote(self.root) else None
            catalog = Catalog(self.catalog_path, filesystem=filesystem)
        return ParquetStore(self._base_path(), catalog=catalog, where=self._where())
