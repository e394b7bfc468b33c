"""A price for every job: the cost an executor reported, else one computed from
the job's token usage with the provider's configured prices
(``[providers.X.prices]``), else one estimated with ``genai-prices`` (the
maintained price database), else unknown (None: never a guess).

Configured prices come before the database: they are the override for a
self-hosted model (the database knows no price for it) or a negotiated rate.

Executors name their token counts differently; ``tokens()`` reads each shape:

- OpenAI chat: ``prompt_tokens`` (cached ones included, also in
  ``prompt_tokens_details.cached_tokens``), ``completion_tokens``;
- Anthropic (and Claude Code): ``input_tokens`` (not cached),
  ``cache_creation_input_tokens``, ``cache_read_input_tokens``, ``output_tokens``;
- Codex: ``input_tokens`` (cached included), ``cached_input_tokens``, ``output_tokens``.

``genai-prices`` is imported on the first estimate (~0.3 s; its database is
read once, ~40 ms); a lookup after that takes tens of microseconds."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

CostSource = Literal["reported", "configured", "estimated", "unknown"]


class Prices(BaseModel):
    """USD per million tokens (``[providers.NAME.prices]``)."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0, allow_inf_nan=False, description="Per million input tokens.")
    output: float = Field(ge=0, allow_inf_nan=False, description="Per million output tokens.")
    cache_read: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="Per million cached input tokens read (default: the input price).",
    )
    cache_write: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="Per million input tokens written to the cache (default: the input price).",
    )


@dataclass(frozen=True, slots=True)
class Tokens:
    """Token counts in one shape: ``input`` includes the cached ones."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0

    @property
    def any(self) -> bool:
        return bool(self.input or self.output)


def _int(usage: Mapping[str, Any], *names: str) -> int:
    for name in names:
        value = usage.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return int(value)
    return 0


def tokens(usage: Mapping[str, Any] | None) -> Tokens:
    """The token counts of a job's ``usage``, whatever the executor named them."""
    if not usage:
        return Tokens()
    output = _int(usage, "output_tokens", "completion_tokens")
    if "prompt_tokens" in usage:
        cached = _int(usage, "prompt_tokens_details.cached_tokens", "cached_tokens")
        return Tokens(input=_int(usage, "prompt_tokens"), output=output, cache_read=cached)
    read = _int(usage, "cache_read_input_tokens")
    write = _int(usage, "cache_creation_input_tokens")
    if read or write or "cache_read_input_tokens" in usage:
        # Anthropic's input_tokens are the uncached ones only.
        total = _int(usage, "input_tokens") + read + write
        return Tokens(input=total, output=output, cache_read=read, cache_write=write)
    cached = _int(usage, "cached_input_tokens")
    return Tokens(input=_int(usage, "input_tokens"), output=output, cache_read=cached)


@dataclass(frozen=True, slots=True)
class PriceRef:
    """What prices one provider's jobs: its configured prices, its default
    model, and how to find it in the price database (a provider id, or the
    API URL it serves, matched against the database's providers)."""

    prices: Prices | None = None
    model: str | None = None
    provider_id: str | None = None
    api_url: str | None = None


# The price database's provider of each executor kind with a fixed vendor.
VENDOR = {"anthropic": "anthropic", "claude-code": "anthropic", "codex": "openai"}


def price_ref(settings: Any) -> PriceRef:
    """How the jobs of a provider (its ``ProviderSettings``) are priced when
    it reports no cost: its configured prices, else the price database, by its
    kind's vendor or by the API URL it serves. An OpenAI-compatible server
    elsewhere (Ollama, vLLM, OpenRouter...) is known by its URL only: one the
    database does not know prices nothing."""
    kind = str(settings.kind)
    vendor = VENDOR.get(kind)
    url = getattr(settings, "base_url", None)
    if kind == "openai" and not url:
        vendor = "openai"  # no base_url: OpenAI's own
    return PriceRef(
        prices=getattr(settings, "prices", None),
        model=getattr(settings, "model", None),
        provider_id=vendor,
        api_url=url if vendor is None else None,
    )


def configured(t: Tokens, prices: Prices) -> float:
    plain = max(0, t.input - t.cache_read - t.cache_write)
    read = prices.input if prices.cache_read is None else prices.cache_read
    write = prices.input if prices.cache_write is None else prices.cache_write
    return (
        plain * prices.input
        + t.cache_read * read
        + t.cache_write * write
        + t.output * prices.output
    ) / 1_000_000


def estimated(t: Tokens, model: str, ref: PriceRef) -> float | None:
    """The price database's price, or None when it knows no such model (or
    no provider serving it at ``ref``'s API URL)."""
    try:
        from genai_prices import Usage, calc_price
    except ImportError:  # pragma: no cover - a dependency; a broken install prices nothing
        return None
    usage = Usage(
        input_tokens=t.input,
        output_tokens=t.output,
        cache_read_tokens=t.cache_read,
        cache_write_tokens=t.cache_write,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if ref.provider_id is not None:
                calc = calc_price(usage, model, provider_id=ref.provider_id)
            elif ref.api_url is not None:
                calc = calc_price(usage, model, provider_api_url=ref.api_url)
            else:
                calc = calc_price(usage, model)
    except (LookupError, ValueError):
        return None
    return float(calc.total_price)


def price(
    cost: float | None, usage: Mapping[str, Any] | None, model: str | None, ref: PriceRef | None
) -> tuple[float | None, CostSource]:
    """The cost of a run and where it came from."""
    if cost is not None:
        return cost, "reported"
    t = tokens(usage)
    if not t.any:
        return None, "unknown"
    ref = ref or PriceRef()
    if ref.prices is not None:
        return round(configured(t, ref.prices), 10), "configured"
    model = model or ref.model
    if not model:
        return None, "unknown"
    found = estimated(t, model, ref)
    return (None, "unknown") if found is None else (round(found, 10), "estimated")


@lru_cache(maxsize=1)
def warm() -> bool:
    """Load the price database (call off the event loop, once, at start)."""
    return (
        estimated(Tokens(input=1, output=1), "gpt-4o", PriceRef(provider_id="openai")) is not None
    )
