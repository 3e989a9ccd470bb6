"""Placeholder for the env capability; replaced before commit."""
