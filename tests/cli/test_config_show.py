"""``upad config show``: every parameter by its full dotted name, with the value in use from ``upad.toml``."""
import json

import pytest

from upad.cli.main import main


def _show(capsys, *args):
    capsys.readouterr()
    assert main(["config", "show", *map(str, args)]) == 0
    return capsys.readouterr().out


def test_every_parameter_by_its_dotted_name(tmp_path, capsys):
    (tmp_path / "upad.toml").write_text(
        "[steps.reduce]\nthreads = 2\n[steps.reduce.detect]\nthreads = 8\n"
        "[ingest.translation]\ntile_regex = 'field (\\d+)'\n[ingest.quicklook]\nsaturated_warn = 0.1\n")
    out = json.loads(_show(capsys, "--root", tmp_path, "--json"))
    reduce = {r["name"]: r for r in out["steps"]["reduce"]["parameters"]}
    threads = reduce["steps.reduce.detect.threads"]
    assert threads["value"] == 8 and threads["default"] == 0 and threads["critical"] is False
    assert threads["param"] == "detect.threads" and threads["doc"] and threads["bounds"] == [0, 256]
    assert reduce["steps.reduce.threads"]["value"] == 2
    sigclip = reduce["steps.reduce.cosmics.sigclip"]
    assert sigclip["critical"] is True and sigclip["value"] == sigclip["default"] == 4.5
    assert reduce["steps.reduce.background.filter_meshes"]["odd"] is True
    assert reduce["steps.reduce.background.mesh_px"]["unit"] == "pixel"
    # the threads do not change the reduction's provenance: the hash in use is the default one
    assert out["steps"]["reduce"]["config_hash"] == json.loads(
        _show(capsys, "--root", tmp_path / "empty", "--json", "--step", "reduce"))["steps"]["reduce"]["config_hash"]
    assert all(r["name"].startswith("steps.master_bias.") for r in out["steps"]["master_bias"]["parameters"])
    ingest = {r["name"]: r for r in out["ingest"]["parameters"]}
    assert ingest["ingest.translation.tile_regex"]["value"] == "field (\\d+)"
    assert ingest["ingest.quicklook.saturated_warn"]["value"] == 0.1
    assert ingest["ingest.quicklook.saturated_warn"]["default"] == 0.05
    assert ingest["ingest.quicklook.fwhm_warn_arcsec"]["unit"] == "arcsec"

    text = _show(capsys, "--root", tmp_path, "--step", "reduce")
    assert "steps.reduce.detect.threads" in text and "ingest.translation" not in text
    text = _show(capsys, "--root", tmp_path, "--step", "ingest")
    assert "ingest.quicklook.saturated_warn" in text and "steps.reduce" not in text


def test_a_refused_value_is_named(tmp_path, capsys):
    (tmp_path / "upad.toml").write_text("[steps.reduce.background]\nfilter_meshes = 4\n")
    assert main(["config", "show", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "steps.reduce.background.filter_meshes must be odd, got 4" in err


@pytest.mark.parametrize("step", ["nope"])
def test_unknown_step(tmp_path, capsys, step):
    assert main(["config", "show", "--root", str(tmp_path), "--step", step]) == 2
    assert "known steps" in capsys.readouterr().err
