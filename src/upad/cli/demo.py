"""``upad demo``: simulate a night, ingest it, run every step that exists, and say where the results are."""
from __future__ import annotations

import time
from pathlib import Path

import click

from upad.cli.common import common_options, console, emit_json, json_option, progress
from upad.db import Database
from upad.db.queries import flow_summary, status_summary
from upad.settings import Settings


@click.command("demo")
@common_options
@click.option("--instrument", type=click.Choice(["mini", "t80cam"]), default="mini", show_default=True,
              help="Camera to simulate (t80cam frames are full size: minutes and GBs).")
@click.option("--seed", type=int, default=1, show_default=True, help="Simulation seed.")
@click.option("--nights", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes (default: CPU count).")
@click.option("--nominal-world", is_flag=True,
              help="Simulate the pipeline-shaped world (instrument-file signature, one Moffat PSF, static stars, "
                   "nominal passbands, SIP-3 distortion) instead of the default independent one.")
@json_option
def demo(settings: Settings, instrument: str, seed: int, nights: int, workers: int | None, nominal_world: bool,
         as_json: bool) -> None:
    """Run the whole system on a simulated night with the embedded defaults (SQLite, local process pool).

    The night is simulated in a world independent of the pipeline's assumptions (a drawn instrument signature with
    its photon-transfer and linearity sequences, PSF families, moving stars, shifted passbands, distortion beyond
    SIP 3: see docs/simulator.md); --nominal-world simulates the pipeline-shaped one.

    Simulates raw frames with their truth into <root>/incoming, creates the archive and database, ingests the frames,
    processes everything that is ready, and prints where the results are.
    """
    from upad.execution import LocalExecutor
    from upad.flow.scheduler import Scheduler, SchedulerOptions
    from upad.ingest.service import ingest_paths
    from upad.sim import SimConfig, simulate

    t0 = time.perf_counter()
    settings.create_layout()
    db = Database(settings.db_url)
    db.upgrade()
    incoming = settings.root / "incoming"
    quiet = as_json
    console.print(f"[bold]1/3 simulate[/] a {instrument} night (seed {seed}) into {incoming}") if not quiet else None
    with progress(disable=quiet) as bar:
        task = bar.add_task("simulate", total=None)
        sim = simulate(instrument=instrument, seed=seed, out=incoming, nights=nights,
                       config=SimConfig.nominal() if nominal_world else SimConfig(),
                       progress=lambda done, total, desc: bar.update(task, completed=done, total=total))
    # the reference star catalog the reduction calibrates against (a Gaia extract for real data)
    import shutil

    shutil.copy2(sim.reference_catalog, settings.path("reference", "refcat.fits"))
    if not quiet:
        console.print(f"    {len(sim.raw_files)} raw files; truth in {incoming / 'truth'}")
        console.print("[bold]2/3 ingest[/]: verify, register, archive, quick-look QC")
    with progress(disable=quiet) as bar:
        task = bar.add_task("ingest", total=len(sim.raw_files))
        report = ingest_paths(db, settings, [incoming / "raw"], mode="copy",
                              progress=lambda *a, **k: bar.advance(task))
    if not quiet:
        console.print(f"    {report.counts}")
        console.print("[bold]3/3 run[/]: every step that is ready, until idle")
    ex = LocalExecutor(workers)
    try:
        counts = Scheduler(db, settings, ex, options=SchedulerOptions(), command="upad demo").run(until_idle=True)
    finally:
        ex.close()
    summary = {"root": str(settings.root), "database": settings.db_url, "incoming": str(incoming),
               "truth": str(incoming / "truth"), "ingest": report.counts, "run": counts,
               "frames": status_summary(db)["frames"], "flow": flow_summary(db),
               "seconds": round(time.perf_counter() - t0, 1),
               "areas": {a: str(settings.root / a) for a in ("raw", "calibration", "reduced", "coadds", "catalogs",
                                                              "previews", "quarantine")}}
    from upad.release.upload import configured_url

    summary["science_db"] = configured_url(settings)
    db.dispose()
    if as_json:
        emit_json(summary)
        return
    console.print(f"\n[bold green]done[/] in {summary['seconds']} s. Results under {settings.root}:")
    for area, path in summary["areas"].items():
        n = sum(1 for p in Path(path).rglob("*") if p.is_file())
        console.print(f"  {area:12s} {path}  ({n} files)")
    for step, states in summary["flow"]["products"].items():
        console.print(f"  products of {step}: {states}")
    console.print(f"  database     {settings.db_url}")
    console.print(f"  science db   {summary['science_db']}")
    console.print("Next: `upad status`, `upad frames`, `upad products`, `upad history FRAME`, `upad sciencedb status`, "
                  f"`upad sciencedb cone RA DEC RADIUS` (add --root {settings.root}).")


COMMANDS = [demo]
