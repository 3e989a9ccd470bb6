"""The scan policy's public names, kept importable here (``trainwarden.scan`` exports them too).

The code lives in ``_policy``, ``_catalogue`` (dangerous names) and ``_config`` (pyproject).
"""

from __future__ import annotations

from trainwarden.scan._catalogue import dangerous_reason
from trainwarden.scan._policy import (
    PROFILES,
    RULE_ALLOWED,
    RULE_DANGEROUS,
    RULE_NESTED,
    RULE_UNEXPECTED_CALL,
    RULE_UNKNOWN,
    Decision,
    Policy,
)

__all__ = [
    "PROFILES",
    "RULE_ALLOWED",
    "RULE_DANGEROUS",
    "RULE_NESTED",
    "RULE_UNEXPECTED_CALL",
    "RULE_UNKNOWN",
    "Decision",
    "Policy",
    "dangerous_reason",
]
