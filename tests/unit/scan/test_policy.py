"""The policy: allowlist reasons, the dangerous catalogue, profiles, user entries, pyproject."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from trainwarden.errors import ConfigError
from trainwarden.findings import Location, Severity, Verdict
from trainwarden.scan._pickle import analyse_pickle
from trainwarden.scan._profiles import ALWAYS_ON, OPTIONAL, profile_entries
from trainwarden.scan.policy import (
    PROFILES,
    RULE_ALLOWED,
    RULE_DANGEROUS,
    RULE_NESTED,
    RULE_UNEXPECTED_CALL,
    RULE_UNKNOWN,
    Policy,
    dangerous_reason,
)

ALL_PROFILES = (*ALWAYS_ON, *OPTIONAL)

# Exact exceptions carved out of module-wide catalogue rules, each reviewed: copyreg's
# reconstructors only call the classes they are given (globals checked on their own),
# types.SimpleNamespace is an attribute bag, torch.serialization._get_layout reads a table.
CARVED_OUT = {
    ("copyreg", "_reconstructor"),
    ("copyreg", "__newobj__"),
    ("copyreg", "__newobj_ex__"),
    ("types", "SimpleNamespace"),
    ("torch.serialization", "_get_layout"),
}


def test_profiles_are_described() -> None:
    assert set(PROFILES) == set(ALL_PROFILES)
    assert all(PROFILES[name] for name in PROFILES)


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_every_allowlist_entry_has_a_reason_and_is_not_dangerous(profile: str) -> None:
    entries = profile_entries(profile)
    if profile in ALWAYS_ON:
        assert entries, profile
    for (module, name), (reason, mode) in entries.items():
        assert len(reason) > 15, (module, name)
        assert mode in ("call", "value", "new")
        assert module
        assert name
        # No allowlist entry may also be a known code-execution primitive.
        if (module, name) not in CARVED_OUT:
            assert dangerous_reason(module, name) is None, (module, name)


def test_default_policy_classifies_allowlisted_globals_safe() -> None:
    policy = Policy.default()
    for module, name in [
        ("torch._utils", "_rebuild_tensor_v2"),
        ("collections", "OrderedDict"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.random._pickle", "__randomstate_ctor"),
        ("copyreg", "_reconstructor"),
        ("_codecs", "encode"),
        ("argparse", "Namespace"),
        ("torch", "FloatStorage"),
        ("joblib.numpy_pickle", "NumpyArrayWrapper"),
    ]:
        decision = policy.classify(module, name)
        assert decision.verdict is Verdict.SAFE, (module, name)
        assert decision.rule_id == RULE_ALLOWED
        assert decision.severity is Severity.INFO


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("os", "system"),
        ("posix", "system"),
        ("nt", "system"),
        ("subprocess", "Popen"),
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("builtins", "getattr"),
        ("builtins", "__import__"),
        ("__builtin__", "eval"),
        ("__builtin__", "apply"),
        ("commands", "getoutput"),
        ("runpy", "_run_code"),
        ("pickle", "loads"),
        ("_pickle", "load"),
        ("marshal", "loads"),
        ("torch", "load"),
        ("torch.serialization", "load"),
        ("torch.jit", "load"),
        ("torch.hub", "load"),
        ("torch.fx.graph_module", "reduce_graph_module"),
        ("torch._inductor.codecache", "compile_file"),
        ("numpy", "load"),
        ("numpy.testing._private.utils", "runstring"),
        ("numpy.f2py", "crackfortran"),
        ("types", "CodeType"),
        ("types", "FunctionType"),
        ("functools", "reduce"),
        ("operator", "attrgetter"),
        ("operator", "methodcaller"),
        ("ctypes", "CDLL"),
        ("uuid", "_get_command_stdout"),
        ("pydoc", "pipepager"),
        ("webbrowser", "open"),
        ("shutil", "rmtree"),
        ("socket", "create_connection"),
        ("cloudpickle.cloudpickle", "_make_function"),
        ("dill._dill", "_create_function"),
        ("joblib", "load"),
        ("pip", "main"),
        ("timeit", "timeit"),
        ("code", "InteractiveInterpreter.runcode"),
        ("posixpath", "os.system"),
        ("collections", "OrderedDict.__init__"),
        ("builtins", "str.format"),
        ("pathlib", "Path.write_text"),
        ("torch", "manual_seed"),
        ("random", "seed"),
        ("mypkg", "Thing.__reduce__"),
        ("anything", "x.__globals__"),
        ("_xxsubinterpreters", "run_string"),
        ("_interpreters", "exec"),
        ("joblib.numpy_pickle", "load"),
    ],
)
def test_catalogue_entries_are_unsafe(module: str, name: str) -> None:
    decision = Policy.default().classify(module, name)
    assert decision.verdict is Verdict.UNSAFE, (module, name, decision)
    assert decision.rule_id == RULE_DANGEROUS
    assert decision.severity >= Severity.HIGH


def test_code_execution_primitives_are_critical() -> None:
    policy = Policy.default()
    for module, name in [("os", "system"), ("builtins", "eval"), ("pickle", "loads")]:
        assert policy.classify(module, name).severity is Severity.CRITICAL


def test_python2_spellings_of_allowlisted_names_are_allowed() -> None:
    # A find_class override (the loader) sees unmapped names from protocol < 3 pickles.
    policy = Policy.default()
    assert policy.classify("__builtin__", "set").verdict is Verdict.SAFE
    assert policy.classify("copy_reg", "_reconstructor").verdict is Verdict.SAFE
    assert policy.classify("__builtin__", "eval").verdict is Verdict.UNSAFE


def test_everything_else_is_unknown() -> None:
    decision = Policy.default().classify("mypkg.models", "MyNet")
    assert decision.verdict is Verdict.UNKNOWN
    assert decision.rule_id == RULE_UNKNOWN
    # A module that also holds dangerous helpers is never allowed wholesale.
    assert Policy.default().classify("uuid", "getnode").verdict is not Verdict.SAFE


def test_user_allow_forms() -> None:
    policy = Policy.default().with_allowed(["mypkg.models.MyNet", "mypkg.cfg:Outer.Inner"])
    assert policy.classify("mypkg.models", "MyNet").verdict is Verdict.SAFE
    assert policy.classify("mypkg.cfg", "Outer.Inner").verdict is Verdict.SAFE
    assert policy.classify("mypkg.models", "Other").verdict is Verdict.UNKNOWN
    assert Policy.default().classify("mypkg.models", "MyNet").verdict is Verdict.UNKNOWN
    assert "mypkg.models.MyNet" in policy.allowed


@pytest.mark.parametrize(
    "entry", ["os.system", "builtins:eval", "__builtin__.eval", "pickle.loads"]
)
def test_dangerous_user_allow_is_refused(entry: str) -> None:
    with pytest.raises(ConfigError, match="dangerous"):
        Policy.default().with_allowed([entry])
    policy = Policy.default().with_allowed([entry], allow_unsafe_globals=True)
    assert entry in policy.unsafe_allowed


@pytest.mark.parametrize("entry", ["", "os", "a.*", "a..b", "1x.y", "mod:", ":name", "a b.c"])
def test_malformed_user_allow_is_refused(entry: str) -> None:
    with pytest.raises(ConfigError):
        Policy.default().with_allowed([entry])


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown profile"):
        Policy.default(profiles=["nope"])
    assert set(ALWAYS_ON) <= set(Policy.default().profiles)
    assert "sklearn" in Policy.default(profiles=["sklearn"]).profiles


def test_policy_is_picklable_for_worker_processes() -> None:
    policy = Policy.default(profiles=["transformers"], allow=["mypkg.A"])
    clone = pickle.loads(pickle.dumps(policy))
    assert clone == policy
    assert clone.classify("mypkg", "A").verdict is Verdict.SAFE


def test_pyproject_section(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.trainwarden]\nallow = ["mypkg.models.MyNet"]\n'
        'profiles = ["lightning"]\n[tool.trainwarden.env]\nother-setting = 1\n'
    )
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    policy = Policy.from_pyproject(sub, allow=["mypkg.x.Y"])
    assert policy.classify("mypkg.models", "MyNet").verdict is Verdict.SAFE
    assert policy.classify("mypkg.x", "Y").verdict is Verdict.SAFE
    assert "lightning" in policy.profiles
    assert Policy.from_pyproject(tmp_path / "pyproject.toml") == Policy.from_pyproject(sub)


def test_no_pyproject_means_default(tmp_path: Path) -> None:
    assert Policy.from_pyproject(tmp_path) == Policy.default()  # no file anywhere above
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert Policy.from_pyproject(tmp_path) == Policy.default()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[tool.trainwarden\nallow = 1", "not valid TOML"),
        ("[tool.trainwarden]\nallow = 'os.system'", "list of strings"),
        ("[tool.trainwarden]\nallow = [1]", "list of strings"),
        ("[tool.trainwarden]\nprofiles = ['nope']", "unknown profile"),
        ("[tool.trainwarden]\nallow = ['os.system']", "dangerous"),
        ("[tool]\ntrainwarden = 3", "must be a table"),
    ],
)
def test_malformed_pyproject_is_a_config_error(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "pyproject.toml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        Policy.from_pyproject(tmp_path)


def test_pyproject_cannot_allow_unsafe_even_with_the_flag(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.trainwarden]\nallow = ['os.system']\n")
    with pytest.raises(ConfigError):
        Policy.from_pyproject(tmp_path, allow_unsafe_globals=True)


# -- judging analyses ----------------------------------------------------------------------------

LOC = Location("model.pt", member="archive/data.pkl")


def test_judge_reports_only_what_is_not_allowed() -> None:
    data = pickle.dumps({"a": [1, 2]}, protocol=2)
    assert Policy.default().judge(analyse_pickle(data), LOC) == ()
    findings = Policy.default().judge(analyse_pickle(b"cos\nsystem\n(S'x'\ntR."), LOC)
    (finding,) = findings
    assert finding.rule_id == RULE_DANGEROUS
    assert finding.verdict is Verdict.UNSAFE
    assert finding.severity is Severity.CRITICAL
    assert finding.evidence == "os.system"
    assert finding.location.offset == 0
    assert finding.location.member == "archive/data.pkl"
    assert "calls" in finding.message


def test_judge_merges_repeated_imports() -> None:
    data = b"(cmypkg\nA\ncmypkg\nA\ncmypkg\nA\nt."
    (finding,) = Policy.default().judge(analyse_pickle(data), LOC)
    assert finding.rule_id == RULE_UNKNOWN
    assert "3 times" in finding.message


def test_unresolved_name_from_dangerous_call_is_unsafe() -> None:
    su = lambda t: b"\x8c" + bytes([len(t)]) + t.encode()  # noqa: E731
    data = b"\x80\x04" + su("builtins") + su("getattr") + b"\x93" + su("o") + su("s") + b"\x86R"
    data += su("system") + b"\x93."
    findings = Policy.default().judge(analyse_pickle(data), LOC)
    by_rule = {f.rule_id: f for f in findings}
    assert by_rule["pickle.unresolved-global"].verdict is Verdict.UNSAFE
    assert by_rule[RULE_DANGEROUS].evidence == "builtins.getattr"


def test_unresolved_name_from_harmless_call_is_unknown() -> None:
    su = lambda t: b"\x8c" + bytes([len(t)]) + t.encode()  # noqa: E731
    data = b"\x80\x04" + su("mypkg") + su("f") + b"\x93)R" + su("g") + b"\x93."
    findings = Policy.default().judge(analyse_pickle(data), LOC)
    unresolved = [f for f in findings if f.rule_id == "pickle.unresolved-global"]
    assert unresolved
    assert unresolved[0].verdict is Verdict.UNKNOWN


def test_nested_torch_payloads_are_unknown_until_verified() -> None:
    payload = b"\x80\x02N."  # stands for an embedded torch.save archive
    su = lambda t: b"\x8c" + bytes([len(t)]) + t.encode()  # noqa: E731
    data = b"\x80\x04" + su("torch.storage") + su("_load_from_bytes") + b"\x93"
    data += b"C" + bytes([len(payload)]) + payload + b"\x85R."
    a = analyse_pickle(data)
    (nested,) = a.nested
    assert data[nested.start : nested.end] == payload
    assert nested.loader == "torch"
    (finding,) = Policy.default().judge(a, LOC)
    assert finding.rule_id == RULE_NESTED
    assert finding.verdict is Verdict.UNKNOWN
    assert Policy.default().judge(a, LOC, nested_safe=True) == ()
    # A payload computed at load time cannot be verified, whatever the caller says.
    opaque = b"\x80\x04" + su("torch.storage") + su("_load_from_bytes") + b"\x93"
    opaque += su("x") + b"\x85R."
    b = analyse_pickle(opaque)
    assert b.nested == ()
    assert [r.name for r in b.opaque_nested] == ["_load_from_bytes"]
    assert [f.rule_id for f in Policy.default().judge(b, LOC, nested_safe=True)] == [RULE_NESTED]


def test_extension_code_is_unknown() -> None:
    findings = Policy.default().judge(analyse_pickle(b"\x80\x02\x82\x05)R."), LOC)
    assert [f.verdict for f in findings] == [Verdict.UNKNOWN]


def test_value_only_entry_called_is_unexpected() -> None:
    data = b"\x80\x02ctorch\nFloatStorage\nK\x05\x85R."
    (finding,) = Policy.default().judge(analyse_pickle(data), LOC)
    assert finding.rule_id == RULE_UNEXPECTED_CALL
    assert finding.verdict is Verdict.UNKNOWN


def test_issues_become_findings_never_safe() -> None:
    findings = Policy.default().judge(analyse_pickle(b"\x80\x02(K\x01"), LOC)
    assert [f.rule_id for f in findings] == ["pickle.truncated"]
    assert all(f.verdict is not Verdict.SAFE for f in findings)


def test_global_mutation_is_unsafe() -> None:
    data = b"\x80\x02cargparse\nNamespace\nN}\x86b."
    findings = Policy.default().judge(analyse_pickle(data), LOC)
    assert [(f.rule_id, f.verdict) for f in findings] == [
        ("pickle.global-mutation", Verdict.UNSAFE)
    ]


def test_allowlist_listing_has_reasons() -> None:
    listing = Policy.default(allow=["mypkg.A"]).allowlist()
    assert listing["torch._utils:_rebuild_tensor_v2"]
    assert listing["mypkg.A"] == "allowed by the user"
