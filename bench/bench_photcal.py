"""Photometric calibration per J-PLUS filter on simulated mini frames: zero point and colour term against the truth,
with a G/BP/RP-only reference and with survey-filter reference magnitudes (docs/calibration.md, "Accuracy").

    PYTHONPATH=src python bench/bench_photcal.py [FILTERS] [OUTDIR]

FILTERS: comma-separated (default: all 12). One tile, one exposure per filter, seed 11; the frames are calibrated
with the truth (tests/reduce/helpers.py) so that only the photometric calibration is measured.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from astropy.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reduce.helpers import calibrate, reduce_calibrated, star_ids  # noqa: E402

from upad.io.refcat import epoch_of, propagate_to_epoch, read_reference_catalog  # noqa: E402
from upad.sim import SimConfig, simulate  # noqa: E402
from upad.sim.truth import load_manifest  # noqa: E402

ALL = "uJAVA,J0378,J0395,J0410,J0430,gSDSS,J0515,rSDSS,J0660,iSDSS,J0861,zSDSS"


def main() -> None:
    filters = (sys.argv[1] if len(sys.argv) > 1 else ALL).split(",")
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix="bench-photcal-"))
    cfg = SimConfig(n_bias=0, n_dark=0, n_dome_flats=0, n_sky_flats=0, n_dithers=1, workers=2,
                    star_pm_sigma_masyr=6.0, passband_shift_fraction=0.05, refcat_synphot_limit=19.0,
                    star_density_r21=7000.0)
    simulate("mini", seed=11, out=out, tiles=1, filters=filters, config=cfg)
    man = load_manifest(out)
    sky = Table.read(out / man["sky_catalog"], hdu="SKY")
    row = {int(i): k for k, i in enumerate(sky["id"])}
    ref = read_reference_catalog(out / man["reference_catalog"])
    gaia = ref.copy()
    gaia.remove_columns([c for c in gaia.colnames if c.startswith(("mag_", "magerr_"))])
    stars = star_ids(out, man)
    print(f"{'filter':7s} {'route':7s} {'n':>3s} {'ZP-truth':>9s} {'err':>6s} {'k':>8s} {'k_true':>8s}")
    for rec in man["frames"]:
        if rec["kind"] != "science":
            continue
        c = calibrate(out, man, rec, stars=stars)
        ep = epoch_of(rec["date_obs"], rec["exptime"])
        f = rec["filter"]
        for name, rc in (("gaia", gaia), ("survey", ref)):
            r = reduce_calibrated(c, propagate_to_epoch(rc, ep))
            z = r.zeropoint
            if z is None or z.source == "nominal":
                print(f"{f:7s} {name:7s} no zero point: {r.failure or z.note}")
                continue
            rows = np.array([row[int(i)] for i in np.asarray(rc["truth_id"])[z.ref_index]])
            col = np.asarray(sky["phot_bp_mean_mag"])[rows] - np.asarray(sky["phot_rp_mean_mag"])[rows]
            d = np.asarray(sky[f"mag_{f}"], float)[rows] - np.asarray(sky[f"magnom_{f}"], float)[rows]
            k_true, d0 = np.polyfit(col - z.colour_ref, d, 1)
            print(f"{f:7s} {name:7s} {z.n_stars:3d} {z.zp_e - (rec['zp_e'] - d0):+9.4f} {z.error:6.4f} "
                  f"{z.colour_term:+8.4f} {k_true:+8.4f}")


if __name__ == "__main__":
    main()
