"""Prices, budgets and the "auto" epoch rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain.errors import InvalidRequest
from app.domain.hyperparameters import auto_batch_size, auto_epochs
from app.domain.job_settings import resolve_job_settings
from app.domain.pricing import format_usd, price_micros, tokens_for_budget, usd_to_micros
from app.settings import Settings

PRICES = {"a": 200_000, "b": 333_333, "free": 0}


def test_price_rounds_up_to_a_micro_dollar() -> None:
    assert price_micros("a", 1_000_000, prices=PRICES) == 200_000
    assert price_micros("a", 1, prices=PRICES) == 1  # 0.2 micro-dollars rounds up
    assert price_micros("a", 5, prices=PRICES) == 1
    assert price_micros("a", 6, prices=PRICES) == 2
    assert price_micros("a", 0, prices=PRICES) == 0


def test_the_settings_price_list() -> None:
    prices = Settings().prices_micros_per_mtok
    assert price_micros("tinyllama-1.1b-chat", 3_000_000, prices=prices) == 600_000
    with pytest.raises(InvalidRequest) as info:
        price_micros("no-such-model", 10, prices=prices)
    assert info.value.code == "model_not_found"


def test_tokens_for_budget_rounds_down() -> None:
    assert tokens_for_budget("a", 200_000, prices=PRICES) == 1_000_000
    assert tokens_for_budget("a", 1, prices=PRICES) == 5
    assert tokens_for_budget("b", 1, prices=PRICES) == 3
    with pytest.raises(ValueError):
        tokens_for_budget("free", 100, prices=PRICES)


@given(st.sampled_from(["a", "b"]), st.integers(0, 10**12))
def test_budget_never_buys_more_than_it_pays_for(model: str, budget: int) -> None:
    tokens = tokens_for_budget(model, budget, prices=PRICES)
    assert price_micros(model, tokens, prices=PRICES) <= budget
    assert price_micros(model, tokens + 1, prices=PRICES) > budget or PRICES[model] == 0


@pytest.mark.parametrize(
    ("micros", "text"),
    [(0, "0.00"), (1, "0.000001"), (350_000, "0.35"), (1_234_567, "1.234567"),
     (12_000_000, "12.00"), (-10_000, "-0.01")],
)
def test_format_usd(micros: int, text: str) -> None:
    assert format_usd(micros) == text


@given(st.integers(-(10**15), 10**15))
def test_usd_round_trip(micros: int) -> None:
    assert usd_to_micros(format_usd(micros)) == micros


def test_usd_parse_rejects_fractions_of_a_micro() -> None:
    assert usd_to_micros("$12.5") == 12_500_000
    with pytest.raises(ValueError):
        usd_to_micros("0.0000001")
    with pytest.raises(ValueError):
        usd_to_micros("ten")


def test_auto_epochs() -> None:
    assert auto_epochs(1000) == 3
    assert auto_epochs(10) == 10  # tiny files get more passes
    assert auto_epochs(1) == 25  # ...up to the cap
    assert auto_epochs(20_000) == 1  # huge files fewer
    assert auto_batch_size(100) == 1 and auto_batch_size(5000) == 10
    assert auto_batch_size(10**6) == 32

    def epochs(requested: object, examples: int) -> int:
        settings = resolve_job_settings(hyperparameters={"n_epochs": requested}, adapter=None,
                                        example_count=examples)
        return settings.hyperparameters.n_epochs

    assert epochs("auto", 10) == 10 and epochs(None, 1000) == 3 and epochs(7, 10) == 7
