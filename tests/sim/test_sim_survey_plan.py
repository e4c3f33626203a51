"""The simulator's survey plan on the survey tiling: pointings and ids of :mod:`upad.coadd.tiling`, 3 dithers of
≈10″ per filter, all 12 J-PLUS filters, a tile's dithers spread over nights (planning only: no pixels)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from upad.coadd.tiling import locate, pointing_by_id
from upad.instruments import get_filter_system, get_instrument
from upad.sim.config import SimConfig
from upad.sim.night import make_survey, plan_night
from upad.sim.schedule import radec_to_tangent


def _plan(instrument: str, *, nights: int, tiles: int, spread: bool, filters: tuple[str, ...] | None = None):
    inst = get_instrument(instrument)
    fs = get_filter_system(inst.filter_system)
    cfg = SimConfig(survey_tiling=True, spread_nights=spread, field_ra=150.0, field_dec=38.0,
                    **({"filters": filters} if filters else {})).resolved(instrument)
    survey = make_survey(inst, fs, cfg, 3, inst.layout.default_layout, "oaj", tiles, tiles, nights)
    plans = [plan_night(survey, n, list(range(tiles))) for n in range(nights)]
    return survey, [e for p in plans for e in p.exposures if e.kind == "science"], plans


@pytest.mark.parametrize("instrument", ["mini", "t80cam"])
def test_pointings_are_the_tilings(instrument):
    survey, sci, _ = _plan(instrument, nights=1, tiles=3, spread=False)
    first = int(locate(150.0, 38.0, instrument=instrument))
    assert survey.tile_ids[0] == first
    for (ra, dec), tid in zip(survey.tile_radec, survey.tile_ids):
        p = pointing_by_id(tid, instrument=instrument)
        assert (ra, dec) == (p.ra, p.dec)
    assert len(set(survey.tile_ids)) == 3
    # neighbours along the band overlap (the tiling's few arcminutes), never coincide
    ras = np.array([c[0] for c in survey.tile_radec])
    field_w = get_instrument(instrument).layout.active_shape[1] * get_instrument(instrument).pixel_scale / 3600
    step = np.diff(ras) * np.cos(np.radians(survey.tile_radec[0][1]))
    assert np.all((step > 0.5 * field_w) & (step < field_w))
    assert {e.tile_id for e in sci} == set(survey.tile_ids)


def test_all_filters_three_dithers_spread_over_nights():
    jplus = tuple(f.name for f in get_filter_system(get_instrument("mini").filter_system).filters)
    assert len(jplus) == 12
    survey, sci, plans = _plan("mini", nights=2, tiles=2, spread=True, filters=jplus)
    by = defaultdict(list)
    for e in sci:
        by[(e.tile_id, e.filter)].append(e)
    assert len(by) == 2 * 12
    for (tid, filt), es in by.items():
        assert sorted(e.dither for e in es) == [0, 1, 2]
        # the tile's inputs in the filter span both nights
        assert len({e.jd // 1 for e in es}) == 2, (tid, filt)
        centre = survey.tile_radec[survey.tile_ids.index(tid)]
        xi, eta = radec_to_tangent(centre[0], centre[1], np.array([e.ra for e in es]), np.array([e.dec for e in es]))
        off = np.hypot(xi, eta) * 3600
        assert off.min() < 0.01 and 13 < off.max() < 15  # (0,0) and (±10″, ±10″)
    assert [len([e for e in p.exposures if e.kind == "science"]) for p in plans] == [2 * 12 * 2, 2 * 12 * 1]


def test_without_spread_every_night_observes_every_dither():
    _, sci, _ = _plan("mini", nights=2, tiles=1, spread=False)
    by = defaultdict(list)
    for e in sci:
        by[(e.tile_id, e.filter)].append(e.dither)
    assert all(sorted(d) == [0, 0, 1, 1, 2, 2] for d in by.values())
