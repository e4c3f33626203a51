"""``upad calib``: master calibrations — list them, explain which apply to a frame, review epochs."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from upad.cli.common import common_options, console, emit_json, json_option, stdout
from upad.db import open_database
from upad.errors import UpadError
from upad.settings import Settings


@click.group("calib")
def calib_group() -> None:
    """Master calibrations: bias, dark, flat, fringe, illumination, bad-pixel mask (see docs/calibration.md)."""


# ---------------------------------------------------------------------------------------------------------- list
@calib_group.command("list")
@common_options
@json_option
@click.option("--kind", type=click.Choice(["bias", "dark", "flat", "fringe", "illumination", "bpm"]), default=None,
              help="Only masters of this kind.")
@click.option("--all", "include_all", is_flag=True, help="Also superseded and stale versions.")
def calib_list(settings: Settings, as_json: bool, kind: str | None, include_all: bool) -> None:
    """List masters with their configuration, validity, inputs used and excluded, and QC."""
    from upad.calib.review import list_masters

    db = open_database(settings.db_url)
    with db.session() as s:
        rows = list_masters(s, kind=kind, include_all=include_all)
    db.dispose()
    if as_json:
        emit_json(rows)
        return
    table = Table(title=f"{len(rows)} master calibration(s)")
    for col in ("id", "kind", "configuration", "night", "valid from → until (UTC)", "used/in", "excluded", "qc",
                "state"):
        table.add_column(col)
    for r in rows:
        conf = "/".join(str(v) for v in (r["instrument"], r["read_mode"], r["layout"], r["filter"], r["flat_type"])
                        if v)
        state = "current" if r["current"] else r["state"]
        if r["is_bad"]:
            state = f"[red]bad[/]: {r['bad_reason'] or ''}"
        qcs = r["qc_status"] or "-"
        if r["qc"] and r["qc"].get("rms_max") is not None:
            qcs += f" (flat rms ≤ {r['qc']['rms_max']:.2%}, grad ≤ {r['qc']['gradient_max']:.2%})"
        excl = "\n".join(f"{e['filename']}: {e['reason']}" for e in r["excluded"]) or "-"
        table.add_row(str(r["id"]), r["kind"], conf, r["night"] or "-",
                      f"{r['good_after'] or '-'} → {r['good_until'] or '-'}",
                      f"{r['n_used'] if r['n_used'] is not None else '-'}/{r['n_inputs'] or '-'}", excl, qcs, state)
    stdout.print(table)


# ---------------------------------------------------------------------------------------------------------- lookup
def lookup_config(settings: Settings, step_name: str | None, overrides: dict[str, Any]) -> tuple[Any, str]:
    """The lookup configuration in use: that of ``step_name`` (or of the first registered step whose configuration
    is a :class:`~upad.calib.config.LookupConfig`, i.e. the reduction), from ``<root>/upad.toml``."""
    from upad.calib.config import LookupConfig
    from upad.config import load_config_document, step_values
    from upad.flow.step import all_steps, get_step

    user = load_config_document(settings.root)
    if step_name:
        try:
            step = get_step(step_name)
        except KeyError as exc:
            raise UpadError(str(exc), hint="see `upad config show`") from None
        if not issubclass(step.config_class, LookupConfig):
            raise UpadError(f"step {step_name!r} does not look up masters for frames",
                            hint="name the reduction step, or leave --step out")
        steps = [step]
    else:
        steps = [s for s in all_steps() if issubclass(s.config_class, LookupConfig)]
    if steps:
        st = steps[0]
        values = {**step_values(user, st.name, st.config_class), **overrides}
        return st.config_class.from_mapping(values, where=f"[steps.{st.name}]"), st.name
    return LookupConfig.from_mapping(overrides), "defaults"


@calib_group.command("lookup")
@common_options
@json_option
@click.argument("frame")
@click.option("--step", "step_name", default=None, help="Use the lookup configuration of this step (default: the "
                                                        "reduction step, else the defaults).")
@click.option("--fallback-nights", type=click.IntRange(min=0), default=None,
              help="Override the fallback window (nights).")
def calib_lookup(settings: Settings, as_json: bool, frame: str, step_name: str | None,
                 fallback_nights: int | None) -> None:
    """Which masters apply to FRAME (id or file name), and why — exactly what the reduction uses."""
    from upad.calib.lookup import select_masters
    from upad.config import load_config_document
    from upad.flow.invalidate import find_frame
    from upad.flow.step import step_configs

    overrides = {} if fallback_nights is None else {"fallback_nights": fallback_nights}
    cfg, source = lookup_config(settings, step_name, overrides)
    db = open_database(settings.db_url)
    with db.session() as s:
        # what the master steps of this data root will build (their upad.toml configuration)
        s.info["upad_step_configs"] = step_configs(load_config_document(settings.root))
        f = find_frame(s, frame)
        sel = select_masters(s, f, cfg)
        out = sel.to_dict()
    db.dispose()
    out["config"] = {"source": source, **cfg.as_dict()}
    if as_json:
        emit_json(out)
        return
    c = out["configuration"]
    stdout.print(f"[bold]{out['filename']}[/] (frame {out['frame_id']}): {c['instrument']} {c['read_mode']} "
                 f"{c['layout']} {c['filter'] or ''}, {c['date_obs']} (night {c['night']})")
    stdout.print(f"lookup configuration: {source}; fallback window ±{cfg.fallback_nights} nights; flat "
                 f"preference {', '.join(cfg.flat_types)}; required {', '.join(cfg.required)}")
    table = Table()
    for col in ("kind", "status", "master", "night", "why"):
        table.add_column(col)
    for kind, m in out["masters"].items():
        status = m["status"]
        colour = {"chosen": "green", "waiting": "yellow", "missing": "red", "skipped": "white"}[status]
        if status == "chosen":
            status = m["rule"]
            colour = "green" if m["rule"] == "valid" else "yellow"
        table.add_row(kind, f"[{colour}]{status}[/]", str(m.get("product_id", "-")), m.get("night", "-") or "-",
                      m["reason"])
    stdout.print(table)
    for note in out["notes"]:
        stdout.print(f"note: {note}")
    if out["ready"]:
        stdout.print("[green]ready[/]: every required master is available")
    else:
        stdout.print(f"[yellow]waits[/]: {out['reason']}")


# ---------------------------------------------------------------------------------------------------------- epochs
def _parse_time(text: str, instrument: str | None = None) -> dt.datetime:
    """An ISO time (UTC), or a night ``YYYY-MM-DD``: its start at the site of ``instrument`` (default: the survey's
    home site, :func:`upad.nights.default_site`)."""
    from upad.nights import night_start, site_of

    text = text.strip()
    try:
        if len(text) == 10:
            try:
                site = site_of(instrument)
            except KeyError as exc:
                raise UpadError(str(exc.args[0]), hint="name a known instrument (see upad/instruments/data or "
                                                       "UPAD_INSTRUMENT_PATH)") from None
            return night_start(dt.date.fromisoformat(text).isoformat(), site)
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UpadError(f"cannot read the time {text!r}",
                        hint="write YYYY-MM-DD (from that night on) or YYYY-MM-DDTHH:MM[:SS] (UTC)") from None
    if t.tzinfo is not None:
        t = t.astimezone(dt.UTC).replace(tzinfo=None)
    return t


@calib_group.command("epochs")
@common_options
@json_option
@click.option("--propose", is_flag=True, help="Compare consecutive master flats and illumination corrections and "
                                              "propose breakpoints where they change beyond the thresholds.")
@click.option("--accept", is_flag=True, help="With --propose: declare the proposed breakpoints.")
@click.option("--flat-threshold", type=click.FloatRange(min=0), default=None,
              help="rms change of master flats that proposes a breakpoint (default 0.005 = 0.5 %).")
@click.option("--illum-threshold", type=click.FloatRange(min=0), default=None,
              help="rms change of illumination corrections that proposes a breakpoint (default 0.003).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="With --propose: write a PNG of how master flats and illumination maps change with time.")
@click.option("--add", "add_time", default=None, metavar="TIME",
              help="Declare a breakpoint at TIME (YYYY-MM-DD: from that night on, at the --instrument's site; or "
                   "an ISO time, UTC).")
@click.option("--kind", "kinds", multiple=True,
              type=click.Choice(["bias", "dark", "flat", "fringe", "illumination", "bpm"]),
              help="With --add: kinds it applies to (repeatable; default all).")
@click.option("--instrument", default=None, help="With --add: only this instrument (default all).")
@click.option("--filter", "filter_name", default=None, help="With --add: only this filter (default all).")
@click.option("--retract", "retract_id", type=int, default=None, help="Retract breakpoint ID (kept for the record).")
@click.option("--reason", default="", help="Why (required with --add and --retract).")
def calib_epochs(settings: Settings, as_json: bool, propose: bool, accept: bool, flat_threshold: float | None,
                 illum_threshold: float | None, plot_path: str | None, add_time: str | None,
                 kinds: tuple[str, ...], instrument: str | None, filter_name: str | None, retract_id: int | None,
                 reason: str) -> None:
    """List the epoch breakpoints; declare or retract one; propose new ones from the masters (--propose).

    Masters are never shared across a breakpoint that applies to them: a frame falls back only to masters of
    its own epoch.
    """
    from upad.calib.epochs import Breakpoint
    from upad.calib.review import breakpoint_from_proposal, epoch_analysis
    from upad.calib.store import add_breakpoint, load_breakpoints, retract_breakpoint

    if accept and not propose:
        raise click.UsageError("--accept goes with --propose")
    db = open_database(settings.db_url)
    out: dict[str, Any] = {}
    with db.session() as s:
        if add_time:
            bp = Breakpoint(time=_parse_time(add_time, instrument), instrument=instrument, filter=filter_name,
                            kinds=tuple(kinds), reason=reason, source="operator")
            out["added"] = add_breakpoint(s, bp)
        if retract_id is not None:
            retract_breakpoint(s, retract_id, reason=reason)
            out["retracted"] = retract_id
        if propose:
            thresholds = {k: v for k, v in (("flat", flat_threshold), ("illumination", illum_threshold))
                          if v is not None}
            analysis = epoch_analysis(s, settings.root, thresholds=thresholds)
            out["proposals"] = [p.to_dict() for p in analysis["proposals"]]
            if accept:
                out["accepted"] = [add_breakpoint(s, breakpoint_from_proposal(p),
                                                  metric=p.to_dict())
                                   for p in analysis["proposals"] if p.kind == "step"]
            if plot_path:
                from upad.calib.qc import plot_epochs

                plot_epochs(plot_path, analysis["series"], title="change of masters between consecutive nights",
                            breakpoints=[b.time for b in load_breakpoints(s)])
                out["plot"] = str(Path(plot_path).resolve())
        out["breakpoints"] = [b.to_dict() for b in load_breakpoints(s, include_retracted=True)]
    db.dispose()
    if as_json:
        emit_json(out)
        return
    if "added" in out:
        console.print(f"breakpoint {out['added']} declared")
    if "retracted" in out:
        console.print(f"breakpoint {out['retracted']} retracted")
    table = Table(title=f"{len(out['breakpoints'])} epoch breakpoint(s)")
    for col in ("id", "time (UTC)", "instrument", "filter", "kinds", "source", "reason"):
        table.add_column(col)
    for b in out["breakpoints"]:
        table.add_row(str(b["id"]), b["time"], b["instrument"] or "all", b["filter"] or "all",
                      ", ".join(b["kinds"]) or "all", b["source"], b["reason"])
    stdout.print(table)
    if propose:
        if not out["proposals"]:
            stdout.print("no change between consecutive masters exceeds the thresholds")
        for p in out["proposals"]:
            what = "breakpoint" if p["kind"] == "step" else "[yellow]outlier master[/] (inspect; `upad flag ID "\
                                                            "--product` if bad)"
            stdout.print(f"proposed {what} at {p['time']}: {p['master_kind']} {p['configuration']} changed by "
                         f"{p['change']:.2%} (threshold {p['threshold']:.2%}) between products {p['before']} and "
                         f"{p['after']}")
        if out.get("accepted"):
            console.print(f"declared {len(out['accepted'])} breakpoint(s): {out['accepted']}")
        if out.get("plot"):
            console.print(f"plot: {out['plot']}")


COMMANDS = [calib_group]
