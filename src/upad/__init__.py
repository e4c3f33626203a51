"""upad: survey data processing and archive system.

The data flow is the package layout::

    ingest -> calib -> reduce -> coadd -> catalog -> release -> serve

with ``db`` (the process database), ``flow`` (what runs next), ``execution``
(where it runs), ``io``, ``sim`` (the survey simulator) and ``cli``.
"""
from __future__ import annotations

from upad._offline import configure_offline

__version__ = "0.1.0"

configure_offline()

__all__ = ["__version__"]
