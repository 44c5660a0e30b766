"""Nothing we load is unpickled (OWASP API10): pickle bombs planted where a loader might
look (a base model's directory, a checkpoint to resume from, an adapter bundle) never go
off, pickle-only weights are refused, and a static scan finds no unpickling call in our code.

The bomb's payload is `open(<sentinel>, "w")`: if anything ever unpickles it, the sentinel
file appears. Every loader also runs under a spy on torch.load / pickle.load(s), so even an
unpickler that would have refused the payload (torch's weights_only) counts as a failure."""

from __future__ import annotations

import ast
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
OUR_PACKAGES = ("app", "worker", "crma_core", "crma_cli")
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class Bomb:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = str(sentinel)

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (open, (self.sentinel, "w"))


def plant(directory: Path, names: tuple[str, ...], sentinel: Path) -> None:
    """Pickle bombs under `names`: torch's zip format for .bin/.pt/.pth, raw pickle else."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        payload = {"weight": Bomb(sentinel), "state": Bomb(sentinel)}
        if name.endswith((".bin", ".pt", ".pth")):
            torch.save(payload, directory / name)
        else:
            (directory / name).write_bytes(pickle.dumps(payload))


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    path = tmp_path / "SENTINEL-the-pickle-ran"
    # Prove the bomb is live: unpickled without restrictions, it does write the sentinel.
    probe = tmp_path / "probe.pt"
    torch.save({"x": Bomb(path)}, probe)
    torch.load(probe, weights_only=False)
    assert path.exists()
    path.unlink()
    probe.unlink()
    return path


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record (and refuse) every torch.load / pickle.load / pickle.loads while it is active."""
    calls: list[str] = []

    def refuse(name: str):  # noqa: ANN202
        def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls.append(f"{name}({args[0] if args else ''!s:.80})")
            raise pickle.UnpicklingError(f"{name} called during a guarded load")
        return spy

    monkeypatch.setattr(torch, "load", refuse("torch.load"))
    monkeypatch.setattr(pickle, "load", refuse("pickle.load"))
    monkeypatch.setattr(pickle, "loads", refuse("pickle.loads"))
    yield calls


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crma_core.testing import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny", "llama", num_layers=2)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crma_core.testing import arithmetic_chat_rows, write_jsonl

    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", arithmetic_chat_rows(8))


def _recipe(model_dir: Path, train_file: Path, callbacks=None, **train):  # noqa: ANN001, ANN202
    from crma_core import CRMAConfig, LoraSettings, Recipe, TrainConfig

    config = dict(epochs=1, batch_size=4, max_seq_len=64, lr_main=1e-3, seed=0)
    return Recipe(model_dir=model_dir, train_file=train_file, crma=CRMAConfig(),
                  lora=LoraSettings(r=4, alpha=8), train=TrainConfig(**{**config, **train}),
                  callbacks=callbacks)


def test_bombs_next_to_the_weights_and_in_a_checkpoint_never_go_off(
        tmp_path: Path, model_dir: Path, train_file: Path, sentinel: Path,
        no_unpickling: list[str]) -> None:
    # A base model directory where transformers' fallbacks would look for pickled weights.
    bombed_model = tmp_path / "model"
    shutil.copytree(model_dir, bombed_model)
    plant(bombed_model, ("pytorch_model.bin", "training_args.bin", "optimizer.pt",
                         "tokenizer.pkl"), sentinel)
    from crma_core import TrainCallbacks

    checkpoint = tmp_path / "checkpoint"

    def keep_first(step: int, directory: Path) -> None:
        if step == 1:
            shutil.copytree(directory, checkpoint)

    recipe = _recipe(bombed_model, train_file, checkpoint_every_steps=1,
                     callbacks=TrainCallbacks(on_checkpoint=keep_first))
    recipe.setup()
    try:
        assert recipe.train().steps == 2
    finally:
        recipe.cleanup()
    # A checkpoint to resume from, with the files other trainers keep there (HF Trainer's
    # optimizer.pt / scheduler.pt / rng_state.pth / training_args.bin).
    plant(checkpoint, ("optimizer.pt", "scheduler.pt", "rng_state.pth",
                       "training_args.bin", "trainer_state.pkl"), sentinel)
    resumed = _recipe(bombed_model, train_file, checkpoint_every_steps=1)
    resumed.setup(resume_from=checkpoint)
    try:
        assert resumed.state.step == 1
        assert resumed.train().steps == 2
        bundle = tmp_path / "bundle"
        resumed.export_artifacts(bundle)
    finally:
        resumed.cleanup()
    assert not any(p.suffix in PICKLED_SUFFIXES for p in bundle.rglob("*")), \
        "bundles hold safetensors and JSON only"
    assert no_unpickling == [] and not sentinel.exists()


