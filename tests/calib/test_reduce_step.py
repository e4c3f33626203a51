"""The `reduce` step on the calibrated night: it uses exactly the lookup's masters (recorded in provenance), and its
instrumental correction recovers the simulator's truth."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import select

from upad import maskbits
from upad.calib.lookup import select_masters
from upad.db.models import Frame, Product
from upad.execution import LocalExecutor
from upad.flow.scheduler import Scheduler, SchedulerOptions
from upad.reduce.steps import ReduceConfig


@pytest.fixture(scope="module")
def reduced(pipeline):
    ex = LocalExecutor(2)
    try:
        counts = Scheduler(pipeline.db, pipeline.settings, ex,
                           options=SchedulerOptions(steps=["reduce"], poll_seconds=0.05)).run(until_idle=True)
    finally:
        ex.close()
    return counts


def test_every_science_frame_reduced_with_the_lookup_masters(pipeline, reduced):
    db = pipeline.db
    with db.session() as s:
        science = list(s.scalars(select(Frame).where(Frame.obs_type == "science")))
        products = {p.context["frame_id"]: p for p in s.scalars(select(Product).where(Product.step == "reduce",
                                                                                     Product.is_current.is_(True)))}
        assert len(products) == len(science) > 0
        for f in science:
            p = products[f.id]
            used = {(i.role, i.input_id) for i in p.provenance.inputs if i.input_kind == "product"}
            sel = select_masters(s, f, ReduceConfig())
            assert used == {(r.role, r.id) for r in sel.inputs()}
            assert {"bias", "flat"} <= {role for role, _ in used}


def test_reduced_sky_and_masks_match_truth(pipeline, reduced):
    db, root = pipeline.db, pipeline.settings.root
    truth = {f["file"].split("/")[-1]: f for f in pipeline.night.result.frames if f["kind"] == "science"}
    with db.session() as s:
        rows = s.execute(select(Product.files, Frame.filename, Frame.filter).join(
            Frame, Frame.id == Product.context["frame_id"].as_integer()).where(Product.step == "reduce")).all()
    assert rows
    for files, filename, filt in rows:
        t = truth[filename]
        with fits.open(root / files[0]["path"]) as hdul:
            sci, mask, weight = hdul["SCI"].data, hdul["MASK"].data, hdul["WEIGHT"].data
            assert isinstance(hdul["MASK"], fits.CompImageHDU)  # the compressed mask in the 2nd HDU
            assert hdul["SCI"].header["BUNIT"] == "electron" and len(hdul["SCI"].header["UPADPROV"]) == 12
        good = (mask & maskbits.UNUSABLE) == 0
        # flat-fielded sky in electrons per pixel: the truth sky, flat across the field (fringes removed in zSDSS)
        sky = np.median(sci[good])
        assert sky == pytest.approx(t["sky_e"], rel=0.02), (filename, filt)
        ny, nx = sci.shape
        quads = [np.median(sci[:ny // 2, :nx // 2][good[:ny // 2, :nx // 2]]),
                 np.median(sci[ny // 2:, nx // 2:][good[ny // 2:, nx // 2:]])]
        assert np.ptp(quads) / sky < 0.01
        # the noise model: the sky's scatter agrees with the predicted variance
        pred = np.median(1 / np.sqrt(weight[good]))
        mad = 1.4826 * np.median(np.abs(sci[good] - sky))
        assert mad == pytest.approx(pred, rel=0.1)
        assert (mask & maskbits.BAD).any()  # bad pixels and columns from the bad-pixel mask
        assert np.all(weight[(mask & maskbits.ZERO_WEIGHT) != 0] == 0)


def test_fringes_removed_in_red_filters(pipeline, reduced):
    db, root = pipeline.db, pipeline.settings.root
    fringe_truth = fits.getdata(pipeline.night.out / "truth" / "camera" / "fringe_zSDSS.fits").astype(float)
    with db.session() as s:
        rows = s.execute(select(Product.files).join(Frame, Frame.id == Product.context["frame_id"].as_integer())
                         .where(Product.step == "reduce", Frame.filter == "zSDSS")).all()
    assert rows
    for (files,) in rows:
        sci = fits.getdata(root / files[0]["path"], "SCI").astype(float)
        x = sci / np.median(sci) - 1

        def binned(a, k=8):
            n = a.shape[0] // k * k
            return np.median(a[:n, :n].reshape(n // k, k, n // k, k).transpose(0, 2, 1, 3)
                             .reshape(n // k, n // k, -1), axis=2)

        xb, tb = binned(x), binned(fringe_truth)
        ok = np.abs(xb) < 0.2
        # before correction the frame correlates ~1 with the fringe pattern; after, the residue is uncorrelated
        assert abs(np.corrcoef(xb[ok], tb[ok])[0, 1]) < 0.25
        assert xb[ok].std() < 0.5 * fringe_truth.std() + 0.005
