"""``upad config`` and ``upad cluster``: parameters of every step; batch-cluster job scripts."""
from __future__ import annotations

import click
from rich.table import Table

from upad.cli.common import common_options, emit_json, json_option, stdout
from upad.config import describe, flatten, load_user_config
from upad.flow.step import all_steps
from upad.settings import Settings


@click.group("config")
def config_group() -> None:
    """Configuration parameters of the processing steps."""


@config_group.command("show")
@common_options
@json_option
@click.option("--step", help="Only this step.")
def config_show(settings: Settings, as_json: bool, step: str | None) -> None:
    """List every parameter: type, default, bounds, unit, whether it enters provenance, and the value in use
    (from <root>/upad.toml)."""
    user = load_user_config(settings.root)
    out = {}
    for st in all_steps():
        if step and st.name != step:
            continue
        rows = describe(st.config_class)
        in_use = flatten(st.make_config(user.get(st.name)).as_dict())
        for r in rows:
            r["value"] = in_use[r["name"]]
        out[st.name] = {"description": st.description, "version": st.version, "memory_class": st.memory_class,
                        "config_hash": st.make_config(user.get(st.name)).hash(), "parameters": rows}
    if as_json:
        emit_json(out)
        return
    for name, info in out.items():
        table = Table(title=f"[bold]{name}[/] v{info['version']} ({info['memory_class']}) — {info['description']}",
                      title_justify="left")
        for col in ("parameter", "value", "default", "bounds/choices", "unit", "critical", "doc"):
            table.add_column(col)
        for r in info["parameters"]:
            lim = r["bounds"] or r["choices"] or ""
            table.add_row(r["name"], str(r["value"]), str(r["default"]), str(lim), r["unit"] or "",
                          "yes" if r["critical"] else "no", r["doc"])
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
