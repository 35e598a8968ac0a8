"""Test doubles passed in through constructors (no global patching)."""
