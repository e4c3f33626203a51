"""``upad simulate``: write simulated raw nights (and their truth) as the observatory would."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from upad.cli.common import NIGHT, common_options, console, emit_json, json_option, progress
from upad.errors import UpadError


def _split(values: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for v in values:
        out += [x.strip() for x in v.split(",") if x.strip()]
    return out


@click.command("simulate")
@click.option("--instrument", type=click.Choice(["t80cam", "mini", "jpcam"], case_sensitive=False), default="mini",
              show_default=True, help="Camera to simulate (jpcam is not supported yet).")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed: same seed, same pixels.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (raw/, truth/, reference/ are created inside).")
@click.option("--nights", type=int, default=1, show_default=True, help="Consecutive nights.")
@click.option("--tiles", type=int, default=2, show_default=True, help="Tiles (pointings) per night.")
@click.option("--filters", default=None, help="Comma-separated filters (default gSDSS,rSDSS,J0660,zSDSS).")
@click.option("--layout", type=click.Choice(["readout", "archived"]), default=None,
              help="Raw layout: readout (with overscans, default) or archived (trimmed).")
@click.option("--convention", type=click.Choice(["oaj", "t80s"]), default="oaj", show_default=True,
              help="Header convention (OAJ or T80-South).")
@click.option("--compress/--no-compress", default=True, show_default=True,
              help="Write RICE_1 tile-compressed .fits.fz (lossless) or plain .fits.")
@click.option("--start-date", type=NIGHT, default=None, help="First night, YYYY-MM-DD (default 2025-03-01).")
@click.option("--disable", multiple=True, metavar="EFFECT[,EFFECT…]",
              help="Switch effects off (see --list-effects).")
@click.option("--no-effects", is_flag=True, help="Switch every effect off (an ideal camera); --enable adds back.")
@click.option("--enable", multiple=True, metavar="EFFECT[,EFFECT…]", help="With --no-effects: effects to keep.")
@click.option("--list-effects", is_flag=True, help="List the switchable effects and exit.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any SimConfig parameter, e.g. --set n_bias=5 --set cosmic_rate=10 (see docs/simulator.md).")
@click.option("--nominal-world", is_flag=True,
              help="The pipeline-shaped world (instrument-file signature, one Moffat PSF, static stars, nominal "
                   "passbands, SIP-3 distortion) instead of the default independent one; --set applies on top.")
@click.option("--workers", type=int, default=None, help="Parallel processes (default min(2, CPUs)).")
@json_option
@common_options
def simulate(instrument: str, seed: int, out: Path, nights: int, tiles: int, filters: str | None, layout: str | None,
             convention: str, compress: bool, start_date: str | None, disable: tuple[str, ...], no_effects: bool,
             enable: tuple[str, ...], list_effects: bool, sets: tuple[str, ...], nominal_world: bool,
             workers: int | None, as_json: bool, settings) -> None:
    """Simulate raw nights of T80Cam (or the small test camera) with calibrations and truth.

    Writes DIR/raw/<night>/<prefix>-<YYYYMMDDTHHMMSS>-<NN>.fits.fz exactly as docs/raw-format.md specifies,
    the truth under DIR/truth/ (manifest.json, sky catalog, camera patterns, per-frame truth) and a Gaia-like
    reference catalog in DIR/reference/refcat.fits. --root/--db are accepted but unused.
    """
    from upad.sim import EFFECTS, SimConfig
    from upad.sim import simulate as run

    if list_effects:
        for k, v in EFFECTS.items():
            click.echo(f"{k:16s} {v}")
        return
    if out is None:
        raise UpadError("no output folder given", hint="add --out DIR")
    if instrument.lower() == "jpcam":
        raise UpadError("JPCam is described but the simulator does not support it yet",
                        hint="simulate --instrument t80cam (same CCD and amplifier layout) or mini")
    cfg = SimConfig.nominal() if nominal_world else SimConfig()
    if sets:
        cfg = cfg.with_overrides(list(sets))
    disabled = set(cfg.disabled) | set(_split(disable))
    if no_effects:
        keep = set(_split(enable))
        bad = keep - set(EFFECTS)
        if bad:
            raise UpadError(f"unknown effect(s) in --enable: {', '.join(sorted(bad))}",
                            hint="see upad simulate --list-effects")
        disabled |= set(EFFECTS) - keep
    elif enable:
        raise UpadError("--enable only makes sense with --no-effects", hint="use --disable to switch effects off")
    changes: dict = {"disabled": tuple(sorted(disabled))}
    if start_date:
        changes["start_date"] = start_date
    if workers is not None:
        changes["workers"] = workers
    cfg = dataclasses.replace(cfg, **changes)
    flist = _split((filters,)) if filters else None
    with progress(disable=as_json) as bar:
        task = bar.add_task("simulating", total=None)

        def cb(done: int, total: int, desc: str) -> None:
            bar.update(task, completed=done, total=total, description=Path(desc).name)

        res = run(instrument=instrument, seed=seed, out=out, nights=nights, tiles=tiles, filters=flist,
                  layout=layout, convention=convention, compress=compress, config=cfg, progress=cb)
    summary = {"out": str(res.out), "frames": res.counts(), "manifest": str(res.manifest_path),
               "reference_catalog": str(res.reference_catalog), "elapsed_s": round(res.elapsed_s, 2)}
    if as_json:
        emit_json(summary)
    else:
        counts = ", ".join(f"{v} {k}" for k, v in res.counts().items())
        console.print(f"[green]wrote[/] {len(res.frames)} frames ({counts}) to {res.out} in {res.elapsed_s:.1f} s")
        console.print(f"truth: {res.manifest_path}")


COMMANDS = [simulate]
