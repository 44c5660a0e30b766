"""DocBook (GnuCash Tutorial and Concepts Guide) -> plain-text documents.

Entities such as `&app;` are declared in the guide's DTD files; they are resolved to plain
text before parsing (their markup, e.g. <application>, carries no words we need). Then every
block element (title, para, term, ...) becomes one paragraph. Each top-level <sect1> of a
chapter is one document; text outside any sect1 forms the chapter's own document."""

from __future__ import annotations

import html.entities
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from bench.data.corpus import Document, normalise_prose

# Files of the guide that are not finance text: the GFDL itself, the legal notice, the
# Python-bindings stub and the two-paragraph "configuring" chapter.
GNUCASH_EXCLUDED = frozenset({"fdl-appendix.xml", "legal.xml", "ch_python_bindings.xml", "ch_configuring.xml"})
GUIDE_DIR = "usr/share/help/C/gnucash-guide"

DEFAULT_ENTITIES = {"app": "GnuCash", "appname": "GnuCash"}
_XML_BUILTINS = {"amp", "lt", "gt", "quot", "apos"}
_ENTITY_DECL = re.compile(r"<!ENTITY\s+(%\s+)?([\w.:-]+)\s+(?:\"([^\"]*)\"|'([^']*)')\s*>")
_ENTITY_REF = re.compile(r"([&%])([\w.:-]+);")

BLOCKS = frozenset({"title", "subtitle", "para", "simpara", "term", "glossterm", "mathphrase"})
_JOINED = {"menuchoice": " → ", "keycombo": "+"}
SKIPPED = frozenset({"indexterm", "remark", "screenshot", "mediaobject", "inlinemediaobject", "figure", "comment"})


def parse_dtd_entities(dtd_text: str) -> dict[str, str]:
    """General entities of a DTD as plain text (references resolved recursively, tags
    stripped). Parameter entities are only used to resolve general ones."""
    dtd_text = re.sub(r"<!--.*?-->", "", dtd_text, flags=re.S)
    general: dict[str, str] = {}
    parameter: dict[str, str] = {}
    for match in _ENTITY_DECL.finditer(dtd_text):
        value = match.group(3) if match.group(3) is not None else match.group(4)
        (parameter if match.group(1) else general).setdefault(match.group(2), value)

    def resolve(value: str, depth: int = 0) -> str:
        if depth > 10:  # guards against recursive declarations
            return value

        def ref(m: re.Match[str]) -> str:
            table = parameter if m.group(1) == "%" else general
            if m.group(2) in table:
                return resolve(table[m.group(2)], depth + 1)
            return m.group(0)

        return _ENTITY_REF.sub(ref, value)

    return {name: _plain(resolve(value)) for name, value in general.items()}


