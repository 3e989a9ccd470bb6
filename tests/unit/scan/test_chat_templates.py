"""Chat templates that reach Python objects, wherever a loader finds them (CVE-2024-34359 class).

A chat template is Jinja rendered on every request: rendered outside a sandbox (llama-cpp-python
before the fix, any server that builds a plain ``jinja2.Environment``) it runs whatever Python
it reaches. The GGUF metadata case is in the attack corpus; these are the Hugging Face places:
``tokenizer_config.json`` (a string or named templates), ``chat_template.json`` (processors),
``chat_template.jinja`` and ``additional_chat_templates/*.jinja`` (what transformers writes
since templates moved out of the config), inside a zipped model directory too. Each payload
really runs under the vulnerable renderer (the canary appears) and never while scanning.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from canary import Canary
from trainwarden.findings import Verdict
from trainwarden.scan import scan_path

# Ways into Python from a template, each known from published SSTI payloads: the globals of
# Jinja's own helpers (cycler, joiner, lipsum), the attr filter with escaped dunder names,
# and the class hierarchy walk.
PAYLOADS: dict[str, str] = {
    "cycler-globals": "{{ cycler.__init__.__globals__.os.popen(CMD).read() }}",
    "lipsum-globals": "{{ lipsum.__globals__['os'].popen(CMD).read() }}",
    "attr-escaped": (
        "{{ ((lipsum|attr('\\x5f\\x5fglobals\\x5f\\x5f'))['os']|attr('popen'))(CMD).read() }}"
    ),
    "joiner-builtins": (
        "{{ joiner.__init__.__globals__['__builtins__']['__import__']('os').popen(CMD).read() }}"
    ),
    "subclass-walk": (
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}"
        "{% if c.__name__ == 'catch_warnings' %}"
        "{{ c()._module.__builtins__['__import__']('os').popen(CMD).read() }}"
        "{% endif %}{% endfor %}"
    ),
}

# Templates of the shapes real models ship (roles, system prompts, tools as JSON, generation
# prompts, errors raised on bad input, namespaces, dates): none is reported.
LEGIT: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "alternating-with-errors": (
        "{{ bos_token }}{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/...') }}"
        "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] | trim"
        " + ' [/INST]' }}{% else %}{{ ' ' + message['content'] | trim + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
    "tools-namespace-date": (
        "{%- set ns = namespace(system='', found=false) -%}"
        "{%- if not date_string is defined %}{%- set date_string = strftime_now('%d %b %Y') %}"
        "{%- endif %}{%- for message in messages %}{%- if message.role == 'system' %}"
        "{%- set ns.system = message.content %}{%- set ns.found = true %}{%- endif %}"
        "{%- endfor %}{{- '<|system|>Today is ' + date_string + '. ' + ns.system }}"
        "{%- if tools %}{{- '\\nTools: ' }}{%- for tool in tools %}{{- tool | tojson(indent=2) }}"
        "{%- endfor %}{%- endif %}{%- for message in messages if message.role != 'system' %}"
        "{{- '<|' + message.role + '|>' + (message.content if message.content is string "
        "else message.content | map(attribute='text') | join('')) }}{%- if loop.last and "
        "add_generation_prompt %}{{- '<|assistant|>' }}{%- endif %}{%- endfor %}"
    ),
}


def _render_unsandboxed(template: str) -> str:
    """Render as a vulnerable server does: a plain Environment, no sandbox."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.BaseLoader())
    return env.from_string(template).render(
        messages=[{"role": "user", "content": "hi"}], add_generation_prompt=True
    )


def _tokenizer_config(root: Path, template: str) -> None:
    doc = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template}
    (root / "tokenizer_config.json").write_text(json.dumps(doc))


def _named_templates(root: Path, template: str) -> None:
    named = [
        {"name": "default", "template": LEGIT["chatml"]},
        {"name": "tool_use", "template": template},
    ]
    doc = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": named}
    (root / "tokenizer_config.json").write_text(json.dumps(doc))


