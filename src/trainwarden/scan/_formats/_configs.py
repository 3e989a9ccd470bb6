"""Configuration files that pull in code, and plain JSON, text and data.

HF ``config.json`` (``auto_map``), Keras configs (Lambda layers, modules outside keras) and
legacy Keras HDF5 files are reported when they make a loader import or run code; chat
templates (in configs and ``*.jinja`` files) when they reach for Python objects.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from trainwarden.findings import Severity, Verdict
from trainwarden.scan._formats._base import Blob, Context
from trainwarden.scan._formats._jinja import TEMPLATE_SUFFIXES, check_template, config_templates

__all__ = [
    "analyse_hdf5",
    "check_keras_config",
    "classify_data",
    "data_format",
    "hdf5_model_config",
]

_JSON_MAX = 16 << 20
_HDF5_WINDOW = 64 << 20
_HF_KEYS = frozenset(
    {
        "model_type",
        "architectures",
        "auto_map",
        "transformers_version",
        "_name_or_path",
        "tokenizer_class",
    }
)
# Patterns are compiled on first use (re caches them): most scans never need them.
_LAMBDA_RE = rb'"class_name"\s*:\s*"Lambda"'
_MODULE_RE = rb'"module"\s*:\s*"([^"\\]{1,200})"'
_ESCAPE_RE = rb"\\u([0-9a-fA-F]{4})"
# Keys that make Hugging Face loaders pull in code (or render a template), as in JSON text.
_REMOTE_KEY_RE = rb'"(auto_map|custom_pipelines|trust_remote_code|chat_template)"\s*:'
_SEARCH_CHUNK = 4 << 20
_SEARCH_OVERLAP = 1024  # longer than any of the keys written with \uXXXX escapes
_KERAS_KEYS = (b'"Lambda"', b'"module"')
_REMOTE_KEYS = (b'"auto_map"', b'"custom_pipelines"', b'"trust_remote_code"', b'"chat_template"')
# An escape of one of the keys' characters (a-z, "_"): json.dumps never writes these, so
# legitimate files (tokenizer vocabularies full of other escapes) skip the slow unescaping.
_KEY_CHAR_ESCAPE_RE = rb"\\u00(?:5[fF]|6[1-9a-fA-F]|7[0-9aA])"


def _load_json(blob: Blob, head: bytes) -> Any:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] not in (b"{", b"[") or blob.size > _JSON_MAX:
        return None
    try:
        return json.loads(bytes(blob.read(0, blob.size)))
    except (ValueError, RecursionError):
        return None


def _is_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the window is still text.
        if exc.start < len(head) - 4:
            return False
        decoded = head[: exc.start].decode("utf-8")
    printable = sum(ch.isprintable() or ch in "\t\r\n\f" for ch in decoded)
    return printable >= 0.95 * max(1, len(decoded))


def data_format(blob: Blob, head: bytes) -> str:
    """Name bytes no code-running loader accepts: ``hf-config``, ``json``, ``text`` or ``data``."""
    doc = _load_json(blob, head)
    if doc is not None:
        return "hf-config" if isinstance(doc, dict) and _HF_KEYS & doc.keys() else "json"
    return "text" if _is_text(head) else binary_kind(None, blob, None, head)


def binary_kind(ctx: Context | None, blob: Blob, member: str | None, head: bytes) -> str:
    """``ubjson``, ``tflite`` or ``data``: binary files of ML libraries that no pickler wrote.

    A TensorFlow Lite flatbuffer is reported (with ``ctx``) as not analysed: it names
    custom and Flex operators that the interpreter runs as native kernels.
    """
    if head[4:8] == b"TFL3":
        if ctx is not None:
            ctx.unknown(
                "tflite.unanalysed",
                "TensorFlow Lite model: the flatbuffer is not parsed, so the custom and Flex "
                "(TensorFlow) operators it may name, native kernels that can read and write "
                "files when the interpreter runs, were not checked",
                member,
            )
        return "tflite"
    from trainwarden.scan._formats._ubjson import is_ubjson

    return "ubjson" if is_ubjson(ctx, blob, member, head) else "data"


def classify_data(ctx: Context, blob: Blob, member: str | None, head: bytes) -> str:
    """Like :func:`data_format`, reporting configuration that makes loaders fetch code.

    Chat templates are checked where loaders find them: a config's ``chat_template``
    (``tokenizer_config.json``, ``chat_template.json``) and a ``*.jinja`` file
    (``chat_template.jinja``, ``additional_chat_templates/``).
    """
    doc = _load_json(blob, head)
    if doc is None:
        if blob.size > _JSON_MAX and _looks_json(head):
            _search_large_json(ctx, blob, member)
        if not _is_text(head):
            return binary_kind(ctx, blob, member, head)
        name = (member or ctx.path).lower()
        if name.endswith(TEMPLATE_SUFFIXES):
            if blob.size > _JSON_MAX:
                # Loaders render a template of any size; chat templates are kilobytes.
                ctx.unknown(
                    "hf.chat-template",
                    "chat template larger than the scanner checks: not analysed",
                    member,
                    evidence=f"{blob.size} bytes",
                )
            else:
                text = bytes(blob.read(0, blob.size)).decode("utf-8", "replace")
                check_template(ctx, text, name.rsplit("/", 1)[-1], member, rule="hf.chat-template")
        return "text"
    if isinstance(doc, dict):
        _check_hf_config(ctx, doc, member)
        _check_diffusers_index(ctx, doc, member)
        for key, template in config_templates(doc):
            check_template(ctx, template, key, member, rule="hf.chat-template")
        if _HF_KEYS & doc.keys():
            return "hf-config"
    return "json"


def _looks_json(head: bytes) -> bool:
    return head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"[")


def _search_large_json(ctx: Context, blob: Blob, member: str | None) -> None:
    """JSON too large to parse: search its text for the keys that pull in code.

    Loaders parse a config of any size, so above the parse bound the keys must still be
    found (a padded config.json once hid its auto_map as "text"). A file larger than the
    scanner reads at all is reported as not analysed.
    """
    if blob.size > ctx.limits.max_member_bytes:
        ctx.unknown(
            "limit.json-size",
            "JSON file larger than the scanner reads; the keys that make loaders import code "
            "(auto_map, custom_pipelines, trust_remote_code) were not looked for",
            member,
            evidence=f"{blob.size} bytes > max_member_bytes={ctx.limits.max_member_bytes}",
        )
        return
    pos = 0
    while pos < blob.size:
        ctx.check_time(member)
        start = max(0, pos - _SEARCH_OVERLAP)
        window = bytes(blob.read(start, pos + _SEARCH_CHUNK - start))
        if b"\\u00" in window and re.search(_KEY_CHAR_ESCAPE_RE, window):
            window = _unescape(window)
        elif not any(key in window for key in _REMOTE_KEYS):
            pos += _SEARCH_CHUNK
            continue
        match = re.search(_REMOTE_KEY_RE, window)
        if match is not None:
            key = match.group(1).decode()
            if key == "chat_template":
                ctx.unknown(
                    "hf.chat-template",
                    "large JSON config holds a chat template, which loaders render: too large "
                    "to parse, so the template was not checked (found by searching its text)",
                    member,
                    evidence=key,
                )
                return
            ctx.unknown(
                "hf.remote-code",
                f"large JSON config names {key!r}: Hugging Face loaders pull in code from the "
                "repository through it (too large to parse; found by searching its text)",
                member,
                evidence=key,
            )
            return
        pos += _SEARCH_CHUNK


def _check_hf_config(ctx: Context, doc: dict[str, Any], member: str | None) -> None:
    auto_map = doc.get("auto_map")
    if auto_map:
        refs = sorted(set(_strings(auto_map)))
        # Module files the references name ("modeling_x.Cls" -> modeling_x.py; references
        # into another repository, "org/repo--modeling_x.Cls", are fetched from there).
        ctx.details["auto_map_modules"] = sorted(
            {r.rsplit(".", 1)[0] + ".py" for r in refs if "--" not in r and "." in r}
        )
        ctx.unknown(
            "hf.auto-map",
            "config maps model classes to code in the repository (auto_map); loading it with "
            "trust_remote_code=True imports and runs that code",
            member,
            evidence=", ".join(refs)[:200] or None,
        )
    for key in ("custom_pipelines", "trust_remote_code"):
        if doc.get(key):
            ctx.unknown(
                "hf.remote-code",
                f"config sets {key!r}: loaders pull in code from the repository",
                member,
                evidence=key,
            )


# Libraries whose classes diffusers writes into model_index.json ([library, class]).
_DIFFUSERS_LIBRARIES = frozenset({"diffusers", "transformers"})


def _check_diffusers_index(ctx: Context, doc: dict[str, Any], member: str | None) -> None:
    """Report pipeline components loaded from a module other than diffusers/transformers.

    ``DiffusionPipeline.from_pretrained`` imports each ``[library, class]`` it reads: a
    module file in the component's folder (with ``trust_remote_code=True``) or any installed
    module, by name. diffusers reads them from ``model_index.json`` only (component configs
    hold other pairs of strings, such as block types).
    """
    name = (member or ctx.path).replace("\\", "/").rsplit("/", 1)[-1].rsplit("!", 1)[-1]
    if name.lower() != "model_index.json" or "_class_name" not in doc:
        return
    foreign = sorted(
        f"{key}: {value[0]}.{value[1]}"
        for key, value in doc.items()
        if isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and value[0] not in _DIFFUSERS_LIBRARIES
    )
    if foreign:
        ctx.unknown(
            "diffusers.custom-component",
            "pipeline index loads components from modules other than diffusers and "
            "transformers: from_pretrained imports them (code in the repository, run with "
            "trust_remote_code=True, or any installed module by name)",
            member,
            evidence=", ".join(foreign)[:200],
        )


def _strings(value: Any, depth: int = 0) -> Iterator[str]:
    if depth > 20:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, depth + 1)


def _unescape(text: bytes) -> bytes:
    # Keras parses the JSON, so "Lamb\u0064a" is "Lambda" to it: undo \uXXXX escapes before
    # matching (an escaped name must not hide a layer).
    return re.sub(
        _ESCAPE_RE,
        lambda m: chr(int(m.group(1), 16)).encode("utf-8", "replace"),
        text.replace(b"\\/", b"/"),
    )


def check_keras_config(
    ctx: Context, text: bytes, member: str | None, reported: set[str] | None = None
) -> None:
    """Report Lambda layers (marshalled bytecode) and objects from modules outside keras.

    ``reported`` carries the modules already reported when one config is searched in
    overlapping windows (a large HDF5 file), so each is reported once.
    """
    text = _unescape(text)
    for match in re.finditer(_LAMBDA_RE, text):
        ctx.add(
            "keras.lambda-layer",
            Severity.HIGH,
            "Keras Lambda layer: its function is stored as marshalled Python bytecode that "
            "runs when the model is loaded with safe_mode off (or by older Keras)",
            member,
            verdict=Verdict.UNSAFE,
            offset=match.start(),
            evidence="Lambda",
        )
    reported = set() if reported is None else reported
    for match in re.finditer(_MODULE_RE, text):
        module = match.group(1).decode("utf-8", "replace")
        top = module.split(".", 1)[0]
        if top in ("keras", "keras_hub", "keras_nlp", "keras_cv", "tf_keras") or module in reported:
            continue
        reported.add(module)
        ctx.unknown(
            "keras.foreign-module",
            "Keras config deserialises an object from a module outside keras; Keras imports "
            "that module when loading",
            member,
            offset=match.start(),
            evidence=module,
        )


def hdf5_model_config(blob: Blob) -> bytes | None:
    """The first window of a Keras HDF5 file, when ``model_config`` is named in it."""
    window = bytes(blob.read(0, min(blob.size, _HDF5_WINDOW)))
    return window if b"model_config" in window else None


def analyse_hdf5(ctx: Context, blob: Blob, member: str | None) -> str:
    """Legacy Keras ``.h5``: look for Lambda layers in the ``model_config`` text.

    We read no HDF5 structure (no h5py): the config is JSON stored as plain bytes, anywhere
    in the file. A file up to the window is searched whole; a larger one window by window,
    to its end: a config that starts early can run on past any window (a Lambda padded
    beyond it), and another attribute can name ``model_config`` first as a decoy.
    """
    if blob.size > _HDF5_WINDOW:
        return _search_large_hdf5(ctx, blob, member)
    window = bytes(blob.read(0, blob.size))
    if b"model_config" not in window:
        return "hdf5"  # arrays (Keras weights): HDF5 itself stores no code
    check_keras_config(ctx, window, member)
    return "keras"


def _search_large_hdf5(ctx: Context, blob: Blob, member: str | None) -> str:
    # Windows overlap by more than any match spans, so a match cut by a window's end is
    # whole in the next one. What a window search cannot see (whitespace padding longer
    # than the overlap between a key and its value) is reported as not analysed.
    fmt = "hdf5"
    reported: set[str] = set()
    pos = 0
    while pos < blob.size:
        ctx.check_time(member)
        start = max(0, pos - _SEARCH_OVERLAP)
        window = bytes(blob.read(start, pos + _SEARCH_CHUNK - start))
        pos += _SEARCH_CHUNK
        if fmt == "hdf5" and b"model_config" in window:
            fmt = "keras"
        if b"\\u00" in window and re.search(_ESCAPE_RE, window):
            # Any escape ("\\u004cambda" is Lambda to Keras), but only when there is one:
            # weights are random bytes, and unescaping every window would cost most of the time.
            window = _unescape(window)
        if not any(key in window for key in _KERAS_KEYS):
            continue
        found = len(ctx.findings)
        check_keras_config(ctx, window, member, reported)
        unmatched = window.count(b'"Lambda"') > len(re.findall(_LAMBDA_RE, window)) or (
            window.count(b'"module"') > len(re.findall(_MODULE_RE, window))
        )
        if unmatched and len(ctx.findings) == found:
            ctx.unknown(
                "hdf5.unparsed",
                "large HDF5 file: a Keras config key whose value the window search could not "
                "read (padded past the search overlap); not fully analysed",
                member,
                offset=start,
            )
    return fmt
