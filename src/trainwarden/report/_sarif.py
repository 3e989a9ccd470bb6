"""SARIF 2.1.0 rendering from plain dicts: rules in ``tool.driver.rules``, one result a finding."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from trainwarden.findings import Finding, Report

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
INFORMATION_URI = "https://github.com/trainwarden/trainwarden"


def render_sarif(report: Report) -> str:
    """Render ``report`` as a SARIF 2.1.0 log with one run."""
    return json.dumps(sarif_log(report), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def sarif_log(report: Report) -> dict[str, Any]:
    """Build the SARIF log as plain dicts."""
    from trainwarden import __version__

    rules: dict[str, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    for file in sorted(report.files, key=lambda f: f.path):
        for finding in sorted(file.findings, key=lambda f: (f.rule_id, f.location.describe())):
            rule = rules.setdefault(finding.rule_id, _rule(finding))
            # A rule's default level is the worst level any of its results had.
            if _level_rank(finding.severity.sarif_level) > _level_rank(
                rule["defaultConfiguration"]["level"]
            ):
                rule["defaultConfiguration"]["level"] = finding.severity.sarif_level
            results.append(_result(finding))
    ordered = sorted(rules)
    index = {rule_id: i for i, rule_id in enumerate(ordered)}
    for result in results:
        result["ruleIndex"] = index[result["ruleId"]]
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": report.tool,
                        "version": __version__,
                        "informationUri": INFORMATION_URI,
                        "rules": [rules[r] for r in ordered],
                    }
                },
                "results": results,
                "properties": {
                    "command": report.command,
                    "summary": report.summary(),
                    **({"configuration": dict(report.config)} if report.config else {}),
                },
            }
        ],
    }


def _level_rank(level: str) -> int:
    return {"none": 0, "note": 1, "warning": 2, "error": 3}[level]


def _rule(finding: Finding) -> dict[str, Any]:
    return {
        "id": finding.rule_id,
        "name": "".join(part.capitalize() for part in finding.rule_id.replace("-", "_").split("_")),
        "shortDescription": {"text": finding.rule_id},
        "defaultConfiguration": {"level": finding.severity.sarif_level},
    }


def _result(finding: Finding) -> dict[str, Any]:
    loc = finding.location
    # A URI reference (RFC 3986), as SARIF requires: spaces, '#', '%' and non-ASCII
    # characters in a path are percent-encoded (code-scanning uploads reject them raw).
    physical: dict[str, Any] = {"artifactLocation": {"uri": quote(loc.path, safe="/")}}
    if loc.offset is not None and not loc.member:
        physical["region"] = {"byteOffset": loc.offset}
    location: dict[str, Any] = {"physicalLocation": physical}
    if loc.member:
        location["logicalLocations"] = [{"fullyQualifiedName": loc.member, "kind": "member"}]
    props: dict[str, Any] = {"severity": finding.severity.label, "verdict": finding.verdict.value}
    if finding.evidence is not None:
        props["evidence"] = finding.evidence
    if loc.offset is not None:
        props["offset"] = loc.offset
    return {
        "ruleId": finding.rule_id,
        "level": finding.severity.sarif_level,
        "message": {"text": finding.message},
        "locations": [location],
        "properties": props,
    }


__all__ = ["SARIF_SCHEMA", "SARIF_VERSION", "render_sarif", "sarif_log"]
