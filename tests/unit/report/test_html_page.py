"""The HTML page itself: self-contained, script-proof against what the run wrote, readable."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import shlex
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainwarden.errors import InputError
from trainwarden.report import read_run, render_report_html, render_run_html, write_run_report
from trainwarden.report._synthetic import HOSTILE, SyntheticRun, write_synthetic_run


class _Page(HTMLParser):
    """Every element with its attributes, and the raw text of each script and style."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.styles: list[str] = []
        self._in: str | None = None
        self._attrs: dict[str, str | None] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag in ("script", "style"):
            self._in = tag
            self._attrs = dict(attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            self.scripts.append((self._attrs, data))
        elif self._in == "style":
            self.styles.append(data)
        else:
            self.text.append(data)


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser


def _csp(page: str) -> str:
    match = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page)
    assert match is not None
    return html.unescape(match.group(1))


def _sha(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticRun, str]:
    root = tmp_path_factory.mktemp("hostile")
    run = write_synthetic_run(root / "run", ranks=8, steps=400, drill=True, hostile=True)
    keys = [*run.keys, run.insider_key]
    return run, render_run_html(run.run_dir, keys=keys, seal_keys=[run.seal_key])


def _assert_inert(page: str) -> _Page:
    """Nothing in the page can run or load anything but the page's own script."""
    parsed = _parse(page)
    tags = [tag for tag, _ in parsed.elements]
    for banned in ("img", "iframe", "object", "embed", "form", "link", "base", "audio", "video"):
        assert banned not in tags, banned
    for tag, attrs in parsed.elements:
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name, value)
            if name in ("href", "src", "xlink:href", "action", "formaction"):
                assert value is not None
                assert value.startswith(("#", "data:image/png;base64,")), (tag, name, value)
            assert name != "style", (tag, attrs)  # the CSP forbids inline styles
    metas = [a for t, a in parsed.elements if t == "meta" and a.get("http-equiv")]
    assert [a["http-equiv"] for a in metas] == ["Content-Security-Policy"]
    scripts = [(a, text) for a, text in parsed.scripts]
    assert [t for t in tags if t == "script"] == ["script", "script"]
    (data_attrs, data), (code_attrs, code) = scripts
    assert data_attrs == {"type": "application/json", "id": "tw-data"}
    assert code_attrs == {}
    assert "</" not in data
    assert "<!--" not in data
    json.loads(data)
    csp = _csp(page)
    assert "default-src 'none'" in csp
    assert f"script-src {_sha(code)}" in csp
    (style,) = parsed.styles
    assert f"style-src {_sha(style)}" in csp
    assert "unsafe-inline" not in csp
    assert "http" not in csp
    return parsed


def test_hostile_strings_are_shown_as_text_and_never_run(hostile: tuple[SyntheticRun, str]) -> None:
    _, page = hostile
    parsed = _assert_inert(page)
    text = "".join(parsed.text)
    for payload in HOSTILE[:5]:
        assert payload in text, payload  # shown, escaped, as the run wrote it
    assert "<script>window.__xss" not in page
    # The data for the script carries them escaped too.
    data = parsed.scripts[0][1]
    assert "\\u003c" in data or "<" not in data


def test_the_page_is_self_contained(hostile: tuple[SyntheticRun, str]) -> None:
    _, page = hostile
    parsed = _parse(page)
    for tag, attrs in parsed.elements:
        for name, value in attrs.items():
            if value and name in ("href", "src"):
                assert not value.startswith(("http", "//", "file:")), (tag, value)
    assert "@import" not in parsed.styles[0]
    assert "url(" not in parsed.styles[0]


def test_readable_without_javascript(hostile: tuple[SyntheticRun, str]) -> None:
    run, page = hostile
    report = read_run(run.run_dir, keys=[*run.keys, run.insider_key], seal_keys=[run.seal_key])
    parsed = _parse(page)
    ids = {a.get("id") for _, a in parsed.elements}
    for section in (
        "findings",
        "timeline",
        "telemetry",
        "kills",
        "checkpoints",
        "egress",
        "preflight",
        "drill",
        "provenance",
        "ledger",
        "reproduce",
    ):
        assert section in ids, section
    svgs = [a for t, a in parsed.elements if t == "svg" and "plot" in (a.get("class") or "")]
    heatmaps = [a for a in svgs if "heatmap" in (a.get("class") or "")]
    assert len(heatmaps) == 2
    assert len(svgs) >= 10  # heatmaps, six metrics, phases of the median and flagged ranks
    rows = page[page.index('id="timeline-table"') :].split("</table>")[0].count("<tr id=")
    assert rows == len(report.timeline)
    cards = [a for t, a in parsed.elements if t == "article"]
    assert len(cards) == len(report.findings)
    # Every link inside the page lands on something.
    for _, attrs in parsed.elements:
        href = attrs.get("href")
        if href and href.startswith("#"):
            assert href[1:] in ids, href


