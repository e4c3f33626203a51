"""Entry point of the ``upad`` command."""
from __future__ import annotations

import importlib
import sys

import click

from upad import __version__
from upad.cli.common import console
from upad.errors import UpadError

# Command modules, in data-flow order. Each defines a click command or group named like the module's ``COMMAND``.
_COMMAND_MODULES = (
    "upad.cli.init",
    "upad.cli.frames",
    "upad.cli.simulate",
    "upad.cli.ingest",
    "upad.cli.run",
    "upad.cli.products",
    "upad.cli.calib",
    "upad.cli.coadd",
    "upad.cli.qc",
    "upad.cli.survey",
    "upad.cli.sciencedb",
    "upad.cli.config",
    "upad.cli.demo",
    "upad.cli.retry",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="upad")
def cli() -> None:
    """upad: survey data processing, from raw CCD frames to published catalogs.

    Data flow: simulate/ingest → calib → reduce → coadd → catalog → release → serve.
    Every command takes --root (data root) and --db (database URL); see `upad COMMAND --help`.
    """


for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(_name)
    except ModuleNotFoundError as exc:  # a command module not written yet must not break the others
        if exc.name is None or not _name.startswith(exc.name):
            raise
        continue
    for _cmd in getattr(_mod, "COMMANDS", ()):
        cli.add_command(_cmd)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; user errors print a message and a hint and exit with status 2."""
    try:
        rv = cli.main(args=argv, prog_name="upad", standalone_mode=False)
        # without standalone mode click hands back ctx.exit(n) codes as the return value
        return rv if isinstance(rv, int) else 0
    except UpadError as exc:
        # soft_wrap: long paths in messages stay on one line (greppable logs), whatever the terminal width
        console.print(f"[bold red]error:[/] {exc.message}", soft_wrap=True)
        if exc.hint:
            console.print(f"[yellow]hint:[/] {exc.hint}", soft_wrap=True)
        return 2
    except click.exceptions.Abort:
        console.print("[red]aborted[/]")
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
