"""skops archives: every type ``schema.json`` names is judged; what cannot be read is unknown.

The catalogue proves the call attacks real (``skops-*``); these pin the other node rules on
schemas written the way ``skops.io.dump`` writes them.
"""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from trainwarden.findings import Verdict
from trainwarden.scan import Policy, scan_bytes


def _skops(schema: dict[str, object] | bytes) -> bytes:
    text = schema if isinstance(schema, bytes) else json.dumps({**schema, "protocol": 2}).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("schema.json", text)
    return out.getvalue()


def _node(loader: str, module: str, name: str, content: object = None) -> dict[str, object]:
    return {"__class__": name, "__module__": module, "__loader__": loader, "content": content}


@pytest.mark.parametrize(
    ("schema", "verdict"),
    [
        (_node("DictNode", "builtins", "dict", {}), Verdict.SAFE),
        (_node("FunctionNode", "posix", "system"), Verdict.UNSAFE),
        (_node("TypeNode", "subprocess", "Popen"), Verdict.UNSAFE),
        (_node("ObjectNode", "mypkg.models", "Net", {}), Verdict.UNKNOWN),
        (_node("FutureNode", "builtins", "dict"), Verdict.UNKNOWN),  # a loader we do not know
        (
            _node("MethodNode", "", "", {"func": "system", "obj": _node("ObjectNode", "os", "x")}),
            Verdict.UNSAFE,
        ),
    ],
    ids=["dict", "function", "type", "unknown-class", "unknown-loader", "method"],
)
def test_schema_types_are_judged(schema: dict[str, object], verdict: Verdict) -> None:
    assert scan_bytes(_skops(schema)).verdict is verdict


def test_unparseable_schema_is_unknown() -> None:
    assert scan_bytes(_skops(b'{"__loader__": ')).verdict is Verdict.UNKNOWN


def test_legitimate_skops_is_safe_under_the_sklearn_profile() -> None:
    sio = pytest.importorskip("skops.io")
    np = pytest.importorskip("numpy")
    from sklearn.tree import DecisionTreeClassifier

    model = DecisionTreeClassifier().fit(np.eye(4), [0, 1, 0, 1])
    data = sio.dumps(model)
    assert scan_bytes(data).verdict is Verdict.UNKNOWN  # sklearn classes need the profile
    assert scan_bytes(data, policy=Policy.default(profiles=["sklearn"])).verdict is Verdict.SAFE


def test_schema_is_checked_in_an_archive_that_also_looks_like_keras() -> None:
    # config.json + metadata.json make the zip a Keras archive by its names; skops.io.load
    # reads schema.json all the same.
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {}}))
        zf.writestr("metadata.json", "{}")
        zf.writestr("schema.json", json.dumps(_node("FunctionNode", "posix", "system")))
    assert scan_bytes(out.getvalue()).verdict is Verdict.UNSAFE
