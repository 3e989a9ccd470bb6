"""The forensic report in a real headless Chromium: renders, makes no request, filters, prints.

Run against a sabotaged run whose attacker-controlled strings (paths, commands, messages,
host names) are script injections: the page must show them as text and run none of them.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pytest
from browser_support import open_page, requests_of

from trainwarden.report import write_run_report
from trainwarden.report._synthetic import SyntheticRun, write_synthetic_run


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticRun, Path]:
    root = tmp_path_factory.mktemp("browser")
    clean = write_synthetic_run(root / "clean", ranks=8, steps=600)
    run = write_synthetic_run(root / "run", ranks=8, steps=600, drill=True, hostile=True)
    out = root / "report.html"
    write_run_report(
        run.run_dir,
        out,
        against=clean.run_dir,
        keys=[*run.keys, run.insider_key, *clean.keys],
        seal_keys=[run.seal_key, clean.seal_key],
    )
    return run, out


@pytest.fixture(scope="module")
def js_browser(browser_factory: Any) -> Any:
    return browser_factory(javascript=True)


def _problems(driver: Any) -> list[dict[str, Any]]:
    # Any warning or error: script errors, CSP refusals ("Refused to load..."), failed loads.
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


def test_renders_with_no_console_error_and_no_request(
    js_browser: Any, report_file: tuple[SyntheticRun, Path], tmp_path: Path
) -> None:
    _, path = report_file
    url = open_page(js_browser, path)
    state = js_browser.execute_script(
        "return {xss: window.__xss === undefined ? null : window.__xss,"
        " js: document.documentElement.classList.contains('js'),"
        " plots: document.querySelectorAll('svg.plot').length,"
        " heatmaps: document.querySelectorAll('svg.heatmap image').length,"
        " cards: document.querySelectorAll('article.card').length,"
        " rows: document.querySelectorAll('#timeline-table tbody tr').length,"
        " chips: document.querySelectorAll('#timeline-filters button').length}"
    )
    assert state["xss"] is None  # no injected string ran
    assert state["js"] is True  # our own script did
    assert state["plots"] >= 11
    assert state["heatmaps"] == 2
    assert state["cards"] >= 8
    assert state["rows"] > 20
    assert state["chips"] >= 6
    assert _problems(js_browser) == []
    requests = requests_of(js_browser, url)
    assert requests[0] == url
    assert all(u == url or u.startswith("data:image/png;base64,") for u in requests), requests
    shot = tmp_path / "report.png"
    assert js_browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000


def test_heatmaps_decode_and_show_a_read_out(
    js_browser: Any, report_file: tuple[SyntheticRun, Path]
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    _, path = report_file
    open_page(js_browser, path)
    sizes = js_browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const hrefs = [...document.querySelectorAll('svg.heatmap image')]"
        "  .map(i => i.getAttribute('href'));"
        "Promise.all(hrefs.map(h => { const im = new Image(); im.src = h;"
        "  return im.decode().then(() => [im.naturalWidth, im.naturalHeight]); }))"
        "  .then(done, e => done(String(e)));"
    )
    assert isinstance(sizes, list)
    assert [h for _, h in sizes] == [8, 8]
    heat = js_browser.find_element("css selector", "svg.heatmap[data-key='work']")
    js_browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", heat)
    ActionChains(js_browser).move_to_element_with_offset(heat, 200, 10).perform()
    tip = js_browser.find_element("css selector", ".tooltip")
    assert tip.is_displayed()
    assert tip.text.startswith("rank ")
    assert "steps" in tip.text
    assert _problems(js_browser) == []


def test_timeline_filters(js_browser: Any, report_file: tuple[SyntheticRun, Path]) -> None:
    _, path = report_file
    open_page(js_browser, path)
    visible = (
        "return [...document.querySelectorAll('#timeline-table tbody tr')]"
        ".filter(r => !r.hidden).map(r => [r.dataset.cat, r.dataset.ranks, r.textContent])"
    )
    total = len(js_browser.execute_script(visible))
    js_browser.find_element("css selector", "#timeline-filters button[data-cat='kill']").click()
    rows = js_browser.execute_script(visible)
    assert rows
    assert {cat for cat, _, _ in rows} == {"kill"}
    count = js_browser.find_element("css selector", "#timeline-filters .count").text
    assert count == f"{len(rows)} of {total} events"
    js_browser.find_element("css selector", "#timeline-filters button[data-cat='kill']").click()
    search = js_browser.find_element("css selector", "#timeline-filters input[type=search]")
    search.send_keys("mallory")
    rows = js_browser.execute_script(visible)
    assert rows
    assert all("mallory" in text for _, _, text in rows)
    search.clear()
    search.send_keys(" ")  # fires input; an empty query shows everything again
    from selenium.webdriver.support.ui import Select

    Select(js_browser.find_element("css selector", "#timeline-filters select")).select_by_value("3")
    rows = js_browser.execute_script(visible)
    assert rows
    assert all("3" in ranks.split() for _, ranks, _ in rows)
    # A link from a card to a timeline row hidden by the filters brings the row back.
    hidden = js_browser.execute_script(
        "const r = [...document.querySelectorAll('#timeline-table tbody tr')]"
        ".find(r => r.hidden); return r ? r.id : null"
    )
    assert hidden
    js_browser.execute_script("location.hash = arguments[0]", hidden)
    time.sleep(0.2)
    assert (
        js_browser.execute_script("return document.getElementById(arguments[0]).hidden", hidden)
        is False
    )
    assert _problems(js_browser) == []


def test_rank_picker_draws_any_rank(
    js_browser: Any, report_file: tuple[SyntheticRun, Path]
) -> None:
    from selenium.webdriver.support.ui import Select

    _, path = report_file
    open_page(js_browser, path)
    picker = Select(js_browser.find_element("css selector", "#phase-picker select"))
    assert len(picker.options) == 8
    assert picker.first_selected_option.get_attribute("value") == "3"  # the flagged rank
    picker.select_by_value("6")
    title = js_browser.find_element("css selector", "#phase-slot h3").text
    assert title.startswith("Rank 6")
    areas = js_browser.find_elements("css selector", "#phase-slot svg path.area")
    assert len(areas) == 4
    assert all(len(a.get_attribute("d")) > 100 for a in areas)
    assert _problems(js_browser) == []


def test_prints_to_pdf_with_the_print_stylesheet(
    js_browser: Any, report_file: tuple[SyntheticRun, Path], tmp_path: Path
) -> None:
    _, path = report_file
    open_page(js_browser, path)
    js_browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        nav = js_browser.execute_script(
            "return getComputedStyle(document.querySelector('nav.toc')).display"
        )
        assert nav == "none"
    finally:
        js_browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
    pdf = js_browser.execute_cdp_cmd("Page.printToPDF", {"printBackground": True})
    data = base64.b64decode(pdf["data"])
    (tmp_path / "report.pdf").write_bytes(data)
    assert data[:5] == b"%PDF-"
    assert len(data) > 50_000


def test_usable_with_javascript_off(
    browser_factory: Any, report_file: tuple[SyntheticRun, Path], tmp_path: Path
) -> None:
    _, path = report_file
    driver = browser_factory(javascript=False)
    url = open_page(driver, path)
    find = driver.find_elements
    assert "js" not in (find("css selector", "html")[0].get_attribute("class") or "")
    assert find("css selector", "#timeline-filters button") == []  # the script did not run
    rows = find("css selector", "#timeline-table tbody tr")
    assert len(rows) > 20
    assert all(r.is_displayed() for r in rows[:50])
    plots = [p for p in find("css selector", "svg.plot") if p.is_displayed()]
    assert len(plots) >= 10  # all but the picker's chart, which the script draws
    heat = find("css selector", "svg.heatmap image")[0]
    assert heat.size["width"] > 500
    for table in ("kills", "checkpoints", "egress", "ledger"):
        assert find("css selector", f"#{table} table tbody tr"), table
    assert find("css selector", "article.card")
    assert not find("css selector", "#phase-picker select")
    assert all(u == url or u.startswith("data:") for u in requests_of(driver, url))
    shot = tmp_path / "report-nojs.png"
    assert driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000
