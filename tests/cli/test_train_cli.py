"""`crma train`: a flag for every knob (defaults from crma_core/settings.py only), flags reach
the configs, and a run on a tiny model writes a bundle and prints its result."""

import dataclasses
import json

import pytest

from crma_cli.main import build_parser, main
from crma_cli.train import CRMA_FLAGS, LORA_FLAGS, TRAIN_FLAGS, configs_from_args
from crma_core.config import CRMAConfig
from crma_core.errors import ConfigError
from crma_core.settings import LoraSettings, TrainConfig


def _parse(*argv):
    return build_parser("train").parse_args(["train", "--model", "m", "--data", "d.jsonl",
                                             "--out", "o", *argv])


def test_help_lists_every_knob(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    flagged = {name for _, name, _, _ in TRAIN_FLAGS}
    assert flagged == {f.name for f in dataclasses.fields(TrainConfig)}
    lora_flagged = {name for _, name, _, _ in LORA_FLAGS} | {"quantization"}  # --qlora
    assert lora_flagged == {f.name for f in dataclasses.fields(LoraSettings)}
    crma_fields = {f.name for f in dataclasses.fields(CRMAConfig)}
    assert {name for _, name, _, _ in CRMA_FLAGS} <= crma_fields
    for flag, name, _, _ in TRAIN_FLAGS + LORA_FLAGS + CRMA_FLAGS:
        assert flag in text, flag
    for flag in ("--qlora", "--no-crma", "--learning-rate", "--lr-scheduler", "--no-packing"):
        assert flag in text
    assert f"(default: {TrainConfig.lr_main})" in text and "(default: all-linear)" in text


def test_no_flags_keep_the_dataclass_defaults():
    train, lora, crma = configs_from_args(_parse())
    assert (train, lora, crma) == (TrainConfig(), LoraSettings(), CRMAConfig())


def test_flags_reach_the_configs():
    args = _parse("--batch-size", "64", "--micro-batch-size", "8", "--memory-budget-mb", "900",
                  "--learning-rate", "1e-4", "--lr-scheduler", "cosine", "--warmup-ratio", "0.1",
                  "--weight-decay", "0", "--clip", "none", "--packing", "--train-on-inputs",
                  "--n-evals", "5", "--n-checkpoints", "2", "--checkpoint-dir", "ck",
                  "--lora-r", "8", "--lora-alpha", "16", "--lora-dropout", "0.05",
                  "--lora-target-modules", "q_proj, v_proj", "--n-streams", "2", "--no-crma")
    train, lora, crma = configs_from_args(args)
    assert (train.batch_size, train.micro_batch_size, train.memory_budget_mb) == (64, 8, 900)
    assert (train.lr_main, train.lr_schedule, train.warmup_ratio) == (1e-4, "cosine", 0.1)
    assert (train.weight_decay, train.clip, train.packing, train.train_on_inputs) == (
        0.0, "none", True, True)
    assert (train.n_evals, train.n_checkpoints) == (5, 2)
    assert lora == LoraSettings(r=8, alpha=16, dropout=0.05, target_modules=("q_proj", "v_proj"))
    assert crma is None
    _, _, crma = configs_from_args(_parse("--n-streams", "2", "--stream-rank", "2"))
    assert (crma.n, crma.r) == (2, 2)


def test_bad_combinations_are_config_errors():
    with pytest.raises(ConfigError, match="checkpoint-dir"):
        configs_from_args(_parse("--n-checkpoints", "2"))
    with pytest.raises(ConfigError, match="warmup"):
        configs_from_args(_parse("--warmup-ratio", "0.1", "--warmup-steps", "3"))


def test_a_run_writes_the_bundle_and_prints_the_result(tmp_path, capsys):
    from crma_core.testing import arithmetic_chat_rows, make_tiny_model_dir, write_jsonl

    model = make_tiny_model_dir(tmp_path / "model")
    train = write_jsonl(tmp_path / "train.jsonl", arithmetic_chat_rows(12))
    valid = write_jsonl(tmp_path / "valid.jsonl", arithmetic_chat_rows(4, offset=50))
    code = main(["train", "--model", str(model), "--data", str(train), "--validation",
                 str(valid), "--out", str(tmp_path / "out"), "--epochs", "1", "--batch-size",
                 "6", "--micro-batch-size", "4", "--n-evals", "2", "--threads", "1",
                 "--max-seq-len", "96"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["stop_reason"] == "completed" and result["steps"] == 2
    assert result["memory_plan"]["accumulation_steps"] == 2
    assert result["full_valid_loss"] is not None and result["seconds"]["train"] > 0
    assert (tmp_path / "out" / "README.md").is_file()
    assert (tmp_path / "out" / "lora" / "adapter_model.safetensors").is_file()
