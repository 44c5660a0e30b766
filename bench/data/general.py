"""The general-text holdout of the continual benchmark: English text of none of its domains,
for measuring how much a domain's adapter costs the model's general capability.

    python bench/data/general.py [--out bench/data/cache/general] [--examples 16] [--seed 0]

Source: the BSD fortune cookie collection (Debian bookworm package `fortunes`, pinned by
sha256, fetched with `apt-get download` like the domain corpora; nothing installed). Only
the files of no benchmark domain are read (wisdom, people, love, ... ; never law,
medicine, computers, linux, perl, science, work, politics or news), each cookie is one
document; cookies of at least ``MIN_CHARS`` characters are deduplicated, shuffled with the
seed and the first N kept. Writes `<out>/holdout.jsonl` ({"text": ...} per line) and
`<out>/SOURCE.json` (package, version, sha256, licence, files, counts); the same inputs and
seed give byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench.data` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.data import fetch  # noqa: E402
from bench.data.sources import DEBIAN, SourceSpec  # noqa: E402

DATA_DIR = Path(__file__).resolve().parent
DEFAULT_CACHE = DATA_DIR / "cache"
DEFAULT_OUT = DEFAULT_CACHE / "general"
MIN_CHARS = 240  # about 60 tokens: most rows fill the benchmark's 64-token window
MAX_CHARS = 1200
# Files of the collection that belong to none of the four domains.
GENERAL_FILES = ("art", "food", "humorists", "kids", "love", "people", "pets", "platitudes",
                 "songs-poems", "sports", "tao", "wisdom")

FORTUNES = SourceSpec(
    name="fortunes",
    domain="general",
    title="BSD fortune cookie collection (general-interest files only)",
    registry=DEBIAN,
    package="fortunes",
    version="1:1.99.1-7.3",
    artifact="fortunes_1%3a1.99.1-7.3_all.deb",
    sha256="41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5",
    licence="BSD-3-Clause (fortune-mod, copyright 1991 The Regents of the University of "
    "California; Debian's copyright file); quotations remain their authors'",
    licence_id="BSD-3-Clause",
    attribution="fortune(6) data files by Ken Arnold and the BSD fortune contributors, Debian "
    "package fortunes 1:1.99.1-7.3 (Pascal Hakim, Joshua Kwan and others).",
    debian_pool="pool/main/f/fortune-mod/fortunes_1.99.1-7.3_all.deb",
)


def cookies(text: str) -> list[str]:
    """The cookies of one fortune file (separated by lines holding only '%'), whitespace
    normalised: runs of spaces and tabs become one space, line breaks are kept."""
    out = []
    for chunk in re.split(r"^%\s*$", text, flags=re.M):
        lines = [re.sub(r"[ \t]+", " ", line).strip() for line in chunk.strip().splitlines()]
        cookie = "\n".join(line for line in lines if line)
        if cookie:
            out.append(cookie)
    return out


def select(docs: list[str], *, examples: int, seed: int) -> list[str]:
    """Deduplicated cookies of MIN_CHARS..MAX_CHARS characters, shuffled with ``seed``."""
    seen, kept = set(), []
    for doc in docs:
        key = re.sub(r"\W+", " ", doc.lower()).strip()
        if MIN_CHARS <= len(doc) <= MAX_CHARS and key not in seen:
            seen.add(key)
            kept.append(doc)
    random.Random(seed).shuffle(kept)
    if len(kept) < examples:
        raise SystemExit(f"only {len(kept)} general cookies, {examples} requested")
    return kept[:examples]


def build_general(*, out_dir: Path = DEFAULT_OUT, cache: Path = DEFAULT_CACHE,
                  examples: int = 16, seed: int = 0, log=print) -> Path:
    deb = fetch.ensure_deb(FORTUNES, cache / "downloads", log)
    root = fetch.unpack_deb(deb, cache / "extracted" / "fortunes",
                            [f"usr/share/games/fortunes/{name}" for name in GENERAL_FILES])
    docs, per_file = [], {}
    for name in GENERAL_FILES:
        path = next(root.rglob(name))
        found = cookies(path.read_text(encoding="utf-8", errors="replace"))
        per_file[name] = len(found)
        docs += found
    chosen = select(docs, examples=examples, seed=seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    holdout = out_dir / "holdout.jsonl"
    holdout.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in chosen))
    source = {
        "title": FORTUNES.title, "registry": FORTUNES.registry, "package": FORTUNES.package,
        "version": FORTUNES.version, "artifact": FORTUNES.artifact, "sha256": FORTUNES.sha256,
        "licence": FORTUNES.licence, "attribution": FORTUNES.attribution,
        "files": list(GENERAL_FILES), "cookies_per_file": per_file,
        "rule": f"cookies of {MIN_CHARS}-{MAX_CHARS} characters, deduplicated, shuffled with "
                f"seed {seed}, first {examples}",
        "examples": len(chosen),
        "holdout_sha256": hashlib.sha256(holdout.read_bytes()).hexdigest(),
    }
    (out_dir / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
    return holdout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_general(out_dir=args.out, cache=args.cache, examples=args.examples,
                        seed=args.seed))


if __name__ == "__main__":
    main()
