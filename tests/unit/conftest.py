"""Unit-test fixtures shared across modules: the fake OpenAI-compatible judge server."""

from tests.unit.test_judge import fake_judge  # noqa: F401
