"""The failure raised by the reduction algorithms when the data cannot give a result.

:class:`ReductionError` is a :class:`upad.errors.DataError` (a deterministic failure caused by the input: the
flow records it and never retries it) with a machine-readable ``reason`` code and the ``stage`` that failed, so that
the step adapter can record a failed QC with its reason instead of a traceback.

Reason codes: ``no_data`` (all NaN, all zero, constant or wrong shape), ``no_sources`` (nothing detected: clouds, a
closed dome), ``too_few_stars`` (not enough stars for a fit), ``astrometry_failed`` (no match with the reference
catalog), ``no_reference`` (reference catalog empty or without the needed magnitudes), ``photometry_failed``,
``psf_failed``, ``bad_input`` (inconsistent arguments).
"""
from __future__ import annotations

from upad.errors import DataError

__all__ = ["REASONS", "ReductionError"]

#: Known reason codes and what they mean.
REASONS: dict[str, str] = {
    "no_data": "the frame holds no usable data (all NaN, all zero, constant, or a wrong shape)",
    "no_sources": "no source was detected (clouds, closed dome, wrong exposure)",
    "too_few_stars": "not enough stars for the measurement",
    "astrometry_failed": "the detections could not be matched to the reference catalog",
    "no_reference": "the reference catalog has no usable star in the field (or no magnitudes in the filter)",
    "photometry_failed": "no zero point could be measured",
    "psf_failed": "no PSF model could be built",
    "bad_input": "inconsistent inputs (shapes, units, missing arrays)",
}


class ReductionError(DataError):
    """A reduction stage cannot produce a result from these data.

    Parameters
    ----------
    reason : str
        One of :data:`REASONS`.
    message : str
        What was found, for humans.
    stage : str
        The stage that failed (``'background'``, ``'detect'``, ``'astrometry'`` …).
    """

    def __init__(self, reason: str, message: str, *, stage: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown reduction failure reason {reason!r}; known: {', '.join(REASONS)}")
        self.reason = reason
        self.stage = stage
        self.message = message
        super().__init__(f"[{stage or 'reduce'}: {reason}] {message}")