def _processor_json(root: Path, template: str) -> None:
    (root / "chat_template.json").write_text(json.dumps({"chat_template": template}))


def _jinja_file(root: Path, template: str) -> None:
    (root / "chat_template.jinja").write_text(template)


def _additional(root: Path, template: str) -> None:
    (root / "additional_chat_templates").mkdir()
    (root / "additional_chat_templates" / "tool_use.jinja").write_text(template)


def _zipped_directory(root: Path, template: str) -> None:
    with zipfile.ZipFile(root / "model.zip", "w") as archive:
        archive.writestr("model/config.json", json.dumps({"model_type": "llama"}))
        archive.writestr("model/chat_template.jinja", template)


PLACES: dict[str, Callable[[Path, str], None]] = {
    "tokenizer_config": _tokenizer_config,
    "named-templates": _named_templates,
    "chat_template.json": _processor_json,
    "chat_template.jinja": _jinja_file,
    "additional_chat_templates": _additional,
    "zipped-model-dir": _zipped_directory,
}


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_each_payload_really_runs_under_an_unsandboxed_renderer(
    tmp_path: Path, payload: str
) -> None:
    canary = Canary(tmp_path / "canary")
    _render_unsandboxed(PAYLOADS[payload].replace("CMD", repr(canary.shell_command)))
    canary.assert_present()


@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_a_template_reaching_python_is_never_safe(tmp_path: Path, payload: str, place: str) -> None:
    canary = Canary(tmp_path / "canary")
    model = tmp_path / "model"
    model.mkdir()
    PLACES[place](model, PAYLOADS[payload].replace("CMD", repr(canary.shell_command)))
    report = scan_path(model)
    assert report.verdict is Verdict.UNKNOWN, [(f.path, f.verdict) for f in report.files]
    assert any(f.rule_id == "hf.chat-template" for f in report.findings)
    canary.assert_absent()


@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("template", sorted(LEGIT))
def test_templates_of_real_shapes_are_safe(tmp_path: Path, template: str, place: str) -> None:
    _render_unsandboxed(
        LEGIT[template]
        .replace("raise_exception(", "(")
        .replace("strftime_now('%d %b %Y')", "'1 Jan 2026'")
    )  # the shapes render: they are templates, not strings that merely look like them
    PLACES[place](tmp_path, LEGIT[template])
    report = scan_path(tmp_path)
    assert report.verdict is Verdict.SAFE, [f.message for f in report.findings]


def test_a_template_under_another_name_is_plain_text(tmp_path: Path) -> None:
    # Loaders read chat templates from configs and *.jinja files only; a README quoting a
    # payload is documentation, not a template anything renders.
    (tmp_path / "README.md").write_text(PAYLOADS["cycler-globals"])
    assert scan_path(tmp_path).verdict is Verdict.SAFE


def test_a_template_padded_past_what_the_scanner_parses_is_not_safe(tmp_path: Path) -> None:
    # Loaders parse a config and render a template of any size; the scanner parses JSON up to
    # 16 MiB. Padded past that, the template is found by searching the text, and a *.jinja
    # file that large is reported as not analysed (chat templates are kilobytes).
    payload = PAYLOADS["cycler-globals"].replace("CMD", "'true'")
    padding = " " * (17 << 20)
    doc = '{"tokenizer_class": "PreTrainedTokenizerFast",' + padding + '"chat_template": '
    (tmp_path / "tokenizer_config.json").write_text(doc + json.dumps(payload) + "}")
    (tmp_path / "chat_template.jinja").write_text(padding + payload)
    report = scan_path(tmp_path)
    verdicts = {Path(f.path).name: f.verdict for f in report.files}
    assert verdicts == {
        "tokenizer_config.json": Verdict.UNKNOWN,
        "chat_template.jinja": Verdict.UNKNOWN,
    }
    assert {f.rule_id for f in report.findings} == {"hf.chat-template"}
