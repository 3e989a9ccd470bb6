"""Placeholder for the ledger capability; replaced before commit."""
