"""JSON rendering: the shape of the interface contract, deterministic (sorted, stable)."""

from __future__ import annotations

import json

from trainwarden.findings import Report


def render_json(report: Report) -> str:
    """Render ``report`` as the contract's JSON document, with a trailing newline."""
    return json.dumps(report.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
