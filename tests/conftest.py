"""Shared test setup: tests/helpers.py's asserts are rewritten like a test module's (a failing
`assert_same_run` shows the values it compared)."""

import pytest

pytest.register_assert_rewrite("helpers")
