"""Operator commands run against a deployment from outside it (not part of the app image)."""
