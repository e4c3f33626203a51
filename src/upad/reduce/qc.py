"""Quality control of a reduced frame: configurable thresholds → a quality flag and its reasons.

Each check compares one measured value with its threshold; a failed check sets its bit in ``flag`` and adds a
reason (``"fwhm 2.31 arcsec > 2.00"``). ``status`` is ``'good'`` when no check failed, ``'bad'`` otherwise, and
``'failed'`` when the reduction itself could not finish (``failure`` says why; see
:class:`~upad.reduce.errors.ReductionError`). A check whose value is missing (e.g. no zero point) is skipped,
unless the stage failed.

=====  ==================  =================================================================================
bit    check               value (threshold parameter)
=====  ==================  =================================================================================
1      ``FWHM``            median PSF FWHM in arcsec (``max_fwhm_arcsec``)
2      ``ELLIPTICITY``     median PSF ellipticity 1 - b/a (``max_ellipticity``)
4      ``SKY``             sky brightness in mag/arcsec^2 (``min_sky_mag``: brighter skies fail)
8      ``TRANSPARENCY``    zero point below the nominal one by more than ``max_zp_loss_mag``
16     ``ASTROMETRY``      astrometric rms in arcsec (``max_astrometric_rms_arcsec``)
32     ``NSTARS``          stars matched to the reference catalog (``min_matched_stars``)
64     ``MASKED``          fraction of unusable pixels (``max_masked_fraction``)
128    ``FAILED``          a reduction stage failed
256    ``PHOTCAL``         no usable photometric reference: nominal zero point (a warning, :mod:`~upad.reduce.photcal`)
=====  ==================  =================================================================================
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from upad.config import StepConfig, param

__all__ = ["QcConfig", "QcResult", "QC_BITS", "evaluate_qc"]

QC_BITS = {"FWHM": 1, "ELLIPTICITY": 2, "SKY": 4, "TRANSPARENCY": 8, "ASTROMETRY": 16, "NSTARS": 32, "MASKED": 64,
           "FAILED": 128, "PHOTCAL": 256}


@dataclass(frozen=True)
class QcConfig(StepConfig):
    """QC thresholds of a reduced frame."""

    max_fwhm_arcsec: float = param(2.0, doc="worst acceptable seeing (PSF FWHM)", bounds=(0.0, None), unit="arcsec")
    max_ellipticity: float = param(0.2, doc="most elongated acceptable PSF (1 - b/a)", bounds=(0.0, 1.0))
    min_sky_mag: float = param(17.0, doc="brightest acceptable sky (mag/arcsec^2; e.g. twilight, moon)",
                               bounds=(None, None), unit="mag/arcsec2")
    max_zp_loss_mag: float = param(0.5, doc="largest acceptable loss of transparency (nominal zero point minus "
                                            "the measured one)", bounds=(0.0, None), unit="mag")
    max_astrometric_rms_arcsec: float = param(0.15, doc="largest acceptable astrometric rms", bounds=(0.0, None),
                                              unit="arcsec")
    min_matched_stars: int = param(10, doc="fewest stars matched to the reference catalog", bounds=(0, None))
    max_masked_fraction: float = param(0.05, doc="largest acceptable fraction of unusable pixels",
                                       bounds=(0.0, 1.0))


@dataclass
class QcResult:
    """The QC verdict.

    Attributes
    ----------
    status : str
        ``'good'``, ``'bad'`` or ``'failed'``.
    flag : int
        OR of :data:`QC_BITS` of the failed checks.
    reasons : list of str
        One line per failed check (and the failure).
    values : dict
        The values checked.
    failure : str or None
        Reason code of a failed stage (``ReductionError.reason``).
    """

    status: str
    flag: int
    reasons: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "good"


def evaluate_qc(*, fwhm_arcsec: float | None = None, ellipticity: float | None = None,
                sky_mag_arcsec2: float | None = None, zp_e: float | None = None,
                nominal_zp_e: float | None = None, astrometric_rms_arcsec: float | None = None,
                n_matched: int | None = None, masked_fraction: float | None = None,
                failure: tuple[str, str] | None = None, config: QcConfig = QcConfig()) -> QcResult:
    """Apply the QC thresholds.

    Parameters
    ----------
    fwhm_arcsec, ellipticity : float, optional
        PSF FWHM and ellipticity.
    sky_mag_arcsec2 : float, optional
        Sky surface brightness.
    zp_e, nominal_zp_e : float, optional
        Measured and nominal (photometric-night) zero points for 1 e-/s; their difference is the transparency loss.
    astrometric_rms_arcsec : float, optional
    n_matched : int, optional
        Stars matched in the astrometry.
    masked_fraction : float, optional
        Fraction of unusable pixels.
    failure : (reason, message), optional
        A stage that failed.
    config : QcConfig

    Returns
    -------
    QcResult
    """
    flag = 0
    reasons: list[str] = []
    values: dict[str, Any] = {"fwhm_arcsec": fwhm_arcsec, "ellipticity": ellipticity,
                              "sky_mag_arcsec2": sky_mag_arcsec2, "zp_e": zp_e, "nominal_zp_e": nominal_zp_e,
                              "astrometric_rms_arcsec": astrometric_rms_arcsec, "n_matched": n_matched,
                              "masked_fraction": masked_fraction}

    def fail(bit: str, text: str) -> None:
        nonlocal flag
        flag |= QC_BITS[bit]
        reasons.append(text)

    if fwhm_arcsec is not None and fwhm_arcsec > config.max_fwhm_arcsec:
        fail("FWHM", f"fwhm {fwhm_arcsec:.2f} arcsec > {config.max_fwhm_arcsec:.2f}")
    if ellipticity is not None and ellipticity > config.max_ellipticity:
        fail("ELLIPTICITY", f"ellipticity {ellipticity:.3f} > {config.max_ellipticity:.3f}")
    if sky_mag_arcsec2 is not None and sky_mag_arcsec2 < config.min_sky_mag:
        fail("SKY", f"sky {sky_mag_arcsec2:.2f} mag/arcsec2 brighter than {config.min_sky_mag:.2f}")
    if zp_e is not None and nominal_zp_e is not None:
        loss = nominal_zp_e - zp_e
        values["zp_loss_mag"] = loss
        if loss > config.max_zp_loss_mag:
            fail("TRANSPARENCY", f"zero point {zp_e:.3f} is {loss:.2f} mag below the nominal {nominal_zp_e:.3f}")
    if astrometric_rms_arcsec is not None and astrometric_rms_arcsec > config.max_astrometric_rms_arcsec:
        fail("ASTROMETRY", f"astrometric rms {astrometric_rms_arcsec:.3f} arcsec > "
                           f"{config.max_astrometric_rms_arcsec:.3f}")
    if n_matched is not None and n_matched < config.min_matched_stars:
        fail("NSTARS", f"{n_matched} matched stars < {config.min_matched_stars}")
    if masked_fraction is not None and masked_fraction > config.max_masked_fraction:
        fail("MASKED", f"{masked_fraction:.1%} of the pixels masked > {config.max_masked_fraction:.1%}")
    code = None
    if failure is not None:
        code, message = failure
        fail("FAILED", f"{code}: {message}")
    status = "failed" if failure is not None else ("good" if flag == 0 else "bad")
    return QcResult(status=status, flag=flag, reasons=reasons, values=values, failure=code)
