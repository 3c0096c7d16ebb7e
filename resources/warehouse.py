"""The warehouse as a Dagster resource: Parquet partitions under one data directory, DuckDB over them.

The storage itself is :class:`clickloop.storage.Warehouse`; this resource holds its settings (where
the data lives, how much of the machine DuckDB may use, where it spills) and builds it.
"""

from dagster import ConfigurableResource

from clickloop.storage import DuckDBSettings, StoragePath, Warehouse, storage_path

_DUCKDB = DuckDBSettings()


class WarehouseResource(ConfigurableResource):
    """Parquet + DuckDB storage for every asset of the loop, rooted at ``data_dir``."""

    data_dir: str
    #: where the tables live when not under ``data_dir``: an object-storage prefix such as
    #: ``s3://bucket/clickloop`` (credentials and endpoint from the environment); empty: ``data_dir``
    url: str = ""
    duckdb_threads: int = _DUCKDB.threads
    duckdb_memory_limit: str = _DUCKDB.memory_limit
    #: where DuckDB spills beyond its memory limit; empty: ``<data_dir>/.duckdb_tmp``
    duckdb_temp_dir: str = ""

    @property
    def root(self) -> StoragePath:
        return storage_path(self.url or self.data_dir)

    def get(self) -> Warehouse:
        """The warehouse these settings describe."""
        temp = self.duckdb_temp_dir or str(storage_path(self.data_dir) / ".duckdb_tmp")
        return Warehouse(self.root, DuckDBSettings(self.duckdb_threads, self.duckdb_memory_limit, temp))
