"""Dual-mode catalog of a pointing in 12 filters: upad (one call: detection, AUTO/ISO/PETRO/8 apertures, PSF
homogenisation and PSFCOR, worst-PSF apertures) side by side with SExtractor dual mode (`source-extractor
det.fits,band.fits`, one run per filter, the same apertures, AUTO, ISO, PETRO) on the same images, in one run.

The images are the test suite's GalSim pointing (tests/catalog/synth.py: stars and galaxies, four PSF families and
widths) at SIZE x SIZE pixels, its four bands repeated to make 12 filters (the cost per filter does not depend on
the content); the PSF models are the pipeline's own (coadd_psf), made before the timing.

    python bench/bench_catalog.py --size 4096
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.catalog.synth import BANDS, MAGZP, PIXEL_SCALE, make_synth  # noqa: E402
from upad.catalog.measure import BandImage, CatalogConfig, dual_mode_catalog  # noqa: E402
from upad.reduce.validation import run_sextractor, sextractor_binary  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--filters", type=int, default=12)
    ap.add_argument("--density", type=float, default=600.0, help="sources per 1000x1000 pixels")
    args = ap.parse_args()
    n = int(args.density * (args.size / 1000) ** 2)
    t0 = time.perf_counter()
    synth = make_synth(seed=4, size=args.size, n_stars=int(0.6 * n), n_gals=int(0.4 * n))
    print(f"simulated {args.size}x{args.size}, {n} sources, 4 bands in {time.perf_counter() - t0:.0f} s")
    from upad.coadd.pipeline import coadd_psf
    from upad.coadd.step import CoaddConfig

    models = {}
    for name, img in synth.images.items():
        res, note, _ = coadd_psf(img, synth.weights[name], pixel_scale=PIXEL_SCALE, config=CoaddConfig())
        assert res is not None, note
        models[name] = res.model
    names = list(BANDS)
    bands = [BandImage(f"{names[k % 4]}" if k < 4 else f"{names[k % 4]}_{k}", synth.images[names[k % 4]],
                       synth.weights[names[k % 4]], MAGZP, models[names[k % 4]]) for k in range(args.filters)]
    cfg = CatalogConfig()
    t0 = time.perf_counter()
    cat = dual_mode_catalog(bands[0], bands, pixel_scale=PIXEL_SCALE, config=cfg)
    t_upad = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"upad dual_mode_catalog: {len(cat)} sources x {args.filters} filters in {t_upad:.1f} s "
          f"(process peak RSS {rss:.0f} MB)")
    if sextractor_binary() is None:
        print("SExtractor (source-extractor) is not installed: no comparison")
        return
    diam = tuple(d / PIXEL_SCALE for d in cfg.aper_diameters_arcsec)
    mesh = int(round(cfg.background_mesh_arcsec / PIXEL_SCALE))
    det = synth.images["rSDSS"]
    t_sex = t_sex_wall = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for b in bands:
            t0 = time.perf_counter()
            sx, wall = run_sextractor(det, weight=synth.weights["rSDSS"], pixel_scale=PIXEL_SCALE,
                                      aper_diameters_px=diam, measurement=b.image, measurement_weight=b.weight,
                                      gain=0.0, back_size=mesh, extra_params=("FLUX_ISO", "FLUX_PETRO"),
                                      workdir=tmp)
            t_sex += wall
            t_sex_wall += time.perf_counter() - t0
    print(f"SExtractor dual mode: {len(sx)} sources, {args.filters} runs in {t_sex:.1f} s "
          f"({t_sex_wall:.1f} s with writing its FITS inputs)")
    print(f"ratio upad / SExtractor = {t_upad / t_sex:.2f} (upad also homogenises the PSFs: PSFCOR and worst-PSF "
          "apertures)")


if __name__ == "__main__":
    main()
