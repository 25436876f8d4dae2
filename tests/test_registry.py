"""The registry every named kind uses."""
from __future__ import annotations

import pytest

from trainables.registry import Registry


def test_register_get_and_list():
    reg: Registry[type] = Registry("widget")

    @reg.register("b")
    class B:
        pass

    reg.add("a", int)
    assert reg.names() == ["a", "b"] and reg.get("b") is B and "a" in reg and "c" not in reg


def test_a_taken_name_is_refused_and_the_first_entry_kept():
    reg: Registry[object] = Registry("widget")
    reg.add("a", int)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.add("a", float)
    assert reg.get("a") is int


def test_unknown_name_lists_the_valid_ones_and_the_hint():
    reg: Registry[object] = Registry("label format", plural="formats")
    reg.add("x", 1)
    reg.add("y", 2)
    with pytest.raises(ValueError, match=r"^unknown label format 'z'; valid formats: x, y \(see the docs\)$"):
        reg.get("z", hint=" (see the docs)")
