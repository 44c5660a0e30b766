"""The model store (import/list/path) and the `crma models` / `crma train` commands."""

import json

import pytest

from crma_core.model_store import ModelImportError, ModelNotInstalledError, ModelStore


def test_import_list_and_path(tiny_model_dirs, tmp_path):
    store = ModelStore(tmp_path / "models")
    assert store.list() == []
    with pytest.raises(KeyError):
        store.path("tinyllama-1.1b-chat")
    with pytest.raises(FileNotFoundError):
        store.path("tinyllama-1.1b-chat")
    model = store.import_dir("tinyllama-1.1b-chat", tiny_model_dirs["llama"])
    assert model.family == "llama" and model.in_catalog
    assert store.is_installed("tinyllama-1.1b-chat")
    path = store.path("tinyllama-1.1b-chat")
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    meta = json.loads((path / "store.json").read_text())
    assert set(meta) >= {"id", "family", "weights", "installed_at"}
    assert list(meta["weights"]) == ["model.safetensors"]
    store.verify("tinyllama-1.1b-chat")
    store.import_dir("custom-gemma", tiny_model_dirs["gemma2"])
    assert [m.id for m in store.list()] == ["custom-gemma", "tinyllama-1.1b-chat"]
    with pytest.raises(ModelImportError, match="already installed"):
        store.import_dir("custom-gemma", tiny_model_dirs["gemma2"])
    store.import_dir("custom-gemma", tiny_model_dirs["mistral"], overwrite=True)
    assert store.get("custom-gemma").family == "mistral"
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]


def test_import_refuses_bad_directories(tiny_model_dirs, tmp_path):
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ModelImportError, match="gemma2 model"):
        store.import_dir("mistral-7b-v0.3", tiny_model_dirs["gemma2"])
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (pickled / name).write_bytes((tiny_model_dirs["llama"] / name).read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelImportError, match="safetensors"):
        store.import_dir("x", pickled)
    with pytest.raises(ValueError):
        store.import_dir("../escape", tiny_model_dirs["llama"])
    assert not store.is_installed("x")


def test_store_model_trains(tiny_model_dirs, chat_files, tmp_path):
    from crma_core import Recipe, TrainConfig

    store = ModelStore(tmp_path / "models")
    store.import_dir("tinyllama-1.1b-chat", tiny_model_dirs["llama"])
    recipe = Recipe(model_dir=store.path("tinyllama-1.1b-chat"), train_file=chat_files[0],
                    train=TrainConfig(max_steps=2, max_seq_len=128))
    recipe.setup()
    assert recipe.train().steps == 2
    recipe.cleanup()


def test_models_and_train_commands(tiny_model_dirs, chat_files, tmp_path, monkeypatch, capsys):
    import argparse

    from crma_cli import models as models_cli
    from crma_cli import train as train_cli

    monkeypatch.setenv("CRMA_DATA_DIR", str(tmp_path / "data"))
    parser = argparse.ArgumentParser(prog="crma")
    sub = parser.add_subparsers(dest="command", required=True)
    models_cli.register(sub)
    train_cli.register(sub)

    def run(*argv):
        args = parser.parse_args(list(argv))
        return args.func(args)

    assert run("models", "import", "gemma-2-2b-it", str(tiny_model_dirs["gemma2"])) == 0
    assert (tmp_path / "data" / "models" / "gemma-2-2b-it" / "store.json").is_file()
    assert "imported gemma-2-2b-it" in capsys.readouterr().out
    assert run("models", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["id"] for m in listed] == ["gemma-2-2b-it"] and listed[0]["family"] == "gemma2"
    assert run("models", "list") == 0
    table = capsys.readouterr().out
    assert "gemma-2-2b-it" in table and "yes" in table and "mistral-7b-v0.3" in table
    assert run("models", "install", "mistral-7b-v0.3") == 2

    out = tmp_path / "bundle"
    code = run("train", "--model", "gemma-2-2b-it", "--data", str(chat_files[0]),
               "--validation", str(chat_files[1]), "--out", str(out), "--max-steps", "3",
               "--max-seq-len", "128", "--lora-r", "4")
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 3 and result["final_val_loss"] is not None
    assert (out / "manifest.json").is_file() and (out / "crma.safetensors").is_file()
    code = run("train", "--model", str(tiny_model_dirs["llama"]), "--data", str(chat_files[0]),
               "--out", str(tmp_path / "lora-only"), "--no-crma", "--max-steps", "2")
    assert code == 0 and not (tmp_path / "lora-only" / "crma.safetensors").exists()
    assert run("train", "--model", "not-installed", "--data", str(chat_files[0]),
               "--out", str(tmp_path / "x")) == 2


def test_not_installed_error_message(tmp_path):
    with pytest.raises(ModelNotInstalledError) as info:
        ModelStore(tmp_path).path("smollm2-135m-instruct")
    assert str(info.value).startswith("model 'smollm2-135m-instruct' is not installed")
