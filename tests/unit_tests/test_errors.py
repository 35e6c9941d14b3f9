"""Echoed values are excerpts: one line stays one readable line whatever the value."""
from __future__ import annotations

import time

from seltrain.errors import MESSAGE_CHARS, excerpt, one_line


def test_short_values_are_their_repr():
    assert excerpt(0.5) == "0.5" and excerpt("abc") == "'abc'" and excerpt([1, 2]) == "[1, 2]"
    assert excerpt({"x": [1, 2]}) == "{'x': [1, 2]}"


def test_long_and_huge_values_are_cut_without_building_them():
    assert excerpt("a" * 10_000).endswith("... (cut)") and len(excerpt("a" * 10_000)) < 100
    nested = ["lol"] * 9
    for _ in range(40):  # 9^41 leaves, shared: its full repr could never be built
        nested = [nested] * 9
    t0 = time.perf_counter()
    text = excerpt(nested)
    assert time.perf_counter() - t0 < 0.5 and len(text) < 100 and text.endswith("(cut)")


def test_messages_are_capped():
    text = one_line(ValueError("x" * (MESSAGE_CHARS * 3)))
    assert len(text) < MESSAGE_CHARS + 60 and text.endswith("characters cut)")
