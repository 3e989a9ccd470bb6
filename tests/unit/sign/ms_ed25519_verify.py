"""Run model-signing's own verification pipeline on a trainwarden bundle (peer venv only).

model-signing verifies only EC keys; this plugs an Ed25519 check into its traditional-key
verifier and leaves everything else (bundle parsing, manifest rebuild, re-hashing the model
and comparing) to model-signing. Usage: python this.py MODEL SIG PUBKEY_PEM
"""

import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from model_signing import verifying
from model_signing._signing import sign_sigstore_pb


class Ed25519Verifier(sign_sigstore_pb.Verifier):
    def __init__(self, pem: bytes) -> None:
        self._key = serialization.load_pem_public_key(pem)

    def _verify_bundle(self, bundle):  # type: ignore[no-untyped-def]
        envelope = bundle.dsse_envelope
        self._key.verify(envelope.signatures[0].sig, sign_sigstore_pb.pae(envelope.payload))
        return envelope.payload_type, envelope.payload


def main() -> int:
    model, sig, pub = (Path(a) for a in sys.argv[1:4])
    text = pub.read_text()
    pem = text[text.index("-----BEGIN") :].encode()
    config = verifying.Config()
    config._verifier = Ed25519Verifier(pem)
    config._uses_sigstore = False
    try:
        config.verify(model, sig)
    except Exception as exc:
        print(f"FAILED: {type(exc).__name__}: {exc}")
        return 1
    print("VERIFIED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
