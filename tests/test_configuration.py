"""One configuration tree: nested configurations as documented fields, critical parameters at any depth, the
``validate`` hook and odd sizes, and the dotted names users see (``steps.reduce.detect.threads``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from upad.config import (
    ConfigError,
    StepConfig,
    describe,
    flatten,
    load_config_document,
    load_user_config,
    nested_configs,
    param,
)
from upad.errors import UpadError
from upad.flow.provenance import code_version, provenance_id
from upad.flow.step import InputRef, all_steps, get_step


# -- a toy tree, two levels deep --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Leaf(StepConfig):
    size: int = param(3, doc="a kernel size", bounds=(1, 99), odd=True, unit="pixel")
    workers: int = param(1, doc="threads", bounds=(0, 64), critical=False)
    low: float = param(1.0, doc="lower limit")
    high: float = param(2.0, doc="upper limit")

    def validate(self) -> None:
        super().validate()
        self.require(self.low < self.high, "low", f"= {self.low:g} is not below high = {self.high:g}",
                     hint="lower low or raise high")


@dataclass(frozen=True)
class Middle(StepConfig):
    scale: float = param(1.0, doc="a scale", bounds=(0.0, None))
    leaf: Leaf = Leaf()


@dataclass(frozen=True)
class Top(StepConfig):
    level: int = param(1, doc="a level", bounds=(0, 10))
    threads: int = param(0, doc="threads", critical=False)
    middle: Middle = Middle(leaf=Leaf(size=5))
    quiet: Leaf = param(Leaf(), doc="a nested configuration that does not enter provenance", critical=False)


def test_nested_fields_are_found_from_the_types() -> None:
    assert nested_configs(Top) == {"middle": Middle, "quiet": Leaf}
    assert nested_configs(Leaf) == {}


def test_from_mapping_builds_nested_tables_at_any_depth() -> None:
    cfg = Top.from_mapping({"level": 2, "middle": {"scale": 3.0, "leaf": {"size": 7}}}, where="[steps.top]")
    assert cfg.middle.scale == 3.0 and cfg.middle.leaf.size == 7 and cfg.middle.leaf.workers == 1
    # a nested table overrides only what it names; the rest keeps the containing field's default
    assert Top.from_mapping({"middle": {"scale": 2.0}}).middle.leaf == Leaf(size=5)
    assert Top.from_mapping({"middle": {"leaf": {"workers": 4}}}).middle.leaf == Leaf(size=5, workers=4)
    assert Top(middle={"leaf": {"workers": 4}}).middle.leaf == Leaf(size=5, workers=4)
    # as_dict recurses and round-trips
    d = cfg.as_dict()
    assert d["middle"]["leaf"]["size"] == 7 and Top.from_mapping(d) == cfg
    assert flatten(d)["middle.leaf.size"] == 7


@pytest.mark.parametrize("values, name, text", [
    ({"middle": {"leaf": {"size": 200}}}, "steps.top.middle.leaf.size", "outside its bounds"),
    ({"middle": {"leaf": {"size": 4}}}, "steps.top.middle.leaf.size", "must be odd, got 4"),
    ({"middle": {"leaf": {"nope": 1}}}, "steps.top.middle.leaf.nope", "unknown parameter"),
    ({"middle": {"leaf": {"low": 5.0}}}, "steps.top.middle.leaf.low", "is not below high = 2"),
    ({"middle": {"scale": "big"}}, "steps.top.middle.scale", "must be float"),
    ({"level": {"x": 1}}, "steps.top.level", "is a parameter, not a table"),
    ({"middle": 3}, "steps.top.middle", "must be a table"),
])
def test_errors_name_the_dotted_parameter(values, name, text) -> None:
    with pytest.raises(ConfigError) as info:
        Top.from_mapping(values, where="[steps.top]")
    assert info.value.dotted == name
    assert str(info.value).startswith(name) and text in str(info.value)
    assert isinstance(info.value, UpadError) and info.value.hint


def test_direct_construction_names_the_class() -> None:
    with pytest.raises(ConfigError, match=r"^Top\.middle\.leaf\.size must be odd, got 4"):
        Top(middle={"leaf": {"size": 4}})
    with pytest.raises(ConfigError, match=r"^Leaf\.low = 3 is not below high = 2"):
        Leaf(low=3.0)


def test_critical_recurses_and_keeps_only_critical_leaves() -> None:
    cfg = Top()
    assert cfg.critical() == {"level": 1, "middle": {"scale": 1.0, "leaf": {"size": 5, "low": 1.0, "high": 2.0}}}
    base = cfg.hash()
    for changed in ({"threads": 8}, {"middle": {"leaf": {"workers": 9}}}, {"quiet": {"size": 9, "low": 0.0}}):
        assert Top.from_mapping(changed).hash() == base, changed
    assert Top.from_mapping({"middle": {"leaf": {"size": 9}}}).hash() != base


def test_describe_gives_one_row_per_leaf_with_its_dotted_name() -> None:
    rows = {r["name"]: r for r in describe(Top)}
    assert list(rows) == ["level", "threads", "middle.scale", "middle.leaf.size", "middle.leaf.workers",
                          "middle.leaf.low", "middle.leaf.high", "quiet.size", "quiet.workers", "quiet.low",
                          "quiet.high"]
    size = rows["middle.leaf.size"]
    # the default is the containing configuration's (Middle(leaf=Leaf(size=5))), not the leaf class's
    assert size["default"] == 5 and size["odd"] and size["bounds"] == (1, 99) and size["unit"] == "pixel"
    assert size["critical"] and size["doc"] == "a kernel size" and size["type"] == "int"
    assert not rows["middle.leaf.workers"]["critical"]
    assert not rows["quiet.size"]["critical"]  # inside a non-critical nested configuration


# -- the real reduction step ------------------------------------------------------------------------------------
def _prov(step, cfg) -> str:
    refs = [InputRef("frame", 1, "raw")]
    return provenance_id(step.name, code_version(step.version), cfg.hash(), "2015-08-10/j02-x", refs,
                         {("frame", 1): "0" * 64})


def test_reduce_provenance_ignores_threads_at_any_depth() -> None:
    step = get_step("reduce")
    base = step.make_config({})
    for overrides in ({"threads": 4}, {"detect": {"threads": 8}}, {"detect": {"strip_overlap_px": 256}},
                      {"threads": 2, "detect": {"threads": 3}, "fallback_nights": 3}):
        cfg = step.make_config(overrides)
        assert cfg != base
        assert cfg.hash() == base.hash(), overrides
        assert _prov(step, cfg) == _prov(step, base)
    assert "threads" not in base.critical() and "threads" not in base.critical()["detect"]
    for overrides in ({"cosmics": {"sigclip": 5.0}}, {"background": {"filter_meshes": 5}}, {"edge_px": 8}):
        cfg = step.make_config(overrides)
        assert cfg.hash() != base.hash(), overrides
        assert _prov(step, cfg) != _prov(step, base)


def test_every_step_lists_its_nested_parameters() -> None:
    rows = {r["name"]: r for r in describe(get_step("reduce").config_class)}
    assert {"detect.threads", "cosmics.sigclip", "background.filter_meshes", "threads", "fallback_nights"} <= set(rows)
    assert rows["background.filter_meshes"]["odd"]
    assert not rows["detect.threads"]["critical"] and rows["cosmics.sigclip"]["critical"]


# -- validate() and odd sizes from upad.toml ---------------------------------------------------------------------
def _make(tmp_path: Path, toml: str, step: str):
    (tmp_path / "upad.toml").write_text(toml)
    return get_step(step).make_config(load_user_config(tmp_path).get(step))


@pytest.mark.parametrize("toml, step, name, text", [
    ("[steps.reduce.background]\nfilter_meshes = 4\n", "reduce", "steps.reduce.background.filter_meshes",
     "must be odd, got 4"),
    ("[steps.master_flat]\nmin_level = 60000.0\n", "master_flat", "steps.master_flat.min_level",
     "is not below max_level"),
    ("[steps.bad_pixel_mask]\ndead_below = 0.9\n", "bad_pixel_mask", "steps.bad_pixel_mask.dead_below",
     "is above low_below"),
    ("[steps.reduce.photometry]\napcor_diameter_arcsec = 5.0\n", "reduce",
     "steps.reduce.photometry.apcor_diameter_arcsec", "is not one of the catalog apertures"),
    ("[steps.reduce.photometry]\napcor_diameter_arcsec = 8.0\n", "reduce",
     "steps.reduce.photometry.apcor_diameter_arcsec", "is the largest catalog aperture"),
    ("[steps.reduce.psf]\nmin_stars = 50\nmax_stars = 10\n", "reduce", "steps.reduce.psf.min_stars",
     "is above max_stars"),
    ("[steps.reduce]\nkinds = ['bias', 'flat']\nrequired = ['bias', 'dark']\n", "reduce", "steps.reduce.required",
     "not looked up"),
    ("[steps.reduce]\nflat_types = ['lamp']\n", "reduce", "steps.reduce.flat_types", "is not a non-empty list"),
    ("[steps.reduce.detect]\naper_diameters_arcsec = []\n", "reduce", "steps.reduce.detect.aper_diameters_arcsec",
     "positive diameters"),
])
def test_inconsistent_toml_values_are_refused_by_name(tmp_path: Path, toml, step, name, text) -> None:
    with pytest.raises(UpadError) as info:
        _make(tmp_path, toml, step)
    msg = str(info.value)
    assert msg.startswith(name) and text in msg, msg
    assert info.value.hint


def test_consistent_values_pass(tmp_path: Path) -> None:
    cfg = _make(tmp_path, "[steps.reduce.background]\nfilter_meshes = 5\n[steps.reduce.photometry]\n"
                          "apcor_diameter_arcsec = 3.0\n", "reduce")
    assert cfg.background.filter_meshes == 5 and cfg.photometry.apcor_diameter_arcsec == 3.0


def test_an_odd_filter_size_is_used_as_given() -> None:
    # the median filter of the background meshes is the declared size: no silent rounding any more
    from upad.reduce.background import BackgroundConfig, estimate_background

    rng = np.random.default_rng(1)
    img = (1000.0 + rng.normal(0, 5, (256, 256))).astype(np.float32)
    img[:, 128:] += 50.0
    sharp = estimate_background(img, config=BackgroundConfig(mesh_px=32, filter_meshes=1))
    smooth = estimate_background(img, config=BackgroundConfig(mesh_px=32, filter_meshes=5))
    assert sharp.mesh.shape == smooth.mesh.shape == (8, 8)
    assert not np.allclose(sharp.mesh, smooth.mesh)
    with pytest.raises(ConfigError, match="filter_meshes must be odd, got 2"):
        BackgroundConfig(filter_meshes=2)


def test_the_config_document_has_steps_and_ingest(tmp_path: Path) -> None:
    assert load_config_document(tmp_path) == {} and load_user_config(tmp_path) == {}
    (tmp_path / "upad.toml").write_text("[steps.reduce]\nthreads = 2\n[ingest.translation]\ntile_regex = '(\\d+)'\n")
    doc = load_config_document(tmp_path)
    assert doc["ingest"]["translation"]["tile_regex"] == "(\\d+)"
    assert load_user_config(tmp_path) == {"reduce": {"threads": 2}}
    (tmp_path / "upad.toml").write_text("ingest = 3\n")
    with pytest.raises(UpadError, match=r"\[ingest\] must be a table"):
        load_config_document(tmp_path)


def test_one_isr_table_for_every_step(tmp_path):
    """The ISR parameters are one shared [isr] table: masters and science frames are processed alike."""
    from upad.config import step_values
    from upad.isr.config import IsrConfig

    (tmp_path / "upad.toml").write_text("[isr]\noverscan = 'rows'\noverscan_smooth = 15\noverscan_skip = 2\n")
    doc = load_config_document(tmp_path)
    expected = IsrConfig(overscan="rows", overscan_smooth=15, overscan_skip=2)
    with_isr = [st for st in all_steps() if "isr" in {f.name for f in dataclasses.fields(st.config_class)}]
    assert {"master_bias", "master_dark", "master_flat", "master_fringe", "master_illumination", "reduce"} <= {
        st.name for st in with_isr}
    for st in with_isr:
        assert st.make_config(step_values(doc, st.name, st.config_class)).isr == expected, st.name
    # a step's own [steps.<step>.isr] would make it differ from the others: refused with the way out
    (tmp_path / "upad.toml").write_text("[steps.reduce.isr]\noverscan = 'mean'\n")
    with pytest.raises(UpadError, match=r"\[isr\] table"):
        step_values(load_config_document(tmp_path), "reduce", get_step("reduce").config_class)
    (tmp_path / "upad.toml").write_text("[isrr]\noverscan = 'mean'\n")
    with pytest.raises(UpadError, match="unknown table"):
        load_config_document(tmp_path)
