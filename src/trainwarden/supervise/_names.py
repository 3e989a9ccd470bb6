"""Names shared by the supervisor and the code it puts into the job (kept import-free)."""

from __future__ import annotations

__all__ = [
    "BOOTSTRAP_MODULE",
    "ENV_CHANNEL",
    "ENV_LEDGER",
    "ENV_RUN_DIR",
    "ENV_RUN_ID",
    "SITECUSTOMIZE_MARKER",
]

#: The module every rank is started through (``python -m ... rank -- SCRIPT``).
BOOTSTRAP_MODULE = "trainwarden.supervise.bootstrap"
#: Path of the supervisor's control socket (not a secret: only descendants may connect).
ENV_CHANNEL = "TRAINWARDEN_RUN_CHANNEL"
#: The run id.
ENV_RUN_ID = "TRAINWARDEN_RUN_ID"
#: The run directory.
ENV_RUN_DIR = "TRAINWARDEN_RUN_DIR"
#: The ledger directory (where a rank records on its own if the supervisor is gone).
ENV_LEDGER = "TRAINWARDEN_RUN_LEDGER"
#: First line of the run's sitecustomize (how it is told from a planted one).
SITECUSTOMIZE_MARKER = "# trainwarden-run-bootstrap v1"
