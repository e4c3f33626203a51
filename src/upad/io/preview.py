"""Rendered previews: binned, asinh-stretched 8-bit images of frames (pure functions + a PNG writer)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def bin_image(data: np.ndarray, factor: int) -> np.ndarray:
    """Block-average ``data`` by ``factor`` in both axes (edges that do not fill a block are dropped)."""
    if factor <= 1:
        return np.asarray(data, dtype=np.float32)
    ny, nx = (data.shape[0] // factor) * factor, (data.shape[1] // factor) * factor
    view = np.asarray(data[:ny, :nx], dtype=np.float32).reshape(ny // factor, factor, nx // factor, factor)
    return view.mean(axis=(1, 3), dtype=np.float32)


def asinh_stretch(image: np.ndarray, *, low_percentile: float = 1.0, high_percentile: float = 99.8,
                  softening: float = 0.1) -> np.ndarray:
    """Map an image to 0..255 with an asinh stretch between robust limits (NaNs become 0).

    Parameters
    ----------
    image : ndarray
        The image (any units).
    low_percentile, high_percentile : float
        Percentiles of the finite pixels mapped to black and white.
    softening : float
        Fraction of the range where the stretch turns from linear to logarithmic (smaller = stronger stretch).
    """
    finite = np.isfinite(image)
    if not finite.any():
        return np.zeros(image.shape, dtype=np.uint8)
    sample = image[finite]
    if sample.size > 1_000_000:
        sample = sample[:: sample.size // 1_000_000]
    lo, hi = np.percentile(sample, [low_percentile, high_percentile])
    if hi <= lo:
        hi = lo + 1.0
    x = np.clip((np.where(finite, image, lo) - lo) / (hi - lo), 0.0, 1.0)
    y = np.arcsinh(x / softening) / np.arcsinh(1.0 / softening)
    return (y * 255.0 + 0.5).astype(np.uint8)


def render_preview(data: np.ndarray, *, max_size: int = 1024) -> np.ndarray:
    """An 8-bit preview of ``data`` no larger than ``max_size`` pixels on its long side, north up (row 0 at
    the bottom, as in FITS)."""
    factor = max(1, int(np.ceil(max(data.shape) / max_size)))
    return asinh_stretch(bin_image(data, factor))[::-1]


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an 8-bit grey (2-D) or RGB (3-D) image as PNG."""
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG", optimize=False)
