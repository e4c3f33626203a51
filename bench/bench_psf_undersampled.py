#!/usr/bin/env python
"""What limits the PSF model's FWHM on undersampled frames (0.6" seeing: FWHM 1.1-1.4 pixels of 0.55").

For each PSF family and seed a 1024 x 1024 frame holds ``--stars`` isolated point sources of S/N 50-400 (log-uniform,
like the 13-18 PSF stars of a mini frame of the grid of ``bench/bench_conditions.py``) drawn by the simulator's
renderer (:func:`upad.sim.render.render`: the family's profile, its field variation from
:func:`upad.sim.psf.draw_psf_model`, pixel-integrated, at random sub-pixel positions) with photon and sky noise.
:func:`upad.reduce.psf.measure_psf` is given their positions and S/N (nothing else of the truth) and the model's FWHM
at the stars (``fwhm_at``) is compared with the truth's effective FWHM, per frame as the grid's judge does (median
over the stars). Printed per family: mean, rms and largest of ``model / truth - 1`` over the seeds.

``--optics`` switches off one field-dependent aberration of the Kolmogorov x optics family (``no-coma``,
``no-astig``, ``no-defocus``: the simulator's ``coma_r``, ``astig_r``, ``z4_r2`` set to 0) or all field variation of
the PSF (``constant``: no FWHM, shear or aberration variation over the field), to find which part of the true PSF the
model does not follow.

    python3 bench/bench_psf_undersampled.py                            # every family, seeds 1-8, 16 stars
    python3 bench/bench_psf_undersampled.py --families kolmogorov --optics no-coma
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SCALE = 0.55
FAMILIES = {"kolmogorov": dict(psf_family="kolmogorov_optics"), "double_gaussian": dict(psf_family="double_gaussian"),
            "moffat2": dict(psf_family="moffat", psf_beta_range=(2.0, 2.0)),
            "moffat3.5": dict(psf_family="moffat", psf_beta_range=(3.5, 3.5)),
            "moffat5": dict(psf_family="moffat", psf_beta_range=(5.0, 5.0))}
OPTICS_OFF = {"no-coma": "coma_r", "no-astig": "astig_r", "no-defocus": "z4_r2"}


def frame(seed: int, family: str, *, seeing: float = 0.6, n: int = 16, size: int = 1024, sky: float = 45.0,
          optics: str = "full"):
    """A synthetic frame: image (e-, sky subtracted), positions, fluxes, S/N and the true FWHM (pixels) per star."""
    from upad.sim import SimConfig
    from upad.sim.psf import draw_psf_model
    from upad.sim.render import Sources, render, star_grid

    rng = np.random.default_rng(seed)
    kw = dict(FAMILIES[family], psf_field_bump=0.0)
    if optics == "constant":
        kw["disabled"] = ("psf_variation",)
    psf = draw_psf_model(rng, fwhm_centre=seeing, shape=(size, size), cfg=SimConfig(**kw),
                         rng_family=np.random.default_rng(seed + 999))
    if optics in OPTICS_OFF:
        psf = replace(psf, optics={**psf.optics, OPTICS_OFF[optics]: 0.0})
    x, y, flux, snr = star_grid(rng, n, size, sky=sky)
    img = np.zeros((size, size), np.float32)
    info = render(img, Sources.points(x, y, flux), psf, pixel_scale=SCALE, zones=8)
    img = (rng.poisson(np.maximum(img + sky, 0.0)) - sky).astype(np.float32)
    return img, x, y, flux, snr, np.asarray(info.fwhm_arcsec, float) / SCALE


def model_over_truth(seed: int, family: str, **kw) -> float:
    """Median over the stars of the model's FWHM over the truth's."""
    from upad.reduce.psf import measure_psf

    img, x, y, flux, snr, true_px = frame(seed, family, **kw)
    n = len(x)
    res = measure_psf(img, x + 0.02, y - 0.02, flux, snr, np.zeros(n, int), np.zeros(n, int), np.full(n, 1.5),
                      np.zeros(n), np.full(n, 1000.0), pixel_scale=SCALE)
    return float(np.median(res.model.fwhm_at(x, y) / true_px))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--seeds", type=int, nargs=2, default=(1, 9), metavar=("FIRST", "END"))
    ap.add_argument("--stars", type=int, default=16)
    ap.add_argument("--seeing", type=float, default=0.6)
    ap.add_argument("--optics", default="full", choices=["full", "constant", *OPTICS_OFF])
    args = ap.parse_args(argv)
    import upad  # noqa: F401  - configures astropy offline

    print(f"| family | optics | stars | mean | rms | largest | per seed ({args.seeds[0]}-{args.seeds[1] - 1}) |")
    print("|---|---|---|---|---|---|---|")
    for fam in args.families:
        d = np.array([model_over_truth(s, fam, n=args.stars, seeing=args.seeing, optics=args.optics) - 1
                      for s in range(*args.seeds)])
        print(f"| {fam} | {args.optics} | {args.stars} | {d.mean():+.4f} | {np.sqrt(np.mean(d ** 2)):.4f} | "
              f"{np.abs(d).max():.4f} | {' '.join(f'{v:+.3f}' for v in d)} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
