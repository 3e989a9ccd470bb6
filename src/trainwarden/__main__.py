"""``python -m trainwarden`` runs the command-line interface."""

from trainwarden.cli import entry_point

entry_point()
