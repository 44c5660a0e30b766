import dataclasses

import pytest

from crma_core.catalog import CATALOG, count_parameters, get_model


def test_catalog_ids():
    assert set(CATALOG) == {"smollm2-135m-instruct", "tinyllama-1.1b-chat", "mistral-7b-v0.3",
                            "gemma-2-2b-it"}
    assert {m.id for m in CATALOG.values() if m.free_tier} == {"smollm2-135m-instruct",
                                                               "tinyllama-1.1b-chat"}


@pytest.mark.parametrize("model_id", sorted(CATALOG))
def test_parameter_counts_match_architecture(model_id):
    model = get_model(model_id)
    assert count_parameters(model) == model.parameters


def test_published_figures():
    assert get_model("tinyllama-1.1b-chat").parameters == 1_100_048_384
    assert get_model("mistral-7b-v0.3").context_length == 32768
    assert get_model("mistral-7b-v0.3").crma_parameters() == 1_049_120
    assert get_model("tinyllama-1.1b-chat").crma_parameters() == 360_822
    assert get_model("gemma-2-2b-it").family == "gemma2"


def test_unknown_id_and_frozen():
    with pytest.raises(KeyError):
        get_model("gpt-5")
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_model("gemma-2-2b-it").free_tier = True
