"""Adapters that attach the runtime guard to training frameworks (thin by design).

- :mod:`trainwarden.integrations.transformers`: ``GuardCallback``, a ``TrainerCallback``.
- :mod:`trainwarden.integrations.lightning`: ``GuardCallback``, a Lightning ``Callback``.
- :mod:`trainwarden.integrations.accelerate`: ``attach(accelerator, model, optimizer, ...)``.

Each imports its framework only when used; the checks are :class:`trainwarden.guard.Guard`'s.
"""

from __future__ import annotations

__all__: list[str] = []
