"""Placeholder for the scan capability; replaced before commit."""
