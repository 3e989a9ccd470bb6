"""Placeholder until the load capability lands (issue 3); replaced, never committed as is."""

from __future__ import annotations

from typing import Any


def load(*args: Any, **kwargs: Any) -> Any:
    """Not implemented yet."""
    raise NotImplementedError


def protect(*args: Any, **kwargs: Any) -> Any:
    """Not implemented yet."""
    raise NotImplementedError
