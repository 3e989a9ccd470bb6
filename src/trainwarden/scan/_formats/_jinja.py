"""Chat templates: Jinja that tokenizers and inference servers render with the model.

A chat template ships with the model (``tokenizer_config.json``'s ``chat_template``, a
``chat_template.json`` or ``chat_template.jinja`` beside it, a GGUF's
``tokenizer.chat_template*`` metadata) and is rendered on every request. Rendered outside a
sandbox (llama-cpp-python before CVE-2024-34359 was fixed) it runs any Python it reaches;
rendered inside one (transformers' ``ImmutableSandboxedEnvironment``) it is one sandbox
escape away. Legitimate templates format messages: they need none of the constructs that
reach Python objects (dunder attributes, ``|attr``, the globals Jinja exposes), so a template
using one is reported and keeps its file from being called safe.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from trainwarden.scan._formats._base import Context

__all__ = ["TEMPLATE_SUFFIXES", "check_template", "config_templates"]

# Jinja constructs used to escape the sandbox or reach Python objects (SSTI); legitimate chat
# templates need none of them.
_RISKY = (
    r"__\w+__|\|\s*attr\b|\battr\s*\(|\blipsum\b|\bcycler\b|\bjoiner\b|\bself\s*\.|"
    r"\bimport\b|\bos\s*\.|\bpopen\b|\bsubprocess\b|\beval\s*\(|\bexec\s*\(|\bgetattr\b|"
    r"\bglobals\b|\bbuiltins\b|\bmro\b|\bsubclasses\b|\bfrom_pyfile\b|\bconfig\s*\."
)
# Files transformers writes a template to (chat_template.jinja, additional_chat_templates/).
TEMPLATE_SUFFIXES = (".jinja", ".jinja2", ".j2")


def check_template(ctx: Context, template: str, key: str, member: str | None, *, rule: str) -> None:
    """Report ``template`` (found under ``key``) when it reaches for Python objects."""
    hits = sorted({m.group(0) for m in re.finditer(_RISKY, template)})
    if hits:
        ctx.unknown(
            rule,
            f"chat template {key!r} uses Jinja constructs that reach Python objects (a known "
            "template-injection vector in servers that render it)",
            member,
            evidence=", ".join(hits)[:200],
        )


def config_templates(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(key, template)`` for each chat template a tokenizer or processor config holds.

    ``chat_template`` is a string, or a list of ``{"name": ..., "template": ...}`` (named
    templates, e.g. ``tool_use``); anything else there is not a template a loader renders.
    """
    value = doc.get("chat_template")
    if isinstance(value, str):
        yield "chat_template", value
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("template"), str):
                yield f"chat_template[{item.get('name')!s:.40}]", item["template"]
