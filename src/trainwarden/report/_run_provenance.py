"""The run's provenance statement, parsed defensively for display and verified when possible.

``provenance.intoto.json`` is a DSSE envelope around an in-toto Statement v1 with a SLSA
Provenance v1 predicate. Its format belongs to the provenance capability; here it is only
shown. Its signature is verified through that capability's public function when it is
installed and a trusted key was given, and is otherwise reported as not verified, never as
fine.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from trainwarden._fs import read_regular
from trainwarden.errors import Error, InputError, VerificationError
from trainwarden.report._run_ledger import as_json, as_text
from trainwarden.report._run_model import Provenance

__all__ = ["MAX_PROVENANCE", "read_provenance"]

#: Largest provenance file read.
MAX_PROVENANCE = 32 << 20
# Rows of flattened parameters shown per table.
_MAX_ROWS = 400


def read_provenance(
    path: Path,
    *,
    keys: Iterable[Any] = (),
    key_paths: Iterable[str | os.PathLike[str]] = (),
    ledger_digest: str | None = None,
    check_outputs: bool = True,
) -> Provenance:
    """Read and (when possible) verify the provenance statement at ``path``.

    Args:
        path: ``RUN_DIR/provenance.intoto.json``.
        keys: Trusted public keys (:class:`trainwarden.keys.PublicKey`).
        key_paths: Their files, for the provenance capability's verifier.
        ledger_digest: The digest ``provenance.signed`` recorded, if any.
        check_outputs: Let the verifier rehash the statement's outputs too.
    """
    shown = str(path)
    if not path.exists() and not path.is_symlink():
        return Provenance(
            path=shown,
            present=False,
            verification="not verified: no provenance statement",
            ledger_digest=ledger_digest,
        )
    try:
        raw = read_regular(path, limit=MAX_PROVENANCE, what="provenance statement")
    except InputError as exc:
        return Provenance(
            path=shown,
            present=True,
            error=exc.diagnostics(),
            verification="not verified: unreadable",
            ledger_digest=ledger_digest,
        )
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    fields: dict[str, Any] = {"path": shown, "present": True, "digest": digest}
    fields["ledger_digest"] = ledger_digest
    try:
        envelope = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return Provenance(
            **fields, error=f"not JSON: {exc}", verification="not verified: malformed"
        )
    if not isinstance(envelope, dict):
        return Provenance(
            **fields, error="not a DSSE envelope (a JSON object)", verification="not verified"
        )
    fields["payload_type"] = as_text(envelope.get("payloadType"), 120)
    sigs = envelope.get("signatures")
    if isinstance(sigs, list):
        fields["signatures"] = tuple(
            as_text(s.get("keyid"), 120) or "(no keyid)" for s in sigs[:16] if isinstance(s, dict)
        )
    statement, error = _decode_payload(envelope.get("payload"))
    if statement is None:
        return Provenance(**fields, error=error, verification="not verified: malformed")
    fields.update(_statement_fields(statement))
    verified, verification, outputs = _verify(
        path, list(keys), list(key_paths), outputs=check_outputs
    )
    return Provenance(**fields, verified=verified, verification=verification, outputs=outputs)


def _decode_payload(payload: object) -> tuple[dict[str, Any] | None, str | None]:
    if not isinstance(payload, str):
        return None, "the envelope has no payload"
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        try:  # DSSE allows the URL-safe alphabet too
            padded = payload + "=" * (-len(payload) % 4)
            data = base64.b64decode(padded, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            return None, "the payload is not base64"
    try:
        statement = json.loads(data)
    except (ValueError, RecursionError):
        return None, "the payload is not JSON"
    if not isinstance(statement, dict):
        return None, "the payload is not an in-toto statement (a JSON object)"
    return statement, None


def _statement_fields(statement: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "statement_type": as_text(statement.get("_type"), 200),
        "predicate_type": as_text(statement.get("predicateType"), 200),
    }
    raw_subjects = statement.get("subject")
    out["subjects"] = tuple(
        (as_text(s.get("name")) or "?", _digest_text(s.get("digest")))
        for s in (raw_subjects[:_MAX_ROWS] if isinstance(raw_subjects, list) else ())
        if isinstance(s, Mapping)
    )
    predicate = statement.get("predicate")
    if not isinstance(predicate, Mapping):
        return out
    build = predicate.get("buildDefinition")
    if isinstance(build, Mapping):
        out["build_type"] = as_text(build.get("buildType"), 300)
        out["external_parameters"] = tuple(flatten(build.get("externalParameters")))
        out["internal_parameters"] = tuple(flatten(build.get("internalParameters")))
        deps = build.get("resolvedDependencies")
        rows = []
        if isinstance(deps, list):
            for d in deps[:_MAX_ROWS]:
                if isinstance(d, Mapping):
                    name = as_text(d.get("name")) or as_text(d.get("uri")) or "?"
                    uri = as_text(d.get("uri"))
                    if uri and uri != name:
                        name = f"{name} ({uri})"
                    rows.append((name, _digest_text(d.get("digest"))))
        out["dependencies"] = tuple(rows)
    details = predicate.get("runDetails")
    if isinstance(details, Mapping):
        builder = details.get("builder")
        if isinstance(builder, Mapping):
            out["builder"] = as_text(builder.get("id"), 300)
        meta = details.get("metadata")
        if isinstance(meta, Mapping):
            out["invocation"] = as_text(meta.get("invocationId"), 200)
            out["started_on"] = as_text(meta.get("startedOn"), 40)
            out["finished_on"] = as_text(meta.get("finishedOn"), 40)
        out["byproducts"] = tuple(flatten(details.get("byproducts")))
    return out


def _digest_text(value: object) -> str:
    if isinstance(value, Mapping):
        return ", ".join(
            f"{as_text(k, 20)}:{as_text(v, 140)}" for k, v in sorted(value.items())[:4]
        )
    return as_text(value, 200) or ""


def flatten(value: object, prefix: str = "", *, limit: int = _MAX_ROWS) -> list[tuple[str, str]]:
    """``[(dotted.key[0], value), ...]`` of a JSON value, at most ``limit`` rows."""
    rows: list[tuple[str, str]] = []

    def walk(v: object, key: str, depth: int) -> None:
        if len(rows) >= limit:
            return
        if depth > 12:
            rows.append((key, as_json(v, 200)))
        elif isinstance(v, Mapping) and v:
            for k in sorted(v, key=str):
                walk(v[k], f"{key}.{k}" if key else str(k), depth + 1)
        elif isinstance(v, list) and v:
            for i, item in enumerate(v):
                walk(item, f"{key}[{i}]", depth + 1)
        else:
            text = v if isinstance(v, str) else as_json(v, 200)
            rows.append((key or "(value)", as_text(text) or ""))

    if value is not None:
        walk(value, prefix, 0)
    if len(rows) >= limit:
        rows.append(("…", f"cut at {limit} rows"))
    return rows


def _verify(
    path: Path, keys: list[Any], key_paths: list[str | os.PathLike[str]], *, outputs: bool
) -> tuple[bool | None, str, tuple[tuple[str, str, str], ...]]:
    """``(verified, why, outputs that differ)`` of the statement at ``path``.

    A statement whose signature and shape verify is authentic even when the outputs it
    names changed since: those are the checkpoints' story (T7), returned apart, and the
    statement itself stays verified (T8 is only for a statement that does not verify).
    """
    from trainwarden.provenance import verify_provenance

    if not keys:
        return None, "not verified: no trusted key given (--pubkey)", ()
    names = ", ".join(str(p) for p in key_paths) or f"{len(keys)} key(s)"
    try:
        verify_provenance(path, keys, check_outputs=outputs)
    except VerificationError as exc:
        changed = _changed_outputs(exc)
        if changed is None:
            return False, f"does not verify: {exc}", ()
        return (
            True,
            f"signature verified against {names}; {len(changed)} output(s) no longer match "
            "the statement (see the checkpoint findings)",
            changed,
        )
    except Error as exc:
        return None, f"not verified: {exc}", ()
    what = "signature and outputs" if outputs else "signature"
    return True, f"{what} verified against {names}", ()


def _changed_outputs(exc: VerificationError) -> tuple[tuple[str, str, str], ...] | None:
    """The outputs that differ, when they are all that failed (``None`` otherwise).

    ``ProvenanceMismatch`` carries the verification's ``result``: which checks failed, and
    whether the signature verified (``signer``) before the outputs were compared.
    """
    from trainwarden.findings import Verdict

    result: Any = getattr(exc, "result", None)
    if result is None:
        return None
    failed = [f for f in result.report.findings if f.verdict is not Verdict.SAFE]
    if result.signer is None or result.statement is None or not failed:
        return None
    if not all(f.rule_id.startswith("provenance.output-") for f in failed):
        return None
    return tuple(
        (c.path, c.status, c.reason or f"the statement records {c.expected}, now {c.actual}")
        for c in result.subjects
        if c.status in ("modified", "missing", "unreadable")
    )
