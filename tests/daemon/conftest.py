"""Fixtures shared by the daemon's tests (the API ones live in api_support.py)."""

from tests.daemon.api_support import api, http

__all__ = ["api", "http"]
