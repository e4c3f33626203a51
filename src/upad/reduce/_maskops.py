"""Compiled whole-frame operations on the mask plane (one parallel pass each instead of several numpy passes)."""
from __future__ import annotations

import numpy as np

from upad import maskbits as mb
from upad.reduce._jit import njit, prange

__all__ = ["init_mask", "count_bits", "find_bits", "sqrt_and_flag", "flag_bits"]


@njit(parallel=True, nogil=True, cache=True)
def _init(img, mask, bpm, has_bpm, bpm_bad_bits, bpm_suspect_bits, flat, has_flat, vig_below, edge,
          nodata, bad, suspect, vignetted, edgebit):  # pragma: no cover - compiled
    ny, nx = img.shape
    nnan = np.zeros(ny, np.int64)
    for y in prange(ny):
        k = 0
        for x in range(nx):
            m = mask[y, x]
            v = img[y, x]
            if not np.isfinite(v):
                m |= nodata
                img[y, x] = 0.0
                k += 1
            if has_bpm:
                b = bpm[y, x]
                if (b & bpm_bad_bits) != 0:
                    m |= bad
                elif (b & bpm_suspect_bits) != 0:
                    m |= suspect
            if has_flat:
                f = flat[y, x]
                if not (f > 0):
                    m |= nodata
                elif f < vig_below:
                    m |= vignetted
            if y < edge or y >= ny - edge or x < edge or x >= nx - edge:
                m |= edgebit
            mask[y, x] = m
        nnan[y] = k
    return nnan.sum()


def init_mask(image: np.ndarray, mask: np.ndarray, *, bpm: np.ndarray | None = None, bpm_bad_bits: int = 0xFF,
              bpm_suspect_bits: int = 0, flat: np.ndarray | None = None, vignetted_below: float = 0.0,
              edge_px: int = 0) -> int:
    """Initial flags in one pass (in place): non-finite pixels → ``NODATA`` (and set to 0), bad-pixel mask →
    ``BAD`` (bits ``bpm_bad_bits``) or ``SUSPECT`` (``bpm_suspect_bits`` only), flat ≤ 0 → ``NODATA``, flat below
    ``vignetted_below`` → ``VIGNETTED``, the ``edge_px`` border → ``EDGE``. Returns the number of non-finite
    pixels."""
    b = np.zeros((1, 1), np.uint8) if bpm is None else np.asarray(bpm)
    if b.dtype == bool:
        b = b.view(np.uint8)
    fl = np.ones((1, 1), np.float32) if flat is None else np.asarray(flat, np.float32)
    return int(_init(image, mask, b, bpm is not None, b.dtype.type(bpm_bad_bits), b.dtype.type(bpm_suspect_bits),
                     fl, flat is not None, np.float32(vignetted_below), int(edge_px), np.int16(mb.NODATA),
                     np.int16(mb.BAD), np.int16(mb.SUSPECT), np.int16(mb.VIGNETTED), np.int16(mb.EDGE)))


@njit(parallel=True, nogil=True, cache=True)
def _count(mask, any_bits):  # pragma: no cover - compiled
    ny, nx = mask.shape
    counts = np.zeros((ny, 17), np.int64)
    for y in prange(ny):
        for x in range(nx):
            m = mask[y, x]
            if m != 0:
                for b in range(16):
                    if (m >> b) & 1:
                        counts[y, b] += 1
                if (m & any_bits) != 0:
                    counts[y, 16] += 1
    return counts.sum(axis=0)


def count_bits(mask: np.ndarray, any_bits: int = mb.UNUSABLE) -> tuple[dict[str, int], int]:
    """Pixels per mask bit (names of :data:`upad.maskbits.BITS`, bits that occur) and the number of pixels with
    any of ``any_bits``, in one parallel pass."""
    c = _count(mask, np.int16(any_bits))
    out = {b.name: int(c[b.bit]) for b in mb.BITS if c[b.bit]}
    return out, int(c[16])


@njit(parallel=True, nogil=True, cache=True)
def _row_counts(mask, bits):  # pragma: no cover - compiled
    ny, nx = mask.shape
    n = np.zeros(ny, np.int64)
    for y in prange(ny):
        k = 0
        for x in range(nx):
            if (mask[y, x] & bits) != 0:
                k += 1
        n[y] = k
    return n


@njit(parallel=True, nogil=True, cache=True)
def _fill(mask, bits, start, ys, xs):  # pragma: no cover - compiled
    ny, nx = mask.shape
    for y in prange(ny):
        k = start[y]
        for x in range(nx):
            if (mask[y, x] & bits) != 0:
                ys[k] = y
                xs[k] = x
                k += 1


def find_bits(mask: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates ``(y, x)`` (int64) of the pixels with any of ``bits``, in row order."""
    b = np.asarray(bits, mask.dtype)
    n = _row_counts(mask, b)
    start = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
    tot = int(n.sum())
    ys = np.empty(tot, np.int64)
    xs = np.empty(tot, np.int64)
    if tot:
        _fill(mask, b, start, ys, xs)
    return ys, xs


@njit(parallel=True, nogil=True, cache=True)
def _sqrt_flag(var, mask, bits, err, flag):  # pragma: no cover - compiled
    ny, nx = var.shape
    nflag = np.zeros(ny, np.int64)
    for y in prange(ny):
        k = 0
        for x in range(nx):
            v = var[y, x]
            err[y, x] = np.sqrt(v) if (v > 0 and np.isfinite(v)) else 1e30
            f = (mask[y, x] & bits) != 0
            flag[y, x] = f
            if f:
                k += 1
        nflag[y] = k
    return nflag.sum()


def sqrt_and_flag(variance: np.ndarray, mask: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``sqrt(variance)`` (1e30 where not positive and finite) and the boolean map of ``bits`` (``None`` when
    empty), in one pass: the noise and mask arrays of the detection."""
    err = np.empty(variance.shape, np.float32)
    flag = np.empty(variance.shape, np.bool_)
    n = _sqrt_flag(variance, mask, np.asarray(bits, mask.dtype), err, flag)
    return err, (flag if n else None)


@njit(parallel=True, nogil=True, cache=True)
def _flag(mask, bits, flag):  # pragma: no cover - compiled
    ny, nx = mask.shape
    nflag = np.zeros(ny, np.int64)
    for y in prange(ny):
        k = 0
        for x in range(nx):
            f = (mask[y, x] & bits) != 0
            flag[y, x] = f
            if f:
                k += 1
        nflag[y] = k
    return nflag.sum()


def flag_bits(mask: np.ndarray, bits: int) -> np.ndarray | None:
    """Boolean map of the pixels with any of ``bits`` (``None`` when there is none), in one parallel pass."""
    flag = np.empty(mask.shape, np.bool_)
    n = _flag(mask, np.asarray(bits, mask.dtype), flag)
    return flag if n else None
