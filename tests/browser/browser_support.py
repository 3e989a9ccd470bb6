"""Helpers for the browser tests: load a page cleanly, list the requests it made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def requests_of(driver: Any, page_url: str) -> list[str]:
    """URLs of every request the page at ``page_url`` made (from the performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] != "Network.requestWillBeSent":
            continue
        params = message["params"]
        if params.get("documentURL", "").startswith(page_url) or params["request"][
            "url"
        ].startswith(page_url):
            urls.append(params["request"]["url"])
    return urls


def open_page(driver: Any, path: Path) -> str:
    """Load ``path`` and return its URL; the logs collected before are dropped."""
    driver.get("about:blank")
    driver.get_log("browser")
    driver.get_log("performance")
    url = path.resolve().as_uri()
    driver.get(url)
    driver.execute_script("return document.readyState")
    return url
