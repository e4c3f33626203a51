"""``upad config`` and ``upad cluster``: every configuration parameter (steps and ingest); batch-cluster job scripts."""
from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from upad.cli.common import common_options, emit_json, json_option, stdout
from upad.config import describe, flatten, load_config_document, step_values
from upad.errors import UpadError
from upad.flow.step import all_steps
from upad.settings import Settings


@click.group("config")
def config_group() -> None:
    """Configuration parameters of the processing steps."""


def _rows(cls: Any, cfg: Any, prefix: str, *, provenance: bool = True) -> list[dict[str, Any]]:
    """One row per leaf parameter of configuration ``cfg`` (class ``cls``), named ``<prefix>.<dotted name>``, with
    the value in use; ``critical`` is ``None`` where nothing enters a provenance (ingest)."""
    in_use = flatten(cfg.as_dict())
    rows = []
    for r in describe(cls):
        row = {"name": f"{prefix}.{r['name']}", "param": r["name"], **{k: v for k, v in r.items() if k != "name"},
               "value": in_use[r["name"]]}
        if not provenance:
            row["critical"] = None
        rows.append(row)
    return rows


@config_group.command("show")
@common_options
@json_option
@click.option("--step", help="Only this step ('ingest': only the ingest parameters).")
def config_show(settings: Settings, as_json: bool, step: str | None) -> None:
    """List every parameter by its dotted name (steps.<step>.<name>, nested ones as steps.reduce.detect.threads;
    ingest.translation.<name>, ingest.quicklook.<name>): the value in use (from <root>/upad.toml), default,
    bounds or choices, unit, whether it enters provenance (critical), and what it does."""
    from upad.ingest.service import IngestConfig, load_ingest_config

    user = load_config_document(settings.root)
    names = [st.name for st in all_steps()]
    if step and step != "ingest" and step not in names:
        raise UpadError(f"unknown step {step!r}", hint=f"known steps: {', '.join(names)}; or 'ingest'")
    out: dict[str, Any] = {"steps": {}}
    for st in all_steps():
        if step and st.name != step:
            continue
        cfg = st.make_config(step_values(user, st.name, st.config_class))
        out["steps"][st.name] = {"description": st.description, "version": st.version,
                                 "memory_class": st.memory_class, "config_hash": cfg.hash(),
                                 "parameters": _rows(st.config_class, cfg, f"steps.{st.name}")}
    if not step or step == "ingest":
        out["ingest"] = {"description": "verify, translate and quick-look QC of raw frames (upad ingest)",
                         "parameters": _rows(IngestConfig, load_ingest_config(settings.root), "ingest",
                                             provenance=False)}
    if as_json:
        emit_json(out)
        return
    sections = [(f"[bold]steps.{name}[/] v{info['version']} ({info['memory_class']}) — {info['description']}",
                 info["parameters"]) for name, info in out["steps"].items()]
    if "ingest" in out:
        sections.append((f"[bold]ingest[/] — {out['ingest']['description']}", out["ingest"]["parameters"]))
    for title, rows in sections:
        table = Table(title=title, title_justify="left")
        for col in ("parameter", "value", "default", "bounds/choices", "unit", "critical", "doc"):
            table.add_column(col, overflow="fold")
        for r in rows:
            lim = r["bounds"] or r["choices"] or ""
            if r["odd"]:
                lim = f"{lim} odd" if lim else "odd"
            table.add_row(r["name"], str(r["value"]), str(r["default"]), str(lim), r["unit"] or "",
                          {True: "yes", False: "no", None: "-"}[r["critical"]], r["doc"])
        stdout.print(table)


@click.group("cluster")
def cluster_group() -> None:
    """Batch clusters (SGE, Slurm) through dask-jobqueue."""


@cluster_group.command("script")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Cluster TOML file (see docs/scaling.md).")
@json_option
def cluster_script(config_path: str, as_json: bool) -> None:
    """Print the batch job script that `upad run --executor jobqueue` would submit."""
    from upad.execution.jobqueue import job_script, load_cluster_config

    script = job_script(config_path)
    if as_json:
        emit_json({"config": load_cluster_config(config_path), "script": script})
    else:
        click.echo(script)


COMMANDS = [config_group, cluster_group]
