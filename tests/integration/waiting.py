"""Polling for integration tests: real daemons change state asynchronously."""

from __future__ import annotations

import time

import pytest


def wait_for(pred, limit: float, what: str, step: float = 0.2, show=None):
    """Return ``pred()``'s first truthy value within ``limit`` seconds, else fail the test
    naming ``what`` (and ``show()`` or the last value)."""
    deadline = time.monotonic() + limit
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            break
        time.sleep(step)
    detail = f": {show()}" if show else f" (last: {value!r})"
    pytest.fail(f"timed out after {limit}s waiting for {what}{detail}")
