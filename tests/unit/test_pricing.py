"""A price for every job (corral.pricing) checked against genai-prices itself,
and budget periods (corral.budgets)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from genai_prices import Usage, calc_price

from corral.budgets import Budget
from corral.config import provider_settings
from corral.executors.chat import OpenAISettings
from corral.pricing import PriceRef, Prices, Tokens, price, price_ref, tokens


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"prompt_tokens": 100, "completion_tokens": 20}, Tokens(100, 20)),
        (
            {
                "prompt_tokens": 100,
                "completion_tokens": 20,
                "prompt_tokens_details.cached_tokens": 60,
            },
            Tokens(100, 20, cache_read=60),
        ),
        (
            {
                "input_tokens": 10,
                "output_tokens": 5,
                "cache_read_input_tokens": 300,
                "cache_creation_input_tokens": 40,
            },
            Tokens(350, 5, cache_read=300, cache_write=40),
        ),
        (
            {"input_tokens": 500, "cached_input_tokens": 400, "output_tokens": 9},
            Tokens(500, 9, 400),
        ),
        ({"num_turns": 3}, Tokens()),
        (None, Tokens()),
    ],
    ids=["openai", "openai-cached", "anthropic", "codex", "no-tokens", "none"],
)
def test_tokens_of_each_shape(usage: dict[str, int] | None, expected: Tokens) -> None:
    assert tokens(usage) == expected


def _db(model: str, provider: str, **counts: int) -> float:
    return float(calc_price(Usage(**counts), model, provider_id=provider).total_price)


@pytest.mark.parametrize(
    ("usage", "model", "ref", "db"),
    [
        (
            {"prompt_tokens": 1200, "completion_tokens": 300},
            "gpt-4o",
            PriceRef(provider_id="openai"),
            {"input_tokens": 1200, "output_tokens": 300},
        ),
        (
            {
                "prompt_tokens": 5000,
                "completion_tokens": 80,
                "prompt_tokens_details.cached_tokens": 4096,
            },
            "gpt-4o-mini",
            PriceRef(provider_id="openai"),
            {"input_tokens": 5000, "output_tokens": 80, "cache_read_tokens": 4096},
        ),
        (
            {
                "input_tokens": 12,
                "output_tokens": 700,
                "cache_read_input_tokens": 20000,
                "cache_creation_input_tokens": 3000,
            },
            "claude-sonnet-4-5",
            PriceRef(provider_id="anthropic"),
            {
                "input_tokens": 23012,
                "output_tokens": 700,
                "cache_read_tokens": 20000,
                "cache_write_tokens": 3000,
            },
        ),
        (
            {"input_tokens": 900, "output_tokens": 100},
            "claude-haiku-4-5",
            PriceRef(provider_id="anthropic"),
            {"input_tokens": 900, "output_tokens": 100},
        ),
    ],
    ids=["gpt-4o", "gpt-4o-mini-cached", "claude-sonnet-4-5-cache", "claude-haiku-4-5"],
)
def test_estimates_match_genai_prices(
    usage: dict[str, int], model: str, ref: PriceRef, db: dict[str, int]
) -> None:
    cost, source = price(None, usage, model, ref)
    assert source == "estimated"
    assert cost is not None and cost > 0
    assert cost == pytest.approx(_db(model, str(ref.provider_id), **db), rel=1e-9)


def test_configured_prices_win_over_the_database() -> None:
    prices = Prices(input=2.0, output=8.0, cache_read=0.5)
    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 250_000, "cached_tokens": 400_000}
    cost, source = price(None, usage, "gpt-4o", PriceRef(prices=prices, provider_id="openai"))
    assert source == "configured"
    assert cost == pytest.approx((600_000 * 2.0 + 400_000 * 0.5 + 250_000 * 8.0) / 1e6)


def test_reported_cost_wins_and_unknown_stays_null() -> None:
    assert price(0.42, {"prompt_tokens": 10}, "gpt-4o", PriceRef(provider_id="openai")) == (
        0.42,
        "reported",
    )
    usage = {"prompt_tokens": 100, "completion_tokens": 10}
    # A self-hosted server: its URL matches no vendor of the database.
    local = price_ref(OpenAISettings(kind="openai", base_url="http://127.0.0.1:11434/v1"))
    assert price(None, usage, "llama3.2", local) == (None, "unknown")
    # Not even a model the database knows is guessed at a URL it does not know.
    assert price(None, usage, "gpt-4o", local) == (None, "unknown")
    assert price(None, usage, "no-such-model-x", PriceRef(provider_id="openai")) == (
        None,
        "unknown",
    )
    assert price(None, None, "gpt-4o", PriceRef(provider_id="openai")) == (None, "unknown")
    assert price(None, usage, None, PriceRef(provider_id="openai")) == (None, "unknown")


def test_price_ref_by_kind() -> None:
    assert price_ref(provider_settings({"kind": "claude-code"})).provider_id == "anthropic"
    assert price_ref(provider_settings({"kind": "codex"})).provider_id == "openai"
    assert price_ref(OpenAISettings(kind="openai")).provider_id == "openai"
    official = price_ref(OpenAISettings(kind="openai", base_url="https://api.openai.com/v1"))
    cost, source = price(None, {"prompt_tokens": 100, "completion_tokens": 10}, "gpt-4o", official)
    assert source == "estimated" and cost == pytest.approx(
        _db("gpt-4o", "openai", input_tokens=100, output_tokens=10)
    )


@pytest.mark.parametrize(
    ("period", "tz", "now", "start", "end"),
    [
        ("day", "UTC", "2026-12-02T19:00:00", "2026-12-02T00:00:00", "2026-12-03T00:00:00"),
        # 01:30 UTC is still the evening before in New York (UTC-5 in December).
        (
            "day",
            "America/New_York",
            "2026-12-02T01:30:00",
            "2026-12-01T05:00:00",
            "2026-12-02T05:00:00",
        ),
        ("week", "UTC", "2026-12-02T19:00:00", "2026-11-30T00:00:00", "2026-12-07T00:00:00"),
        ("month", "UTC", "2026-12-31T23:59:00", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
        # The month of a DST change: starts at UTC+1, ends at UTC+2.
        (
            "month",
            "Europe/Berlin",
            "2026-03-15T12:00:00",
            "2026-02-28T23:00:00",
            "2026-03-31T22:00:00",
        ),
    ],
)
def test_budget_windows(period: str, tz: str, now: str, start: str, end: str) -> None:
    b = Budget("b", "global", 10.0, period, tz)  # type: ignore[arg-type]
    at = datetime.fromisoformat(now).replace(tzinfo=UTC)
    assert b.window(at) == (
        datetime.fromisoformat(start).replace(tzinfo=UTC),
        datetime.fromisoformat(end).replace(tzinfo=UTC),
    )


def test_budget_levels_and_scope() -> None:
    b = Budget("b", "label:team", 10.0)
    assert [b.level(x) for x in (0, 7.99, 8.0, 9.99, 10.0, 50)] == [0, 0, 80, 80, 100, 100]
    assert b.hard(10.0) and not b.hard(9.99)
    assert not Budget("w", "global", 10.0, action="warn").hard(100)
    assert b.covers("any", ["x", "team"]) and not b.covers("any", ["teams"])
    assert Budget("p", "provider:gpu", 1).covers("gpu", []) and not Budget(
        "p", "provider:gpu", 1
    ).covers("cpu", [])
