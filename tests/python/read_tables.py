"""Reads Kith's tables with independent engines, to prove they are open Delta tables.

Usage: read_tables.py EVENTS_TABLE_DIR
Prints JSON: the sorted message ids each engine sees.
"""
import json
import sys

import duckdb
import polars as pl
from deltalake import DeltaTable

path = sys.argv[1]
table = DeltaTable(path)
by_deltalake = sorted(table.to_pyarrow_table(columns=["message_id"]).column("message_id").to_pylist())
by_polars = sorted(pl.read_delta(path).get_column("message_id").to_list())
# DuckDB's delta extension is downloaded at run time; read the Parquet files the log lists instead.
# A table with no rows yet has no files, and read_parquet refuses an empty list.
files = table.file_uris()
by_duckdb = sorted(
    row[0]
    for row in duckdb.sql(f"SELECT message_id FROM read_parquet({files!r})").fetchall()
) if files else []
revenue = duckdb.sql(f"SELECT sum(revenue) FROM read_parquet({files!r})").fetchall()[0][0] if files else None
print(json.dumps({
    "deltalake": by_deltalake,
    "polars": by_polars,
    "duckdb": by_duckdb,
    "duckdb_revenue": revenue,
    "version": table.version(),
}))
