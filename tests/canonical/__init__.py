"""Canonical losses, written straight from the papers' equations.

Nothing in this package may depend on the library under test: these are the independent reference side of the
gradient-identity tests (tests/identity/). See README.md for the equation behind each loss.
"""
