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

from typing import TYPE_CHECKING, Any

from trainwarden.errors import UnsafeModelError

if TYPE_CHECKING:
    from trainwarden.load import load, protect

__all__ = ["UnsafeModelError", "__version__", "load", "protect"]


def __getattr__(name: str) -> Any:
    # `load` and `protect` are imported on first use, so `trainwarden scan` does not pay for
    # the loaders at start-up. `trainwarden.load` is both a subpackage and its main function:
    # importing the subpackage may already have bound the attribute to the package, which is
    # why the package itself is callable as `load` (see trainwarden/load/__init__.py).
    if name in ("load", "protect"):
        import importlib

        package = importlib.import_module("trainwarden.load")
        globals().update(load=package.load, protect=package.protect)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
