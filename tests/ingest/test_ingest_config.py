"""Ingest's header translation and quick-look QC are configured in ``<root>/upad.toml`` (``[ingest.translation]``,
``[ingest.quicklook]``) like the steps, and ``upad ingest`` uses them."""
from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from upad.db import Frame
from upad.errors import UpadError
from upad.ingest import IngestConfig, ingest_paths, load_ingest_config
from upad.ingest.quicklook import QuickLookConfig
from upad.ingest.translate import TranslationConfig
from upad.settings import Settings

from .conftest import run_cli
from .fitsmaker import RawSpec, write_raw


def _frame(db, name: str) -> Frame:
    with db.session() as s:
        return s.scalars(select(Frame).where(Frame.filename == name)).one()


def test_defaults_without_a_file(tmp_path: Path) -> None:
    cfg = load_ingest_config(tmp_path)
    assert cfg == IngestConfig() and cfg.qc is cfg.quicklook  # the former attribute name still works
    assert cfg.translation == TranslationConfig() and cfg.quicklook == QuickLookConfig()


def test_upad_toml_sets_the_tile_pattern_through_upad_ingest(database, settings: Settings, incoming: Path) -> None:
    f = write_raw(incoming, RawSpec(object="J-PLUS field 1234 (rev 2)", n_stars=5))
    (settings.root / "upad.toml").write_text("[ingest.translation]\ntile_regex = 'field (\\d+)'\n")
    assert run_cli(["ingest", incoming, "--root", settings.root, "--db", settings.db_url]) == 0
    row = _frame(database, f.name)
    assert row.tile_id == 1234 and row.object == "J-PLUS field 1234 (rev 2)"


def test_without_the_setting_the_default_pattern_applies(database, settings: Settings, incoming: Path) -> None:
    f = write_raw(incoming, RawSpec(object="J-PLUS field 1234 (rev 2)", n_stars=5))
    assert run_cli(["ingest", incoming, "--root", settings.root, "--db", settings.db_url]) == 0
    assert _frame(database, f.name).tile_id is None


def test_upad_toml_sets_a_quicklook_threshold(database, settings: Settings, incoming: Path) -> None:
    # stars of 3 px FWHM = 1.65": fine for the default limit (3"), a warning with a 1.2" limit
    a = write_raw(incoming / "a", RawSpec(seq=1))
    b = write_raw(incoming / "b", RawSpec(seq=2))
    ingest_paths(database, settings, [a])
    assert _frame(database, a.name).qc_status == "ok"
    (settings.root / "upad.toml").write_text("[ingest.quicklook]\nfwhm_warn_arcsec = 1.2\n")
    ingest_paths(database, settings, [b])
    row = _frame(database, b.name)
    assert row.qc_status == "warn" and any("FWHM" in r for r in row.qc_reasons)


@pytest.mark.parametrize("toml, name, text", [
    ("[ingest.quicklook]\nsaturated_warn = 0.9\n", "ingest.quicklook.saturated_warn", "is above saturated_fail"),
    ("[ingest.quicklook]\nflat_min_adu = 60000.0\n", "ingest.quicklook.flat_min_adu", "is not below flat_max_adu"),
    ("[ingest.quicklook]\nfwhm_obs_types = ['science', 'skyflat']\n", "ingest.quicklook.fwhm_obs_types",
     "unknown observation type"),
    ("[ingest.translation]\ntile_regex = 'TILE-\\d+'\n", "ingest.translation.tile_regex", "no group"),
    ("[ingest.translation]\ntile_regex = '(\\d+'\n", "ingest.translation.tile_regex", "not a regular expression"),
    ("[ingest.translation]\nsite_longitude = -70.8\n", "ingest.translation.site_longitude", "unknown parameter"),
    ("[ingest.qc]\nsaturated_warn = 0.1\n", "ingest.qc", "unknown parameter"),
])
def test_refused_values_are_named(tmp_path: Path, toml: str, name: str, text: str) -> None:
    (tmp_path / "upad.toml").write_text(toml)
    with pytest.raises(UpadError) as info:
        load_ingest_config(tmp_path)
    assert str(info.value).startswith(name) and text in str(info.value), str(info.value)


def test_upad_ingest_refuses_a_bad_configuration(database, settings: Settings, incoming: Path, capsys) -> None:
    write_raw(incoming, RawSpec(n_stars=5))
    (settings.root / "upad.toml").write_text("[ingest.quicklook]\nsaturated_warn = 0.9\n")
    assert run_cli(["ingest", incoming, "--root", settings.root, "--db", settings.db_url]) == 2
    assert "ingest.quicklook.saturated_warn" in capsys.readouterr().err
    with database.session() as s:
        assert s.scalars(select(Frame)).first() is None


def test_a_tile_pattern_without_digits_warns_instead_of_failing(database, settings: Settings,
                                                                incoming: Path) -> None:
    f = write_raw(incoming, RawSpec(object="TILE-ABC", n_stars=5))
    cfg = IngestConfig.from_mapping({"translation": {"tile_regex": r"TILE-(\w+)"}}, where="ingest")
    out = ingest_paths(database, settings, [f], config=cfg).outcomes[0]
    assert out.status == "registered"
    row = _frame(database, f.name)
    assert row.tile_id is None and any("not an integer" in r for r in row.qc_reasons)
