"""Documents and the text operations on them: normalise whitespace, deduplicate, chunk.

A Document is one unit of the train/holdout split (an HPO term, a licence, a stdlib module,
a GnuCash section, a Reuters article). Chunking turns a document into pieces of at most
`max_chars` characters, cut at the coarsest boundary that fits (paragraph, then line, then
sentence, then word; for code: top-level statement, blank line, line)."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PROSE = "prose"
CODE = "code"


@dataclass(frozen=True)
class Document:
    """One document of one source. `doc_id` is unique within its source and orders the
    documents before any seeded shuffle, so file-system listing order never matters."""

    doc_id: str
    text: str
    family: str = ""


@dataclass
class DedupeReport:
    kept: int = 0
    empty: int = 0
    exact: int = 0
    near: int = 0
    family_cap: int = 0
    removed_ids: list[str] = field(default_factory=list)


_SPACES = re.compile(r"[^\S\n]+")  # any whitespace except newline
_BLANK_RUNS = re.compile(r"\n{3,}")


def normalise_prose(text: str) -> str:
    """NFC, unify newlines, collapse runs of spaces/tabs, strip every line, keep at most one
    blank line between paragraphs. Hard line wraps inside paragraphs are kept."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


def unwrap_paragraphs(text: str) -> str:
    """Join hard-wrapped lines inside each paragraph into one line (paragraphs stay
    separated by a blank line)."""
    paragraphs = re.split(r"\n\s*\n", text)
    joined = (" ".join(p.split()) for p in paragraphs)
    return "\n\n".join(p for p in joined if p)


