"""The provenance statement of a training run: in-toto Statement v1, SLSA Provenance v1 predicate.

The statement says which outputs (checkpoints) a run produced, from which code, environment,
inputs and parameters, what it contacted and what was found, and is signed in a DSSE envelope
by the supervisor's key. Field by field specification: ``docs/provenance.md``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainwarden._canonical import canonical_bytes
from trainwarden._fs import atomic_write
from trainwarden.errors import InputError
from trainwarden.keys import PrivateKey
from trainwarden.provenance._dsse import Envelope, envelope_json, sign_envelope

__all__ = [
    "BUILDER_ID",
    "BUILD_TYPE",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "ProvenanceFile",
    "ResourceDescriptor",
    "Statement",
    "TrainingRun",
    "build_statement",
    "check_statement",
    "output_descriptor",
    "parse_statement",
    "sign_statement",
    "write_provenance",
]

#: in-toto Statement v1 (``_type``).
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
#: SLSA Provenance v1 (``predicateType``).
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
#: DSSE payload type of an in-toto statement.
PAYLOAD_TYPE = "application/vnd.in-toto+json"
#: ``buildType`` of a training run supervised by ``trainwarden run`` (documented there).
BUILD_TYPE = "https://github.com/trainwarden/trainwarden/blob/main/docs/provenance.md#buildtype-training-run-v1"
#: ``runDetails.builder.id``: the supervisor.
BUILDER_ID = "https://github.com/trainwarden/trainwarden/blob/main/docs/run.md#the-supervisor"

_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True, slots=True)
class ResourceDescriptor:
    """An in-toto ResourceDescriptor: a subject, a dependency or a byproduct.

    At least one of ``uri``, ``digest`` or ``content`` identifies the resource; ``digest``
    maps algorithm names (``sha256``, ``gitCommit``) to lower-case hex.
    """

    name: str | None = None
    uri: str | None = None
    digest: Mapping[str, str] = field(default_factory=dict)
    media_type: str | None = None
    annotations: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The descriptor's JSON form (absent fields left out, as the spec asks)."""
        out: dict[str, Any] = {}
        if self.name is not None:
            out["name"] = self.name
        if self.uri is not None:
            out["uri"] = self.uri
        if self.digest:
            out["digest"] = dict(self.digest)
        if self.media_type is not None:
            out["mediaType"] = self.media_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ResourceDescriptor:
        """Read a descriptor already checked by :func:`check_statement`."""
        digest = doc.get("digest") or {}
        annotations = doc.get("annotations") or {}
        return cls(
            name=doc.get("name"),
            uri=doc.get("uri"),
            digest={str(k): str(v) for k, v in digest.items()},
            media_type=doc.get("mediaType"),
            annotations=dict(annotations),
        )


@dataclass(frozen=True, slots=True)
class TrainingRun:
    """Everything the statement of one run records (the input of :func:`build_statement`).

    Attributes:
        run_id: The run id (``runDetails.metadata.invocationId``).
        outputs: Subjects: the checkpoints and declared outputs, with their digests.
        external_parameters: What the user controlled: command, config digests,
            hyperparameters, seed commitment.
        internal_parameters: What the supervisor chose: versions, policy, timeouts, host.
        dependencies: ``resolvedDependencies``: code, environment, input checkpoints, data.
        byproducts: Ledger head and seal, egress endpoints, findings, exit status.
        started: UTC start time (RFC 3339).
        finished: UTC end time (RFC 3339).
        builder_version: ``runDetails.builder.version`` (trainwarden, python...).
    """

    run_id: str
    outputs: tuple[ResourceDescriptor, ...]
    external_parameters: Mapping[str, Any]
    internal_parameters: Mapping[str, Any]
    dependencies: tuple[ResourceDescriptor, ...]
    byproducts: tuple[ResourceDescriptor, ...]
    started: str
    finished: str
    builder_version: Mapping[str, str] = field(default_factory=dict)


