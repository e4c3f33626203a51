"""The mask-bit table: one definition, used everywhere, documented."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from upad import maskbits as mb

DOC = Path(__file__).resolve().parents[2] / "docs" / "mask-bits.md"


def test_bits_are_unique_and_fit_a_signed_16_bit_plane():
    bits = [b.bit for b in mb.BITS]
    assert len(set(bits)) == len(bits)
    assert max(bits) < 15
    assert len({b.name for b in mb.BITS}) == len(bits)
    assert np.dtype(mb.MASK_DTYPE) == np.int16
    for b in mb.BITS:
        assert getattr(mb, b.name) == 1 << b.bit


def test_value_and_names_round_trip():
    v = mb.value("COSMIC", "satellite", ["BAD"])
    assert v == mb.COSMIC | mb.SATELLITE | mb.BAD
    assert mb.names(v) == ["BAD", "COSMIC", "SATELLITE"]
    with pytest.raises(KeyError, match="known"):
        mb.value("NOPE")


def test_header_cards_describe_the_plane_and_read_back():
    h = fits.Header()
    for k, (bit, doc) in mb.header_cards().items():
        h[k if len(k) <= 8 else f"HIERARCH {k}"] = (bit, doc)
    back = mb.from_header(h)
    assert back == {b.name: b.value for b in mb.BITS}


def test_summary_counts_every_bit():
    m = mb.new_mask((20, 30))
    m[0, :5] = mb.BAD
    m[1, :3] = mb.COSMIC | mb.INTERPOLATED
    assert mb.summary(m) == {"BAD": 5, "COSMIC": 3, "INTERPOLATED": 3}
    from upad.reduce._maskops import count_bits

    counts, unusable = count_bits(m)
    assert counts == mb.summary(m)
    assert unusable == 8


def test_every_bit_is_documented():
    text = DOC.read_text()
    for b in mb.BITS:
        assert f"`{b.name}`" in text, b.name
        assert f"| {b.bit} " in text or f"|{b.bit}|" in text