def normalise_code(text: str) -> str:
    """Unify newlines, drop trailing spaces, keep indentation (it is syntax) and at most two
    blank lines in a row (PEP 8's spacing between top-level definitions)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{4,}", "\n\n\n", "\n".join(lines)).strip("\n")


def near_duplicate_key(text: str, prefix_chars: int = 400) -> str:
    """Lower-cased alphanumerics of the first `prefix_chars` characters: two licence texts
    that differ only in punctuation, wrapping or a trailing clause share this key."""
    return re.sub(r"[^0-9a-z]+", " ", text.lower()).strip()[:prefix_chars]


def _stable_rank(doc_id: str) -> str:
    return hashlib.sha256(doc_id.encode("utf-8")).hexdigest()


def dedupe_documents(
    docs: Iterable[Document], *, near: bool = False, family_cap: int | None = None
) -> tuple[list[Document], DedupeReport]:
    """Drop empty documents, exact duplicates and (with `near`) documents whose
    `near_duplicate_key` was already seen; then keep at most `family_cap` documents per
    `family`, chosen by a seed-independent hash of the id. Earlier ids (sorted) win."""
    report = DedupeReport()
    seen_exact: set[str] = set()
    seen_near: set[str] = set()
    kept: list[Document] = []
    for doc in sorted(docs, key=lambda d: d.doc_id):
        if not doc.text.strip():
            report.empty += 1
            report.removed_ids.append(doc.doc_id)
            continue
        digest = hashlib.sha256(doc.text.encode("utf-8")).hexdigest()
        if digest in seen_exact:
            report.exact += 1
            report.removed_ids.append(doc.doc_id)
            continue
        seen_exact.add(digest)
        if near:
            key = near_duplicate_key(doc.text)
            if key in seen_near:
                report.near += 1
                report.removed_ids.append(doc.doc_id)
                continue
            seen_near.add(key)
        kept.append(doc)
    if family_cap is not None:
        by_family: dict[str, list[Document]] = {}
        for doc in kept:
            by_family.setdefault(doc.family or doc.doc_id, []).append(doc)
        capped: list[Document] = []
        for members in by_family.values():
            members.sort(key=lambda d: _stable_rank(d.doc_id))
            capped.extend(members[:family_cap])
            report.family_cap += max(0, len(members) - family_cap)
            report.removed_ids.extend(d.doc_id for d in members[family_cap:])
        kept = sorted(capped, key=lambda d: d.doc_id)
    report.kept = len(kept)
    return kept, report


# Boundaries, coarsest first. A boundary position is the end of a match, so consecutive
# segments concatenate back to the original text.
PROSE_BOUNDARIES: tuple[str, ...] = (
    r"\n[^\S\n]*\n\s*",  # blank line between paragraphs
    r"\n",  # line
    r"(?<=[.!?;:])\s+",  # sentence-ish
    r"\s+",  # word
)
CODE_BOUNDARIES: tuple[str, ...] = (
    # blank line(s) followed by an unindented line that is not the continuation of a
    # compound statement or a closing bracket: the gap between top-level statements
    r"\n(?:[^\S\n]*\n)+(?=[^\s)\]}]|$)(?!(?:else|elif|except|finally)\b)",
    r"\n(?:[^\S\n]*\n)+",  # any blank line (between methods, inside functions)
    r"\n",  # line
)


def _segments(text: str, pattern: str) -> list[str]:
    cuts = [m.end() for m in re.finditer(pattern, text) if 0 < m.end() < len(text)]
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def _trim(text: str, keep_indent: bool) -> str:
    if keep_indent:  # code: drop surrounding blank lines, keep the first line's indentation
        return re.sub(r"\A(?:[^\S\n]*\n)+", "", text).rstrip()
    return text.strip()


def chunk_text(
    text: str, max_chars: int, boundaries: Sequence[str] = PROSE_BOUNDARIES, *, keep_indent: bool = False
) -> list[str]:
    """Split `text` into trimmed pieces of at most `max_chars` characters. Adjacent segments
    at the coarsest boundary are packed greedily; a segment that alone is too long is split
    at the next finer boundary; with no boundary left it is cut hard. With `keep_indent`
    (code) a piece keeps the indentation of its first line."""
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    trimmed = _trim(text, keep_indent)
    if not trimmed:
        return []
    if len(trimmed) <= max_chars:
        return [trimmed]
    if not boundaries:
        cuts = (_trim(trimmed[i : i + max_chars], keep_indent) for i in range(0, len(trimmed), max_chars))
        return [p for p in cuts if p]
    segments = _segments(text, boundaries[0])
    if len(segments) == 1:
        return chunk_text(text, max_chars, boundaries[1:], keep_indent=keep_indent)
    pieces: list[str] = []
    current = ""
    for segment in segments:
        if len(_trim(current + segment, keep_indent)) <= max_chars:
            current += segment
            continue
        if _trim(current, keep_indent):
            pieces.append(_trim(current, keep_indent))
        if len(_trim(segment, keep_indent)) > max_chars:
            pieces.extend(chunk_text(segment, max_chars, boundaries[1:], keep_indent=keep_indent))
            current = ""
        else:
            current = segment
    if _trim(current, keep_indent):
        pieces.append(_trim(current, keep_indent))
    return pieces


def chunk_document(text: str, max_chars: int, kind: str) -> list[str]:
    """Chunk a normalised document of the given kind (prose or code)."""
    if kind == CODE:
        return chunk_text(text, max_chars, CODE_BOUNDARIES, keep_indent=True)
    return chunk_text(text, max_chars, PROSE_BOUNDARIES)


def dedupe_pieces(
    chunked: Sequence[tuple[str, list[str]]], seen: set[str] | None = None
) -> tuple[list[tuple[str, list[str]]], int]:
    """Drop every piece whose exact text already occurred in an earlier (sorted) document,
    or in `seen` (shared across a domain's sources; updated in place). Because no two kept
    pieces are equal, a train example can never equal a holdout one."""
    seen = set() if seen is None else seen
    dropped = 0
    result: list[tuple[str, list[str]]] = []
    for doc_id, pieces in chunked:
        kept = []
        for piece in pieces:
            if piece in seen:
                dropped += 1
                continue
            seen.add(piece)
            kept.append(piece)
        if kept:
            result.append((doc_id, kept))
    return result, dropped
