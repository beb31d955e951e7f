from __future__ import annotations

import pytest

from trainpipe.errors import ConfigError
from trainpipe.registry import FAMILIES, Registry


def test_register_build_and_describe() -> None:
    reg = Registry("widget")

    @reg.register("double")
    def double(x: int, /, *, factor: int = 2) -> int:
        """Multiplies by a factor.

        More text that is not part of the description."""
        return x * factor

    assert reg.names() == ["double"]
    assert reg.build("double", 3, factor=5) == 15
    assert reg.describe() == [("double", "Multiplies by a factor.")]
    assert list(reg.get("double").options()) == ["factor"]


def test_unknown_name_lists_choices_and_suggests() -> None:
    reg = Registry("widget")
    for name in ("cosine", "constant"):
        reg.register(name)(lambda: None)
    with pytest.raises(ConfigError) as e:
        reg.get("cosin", key="sched.name")
    msg = str(e.value)
    assert msg.startswith("sched.name: unknown widget 'cosin'; did you mean cosine?")
    assert "constant" in msg and "cosine" in msg


def test_duplicate_registration_is_refused() -> None:
    reg = Registry("widget")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError):
        reg.register("a")(lambda: 2)


def test_fallback_resolves_unlisted_names() -> None:
    from trainpipe.registry import Entry

    reg = Registry("widget")

    @reg.register_fallback(names=lambda: ["xylophone", "yodel"], hint="Any name starting with x works too.")
    def resolve(n: str) -> Entry | None:
        return Entry(n, lambda: n.upper(), "dynamic") if n.startswith("x") else None

    assert reg.build("xyz") == "XYZ"
    assert "xyz" in reg and "abc" not in reg
    with pytest.raises(ConfigError, match=r"unknown widget 'yodl'; did you mean yodel\?.*starting with x"):
        reg.get("yodl")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_has_described_entries(family: str) -> None:
    reg = FAMILIES[family]
    assert reg.names(), f"no {family} registered"
    for name, desc in reg.describe():
        assert desc, f"{family} {name} has no one-line description"
