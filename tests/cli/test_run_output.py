"""What `upad run` tells an operator without a terminal, and date options that refuse what is not a date.

The runs use the toy steps of tests/flow (real steps, real database, inline or local executor). pytest's capture
is not a terminal, exactly like cron or `upad run … 2> log`.
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from upad.cli.main import main

FLOW = Path(__file__).resolve().parents[1] / "flow"
TOY_STEPS = ("toy_a", "toy_b", "toy_c")
PROGRESS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ run \S+ \+\d+s: done (\d+), running (\d+), queued (\d+), "
                      r"failed (\d+)(.*)$")


def _flow_helpers():
    spec = importlib.util.spec_from_file_location("flow_conftest_helpers", FLOW / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def toy_root(database, tmp_path):
    """(settings, database) with the toy steps registered and 4 toy frames of one night."""
    if str(FLOW) not in sys.path:
        sys.path.insert(0, str(FLOW))
    import toysteps

    from upad.flow.step import register_step, unregister_step
    from upad.settings import Settings

    for cls in (toysteps.ToyA, toysteps.ToyB, toysteps.ToyC):
        register_step(cls)
    settings = Settings(root=tmp_path / "root", db_url=database.url)
    settings.create_layout()
    _flow_helpers().add_frames(database, settings.root, 4, ["2025-03-01"])
    yield settings, database
    for name in TOY_STEPS:
        unregister_step(name)


def _run(settings, *extra: str) -> int:
    return main(["run", "--until-idle", "--root", str(settings.root), "--db", settings.db_url, "--step", "toy_a",
                 *extra])


def _first_unit(database) -> str:
    """The toy_a unit key of the first toy frame."""
    from sqlalchemy import func, select

    from upad.db.models import Frame

    with database.session() as s:
        return f"2025-03-01/frame{s.scalar(select(func.min(Frame.id)))}"


def _progress_lines(err: str) -> list[re.Match]:
    return [m for m in map(PROGRESS.match, err.splitlines()) if m]


def test_progress_lines_without_a_terminal(toy_root, capsys):
    settings, _ = toy_root
    (settings.root / "upad.toml").write_text("[steps.toy_a]\nsleep = 0.3\n")
    assert _run(settings, "--executor", "inline", "--progress-seconds", "0.1") == 0
    err = capsys.readouterr().err
    lines = _progress_lines(err)
    # 4 jobs of 0.3 s, a line every 0.1 s: several lines while the jobs run, not only one at the end
    assert len(lines) >= 4, err
    during = [m for m in lines[:-1] if int(m[2]) + int(m[3]) > 0]
    assert len(during) >= 2, err
    assert len({m[1] for m in lines}) >= 3, "the done count grows from line to line"
    last = lines[-1]
    assert last.groups()[:4] == ("4", "0", "0", "0") and "toy_a: done 4" in last[5]
    assert "━" not in err  # no progress bar drawn into a log
    assert re.search(r"^run \S+: done 4, failed 0, blocked 0, retried 0", err, re.M), err


def test_a_failure_is_reported_once_and_the_exit_status_says_so(toy_root, capsys):
    settings, database = toy_root
    bad = _first_unit(database)
    (settings.root / "upad.toml").write_text(f'[steps.toy_a]\nfail_keys = ["{bad}"]\n')
    # a separate process with stderr to a file, as cron runs it (and without pytest's logging handlers, under
    # which Python's last-resort handler, which printed each failure a second time, stays silent)
    log = settings.root / "run.log"
    with log.open("w") as fh:
        proc = subprocess.run([sys.executable, "-m", "upad.cli.main", "run", "--until-idle", "--root",
                               str(settings.root), "--db", settings.db_url, "--step", "toy_a", "--executor", "inline"],
                              env=_flow_helpers().subprocess_env(), stdout=subprocess.DEVNULL, stderr=fh, timeout=120)
    assert proc.returncode == 1
    err = log.read_text()
    assert err.count(f"toy failure for {bad}") == 1, err
    failure = next(line for line in err.splitlines() if "toy failure" in line)
    assert "toy_a" in failure and bad in failure and "error" in failure
    assert re.search(r"^run \S+: done 3, failed 1, blocked 0, retried 0", err, re.M), err
    assert "1 job(s) failed for good" in err and "upad status" in err
    # nothing new to do: the failure of the previous run does not fail this one, and the counts are there
    assert _run(settings, "--executor", "inline") == 0
    err = capsys.readouterr().err
    assert re.search(r"^run \S+: nothing to do \(0 jobs: done 0, failed 0, blocked 0, retried 0\)", err, re.M), err
    assert "toy failure" not in err


def test_json_output_keeps_its_shape_and_exit_status(toy_root, capsys):
    settings, database = toy_root
    bad = _first_unit(database)
    (settings.root / "upad.toml").write_text(f'[steps.toy_a]\nfail_keys = ["{bad}"]\n')
    assert _run(settings, "--executor", "inline", "--json", "--progress-seconds", "0.1") == 1
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["run"] and out["done"] == 3 and out["failed"] == 1 and out["ok"] is False
    assert not _progress_lines(cap.err)
    assert cap.err.count(f"toy failure for {bad}") == 1
    assert _run(settings, "--executor", "inline", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["done"], out["failed"], out["retried"], out["ok"]) == (0, 0, 0, True)


def test_a_terminal_keeps_the_progress_bar(toy_root, capsys, monkeypatch):
    from upad.cli.common import console

    settings, _ = toy_root
    monkeypatch.setattr(console, "_force_terminal", True)
    assert _run(settings, "--executor", "inline", "--progress-seconds", "0.1") == 0
    err = capsys.readouterr().err
    assert "jobs (0 failed)" in err and not _progress_lines(err)


@pytest.mark.parametrize("args", [
    ["qc", "night", "2025-13-01"],
    ["qc", "night", "2025-02-30"],
    ["frames", "--night", "2025/03/01"],
    ["frames", "--night", "20250301"],
    ["reprocess", "--step", "raw_preview", "--since", "yesterday"],
    ["simulate", "--start-date", "2025-3-1"],
])
def test_a_date_that_is_not_yyyy_mm_dd_is_refused(args, tmp_path, capsys):
    root = tmp_path / "root"
    assert main(["init", "--root", str(root), "--json"]) == 0
    capsys.readouterr()
    assert main([*args, "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "YYYY-MM-DD" in err and "Invalid value" in err


def test_a_valid_night_still_selects(toy_root, capsys):
    settings, _ = toy_root
    base = ["--root", str(settings.root), "--db", settings.db_url, "--json"]
    assert main(["frames", "--night", "2025-03-01", *base]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4
    assert main(["frames", "--night", "2025-03-02", *base]) == 0
    assert json.loads(capsys.readouterr().out) == []