def build_statement(run: TrainingRun) -> dict[str, Any]:
    """The in-toto Statement v1 with a SLSA Provenance v1 predicate for ``run``."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [d.to_dict() for d in run.outputs],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": dict(run.external_parameters),
                "internalParameters": dict(run.internal_parameters),
                "resolvedDependencies": [d.to_dict() for d in run.dependencies],
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": dict(run.builder_version)},
                "metadata": {
                    "invocationId": run.run_id,
                    "startedOn": run.started,
                    "finishedOn": run.finished,
                },
                "byproducts": [d.to_dict() for d in run.byproducts],
            },
        },
    }


def sign_statement(statement: Mapping[str, Any], key: PrivateKey) -> Envelope:
    """Sign the canonical JSON bytes of ``statement`` in a DSSE envelope.

    Raises:
        InputError: The statement holds something JSON cannot represent.
    """
    payload = canonical_bytes(dict(statement), what="provenance statement")
    return sign_envelope(PAYLOAD_TYPE, payload, [key])


@dataclass(frozen=True, slots=True)
class ProvenanceFile:
    """A written provenance envelope: where, its SHA-256 (``sha256:<hex>``), subject count."""

    path: Path
    digest: str
    subjects: int


def write_provenance(
    path: str | os.PathLike[str], statement: Mapping[str, Any], key: PrivateKey
) -> ProvenanceFile:
    """Sign ``statement`` and write the envelope to ``path`` atomically.

    Raises:
        InputError: The statement is not JSON-serialisable or the file cannot be written.
    """
    envelope = sign_statement(statement, key)
    data = envelope_json(envelope)
    target = atomic_write(path, data, mode=0o644, what="provenance statement")
    subjects = statement.get("subject")
    return ProvenanceFile(
        target,
        "sha256:" + hashlib.sha256(data).hexdigest(),
        len(subjects) if isinstance(subjects, list) else 0,
    )


def output_descriptor(
    path: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    digest: str | None = None,
    annotations: Mapping[str, Any] | None = None,
    workers: int | None = None,
) -> ResourceDescriptor:
    """A subject for a checkpoint file or directory, with the digest ``trainwarden sign`` uses.

    Args:
        path: The checkpoint.
        root: Names are relative to this directory when the checkpoint lies inside it
            (the job's working directory), else absolute.
        digest: A digest computed already (``sha256:<hex>``), e.g. when the checkpoint was
            just signed; computed with :func:`trainwarden.sign.checkpoint_digest` otherwise.
        annotations: Extra facts (step, signature path).
        workers: Hashing threads.

    Raises:
        InputError: The checkpoint cannot be read.
    """
    from trainwarden.sign import checkpoint_digest

    p = Path(path)
    value = digest if digest is not None else checkpoint_digest(p, workers=workers)
    algorithm, _, hexdigest = value.partition(":")
    if algorithm != "sha256" or not _HEX.fullmatch(hexdigest):
        raise InputError(f"not a sha256 digest: {value!r}")
    return ResourceDescriptor(
        name=subject_name(p, root),
        digest={"sha256": hexdigest},
        annotations=dict(annotations or {}),
    )


def subject_name(path: Path, root: str | os.PathLike[str] | None) -> str:
    """``path`` relative to ``root`` (POSIX form) when inside it, else absolute."""
    absolute = _absolute(path)
    if root is not None:
        base = _absolute(root)
        try:
            return absolute.relative_to(base).as_posix()
        except ValueError:
            pass
    return absolute.as_posix()


def _absolute(path: str | os.PathLike[str]) -> Path:
    # Normalised without resolving symlinks: the name records where the job wrote it.
    return Path(os.path.normpath(Path(path).absolute()))


@dataclass(frozen=True, slots=True)
class Statement:
    """A parsed statement (only meaningful once its envelope's signature was verified).

    Attributes:
        raw: The whole statement as parsed.
        subjects: The outputs.
        build_type: ``buildDefinition.buildType``.
        external_parameters: ``buildDefinition.externalParameters``.
        internal_parameters: ``buildDefinition.internalParameters``.
        dependencies: ``buildDefinition.resolvedDependencies``.
        byproducts: ``runDetails.byproducts``.
        builder_id: ``runDetails.builder.id``.
        run_id: ``runDetails.metadata.invocationId``.
        started: ``runDetails.metadata.startedOn``.
        finished: ``runDetails.metadata.finishedOn``.
    """

    raw: Mapping[str, Any]
    subjects: tuple[ResourceDescriptor, ...]
    build_type: str
    external_parameters: Mapping[str, Any]
    internal_parameters: Mapping[str, Any]
    dependencies: tuple[ResourceDescriptor, ...]
    byproducts: tuple[ResourceDescriptor, ...]
    builder_id: str
    run_id: str | None
    started: str | None
    finished: str | None


def check_statement(doc: Any) -> list[str]:
    """Every way ``doc`` departs from a trainwarden training-run statement (empty: well formed)."""
    problems: list[str] = []
    if not isinstance(doc, dict):
        return ["the payload is not a JSON object"]
    if doc.get("_type") != STATEMENT_TYPE:
        problems.append(f"_type is {doc.get('_type')!r}, not {STATEMENT_TYPE!r}")
    if doc.get("predicateType") != PREDICATE_TYPE:
        problems.append(f"predicateType is {doc.get('predicateType')!r}, not {PREDICATE_TYPE!r}")
    subjects = doc.get("subject")
    if not isinstance(subjects, list):
        problems.append("subject is not a list")
    else:
        names: set[str] = set()
        for i, item in enumerate(subjects):
            problems.extend(_check_descriptor(item, f"subject[{i}]", need_digest=True))
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                if item["name"] in names:
                    problems.append(f"subject[{i}] repeats the name {item['name']!r}")
                names.add(item["name"])
    predicate = doc.get("predicate")
    if not isinstance(predicate, dict):
        return [*problems, "predicate is not an object"]
    definition = predicate.get("buildDefinition")
    details = predicate.get("runDetails")
    if not isinstance(definition, dict):
        problems.append("predicate.buildDefinition is not an object")
    else:
        if definition.get("buildType") != BUILD_TYPE:
            problems.append(
                f"buildType is {definition.get('buildType')!r}, not a trainwarden training "
                f"run ({BUILD_TYPE})"
            )
        if not isinstance(definition.get("externalParameters"), dict):
            problems.append("buildDefinition.externalParameters is not an object")
        internal = definition.get("internalParameters", {})
        if not isinstance(internal, dict):
            problems.append("buildDefinition.internalParameters is not an object")
        problems.extend(_check_list(definition.get("resolvedDependencies", []), "dependency"))
    if not isinstance(details, dict):
        problems.append("predicate.runDetails is not an object")
    else:
        builder = details.get("builder")
        if not isinstance(builder, dict) or not isinstance(builder.get("id"), str):
            problems.append("runDetails.builder.id is missing")
        metadata = details.get("metadata", {})
        if not isinstance(metadata, dict):
            problems.append("runDetails.metadata is not an object")
        problems.extend(_check_list(details.get("byproducts", []), "byproduct"))
    return problems


def _check_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list):
        return [f"{what} list is not a list"]
    out: list[str] = []
    for i, item in enumerate(value):
        out.extend(_check_descriptor(item, f"{what}[{i}]", need_digest=False))
    return out


def _check_descriptor(item: Any, where: str, *, need_digest: bool) -> list[str]:
    if not isinstance(item, dict):
        return [f"{where} is not an object"]
    out = [
        f"{where}.{key} is not a string"
        for key in ("name", "uri", "mediaType")
        if key in item and not isinstance(item[key], str)
    ]
    digest = item.get("digest")
    if digest is not None and not (
        isinstance(digest, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in digest.items())
    ):
        out.append(f"{where}.digest is not a map of strings")
    if need_digest:
        if not isinstance(item.get("name"), str) or not item.get("name"):
            out.append(f"{where} has no name")
        if not isinstance(digest, dict) or not isinstance(digest.get("sha256"), str):
            out.append(f"{where} has no sha256 digest")
        elif not (len(digest["sha256"]) == 64 and _HEX.fullmatch(digest["sha256"])):
            out.append(f"{where}.digest.sha256 is not 64 lower-case hex digits")
    elif not any(k in item for k in ("uri", "digest", "content", "name")):
        out.append(f"{where} identifies nothing (no name, uri, digest or content)")
    if "annotations" in item and not isinstance(item["annotations"], dict):
        out.append(f"{where}.annotations is not an object")
    return out


def parse_statement(doc: Mapping[str, Any]) -> Statement:
    """Build a :class:`Statement` from a document :func:`check_statement` found well formed.

    Raises:
        InputError: The document is not well formed.
    """
    problems = check_statement(doc)
    if problems:
        raise InputError("not a trainwarden provenance statement: " + "; ".join(problems[:5]))
    predicate = doc["predicate"]
    definition = predicate["buildDefinition"]
    details = predicate["runDetails"]
    metadata = details.get("metadata", {})
    return Statement(
        raw=doc,
        subjects=tuple(ResourceDescriptor.from_dict(s) for s in doc["subject"]),
        build_type=definition["buildType"],
        external_parameters=definition["externalParameters"],
        internal_parameters=definition.get("internalParameters", {}),
        dependencies=_descriptors(definition.get("resolvedDependencies", [])),
        byproducts=_descriptors(details.get("byproducts", [])),
        builder_id=details["builder"]["id"],
        run_id=_str_or_none(metadata.get("invocationId")),
        started=_str_or_none(metadata.get("startedOn")),
        finished=_str_or_none(metadata.get("finishedOn")),
    )


def _descriptors(items: Iterable[Mapping[str, Any]]) -> tuple[ResourceDescriptor, ...]:
    return tuple(ResourceDescriptor.from_dict(i) for i in items)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
