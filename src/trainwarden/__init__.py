"""trainwarden: protects shared GPU training clusters against sabotage from the inside.

A tour of the public API (each capability is a subpackage; its ``__init__`` is its API):

- :mod:`trainwarden.scan`: ``scan_path(...)`` statically analyses model files (T1).
- :mod:`trainwarden.load`: ``load(...)``, a drop-in for ``torch.load`` that refuses what the
  scanner refuses, and ``protect()`` that routes a process's loaders through the policy.
- :mod:`trainwarden.env`: verifies installed packages and startup hooks (T2).
- :mod:`trainwarden.sign`: keys, signed checkpoint manifests and lineage (T7).
- :mod:`trainwarden.ledger`: a tamper-evident, signed, attributable event ledger (T8).
- :mod:`trainwarden.findings` and :mod:`trainwarden.errors`: results and errors shared by all.

Heavy dependencies (torch, numpy, transformers) are imported lazily, inside the functions that
need them, so ``import trainwarden`` and ``trainwarden scan`` start fast and work without torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

# `trainwarden.load` is both a subpackage and its main function. Importing the function here
# rebinds the package attribute to the function after the submodule import set it to the
# module, so `trainwarden.load(f)` is the drop-in for `torch.load`. The load package imports
# torch lazily, so this stays cheap. Elsewhere, write `from trainwarden.load import ...`.
from trainwarden.errors import UnsafeModelError
from trainwarden.load import load, protect

__all__ = ["UnsafeModelError", "__version__", "load", "protect"]
