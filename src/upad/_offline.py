"""Keep astropy from reaching the network at run time.

upad runs at observatories and in CI where nothing may be downloaded while
processing: the IERS tables shipped with ``astropy-iers-data`` are used as they
are, and any attempt to download data fails fast instead of hanging.
"""
from __future__ import annotations


def configure_offline() -> None:
    """Disable astropy's automatic downloads (IERS tables, remote data)."""
    try:
        from astropy.utils import iers
        from astropy.utils.data import conf as data_conf
    except ImportError:  # pragma: no cover - astropy is a hard dependency
        return
    iers.conf.auto_download = False
    iers.conf.auto_max_age = 36500
    data_conf.allow_internet = False
