"""Fixtures for the flow tests: a data root with toy raw frames registered in a real database."""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

TOY_STEPS = ("toy_a", "toy_b", "toy_c")


@pytest.fixture(autouse=True)
def toy_steps():
    """Register the toy steps for one test only (other tests must not see them)."""
    import toysteps

    from upad.flow.step import register_step, unregister_step

    for cls in (toysteps.ToyA, toysteps.ToyB, toysteps.ToyC):
        register_step(cls)
    yield
    for name in TOY_STEPS:
        unregister_step(name)


def subprocess_env() -> dict[str, str]:
    """Environment for a `upad` subprocess that loads the toy steps."""
    env = dict(os.environ)
    env["UPAD_PLUGINS"] = "toysteps"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH", "")]))
    return env


def add_frames(db, root: Path, n: int, nights: list[str], start_id: int = 0) -> list[int]:
    """Register ``n`` small raw files spread over ``nights`` (real files, real rows)."""
    from upad.db.models import Frame
    from upad.io.atomic import file_stat

    ids = []
    with db.session() as s:
        for k in range(start_id, start_id + n):
            night = nights[k % len(nights)]
            rel = f"raw/{night}/toy-{k:04d}.fits"
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            content = f"toy frame {k}".encode()
            path.write_bytes(content)
            date_obs = dt.datetime.fromisoformat(night) + dt.timedelta(hours=22, seconds=k)
            f = Frame(filename=path.name, path=rel, original_path=str(path), size_bytes=len(content),
                      sha256=hashlib.sha256(content).hexdigest(), instrument="mini", telescope="JAST80",
                      header_convention="OAJ", layout="readout", naxis1=1, naxis2=1, obs_type="bias", exptime=0.0,
                      date_obs=date_obs, mjd=60000.0 + k, night=night, header={}, file_stat=file_stat(path))
            s.add(f)
            s.flush()
            ids.append(f.id)
    return ids


@pytest.fixture
def flow_env(database, tmp_path, toy_steps):
    """(settings, database) with an initialised data root."""
    from upad.settings import Settings

    settings = Settings(root=tmp_path / "root", db_url=database.url)
    settings.create_layout()
    return settings, database
