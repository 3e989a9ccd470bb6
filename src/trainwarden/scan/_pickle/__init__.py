"""The symbolic pickle machine: every import and call a CPython unpickler would perform.

``results`` holds what it reports, ``machine`` runs one pickle (the hot loop), ``stream``
follows every pickle repeated loads on one file would read. Nothing here imports, calls or
unpickles what it reads.
"""

from __future__ import annotations

from trainwarden.scan._pickle.machine import starts_like_pickle
from trainwarden.scan._pickle.results import (
    NESTED_LOADERS,
    RULE_FRAME_OVERRUN,
    RULE_FRAME_SPLIT,
    RULE_GLOBAL_MUTATION,
    RULE_MALFORMED,
    RULE_TRUNCATED,
    RULE_UNRESOLVED,
    UNRESOLVED,
    GlobalRef,
    NestedPayload,
    PickleAnalysis,
    PickleIssue,
    compat_name,
)
from trainwarden.scan._pickle.stream import analyse_pickle, analyse_pickle_stream, gc_paused

__all__ = [
    "NESTED_LOADERS",
    "RULE_FRAME_OVERRUN",
    "RULE_FRAME_SPLIT",
    "RULE_GLOBAL_MUTATION",
    "RULE_MALFORMED",
    "RULE_TRUNCATED",
    "RULE_UNRESOLVED",
    "UNRESOLVED",
    "GlobalRef",
    "NestedPayload",
    "PickleAnalysis",
    "PickleIssue",
    "analyse_pickle",
    "analyse_pickle_stream",
    "compat_name",
    "gc_paused",
    "starts_like_pickle",
]
