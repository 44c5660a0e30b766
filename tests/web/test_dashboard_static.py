"""The dashboard's files as served, without a browser: security headers, every file a page
loads is served from this origin (no absolute URL to another host anywhere a page could load
from), no inline script or style and no HTML-injection sinks in our code, the vendored
uPlot matches its recorded version and checksums, and a wheel built from the tree carries
app/web."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient

from app.api.routes.dashboard import CONTENT_SECURITY_POLICY, WEB_DIR

ROOT = Path(__file__).resolve().parents[2]
UPLOT = WEB_DIR / "vendor" / "uplot"
BASE = "http://testserver/dashboard/"
# The XML namespace of SVG is a name, not something a browser fetches.
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from app.main import create_app
    from app.settings import Settings

    data_dir = tmp_path_factory.mktemp("dashboard-static")
    with TestClient(create_app(Settings(data_dir=data_dir)), raise_server_exceptions=False) as c:
        yield c


def test_dashboard_is_served_with_a_strict_content_security_policy(client: TestClient) -> None:
    redirect = client.get("/dashboard", follow_redirects=False)
    assert redirect.status_code in (307, 308)
    assert redirect.headers["location"].endswith("/dashboard/")
    page = client.get("/dashboard/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert policy == CONTENT_SECURITY_POLICY
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    module = client.get("/dashboard/js/main.js")
    assert module.status_code == 200
    assert "javascript" in module.headers["content-type"]  # module scripts need a JS type
    assert module.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_a_missing_file_is_the_api_error_envelope(client: TestClient) -> None:
    missing = client.get("/dashboard/js/nothing-here.js")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"]


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.inline_scripts = 0
        self.inline_styles = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if "style" in values:
            self.inline_styles += 1
        if any(name.startswith("on") for name in values):
            self.inline_scripts += 1
        if tag == "style":
            self.inline_styles += 1
        if tag == "script":
            self._in_script = "src" not in values
        for name in ("src", "href"):
            if values.get(name) and not values[name].startswith("#"):
                self.refs.append(values[name])

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False


_JS_IMPORT = re.compile(r"""(?:^|[;\s])(?:import|export)\s[^'";]*?from\s*["']([^"']+)["']"""
                        r"""|(?:^|[;\s])import\s*["']([^"']+)["']|import\(\s*["']([^"']+)["']""", re.M)
_CSS_URL = re.compile(r"""url\(\s*["']?([^"')]+)["']?\s*\)|@import\s+["']([^"']+)["']""")
_LOADS_ABSOLUTE = re.compile(
    r"""(?:fetch|import|EventSource|WebSocket|open|importScripts)\s*\(\s*["'`]\s*(?:https?:)?//"""
    r"""|(?:src|href)\s*=\s*["'`]\s*(?:https?:)?//""", re.I)


def _references(path: str, text: str) -> list[str]:
    if path.endswith(".html"):
        parser = _References()
        parser.feed(text)
        assert parser.inline_scripts == 0, f"{path}: inline script or event handler"
        assert parser.inline_styles == 0, f"{path}: inline style"
        return parser.refs
    pattern = _JS_IMPORT if path.endswith(".js") else _CSS_URL if path.endswith(".css") else None
    if pattern is None:
        return []
    return [next(g for g in m.groups() if g) for m in pattern.finditer(text)]


def _crawl(client: TestClient) -> dict[str, str]:
    """Every file reachable from index.html through src/href, imports and CSS url()s:
    {path under /dashboard/: text}. Each reference must stay on this origin."""
    seen: dict[str, str] = {}
    queue = [BASE + "index.html"]
    while queue:
        url = queue.pop()
        path = urlsplit(url).path.removeprefix("/dashboard/")
        if path in seen:
            continue
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        seen[path] = response.text if not path.endswith(".png") else ""
        for ref in _references(path, seen[path]):
            if ref.startswith("data:"):
                continue
            assert not urlsplit(ref).scheme and not ref.startswith("//"), f"{path} loads {ref}"
            queue.append(urljoin(url, ref))
    return seen


def test_every_file_a_page_loads_is_served_from_this_origin(client: TestClient) -> None:
    loaded = _crawl(client)
    assert {"index.html", "js/main.js", "js/pages/job.js", "js/charts.js",
            "vendor/uplot/uPlot.esm.js", "vendor/uplot/uPlot.min.css", "css/pages.css"} <= set(loaded)
    for path, text in loaded.items():
        assert not _LOADS_ABSOLUTE.search(text), f"{path} loads from an absolute URL"
        if not path.startswith("vendor/"):
            # Our own files name no other host at all (comments included).
            urls = set(re.findall(r"https?://[^\s\"'()<>]+", text)) - {SVG_NAMESPACE}
            assert urls == set(), f"{path}: {urls}"
    # And nothing is left behind that no page loads (a dead module hides a broken import).
    ours = {p.relative_to(WEB_DIR).as_posix() for p in WEB_DIR.rglob("*")
            if p.is_file() and p.relative_to(WEB_DIR).parts[0] != "vendor" and p.suffix != ".md"}
    assert ours <= set(loaded), sorted(ours - set(loaded))


def test_our_code_never_builds_html_from_strings() -> None:
    sinks = re.compile(r"\.innerHTML|\.outerHTML|insertAdjacentHTML|document\.write|\beval\(|"
                       r"new Function\(|setAttribute\(\s*[\"']on|setAttribute\(\s*[\"']style")
    for path in sorted((WEB_DIR / "js").rglob("*.js")):
        text = path.read_text()
        assert not sinks.search(text), f"{path.relative_to(ROOT)}: {sinks.search(text).group()}"


def test_uplot_is_the_recorded_npm_version_with_its_licence() -> None:
    note = (UPLOT / "VENDORED.md").read_text()
    version = re.search(r"\*\*(\d+\.\d+\.\d+)\*\*", note).group(1)
    assert f"(v{version})" in (UPLOT / "uPlot.esm.js").read_text()[:400]
    for name, digest in re.findall(r"`(uPlot\.[\w.]+)` sha256 `([0-9a-f]{64})`", note):
        assert hashlib.sha256((UPLOT / name).read_bytes()).hexdigest() == digest, name
    assert len(re.findall(r"sha256 `", note)) == 2
    assert "MIT License" in (UPLOT / "LICENSE").read_text()


def test_a_wheel_built_from_the_tree_carries_the_dashboard(tmp_path: Path) -> None:
    """package-data: a plain `pip install .` (Docker image) must serve /dashboard too."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("app", "worker", "crma_core", "crma_cli"):
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    build = subprocess.run(
        [sys.executable, "-c", "from setuptools import build_meta; "
         "print(build_meta.build_wheel('dist'))"],
        cwd=source, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = source / "dist" / build.stdout.strip().splitlines()[-1]
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"app/{p.relative_to(WEB_DIR.parent).as_posix()}" for p in WEB_DIR.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}
    assert expected <= names, sorted(expected - names)[:10]
