import json

import click
import pytest

from upad.cli.main import cli, main


def _all_commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, (*prefix, name))


@pytest.mark.parametrize("path", list(_all_commands(cli)))
def test_every_command_has_help(path, capsys):
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage:" in out and len(out) > 80


def test_core_commands_registered():
    assert {"init", "db", "frames", "status"} <= set(cli.commands)


def test_init_is_idempotent_and_status_works(tmp_path, capsys):
    root = tmp_path / "root"
    assert main(["init", "--root", str(root), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["schema_before"] is None and first["schema"]
    for area in ("raw", "calibration", "reduced", "quarantine"):
        assert (root / area).is_dir()
    assert main(["init", "--root", str(root), "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["schema_before"] == second["schema"] == first["schema"]
    assert main(["status", "--root", str(root), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["frames"]["total"] == 0 and status["quarantine"]["total"] == 0


def test_missing_database_says_what_to_do(tmp_path, capsys):
    code = main(["frames", "--root", str(tmp_path / "nothing")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no upad database" in err and "upad init" in err
    assert not (tmp_path / "nothing").exists()


def test_env_root(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("UPAD_ROOT", str(tmp_path / "envroot"))
    assert main(["init"]) == 0
    assert (tmp_path / "envroot" / "upad.sqlite").exists()


def _leaf_commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _leaf_commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


@pytest.mark.parametrize("path, cmd", list(_leaf_commands(cli)), ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_command_has_json_root_and_db(path, cmd):
    opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
    if path == ("cluster", "script"):  # works on a config file only: no data root or database
        assert "--json" in opts
        return
    assert {"--json", "--root", "--db"} <= opts, f"upad {' '.join(path)} lacks some of --json/--root/--db"
