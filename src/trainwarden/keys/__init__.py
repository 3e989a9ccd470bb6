"""Ed25519 keys and the identities that travel with them, for every capability that signs.

:func:`generate_key` writes a private key (mode 0600) and its public key; :func:`load_private_key`
and :func:`load_public_key` read ours or OpenSSH's; :func:`load_public_keys` reads the trusted keys
a user names (files, or directories of ``*.pub``). :class:`PrivateKey` signs,
:class:`PublicKey` verifies and names its holder (``identity``) and ``fingerprint``
(OpenSSH ``SHA256:`` form). Trust is in the key, never in the identity label.

Used by ``env`` (signed locks), ``ledger`` (signed entries), ``sign`` (manifests), the guard
and the supervisor (provenance). The key file format is specified in ``docs/signature.md``.
"""

from __future__ import annotations

from trainwarden.keys._keys import (
    PrivateKey,
    PublicKey,
    default_identity,
    generate_key,
    load_private_key,
    load_public_key,
    load_public_keys,
)

__all__ = [
    "PrivateKey",
    "PublicKey",
    "default_identity",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "load_public_keys",
]
