"""Chiffon package."""
