"""Exports of the science database's tables: Parquet files (pyarrow), one per table, written in chunks.

Each file is written under a temporary name and renamed when complete; its columns keep the database's names and
types, and the table's column comments (units) go into the Parquet field metadata. The SHA-256 of every file is
returned for a release manifest.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import select

from upad.db.science import CATALOG_TABLES, ScienceDB
from upad.io.atomic import sha256_file

__all__ = ["export_parquet", "EXPORTED_TABLES"]

#: The tables exported by default (the catalogs and what describes them).
EXPORTED_TABLES = ("filter", "tileimage", *CATALOG_TABLES, "duplicates")


def _arrow_type(sqltype: Any) -> Any:
    import pyarrow as pa
    from sqlalchemy import BigInteger, DateTime, Double, Float, Integer, SmallInteger

    if isinstance(sqltype, BigInteger):
        return pa.int64()
    if isinstance(sqltype, SmallInteger):
        return pa.int16()
    if isinstance(sqltype, Integer):
        return pa.int32()
    if isinstance(sqltype, Double):
        return pa.float64()
    if isinstance(sqltype, Float):
        return pa.float32() if (getattr(sqltype, "precision", None) or 53) <= 24 else pa.float64()
    if isinstance(sqltype, DateTime):
        return pa.timestamp("us")
    return pa.string()


def export_parquet(sdb: ScienceDB, out_dir: str | os.PathLike, *, tables: tuple[str, ...] | None = None,
                   chunk_rows: int = 200_000, where: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Write tables of the science database as Parquet files ``<out_dir>/<table>.parquet``.

    Parameters
    ----------
    sdb : ScienceDB
    out_dir : path
        Created if needed.
    tables : tuple of str, optional
        Default :data:`EXPORTED_TABLES` (those that exist).
    chunk_rows : int
        Rows read and written at a time (memory bound).
    where : dict, optional
        Column → list of values a row must have (e.g. ``{"pointing_id": [12, 13]}``), applied to the tables that
        have the column.

    Returns
    -------
    dict
        Table → ``{"path", "rows", "sha256"}``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [t for t in (tables or EXPORTED_TABLES) if sdb.has_table(t)]
    result: dict[str, dict[str, Any]] = {}
    for name in names:
        t = sdb.table(name)
        stmt = select(t)
        for col, values in (where or {}).items():
            if col in t.c:
                stmt = stmt.where(t.c[col].in_(list(values)))
        keys = [c for c in t.primary_key.columns] or list(t.c)[:1]
        stmt = stmt.order_by(*keys)
        final = out / f"{name}.parquet"
        tmp = out / f".{name}.parquet.part"
        schema = pa.schema([pa.field(c.name, _arrow_type(c.type), metadata={"description": c.comment or ""})
                            for c in t.c])
        rows = 0
        writer = pq.ParquetWriter(tmp, schema)
        try:
            with sdb.engine.connect() as conn:
                res = conn.execution_options(stream_results=True, yield_per=chunk_rows).execute(stmt)
                for part in res.partitions(chunk_rows):
                    cols = list(zip(*part))
                    writer.write_table(pa.table([pa.array(v, type=f.type) for v, f in zip(cols, schema)],
                                                schema=schema))
                    rows += len(part)
        finally:
            writer.close()
        os.replace(tmp, final)
        result[name] = {"path": str(final), "rows": rows, "sha256": sha256_file(final)}
    return result
