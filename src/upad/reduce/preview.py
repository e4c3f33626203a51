"""Rendered preview and QC plot of a reduced frame.

* :func:`frame_preview` — the image binned to at most ``max_size`` pixels, asinh-stretched to 8 bits, north up
  (:func:`upad.io.preview.render_preview`).
* :func:`qc_plot` — a small four-panel figure: PSF FWHM over the field (the PSF stars, coloured), PSF ellipticity
  whiskers, astrometric residuals (binned vectors, magnified) and zero-point residuals against magnitude, with the
  QC verdict in the title. Drawn with matplotlib (Agg) when it is installed, as a plain text panel otherwise.
* :func:`write_previews` writes both as PNG.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from upad.io.preview import render_preview, write_png

__all__ = ["frame_preview", "qc_plot", "write_previews"]


def frame_preview(image: np.ndarray, *, max_size: int = 1024) -> np.ndarray:
    """8-bit asinh preview of a (background-subtracted) image, at most ``max_size`` pixels on its long side."""
    return render_preview(np.asarray(image), max_size=max_size)


def _summary_lines(frame: Any) -> list[str]:
    lines = [f"QC: {frame.qc.status}" + (f" ({'; '.join(frame.qc.reasons)})" if frame.qc.reasons else "")]
    if frame.psf is not None:
        lines.append(f"FWHM {frame.psf.fwhm_arcsec:.2f}\" ({frame.psf.fwhm_min_px:.2f}-{frame.psf.fwhm_max_px:.2f} px)"
                     f"  ellipticity {frame.psf.ellipticity:.3f}  beta {frame.psf.beta:.2f}")
    if frame.zeropoint is not None:
        z = frame.zeropoint
        lines.append(f"ZP_E {z.zp_e:.3f} +- {z.error:.3f} ({z.n_stars} stars)")
    if frame.astrometry is not None:
        a = frame.astrometry
        lines.append(f"astrometry rms {a.rms_arcsec:.3f}\" ({a.n_matched} stars)")
    s = frame.stats
    lines.append(f"sky {s.get('sky_e', float('nan')):.1f} e-  masked {s.get('masked_fraction', 0):.2%}")
    return lines


def qc_plot(frame: Any, *, wcs_ref: Any = None, refcat: Any = None, dpi: int = 80) -> np.ndarray:
    """RGB (uint8) QC figure of a :class:`~upad.reduce.pipeline.ReducedFrame` (see the module documentation).

    ``refcat`` (the reference catalog given to the reduction) adds the astrometric and zero-point residual panels.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib is optional
        return _text_panel(_summary_lines(frame))
    fig = Figure(figsize=(8, 6.4), dpi=dpi)
    axs = fig.subplots(2, 2)
    ny, nx = frame.image.shape
    psf = frame.psf
    ax = axs[0, 0]
    if psf is not None:
        st = psf.stars
        u = st["used"]
        sc = ax.scatter(st["x"][u], st["y"][u], c=st["fwhm"][u] * psf.fwhm_arcsec / max(psf.fwhm_px, 1e-9), s=6,
                        cmap="viridis")
        fig.colorbar(sc, ax=ax, label="FWHM (arcsec)")
    ax.set_title("PSF FWHM", fontsize=9)
    ax = axs[0, 1]
    if psf is not None:
        gy, gx = np.mgrid[0:ny:9j, 0:nx:9j]
        g1, g2 = psf.model.shear_at(gx.ravel(), gy.ravel())
        g = np.hypot(g1, g2)
        ang = 0.5 * np.arctan2(g2, g1)
        scale = 0.8 * nx / 9 / max(float(g.max()), 0.02)
        ax.quiver(gx.ravel(), gy.ravel(), g * np.cos(ang) * scale, g * np.sin(ang) * scale, angles="xy",
                  scale_units="xy", scale=1, headwidth=0, headlength=0, headaxislength=0, pivot="middle")
        ax.set_title(f"PSF ellipticity (max |g| {float(g.max()):.3f})", fontsize=9)
    ax = axs[1, 0]
    ast = frame.astrometry
    cat = frame.catalog
    if ast is not None and refcat is not None and cat is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            px, py = ast.wcs.all_world2pix(np.asarray(refcat["ra"])[ast.ref_index],
                                           np.asarray(refcat["dec"])[ast.ref_index], 0)
        di = ast.det_index
        snr = np.asarray(cat["FLUX_AUTO"])[di] / np.maximum(np.asarray(cat["FLUXERR_AUTO"])[di], 1e-30)
        hi = snr >= 50 if np.count_nonzero(snr >= 50) >= 20 else np.ones(len(di), bool)
        dx = (px - (np.asarray(cat["XWIN_IMAGE"])[di] - 1))[hi]
        dy = (py - (np.asarray(cat["YWIN_IMAGE"])[di] - 1))[hi]
        xs = np.asarray(cat["XWIN_IMAGE"])[di][hi]
        ys = np.asarray(cat["YWIN_IMAGE"])[di][hi]
        nb = 8
        bx = np.clip((xs * nb / nx).astype(int), 0, nb - 1)
        by = np.clip((ys * nb / ny).astype(int), 0, nb - 1)
        k = by * nb + bx
        cnt = np.bincount(k, minlength=nb * nb)
        mdx = np.bincount(k, dx, nb * nb) / np.maximum(cnt, 1)
        mdy = np.bincount(k, dy, nb * nb) / np.maximum(cnt, 1)
        cy, cx = np.divmod(np.arange(nb * nb), nb)
        ok = cnt > 0
        mag = 0.8 * nx / nb / 0.05
        ax.quiver((cx[ok] + 0.5) * nx / nb, (cy[ok] + 0.5) * ny / nb, mdx[ok] * mag, mdy[ok] * mag, angles="xy",
                  scale_units="xy", scale=1)
        ax.set_title(f"astrometric residuals (arrow = 0.05 px / box), rms {ast.rms_arcsec:.3f}\"", fontsize=9)
    ax = axs[1, 1]
    zp = frame.zeropoint
    if zp is not None and refcat is not None and cat is not None and zp.n_stars > 0:
        from upad.reduce.photcal import reference_magnitudes

        mref = reference_magnitudes(refcat, zp)
        mcat = np.asarray(cat["MAG_APCOR"])[zp.det_index]
        ax.plot(mref, mref - mcat, ".", ms=3)
        ax.axhline(0.0, color="k", lw=0.5)
        ax.set_xlabel(f"{zp.filter} (reference)", fontsize=8)
        ax.set_ylabel("ref - MAG_APCOR", fontsize=8)
        ax.set_title(f"zero point {zp.zp_e:.3f} +- {zp.error:.3f}", fontsize=9)
    for a in axs.ravel():
        a.tick_params(labelsize=7)
    fig.suptitle(" | ".join(_summary_lines(frame)[:2]), fontsize=9)
    fig.tight_layout()
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _text_panel(lines: list[str]) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (640, 20 + 16 * len(lines)), "white")
    d = ImageDraw.Draw(im)
    for i, line in enumerate(lines):
        d.text((10, 10 + 16 * i), line, fill="black")
    return np.asarray(im)


def write_previews(frame: Any, preview_path: str | Path, qc_path: str | Path | None = None, *,
                   refcat: Any = None, max_size: int = 1024) -> list[Path]:
    """Write the preview (and the QC plot) as PNG files; returns the paths written."""
    out = []
    p = Path(preview_path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_png(p, frame_preview(frame.image, max_size=max_size))
    out.append(p)
    if qc_path is not None:
        q = Path(qc_path)
        q.parent.mkdir(parents=True, exist_ok=True)
        write_png(q, qc_plot(frame, refcat=refcat))
        out.append(q)
    return out