def test_heatmap_png_decodes_to_ranks_by_bins(hostile: tuple[SyntheticRun, str]) -> None:
    import struct
    import zlib

    _, page = hostile
    hrefs = re.findall(r'<image href="data:image/png;base64,([^"]+)"', page)
    assert len(hrefs) == 2
    png = base64.b64decode(hrefs[0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert height == 8
    idat = png[png.index(b"IDAT") + 4 : png.index(b"IEND") - 8]
    assert len(zlib.decompress(idat)) == height * (1 + 3 * width)


def test_the_sleeping_rank_is_the_red_row(hostile: tuple[SyntheticRun, str]) -> None:
    import zlib

    _, page = hostile
    png = base64.b64decode(re.findall(r'<image href="data:image/png;base64,([^"]+)"', page)[0])
    idat = png[png.index(b"IDAT") + 4 : png.index(b"IEND") - 8]
    raw = zlib.decompress(idat)
    width = (len(raw) // 8 - 1) // 3
    redness = []
    for row in range(8):
        line = raw[row * (1 + 3 * width) + 1 : (row + 1) * (1 + 3 * width)]
        pixels = [line[i : i + 3] for i in range(0, len(line), 3)]
        redness.append(sum(1 for r, g, b in pixels if r - g > 60))
    assert max(range(8), key=lambda r: redness[r]) == 3
    assert sum(redness) - redness[3] <= redness[3] // 10


def test_page_size_is_small(hostile: tuple[SyntheticRun, str]) -> None:
    _, page = hostile
    assert len(page.encode()) < 700_000


def test_every_section_renders_for_a_run_directory_with_nothing_readable(
    tmp_path: Path,
) -> None:
    # An empty directory is no run directory (an error: test_html_inputs); one with an empty
    # telemetry directory and nothing else still gets every section, saying what is missing.
    (tmp_path / "telemetry").mkdir()
    page = render_run_html(tmp_path)
    _assert_inert(page)
    assert "run.json is missing" in page
    assert "No telemetry could be read" in page
    assert "Not verified" in page


text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=60
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(message=text, path=text, host=text, command=text)
def test_any_text_from_the_run_stays_text(
    tmp_path_factory: pytest.TempPathFactory, message: str, path: str, host: str, command: str
) -> None:
    from trainwarden.keys import PrivateKey
    from trainwarden.ledger import Ledger

    run_dir = tmp_path_factory.mktemp("fuzz")
    key = PrivateKey.generate("job@x")
    (run_dir / "run.json").write_text(
        json.dumps({"schema_version": 1, "run_id": "r", "command": [command], "ledger": "ledger"})
    )
    with Ledger(run_dir / "ledger", key=key) as ledger:
        ledger.append(
            "guard.finding",
            run="r",
            technique="T4",
            rule_id="guard.update",
            message=message,
            evidence=path,
            rank=1,
            step=3,
            established=True,
        )
        ledger.append(
            "egress.endpoint", run="r", host=host, port=443, address=host, via="connect", rank=1
        )
        ledger.append("checkpoint.signed", run="r", path=path or "x", digest="sha256:00", step=1)
        ledger.append("custom.event", run="r", note=message, nested={"k": [path, {"h": host}]})
    page = render_run_html(run_dir, keys=[key.public])
    parsed = _assert_inert(page)
    shown = "".join(parsed.text)
    for value in (message, host, shlex.quote(command)):
        if value.strip():
            assert value in shown


def test_a_report_never_overwrites_the_evidence(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", ranks=2, steps=60)
    clean = write_synthetic_run(tmp_path / "clean", ranks=2, steps=60)
    for target in (
        run.run_dir / "run.json",
        run.run_dir / "ledger" / "report.html",
        run.run_dir / "telemetry" / "rank-0.jsonl",
        run.run_dir / "provenance.intoto.json",
        run.checkpoints[0],
        clean.run_dir / "report.html",
    ):
        before = target.read_bytes() if target.exists() else None
        with pytest.raises(InputError, match="refusing to write"):
            write_run_report(run.run_dir, target, against=clean.run_dir, keys=run.keys)
        assert (target.read_bytes() if target.exists() else None) == before
    out = write_run_report(run.run_dir, run.run_dir / "report.html", keys=run.keys)
    assert out.run_id == run.run_id
    page = (run.run_dir / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert page.endswith("</html>\n")
    assert sorted(p.name for p in run.run_dir.iterdir() if p.name.startswith(".")) == []


def test_a_checkpoint_outside_the_run_directory_is_protected_too(tmp_path: Path) -> None:
    from trainwarden.keys import PrivateKey
    from trainwarden.ledger import init_ledger
    from trainwarden.sign import sign_path

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"schema_version": 1, "run_id": "r"}))
    ckpt = tmp_path / "shared" / "ckpt.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    key = PrivateKey.generate("job@x")
    init_ledger(run_dir / "ledger")
    sign_path(ckpt, key, run="r", step=1, ledger=run_dir / "ledger")
    with pytest.raises(InputError, match="refusing to write"):
        write_run_report(run_dir, ckpt, keys=[key.public])
    assert ckpt.read_bytes() == b"weights"


def test_render_is_deterministic_apart_from_the_time(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", ranks=2, steps=60)
    report = read_run(run.run_dir, keys=run.keys)
    assert render_report_html(report) == render_report_html(report)
