"""Code and docs cite only what is in this repository: no documents that live elsewhere (the
design notes the project was planned from), no requirement ids defined in them, and every
`*.md` file a text names exists here."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEXT = {".py", ".md", ".toml", ".yml", ".yaml", ".ini", ".cfg", ".txt", ".json", ".html",
        ".js", ".css", ".sh", ".mako"}
NAMED = {"Makefile", "Dockerfile.gpu", "alembic.ini"}
# Documents outside the repository, by name, and the ids of the requirements they define.
FOREIGN = re.compile(
    r"\.\./shared\b|\bshared/(?:reference|[A-Z_]+\.md)|\b(?:API|CRMA_SPEC|DESIGN|ANCHORS)\.md\b"
    r"|aesthetics_reliability|api_anchors|crma_method|domain_data\.md|perf_ecosystem"
    r"|\bR\d{1,2}\b(?![-.(])")
MARKDOWN = re.compile(r"(?<![\w/.:-])((?:[\w.-]+/)*[\w.-]+\.md)\b")


def repository_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
        capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in listed
            if (ROOT / name).is_file() and not (ROOT / name).is_symlink()]


def texts() -> list[tuple[Path, str]]:
    """Our own text files (vendored third-party code is not ours to cite from)."""
    this = Path(__file__).resolve()
    return [(path, path.read_text(errors="replace")) for path in repository_files()
            if (path.suffix in TEXT or path.name in NAMED) and path.resolve() != this
            and "vendor" not in path.relative_to(ROOT).parts]


def foreign_references(text: str) -> list[str]:
    return [match.group(0) for match in FOREIGN.finditer(text)]


def missing_markdown(path: Path, text: str, names: set[str], files: set[Path]) -> list[str]:
    """`*.md` names in `text` that point into the repository but find nothing: a bare file
    name no file of the repository has, or a path from one of its top-level folders that
    does not exist. (Other paths, like `lora/README.md` inside an adapter bundle, are not
    files of the repository.)"""
    top = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
    missing = []
    for match in MARKDOWN.finditer(text):
        cited = match.group(1)
        word_start = max(text.rfind(c, 0, match.start()) for c in " \n\t(\"'<`[") + 1
        if "://" in text[word_start:match.end()] or not cited.strip(".").removesuffix("md"):
            continue  # a URL, or no name at all
        if "/" not in cited:
            if cited not in names:
                missing.append(cited)
        elif cited.split("/")[0] in top and (ROOT / cited).resolve() not in files:
            missing.append(cited)
    return missing


def test_no_reference_to_anything_outside_the_repository() -> None:
    found = {str(path.relative_to(ROOT)): refs for path, text in texts()
             if (refs := foreign_references(text))}
    assert found == {}


def test_every_cited_markdown_file_exists() -> None:
    files = {path.resolve() for path in repository_files()}
    names = {path.name for path in files}
    found = {str(path.relative_to(ROOT)): cited for path, text in texts()
             if (cited := missing_markdown(path, text, names, files))}
    assert found == {}


def test_the_checks_catch_what_they_look_for() -> None:
    text = ("see API.md and ../shared/DESIGN.md, aesthetics_reliability.md R7 (R14 audit); "
            "the Cloudflare R2-compatible store is fine, and so is docs/architecture.md.")
    assert foreign_references(text) == ["API.md", "../shared", "DESIGN.md",
                                        "aesthetics_reliability", "R7", "R14"]
    files = {path.resolve() for path in repository_files()}
    names = {path.name for path in files}
    assert missing_markdown(ROOT / "docs" / "x.md", "docs/architecture.md, nowhere.md, "
                            "docs/gone.md, lora/README.md, https://example.com/a/README.md",
                            names, files) == ["nowhere.md", "docs/gone.md"]