def _plain(markup: str) -> str:
    text = re.sub(r"<[^>]*>", "", markup)
    return html.unescape(text)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def substitute_entities(xml_text: str, entities: dict[str, str]) -> tuple[str, set[str]]:
    """Replace every non-builtin `&name;` by its text (escaped for XML). Unknown names fall
    back to HTML's named characters, else vanish; they are returned for reporting."""
    unknown: set[str] = set()

    def ref(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in _XML_BUILTINS:
            return m.group(0)
        if name in entities:
            return _escape(entities[name])
        if name + ";" in html.entities.html5:
            return _escape(html.entities.html5[name + ";"])
        unknown.add(name)
        return ""

    return re.sub(r"&([\w.:-]+);", ref, xml_text), unknown


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _reference(element: ET.Element, refs: dict[str, str]) -> str | None:
    """Text a processor would print for an empty cross-reference: the target's title
    (xref, link endterm) or the URL (ulink); None for any other element."""
    tag = _local(element.tag)
    if tag == "xref" or (tag == "link" and not (element.text or len(element))):
        title = refs.get(element.get("endterm") or "") or refs.get(element.get("linkend") or "")
        return f'"{title}"' if title else ""
    if tag == "ulink" and not (element.text or len(element)):
        return element.get("url", "")
    return None


def _inline_text(element: ET.Element, refs: dict[str, str]) -> str:
    parts = [element.text or ""]
    for child in element:
        tag = _local(child.tag)
        reference = _reference(child, refs)
        if reference is not None:
            parts.append(reference)
        elif tag == "quote":  # DocBook renders <quote> with quotation marks
            parts.append('"' + _inline_text(child, refs) + '"')
        elif tag in _JOINED:  # File → Open, Ctrl+S: the stylesheets put a separator between items
            items = (" ".join(_inline_text(c, refs).split()) for c in child if _local(c.tag) not in SKIPPED)
            parts.append(_JOINED[tag].join(i for i in items if i))
        elif tag not in SKIPPED and tag not in BLOCKS:
            parts.append(_inline_text(child, refs))
        elif tag not in SKIPPED:
            parts.append(" ")  # a nested block is emitted on its own; keep words apart
        parts.append(child.tail or "")
    return "".join(parts)


def _blocks(element: ET.Element, refs: dict[str, str]) -> list[str]:
    tag = _local(element.tag)
    if tag in SKIPPED:
        return []
    found = []
    if tag in BLOCKS:
        text = " ".join(_inline_text(element, refs).split())
        if text:
            found.append(text)
    for child in element:
        found.extend(_blocks(child, refs))
    return found


def collect_titles(root: ET.Element) -> dict[str, str]:
    """id -> title text for every element with an id (its <title> or <glossterm> child, or
    itself when the id sits on a title), used to render cross-references."""
    titles: dict[str, str] = {}
    for element in root.iter():
        element_id = element.get("id")
        if not element_id:
            continue
        if _local(element.tag) in {"title", "glossterm"}:
            holder = element
        else:
            holder = next((c for c in element if _local(c.tag) in {"title", "glossterm"}), None)
        if holder is not None:
            titles[element_id] = " ".join(_inline_text(holder, {}).split())
    return titles


def _parse(xml_text: str, entities: dict[str, str] | None) -> ET.Element:
    resolved, _ = substitute_entities(xml_text, {**DEFAULT_ENTITIES, **(entities or {})})
    return ET.fromstring(resolved.encode("utf-8"))


def parse_docbook(
    xml_text: str, entities: dict[str, str] | None = None, *, name: str = "doc", refs: dict[str, str] | None = None
) -> list[Document]:
    """One Document per top-level sect1 (id `name#sect-id`) plus one for the text outside
    them (id `name`). Paragraphs are separated by blank lines. `refs` (id -> title, from
    `collect_titles` over the whole book) resolves cross-references between files."""
    root = _parse(xml_text, entities)
    refs = {**collect_titles(root), **(refs or {})}
    docs: list[Document] = []
    sections = [child for child in root if _local(child.tag) == "sect1"]
    if _local(root.tag) == "sect1" or not sections:
        own = _blocks(root, refs)
    else:
        own = [text for child in root if _local(child.tag) != "sect1" for text in _blocks(child, refs)]
        for index, section in enumerate(sections):
            section_id = section.get("id") or str(index)
            text = normalise_prose("\n\n".join(_blocks(section, refs)))
            if text:
                docs.append(Document(doc_id=f"{name}#{section_id}", text=text))
    text = normalise_prose("\n\n".join(own))
    if text:
        docs.insert(0, Document(doc_id=name, text=text))
    return docs


def read_gnucash_guide(package_root: Path) -> tuple[list[Document], list[str], set[str]]:
    """(documents, chapter files used, entity names nobody declared) of the English guide."""
    guide = package_root / GUIDE_DIR
    entities: dict[str, str] = {}
    for dtd in sorted(guide.glob("*.dtd")):
        for key, value in parse_dtd_entities(dtd.read_text(encoding="utf-8")).items():
            entities.setdefault(key, value)
    paths = [p for p in sorted(guide.glob("*.xml")) if p.name not in GNUCASH_EXCLUDED]
    texts = {p: p.read_text(encoding="utf-8") for p in paths}
    refs: dict[str, str] = {}
    for text in texts.values():  # first pass: titles of every id, for cross-file xrefs
        refs.update(collect_titles(_parse(text, entities)))
    docs: list[Document] = []
    unknown: set[str] = set()
    for path, text in texts.items():
        unknown |= substitute_entities(text, {**DEFAULT_ENTITIES, **entities})[1]
        docs.extend(parse_docbook(text, entities, name=path.stem, refs=refs))
    return docs, [p.name for p in paths], unknown
