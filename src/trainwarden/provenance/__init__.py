"""Signed provenance of training runs: in-toto Statement v1 with a SLSA Provenance v1 predicate.

``trainwarden run`` describes each run it supervised (outputs, code, environment, inputs,
parameters, egress, findings) in a :class:`TrainingRun`; :func:`build_statement` turns it into
the statement and :func:`write_provenance` signs it in a DSSE envelope with the supervisor's
Ed25519 key. :func:`verify_provenance` checks the signature over the exact payload bytes, the
statement's shape, and that each output on disk still has the recorded digest (the digest
``trainwarden sign`` computes); it raises :class:`ProvenanceMismatch` otherwise.
:func:`read_provenance` parses a statement without verifying it (for display).

The statement's fields and ``buildType`` are specified in ``docs/provenance.md``.
"""

from __future__ import annotations

from trainwarden.provenance._dsse import Envelope, EnvelopeSignature, pae, parse_envelope
from trainwarden.provenance._statement import (
    BUILD_TYPE,
    BUILDER_ID,
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    ProvenanceFile,
    ResourceDescriptor,
    Statement,
    TrainingRun,
    build_statement,
    check_statement,
    output_descriptor,
    parse_statement,
    sign_statement,
    write_provenance,
)
from trainwarden.provenance._verify import (
    ProvenanceMismatch,
    ProvenanceVerification,
    SubjectCheck,
    read_provenance,
    verify_provenance,
)

__all__ = [
    "BUILDER_ID",
    "BUILD_TYPE",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "Envelope",
    "EnvelopeSignature",
    "ProvenanceFile",
    "ProvenanceMismatch",
    "ProvenanceVerification",
    "ResourceDescriptor",
    "Statement",
    "SubjectCheck",
    "TrainingRun",
    "build_statement",
    "check_statement",
    "output_descriptor",
    "pae",
    "parse_envelope",
    "parse_statement",
    "read_provenance",
    "sign_statement",
    "verify_provenance",
    "write_provenance",
]
