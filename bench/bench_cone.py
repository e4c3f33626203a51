"""Cone searches on the science database: 1' cones on N catalog rows (default 10^7), SQLite and PostgreSQL.

upad's HEALPix order-29 index (mocpy ranges joined as a table, then the exact distance cut) on both back ends,
side by side with q3c (the field's standard PostgreSQL index, where the extension is installed) in the same run,
with the ratio. The rows are a J-PLUS-like object table (position + 20 float columns) at J-PLUS's density
(~17 000 objects per deg^2) over a 30 x 20 deg field.

    python bench/bench_cone.py --rows 10000000 --pg postgresql://postgres@127.0.0.1:5432/test
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from sqlalchemy import text

from upad.db.science import CatalogColumn, ScienceDB, angular_distance_arcsec, healpix_index

NEXTRA = 20


def fill(sdb: ScienceDB, n: int, seed: int = 1, chunk: int = 250_000) -> float:
    rng = np.random.default_rng(seed)
    cols = [CatalogColumn("alpha_j2000", np.dtype("f8")), CatalogColumn("delta_j2000", np.dtype("f8"))] + \
        [CatalogColumn(f"col{i:02d}", np.dtype("f4")) for i in range(NEXTRA)]
    t0 = time.perf_counter()
    with sdb.engine.begin() as conn:
        sdb.ensure_catalog_table(conn, "magabdualobj", cols)
    done = 0
    while done < n:
        m = min(chunk, n - done)
        ra = rng.uniform(150.0, 180.0, m)
        dec = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(20.0)), np.sin(np.radians(40.0)), m)))
        idx = np.arange(done, done + m)
        data = {"tile_id": (1 + idx // 100_000).astype(np.int64), "number": (idx % 100_000).astype(np.int32),
                "pointing_id": np.full(m, 1, np.int32), "load_id": np.ones(m, np.int32),
                "hpx29": healpix_index(ra, dec), "alpha_j2000": ra, "delta_j2000": dec}
        for i in range(NEXTRA):
            data[f"col{i:02d}"] = rng.normal(20, 2, m).astype(np.float32)
        with sdb.engine.begin() as conn:
            sdb.bulk_insert(conn, "magabdualobj", data)
        done += m
        print(f"  {done:,} rows", end="\r", flush=True)
    with sdb.engine.begin() as conn:
        conn.execute(text("ANALYZE magabdualobj" if sdb.backend == "postgresql" else "ANALYZE"))
    print()
    return time.perf_counter() - t0


def time_cones(sdb: ScienceDB, centres: np.ndarray, radius: float, method: str) -> tuple[np.ndarray, int]:
    sdb.cone("magabdualobj", *centres[0], radius, method=method)  # warm the pool and the cache
    out, total = [], 0
    for ra, dec in centres:
        t0 = time.perf_counter()
        got = sdb.cone("magabdualobj", ra, dec, radius, method=method, columns=["number", "col00"])
        out.append(time.perf_counter() - t0)
        total += len(got)
    return np.array(out) * 1000, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--cones", type=int, default=200)
    ap.add_argument("--radius", type=float, default=60.0, help="arcsec")
    ap.add_argument("--sqlite", default=None, help="SQLite file (default: a temporary one)")
    ap.add_argument("--pg", default=os.environ.get("UPAD_TEST_DATABASE_URL"), help="PostgreSQL URL")
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    centres = np.column_stack([rng.uniform(151, 179, args.cones), rng.uniform(21, 39, args.cones)])
    results = {}
    tmp = tempfile.mkdtemp(prefix="bench-cone-")
    backends = [("sqlite", f"sqlite:///{args.sqlite or os.path.join(tmp, 'science.sqlite')}")]
    if args.pg:
        schema = "bench_cone"
        from sqlalchemy import create_engine

        admin = create_engine(args.pg.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            c.execute(text(f"CREATE SCHEMA {schema}"))
        sep = "&" if "?" in args.pg else "?"
        backends.append(("postgresql", f"{args.pg}{sep}options=-csearch_path%3D{schema}"))
    for name, url in backends:
        sdb = ScienceDB(url)
        if not sdb.has_table("magabdualobj"):
            print(f"{name}: loading {args.rows:,} rows ...")
            results[(name, "load_s")] = fill(sdb, args.rows)
        methods = ["healpix"]
        with sdb.engine.connect() as conn:
            if sdb.backend == "postgresql" and sdb.q3c_schema(conn):
                methods.append("q3c")
        for m in methods:
            ms, total = time_cones(sdb, centres, args.radius, m)
            results[(name, m)] = ms
            print(f"{name:10s} {m:8s}: {args.cones} cones of {args.radius:g}\" on {args.rows:,} rows: median "
                  f"{np.median(ms):.2f} ms, p95 {np.percentile(ms, 95):.2f} ms, {total / args.cones:.1f} rows/cone")
        # correctness: the same rows as a brute-force cut of a strip around the first centre
        ra0, dec0 = centres[0]
        with sdb.engine.connect() as conn:
            rows = conn.execute(text("SELECT number, alpha_j2000, delta_j2000 FROM magabdualobj WHERE delta_j2000 "
                                     "BETWEEN :a AND :b"), {"a": dec0 - 0.02, "b": dec0 + 0.02}).all()
        arr = np.array([(r[1], r[2]) for r in rows])
        truth = int(np.count_nonzero(angular_distance_arcsec(arr[:, 0], arr[:, 1], ra0, dec0) <= args.radius))
        got = len(sdb.cone("magabdualobj", ra0, dec0, args.radius, method="healpix"))
        print(f"{name:10s} check: {got} rows in the first cone, brute force {truth}")
        assert got == truth
        sdb.dispose()
    if ("postgresql", "q3c") in results:
        h, q = np.median(results[("postgresql", "healpix")]), np.median(results[("postgresql", "q3c")])
        print(f"PostgreSQL: HEALPix / q3c median time = {h / q:.2f}")
        print(f"SQLite HEALPix / PostgreSQL q3c median time = {np.median(results[('sqlite', 'healpix')]) / q:.2f}")


if __name__ == "__main__":
    main()
