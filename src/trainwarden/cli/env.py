"""Placeholder for the `env` command group; replaced by its capability, never committed as is."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register no commands yet."""
