"""The science database: the catalogs as tables that astronomers query, and cone searches on them.

The process database (:mod:`upad.db.session`) drives the processing; the science database holds what it produced
for queries, in the spirit of the J-PLUS archive (shared/reference):

``filter``
    One row per filter of the instrument's filter system (``filter_id``, ``filter_name``, central wavelength, width).
``tileimage``
    One row per coadded image: ``tile_id`` (the image's id, the coadd product's id in the process database),
    ``filter_id``, ``ref_tile_id`` (the detection band's image of the same pointing), ``pointing_id`` (the survey
    tile number), dates, exposure, PSF FWHM, zero point, 5σ depth in 3″, completeness magnitudes, provenance.
``magabdualobj``
    The dual-mode catalog, one row per object: ``tile_id`` (of the detection image) and ``number`` identify it;
    position, shape, stellarity, detection flags and ``hpx29``.
``magabdualphot``
    The dual-mode photometry, one row per object and band (``tile_id``, ``number``, ``filter_id``): every magnitude,
    flux and flag of that band. Colours are a join of two bands (docs/science-database.md).
``magabsingleobj``
    The single-mode catalogs, one row per detection in one band (``tile_id`` of that band's image).
``magabdualpointsources``
    A view: the objects of ``magabdualobj`` that look point-like (``class_star`` at least the load step's
    ``point_source_class_star``, no blending/saturation detection flags).
``catalog_load``
    The log of the upload queue: one row per load of a pointing, with the process-database provenance id it
    acknowledges.

Names are lower case (unquoted SQL works on SQLite and PostgreSQL alike; the archive's J-PLUS spellings such as
``MAG_AUTO`` or ``MagABDualObj`` match case-insensitively). Per-band values are one row per band: the same schema
holds 12 (J-PLUS) or 56 (J-PAS) bands, and the same SQL runs on both back ends.

Positions are indexed by a nested HEALPix index of order 29 (``hpx29``, int64, as in HATS) with a B-tree: a cone
becomes a few dozen index ranges (mocpy), joined as a table, then an exact angular-distance cut. On PostgreSQL with
the ``q3c`` extension installed the object tables also get a q3c index, and cone searches use it.

The catalog tables take their columns from the first catalog loaded (names, types, units); a later catalog with
other columns (e.g. other apertures) is refused with the remedy (``upad sciencedb rebuild``). The science database
is derived data: it can always be rebuilt from the catalog products.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import (BigInteger, Column, DateTime, Double, Float, Index, Integer, MetaData, SmallInteger, String,
                        Table, Text, bindparam, case, delete, inspect, select, text, update)
from sqlalchemy.engine import Connection, Engine

from upad.db.session import make_engine
from upad.errors import DataError, UpadError

__all__ = ["SCHEMA_VERSION", "HPX_ORDER", "ScienceDB", "healpix_index", "cone_ranges", "angular_distance_arcsec",
           "CATALOG_TABLES", "column_type"]

#: Version of the science database's schema (the base tables); a database of another version is rebuilt.
SCHEMA_VERSION = 1
#: HEALPix order of the position index (nested; as HATS).
HPX_ORDER = 29
#: The catalog tables and their keys.
CATALOG_TABLES: dict[str, tuple[str, ...]] = {
    "magabdualobj": ("tile_id", "number"),
    "magabdualphot": ("tile_id", "number", "filter_id"),
    "magabsingleobj": ("tile_id", "number"),
}
#: The catalog tables with positions (a ``hpx29`` column and cone searches).
POSITION_TABLES = ("magabdualobj", "magabsingleobj")


def healpix_index(ra_deg: Any, dec_deg: Any) -> np.ndarray:
    """Nested HEALPix index of order :data:`HPX_ORDER` (int64) of positions in degrees."""
    import astropy.units as u
    from astropy_healpix import lonlat_to_healpix

    ra = np.asarray(ra_deg, np.float64)
    dec = np.asarray(dec_deg, np.float64)
    if ra.size == 0:
        return np.zeros(0, np.int64)
    return np.asarray(lonlat_to_healpix(np.mod(ra, 360.0) * u.deg, np.clip(dec, -90.0, 90.0) * u.deg,
                                        2 ** HPX_ORDER, order="nested"), np.int64)


def cone_ranges(ra_deg: float, dec_deg: float, radius_deg: float) -> np.ndarray:
    """The order-29 HEALPix index ranges ``[lo, hi)`` (int64, shape ``(n, 2)``) that cover a cone.

    The cover's cells are about a quarter of the radius, so a cone is a few dozen ranges and the candidates outside
    the cone are few; the exact cut is :func:`angular_distance_arcsec`.
    """
    import astropy.units as u
    from astropy.coordinates import Latitude, Longitude
    from mocpy import MOC

    if not (radius_deg > 0 and math.isfinite(radius_deg)):
        raise ValueError(f"radius {radius_deg} deg: must be positive and finite")
    if not -90.0 <= dec_deg <= 90.0:
        raise ValueError(f"declination {dec_deg} deg is outside [-90, 90]")
    # a cell of order d is about 58.6 deg / 2**d across
    depth = int(np.clip(math.ceil(math.log2(58.6 / min(radius_deg, 90.0))) + 2, 2, HPX_ORDER))
    moc = MOC.from_cone(Longitude(ra_deg % 360.0, u.deg), Latitude(dec_deg, u.deg), radius=radius_deg * u.deg,
                        max_depth=depth)
    return np.asarray(moc.to_depth29_ranges, np.int64)


def angular_distance_arcsec(ra1: Any, dec1: Any, ra2: float, dec2: float) -> np.ndarray:
    """Great-circle distance (arcsec) between positions in degrees (haversine: exact at small separations)."""
    r1, d1, r2, d2 = (np.radians(np.asarray(v, np.float64)) for v in (ra1, dec1, ra2, dec2))
    h = np.sin((d1 - d2) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r1 - r2) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))) * 3600.0


def column_type(dtype: np.dtype) -> Any:
    """The SQL type of a catalog column of numpy ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return Float(precision=24) if dtype.itemsize <= 4 else Double()
    if dtype.kind in "iu":
        if dtype.itemsize <= 1 or (dtype.kind == "i" and dtype.itemsize == 2):
            return SmallInteger()
        if dtype.itemsize <= 2 or (dtype.kind == "i" and dtype.itemsize == 4):
            return Integer()
        return BigInteger()
    if dtype.kind == "b":
        return SmallInteger()
    if dtype.kind in "US":
        return String(max(1, dtype.itemsize // (4 if dtype.kind == "U" else 1)))
    raise DataError(f"no SQL type for a catalog column of type {dtype}")


def _base_tables(md: MetaData) -> None:
    Table("sciencedb_meta", md, Column("key", String(64), primary_key=True), Column("value", Text))
    Table("filter", md,
          Column("filter_id", Integer, primary_key=True, comment="filter id (the filter system's)"),
          Column("filter_name", String(32), unique=True, nullable=False),
          Column("filter_system", String(32)),
          Column("lambda_eff", Float, comment="central wavelength [Angstrom]"),
          Column("fwhm", Float, comment="width (FWHM) [Angstrom]"),
          Column("position", Integer, comment="order of the filter in the system (blue to red)"))
    Table("tileimage", md,
          Column("tile_id", BigInteger, primary_key=True, comment="id of the coadded image"),
          Column("filter_id", Integer, index=True),
          Column("filter_name", String(32)),
          Column("ref_tile_id", BigInteger, comment="tile_id of the detection band's image of the pointing"),
          Column("pointing_id", Integer, index=True, comment="survey tile (pointing) number"),
          Column("instrument", String(32)),
          Column("name", String(64), comment="image name, INSTRUMENT-TILE-FILTER"),
          Column("ra", Double, comment="centre of the image [deg]"),
          Column("dec", Double, comment="centre of the image [deg]"),
          Column("date_first", DateTime, comment="start of the first exposure combined (UTC)"),
          Column("date_last", DateTime, comment="start of the last exposure combined (UTC)"),
          Column("ncombined", Integer, comment="exposures combined"),
          Column("exptime", Float, comment="largest summed exposure time [s]"),
          Column("fwhm_arcsec", Float, comment="median PSF FWHM of the coadd [arcsec]"),
          Column("magzp", Float, comment="AB zero point of the image [mag]"),
          Column("noisecor", Float, comment="true/naive noise of pixel sums (resampling correlation)"),
          Column("depth3arc5s", Float, comment="5 sigma depth in a 3 arcsec aperture, from the weight map [mag]"),
          Column("depth3arc5s_blank", Float, comment="the same from blank-sky apertures [mag]"),
          Column("m50_point", Float, comment="50 % completeness, point sources [mag]"),
          Column("m90_point", Float, comment="90 % completeness, point sources [mag]"),
          Column("m50_ext", Float, comment="50 % completeness, extended sources [mag]"),
          Column("m90_ext", Float, comment="90 % completeness, extended sources [mag]"),
          Column("area_deg2", Float, comment="tile area: exposure fraction above the tile mask's threshold [deg2]"),
          Column("unmasked_deg2", Float, comment="the tile area outside every mask (bright stars, artefacts) "
                                                 "[deg2]"),
          Column("zp_offset", Float, comment="tile zero-point offset applied to the catalogs' magnitudes of this "
                                             "image [mag] (0: the coadd's MAGZP as measured)"),
          Column("zp_provenance", String(64), comment="provenance of the tile calibration applied"),
          Column("provenance_id", String(64), comment="provenance of the coadd (process database)"),
          Column("file_path", Text, comment="coadd file, relative to the data root"),
          Column("load_id", Integer, index=True))
    Table("duplicates", md,
          Column("table_name", String(32), primary_key=True, comment="magabdualobj or magabsingleobj"),
          Column("tile_id", BigInteger, primary_key=True),
          Column("number", Integer, primary_key=True),
          Column("dup_tile_id", BigInteger, primary_key=True, comment="the same object in another pointing"),
          Column("dup_number", Integer, primary_key=True),
          Column("sep_arcsec", Float, comment="separation of the two [arcsec]"),
          Column("loses", SmallInteger, comment="1: this one is not the primary of the pair (the other is "
                                                "nearer its own tile's centre)"),
          Index("ix_duplicates_dup", "table_name", "dup_tile_id"))
    Table("catalog_load", md,
          Column("load_id", Integer, primary_key=True, autoincrement=True),
          Column("instrument", String(32)),
          Column("pointing_id", Integer, index=True),
          Column("provenance_id", String(64), comment="provenance of the load (process database)"),
          Column("catalogs", Text, comment="provenance ids of the catalogs loaded (JSON)"),
          Column("n_dual", Integer),
          Column("n_dual_phot", Integer),
          Column("n_single", Integer),
          Column("n_images", Integer),
          Column("loaded_at", DateTime),
          Column("replaced_at", DateTime, comment="when a later load of the pointing replaced these rows"),
          Column("code_version", String(32)))


@dataclass(frozen=True)
class CatalogColumn:
    """A catalog table's column: name (lower case), numpy dtype, unit."""

    name: str
    dtype: np.dtype
    unit: str = ""


class ScienceDB:
    """A handle on one science database (SQLite or PostgreSQL).

    Parameters
    ----------
    url : str
        SQLAlchemy URL (``sqlite:///PATH`` or ``postgresql://USER@HOST/DB``).
    create : bool
        Create the base tables when the database is empty (otherwise an empty database is refused).
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self.engine: Engine = make_engine(url)
        self.backend = self.engine.dialect.name
        self.metadata = MetaData()
        _base_tables(self.metadata)
        try:
            self._open(create)
        except Exception:
            self.engine.dispose()
            raise

    # -- schema ---------------------------------------------------------------------------------------------------
    def _open(self, create: bool) -> None:
        names = set(inspect(self.engine).get_table_names())
        if "sciencedb_meta" not in names:
            if not create:
                raise UpadError(f"{self.url}: no science database here",
                                hint="it is created by the first catalog load (`upad run`), or `upad sciencedb "
                                     "rebuild`")
            with self.engine.begin() as conn:
                self.metadata.create_all(conn)
                conn.execute(self.metadata.tables["sciencedb_meta"].insert(),
                             [{"key": "schema_version", "value": str(SCHEMA_VERSION)},
                              {"key": "created_at", "value": dt.datetime.now(dt.timezone.utc).isoformat()}])
        with self.engine.connect() as conn:
            v = conn.execute(text("SELECT value FROM sciencedb_meta WHERE key = 'schema_version'")).scalar()
        if str(v) != str(SCHEMA_VERSION):
            raise UpadError(f"{self.url}: science database schema version {v}, this upad writes {SCHEMA_VERSION}",
                            hint="rebuild it from the catalogs: `upad sciencedb rebuild`")
        for name in CATALOG_TABLES:
            if name in names or name in set(inspect(self.engine).get_table_names()):
                Table(name, self.metadata, autoload_with=self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    def table(self, name: str) -> Table:
        """A table of the database (``KeyError`` when it does not exist yet)."""
        return self.metadata.tables[name.lower()]

    def has_table(self, name: str) -> bool:
        return name.lower() in self.metadata.tables

    def q3c_schema(self, conn: Connection) -> str | None:
        """The schema of the q3c extension (PostgreSQL with q3c installed in the database), else ``None``."""
        if self.backend != "postgresql":
            return None
        return conn.execute(text(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON e.extnamespace = n.oid "
            "WHERE e.extname = 'q3c'")).scalar()

    def _q3c_index(self, conn: Connection, table: str) -> str | None:
        """The q3c schema when ``table`` has a q3c index (looked up once per table)."""
        cache = self.__dict__.setdefault("_q3c_cache", {})
        if table not in cache:
            schema = self.q3c_schema(conn)
            has = schema is not None and conn.execute(text(
                "SELECT 1 FROM pg_indexes WHERE indexname = :n AND schemaname = current_schema()"),
                {"n": f"ix_{table}_q3c"}).scalar()
            cache[table] = schema if has else None
        return cache[table]

    def _try_q3c(self, conn: Connection) -> bool:
        if self.backend != "postgresql":
            return False
        if self.q3c_schema(conn):
            return True
        if not conn.execute(text("SELECT 1 FROM pg_available_extensions WHERE name = 'q3c'")).scalar():
            return False
        try:
            with conn.begin_nested():
                conn.execute(text("CREATE EXTENSION IF NOT EXISTS q3c"))
        except Exception:  # e.g. no privilege to create it: the HEALPix index alone
            return False
        return bool(self.q3c_schema(conn))

    def ensure_catalog_table(self, conn: Connection, name: str, columns: Sequence[CatalogColumn]) -> Table:
        """The catalog table ``name``, created with ``columns`` (after its key columns) if it does not exist.

        Raises
        ------
        DataError
            The table exists without some of ``columns`` (the catalogs were made with other parameters).
        """
        name = name.lower()
        keys = CATALOG_TABLES[name]
        if name not in self.metadata.tables and inspect(conn).has_table(name):  # made by another process since
            Table(name, self.metadata, autoload_with=conn)
        if name in self.metadata.tables:
            t = self.metadata.tables[name]
            missing = [c.name for c in columns if c.name not in t.c]
            if missing:
                raise DataError(f"the science database's {name} has no column(s) {', '.join(missing[:8])}: the "
                                "catalogs were made with other parameters than the ones loaded before; rebuild it "
                                "(`upad sciencedb rebuild`)")
            return t
        cols = [Column(k, BigInteger if k == "tile_id" else Integer, primary_key=True, autoincrement=False)
                for k in keys]
        cols += [Column("pointing_id", Integer, nullable=False), Column("load_id", Integer, nullable=False)]
        if name in POSITION_TABLES:
            cols.append(Column("hpx29", BigInteger, nullable=False))
            cols.append(Column("primary_flag", SmallInteger, nullable=False, server_default=text("1"),
                               comment="1: the primary detection of the object (0: a duplicate in a tile overlap)"))
        if name == "magabsingleobj":
            cols.append(Column("filter_id", Integer, nullable=False))
        taken = {c.name for c in cols}
        for c in columns:
            if c.name in taken:
                continue
            cols.append(Column(c.name, column_type(c.dtype), comment=f"[{c.unit}]" if c.unit else None))
            taken.add(c.name)
        t = Table(name, self.metadata, *cols)
        Index(f"ix_{name}_pointing", t.c.pointing_id)
        if name in POSITION_TABLES:
            Index(f"ix_{name}_hpx29", t.c.hpx29)
        if name == "magabsingleobj":
            Index(f"ix_{name}_filter", t.c.filter_id)
        t.create(conn)
        if name in POSITION_TABLES and self._try_q3c(conn):
            q3c = self.q3c_schema(conn)
            conn.execute(text(f'CREATE INDEX ix_{name}_q3c ON {name} ("{q3c}".q3c_ang2ipix(alpha_j2000, '
                              'delta_j2000))'))
        return t

    def ensure_point_source_view(self, conn: Connection, *, class_star: float) -> None:
        """(Re)create the view ``magabdualpointsources`` (objects with ``class_star`` ≥ the threshold and no
        blending (2) or saturation (4) detection flag)."""
        if "magabdualobj" not in self.metadata.tables:
            return
        conn.execute(text("DROP VIEW IF EXISTS magabdualpointsources"))
        conn.execute(text("CREATE VIEW magabdualpointsources AS SELECT * FROM magabdualobj "
                          f"WHERE class_star >= {float(class_star)!r} AND (det_flags & 6) = 0"))

    # -- writing --------------------------------------------------------------------------------------------------
    def lock_for_load(self, conn: Connection) -> None:
        """Serialise loads (PostgreSQL: a transaction-scoped advisory lock; SQLite's writers are serialised by its
        BEGIN IMMEDIATE already): two pointings loaded at once never race to create a table or a view."""
        if self.backend == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7301504)"))

    def bulk_insert(self, conn: Connection, table: str, data: dict[str, np.ndarray]) -> int:
        """Insert the columns ``data`` (equal-length arrays) into ``table``: COPY on PostgreSQL, executemany on
        SQLite. Returns the number of rows."""
        names = list(data)
        if not names:
            return 0
        n = len(next(iter(data.values())))
        if n == 0:
            return 0
        cols = [np.asarray(data[k]).tolist() for k in names]
        rows = list(zip(*cols))
        collist = ", ".join(names)
        if self.backend == "postgresql":
            raw = conn.connection.driver_connection
            with raw.cursor() as cur, cur.copy(f"COPY {table} ({collist}) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row(r)
        else:
            conn.exec_driver_sql(f"INSERT INTO {table} ({collist}) VALUES ({', '.join('?' * len(names))})", rows)
        return n

    # -- zero points ----------------------------------------------------------------------------------------------
    def apply_zero_point(self, conn: Connection, *, tile_id: int, offset: float, provenance: str | None = None
                         ) -> float:
        """Make ``offset`` the zero-point offset of image ``tile_id`` in the catalogs, without re-measuring: every
        magnitude of that image's band (``magabdualphot`` rows of its pointing and filter, its ``magabsingleobj``
        rows) moves by the difference from the offset applied before (non-detections stay 99, their upper limits
        move). Returns the shift applied."""
        ti = self.table("tileimage")
        row = conn.execute(select(ti.c.filter_id, ti.c.ref_tile_id, ti.c.zp_offset).where(
            ti.c.tile_id == tile_id)).one_or_none()
        if row is None:
            raise DataError(f"no image {tile_id} in the science database's tileimage")
        delta = float(offset) - float(row.zp_offset or 0.0)
        targets = []
        if row.ref_tile_id is not None and self.has_table("magabdualphot"):
            t = self.table("magabdualphot")
            targets.append((t, (t.c.tile_id == row.ref_tile_id) & (t.c.filter_id == row.filter_id)))
        if self.has_table("magabsingleobj"):
            t = self.table("magabsingleobj")
            targets.append((t, t.c.tile_id == tile_id))
        if delta != 0.0:
            for t, where in targets:
                values = {}
                for c in t.c:
                    if not c.name.startswith("mag_") or c.name.startswith("mag_err_"):
                        continue
                    values[c.name] = case((c < 50, c + delta), else_=c)
                    e = t.c.get(c.name.replace("mag_", "mag_err_", 1))
                    if e is not None:  # a non-detection's upper limit is a magnitude too
                        values[e.name] = case(((c >= 50) & (e > 0) & (e < 50), e + delta), else_=e)
                if values:
                    conn.execute(update(t).where(where).values(**values))
        conn.execute(update(ti).where(ti.c.tile_id == tile_id).values(zp_offset=float(offset),
                                                                     zp_provenance=provenance))
        return delta

    # -- overlaps -------------------------------------------------------------------------------------------------
    def resolve_overlaps(self, conn: Connection, table: str, load_id: int, *, match_arcsec: float = 1.0) -> int:
        """Find the objects of load ``load_id`` that other pointings also have (within ``match_arcsec``; in
        ``magabsingleobj``, in the same filter), record each pair in ``duplicates`` and keep one primary per object:
        the detection nearer its own tile's centre (``tileimage``), the lower ``tile_id`` on a tie. Returns the
        number of pairs."""
        import astropy.units as u
        from astropy.coordinates import SkyCoord

        t, dup, ti = self.table(table), self.table("duplicates"), self.table("tileimage")
        single = table == "magabsingleobj"
        cols = [t.c.tile_id, t.c.number, t.c.alpha_j2000, t.c.delta_j2000] + ([t.c.filter_id] if single else [])
        new = conn.execute(select(*cols).where(t.c.load_id == load_id)).all()
        if not new:
            return 0
        arr = np.array([r[:4] for r in new], float)
        v = np.stack([np.cos(np.radians(arr[:, 3])) * np.cos(np.radians(arr[:, 2])),
                      np.cos(np.radians(arr[:, 3])) * np.sin(np.radians(arr[:, 2])), np.sin(np.radians(arr[:, 3]))])
        c = v.mean(axis=1)
        c /= np.linalg.norm(c)
        rc, dc = math.degrees(math.atan2(c[1], c[0])) % 360.0, math.degrees(math.asin(np.clip(c[2], -1, 1)))
        radius = float(angular_distance_arcsec(arr[:, 2], arr[:, 3], rc, dc).max()) + 2 * match_arcsec
        cand = self.cone(table, rc, dc, radius, method="healpix", conn=conn,
                         columns=["tile_id", "number", "load_id"] + (["filter_id"] if single else []))
        cand = cand[np.asarray(cand["load_id"]) != load_id]
        if len(cand) == 0:
            return 0
        a = SkyCoord(arr[:, 2], arr[:, 3], unit="deg")
        b = SkyCoord(np.asarray(cand["alpha_j2000"], float), np.asarray(cand["delta_j2000"], float), unit="deg")
        i, j, sep, _ = b.search_around_sky(a, match_arcsec * u.arcsec)  # i: into the new rows, j: into cand
        if single:
            same = np.array([new[k][4] for k in i]) == np.asarray(cand["filter_id"])[j]
            i, j, sep = i[same], j[same], sep[same]
        if len(i) == 0:
            return 0
        tiles = {int(x) for x in np.asarray(cand["tile_id"])[j]} | {int(new[k][0]) for k in i}
        centres = {int(r[0]): (r[1], r[2]) for r in conn.execute(
            select(ti.c.tile_id, ti.c.ra, ti.c.dec).where(ti.c.tile_id.in_(sorted(tiles))))}

        def off_centre(tile, ra, dec):
            cen = centres.get(int(tile))
            return float(angular_distance_arcsec(ra, dec, *cen)) if cen else math.inf

        rows, losers, winners = [], set(), set()
        for k, m, s in zip(i, j, sep.arcsec):
            nt, nn, nra, ndec = int(new[k][0]), int(new[k][1]), new[k][2], new[k][3]
            ct, cn = int(cand["tile_id"][m]), int(cand["number"][m])
            dn = off_centre(nt, nra, ndec)
            dcand = off_centre(ct, float(cand["alpha_j2000"][m]), float(cand["delta_j2000"][m]))
            new_wins = (dn, nt) < (dcand, ct)
            rows.append({"table_name": table, "tile_id": nt, "number": nn, "dup_tile_id": ct, "dup_number": cn,
                         "sep_arcsec": float(s), "loses": int(not new_wins)})
            rows.append({"table_name": table, "tile_id": ct, "number": cn, "dup_tile_id": nt, "dup_number": nn,
                         "sep_arcsec": float(s), "loses": int(new_wins)})
            (losers if not new_wins else winners).add((nt, nn))
            (losers if new_wins else winners).add((ct, cn))
        conn.execute(dup.insert(), rows)
        if losers:
            conn.execute(update(t).where(t.c.tile_id == bindparam("t"), t.c.number == bindparam("n")).values(
                primary_flag=0), [{"t": a_, "n": b_} for a_, b_ in sorted(losers)])
        return len(rows) // 2

    def forget_overlaps(self, conn: Connection, table: str, tile_ids: Sequence[int]) -> None:
        """Before the rows of ``tile_ids`` are deleted: drop their duplicate pairs, and give their partners their
        primary flag back unless they still lose to another pointing."""
        if table not in self.metadata.tables or not tile_ids:
            return
        t, dup = self.table(table), self.table("duplicates")
        ids = [int(x) for x in tile_ids]
        partners = {(int(a), int(b)) for a, b in conn.execute(select(dup.c.dup_tile_id, dup.c.dup_number).where(
            dup.c.table_name == table, dup.c.tile_id.in_(ids), ~dup.c.dup_tile_id.in_(ids)))}
        conn.execute(delete(dup).where(dup.c.table_name == table,
                                       dup.c.tile_id.in_(ids) | dup.c.dup_tile_id.in_(ids)))
        if not partners:
            return
        still = {(int(a), int(b)) for a, b in conn.execute(select(dup.c.tile_id, dup.c.number).where(
            dup.c.table_name == table, dup.c.loses == 1,
            dup.c.tile_id.in_(sorted({p[0] for p in partners}))))}
        back = sorted(partners - still)
        if back:
            conn.execute(update(t).where(t.c.tile_id == bindparam("t"), t.c.number == bindparam("n")).values(
                primary_flag=1), [{"t": a, "n": b} for a, b in back])

    # -- reading --------------------------------------------------------------------------------------------------
    def cone(self, table: str, ra_deg: float, dec_deg: float, radius_arcsec: float, *,
             columns: Iterable[str] | None = None, method: str = "auto", limit: int | None = None,
             conn: Connection | None = None) -> Any:
        """Rows of ``table`` within ``radius_arcsec`` of a position, nearest first.

        Parameters
        ----------
        table : str
            ``magabdualobj``, ``magabsingleobj`` or ``magabdualpointsources``.
        ra_deg, dec_deg : float
            Centre [deg].
        radius_arcsec : float
            Radius [arcsec].
        columns : iterable of str, optional
            Columns to return (default: all); ``alpha_j2000`` and ``delta_j2000`` are always read.
        method : {"auto", "healpix", "q3c"}
            ``auto``: q3c where the PostgreSQL database has it, else the HEALPix ranges.
        limit : int, optional
            At most this many rows (the nearest).
        conn : Connection, optional
            Run on this connection (inside its transaction) rather than a new one.

        Returns
        -------
        astropy.table.Table
            The rows, with a column ``dist_arcsec``; empty (with the columns) when nothing is there.
        """
        from astropy.table import Table as ATable

        name = table.lower()
        base = "magabdualobj" if name == "magabdualpointsources" else name
        if base not in POSITION_TABLES:
            raise UpadError(f"no cone search on {table!r}", hint=f"use one of {', '.join(POSITION_TABLES)}, "
                                                                 "magabdualpointsources")
        if base not in self.metadata.tables:
            raise UpadError(f"the science database has no {base} table yet (no catalog loaded)",
                            hint="run the pipeline to the catalogs (`upad run`), which loads them")
        t = self.metadata.tables[base]
        want = list(dict.fromkeys([c.lower() for c in (columns or [c.name for c in t.c])]
                                  + ["alpha_j2000", "delta_j2000"]))
        unknown = [c for c in want if c not in t.c]
        if unknown:
            raise UpadError(f"{table} has no column(s) {', '.join(unknown)}")
        radius_deg = float(radius_arcsec) / 3600.0
        if not (radius_deg > 0 and math.isfinite(radius_deg)):
            raise ValueError(f"radius {radius_arcsec} arcsec: must be positive and finite")
        if not (math.isfinite(ra_deg) and -90.0 <= dec_deg <= 90.0):
            raise ValueError(f"position ({ra_deg}, {dec_deg}) deg: the declination must be within [-90, 90]")
        sel = ", ".join(f"o.{c}" for c in want)
        with (contextlib.nullcontext(conn) if conn is not None else self.engine.connect()) as conn:
            q3c = self._q3c_index(conn, base) if method in ("auto", "q3c") else None
            if method == "q3c" and q3c is None:
                raise UpadError(f"{base} has no q3c index (q3c is not installed in this database)",
                                hint="use method='healpix'")
            if q3c is not None:
                sql = (f'SELECT {sel} FROM {name} o WHERE "{q3c}".q3c_radial_query(o.alpha_j2000, o.delta_j2000, '
                       ":ra, :dec, :r)")
                rows = conn.execute(text(sql), {"ra": ra_deg, "dec": dec_deg, "r": radius_deg}).fetchall()
            else:
                rng = cone_ranges(ra_deg, dec_deg, radius_deg)
                if self.backend == "postgresql":
                    # the planner cannot estimate a join on ranges (it guesses millions of rows) and would spend
                    # ~60 ms compiling the query with JIT for a few dozen index probes
                    conn.execute(text("SET LOCAL jit = off"))
                    sql = (f"SELECT {sel} FROM unnest(CAST(:lo AS bigint[]), CAST(:hi AS bigint[])) AS r(lo, hi) "
                           f"JOIN {name} o ON o.hpx29 >= r.lo AND o.hpx29 < r.hi")
                    params = {"lo": rng[:, 0].tolist(), "hi": rng[:, 1].tolist()}
                else:
                    values = ", ".join(f"(:lo{i}, :hi{i})" for i in range(len(rng)))
                    # CROSS JOIN keeps the ranges as the outer loop: one index range scan each
                    sql = (f"WITH r(lo, hi) AS (VALUES {values}) SELECT {sel} FROM r CROSS JOIN {name} o "
                           "WHERE o.hpx29 >= r.lo AND o.hpx29 < r.hi")
                    params = {}
                    for i, (lo, hi) in enumerate(rng.tolist()):
                        params[f"lo{i}"], params[f"hi{i}"] = lo, hi
                rows = conn.execute(text(sql), params).fetchall()
        out = ATable(rows=rows if rows else None, names=want) if rows else ATable(names=want)
        if not rows:
            out["dist_arcsec"] = np.zeros(0)
            return out
        d = angular_distance_arcsec(np.asarray(out["alpha_j2000"], float), np.asarray(out["delta_j2000"], float),
                                    ra_deg, dec_deg)
        out["dist_arcsec"] = d
        keep = d <= radius_arcsec
        out = out[keep]
        out.sort("dist_arcsec")
        if limit is not None:
            out = out[:limit]
        return out

    def counts(self) -> dict[str, int]:
        """Rows per table."""
        with self.engine.connect() as conn:
            return {n: int(conn.execute(text(f"SELECT count(*) FROM {n}")).scalar())
                    for n in ("filter", "tileimage", "catalog_load", *CATALOG_TABLES) if n in self.metadata.tables}
