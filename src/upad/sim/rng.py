"""Deterministic random streams.

Every random draw of the simulator comes from a generator keyed by ``(seed, *key)``
(a :class:`numpy.random.SeedSequence` spawn key), so a frame, a band of rows or the
camera's fixed patterns can be generated alone, in any order and in any process, and
always come out the same.
"""
from __future__ import annotations

import zlib

import numpy as np

# Top-level stream names (first element of every key).
CAMERA = 1
SKY = 2
NIGHT = 3
FRAME = 4
REFCAT = 5


def key_of(text: str) -> int:
    """A stable integer for a text key (e.g. a filter name)."""
    return zlib.crc32(text.encode())


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """Generator for the stream ``key`` of simulation ``seed``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in key))))
