"""The bundle says what each part is: model cards in the bundle and in lora/, the CRMA note
in adapter_config.json (plain peft still loads the LoRA, and warns naming the key), and a
warning where our code sees the CRMA half dropped."""

import json
import shutil
import warnings

import pytest
import torch

from crma_core import CRMAConfig, LoraSettings, Recipe, TrainConfig
from crma_core.artifacts import (CRMA_NOTE_KEY, CRMADroppedWarning, crma_dropped,
                                 peft_ignoring_crma_note, warn_if_crma_dropped)


def _bundle(model_dir, chat_files, out, *, crma):
    recipe = Recipe(model_dir=model_dir, train_file=chat_files[0],
                    validation_file=chat_files[1], crma=crma, lora=LoraSettings(r=4, alpha=8),
                    train=TrainConfig(epochs=1, batch_size=4, max_seq_len=128, lr_main=1e-2,
                                      lr_rw=1e-2, lr_mix=5e-2))
    recipe.setup()
    try:
        result = recipe.train()
        manifest = recipe.export_artifacts(out)
    finally:
        recipe.cleanup()
    return result, manifest


def test_crma_bundle_cards_and_note(tiny_model_dirs, chat_files, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "bundle"
    result, manifest = _bundle(tiny_model_dirs["llama"], chat_files, out, crma=CRMAConfig())
    names = {f["name"] for f in manifest["files"]}
    assert {"README.md", "lora/README.md"} <= names
    card = (out / "README.md").read_text()
    lora_card = (out / "lora" / "README.md").read_text()
    for text in (card, lora_card):
        assert "The LoRA alone is not the trained model" in text
        assert "load_for_generation" in text
        assert f"{result.full_valid_loss:.4f}" in text
        assert f"{result.full_valid_loss_lora_only:.4f}" in text
    assert f"{result.steps} optimizer steps" in card and "crma.safetensors" in card
    assert result.full_valid_loss != result.full_valid_loss_lora_only

    config = json.loads((out / "lora" / "adapter_config.json").read_text())
    note = config[CRMA_NOTE_KEY]
    assert note["weights"] == "../crma.safetensors"
    assert note["full_valid_loss_lora_only"] == result.full_valid_loss_lora_only
    assert "not the trained model" in note["note"]

    # Plain peft still loads the LoRA, warning that it ignores the key it does not know.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"], local_files_only=True)
    with pytest.warns(UserWarning, match=r"Unexpected keyword arguments \['crma'\]"):
        model = PeftModel.from_pretrained(base, out / "lora")
    assert any("lora_A" in n for n, _ in model.named_parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with peft_ignoring_crma_note():
            base = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"],
                                                        local_files_only=True)
            PeftModel.from_pretrained(base, out / "lora")

    # Our code warns where it can see the CRMA half being left out.
    assert crma_dropped(out / "lora", out) is None
    message = crma_dropped(out / "lora", None)
    assert "not the trained model" in message and f"{result.full_valid_loss:.4f}" in message
    alone = tmp_path / "lora-alone"
    shutil.copytree(out / "lora", alone / "lora")
    with pytest.warns(CRMADroppedWarning, match="CRMA"):
        warn_if_crma_dropped(alone / "lora", alone)


def test_lora_only_bundle_has_a_plain_card_and_no_note(tiny_model_dirs, chat_files, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "bundle"
    _bundle(tiny_model_dirs["mistral"], chat_files, out, crma=None)
    card = (out / "README.md").read_text()
    assert "not the trained model" not in card and "PeftModel.from_pretrained" in card
    config = json.loads((out / "lora" / "adapter_config.json").read_text())
    assert CRMA_NOTE_KEY not in config
    assert crma_dropped(out / "lora", None) is None
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["mistral"], local_files_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model = PeftModel.from_pretrained(base, out / "lora")
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert model(ids).logits.shape[-1] == base.config.vocab_size


def test_loader_warns_when_the_bundle_lost_its_crma_half(tiny_model_dirs, chat_files, tmp_path):
    from crma_core.loader import load_for_generation
    from crma_core.model import get_crma

    out = tmp_path / "bundle"
    _bundle(tiny_model_dirs["llama"], chat_files, out, crma=CRMAConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the whole bundle: no warning at all
        model, _ = load_for_generation(tiny_model_dirs["llama"], out)
    assert get_crma(model) is not None
    (out / "crma.safetensors").unlink()
    (out / "crma_config.json").unlink()
    with pytest.warns(CRMADroppedWarning, match="not the trained model"):
        model, _ = load_for_generation(tiny_model_dirs["llama"], out)
    assert get_crma(model) is None
