"""Steps ``catalog_single`` and ``catalog_dual``: the catalogs of the tile coadds.

``catalog_single``: one unit per current coadd (``INSTRUMENT/TILE-NNNNN/FILTER``), the band detected and measured on
itself. ``catalog_dual``: one unit per pointing (``INSTRUMENT/TILE-NNNNN``), detection on the detection band
(``detection_filter``, rSDSS) and every filter measured in its apertures with PSF-corrected photometry. The dual
catalog waits until every filter observed at the pointing has a current coadd (a coadd that failed for good does not
hold it back: that filter is left out and said so); it is not made while the detection band has no coadd (the
reason is shown by ``upad status``/``upad run --dry-run``). Its inputs are the coadds, so a re-coadd of any filter
makes the catalogs again; the older ones stay as superseded products.

The algorithm is :mod:`upad.catalog.measure`; the columns are documented in docs/catalogs.md.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from upad import maskbits as mb
from upad.catalog.measure import BandImage, CatalogConfig
from upad.coadd.step import pointing_coadds, tile_unit_key
from upad.config import param
from upad.errors import DataError
from upad.flow.queries import PlanContext
from upad.flow.step import Input, InputRef, Output, OutputFile, Step, StepOutput, Task, Unit, register_step

__all__ = ["CatalogStepConfig", "CatalogSingleConfig", "CatalogSingle", "CatalogDual", "read_band"]


@dataclass(frozen=True)
class CatalogStepConfig(CatalogConfig):
    """Parameters of the dual-mode catalogs (the measurement's, and the detection band)."""

    detection_filter: str = param("rSDSS", doc="detection band of the dual-mode catalogs (J-PLUS: rSDSS)")


@dataclass(frozen=True)
class CatalogSingleConfig(CatalogConfig):
    """Parameters of the single-mode catalogs (the measurement's, and the depth and completeness)."""

    completeness: bool = param(True, doc="measure each coadd's completeness by injection and recovery (catalog_single)")
    completeness_per_bin: int = param(40, doc="sources injected per magnitude bin and kind", bounds=(5, 10000))
    completeness_bright: float = param(2.5, doc="the injected magnitudes start this much brighter than the coadd's "
                                       "stated 5σ depth (DEPTH5)", bounds=(0.5, 10.0), unit="mag")
    completeness_faint: float = param(1.75, doc="... and end this much fainter", bounds=(0.25, 5.0), unit="mag")
    completeness_step: float = param(0.25, doc="magnitude bin of the injection", bounds=(0.05, 1.0), unit="mag")
    completeness_hlr_arcsec: float = param(1.0, doc="half-light radius of the injected extended sources "
                                           "(exponential discs)", bounds=(0.1, 20.0), unit="arcsec")


def read_band(src: Any) -> tuple[BandImage, Any, float, dict]:
    """A coadd product (``ResolvedInput`` or paths) as a :class:`~upad.catalog.measure.BandImage`, with its WCS,
    pixel scale (arcsec) and SCI header values.

    The band's mask: ``NODATA`` where no input covers the pixel, ``SUSPECT`` where an input's pixel was rejected as an
    artefact (the coadd's ``MASK``).

    Raises
    ------
    DataError
        The coadd has no PSF model (too few stars) or misses a header value the catalogs need.
    """
    from astropy.io import fits
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    from upad.io.products import file_of, read_psf

    path = file_of(src, "coadd")
    try:
        psf_path = file_of(src, "psf")
    except DataError:
        psf_path = None
    if psf_path is None or psf_path == path:
        raise DataError(f"{path}: the coadd has no PSF model (too few stars for one), so its photometry cannot be "
                        "PSF-corrected; the catalogs need one")
    with fits.open(path, memmap=True) as hd:
        hdr = hd["SCI"].header
        for key in ("MAGZP", "FILTER"):
            if key not in hdr:
                raise DataError(f"{path}: the SCI header has no {key}; is this a upad coadd?")
        image = np.asarray(hd["SCI"].data, np.float32)
        weight = np.asarray(hd["WEIGHT"].data, np.float32)
        rejected = np.asarray(hd["MASK"].data) if "MASK" in hd else None
        wcs = WCS(hdr)
        values = {k: hdr.get(k) for k in ("TILE_ID", "FILTER", "MAGZP", "NOISECOR", "PSFFWHM", "DEPTH5", "UPADPROV")}
    mask = np.where(weight > 0, 0, mb.NODATA).astype(np.int16)
    if rejected is not None:
        mask |= np.where(rejected != 0, mb.SUSPECT, 0).astype(np.int16)
    scale = float(np.mean(proj_plane_pixel_scales(wcs.celestial))) * 3600.0
    band = BandImage(str(values["FILTER"]), image, weight, float(values["MAGZP"]), read_psf(psf_path), mask=mask,
                     noisecor=float(values.get("NOISECOR") or 1.0))
    return band, wcs, scale, values


def _tile_mask_for(ctx: PlanContext, masks: dict, made: dict, instrument: str, tile_id: int,
                   coadd_ids: set[int]) -> tuple[Any, str]:
    """The pointing's current tile mask made from (at least) these coadds, or ``(None, why not)``."""
    m = masks.get((instrument, tile_id))
    if m is None or not coadd_ids <= made.get(m.provenance_id, set()):
        return None, f"the tile mask of tile {tile_id} is not made yet"
    if m.qc_status == "fail":
        why = "; ".join((m.meta or {}).get("qc_reasons", [])[:1]) or "it failed its QC"
        return None, f"the tile mask of tile {tile_id} leaves nothing: {why}"
    return m, ""


def _masks(ctx: PlanContext) -> tuple[dict, dict]:
    from upad.coadd.step import made_from_coadds, pointing_products

    masks = pointing_products(ctx.session, "tile_mask")
    return masks, made_from_coadds(ctx.session, [m.provenance_id for m in masks.values()])


def _with_tile_mask(band: BandImage, task: Task) -> None:
    """OR the pointing's tile mask into the band's mask (its bits then enter MASK_FLAGS)."""
    from upad.catalog.mask_step import read_tile_mask

    tm = read_tile_mask(task.input("tile_mask"))
    if tm.shape != band.mask.shape:
        raise DataError(f"the tile mask is {tm.shape}, the {band.name} coadd {band.mask.shape}: not one grid")
    band.mask |= tm


def _write_catalog(task: Task, step: Step, cat: Any, name: str, cards: dict[str, tuple[Any, str]],
                   extra: Any = None) -> OutputFile:
    from astropy.io import fits

    hdu = fits.BinTableHDU(cat, name="CATALOG")
    for k, v in cat.meta.items():
        if k in hdu.header:
            continue
        hdu.header[k[:8]] = v
    for k, (v, c) in cards.items():
        hdu.header[k] = (v, c)
    hdu.header["UPADPROV"] = (task.provenance_id[:12], "provenance id of this product")
    staged = task.stage(name)
    hdus = [fits.PrimaryHDU(), hdu]
    if extra is not None:
        hdus.append(extra)
    fits.HDUList(hdus).writeto(staged)
    return OutputFile("catalog", str(staged), step.final_path(task, name))


def _completeness_table(curves: dict) -> Any:
    """The ``COMPLETENESS`` table HDU (kind, mag, injected, recovered; m50/m90 per kind in the header)."""
    from astropy.io import fits
    from astropy.table import Table

    if not curves:
        return None
    rows = [(k, float(m), int(n), int(r)) for k, c in curves.items()
            for m, n, r in zip(c.mags, c.injected, c.recovered)]
    t = Table(rows=rows, names=("kind", "mag", "injected", "recovered"), dtype=("U8", "f4", "i4", "i4"))
    t["mag"].unit = "mag"
    hdu = fits.BinTableHDU(t, name="COMPLETENESS")
    for k, c in curves.items():
        tag = "PT" if k == "point" else "EX"
        for lvl, v in (("50", c.m50), ("90", c.m90)):
            if math.isfinite(v):
                hdu.header[f"M{lvl}{tag}"] = (round(v, 3), f"{lvl}% completeness, {k} sources (AB)")
    return hdu


def plot_completeness(curves: dict, path: Any, *, title: str = "") -> None:
    """Completeness against magnitude per kind, with the logistic fit and the 50 %/90 % magnitudes (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for (k, c), colour in zip(curves.items(), ("C0", "C1")):
        ax.plot(c.mags, c.fraction, "o", color=colour, label=f"{k}: m50 {c.m50:.2f}, m90 {c.m90:.2f}")
        if math.isfinite(c.m50):
            m = np.linspace(c.mags[0], c.mags[-1], 200)
            ax.plot(m, c.plateau / (1 + np.exp((m - c.m50) / c.width)), "-", color=colour, lw=1)
            ax.axvline(c.m50, color=colour, ls=":", lw=0.8)
    ax.axhline(0.5, color="0.6", lw=0.5)
    ax.axhline(0.9, color="0.6", lw=0.5)
    ax.set_xlabel("injected magnitude (AB)")
    ax.set_ylabel("fraction recovered")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _summary(cat: Any, bands: list[str], dual: bool) -> dict[str, Any]:
    """Counts per band for the product's meta (sources, measured in AUTO, non-detections)."""
    out: dict[str, Any] = {"n_sources": len(cat), "filters": bands}
    mags = np.asarray(cat["MAG_AUTO"], float)
    if not dual:
        mags = mags[:, None]
    out["n_detected_auto"] = {b: int(np.count_nonzero(mags[:, j] < 50)) for j, b in enumerate(bands)}
    return out


@register_step
class CatalogSingle(Step):
    """The single-mode catalog of one coadd."""

    name = "catalog_single"
    product_kind = "catalog_single"
    area = "catalogs"
    memory_class = "large"
    config_class = CatalogSingleConfig
    version = "1.1"  # 1.1: the tile mask's bits in MASK_FLAGS
    description = "single-mode catalog of a tile coadd: the band detected and measured on itself"
    inputs = (Input("coadd", "coadd", doc="the current coadd of the tile in the filter (with its PSF model)"),
              Input("tile_mask", "tile_mask", doc="the pointing's tile mask (its bits enter MASK_FLAGS)"))
    outputs = (Output("catalog", doc="FITS table CATALOG (docs/catalogs.md): scalar columns; table COMPLETENESS "
                                     "(injected and recovered per magnitude and kind)"),
               Output("completeness_plot", optional=True, doc="PNG: completeness against magnitude"))

    def plan(self, ctx: PlanContext, config: CatalogSingleConfig) -> Iterable[Unit]:
        masks, made = _masks(ctx)
        for p in ctx.current_products("coadd", step="coadd"):
            c = p.context or {}
            if not c.get("instrument") or c.get("tile_id") is None or not c.get("filter"):
                continue
            context = {"instrument": c["instrument"], "tile_id": int(c["tile_id"]), "filter": c["filter"],
                       "night": p.night}
            key = tile_unit_key(c["instrument"], c["tile_id"], c["filter"])
            if not any(f.get("role") == "psf" for f in (p.files or [])):
                yield Unit(key=key, ready=False, context=context,
                           reason=f"the {c['filter']} coadd of tile {c['tile_id']} has no PSF model (too few stars)")
                continue
            mask, why = _tile_mask_for(ctx, masks, made, c["instrument"], int(c["tile_id"]), {p.id})
            if mask is None:
                yield Unit(key=key, ready=False, context=context, reason=why)
                continue
            yield Unit(key=key, context=context, priority=180, inputs=[InputRef("product", p.id, "coadd"),
                                                                      InputRef("product", mask.id, "tile_mask")])

    def run(self, task: Task) -> StepOutput:
        from upad.catalog.measure import single_mode_catalog

        from upad.catalog.completeness import aperture_depth, completeness

        cfg = task.config
        band, wcs, scale, values = read_band(task.input("coadd"))
        _with_tile_mask(band, task)
        cat = single_mode_catalog(band, pixel_scale=scale, wcs=wcs, config=cfg)
        tile = int(task.context["tile_id"])
        meta = _summary(cat, [band.name], dual=False)
        depth = aperture_depth(band.image, band.weight, band.mask, magzp=band.magzp, pixel_scale=scale, config=cfg)
        meta["depth_5sigma_3arcsec_blank"] = round(depth["depth"], 4) if math.isfinite(depth["depth"]) else None
        meta["depth_5sigma_3arcsec_stated"] = values.get("DEPTH5")
        cards: dict[str, tuple[Any, str]] = {"TILE_ID": (tile, "survey pointing"), "FILTER": (band.name, "filter")}
        if meta["depth_5sigma_3arcsec_blank"] is not None:
            cards["DEPTH5B"] = (meta["depth_5sigma_3arcsec_blank"], "5 sigma AB in 3 arcsec, blank apertures")
        curves = {}
        reasons = []
        if cfg.completeness:
            ref = float(values.get("DEPTH5") or meta["depth_5sigma_3arcsec_blank"] or math.nan)
            if math.isfinite(ref):
                mags = np.arange(ref - cfg.completeness_bright, ref + cfg.completeness_faint + 1e-6,
                                 cfg.completeness_step)
                curves = completeness(band.image, band.weight, band.mask, band.psf, magzp=band.magzp,
                                      pixel_scale=scale, mags=mags, per_bin=cfg.completeness_per_bin,
                                      hlr_arcsec=cfg.completeness_hlr_arcsec, config=cfg,
                                      seed=tile * 100 + len(band.name))
                meta["completeness"] = {k: c.as_dict() for k, c in curves.items()}
                for k, c in curves.items():
                    tag = "PT" if k == "point" else "EX"
                    for lvl, v in (("50", c.m50), ("90", c.m90)):
                        if math.isfinite(v):
                            cards[f"M{lvl}{tag}"] = (round(v, 3), f"{lvl}% completeness, {k} sources (AB)")
                        else:
                            reasons.append(f"{k} sources: the {lvl} % completeness is outside "
                                           f"{mags[0]:.2f}-{mags[-1]:.2f} mag")
            else:
                reasons.append("no depth to centre the completeness injection on")
        name = f"catalog_TILE-{tile:05d}_{band.name}_single.fits"
        out = _write_catalog(task, self, cat, name, cards, extra=_completeness_table(curves))
        files = [out]
        if curves:
            png = task.stage(f"completeness_TILE-{tile:05d}_{band.name}.png")
            plot_completeness(curves, png, title=f"tile {tile} {band.name}")
            files.append(OutputFile("completeness_plot", str(png), self.final_path(task, png.name)))
        meta["qc_reasons"] = reasons
        return StepOutput(files=files, meta=meta, qc_status="warn" if reasons else "ok")


@register_step
class CatalogDual(Step):
    """The dual-mode catalog of one pointing."""

    name = "catalog_dual"
    product_kind = "catalog_dual"
    area = "catalogs"
    memory_class = "large"
    config_class = CatalogStepConfig
    version = "1.1"  # 1.1: the tile mask's bits in MASK_FLAGS
    description = "dual-mode catalog of a pointing: detection on the detection band, every filter measured in its " \
                  "apertures, PSF-corrected colours"
    inputs = (Input("coadd", "coadd", minimum=1, maximum=None, doc="the current coadds of the pointing, one per "
                                                                   "filter (with their PSF models)"),
              Input("tile_mask", "tile_mask", doc="the pointing's tile mask (its bits enter MASK_FLAGS)"))
    outputs = (Output("catalog", doc="FITS table CATALOG (docs/catalogs.md): per-band array columns, in the order "
                                     "of the header's FILTERS"),)

    def plan(self, ctx: PlanContext, config: CatalogStepConfig) -> Iterable[Unit]:
        det = config.detection_filter
        masks, made = _masks(ctx)
        for pc in pointing_coadds(ctx):
            done, tid, inst = pc.coadds, pc.tile_id, pc.instrument
            usable = {f: p for f, p in done.items() if any(x.get("role") == "psf" for x in (p.files or []))}
            context = {"instrument": inst, "tile_id": tid, "night": max(p.night for p in done.values()),
                       "filters": sorted(usable), "detection_filter": det,
                       "left_out": sorted(pc.observed - set(usable))}
            if pc.waiting:
                yield Unit(key=pc.key, ready=False, context=context,
                           reason=f"the coadds of {', '.join(pc.waiting)} of tile {tid} are not done yet")
                continue
            if det not in usable:
                why = ("was never observed" if det not in pc.observed else
                       "failed" if det not in done else "has no PSF model (too few stars)")
                yield Unit(key=pc.key, ready=False, context=context,
                           reason=f"the detection band {det} of tile {tid} {why}: no dual-mode catalog "
                                  f"(set [steps.catalog_dual] detection_filter to use another band)")
                continue
            mask, why = _tile_mask_for(ctx, masks, made, inst, tid, {p.id for p in usable.values()})
            if mask is None:
                yield Unit(key=pc.key, ready=False, context=context, reason=why)
                continue
            yield Unit(key=pc.key, context=context, priority=185,
                       inputs=[InputRef("product", usable[f].id, "coadd") for f in sorted(usable)]
                       + [InputRef("product", mask.id, "tile_mask")])

    def run(self, task: Task) -> StepOutput:
        from upad.catalog.measure import dual_mode_catalog

        cfg = task.config
        bands, wcs, scale, det = [], None, math.nan, None
        for r in task.inputs_by_role("coadd"):
            band, w, s, _ = read_band(r)
            _with_tile_mask(band, task)
            bands.append(band)
            if band.name == cfg.detection_filter:
                det, wcs, scale = band, w, s
        if det is None:
            raise DataError(f"no coadd of the detection band {cfg.detection_filter} among the inputs")
        # the array columns in the filter system's order (J-PLUS: uJAVA ... zSDSS)
        order = _filter_order(task.context.get("instrument"), [b.name for b in bands])
        bands.sort(key=lambda b: order.get(b.name, 1000))
        cat = dual_mode_catalog(det, bands, pixel_scale=scale, wcs=wcs, config=cfg)
        tile = int(task.context["tile_id"])
        name = f"catalog_TILE-{tile:05d}_dual.fits"
        left_out = list(task.context.get("left_out") or [])
        out = _write_catalog(task, self, cat, name, {"TILE_ID": (tile, "survey pointing"),
                                                     "GRIDNX": (det.image.shape[1], "columns of the pointing's grid"),
                                                     "GRIDNY": (det.image.shape[0], "rows of the pointing's grid"),
                                                     "LEFTOUT": (",".join(left_out), "observed filters without a "
                                                                                     "usable coadd")})
        meta = _summary(cat, [b.name for b in bands], dual=True)
        meta["detection_filter"] = det.name
        meta["left_out"] = left_out
        meta["psf_fwhm_arcsec"] = {b.name: round(b.fwhm_px * scale, 4) for b in bands}
        reasons = [f"{f}: no usable coadd (left out of the catalog)" for f in left_out]
        return StepOutput(files=[out], meta={**meta, "qc_reasons": reasons}, qc_status="warn" if reasons else "ok")


def _filter_order(instrument: str | None, names: list[str]) -> dict[str, int]:
    """The instrument's filter order (its description), else alphabetical."""
    from upad.instruments import get_filter_system, get_instrument

    try:
        filters = [f.name for f in get_filter_system(get_instrument(instrument).filter_system).filters]
    except (KeyError, ValueError, TypeError):  # an unknown instrument only changes the column order
        filters = []
    known = {f: i for i, f in enumerate(filters)}
    return {n: known.get(n, 100 + k) for k, n in enumerate(sorted(names))}