def test_pickle_only_base_weights_are_refused(tmp_path: Path, model_dir: Path, sentinel: Path,
                                              no_unpickling: list[str]) -> None:
    from crma_core.model_store import ModelStore
    from crma_core.recipe import load_base_model

    pickled = tmp_path / "pickled"
    shutil.copytree(model_dir, pickled)
    for weights in pickled.glob("*.safetensors"):
        weights.unlink()
    plant(pickled, ("pytorch_model.bin",), sentinel)
    with pytest.raises(Exception) as loading:  # noqa: PT011 - transformers' own error type
        load_base_model(pickled)
    assert "safetensors" in str(loading.value).lower() or "no file" in str(loading.value).lower()
    store = ModelStore(tmp_path / "store")
    with pytest.raises(Exception) as importing:  # noqa: PT011
        store.import_dir("smollm2-135m-instruct", pickled)
    assert "pytorch_model.bin" in str(importing.value)
    assert not store.is_installed("smollm2-135m-instruct")
    assert no_unpickling == [] and not sentinel.exists()


def test_a_bundle_with_pickled_adapter_weights_is_never_unpickled(
        tmp_path: Path, model_dir: Path, train_file: Path, sentinel: Path,
        no_unpickling: list[str]) -> None:
    from crma_core import load_for_generation

    recipe = _recipe(model_dir, train_file)
    recipe.setup()
    try:
        recipe.train()
        bundle = tmp_path / "bundle"
        recipe.export_artifacts(bundle)
    finally:
        recipe.cleanup()
    lora = bundle / "lora"
    # Next to the safetensors weights the pickle is ignored...
    plant(lora, ("adapter_model.bin",), sentinel)
    model, _ = load_for_generation(model_dir, bundle)
    assert model is not None
    # ... and without them, loading fails rather than falling back to the pickle.
    (lora / "adapter_model.safetensors").unlink()
    from crma_core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="safetensors only"):
        load_for_generation(model_dir, bundle)
    assert not sentinel.exists()
    assert no_unpickling == [], no_unpickling


# -- static checks ------------------------------------------------------------------------------

UNPICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve",
                      "marshal"}


def _python_files() -> list[Path]:
    return [p for package in OUR_PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _findings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    where = lambda node: f"{path.relative_to(ROOT)}:{node.lineno}"  # noqa: E731
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"{where(node)} imports {a.name}" for a in node.names
                      if a.name.split(".")[0] in UNPICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in UNPICKLING_MODULES:
                found.append(f"{where(node)} imports from {node.module}")
            if node.module.startswith("torch") and any(a.name == "load" for a in node.names):
                found.append(f"{where(node)} imports torch's load")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if name.endswith(("torch.load", "serialization.load", "jit.load")) or name in (
                    "load_state_dict_from_url", "hub.load"):
                found.append(f"{where(node)} calls {name}")
            if name.split(".")[-1] == "load" and name.split(".")[0] in ("np", "numpy") and \
                    isinstance(keywords.get("allow_pickle"), ast.Constant) and \
                    keywords["allow_pickle"].value:
                found.append(f"{where(node)} calls {name}(allow_pickle=True)")
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
                found.append(f"{where(node)} calls {name}")
            for flag, bad in (("trust_remote_code", True), ("weights_only", False),
                              ("use_safetensors", False)):
                value = keywords.get(flag)
                if isinstance(value, ast.Constant) and value.value is bad:
                    found.append(f"{where(node)} passes {flag}={bad}")
    return found


def test_no_code_of_ours_unpickles_anything() -> None:
    files = _python_files()
    assert len(files) > 50  # the scan really covers the packages
    findings = [f for path in files for f in _findings(path)]
    assert findings == [], "\n".join(findings)


def test_the_static_scan_catches_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport torch\nfrom torch import load\n"
        "torch.load('x')\nnp.load('y', allow_pickle=True)\n"
        "AutoModel.from_pretrained('m', trust_remote_code=True)\n"
        "torch.load('z', weights_only=False)\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        findings = "\n".join(_findings(bad))
    finally:
        ROOT = saved
    for expected in ("bad.py:1 imports pickle", "bad.py:3 imports torch's load",
                     "bad.py:4 calls torch.load", "bad.py:5 calls np.load(allow_pickle=True)",
                     "bad.py:6 passes trust_remote_code=True", "bad.py:7 passes weights_only=False"):
        assert expected in findings, findings


def test_the_broker_accepts_json_only() -> None:
    """Celery's pickle serializer would unpickle whatever reaches the broker."""
    from app.settings import Settings
    from worker.celery_app import create_app

    conf = create_app(Settings(broker_url="redis://127.0.0.1:1/0")).conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.result_accept_content == ["json"] and conf.event_serializer == "json"
