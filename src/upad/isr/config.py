"""The ISR's configuration: one nested table shared by every step that removes the instrument signature.

Every master step (:class:`upad.calib.config.MasterConfigBase`) and the reduction step
(:class:`upad.reduce.steps.ReduceConfig`) hold one field ``isr: IsrConfig``, so that science frames are processed
exactly as the masters they are calibrated with. In ``<root>/upad.toml`` it is one table, e.g.::

    [isr]
    overscan = "rows"
    overscan_smooth = 15

What the steps decide themselves (ADU or electrons, whether a bias frame is linearised) is passed to
:meth:`IsrConfig.options`, which gives the :class:`~upad.isr.core.IsrOptions` of :func:`~upad.isr.core.run_isr`.
"""
from __future__ import annotations

from dataclasses import dataclass

from upad.config import StepConfig, param
from upad.isr.core import ENGINES, OVERSCAN_METHODS, IsrOptions

__all__ = ["IsrConfig"]


@dataclass(frozen=True)
class IsrConfig(StepConfig):
    """Parameters of the instrument-signature removal (overscan, non-linearity, saturation, engine)."""

    overscan: str = param("poly", doc="Overscan estimator: 'poly' (Legendre fit along the rows), 'rows' (row-wise "
                                      "median, smoothed), 'mean' (one constant) or 'none'", choices=OVERSCAN_METHODS)
    overscan_order: int = param(3, doc="Order of the overscan polynomial ('poly')", bounds=(0, 10))
    overscan_smooth: int = param(31, doc="Running-mean window of the row-wise overscan ('rows')", bounds=(1, 1001),
                                 unit="row")
    overscan_skip: int = param(1, doc="Serial-overscan columns next to the data that are ignored", bounds=(0, 100),
                               unit="column")
    linearize: bool = param(True, doc="Correct the non-linearity with the instrument file's [c2, c3]")
    saturation_adu: float | None = param(None, doc="Raw level at or above which a pixel is saturated (unset: the "
                                                   "instrument's ADC maximum)", bounds=(0, None), unit="ADU")
    engine: str = param("auto", doc="Pixel arithmetic: 'numba' (one compiled pass), 'numpy' (the reference "
                                    "primitives) or 'auto' (numba when installed); the results agree to float32 "
                                    "rounding", choices=ENGINES, critical=False)
    overscan_parallel: bool = param(False, doc="Also subtract the column profile of the parallel overscan, where "
                                               "the raw layout has one (per-frame column offsets of the bias)")
    crosstalk_flag_adu: float = param(2.0, doc="Pixels whose crosstalk correction (measured instrument signature) "
                                               "is at least this are flagged CROSSTALK", bounds=(0, None), unit="ADU")

    def options(self, *, to_electrons: bool = True, linearize: bool | None = None) -> IsrOptions:
        """The :class:`~upad.isr.core.IsrOptions` of this configuration.

        Parameters
        ----------
        to_electrons : bool
            Multiply by the gains (masters in electrons, science frames); ``False`` for a master bias (ADU).
        linearize : bool, optional
            Override :attr:`linearize` (a bias frame is never linearised); default the configuration's.
        """
        return IsrOptions(overscan=self.overscan, overscan_order=self.overscan_order,
                          overscan_smooth=self.overscan_smooth, overscan_skip=self.overscan_skip,
                          linearize=self.linearize if linearize is None else linearize, to_electrons=to_electrons,
                          saturation_adu=self.saturation_adu, engine=self.engine,
                          crosstalk_flag_adu=self.crosstalk_flag_adu, overscan_parallel=self.overscan_parallel)
