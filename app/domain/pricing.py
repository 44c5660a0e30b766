"""Prices: integer micro-dollars per 1M trained tokens. The table is passed in (it is
`Settings.prices_micros_per_mtok`; the caller has the settings).

Rounding always favours the customer's budget: a price rounds up to the next micro-dollar
(we never undercharge by a fraction), and the tokens a budget buys round down, so
`price_micros(m, tokens_for_budget(m, b)) <= b` for every budget b."""

from __future__ import annotations

from collections.abc import Mapping

from app.domain.errors import InvalidRequest

MICROS_PER_USD = 1_000_000
TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are quoted per 1M trained tokens


def price_per_mtok(model: str, *, prices: Mapping[str, int]) -> int:
    """Micro-dollars per 1M trained tokens; InvalidRequest(model_not_found) for an unpriced
    model."""
    try:
        return int(prices[model])
    except KeyError:
        raise InvalidRequest(
            f"The model {model!r} does not exist or has no price.",
            code="model_not_found",
            param="model",
        ) from None


def price_micros(model: str, tokens: int, *, prices: Mapping[str, int]) -> int:
    """Price of `tokens` trained tokens on `model`, rounded up to a whole micro-dollar."""
    if tokens < 0:
        raise ValueError("tokens must be >= 0")
    rate = price_per_mtok(model, prices=prices)
    return -(-tokens * rate // TOKENS_PER_PRICE_UNIT)


def tokens_for_budget(model: str, micros: int, *, prices: Mapping[str, int]) -> int:
    """How many tokens `micros` buys on `model`, rounded down. A model priced at zero has no
    budget limit: ValueError (callers treat such a budget as unlimited)."""
    if micros < 0:
        raise ValueError("micros must be >= 0")
    rate = price_per_mtok(model, prices=prices)
    if rate <= 0:
        raise ValueError(f"model {model!r} is free; a budget does not limit its tokens")
    return micros * TOKENS_PER_PRICE_UNIT // rate


def format_usd(micros: int) -> str:
    """Exact decimal dollars, at least two places, no trailing zeros past them:
    1_234_567 -> "1.234567", 350_000 -> "0.35", 0 -> "0.00", -10_000 -> "-0.01"."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    digits = f"{frac:06d}".rstrip("0")
    return f"{sign}{whole}.{digits.ljust(2, '0')}"


def usd_to_micros(amount: str | int | float) -> int:
    """Parse a dollar amount ("12.5", "0.000001") exactly; more than 6 decimals is an error."""
    from decimal import Decimal, InvalidOperation

    try:
        value = Decimal(str(amount).strip().lstrip("$"))
    except InvalidOperation:
        raise ValueError(f"not a dollar amount: {amount!r}") from None
    micros = value * MICROS_PER_USD
    if not value.is_finite() or micros != micros.to_integral_value():
        raise ValueError(f"not a whole number of micro-dollars: {amount!r}")
    return int(micros)


def expected_duration_s(model: str, tokens: int, *, throughput: Mapping[str, int]) -> int:
    """Seconds to train `tokens` at the model's typical throughput
    (`Settings.throughput_tokens_per_s`), rounded up."""
    rate = max(1, int(throughput.get(model, 1_000)))
    return -(-max(0, tokens) // rate)
