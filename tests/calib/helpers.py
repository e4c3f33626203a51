"""Helpers of the calibration tests: anomalies injected into simulated raw frames, fake database rows."""
from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from upad.instruments import get_instrument

INST = get_instrument("mini")


def rewrite_raw(path: Path, func) -> None:
    """Apply ``func(data: float64) -> float64`` to an uncompressed raw frame and write it back as uint16."""
    with fits.open(path) as hdul:
        header = hdul[0].header.copy()
        data = np.asarray(hdul[0].data, np.float64)
    new = np.clip(np.rint(func(data)), 0, 65535).astype(np.uint16)
    for key in ("BZERO", "BSCALE"):
        header.remove(key, ignore_missing=True)
    fits.PrimaryHDU(data=new, header=header).writeto(path, overwrite=True)


def light_leak(data: np.ndarray) -> np.ndarray:
    """A light leak: a smooth ramp of 40-400 ADU across the data sections."""
    out = data.copy()
    for sec in INST.amp_sections("readout"):
        ny, nx = out[sec.data].shape
        out[sec.data] += np.linspace(40, 400, nx)[None, :] + np.linspace(0, 100, ny)[:, None]
    return out


def saturate(data: np.ndarray) -> np.ndarray:
    """An overexposed flat: the signal above the overscan multiplied by 4 (clipped at the ADC maximum)."""
    out = data.copy()
    for sec in INST.amp_sections("readout"):
        level = np.median(data[sec.overscan_x])
        out[sec.data] = level + 4 * (data[sec.data] - level)
    return out


def gradient(data: np.ndarray) -> np.ndarray:
    """A flat lit unevenly (a lamp or screen problem): the signal multiplied by a 3 % ramp across the field."""
    out = data.copy()
    nx = INST.layout.active_shape[1]
    for sec in INST.amp_sections("readout"):
        level = np.median(data[sec.overscan_x])
        x = np.arange(sec.active[1].start, sec.active[1].stop) / nx
        out[sec.data] = level + (data[sec.data] - level) * (1 + 0.03 * x)[None, :]
    return out


def add_frame(session, *, night: str, obs_type: str, date_obs: dt.datetime, filter_name: str | None = "rSDSS",
              instrument: str = "mini", layout: str = "readout", read_mode: str = "MODE_5", exptime: float = 30.0,
              ra: float | None = 150.0, dec: float | None = 38.0, name: str | None = None) -> int:
    """Register a frame row without pixels (for planning and lookup tests)."""
    from upad.db.models import Frame

    name = name or f"fake-{obs_type}-{date_obs:%Y%m%dT%H%M%S%f}.fits"
    content = name.encode()
    f = Frame(filename=name, path=f"raw/{night}/{name}", original_path=name, size_bytes=len(content),
              sha256=hashlib.sha256(content).hexdigest(), instrument=instrument, telescope="JAST80",
              header_convention="OAJ", layout=layout, naxis1=1056, naxis2=1056, obs_type=obs_type,
              filter=filter_name, read_mode=read_mode, exptime=exptime, date_obs=date_obs, mjd=60000.0,
              night=night, ra=ra, dec=dec, header={})
    session.add(f)
    session.flush()
    return f.id


def add_master(session, *, kind: str, night: str, filter_name: str | None = None, flat_type: str | None = None,
               instrument: str = "mini", layout: str = "readout", read_mode: str = "MODE_5", is_bad: bool = False,
               files: list[dict[str, Any]] | None = None, meta: dict[str, Any] | None = None) -> int:
    """Register a master product row (with its provenance row) without running a step."""
    from upad.calib.planning import STEP_OF, ConfigKey, night_end, night_start
    from upad.db.models import Product, Provenance

    key = ConfigKey(instrument, layout, read_mode, filter_name, flat_type)
    unit = key.unit_key(night)
    step = STEP_OF[kind]
    prov = hashlib.sha256(f"{step}/{unit}/{dt.datetime.now().isoformat()}/{np.random.random()}".encode()).hexdigest()
    ctx = {"night": night, "kind": kind, "instrument": instrument, "layout": layout, "read_mode": read_mode}
    if filter_name:
        ctx["filter"] = filter_name
    if flat_type:
        ctx["flat_type"] = flat_type
    session.add(Provenance(id=prov, step=step, unit_key=unit, code_version="test", config_hash="x", config={},
                           context=ctx))
    p = Product(provenance_id=prov, step=step, kind=step, unit_key=unit, state="complete", is_current=True,
                files=files or [], meta=meta or {}, context=ctx, qc_status="ok", good_after=night_start(night),
                good_until=night_end(night), is_bad=is_bad)
    session.add(p)
    session.flush()
    return p.id


def ensure_epochs_table(db) -> None:
    """The ``calib_epochs`` table comes with the migrations (revision 0003): check it is there."""
    from sqlalchemy import inspect

    assert inspect(db.engine).has_table("calib_epochs")


def register_as_is(db, path) -> None:
    """Make the archived raw file ``path``, damaged by a test, the registered content of its frame (SHA-256, size,
    stat), as if it had been ingested that way: the steps then meet the damage itself. (A file changed after its
    registration is quarantined before any step reads it: tests/flow/test_faults.py.)"""
    import hashlib
    from pathlib import Path

    from sqlalchemy import select

    from upad.db.models import Frame
    from upad.io.atomic import file_stat

    path = Path(path)
    content = path.read_bytes()
    with db.session() as s:
        frame = s.scalars(select(Frame).where(Frame.filename == path.name)).one()
        frame.sha256, frame.size_bytes = hashlib.sha256(content).hexdigest(), len(content)
        frame.file_stat = file_stat(path)
