"""Keys, signed manifests of checkpoints, and lineage.

Keys (re-exported from :mod:`trainwarden.keys`): :func:`generate_key`,
:func:`load_private_key`, :func:`load_public_key` give :class:`PrivateKey` /
:class:`PublicKey` (Ed25519; ours or OpenSSH).

Signing: :func:`sign_path` hashes a file or checkpoint directory (per-file, per-shard SHA-256
in parallel, through :mod:`trainwarden.manifest`; a file rewritten while it is hashed raises
:class:`TreeChanged`) and writes an OpenSSF model-signing bundle (Sigstore bundle, DSSE, in-toto
Statement) carrying the signer, run, step and parent digest. :func:`verify_path` returns a
:class:`Verification` or raises :class:`SignatureMismatch` with a report naming each file.
:func:`verify_chain` checks that a run's checkpoints form one unbroken chain. With a ledger
(an existing ledger directory, or an open :class:`~trainwarden.ledger.Ledger`), signing records
``checkpoint.signed`` (:class:`SignatureNotRecorded` when only that step failed) and
verification detects rollback, swap and deletion.
:func:`checkpoint_digest` recomputes a checkpoint's digest without a signature.
"""

from __future__ import annotations

from trainwarden.keys import (
    PrivateKey,
    PublicKey,
    generate_key,
    load_private_key,
    load_public_key,
)
from trainwarden.manifest import DEFAULT_SHARD_SIZE, FileEntry, Manifest, Shard, TreeChanged
from trainwarden.sign._lineage import verify_chain
from trainwarden.sign._results import (
    Lineage,
    LineageError,
    Signature,
    SignatureMismatch,
    SignatureNotRecorded,
    Verification,
)
from trainwarden.sign._signature import (
    bundle_status,
    checkpoint_digest,
    default_sig_path,
    sign_path,
    verify_path,
)

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "FileEntry",
    "Lineage",
    "LineageError",
    "Manifest",
    "PrivateKey",
    "PublicKey",
    "Shard",
    "Signature",
    "SignatureMismatch",
    "SignatureNotRecorded",
    "TreeChanged",
    "Verification",
    "bundle_status",
    "checkpoint_digest",
    "default_sig_path",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "sign_path",
    "verify_chain",
    "verify_path",
]
