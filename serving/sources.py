"""Where adapter files come from: the ``AdapterSource`` seam.

The engine asks its source for local directories holding an ``AdapterSpec``'s files; the
composition root (crma_cli/engine.py) decides which source that is. ``LocalAdapterSource``
reads a directory tree; ``DownloadingAdapterSource`` copies a remote prefix (an object store's)
into a local cache once per adapter id and then reads it like a local one. Torch-free.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from serving.errors import AdapterNotFound, InvalidRequest
from serving.requests import AdapterSpec

LORA_FILES = ("adapter_config.json", "adapter_model.safetensors")
CRMA_FILES = ("crma_config.json", "crma.safetensors")


@dataclass(frozen=True)
class AdapterFiles:
    """Local directories of one adapter: the PEFT LoRA and, if it has one, the CRMA state."""

    lora_dir: Path
    crma_dir: Path | None


class AdapterSource(Protocol):
    def resolve(self, spec: AdapterSpec) -> AdapterFiles:
        """Local directories holding ``spec``'s files (fetching them first if remote).

        Raises AdapterNotFound when the files are not there, InvalidRequest when the spec's
        paths are not acceptable (absolute, escaping the location)."""
        ...


def _inside(base: Path, relative: str, param: str) -> Path:
    """``base / relative``, refusing anything that would leave ``base``."""
    if Path(relative).is_absolute():
        raise InvalidRequest(f"{param} must be a relative path", param=param)
    base = base.resolve()
    target = (base / relative).resolve()
    if target != base and not target.is_relative_to(base):
        raise InvalidRequest(f"{param} leaves the adapter's location", param=param)
    return target


def pick_files(location_dir: Path, spec: AdapterSpec) -> AdapterFiles:
    """The LoRA and CRMA directories of ``spec`` inside an already local ``location_dir``."""
    lora = _inside(location_dir, spec.lora, "adapter.lora")
    if not all((lora / name).is_file() for name in LORA_FILES):
        raise AdapterNotFound(f"adapter {spec.id!r}: no PEFT LoRA ({', '.join(LORA_FILES)}) at "
                              f"{spec.location!r}/{spec.lora!r}", param="adapter")
    crma = None
    if spec.crma is not None:
        candidate = _inside(location_dir, spec.crma, "adapter.crma")
        if all((candidate / name).is_file() for name in CRMA_FILES):
            crma = candidate
        elif spec.crma_required:
            raise AdapterNotFound(f"adapter {spec.id!r}: no CRMA state ({', '.join(CRMA_FILES)}) "
                                  f"at {spec.location!r}/{spec.crma!r}", param="adapter")
    return AdapterFiles(lora_dir=lora, crma_dir=crma)


class LocalAdapterSource:
    """Adapters in directories under ``root``; ``spec.location`` is a path relative to it
    (an absolute path is accepted only if it lies inside ``root``)."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    def resolve(self, spec: AdapterSpec) -> AdapterFiles:
        location = Path(spec.location)
        if location.is_absolute():
            location = location.resolve()
            if not location.is_relative_to(self.root):
                raise InvalidRequest("adapter.location is outside the engine's adapter root",
                                     param="adapter.location")
            relative = location.relative_to(self.root).as_posix()
        else:
            relative = spec.location
        directory = _inside(self.root, relative, "adapter.location")
        if not directory.is_dir():
            raise AdapterNotFound(f"adapter {spec.id!r}: {spec.location!r} does not exist",
                                  param="adapter")
        return pick_files(directory, spec)


class RemoteFiles(Protocol):
    """The two calls of an object store (app/storage's ObjectStore has both)."""

    def list_keys(self, prefix: str) -> list[str]: ...

    def get_to_file(self, key: str, path: Path) -> None: ...


def _relative(path: str, param: str) -> str:
    """A clean relative key path ("" for "."), refusing absolute paths and ".."."""
    clean = posixpath.normpath(path)
    if clean.startswith("/") or clean == ".." or clean.startswith("../"):
        raise InvalidRequest(f"{param} must be a relative path inside the location", param=param)
    return "" if clean == "." else clean


class DownloadingAdapterSource:
    """Adapters in a remote store, copied once per adapter into ``cache_dir``.

    ``spec.location`` is the key prefix of the adapter's bundle (a job's artifact prefix,
    ``tenants/<account>/artifacts/<job>``); only the LoRA directory and the two CRMA files
    are fetched. A spec's id names one content, so a cached copy is never refreshed; a copy
    is moved into place only when complete. Evicting an adapter from the engine leaves the
    disk copy (``forget`` drops it).
    """

    def __init__(self, cache_dir: Path, remote: RemoteFiles):
        self.cache_dir = Path(cache_dir)
        self.remote = remote
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _directory(self, spec: AdapterSpec) -> Path:
        digest = hashlib.sha256(f"{spec.id}\0{spec.location}\0{spec.lora}\0{spec.crma}"
                                .encode()).hexdigest()[:32]
        return self.cache_dir / digest

    def resolve(self, spec: AdapterSpec) -> AdapterFiles:
        target = self._directory(spec)
        with self._guard:
            lock = self._locks.setdefault(target.name, threading.Lock())
        with lock:  # two requests for one cold adapter fetch it once
            if not target.is_dir():
                self._download(spec, target)
        return pick_files(target, spec)

    def _download(self, spec: AdapterSpec, target: Path) -> None:
        base = spec.location.strip("/")
        lora = _relative(spec.lora, "adapter.lora")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=self.cache_dir))
        try:
            prefix = posixpath.join(base, lora) + "/"
            keys = [k for k in self.remote.list_keys(prefix) if k.startswith(prefix)]
            if not keys:
                raise AdapterNotFound(f"adapter {spec.id!r}: nothing stored under {prefix!r}",
                                      param="adapter")
            for key in keys:
                self.remote.get_to_file(key, _inside(staging, posixpath.join(
                    lora, key[len(prefix):]), "adapter.lora"))
            if spec.crma is not None:
                crma = _relative(spec.crma, "adapter.crma")
                wanted = {posixpath.join(base, crma, name) for name in CRMA_FILES}
                present = set(self.remote.list_keys(posixpath.join(base, crma, "crma")))
                for key in sorted(wanted & present):
                    self.remote.get_to_file(key, _inside(staging, posixpath.join(
                        crma, posixpath.basename(key)), "adapter.crma"))
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def forget(self, spec: AdapterSpec) -> None:
        shutil.rmtree(self._directory(spec), ignore_errors=True)
