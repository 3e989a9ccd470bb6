"""skops archives (``.skops``): the types ``schema.json`` makes ``skops.io.load`` resolve.

skops imports each node's ``__module__``/``__class__`` and, for most nodes, calls what it
found (``ConstructorFromReduceNode`` calls it with the node's arguments, ``DictNode`` with
none). skops refuses types the user did not trust, but its documented workflow trusts what
``get_untrusted_types`` lists, which is what the file names: so every named type is judged
as a pickle's import of it would be. Nothing is imported here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from trainwarden.findings import Verdict
from trainwarden.scan._formats._base import Context

__all__ = ["check_skops_schema"]

# Node loaders of skops' protocols. Data nodes build fixed builtin types from the content
# (json.loads, bytes, slice): the type they name is not resolved.
_DATA_NODES = frozenset({"JsonNode", "BytesNode", "BytearrayNode", "SliceNode", "CachedNode"})
_TYPE_NODES = frozenset(
    {
        "ConstructorFromReduceNode", "DTypeNode", "DefaultDictNode", "DictNode",
        "FunctionNode", "ListNode", "LossNode", "MaskedArrayNode", "MethodNode",
        "NdArrayNode", "ObjectNode", "OperatorFuncNode", "PartialNode", "QuantileForestNode",
        "RandomGeneratorNode", "RandomStateNode", "SetNode", "SparseMatrixNode", "TreeNode",
        "TupleNode", "TypeNode", "_DictWithDeprecatedKeysNode",
    }
)  # fmt: skip


def check_skops_schema(ctx: Context, text: bytes, member: str | None) -> None:
    """Judge every type the schema names with the pickle policy; unknown node kinds too."""
    try:
        schema = json.loads(text)
    except (ValueError, RecursionError) as exc:
        ctx.unknown(
            "skops.unparsed-schema",
            "skops schema.json could not be parsed; the types it names were not checked",
            member,
            evidence=str(exc)[:200],
        )
        return
    seen: set[str] = set()
    for loader, module, name in _nodes(schema):
        if loader in _DATA_NODES:
            continue
        if loader not in _TYPE_NODES:
            _report(ctx, member, seen, f"loader {loader}", None)
            continue
        _report(ctx, member, seen, f"{module}.{name}", ctx.policy.classify(module, name))


def _report(ctx: Context, member: str | None, seen: set[str], what: str, decision: Any) -> None:
    if what in seen:
        return
    seen.add(what)
    if decision is None:
        ctx.unknown(
            "skops.unknown-node",
            "skops node kind the scanner does not know; what it constructs was not checked",
            member,
            evidence=what[:200],
        )
    elif decision.verdict is not Verdict.SAFE:
        ctx.add(
            decision.rule_id,
            decision.severity,
            f"skops.io.load resolves {what} (and trusting what get_untrusted_types lists "
            f"calls it): {decision.reason}",
            member,
            verdict=decision.verdict,
            evidence=what[:200],
        )


def _nodes(value: Any) -> Iterator[tuple[str, str, str]]:
    # Every dict with a __loader__ is a node; MethodNode's method is resolved on its object,
    # so it is judged as that attribute of the object's type (never allowlisted as such).
    if isinstance(value, dict):
        loader = value.get("__loader__")
        if loader is not None:
            module, name = value.get("__module__"), value.get("__class__")
            if loader == "MethodNode" and isinstance(value.get("content"), dict):
                obj, func = value["content"].get("obj"), value["content"].get("func")
                if isinstance(obj, dict):
                    module, name = obj.get("__module__"), f"{obj.get('__class__')}.{func}"
            yield str(loader), str(module), str(name)
        for item in value.values():
            yield from _nodes(item)
    elif isinstance(value, list):
        for item in value:
            yield from _nodes(item)
