"""Placeholder for the sign capability; replaced before commit."""
