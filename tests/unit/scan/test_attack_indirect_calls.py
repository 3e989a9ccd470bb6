"""Allowlisted higher-order functions call the callables they are given: those are calls too.

``value`` entries (type tags, constants) may be imported but never called, ``new`` entries
(classes rebuilt from a saved state) never have their ``__init__`` run with arguments of the
pickle's choosing. A pickle that hands such an entry to an allowlisted function that calls it
(``copyreg._reconstructor`` runs ``base.__init__(obj, state)``, torch's
``_rebuild_from_type_v2`` runs ``func(*args)``, numpy's random-state constructors call the
generator class) calls it as surely as REDUCE does, and must not be ``safe``. The legitimate
pickles these functions appear in (protocol 0/1 objects, tensor subclasses, numpy random
states) stay safe.
"""

from __future__ import annotations

import pickle

import pytest

from trainwarden.findings import Location, Verdict
from trainwarden.scan import scan_bytes
from trainwarden.scan._pickle import analyse_pickle
from trainwarden.scan.policy import RULE_UNEXPECTED_CALL, Policy

LOC = Location(path="x.pkl")


def _su(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data


def _g(module: str, name: str) -> bytes:
    return _su(module) + _su(name) + b"\x93"


def _reduce(func: bytes, *args: bytes) -> bytes:
    return func + b"(" + b"".join(args) + b"tR"


# (higher-order function, how its arguments place the callable) -> pickle calling ``target``.
def _through(kind: str, target: bytes) -> bytes:
    if kind == "reconstructor-base":
        body = _reduce(_g("copyreg", "_reconstructor"), _g("builtins", "object"), target, b"N")
    elif kind == "rebuild-from-type-func":
        body = _reduce(
            _g("torch._tensor", "_rebuild_from_type_v2"), target, _g("torch", "Tensor"), b")", b"N"
        )
    elif kind == "randomstate-ctor":
        body = _reduce(_g("numpy.random._pickle", "__randomstate_ctor"), _su("MT19937"), target)
    elif kind == "generator-ctor":
        body = _reduce(_g("numpy.random._pickle", "__generator_ctor"), _su("PCG64"), target)
    elif kind == "bit-generator-ctor":
        body = _reduce(_g("numpy.random._pickle", "__bit_generator_ctor"), target)
    elif kind == "obj-opcode":
        body = b"(" + _g("copyreg", "_reconstructor") + _g("builtins", "object") + target
        body += b"No"
    else:  # pragma: no cover - the parametrisation lists every kind
        raise AssertionError(kind)
    return b"\x80\x04" + body + b"."


KINDS = (
    "reconstructor-base",
    "rebuild-from-type-func",
    "randomstate-ctor",
    "generator-ctor",
    "bit-generator-ctor",
    "obj-opcode",
)
# A value-only entry of every always-on profile, and a reconstruct-only class of a profile.
TARGETS = (
    ("torch", "FloatStorage", ()),
    ("numpy", "matrix", ()),
    ("torch.nested._internal.nested_tensor", "NestedTensor", ()),
    ("numpy", "finfo", ()),
    ("transformers.training_args", "TrainingArguments", ("transformers",)),
)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("module", "name", "profiles"), TARGETS)
def test_entry_called_through_a_higher_order_function_is_not_safe(
    kind: str, module: str, name: str, profiles: tuple[str, ...]
) -> None:
    data = _through(kind, _g(module, name))
    policy = Policy.default(profiles=profiles)
    report = scan_bytes(data, policy=policy)
    assert report.verdict is not Verdict.SAFE, kind
    findings = policy.judge(analyse_pickle(data), LOC)
    assert [f.rule_id for f in findings if f.evidence == f"{module}.{name}"] == [
        RULE_UNEXPECTED_CALL
    ]


def test_callable_entries_handed_over_stay_safe() -> None:
    # The same functions with the callables legitimate pickles hand them.
    for kind, target in (
        ("reconstructor-base", _g("collections", "OrderedDict")),
        ("rebuild-from-type-func", _g("torch._utils", "_rebuild_tensor_v2")),
        ("randomstate-ctor", _g("numpy.random._pickle", "__bit_generator_ctor")),
        ("bit-generator-ctor", _g("numpy.random._pcg64", "PCG64")),
    ):
        assert scan_bytes(_through(kind, target)).verdict is Verdict.SAFE, kind


@pytest.mark.parametrize("protocol", [0, 1, 2, 4, 5])
def test_numpy_random_states_and_old_protocol_objects_stay_safe(protocol: int) -> None:
    import numpy as np

    data = pickle.dumps(
        {
            "legacy": np.random.RandomState(3),
            "generator": np.random.default_rng(4),
            "bits": np.random.PCG64(5),
            "ordered": __import__("collections").OrderedDict(a=1),
        },
        protocol=protocol,
    )
    assert scan_bytes(data).verdict is Verdict.SAFE
