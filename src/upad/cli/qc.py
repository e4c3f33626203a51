"""``upad qc night NIGHT``: the quality of a night's reduced frames, one row per frame."""
from __future__ import annotations

from typing import Any

import click
from rich.table import Table
from sqlalchemy import select

from upad.cli.common import NIGHT, common_options, console, emit_json, json_option, stdout
from upad.db import open_database
from upad.db.models import Frame, Job, Product
from upad.settings import Settings

#: Columns of the night summary: (key in the product's QC values or statistics, header, format).
COLUMNS = (("fwhm_arcsec", 'FWHM"', "{:.2f}"), ("ellipticity", "ell", "{:.3f}"),
           ("sky_mag_arcsec2", "sky mag/\"²", "{:.2f}"), ("zp_e", "ZP(e-/s)", "{:.3f}"),
           ("zp_loss_mag", "ZP loss", "{:+.3f}"), ("astrometric_rms_arcsec", 'astrom rms"', "{:.3f}"),
           ("n_matched", "matched", "{}"), ("masked_fraction", "masked", "{:.2%}"))


def night_summary(settings: Settings, night: str) -> list[dict[str, Any]]:
    """Per science frame of ``night``: its current reduced product's QC status, reasons and figures."""
    from upad.reduce.steps import unit_key  # here: the step module brings numba and friends, slow for --help

    db = open_database(settings.db_url)
    with db.session() as s:
        frames = list(s.scalars(select(Frame).where(Frame.night == night, Frame.obs_type == "science")
                                .order_by(Frame.date_obs)))
        products = {p.context.get("frame_id"): p for p in s.scalars(
            select(Product).where(Product.step == "reduce", Product.is_current.is_(True)))}
        # the latest reduce job of each unit: a frame without a product shows why (an error, still queued …)
        jobs = {j.unit_key: j for j in s.scalars(select(Job).where(Job.step == "reduce").order_by(Job.id))}
        jobs = {k: (j.state, j.error) for k, j in jobs.items()}
    db.dispose()
    rows = []
    for f in frames:
        p = products.get(f.id)
        row: dict[str, Any] = {"frame": f.filename, "filter": f.filter, "tile": f.tile_id, "valid": f.valid}
        if p is None:
            state, error = jobs.get(unit_key(f), ("not reduced", None))
            row.update(status="error" if state == "failed" else ("not reduced" if state == "done" else state),
                       reasons=[error] if error else [])
        else:
            values = {**(p.meta.get("stats") or {}), **(p.meta.get("qc_values") or {})}
            row.update(status=p.qc_status, reasons=p.meta.get("qc_reasons", []),
                       **{key: values.get(key) for key, _, _ in COLUMNS})
        rows.append(row)
    return rows


@click.group("qc")
def qc_group() -> None:
    """Quality control of reduced frames."""


@qc_group.command("night")
@common_options
@json_option
@click.argument("night", type=NIGHT)
def qc_night(settings: Settings, as_json: bool, night: str) -> None:
    """Per-frame QC figures of NIGHT (YYYY-MM-DD): FWHM, ellipticity, sky, zero point and transparency loss,
    astrometric rms, matched stars, masked fraction, status and reasons.

    Status: ok, warn (a threshold failed), fail (not measurable: no data, no sources, failed astrometry …), error
    (the reduce job failed: see `upad runs` / `upad history`), or the job's state (queued, running) or "not reduced"."""
    rows = night_summary(settings, night)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        console.print(f"no science frames in night {night}; see `upad frames --type science`")
        return
    table = Table(title=f"night {night}: {len(rows)} science frames")
    for col in ("frame", "filter", *(h for _, h, _ in COLUMNS), "QC", "reasons"):
        table.add_column(col)
    colour = {"ok": "green", "warn": "yellow", "fail": "red", "error": "red"}
    for r in rows:
        cells = [("-" if r.get(k) is None else fmt.format(r[k])) for k, _, fmt in COLUMNS]
        table.add_row(r["frame"], r["filter"] or "-", *cells,
                      f"[{colour.get(r['status'], 'white')}]{r['status']}[/]", "; ".join(r["reasons"]))
    stdout.print(table)


COMMANDS = [qc_group]
