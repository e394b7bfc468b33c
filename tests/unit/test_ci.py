"""Which runs count as CI (where skips of mandatory parts fail)."""

from __future__ import annotations

from corral.testing import on_ci


def test_ci_is_any_non_empty_ci_but_an_explicit_no() -> None:
    for value in ("true", "1", "yes", "True", "github"):
        assert on_ci({"CI": value}), value
    for value in ("", "0", "false", "no", " "):
        assert not on_ci({"CI": value}), value
    assert not on_ci({}) and on_ci({"CORRAL_TEST_REQUIRE_PG": "1"})
